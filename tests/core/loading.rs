//! Loading a diffusers-layout folder: the tokenizer against the fixture's reference ids, the
//! folder checks and the typed errors of broken folders (copies of the fixture, damaged in a temp
//! dir), and the checking var-builder backend on small handmade safetensors files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bevy_diffusion::loading::folder::{self, FolderOptions, ModelFamily, ModelFolder};
use bevy_diffusion::models::tokenizer::PromptTokenizer;
use bevy_diffusion::testing::weights::{self, CheckedWeights, VarBuilder, WeightFiles};
use bevy_diffusion::{DiffusionError, LoadOptions, StableDiffusion};
use bevy_diffusion_tests::{tiny_sd_dir, tiny_sd_model};
use candle_core::{DType, Device, Tensor};

// ---------------------------------------------------------------- helpers (shared with bake.rs)

/// A fresh, empty scratch folder for one test, `<tmp>/bevy_diffusion_loading/<name>-<pid>`,
/// removed when dropped (derefs to the folder, or to the model folder of [`fixture_copy`]).
pub(crate) struct Scratch {
    pub(crate) root: PathBuf,
    pub(crate) path: PathBuf,
}

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

pub(crate) fn scratch(name: &str) -> Scratch {
    let root = std::env::temp_dir()
        .join("bevy_diffusion_loading")
        .join(format!("{name}-{}", std::process::id()));
    if root.exists() {
        std::fs::remove_dir_all(&root).unwrap();
    }
    std::fs::create_dir_all(&root).unwrap();
    Scratch {
        path: root.clone(),
        root,
    }
}

pub(crate) fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A copy of the tiny-sd model folder to damage (derefs to the copy's `model/`).
pub(crate) fn fixture_copy(name: &str) -> Scratch {
    let mut scratch = scratch(name);
    scratch.path = scratch.root.join("model");
    copy_dir(&tiny_sd_model(), &scratch.path);
    scratch
}

/// `StableDiffusion::load`'s error (it is not `Debug`, so no `unwrap_err`).
pub(crate) fn load_err(dir: &Path) -> DiffusionError {
    match StableDiffusion::load(dir, &LoadOptions::default()) {
        Ok(_) => panic!("{} loaded but should not", dir.display()),
        Err(e) => e,
    }
}

pub(crate) fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut json);
    std::fs::write(path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
}

/// Writes a safetensors file with a hand-written header (`data` follows it verbatim).
pub(crate) fn write_raw_safetensors(path: &Path, header: &str, data: &[u8]) {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes).unwrap();
}

fn tokenizer_dir() -> PathBuf {
    tiny_sd_model().join("tokenizer")
}

fn as_u32(row: &[i64]) -> Vec<u32> {
    row.iter().map(|&x| u32::try_from(x).unwrap()).collect()
}

/// The fixture's `tokens` case: `references.json` → `cases.tokens` and the
/// `tokens/input_ids` rows of `references.safetensors`.
///
/// Not `References::load()`: references.json holds bare `-Infinity` (DPM-Solver's
/// `lambda_min_clipped`), which serde_json refuses, so it is read here with those tokens nulled.
fn token_references() -> (serde_json::Value, Vec<Vec<i64>>) {
    let dir = tiny_sd_dir();
    let text = std::fs::read_to_string(dir.join("references.json")).unwrap();
    let text = text
        .replace("-Infinity", "null")
        .replace("Infinity", "null")
        .replace("NaN", "null");
    let json: serde_json::Value = serde_json::from_str(&text).expect("references.json parses");
    let tensors =
        candle_core::safetensors::load(dir.join("references.safetensors"), &Device::Cpu).unwrap();
    let ids = tensors["tokens/input_ids"]
        .to_dtype(DType::I64)
        .unwrap()
        .to_vec2::<i64>()
        .unwrap();
    (json["cases"]["tokens"].clone(), ids)
}

/// Asserts `tokenizer` reproduces the fixture's ids, truncated flags and lengths for all prompts.
fn assert_reference_tokens(tokenizer: &PromptTokenizer) {
    let (case, ids) = token_references();
    let prompts = case["prompts"].as_array().unwrap();
    assert_eq!(prompts.len(), 11);
    assert_eq!(ids.len(), prompts.len());
    for (i, prompt) in prompts.iter().enumerate() {
        let prompt = prompt.as_str().unwrap();
        let out = tokenizer.encode(prompt).unwrap();
        assert_eq!(out.ids, as_u32(&ids[i]), "ids of prompt {i} {prompt:?}");
        let json_ids: Vec<i64> = case["input_ids"][i]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap())
            .collect();
        assert_eq!(
            out.ids,
            as_u32(&json_ids),
            "ids of prompt {i} {prompt:?} (references.json)"
        );
        let truncated = case["truncated"][i].as_bool().unwrap();
        assert_eq!(
            out.truncated, truncated,
            "truncated flag of prompt {i} {prompt:?}"
        );
        let len = case["untruncated_len"][i].as_u64().unwrap() as usize;
        assert_eq!(
            out.token_count, len,
            "untruncated length of prompt {i} {prompt:?}"
        );
    }
    // Only the over-long prompt (index 10) is truncated.
    let flags: Vec<bool> = prompts
        .iter()
        .map(|p| tokenizer.encode(p.as_str().unwrap()).unwrap().truncated)
        .collect();
    assert_eq!(flags.iter().filter(|&&t| t).count(), 1);
    assert!(flags[10]);
}

