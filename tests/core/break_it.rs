//! The break-it run of issue 15, each reproduced: absurd config counts refused by name before
//! anything is allocated (load and inspect), an unknown scheduler class names its stand-in, and
//! an RGBA init image whose transparent pixels carry colour keeps its alpha through img2img.

use bevy_diffusion::request::InitImage;
use bevy_diffusion::schedulers::SchedulerConfig;
use bevy_diffusion::tools::inspect::{InspectOptions, inspect};
use bevy_diffusion::{DiffusionError, GenerationRequest, LoadOptions, StableDiffusion, pipeline};
use image::RgbaImage;

use crate::loading::{edit_json, fixture_copy, load_err};

#[test]
fn absurd_counts_are_refused_by_name_before_anything_is_allocated() {
    for (component, field) in [
        ("unet", "layers_per_block"),
        ("unet", "transformer_layers_per_block"),
        ("text_encoder", "num_hidden_layers"),
        ("vae", "layers_per_block"),
    ] {
        let dir = fixture_copy(&format!("absurd-{component}-{field}"));
        edit_json(&dir.join(component).join("config.json"), |j| {
            j[field] = serde_json::json!(1_000_000);
        });
        let e = load_err(&dir);
        assert!(
            matches!(&e, DiffusionError::InvalidConfig { field: f, .. } if f == field),
            "{component}/{field}: {e}"
        );
        assert!(e.to_string().contains("1000000"), "{e}");
        let report = inspect(&dir, &InspectOptions::default());
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.to_string().contains(field)),
            "inspect names {field}: {:?}",
            report.problems
        );
    }
}

#[test]
fn an_unknown_scheduler_class_names_its_stand_in() {
    let dir = fixture_copy("unknown-scheduler");
    let path = dir.join("scheduler/scheduler_config.json");
    edit_json(&path, |j| {
        j["_class_name"] = serde_json::json!("FancyNewScheduler")
    });
    let config = SchedulerConfig::from_file(&path).expect("parses");
    let (note, unknown) = config.stand_in().expect("a stand-in");
    assert!(unknown, "{note}");
    assert!(
        note.contains("FancyNewScheduler") && note.contains("Ddim"),
        "{note}"
    );
    edit_json(&path, |j| {
        j["_class_name"] = serde_json::json!("DDIMScheduler")
    });
    let exact = SchedulerConfig::from_file(&path).expect("parses");
    assert!(exact.stand_in().is_none());
}

fn embedded() -> StableDiffusion {
    let dir = bevy_diffusion::loading::embedded::embedded_model_dir();
    StableDiffusion::load(&dir, &LoadOptions::default()).expect("the default model loads")
}

#[test]
fn transparent_pixels_with_hidden_colour_keep_their_alpha_through_img2img() {
    let model = embedded();
    assert_eq!(model.vae_config.in_channels, 4, "an RGBA model");
    // A red disc on transparency whose hidden colour is white, as many editors write it.
    let sprite = RgbaImage::from_fn(32, 32, |x, y| {
        let d = ((x as f32 - 15.5).powi(2) + (y as f32 - 15.5).powi(2)).sqrt();
        if d < 9.0 {
            image::Rgba([200, 30, 30, 255])
        } else {
            image::Rgba([255, 255, 255, 0])
        }
    });
    let request = GenerationRequest {
        prompt: "a red potion".into(),
        seed: 4,
        num_inference_steps: Some(12),
        guidance_scale: Some(4.0),
        strength: 0.3,
        init_image: Some(InitImage::Rgba {
            width: 32,
            height: 32,
            pixels: sprite.into_raw(),
        }),
        ..GenerationRequest::sprite("a red potion")
    };
    let out = model
        .run_with_threads(Some(1), || {
            pipeline::generate(&model, &request, &mut pipeline::NoHooks)
        })
        .expect("generates")
        .image;
    let corners = [(0, 0), (31, 0), (0, 31), (31, 31)];
    let alpha: Vec<u8> = corners
        .iter()
        .map(|&(x, y)| out.get_pixel(x, y).0[3])
        .collect();
    assert!(
        alpha.iter().all(|&a| a < 64),
        "the transparent corners stay transparent: {alpha:?}"
    );
    assert!(out.get_pixel(16, 16).0[3] > 191, "the disc stays opaque");
}

