//! Editor-time tooling on the tiny fixture model: `bake` (manifests, sidecars, skipping,
//! per-item failures, resuming after an interruption), `inspect` (every problem of a damaged
//! folder, the same errors as a load) and the Hub download's file selection on a local stand-in.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bevy_diffusion::loading::folder::{FolderOptions, ModelFamily, ModelFolder};
use bevy_diffusion::loading::hub::{self, LocalRepo};
use bevy_diffusion::pipeline::{self, NoHooks};
use bevy_diffusion::request::ron;
use bevy_diffusion::runtime::cache::CacheKey;
use bevy_diffusion::tools::bake::{
    self, BakeEvent, BakeManifest, BakeOptions, BakeReport, ItemOutcome, Sidecar,
};
use bevy_diffusion::tools::inspect::{InspectOptions, inspect};
use bevy_diffusion::{DiffusionError, GenerationRequest, LoadOptions, StableDiffusion};
use bevy_diffusion_tests::tiny_sd_model;

use crate::loading::{copy_dir, edit_json, fixture_copy, load_err, scratch};

/// Three small, fast items: a seamless texture, a pixel-art sprite, an Euler-a texture without
/// guidance.
const MANIFEST: &str = r#"
// Three small items on the tiny fixture model.
(
    model: None,
    items: {
        "wall": (prompt: "mossy stone wall", seed: 3, tiling: XY, width: 32, height: 32, num_inference_steps: 3),
        "coin": (prompt: "gold coin", seed: 7, kind: sprite, width: 24, height: 32, num_inference_steps: 2,
                 pixel_art: (cell: 2, colors: 8)),
        "floor": (prompt: "oak planks", scheduler: EulerAncestral, tiling: x, width: 32, height: 24,
                  num_inference_steps: 2, guidance_scale: 1.0),
    },
)
"#;

fn parse(text: &str) -> BakeManifest {
    BakeManifest::parse(text, Path::new("test.ron")).unwrap()
}

/// Runs a bake, recording every event as a short string.
fn run(
    manifest: &BakeManifest,
    options: &BakeOptions,
) -> (Result<BakeReport, bake::BakeError>, Vec<String>) {
    let mut events = Vec::new();
    let result = bake::bake(manifest, options, &mut |e| {
        events.push(match e {
            BakeEvent::Planned { items } => format!("planned {}", items.len()),
            BakeEvent::LoadingModel { .. } => "loading".into(),
            BakeEvent::ModelLoaded { .. } => "loaded".into(),
            BakeEvent::ItemStarted { name, reason, .. } => format!("start {name} ({reason})"),
            BakeEvent::Step {
                name, step, total, ..
            } => format!("step {name} {step}/{total}"),
            BakeEvent::ItemFinished { name, outcome, .. } => match outcome {
                ItemOutcome::Baked { .. } => format!("done {name}"),
                ItemOutcome::Skipped => format!("skipped {name}"),
                ItemOutcome::Failed(why) => format!("FAILED {name}: {why}"),
            },
        })
    });
    (result, events)
}

fn outcome<'a>(report: &'a BakeReport, name: &str) -> &'a ItemOutcome {
    &report.items.iter().find(|(n, _)| n == name).unwrap().1
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

// ---------------------------------------------------------------- bake

