//! AutoencoderTiny (TAESD) against HF diffusers' reference tensors (tests/fixtures/tiny-taesd:
//! `taesd_decode`, `taesd_encode`, and `pipe_sd_taesd_ddim4`, tiny-sd with TAESD as its decoder),
//! seamless decoding with TAESD, and the refusals of bad decoder folders.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bevy_diffusion::loading::folder::{FolderOptions, ModelFolder};
use bevy_diffusion::models::autoencoder_tiny::{AutoencoderTiny, AutoencoderTinyConfig};
use bevy_diffusion::models::autoencoders::Vae;
use bevy_diffusion::noise::{NoiseSource, SeededNoise};
use bevy_diffusion::{DiffusionError, LoadOptions, StableDiffusion, Tiling};
use bevy_diffusion_tests::parity::{check, cobblestone_ddim4, seam_ratio};
use bevy_diffusion_tests::{References, fixture_dir, max_abs_diff, tiny_sd_model};
use candle_core::{DType, Device, Tensor};

fn refs() -> &'static References {
    static REFS: OnceLock<References> = OnceLock::new();
    REFS.get_or_init(|| References::load_from(&fixture_dir("tiny-taesd")))
}

fn taesd_dir() -> PathBuf {
    fixture_dir("tiny-taesd").join("model")
}

fn config() -> AutoencoderTinyConfig {
    AutoencoderTinyConfig::from_file(&taesd_dir().join("config.json")).expect("TAESD config")
}

fn load_taesd() -> AutoencoderTiny {
    let weights = taesd_dir().join("diffusion_pytorch_model.safetensors");
    let vb = unsafe {
        candle_nn::VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, &Device::Cpu)
            .expect("fixture TAESD weights")
    };
    AutoencoderTiny::new(vb, &config()).expect("AutoencoderTiny::new")
}

/// `[1, 3, H, W]` in [-1, 1] -> the HWC `[H, W, 3]` image in [0, 1] diffusers' postprocess gives.
fn to_image(decoded: &Tensor) -> Tensor {
    ((decoded / 2.0).unwrap() + 0.5)
        .unwrap()
        .clamp(0f32, 1f32)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .permute((1, 2, 0))
        .unwrap()
}

#[test]
fn config_of_the_fixture() {
    let cfg = config();
    assert_eq!(cfg.encoder_block_out_channels, vec![16; 4]);
    assert_eq!(cfg.num_encoder_blocks, vec![1, 3, 3, 3]);
    assert_eq!(cfg.num_decoder_blocks, vec![3, 3, 3, 1]);
    assert_eq!(
        (
            cfg.latent_channels,
            cfg.downscale_factor,
            cfg.scaling_factor
        ),
        (4, 8, 1.0)
    );
    assert_eq!((cfg.latent_magnitude, cfg.latent_shift), (3.0, 0.5));
}

#[test]
fn decode_matches_diffusers() {
    let r = refs();
    let taesd = load_taesd();
    let (out, inter) = taesd
        .decode_with_intermediates(&r.get("taesd_decode/z"), Tiling::None)
        .unwrap();
    check(
        "taesd_decode/z_soft_clamped",
        &inter["decoder.z_soft_clamped"],
        &r.get("taesd_decode/z_soft_clamped"),
    );
    for name in [
        "decoder.layers.1",
        "decoder.layers.4",
        "decoder.layers.9",
        "decoder.layers.14",
        "decoder.layers",
    ] {
        check(
            &format!("taesd_decode/{name}"),
            &inter[name],
            &r.get(&format!("taesd_decode/intermediate/{name}")),
        );
    }
    check(
        "taesd_decode/decoded_raw",
        &out,
        &r.get("taesd_decode/decoded_raw"),
    );
    check(
        "taesd_decode/image",
        &to_image(&out),
        &r.get("taesd_decode/image"),
    );
    let plain = taesd
        .decode(&r.get("taesd_decode/z"), Tiling::None)
        .unwrap();
    assert_eq!(max_abs_diff(&plain, &out).0, 0.0, "decode == traced decode");
}

