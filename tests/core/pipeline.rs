//! Whole-pipeline parity with HF diffusers on the tiny fixture (every scheduler, img2img, no-CFG),
//! plus seamless tiling, determinism and request validation.

use bevy_diffusion::noise::{NoiseSource, SeededNoise};
use bevy_diffusion::pipeline::{self, DenoisingStep, ExplicitNoise, GenerationHooks, NoHooks};
use bevy_diffusion::request::InitImage;
use bevy_diffusion::{
    DiffusionError, GenerationRequest, LoadOptions, SchedulerKind, StableDiffusion, Tiling,
};
use bevy_diffusion_tests::parity::{
    ALL_STEP_TENSORS, StepRecorder, assert_image_within_1_255, assert_steps_match,
    assert_timesteps_match, cobblestone_ddim4, replay_step_noise, roll, rolled_diff, scheduler_for,
    seam_ratio,
};
use bevy_diffusion_tests::{References, assert_close, tiny_sd_dir, tiny_sd_model};
use candle_core::Tensor;
use std::sync::OnceLock;

fn model() -> &'static StableDiffusion {
    static MODEL: OnceLock<StableDiffusion> = OnceLock::new();
    MODEL.get_or_init(|| {
        StableDiffusion::load(&tiny_sd_model(), &LoadOptions::default()).expect("fixture loads")
    })
}

fn refs() -> &'static References {
    static REFS: OnceLock<References> = OnceLock::new();
    REFS.get_or_init(References::load)
}