// ---------------------------------------------------------------- tokenizer

#[test]
fn tokenizer_matches_reference_ids_for_all_prompts() {
    let tokenizer = PromptTokenizer::from_dir(&tokenizer_dir(), 77).unwrap();
    assert_eq!(
        (tokenizer.bos_id(), tokenizer.eos_id(), tokenizer.pad_id()),
        (998, 999, 999)
    );
    assert_eq!(tokenizer.max_length(), 77);
    assert_reference_tokens(&tokenizer);
    // Empty prompt: [bos, eos, pad...].
    let empty = tokenizer.encode("").unwrap();
    assert_eq!(&empty.ids[..3], &[998, 999, 999]);
    assert_eq!(empty.ids.len(), 77);
    // The truncated prompt: bos + 75 tokens + eos.
    let (case, _) = token_references();
    let long = case["prompts"][10].as_str().unwrap();
    let out = tokenizer.encode(long).unwrap();
    assert_eq!(out.ids[0], 998);
    assert_eq!(out.ids[76], 999);
    assert_ne!(out.ids[75], 999);
}

#[test]
fn tokenizer_built_from_vocab_and_merges_matches_tokenizer_json() {
    // Most SD 1.x/2.x repositories ship only the slow files; the CLIP tokenizer built from them
    // must give the same ids.
    let dir = scratch("slow_tokenizer");
    for file in [
        "vocab.json",
        "merges.txt",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        std::fs::copy(tokenizer_dir().join(file), dir.join(file)).unwrap();
    }
    let tokenizer = PromptTokenizer::from_dir(&dir, 77).unwrap();
    assert!(tokenizer.path().ends_with("vocab.json"));
    assert_reference_tokens(&tokenizer);
}