#[test]
fn encode_matches_diffusers() {
    let r = refs();
    let taesd = load_taesd();
    let (latents, inter) = taesd
        .encode_with_intermediates(&r.get("taesd_encode/image"))
        .unwrap();
    for i in [2, 5, 9, 13] {
        let name = format!("encoder.layers.{i}");
        check(
            &format!("taesd_encode/{name}"),
            &inter[&name],
            &r.get(&format!("taesd_encode/intermediate/{name}")),
        );
    }
    check(
        "taesd_encode/latents",
        &latents,
        &r.get("taesd_encode/latents"),
    );
    let scaled = taesd.scale_latents(&latents).unwrap();
    check(
        "taesd_encode/latents_scaled_01",
        &scaled,
        &r.get("taesd_encode/latents_scaled_01"),
    );
    // unscale inverts scale where nothing was clamped (|latents| <= 3 here).
    let back = taesd.unscale_latents(&scaled).unwrap();
    assert!(max_abs_diff(&back, &latents).0 < 1e-5);
}

/// A decoder-only TAESD cannot encode, and says so.
#[test]
fn decoder_only_refuses_to_encode() {
    let weights = taesd_dir().join("diffusion_pytorch_model.safetensors");
    let vb = unsafe {
        candle_nn::VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, &Device::Cpu)
            .unwrap()
    };
    let taesd = AutoencoderTiny::new_decoder_only(vb, &config()).unwrap();
    assert!(!taesd.has_encoder());
    let e = taesd.encode(&refs().get("taesd_encode/image")).unwrap_err();
    assert!(e.to_string().contains("decoder only"), "{e}");
}

/// Writes `config` (a JSON object) to a fresh temp dir's config.json.
fn temp_config(name: &str, config: &serde_json::Value) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "bevy_diffusion_taesd_{name}_{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    dir
}