/// The request diffusers ran for `case` (references.json `cases.<case>`).
fn request_for(case: &str) -> GenerationRequest {
    let c = refs().case(case);
    let (scheduler, spacing) = scheduler_for(c);
    let spec = refs().json["spec"]["pipeline_cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == case)
        .unwrap();
    let img2img = c["kind"] == "img2img";
    GenerationRequest {
        prompt: c["prompt"].as_str().unwrap().to_string(),
        negative_prompt: c["negative_prompt"].as_str().map(str::to_string),
        seed: 0,
        width: c["width"].as_u64().unwrap() as u32,
        height: c["height"].as_u64().unwrap() as u32,
        num_inference_steps: Some(c["steps"].as_u64().unwrap() as usize),
        guidance_scale: Some(c["guidance_scale"].as_f64().unwrap()),
        scheduler: Some(scheduler),
        timestep_spacing: Some(spacing),
        tiling: Tiling::None,
        init_image: img2img.then(|| {
            InitImage::Path(
                tiny_sd_dir()
                    .join("images")
                    .join(format!("{case}__init_image.png")),
            )
        }),
        strength: spec["strength"].as_f64().unwrap_or(0.8),
        ..Default::default()
    }
}

fn run_case(case: &str) {
    let r = refs();
    let request = request_for(case);
    let img2img = request.init_image.is_some();
    let explicit = if img2img {
        ExplicitNoise {
            noise: Some(r.get(&format!("{case}/noise"))),
            vae_sample_eps: Some(r.get(&format!("{case}/vae_sample_eps"))),
        }
    } else {
        ExplicitNoise {
            noise: Some(r.get(&format!("{case}/init_noise"))),
            vae_sample_eps: None,
        }
    };
    let n = r.case(case)["n_steps_run"].as_u64().unwrap() as usize;
    let mut noise = replay_step_noise(case, n, |name| r.has(name), |name| r.get(name));
    let mut rec = StepRecorder::default();
    let out = pipeline::generate_with_noise(model(), &request, &explicit, noise.as_mut(), &mut rec)
        .unwrap_or_else(|e| panic!("{case}: {e}"));

    assert_timesteps_match(case, &out.timesteps, r.case(case));
    assert_steps_match(case, &rec.steps, n, &ALL_STEP_TENSORS, |name| r.get(name));
    assert_close(
        &format!("{case}/final_latents"),
        &out.final_latents,
        &r.get(&format!("{case}/final_latents")),
    );
    // The image: HWC float in [0, 1]; ours is RGBA8. Within 1/255 per channel.
    assert_image_within_1_255(case, &out.image, &r.get(&format!("{case}/image")));
    assert!(
        out.image.pixels().all(|p| p.0[3] == 255),
        "{case}: RGB model gives opaque pixels"
    );
}

#[test]
fn prompt_embeds_match_diffusers() {
    for case in ["pipe_ddim4", "pipe_lcm4", "pipe_euler6"] {
        let req = request_for(case);
        let e = pipeline::encode_prompt(
            model(),
            &req.prompt,
            req.negative_prompt.as_deref(),
            req.guidance() > 1.0,
        )
        .unwrap();
        assert_close(
            &format!("{case}/prompt_embeds"),
            &e.embeds,
            &refs().get(&format!("{case}/prompt_embeds")),
        );
    }
}

#[test]
fn pipe_ddim4() {
    run_case("pipe_ddim4");
}
#[test]
fn pipe_euler6() {
    run_case("pipe_euler6");
}
#[test]
fn pipe_img2img_s05() {
    run_case("pipe_img2img_s05");
}
#[test]
fn pipe_turbo_euler_a1() {
    run_case("pipe_turbo_euler_a1");
}
#[test]
fn pipe_dpmpp2m8() {
    run_case("pipe_dpmpp2m8");
}
#[test]
fn pipe_dpmpp2m_karras8() {
    run_case("pipe_dpmpp2m_karras8");
}
#[test]
fn pipe_lcm4() {
    run_case("pipe_lcm4");
}
#[test]
fn pipe_euler_a4() {
    run_case("pipe_euler_a4");
}

/// Text-to-image with DDIM from explicit initial noise (no other randomness).
fn generate_from_noise(noise: &Tensor, tiling: Tiling) -> image::RgbaImage {
    cobblestone_ddim4(model(), noise, tiling)
}

#[test]
fn seamless_tiling_xy_has_no_seam() {
    // The seam statistic, averaged over seeds and both axes (one column pair is a noisy figure).
    let (mut tiled, mut plain) = (Vec::new(), Vec::new());
    for seed in 0..6 {
        let noise = SeededNoise::new(seed)
            .randn(&[1, 4, 8, 8], &candle_core::Device::Cpu)
            .unwrap();
        let t = generate_from_noise(&noise, Tiling::XY);
        let p = generate_from_noise(&noise, Tiling::None);
        tiled.extend([seam_ratio(&t, true, 1), seam_ratio(&t, false, 1)]);
        plain.extend([seam_ratio(&p, true, 1), seam_ratio(&p, false, 1)]);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    eprintln!(
        "seam / interior, mean of 6 seeds x 2 axes: tiling xy {:.3}, tiling none {:.3}",
        mean(&tiled),
        mean(&plain)
    );
    assert!(mean(&tiled) <= 1.1, "tiled seam ratio {:.3}", mean(&tiled));
    // Same seeds without tiling: the wrap-around is rougher than the interior.
    assert!(
        mean(&plain) > mean(&tiled),
        "untiled {:.3} vs tiled {:.3}",
        mean(&plain),
        mean(&tiled)
    );
}

#[test]
fn tiling_xy_makes_the_image_a_torus_and_none_does_not() {
    // On a torus, rolling the initial noise by 2 latent columns rolls the image by 16 pixels
    // exactly: there is no edge, so no seam anywhere. Without tiling the edges are special and
    // the rolled generation differs.
    let noise = SeededNoise::new(3)
        .randn(&[1, 4, 8, 8], &candle_core::Device::Cpu)
        .unwrap();
    let rolled_noise = roll(&noise, 3, 2);
    let max_and_mean_diff = |a: &image::RgbaImage, b: &image::RgbaImage| rolled_diff(a, b, 16, 0);
    let (tiled_worst, tiled_mean) = max_and_mean_diff(
        &generate_from_noise(&noise, Tiling::XY),
        &generate_from_noise(&rolled_noise, Tiling::XY),
    );
    let (_, plain_mean) = max_and_mean_diff(
        &generate_from_noise(&noise, Tiling::None),
        &generate_from_noise(&rolled_noise, Tiling::None),
    );
    eprintln!(
        "rolled-by-16px difference: tiling xy worst {tiled_worst} mean {tiled_mean:.4}; tiling none mean {plain_mean:.3}"
    );
    assert!(
        tiled_worst <= 1,
        "tiling xy is shift-equivariant (worst {tiled_worst})"
    );
    assert!(
        plain_mean > 10.0 * tiled_mean.max(0.01),
        "without tiling the edges differ (mean {plain_mean:.3})"
    );
}

#[test]
fn same_seed_same_bytes_other_seed_other_image() {
    let req = GenerationRequest {
        prompt: "a red potion".into(),
        seed: 11,
        num_inference_steps: Some(3),
        scheduler: Some(SchedulerKind::EulerAncestral),
        ..Default::default()
    };
    let a = pipeline::generate(model(), &req, &mut NoHooks).unwrap();
    let b = pipeline::generate(model(), &req, &mut NoHooks).unwrap();
    let c = pipeline::generate(
        model(),
        &GenerationRequest { seed: 12, ..req },
        &mut NoHooks,
    )
    .unwrap();
    assert_eq!(a.image.as_raw(), b.image.as_raw());
    assert_ne!(a.image.as_raw(), c.image.as_raw());
    assert_eq!(
        (a.image.width(), a.image.height()),
        (64, 64),
        "native size = sample_size * 8"
    );
}

#[test]
fn empty_prompt_and_overlong_prompt_work() {
    let req = GenerationRequest {
        num_inference_steps: Some(2),
        ..Default::default()
    };
    assert!(pipeline::generate(model(), &req, &mut NoHooks).is_ok());
    let long = "mossy cobblestone ".repeat(60);
    let out = pipeline::generate(
        model(),
        &GenerationRequest {
            prompt: long,
            ..req
        },
        &mut NoHooks,
    )
    .unwrap();
    assert!(out.prompt_truncated);
}

#[test]
fn bad_requests_are_typed_errors() {
    let base = GenerationRequest {
        num_inference_steps: Some(2),
        ..Default::default()
    };
    let cases: Vec<(GenerationRequest, &str)> = vec![
        (
            GenerationRequest {
                width: 60,
                ..base.clone()
            },
            "`width` = 60",
        ),
        (
            GenerationRequest {
                num_inference_steps: Some(0),
                ..base.clone()
            },
            "`num_inference_steps` = 0",
        ),
        (
            GenerationRequest {
                init_image: Some(InitImage::Path(
                    tiny_sd_dir().join("images/pipe_img2img_s05__init_image.png"),
                )),
                strength: 0.0,
                ..base.clone()
            },
            "`strength` = 0",
        ),
        (
            GenerationRequest {
                init_image: Some(InitImage::Path(
                    tiny_sd_dir().join("images/pipe_img2img_s05__init_image.png"),
                )),
                strength: 1.5,
                ..base.clone()
            },
            "`strength` = 1.5",
        ),
    ];
    for (req, needle) in cases {
        let e = pipeline::generate(model(), &req, &mut NoHooks).unwrap_err();
        assert!(matches!(e, DiffusionError::InvalidRequest { .. }), "{e:?}");
        assert!(e.to_string().contains(needle), "`{e}` should name {needle}");
    }
    let missing = GenerationRequest {
        init_image: Some(InitImage::Path("/nonexistent/init.png".into())),
        ..base
    };
    let e = pipeline::generate(model(), &missing, &mut NoHooks).unwrap_err();
    assert!(
        matches!(e, DiffusionError::Image { .. })
            && e.to_string().contains("/nonexistent/init.png"),
        "{e}"
    );
}

#[test]
fn cancel_stops_before_the_next_step() {
    struct CancelAfter(usize, usize);
    impl GenerationHooks for CancelAfter {
        fn on_step(&mut self, _: &DenoisingStep) {
            self.1 += 1;
        }
        fn should_cancel(&mut self) -> bool {
            self.1 >= self.0
        }
    }
    let req = GenerationRequest {
        num_inference_steps: Some(5),
        ..Default::default()
    };
    let mut hooks = CancelAfter(2, 0);
    let e = pipeline::generate(model(), &req, &mut hooks).unwrap_err();
    assert!(matches!(e, DiffusionError::Cancelled));
    assert_eq!(hooks.1, 2, "exactly two steps ran");
}

#[test]
fn non_finite_noise_is_an_error_not_a_black_image() {
    let nan = Tensor::full(f32::NAN, (1, 4, 8, 8), &candle_core::Device::Cpu).unwrap();
    let req = GenerationRequest {
        num_inference_steps: Some(2),
        scheduler: Some(SchedulerKind::Ddim),
        ..Default::default()
    };
    let explicit = ExplicitNoise {
        noise: Some(nan),
        vae_sample_eps: None,
    };
    let e = pipeline::generate_with_noise(
        model(),
        &req,
        &explicit,
        &mut SeededNoise::new(0),
        &mut NoHooks,
    )
    .unwrap_err();
    // Refused before the first step, naming the noise (the diverging-schedule case, which
    // ends in NonFiniteLatents after the step it diverged in, is in tests/core/non_finite.rs).
    assert!(
        matches!(e, DiffusionError::InvalidRequest { field: "noise", .. }),
        "a typed cause, not num_inference_steps: {e:?}"
    );
    assert!(e.to_string().contains("finite"), "{e}");
    assert!(!e.to_string().contains("`num_inference_steps`"), "{e}");
}