#[test]
fn bake_writes_what_the_core_generates_and_a_rerun_skips_everything() {
    let dir = scratch("bake_core");
    let out = dir.join("out");
    let manifest = parse(MANIFEST);
    let options = BakeOptions::new(&out, tiny_sd_model());

    let (report, events) = run(&manifest, &options);
    let report = report.unwrap();
    assert_eq!(
        report.summary(),
        "baked 3, skipped 0, failed 0",
        "{events:?}"
    );
    assert!(report.model_loaded);
    assert_eq!(events[0], "planned 3");
    assert_eq!(
        events[1], "loading",
        "the model is loaded for the first item: {events:?}"
    );
    assert!(events.contains(&"step wall 3/3".to_string()), "{events:?}");
    assert_eq!(
        files_in(&out),
        [
            "coin.png",
            "coin.texgen.json",
            "floor.png",
            "floor.texgen.json",
            "wall.png",
            "wall.texgen.json"
        ],
        "PNGs and sidecars, no temporary files"
    );

    // The PNGs are exactly the core's output for the same requests.
    let model = StableDiffusion::load(&tiny_sd_model(), &LoadOptions::default()).unwrap();
    let identity = ModelFolder::open(&tiny_sd_model(), &FolderOptions::default())
        .unwrap()
        .identity;
    assert_eq!(report.model_identity, identity);
    for item in &manifest.items {
        let generated = pipeline::generate(&model, &item.request, &mut NoHooks).unwrap();
        let expected =
            bevy_diffusion::pipeline::postprocess::finish(generated.image, &item.request);
        let png_path = out.join(format!("{}.png", item.name));
        let png = image::open(&png_path).unwrap().to_rgba8();
        assert_eq!(png.dimensions(), expected.dimensions(), "{}", item.name);
        assert!(
            png.as_raw() == expected.as_raw(),
            "{}: pixels differ",
            item.name
        );
        assert_eq!(
            std::fs::read(&png_path).unwrap(),
            bevy_diffusion::testing::atomic_file::encode_png(&expected).unwrap(),
            "{}: PNG bytes",
            item.name
        );

        let sidecar: Sidecar = serde_json::from_str(
            &std::fs::read_to_string(out.join(format!("{}.texgen.json", item.name))).unwrap(),
        )
        .unwrap();
        assert_eq!(sidecar.name, item.name);
        assert_eq!(sidecar.request, item.request);
        assert_eq!(sidecar.seed, item.request.seed);
        assert_eq!(sidecar.model_identity, identity);
        assert_eq!(
            sidecar.content_hash,
            CacheKey::new(&identity, &item.request).hex()
        );
        assert_eq!(sidecar.bevy_diffusion_version, env!("CARGO_PKG_VERSION"));
        assert_eq!((sidecar.width, sidecar.height), expected.dimensions());
    }

    // Unchanged: everything skipped, the model never loaded.
    let (report, events) = run(&manifest, &options);
    let report = report.unwrap();
    assert_eq!(report.summary(), "baked 0, skipped 3, failed 0");
    assert!(!report.model_loaded);
    assert!(!events.iter().any(|e| e == "loading"), "{events:?}");

    // One request edited, one PNG deleted, one PNG overwritten: exactly those are redone.
    let edited = parse(&MANIFEST.replace("seed: 7", "seed: 8"));
    std::fs::remove_file(out.join("wall.png")).unwrap();
    std::fs::write(out.join("floor.png"), b"not the baked PNG").unwrap();
    let (report, events) = run(&edited, &options);
    let report = report.unwrap();
    assert_eq!(report.summary(), "baked 3, skipped 0, failed 0");
    assert!(
        events.contains(&"start wall (PNG missing)".to_string()),
        "{events:?}"
    );
    assert!(
        events.contains(&"start coin (request or model changed)".to_string()),
        "{events:?}"
    );
    assert!(
        events.contains(&"start floor (PNG differs from the one baked)".to_string()),
        "{events:?}"
    );
    // A different model identity (a scheduler config edit) invalidates every item.
    let other_model = fixture_copy("bake_other_model");
    edit_json(&other_model.join("scheduler/scheduler_config.json"), |j| {
        j["steps_offset"] = 0.into()
    });
    let (report, _) = run(&edited, &BakeOptions::new(&out, &*other_model));
    assert_eq!(report.unwrap().baked(), 3);
}