#[test]
fn bake_reports_truncation_per_item() {
    use bevy_diffusion::tools::bake::{self, BakeManifest, BakeOptions, ItemOutcome};
    let long = "stone ".repeat(100);
    let text = format!(
        r#"(model: None, items: {{
            "long": (prompt: "{long}", negative_prompt: "{long}", width: 32, height: 32, num_inference_steps: 1),
            "short": (prompt: "wall", width: 32, height: 32, num_inference_steps: 1),
        }})"#
    );
    let manifest = BakeManifest::parse(&text, std::path::Path::new("t.ron")).unwrap();
    let out = crate::loading::scratch("bake-truncation");
    let options = BakeOptions::new(&out.join("out"), &bevy_diffusion_tests::tiny_sd_model());
    let report = bake::bake(&manifest, &options, &mut |_| {}).expect("bakes");
    let truncated = |name: &str| {
        report
            .items
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, o)| match o {
                ItemOutcome::Baked { truncated, .. } => Some(*truncated),
                _ => None,
            })
    };
    let long = truncated("long").expect("baked");
    assert!(long.prompt && long.negative_prompt, "{long:?}");
    assert!(!truncated("short").expect("baked").any());
}

#[test]
fn a_model_folder_recommends_its_sampling_settings_and_requests_that_leave_them_unset_use_them() {
    let model = embedded();
    assert_eq!(
        model.recommended.num_inference_steps,
        Some(12),
        "the recipe's measured steps"
    );
    assert_eq!(
        model.recommended.guidance_scale,
        Some(4.0),
        "the recipe's guidance"
    );
    struct Count(usize, usize);
    impl pipeline::GenerationHooks for Count {
        fn on_step(&mut self, step: &pipeline::DenoisingStep) {
            self.0 += 1;
            self.1 = step.total;
        }
    }
    let run = |request: GenerationRequest| {
        let mut hooks = Count(0, 0);
        model
            .run_with_threads(Some(1), || pipeline::generate(&model, &request, &mut hooks))
            .expect("generates");
        hooks.0
    };
    assert_eq!(
        run(GenerationRequest::texture("moss")),
        12,
        "unset: the folder's 12"
    );
    let explicit = GenerationRequest {
        num_inference_steps: Some(3),
        ..GenerationRequest::texture("moss")
    };
    assert_eq!(run(explicit), 3, "a set field wins");
    // The tiny fixture has no bevy_diffusion.json: the crate defaults.
    let tiny = StableDiffusion::load(
        &bevy_diffusion_tests::tiny_sd_model(),
        &LoadOptions::default(),
    )
    .expect("loads");
    assert!(tiny.recommended.is_empty());
    let report = inspect(&model.dir, &InspectOptions::default()).to_string();
    assert!(
        report.contains("recommended") && report.contains("12 steps, guidance 4"),
        "{report}"
    );
    // Old RON keeps working: a bare number is the set value.
    let r = bevy_diffusion::request::ron::parse_request_ron(
        "(prompt: \"x\", num_inference_steps: 7, guidance_scale: 2.5)",
        std::path::Path::new("x.ron"),
    )
    .unwrap();
    assert_eq!(
        (r.num_inference_steps, r.guidance_scale),
        (Some(7), Some(2.5))
    );
}

#[test]
fn a_bad_recommendation_file_is_refused_by_name() {
    let dir = fixture_copy("bad-recommended");
    std::fs::write(
        dir.join("bevy_diffusion.json"),
        r#"{ "num_inference_steps": 0 }"#,
    )
    .unwrap();
    let e = load_err(&dir);
    assert!(
        e.to_string().contains("bevy_diffusion.json")
            && e.to_string().contains("num_inference_steps"),
        "{e}"
    );
    std::fs::write(dir.join("bevy_diffusion.json"), r#"{ "stepz": 3 }"#).unwrap();
    assert!(load_err(&dir).to_string().contains("stepz"));
}

#[test]
fn weights_the_config_leaves_unused_are_refused_not_ignored() {
    // A config that drops the mid block (or a resnet per block) from weights that have them would
    // otherwise run a different network without a word (diffusers only warns).
    for (name, field, value) in [
        ("no-mid", "mid_block_type", serde_json::Value::Null),
        ("fewer-layers", "layers_per_block", serde_json::json!(1)),
    ] {
        let dir = fixture_copy(&format!("unused-{name}"));
        edit_json(&dir.join("unet/config.json"), |j| j[field] = value.clone());
        let e = load_err(&dir);
        assert!(
            matches!(&e, DiffusionError::UnexpectedTensors { count, .. } if *count > 0),
            "{name}: {e}"
        );
        assert!(e.to_string().contains(".weight"), "{name}: {e}");
        let report = inspect(&dir, &InspectOptions::default());
        assert!(
            report
                .problems
                .iter()
                .any(|p| matches!(p, DiffusionError::UnexpectedTensors { .. })),
            "inspect flags it too: {:?}",
            report.problems
        );
    }
}