#[test]
fn config_refusals_name_the_field() {
    let base: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(taesd_dir().join("config.json")).unwrap())
            .unwrap();
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        (
            "upsample",
            serde_json::json!({"upsample_fn": "bilinear"}),
            "upsample_fn",
        ),
        ("act", serde_json::json!({"act_fn": "gelu"}), "act_fn"),
        (
            "levels",
            serde_json::json!({"num_decoder_blocks": [3, 3, 1]}),
            "num_decoder_blocks",
        ),
        (
            "unequal",
            serde_json::json!({"encoder_block_out_channels": [16, 32, 16, 16]}),
            "encoder_block_out_channels",
        ),
        (
            "huge_blocks",
            serde_json::json!({"num_decoder_blocks": [3, 3, 3, 1000000000]}),
            "num_decoder_blocks",
        ),
        (
            "huge_channels",
            serde_json::json!({"decoder_block_out_channels": vec![1u64 << 40; 4]}),
            "decoder_block_out_channels",
        ),
        (
            "scale",
            serde_json::json!({"scaling_factor": 0.0}),
            "scaling_factor",
        ),
        (
            "class",
            serde_json::json!({"_class_name": "AutoencoderKL"}),
            "_class_name",
        ),
    ];
    for (name, patch, field) in cases {
        let mut cfg = base.clone();
        for (k, v) in patch.as_object().unwrap() {
            cfg[k] = v.clone();
        }
        let dir = temp_config(name, &cfg);
        let e = AutoencoderTinyConfig::from_file(&dir.join("config.json")).unwrap_err();
        assert!(
            matches!(
                e,
                DiffusionError::InvalidConfig { .. } | DiffusionError::UnsupportedConfig { .. }
            ),
            "{name}: {e:?}"
        );
        assert!(
            e.to_string().contains(field),
            "{name}: `{e}` should name {field}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}

// ---------------------------------------------------------------- TAESD as tiny-sd's decoder

fn tiny_sd_with_taesd() -> &'static StableDiffusion {
    static MODEL: OnceLock<StableDiffusion> = OnceLock::new();
    MODEL.get_or_init(|| {
        let options = LoadOptions {
            decoder: Some(taesd_dir()),
            ..LoadOptions::default()
        };
        StableDiffusion::load(&tiny_sd_model(), &options).expect("tiny-sd + TAESD loads")
    })
}

/// `StableDiffusionPipeline.from_pretrained(tiny-sd, vae=AutoencoderTiny)`: every step equals
/// tiny-sd's own pipe_ddim4 (the VAE only decodes), and the decode uses scaling_factor 1.0.
#[test]
fn pipe_sd_taesd_ddim4() {
    let m = tiny_sd_with_taesd();
    assert!(m.decoder.is_some() && m.taesd().is_some());
    // The model's own VAE is still the AutoencoderKL (it encodes img2img init images).
    assert!(matches!(m.vae, Vae::Kl(_)));
    crate::sdxs::run_case_with(m, refs(), "pipe_sd_taesd_ddim4");
}

/// The decoder changes what the model produces, so it changes the identity caches key on.
#[test]
fn a_decoder_changes_the_model_identity() {
    let plain = ModelFolder::open(&tiny_sd_model(), &FolderOptions::default())
        .unwrap()
        .identity;
    assert_ne!(plain, tiny_sd_with_taesd().identity);
}

/// Seamless textures with TAESD as the decoder: its convolutions wrap like the UNet's, so the
/// tiled image has no seam, and the untiled one (same noise) does.
#[test]
fn seamless_tiling_with_taesd_has_no_seam() {
    let m = tiny_sd_with_taesd();
    let generate = |noise: &Tensor, tiling: Tiling| cobblestone_ddim4(m, noise, tiling);
    let (mut tiled, mut plain, mut tiled_all) = (Vec::new(), Vec::new(), Vec::new());
    for seed in 0..6 {
        let noise = SeededNoise::new(seed)
            .randn(&[1, 4, 8, 8], &Device::Cpu)
            .unwrap();
        let t = generate(&noise, Tiling::XY);
        let p = generate(&noise, Tiling::None);
        tiled.extend([seam_ratio(&t, true, 8), seam_ratio(&t, false, 8)]);
        plain.extend([seam_ratio(&p, true, 8), seam_ratio(&p, false, 8)]);
        tiled_all.extend([seam_ratio(&t, true, 1), seam_ratio(&t, false, 1)]);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    eprintln!(
        "TAESD seam / interior cell boundary, mean of 6 seeds x 2 axes: tiling xy {:.3}, tiling \
         none {:.3} (seam / every interior pair, tiling xy: {:.3})",
        mean(&tiled),
        mean(&plain),
        mean(&tiled_all)
    );
    assert!(mean(&tiled) <= 1.1, "tiled seam ratio {:.3}", mean(&tiled));
    assert!(
        mean(&plain) > mean(&tiled),
        "untiled {:.3} vs tiled {:.3}",
        mean(&plain),
        mean(&tiled)
    );
    // The decoder alone on a torus: decoding a latent rolled by one column rolls the image by 8
    // pixels exactly.
    let taesd = m.taesd().unwrap();
    let z = SeededNoise::new(9)
        .randn(&[1, 4, 8, 8], &Device::Cpu)
        .unwrap();
    let rolled = Tensor::cat(&[z.narrow(3, 1, 7).unwrap(), z.narrow(3, 0, 1).unwrap()], 3).unwrap();
    let a = taesd.decode(&z, Tiling::XY).unwrap();
    let b = taesd.decode(&rolled, Tiling::XY).unwrap();
    let a_rolled = Tensor::cat(
        &[a.narrow(3, 8, 56).unwrap(), a.narrow(3, 0, 8).unwrap()],
        3,
    )
    .unwrap();
    assert!(
        max_abs_diff(&a_rolled, &b).0 < 1e-5,
        "TAESD tiling xy is shift-equivariant"
    );
}

/// Copies the files `names` of the TAESD fixture into a fresh temp folder.
fn taesd_copy(tag: &str, names: &[&str]) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("bevy_diffusion_taesd_{tag}_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for name in names {
        std::fs::copy(taesd_dir().join(name), dir.join(name)).unwrap();
    }
    dir
}

fn load_with_decoder(dir: &Path) -> bevy_diffusion::Result<StableDiffusion> {
    let options = LoadOptions {
        decoder: Some(dir.to_path_buf()),
        ..LoadOptions::default()
    };
    StableDiffusion::load(&tiny_sd_model(), &options)
}

#[test]
fn bad_decoder_folders_are_typed_errors() {
    // A folder whose VAE is not an AutoencoderTiny: named by its _class_name.
    let kl = tiny_sd_model().join("vae");
    match load_with_decoder(&kl) {
        Err(DiffusionError::InvalidConfig {
            path,
            field,
            reason,
        }) => {
            assert_eq!(field, "_class_name");
            assert_eq!(path, kl.join("config.json"));
            assert!(reason.contains("AutoencoderKL"), "{reason}");
        }
        Err(other) => panic!("expected InvalidConfig, got {other:?}"),
        Ok(_) => panic!("an AutoencoderKL folder is not a decoder"),
    }
    // A config without weights.
    let no_weights = taesd_copy("no_weights", &["config.json"]);
    match load_with_decoder(&no_weights) {
        Err(DiffusionError::MissingFile { path, .. }) => {
            assert_eq!(path, no_weights.join("diffusion_pytorch_model.safetensors"))
        }
        Err(other) => panic!("expected MissingFile, got {other:?}"),
        Ok(_) => panic!("no weights"),
    }
    // Pickled weights are refused.
    std::fs::write(
        no_weights.join("diffusion_pytorch_model.bin"),
        b"not a pickle",
    )
    .unwrap();
    assert!(matches!(
        load_with_decoder(&no_weights),
        Err(DiffusionError::PickleWeights { .. })
    ));
    std::fs::remove_dir_all(&no_weights).ok();
    // Weights without a config; a folder that does not exist.
    let no_config = taesd_copy("no_config", &["diffusion_pytorch_model.safetensors"]);
    match load_with_decoder(&no_config) {
        Err(DiffusionError::MissingFile { path, .. }) => {
            assert_eq!(path, no_config.join("config.json"))
        }
        Err(other) => panic!("expected MissingFile, got {other:?}"),
        Ok(_) => panic!("no config"),
    }
    std::fs::remove_dir_all(&no_config).ok();
    assert!(matches!(
        load_with_decoder(Path::new("/nonexistent/taesd")),
        Err(DiffusionError::ModelFolderMissing { .. })
    ));
    // Weights of another width than the config: the tensor is named.
    let narrow = taesd_copy("narrow", &["diffusion_pytorch_model.safetensors"]);
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(taesd_dir().join("config.json")).unwrap())
            .unwrap();
    cfg["decoder_block_out_channels"] = serde_json::json!([8, 8, 8, 8]);
    std::fs::write(narrow.join("config.json"), cfg.to_string()).unwrap();
    match load_with_decoder(&narrow) {
        Err(DiffusionError::ShapeMismatch { tensor, .. }) => {
            assert!(tensor.starts_with("decoder.layers."), "{tensor}")
        }
        Err(other) => panic!("expected ShapeMismatch, got {other:?}"),
        Ok(_) => panic!("mis-shaped weights"),
    }
    // A decoder for another latent space (8 latent channels) does not fit tiny-sd.
    cfg["decoder_block_out_channels"] = serde_json::json!([16, 16, 16, 16]);
    cfg["latent_channels"] = serde_json::json!(8);
    std::fs::write(narrow.join("config.json"), cfg.to_string()).unwrap();
    match load_with_decoder(&narrow) {
        Err(DiffusionError::InvalidConfig { field, .. }) => assert_eq!(field, "latent_channels"),
        Err(other) => panic!("expected InvalidConfig, got {other:?}"),
        Ok(_) => panic!("8 latent channels"),
    }
    std::fs::remove_dir_all(&narrow).ok();
}