#[test]
fn an_item_with_a_bad_field_or_name_fails_alone() {
    let dir = scratch("bake_bad_item");
    let out = dir.join("out");
    let manifest = parse(
        r#"(items: {
            "first": (prompt: "a", width: 16, height: 16, num_inference_steps: 1),
            "bad": (prompt: "b", width: 100, height: 16, num_inference_steps: 1),
            "../escape": (prompt: "c", width: 16, height: 16, num_inference_steps: 1),
            "last": (prompt: "d", width: 16, height: 16, num_inference_steps: 1),
        })"#,
    );
    let (report, events) = run(&manifest, &BakeOptions::new(&out, tiny_sd_model()));
    let report = report.unwrap();
    assert_eq!(
        report.summary(),
        "baked 2, skipped 0, failed 2",
        "{events:?}"
    );
    match outcome(&report, "bad") {
        ItemOutcome::Failed(why) => {
            assert!(
                why.contains("`width` = 100") && why.contains("multiple of 8"),
                "{why}"
            )
        }
        other => panic!("{other:?}"),
    }
    match outcome(&report, "../escape") {
        ItemOutcome::Failed(why) => assert!(why.contains("invalid item name"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        files_in(&out),
        [
            "first.png",
            "first.texgen.json",
            "last.png",
            "last.texgen.json"
        ]
    );
    assert!(!dir.join("escape.png").exists());
    // Invalid items cost no model work: alone, they do not load the model.
    let only_bad = BakeManifest {
        items: manifest.items[1..3].to_vec(),
        ..manifest.clone()
    };
    let (report, _) = run(&only_bad, &BakeOptions::new(&out, tiny_sd_model()));
    let report = report.unwrap();
    assert_eq!(report.summary(), "baked 0, skipped 0, failed 2");
    assert!(!report.model_loaded);
}

#[test]
fn an_interrupted_bake_leaves_no_partial_files_and_resumes() {
    let dir = scratch("bake_resume");
    let out = dir.join("out");
    let manifest = parse(MANIFEST);
    let cancel = Arc::new(AtomicBool::new(false));
    let options = BakeOptions {
        cancel: Some(cancel.clone()),
        ..BakeOptions::new(&out, tiny_sd_model())
    };
    // "Ctrl-C" during the second item's denoising.
    let mut events = Vec::new();
    let report = bake::bake(&manifest, &options, &mut |e| {
        if let BakeEvent::Step { name: "coin", .. } = e {
            cancel.store(true, Ordering::Relaxed);
        }
        if let BakeEvent::ItemFinished { name, .. } = e {
            events.push(name.to_string());
        }
    })
    .unwrap();
    assert!(report.cancelled);
    assert_eq!(
        events,
        ["wall", "coin"],
        "the bake stops after the cancelled item"
    );
    assert_eq!(
        outcome(&report, "coin"),
        &ItemOutcome::Failed("cancelled".into())
    );
    assert_eq!(files_in(&out), ["wall.png", "wall.texgen.json"]);

    let (report, events) = run(&manifest, &BakeOptions::new(&out, tiny_sd_model()));
    assert_eq!(
        report.unwrap().summary(),
        "baked 2, skipped 1, failed 0",
        "{events:?}"
    );
    assert!(events.contains(&"skipped wall".to_string()));
}

#[test]
fn a_malformed_manifest_names_the_line_and_field() {
    let text = "(\n    items: {\n        \"wall\": (prompt: \"x\", seed: 1),\n        \"floor\": (prompt: \"y\", seed: \"three\"),\n    },\n)\n";
    let e = BakeManifest::parse(text, Path::new("textures.ron")).unwrap_err();
    assert_eq!(e.line, 4, "{e}");
    assert_eq!(e.field.as_deref(), Some("items.floor.seed"), "{e}");
    let message = e.to_string();
    assert!(message.starts_with("textures.ron:4:"), "{message}");
    assert!(message.contains("items.floor.seed"), "{message}");

    // Unknown fields are refused, naming them; so are unclosed manifests.
    let e = BakeManifest::parse(
        "(items: {\n \"a\": (promt: \"typo\"),\n})",
        Path::new("m.ron"),
    )
    .unwrap_err();
    assert_eq!(e.line, 2, "{e}");
    assert!(e.message.contains("promt"), "{e}");
    let e = BakeManifest::parse("(items: {\n \"a\": (),\n", Path::new("m.ron")).unwrap_err();
    assert!(e.line >= 2, "{e}");

    // A single request reads the same way, as a `*.texgen.ron` asset would.
    let r = ron::parse_request_ron(
        "(prompt: \"mossy wall\", seed: 3, tiling: XY)",
        Path::new("wall.texgen.ron"),
    )
    .unwrap();
    assert_eq!(
        r,
        GenerationRequest {
            seed: 3,
            ..GenerationRequest::texture("mossy wall")
        }
    );
    let e = ron::parse_request_ron("(\n  width: -8,\n)", Path::new("wall.texgen.ron")).unwrap_err();
    assert_eq!((e.line, e.field.as_deref()), (2, Some("width")), "{e}");
}

#[test]
fn a_broken_model_folder_stops_the_bake_before_any_work() {
    let dir = scratch("bake_broken_model");
    let out = dir.join("out");
    let (result, events) = run(
        &parse(MANIFEST),
        &BakeOptions::new(&out, dir.join("no-model")),
    );
    assert!(matches!(
        result,
        Err(bake::BakeError::Model(
            DiffusionError::ModelFolderMissing { .. }
        ))
    ));
    assert!(events.is_empty());
    assert!(!out.exists());
}

// ---------------------------------------------------------------- inspect

#[test]
fn inspect_describes_the_fixture() {
    let report = inspect(&tiny_sd_model(), &InspectOptions::default());
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.family, Some(ModelFamily::Sd1));
    assert_eq!(report.family_label(), "SD1.x");
    assert_eq!(
        report.class_name.as_deref(),
        Some("StableDiffusionPipeline")
    );
    let folder = ModelFolder::open(&tiny_sd_model(), &FolderOptions::default()).unwrap();
    assert_eq!(report.identity.as_deref(), Some(folder.identity.as_str()));
    // Parameter counts: the element counts of the tensors in the files.
    for (component, files) in report.components.iter().zip(folder.components()) {
        let tensors =
            candle_core::safetensors::load(&files.weights.path, &candle_core::Device::Cpu).unwrap();
        let elements: usize = tensors.values().map(|t| t.elem_count()).sum();
        assert_eq!(component.parameters, elements as u64, "{}", component.kind);
        assert_eq!(component.tensors, tensors.len());
        assert_eq!(
            component.dtypes.keys().collect::<Vec<_>>(),
            ["F32"],
            "{}",
            component.kind
        );
        assert!(component.built, "{}", component.kind);
    }
    let scheduler = report.scheduler.as_ref().unwrap();
    assert_eq!(scheduler.class_name.as_deref(), Some("DDIMScheduler"));
    assert_eq!(scheduler.runs_as, "ddim");
    assert!(
        scheduler
            .settings
            .contains(&("beta_schedule".into(), "scaled_linear".into()))
    );
    let tokenizer = report.tokenizer.as_ref().unwrap();
    assert_eq!(tokenizer.pad_token, "<|endoftext|>");
    assert_eq!(tokenizer.max_length, 77);
    let text = report.to_string();
    assert!(text.contains("problems      none"), "{text}");

    // The full load agrees.
    let loaded = inspect(
        &tiny_sd_model(),
        &InspectOptions {
            full_load: true,
            ..Default::default()
        },
    );
    assert_eq!(loaded.full_load, Some(true));

    // The repository's own default model is recognised as the embedded one; a marked copy too.
    let default = inspect(
        &bevy_diffusion::loading::embedded::bundled_model_dir(),
        &InspectOptions::default(),
    );
    assert_eq!(default.family_label(), "embedded (SD1.x architecture)");
    let copy = fixture_copy("inspect_marker");
    assert!(
        inspect(&copy, &InspectOptions::default())
            .embedded
            .is_none()
    );
    edit_json(&copy.join("model_index.json"), |j| {
        j[bevy_diffusion::loading::embedded::EMBEDDED_MARKER] = true.into()
    });
    let marked = inspect(&copy, &InspectOptions::default());
    assert_eq!(marked.family_label(), "embedded (SD1.x architecture)");
    assert!(marked.is_ok(), "{marked}");
}