#[test]
fn tokenizer_pads_with_the_configured_pad_token_like_sd2() {
    // SD 2.x configs say pad_token "!" (here as an object, the other accepted spelling).
    let dir = scratch("sd2_pad");
    std::fs::copy(
        tokenizer_dir().join("tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
            "pad_token": {"content": "!", "special": true}, "model_max_length": 77}"#,
    )
    .unwrap();
    let tokenizer = PromptTokenizer::from_dir(&dir, 77).unwrap();
    let bang = tokenizer.inner().token_to_id("!").unwrap();
    assert_eq!(tokenizer.pad_id(), bang);
    let out = tokenizer.encode("a brick wall").unwrap();
    let mut expected = vec![998, 320, 677, 628, 999];
    expected.resize(77, bang);
    assert_eq!(out.ids, expected);
    // As in transformers, the pad token is a special added token: `!!!` is three pad ids, not a
    // BPE merge.
    let out = tokenizer.encode("wall!!!").unwrap();
    assert_eq!(out.token_count, 2 + 1 + 3, "{:?}", &out.ids[..8]);
    assert_eq!(&out.ids[2..5], &[bang, bang, bang]);

    // Only special_tokens_map.json: read from there.
    let dir = scratch("sd2_pad_map");
    std::fs::copy(
        tokenizer_dir().join("tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
    std::fs::write(dir.join("special_tokens_map.json"), r#"{"pad_token": "!"}"#).unwrap();
    assert_eq!(PromptTokenizer::from_dir(&dir, 77).unwrap().pad_id(), bang);
}

#[test]
fn tokenizer_missing_or_broken_files_are_typed_errors() {
    let dir = scratch("tokenizer_missing");
    match PromptTokenizer::from_dir(&dir, 77) {
        Err(e @ DiffusionError::MissingFile { .. }) => {
            let DiffusionError::MissingFile { path, .. } = &e else {
                unreachable!()
            };
            assert_eq!(path, &dir.join("tokenizer.json"));
            assert!(e.to_string().contains("tokenizer.json"), "{e}");
        }
        other => panic!("expected MissingFile, got {:?}", other.map(|_| ())),
    }

    let dir = scratch("tokenizer_broken");
    std::fs::write(
        dir.join("tokenizer.json"),
        r#"{"model": {"type": "BPE", "vocab": 12}}"#,
    )
    .unwrap();
    match PromptTokenizer::from_dir(&dir, 77) {
        Err(e @ DiffusionError::Tokenizer { .. }) => {
            let DiffusionError::Tokenizer { path, .. } = &e else {
                unreachable!()
            };
            assert_eq!(path, &dir.join("tokenizer.json"));
            assert!(e.to_string().contains("tokenizer.json"), "{e}");
        }
        other => panic!("expected Tokenizer error, got {:?}", other.map(|_| ())),
    }

    // A pad token the vocabulary does not know.
    let dir = scratch("tokenizer_bad_pad");
    std::fs::copy(
        tokenizer_dir().join("tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"pad_token": "<|pad-not-in-vocab|>"}"#,
    )
    .unwrap();
    match PromptTokenizer::from_dir(&dir, 77) {
        Err(e @ DiffusionError::Tokenizer { .. }) => {
            assert!(e.to_string().contains("<|pad-not-in-vocab|>"), "{e}")
        }
        other => panic!("expected Tokenizer error, got {:?}", other.map(|_| ())),
    }
}

// ---------------------------------------------------------------- folder checks

#[test]
fn fixture_folder_validates_as_sd1_with_a_stable_identity() {
    let report = folder::validate(&tiny_sd_model(), &FolderOptions::default());
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(
        report.class_name.as_deref(),
        Some("StableDiffusionPipeline")
    );
    assert_eq!(report.family, Some(ModelFamily::Sd1));
    let folder = report.folder.unwrap();
    assert_eq!(folder.identity.len(), 64);
    assert!(
        folder
            .unet
            .weights
            .path
            .ends_with("unet/diffusion_pytorch_model.safetensors")
    );
    assert!(
        folder
            .text_encoder
            .weights
            .path
            .ends_with("text_encoder/model.safetensors")
    );
    assert!(!folder.vae.weights.fp16_variant);
    assert!(folder.unet.weights.tensor("conv_in.weight").is_some());

    // Same content elsewhere: same identity. A config edit: another identity.
    let copy = fixture_copy("identity");
    let opened = ModelFolder::open(&copy, &FolderOptions::default()).unwrap();
    assert_eq!(opened.identity, folder.identity);
    edit_json(&copy.join("scheduler/scheduler_config.json"), |j| {
        j["steps_offset"] = 0.into()
    });
    let edited = ModelFolder::open(&copy, &FolderOptions::default()).unwrap();
    assert_ne!(edited.identity, folder.identity);
    // The recommended sampling settings too: a request that leaves its steps unset renders
    // what bevy_diffusion.json says, so caches keyed on the identity must see a change there.
    let mut previous = edited.identity;
    for recommended in [
        r#"{"num_inference_steps": 12}"#,
        r#"{"num_inference_steps": 16}"#,
    ] {
        std::fs::write(copy.join("bevy_diffusion.json"), recommended).unwrap();
        let opened = ModelFolder::open(&copy, &FolderOptions::default()).unwrap();
        assert_ne!(opened.identity, previous, "{recommended}");
        previous = opened.identity;
    }
}

#[test]
fn fp16_variant_is_used_only_when_preferred_or_alone() {
    let dir = fixture_copy("fp16");
    let vae = dir.join("vae");
    let tensors = candle_core::safetensors::load(
        vae.join("diffusion_pytorch_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let half: HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(k, v)| (k, v.to_dtype(DType::F16).unwrap()))
        .collect();
    candle_core::safetensors::save(&half, vae.join("diffusion_pytorch_model.fp16.safetensors"))
        .unwrap();

    let plain = ModelFolder::open(&dir, &FolderOptions::default()).unwrap();
    assert!(!plain.vae.weights.fp16_variant);
    assert!(
        plain
            .vae
            .weights
            .path
            .ends_with("diffusion_pytorch_model.safetensors")
    );

    let preferred = FolderOptions {
        prefer_fp16_variant: true,
        ..FolderOptions::default()
    };
    let fp16 = ModelFolder::open(&dir, &preferred).unwrap();
    assert!(fp16.vae.weights.fp16_variant);
    assert!(
        fp16.vae
            .weights
            .path
            .ends_with("diffusion_pytorch_model.fp16.safetensors")
    );
    assert_eq!(
        fp16.vae
            .weights
            .tensor("decoder.conv_in.weight")
            .unwrap()
            .1
            .dtype,
        "F16"
    );
    assert_ne!(fp16.identity, plain.identity);
    // Preferred but absent (unet): the plain file.
    assert!(!fp16.unet.weights.fp16_variant);

    std::fs::remove_file(vae.join("diffusion_pytorch_model.safetensors")).unwrap();
    let alone = ModelFolder::open(&dir, &FolderOptions::default()).unwrap();
    assert!(alone.vae.weights.fp16_variant);

    // ... and the checked backend converts it to f32.
    let weights = CheckedWeights::open(&alone.vae.weights, &Device::Cpu).unwrap();
    let t = weights
        .build(|vb| vb.get((16, 4, 3, 3), "decoder.conv_in.weight"))
        .unwrap();
    assert_eq!(t.dtype(), DType::F32);
}

#[test]
fn missing_folder_is_model_folder_missing() {
    let scratch = scratch("missing_folder");
    let dir = scratch.join("no-such-model");
    let e = load_err(&dir);
    assert!(
        matches!(&e, DiffusionError::ModelFolderMissing { path } if path == &dir),
        "{e:?}"
    );
    assert!(e.to_string().contains("no-such-model"), "{e}");
}

#[test]
fn missing_unet_config_is_missing_file() {
    let dir = fixture_copy("missing_unet_config");
    std::fs::remove_file(dir.join("unet/config.json")).unwrap();
    let e = load_err(&dir);
    assert!(
        matches!(&e, DiffusionError::MissingFile { path, .. } if path == &dir.join("unet/config.json")),
        "{e:?}"
    );
    assert!(e.to_string().contains("unet/config.json"), "{e}");
}

#[test]
fn missing_model_index_is_missing_file() {
    let dir = fixture_copy("missing_model_index");
    std::fs::remove_file(dir.join("model_index.json")).unwrap();
    let e = load_err(&dir);
    assert!(
        matches!(&e, DiffusionError::MissingFile { path, .. } if path.ends_with("model_index.json")),
        "{e:?}"
    );
}

#[test]
fn truncated_vae_weights_are_bad_safetensors() {
    let dir = fixture_copy("truncated_vae");
    let file = dir.join("vae/diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(&dir);
    match &e {
        DiffusionError::BadSafetensors { path, reason } => {
            assert_eq!(path, &file);
            assert!(reason.contains("truncated"), "{reason}");
        }
        other => panic!("expected BadSafetensors, got {other:?}"),
    }
    assert!(
        e.to_string()
            .contains("vae/diffusion_pytorch_model.safetensors"),
        "{e}"
    );
}

#[test]
fn pickle_weights_are_refused() {
    let dir = fixture_copy("pickle");
    let unet = dir.join("unet");
    std::fs::remove_file(unet.join("diffusion_pytorch_model.safetensors")).unwrap();
    std::fs::write(
        unet.join("diffusion_pytorch_model.bin"),
        b"\x80\x02not really a pickle",
    )
    .unwrap();
    let e = load_err(&dir);
    assert!(
        matches!(&e, DiffusionError::PickleWeights { path } if path == &unet.join("diffusion_pytorch_model.bin")),
        "{e:?}"
    );
    let message = e.to_string();
    assert!(
        message.contains("diffusion_pytorch_model.bin") && message.contains("safetensors"),
        "{message}"
    );
}

#[test]
fn sdxl_marks_without_text_encoder_2_and_other_pipelines_are_refused_by_name() {
    // Any SDXL mark on an SD 1.x folder: it then needs text_encoder_2, named in the error.
    let dir = fixture_copy("sdxl_class");
    edit_json(&dir.join("model_index.json"), |j| {
        j["_class_name"] = "StableDiffusionXLPipeline".into()
    });
    let e = load_err(&dir);
    assert!(
        matches!(&e, DiffusionError::MissingFile { path, .. } if path.ends_with("text_encoder_2")),
        "{e:?}"
    );
    let message = e.to_string();
    assert!(
        message.contains("SDXL") && message.contains("StableDiffusionXLPipeline"),
        "{message}"
    );

    // By the UNet's text_time conditioning.
    let dir = fixture_copy("sdxl_text_time");
    edit_json(&dir.join("unet/config.json"), |j| {
        j["addition_embed_type"] = "text_time".into()
    });
    let e = load_err(&dir);
    assert!(
        matches!(&e, DiffusionError::MissingFile { path, .. } if path.ends_with("text_encoder_2")),
        "{e:?}"
    );
    assert!(e.to_string().contains("text_time"), "{e}");

    // A text_encoder_2 folder (here a copy of the CLIPTextModel) without tokenizer_2.
    let dir = fixture_copy("sdxl_te2");
    copy_dir(&dir.join("text_encoder"), &dir.join("text_encoder_2"));
    let e = load_err(&dir);
    assert!(
        matches!(&e, DiffusionError::MissingFile { path, .. } if path.ends_with("tokenizer_2")),
        "{e:?}"
    );

    // SDXL pipelines other than text-to-image and img2img: refused by name.
    let dir = fixture_copy("sdxl_inpaint");
    edit_json(&dir.join("model_index.json"), |j| {
        j["_class_name"] = "StableDiffusionXLInpaintPipeline".into()
    });
    let e = load_err(&dir);
    assert!(
        matches!(&e, DiffusionError::UnsupportedModel { family, .. } if family == "SDXL"),
        "{e:?}"
    );

    // Other pipelines by name.
    for (class, family) in [
        ("StableDiffusion3Pipeline", "SD3"),
        ("FluxPipeline", "FLUX"),
        ("KandinskyPipeline", "KandinskyPipeline"),
    ] {
        let dir = fixture_copy(&format!("other_{family}"));
        edit_json(&dir.join("model_index.json"), |j| {
            j["_class_name"] = class.into()
        });
        let e = load_err(&dir);
        assert!(
            matches!(&e, DiffusionError::UnsupportedModel { family: f, .. } if f == family),
            "{class}: {e:?}"
        );
        assert!(e.to_string().contains(family), "{e}");
    }
}

#[test]
fn validate_lists_every_problem() {
    let dir = fixture_copy("many_problems");
    std::fs::remove_file(dir.join("unet/config.json")).unwrap();
    let vae = dir.join("vae/diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&vae).unwrap();
    std::fs::write(&vae, &bytes[..1000]).unwrap();
    std::fs::remove_file(dir.join("text_encoder/model.safetensors")).unwrap();
    std::fs::write(dir.join("text_encoder/pytorch_model.bin"), b"pickle").unwrap();
    std::fs::remove_file(dir.join("scheduler/scheduler_config.json")).unwrap();

    let report = folder::validate(&dir, &FolderOptions::default());
    assert!(report.folder.is_none());
    let p = &report.problems;
    assert_eq!(p.len(), 4, "{p:#?}");
    assert!(
        matches!(&p[0], DiffusionError::PickleWeights { path } if path.ends_with("text_encoder/pytorch_model.bin"))
    );
    assert!(
        matches!(&p[1], DiffusionError::MissingFile { path, .. } if path.ends_with("unet/config.json"))
    );
    assert!(matches!(&p[2], DiffusionError::BadSafetensors { path, .. } if path == &vae));
    assert!(
        matches!(&p[3], DiffusionError::MissingFile { path, .. } if path.ends_with("scheduler/scheduler_config.json"))
    );

    // The size cap.
    let report = folder::validate(
        &tiny_sd_model(),
        &FolderOptions {
            max_file_bytes: 1_000_000,
            ..FolderOptions::default()
        },
    );
    assert!(
        matches!(report.problems.as_slice(), [DiffusionError::FileTooLarge { path, limit: 1_000_000, .. }]
            if path.ends_with("unet/diffusion_pytorch_model.safetensors")),
        "{:?}",
        report.problems
    );

    // Widths that disagree between text encoder and UNet.
    let dir = fixture_copy("cross_dim");
    edit_json(&dir.join("unet/config.json"), |j| {
        j["cross_attention_dim"] = 64.into()
    });
    let report = folder::validate(&dir, &FolderOptions::default());
    assert!(
        matches!(report.problems.as_slice(), [DiffusionError::InvalidConfig { field, .. }] if field == "cross_attention_dim"),
        "{:?}",
        report.problems
    );
}

// ---------------------------------------------------------------- safetensors headers

#[test]
fn lying_safetensors_headers_are_bad_safetensors() {
    let dir = scratch("headers");
    let cap = u64::MAX;
    let reason = |name: &str, header: &str, data: &[u8]| -> String {
        let path = dir.join(name);
        write_raw_safetensors(&path, header, data);
        match weights::read_header(&path, cap) {
            Err(DiffusionError::BadSafetensors { path: p, reason }) => {
                assert_eq!(p, path);
                reason
            }
            other => panic!("{name}: expected BadSafetensors, got {other:?}"),
        }
    };
    let ok = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    write_raw_safetensors(&dir.join("ok.safetensors"), ok, &[0; 8]);
    let header = weights::read_header(&dir.join("ok.safetensors"), cap).unwrap();
    assert_eq!(header.tensors["a"].shape, vec![2]);

    let r = reason("short.safetensors", ok, &[0; 4]);
    assert!(r.contains("truncated") && r.contains("`a`"), "{r}");
    let r = reason(
        "overlap.safetensors",
        r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
        &[0; 12],
    );
    assert!(r.contains("overlap"), "{r}");
    let r = reason(
        "size.safetensors",
        r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
        &[0; 8],
    );
    assert!(r.contains("`a`") && r.contains("12 bytes"), "{r}");
    let r = reason(
        "gap.safetensors",
        r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
        &[0; 12],
    );
    assert!(r.contains("belong to no tensor"), "{r}");
    let r = reason("trailing.safetensors", ok, &[0; 16]);
    assert!(r.contains("8 unexpected bytes"), "{r}");
    let r = reason("json.safetensors", "{not json", &[]);
    assert!(r.contains("JSON"), "{r}");
    let r = reason(
        "dtype.safetensors",
        r#"{"a":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}}"#,
        &[0; 8],
    );
    assert!(r.contains("`a`"), "{r}");

    // Header length prefix larger than the file.
    let path = dir.join("prefix.safetensors");
    let mut bytes = 1000u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    std::fs::write(&path, bytes).unwrap();
    assert!(
        matches!(weights::read_header(&path, cap), Err(DiffusionError::BadSafetensors { reason, .. }) if reason.contains("truncated"))
    );
    // Not even a length prefix.
    std::fs::write(&path, b"abc").unwrap();
    assert!(matches!(
        weights::read_header(&path, cap),
        Err(DiffusionError::BadSafetensors { .. })
    ));
    // Over the size cap.
    assert!(matches!(
        weights::read_header(&dir.join("ok.safetensors"), 10),
        Err(DiffusionError::FileTooLarge {
            size: 32..,
            limit: 10,
            ..
        })
    ));
}

// ---------------------------------------------------------------- checked backend

/// A toy `candle_nn::linear(in_dim, out_dim, vb)`: the same two lookups.
fn toy_linear(
    vb: &VarBuilder,
    in_dim: usize,
    out_dim: usize,
) -> candle_core::Result<(Tensor, Tensor)> {
    Ok((
        vb.get((out_dim, in_dim), "weight")?,
        vb.get(out_dim, "bias")?,
    ))
}

fn toy_weights(dir: &Path, dtype: DType) -> WeightFiles {
    let path = dir.join("toy.safetensors");
    let tensors: HashMap<String, Tensor> = [
        (
            "lin.weight".to_string(),
            Tensor::arange(0f32, 12., &Device::Cpu)
                .unwrap()
                .reshape((4, 3))
                .unwrap(),
        ),
        (
            "lin.bias".to_string(),
            Tensor::new(&[1f32, 2., 3., 4.], &Device::Cpu).unwrap(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k, v.to_dtype(dtype).unwrap()))
    .collect();
    candle_core::safetensors::save(&tensors, &path).unwrap();
    WeightFiles {
        path: path.clone(),
        shards: vec![weights::read_header(&path, u64::MAX).unwrap()],
        fp16_variant: false,
    }
}

#[test]
fn checked_backend_loads_converts_and_reports_typed_errors() {
    let dir = scratch("backend");
    let files = toy_weights(&dir, DType::F16);
    let weights = CheckedWeights::open(&files, &Device::Cpu).unwrap();

    // Right shapes: loaded and converted from f16 to f32.
    let (w, b) = weights.build(|vb| toy_linear(&vb.pp("lin"), 3, 4)).unwrap();
    assert_eq!(w.dtype(), DType::F32);
    assert_eq!(w.dims(), &[4, 3]);
    assert_eq!(b.to_vec1::<f32>().unwrap(), vec![1., 2., 3., 4.]);
    assert!(weights.unused_tensors().is_empty());

    // Wrong size: ShapeMismatch naming the file, the tensor and both shapes.
    let e = weights
        .build(|vb| toy_linear(&vb.pp("lin"), 5, 4))
        .unwrap_err();
    match &e {
        DiffusionError::ShapeMismatch {
            path,
            tensor,
            expected,
            found,
        } => {
            assert_eq!(path, &files.path);
            assert_eq!(tensor, "lin.weight");
            assert_eq!(expected, &vec![4, 5]);
            assert_eq!(found, &vec![4, 3]);
        }
        other => panic!("expected ShapeMismatch, got {other:?}"),
    }
    let message = e.to_string();
    assert!(
        message.contains("toy.safetensors") && message.contains("lin.weight"),
        "{message}"
    );
    assert!(
        message.contains("[4, 5]") && message.contains("[4, 3]"),
        "{message}"
    );

    // Absent: MissingTensor with the full dotted name and the expected shape.
    let e = weights
        .build(|vb| toy_linear(&vb.pp("block").pp("proj"), 3, 4))
        .unwrap_err();
    match &e {
        DiffusionError::MissingTensor {
            path,
            tensor,
            expected,
        } => {
            assert_eq!(path, &files.path);
            assert_eq!(tensor, "block.proj.weight");
            assert_eq!(expected, &vec![4, 3]);
        }
        other => panic!("expected MissingTensor, got {other:?}"),
    }
    assert!(e.to_string().contains("block.proj.weight"), "{e}");

    // A model that probes an optional tensor and recovers still loads.
    let probed = weights.build(|vb| {
        let _optional = vb.get(7, "lin.scale").ok();
        toy_linear(&vb.pp("lin"), 3, 4)
    });
    assert!(probed.is_ok());

    // A failure after a recovered probe reports the failure that stopped construction.
    let e = weights
        .build(|vb| {
            let _optional = vb.get(7, "lin.scale").ok();
            toy_linear(&vb.pp("lin"), 3, 8)
        })
        .unwrap_err();
    assert!(
        matches!(&e, DiffusionError::ShapeMismatch { tensor, .. } if tensor == "lin.weight"),
        "{e:?}"
    );
}

/// Weights are read tensor by tensor from the file (no memory map): bf16 and f32 files give
/// exact values, and a file that changed after its header was validated is refused with a
/// typed error naming it, or (cut short after opening) fails the build with one, never a crash.
#[test]
fn checked_backend_reads_each_dtype_and_refuses_a_changed_file() {
    for dtype in [DType::F32, DType::BF16] {
        let dir = scratch(&format!("read-{dtype:?}"));
        let files = toy_weights(&dir, dtype);
        let weights = CheckedWeights::open(&files, &Device::Cpu).unwrap();
        let (w, b) = weights.build(|vb| toy_linear(&vb.pp("lin"), 3, 4)).unwrap();
        assert_eq!(w.dtype(), DType::F32);
        assert_eq!(
            w.to_vec2::<f32>().unwrap(),
            vec![
                vec![0., 1., 2.],
                vec![3., 4., 5.],
                vec![6., 7., 8.],
                vec![9., 10., 11.]
            ]
        );
        assert_eq!(b.to_vec1::<f32>().unwrap(), vec![1., 2., 3., 4.]);
    }

    let dir = scratch("changed");
    let files = toy_weights(&dir, DType::F32);
    let len = std::fs::metadata(&files.path).unwrap().len();
    // Grown since its header was read: refused at open.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&files.path)
        .unwrap();
    f.set_len(len + 4).unwrap();
    let e = CheckedWeights::open(&files, &Device::Cpu).err().unwrap();
    match &e {
        DiffusionError::BadSafetensors { path, reason } => {
            assert_eq!(path, &files.path);
            assert!(reason.contains("changed"), "{reason}");
        }
        other => panic!("expected BadSafetensors, got {other:?}"),
    }
    // Opened, then cut short: the tensor's read fails with a typed error naming the file.
    f.set_len(len).unwrap();
    let weights = CheckedWeights::open(&files, &Device::Cpu).unwrap();
    f.set_len(len - 8).unwrap();
    let e = weights
        .build(|vb| toy_linear(&vb.pp("lin"), 3, 4))
        .unwrap_err();
    match &e {
        DiffusionError::BadSafetensors { path, reason } => {
            assert_eq!(path, &files.path);
            assert!(
                reason.contains("lin.") && reason.contains("shorter than its header"),
                "{reason}"
            );
        }
        other => panic!("expected BadSafetensors, got {other:?}"),
    }
}

#[test]
fn checked_backend_reads_sharded_checkpoints() {
    let scratch = scratch("sharded");
    let dir = scratch.join("unet");
    std::fs::create_dir_all(&dir).unwrap();
    let a: HashMap<String, Tensor> = [(
        "lin.weight".to_string(),
        Tensor::zeros((4, 3), DType::F32, &Device::Cpu).unwrap(),
    )]
    .into();
    let b: HashMap<String, Tensor> = [(
        "lin.bias".to_string(),
        Tensor::ones(4, DType::BF16, &Device::Cpu).unwrap(),
    )]
    .into();
    candle_core::safetensors::save(
        &a,
        dir.join("diffusion_pytorch_model-00001-of-00002.safetensors"),
    )
    .unwrap();
    candle_core::safetensors::save(
        &b,
        dir.join("diffusion_pytorch_model-00002-of-00002.safetensors"),
    )
    .unwrap();
    let index = dir.join("diffusion_pytorch_model.safetensors.index.json");
    std::fs::write(
        &index,
        r#"{"metadata": {"total_size": 64}, "weight_map": {
            "lin.weight": "diffusion_pytorch_model-00001-of-00002.safetensors",
            "lin.bias": "diffusion_pytorch_model-00002-of-00002.safetensors"}}"#,
    )
    .unwrap();

    // Through a model folder: the fixture with its UNet replaced by the sharded toy.
    let model = fixture_copy("sharded_folder");
    let unet = model.join("unet");
    std::fs::remove_file(unet.join("diffusion_pytorch_model.safetensors")).unwrap();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), unet.join(entry.file_name())).unwrap();
    }
    let folder = ModelFolder::open(&model, &FolderOptions::default()).unwrap();
    let files = &folder.unet.weights;
    assert_eq!(
        files.path,
        unet.join("diffusion_pytorch_model.safetensors.index.json")
    );
    assert_eq!(files.shards.len(), 2);
    let weights = CheckedWeights::open(files, &Device::Cpu).unwrap();
    let (_, bias) = weights.build(|vb| toy_linear(&vb.pp("lin"), 3, 4)).unwrap();
    assert_eq!(bias.dtype(), DType::F32);
    assert_eq!(bias.to_vec1::<f32>().unwrap(), vec![1.; 4]);
    // A shape error names the shard holding the tensor; an absent tensor names the index.
    let e = weights
        .build(|vb| toy_linear(&vb.pp("lin"), 3, 5))
        .unwrap_err();
    assert!(
        matches!(&e, DiffusionError::ShapeMismatch { path, .. } if path.ends_with("diffusion_pytorch_model-00001-of-00002.safetensors")),
        "{e:?}"
    );
    let e = weights.build(|vb| vb.get(1, "nope")).unwrap_err();
    assert!(
        matches!(&e, DiffusionError::MissingTensor { path, .. } if path == &files.path),
        "{e:?}"
    );

    // An index naming a shard that is absent, or a path outside the folder.
    edit_json(
        &unet.join("diffusion_pytorch_model.safetensors.index.json"),
        |j| {
            j["weight_map"]["lin.bias"] =
                "diffusion_pytorch_model-00009-of-00009.safetensors".into();
            j["weight_map"]["lin.extra"] = "../../escape.safetensors".into();
        },
    );
    let report = folder::validate(&model, &FolderOptions::default());
    assert!(report.problems.iter().any(|p| matches!(p, DiffusionError::MissingFile { path, .. } if path.ends_with("diffusion_pytorch_model-00009-of-00009.safetensors"))), "{:?}", report.problems);
    assert!(report.problems.iter().any(|p| matches!(p, DiffusionError::BadSafetensors { reason, .. } if reason.contains("escape"))), "{:?}", report.problems);
}

// ---------------------------------------------------------------- full loads (need the models)

#[test]
fn fixture_loads() {
    let model = StableDiffusion::load(&tiny_sd_model(), &LoadOptions::default()).unwrap();
    assert_eq!(model.family, ModelFamily::Sd1);
    assert_eq!(model.tokenizer.max_length(), 77);
    let folder = ModelFolder::open(&tiny_sd_model(), &FolderOptions::default()).unwrap();
    assert_eq!(model.identity, folder.identity);
}

#[test]
fn unet_config_disagreeing_with_weights_is_shape_mismatch() {
    let dir = fixture_copy("block_out_channels");
    edit_json(&dir.join("unet/config.json"), |j| {
        j["block_out_channels"] = serde_json::json!([64, 64])
    });
    let e = load_err(&dir);
    match &e {
        DiffusionError::ShapeMismatch {
            path,
            tensor,
            expected,
            found,
        } => {
            assert_eq!(path, &dir.join("unet/diffusion_pytorch_model.safetensors"));
            assert_ne!(expected, found);
            let message = e.to_string();
            assert!(message.contains(tensor.as_str()), "{message}");
            assert!(
                message.contains(&format!("{expected:?}"))
                    && message.contains(&format!("{found:?}")),
                "{message}"
            );
        }
        other => panic!("expected ShapeMismatch, got {other:?}"),
    }
}

#[test]
fn renamed_tensor_is_missing_tensor() {
    let dir = fixture_copy("renamed_tensor");
    let file = dir.join("vae/diffusion_pytorch_model.safetensors");
    let mut tensors = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    let t = tensors.remove("decoder.conv_out.weight").unwrap();
    tensors.insert("decoder.conv_out.weight_renamed".into(), t);
    candle_core::safetensors::save(&tensors, &file).unwrap();
    let e = load_err(&dir);
    match &e {
        DiffusionError::MissingTensor {
            path,
            tensor,
            expected,
        } => {
            assert_eq!(path, &file);
            assert_eq!(tensor, "decoder.conv_out.weight");
            assert_eq!(expected, &vec![3, 8, 3, 3]);
        }
        other => panic!("expected MissingTensor, got {other:?}"),
    }
    assert!(e.to_string().contains("decoder.conv_out.weight"), "{e}");
}

#[test]
fn tokenizer_larger_than_the_text_encoder_vocab_is_invalid_config() {
    let dir = fixture_copy("vocab_size");
    edit_json(&dir.join("text_encoder/config.json"), |j| {
        j["vocab_size"] = 500.into()
    });
    let report = folder::validate(&dir, &FolderOptions::default());
    match report.problems.as_slice() {
        [e @ DiffusionError::InvalidConfig { path, field, .. }] => {
            assert!(path.ends_with("text_encoder/config.json"));
            assert_eq!(field, "vocab_size");
            assert!(e.to_string().contains("999"), "{e}");
        }
        other => panic!("expected one InvalidConfig, got {other:?}"),
    }
}