/// A bake with `--decoder` plans with the identity the loaded model has: a rerun skips, and
/// the same manifest without the decoder bakes again (other pixels).
#[test]
fn bake_with_a_decoder_skips_on_rerun_and_rebakes_without_it() {
    use bevy_diffusion::tools::bake::{self, BakeManifest, BakeOptions, ItemOutcome};
    let manifest = BakeManifest::parse(
        r#"(items: { "wall": (prompt: "mossy stone wall", seed: 3, tiling: XY, width: 32, height: 32, num_inference_steps: 2) })"#,
        Path::new("test.ron"),
    )
    .unwrap();
    let out =
        std::env::temp_dir().join(format!("bevy_diffusion_taesd_bake_{}", std::process::id()));
    std::fs::remove_dir_all(&out).ok();
    let with_decoder = BakeOptions {
        load: LoadOptions {
            decoder: Some(taesd_dir()),
            ..LoadOptions::default()
        },
        ..BakeOptions::new(&out, tiny_sd_model())
    };
    let outcome = |options: &BakeOptions| {
        let report = bake::bake(&manifest, options, &mut |_| {}).unwrap();
        report.items[0].1.clone()
    };
    assert!(matches!(outcome(&with_decoder), ItemOutcome::Baked { .. }));
    let taesd_png = std::fs::read(out.join("wall.png")).unwrap();
    assert!(matches!(outcome(&with_decoder), ItemOutcome::Skipped));
    let plain = BakeOptions::new(&out, tiny_sd_model());
    assert!(matches!(outcome(&plain), ItemOutcome::Baked { .. }));
    assert_ne!(std::fs::read(out.join("wall.png")).unwrap(), taesd_png);
    std::fs::remove_dir_all(&out).ok();
}