/// `inspect`'s problems, as strings.
fn problems(dir: &Path) -> Vec<String> {
    let report = inspect(dir, &InspectOptions::default());
    assert!(!report.is_ok(), "{} should have problems", dir.display());
    report.problems.iter().map(|p| p.to_string()).collect()
}

#[test]
fn inspect_names_the_problem_of_each_damaged_copy() {
    // Truncated weights.
    let dir = fixture_copy("inspect_truncated");
    let file = dir.join("vae/diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 100]).unwrap();
    let report = inspect(&dir, &InspectOptions::default());
    match report.problems.as_slice() {
        [DiffusionError::BadSafetensors { path, reason }] => {
            assert_eq!(path, &file);
            assert!(reason.contains("truncated"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // The other components are still described.
    assert!(report.components[1].built && report.components[2].weights.is_none());

    // A renamed tensor: the same error a load gives.
    let dir = fixture_copy("inspect_renamed");
    let file = dir.join("vae/diffusion_pytorch_model.safetensors");
    let mut tensors = candle_core::safetensors::load(&file, &candle_core::Device::Cpu).unwrap();
    let t = tensors.remove("decoder.conv_out.weight").unwrap();
    tensors.insert("decoder.conv_out.weight_renamed".into(), t);
    candle_core::safetensors::save(&tensors, &file).unwrap();
    let found = problems(&dir);
    assert_eq!(found, [load_err(&dir).to_string()]);
    assert!(
        found[0].contains("`decoder.conv_out.weight` is missing"),
        "{found:?}"
    );
    let report = inspect(&dir, &InspectOptions::default());
    assert_eq!(
        report.components[2].unused_tensors,
        ["decoder.conv_out.weight_renamed"]
    );

    // A config that disagrees with the weights: every mismatched tensor, the first being the
    // one a load stops at.
    let dir = fixture_copy("inspect_block_out_channels");
    edit_json(&dir.join("unet/config.json"), |j| {
        j["block_out_channels"] = serde_json::json!([64, 64])
    });
    let found = problems(&dir);
    assert_eq!(found[0], load_err(&dir).to_string());
    assert!(
        found.len() > 1,
        "all mismatches, not just the first: {found:?}"
    );
    assert!(
        found
            .iter()
            .all(|p| p.contains("unet/diffusion_pytorch_model.safetensors")
                && (p.contains("has shape") || p.contains("is missing"))),
        "{found:?}"
    );

    // Pickled weights.
    let dir = fixture_copy("inspect_pickle");
    std::fs::remove_file(dir.join("unet/diffusion_pytorch_model.safetensors")).unwrap();
    std::fs::write(
        dir.join("unet/diffusion_pytorch_model.bin"),
        b"\x80\x02pickle",
    )
    .unwrap();
    let report = inspect(&dir, &InspectOptions::default());
    assert!(
        matches!(report.problems.as_slice(), [DiffusionError::PickleWeights { path }] if path.ends_with("unet/diffusion_pytorch_model.bin")),
        "{report}"
    );

    // A header whose byte ranges lie (two tensors share bytes).
    let dir = fixture_copy("inspect_lying_header");
    let file = dir.join("text_encoder/model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let (name, last) = header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .max_by_key(|(_, v)| v["data_offsets"][1].as_u64().unwrap())
        .map(|(k, v)| (k.clone(), v.clone()))
        .unwrap();
    let (start, end) = (
        last["data_offsets"][0].as_u64().unwrap(),
        last["data_offsets"][1].as_u64().unwrap(),
    );
    header[&name]["data_offsets"] = serde_json::json!([start - 4, end - 4]);
    let header = serde_json::to_vec(&header).unwrap();
    let mut lying = (header.len() as u64).to_le_bytes().to_vec();
    lying.extend_from_slice(&header);
    lying.extend_from_slice(&bytes[8 + n..bytes.len() - 4]);
    std::fs::write(&file, lying).unwrap();
    let found = problems(&dir);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("text_encoder/model.safetensors") && found[0].contains("overlap"),
        "{found:?}"
    );

    // Over the size cap.
    let report = inspect(
        &tiny_sd_model(),
        &InspectOptions {
            max_file_bytes: 1_000_000,
            ..Default::default()
        },
    );
    assert!(
        matches!(report.problems.as_slice(), [DiffusionError::FileTooLarge { path, limit: 1_000_000, .. }] if path.ends_with("unet/diffusion_pytorch_model.safetensors")),
        "{report}"
    );

    // Several at once: every one is listed.
    let dir = fixture_copy("inspect_many");
    std::fs::remove_file(dir.join("scheduler/scheduler_config.json")).unwrap();
    let file = dir.join("vae/diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    edit_json(&dir.join("unet/config.json"), |j| {
        j["block_out_channels"] = serde_json::json!([64, 64])
    });
    let found = problems(&dir);
    assert!(
        found
            .iter()
            .any(|p| p.contains("scheduler_config.json: missing")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|p| p.contains("vae/") && p.contains("truncated")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|p| p.contains("unet/") && p.contains("has shape")),
        "{found:?}"
    );

    // A text_encoder_2/ makes it SDXL, which then needs tokenizer_2/ (named).
    let dir = fixture_copy("inspect_sdxl");
    copy_dir(&dir.join("text_encoder"), &dir.join("text_encoder_2"));
    let report = inspect(&dir, &InspectOptions::default());
    assert_eq!(report.family_label(), "SDXL");
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.to_string().contains("tokenizer_2")),
        "{:?}",
        report.problems
    );
}

// ---------------------------------------------------------------- hub download (offline)

#[test]
fn download_fetches_only_what_the_folder_needs_and_the_result_loads() {
    let dir = scratch("hub_local");
    // A "repo": the fixture plus files a download must skip.
    let repo_root = dir.join("repo");
    copy_dir(&tiny_sd_model(), &repo_root);
    std::fs::write(repo_root.join("README.md"), "# tiny").unwrap();
    std::fs::write(repo_root.join("tiny.ckpt"), b"pickle").unwrap();
    std::fs::write(
        repo_root.join("unet/diffusion_pytorch_model.bin"),
        b"pickle",
    )
    .unwrap();
    std::fs::create_dir_all(repo_root.join("safety_checker")).unwrap();
    std::fs::write(repo_root.join("safety_checker/model.safetensors"), b"x").unwrap();
    let repo = LocalRepo {
        root: repo_root,
        id: "tests/tiny-sd".into(),
        cache: dir.join("cache"),
    };
    let mut fetched = Vec::new();
    let local = hub::download(&repo, false, &mut |f| fetched.push(f.to_string())).unwrap();
    assert_eq!(local, repo.snapshot_dir());
    assert!(
        fetched
            .iter()
            .all(|f| !f.ends_with(".bin") && !f.ends_with(".ckpt"))
    );
    assert!(
        !fetched
            .iter()
            .any(|f| f.starts_with("safety_checker") || f == "README.md")
    );
    assert_eq!(fetched[0], "model_index.json");
    assert!(ModelFolder::open(&local, &FolderOptions::default()).is_ok());
    let report = inspect(&local, &InspectOptions::default());
    assert!(report.is_ok(), "{report}");
    let original = ModelFolder::open(&tiny_sd_model(), &FolderOptions::default()).unwrap();
    assert_eq!(report.identity, Some(original.identity), "the same model");
}

#[test]
fn download_of_an_upscaler_repo_says_how_to_use_it_before_fetching_weights() {
    let dir = scratch("hub_upscaler");
    let repo = LocalRepo {
        root: bevy_diffusion_tests::fixture_dir("tiny-sd-upscaler").join("model"),
        id: "tests/tiny-sd-upscaler".into(),
        cache: dir.join("cache"),
    };
    let mut fetched = Vec::new();
    let e = hub::download(&repo, false, &mut |f| fetched.push(f.to_string())).unwrap_err();
    let message = e.to_string();
    assert!(
        message.contains("tests/tiny-sd-upscaler")
            && message.contains("x4 upscaler")
            && message.contains("--upscaler DIR")
            && message.contains("texgen upscale"),
        "{message}"
    );
    assert_eq!(fetched, vec!["model_index.json".to_string()]);
}
