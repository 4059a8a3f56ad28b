//! The SDXS-512 / BK-SDM architecture against HF diffusers (tests/fixtures/tiny-sdxs): a UNet
//! without a mid block and with a per-block `layers_per_block`, an `AutoencoderTiny` vae, and
//! every step of its two pipeline cases; plus the bounds on the UNet config's counts.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bevy_diffusion::models::autoencoders::{Vae, VaeClass};
use bevy_diffusion::models::unet_2d_condition::{
    UNet2DConditionConfig, UNet2DConditionModel, VarBuilder,
};
use bevy_diffusion::pipeline::{self, ExplicitNoise};
use bevy_diffusion::schedulers::TimestepSpacing;
use bevy_diffusion::{
    DiffusionError, GenerationRequest, LoadOptions, SchedulerKind, StableDiffusion, Tiling,
};
use bevy_diffusion_tests::parity::{
    ALL_STEP_TENSORS, StepRecorder, assert_image_within_1_255, assert_steps_match,
    assert_timesteps_match, check, replay_step_noise, scheduler_for,
};
use bevy_diffusion_tests::{References, fixture_dir};
use candle_core::{DType, Device};

fn refs() -> &'static References {
    static REFS: OnceLock<References> = OnceLock::new();
    REFS.get_or_init(|| References::load_from(&fixture_dir("tiny-sdxs")))
}

fn model_dir() -> PathBuf {
    fixture_dir("tiny-sdxs").join("model")
}

fn model() -> &'static StableDiffusion {
    static MODEL: OnceLock<StableDiffusion> = OnceLock::new();
    MODEL.get_or_init(|| {
        StableDiffusion::load(&model_dir(), &LoadOptions::default()).expect("tiny-sdxs loads")
    })
}

fn var_builder(file: &Path) -> VarBuilder<'static> {
    // SAFETY: the fixture files are not modified while the tests run.
    unsafe { VarBuilder::from_mmaped_safetensors(&[file], DType::F32, &Device::Cpu) }
        .expect("fixture weights")
}

#[test]
fn pruned_unet_config_resolves() {
    let cfg = UNet2DConditionConfig::from_file(&model_dir().join("unet/config.json")).unwrap();
    assert!(!cfg.has_mid_block);
    assert_eq!(cfg.layers_per_block, vec![2, 1]);
    assert_eq!(cfg.block_out_channels, vec![32, 64]);
    let case = refs().case("unet_t500_b2");
    assert_eq!(case["resnets_per_down_block"], serde_json::json!([2, 1]));
}

/// The pruned UNet alone: every block output and every skip tensor pushed on the residual stack.
#[test]
fn pruned_unet_block_outputs_match_diffusers() {
    let r = refs();
    let dir = model_dir().join("unet");
    let cfg = UNet2DConditionConfig::from_file(&dir.join("config.json")).unwrap();
    let unet = UNet2DConditionModel::new(
        var_builder(&dir.join("diffusion_pytorch_model.safetensors")),
        &cfg,
    )
    .unwrap();
    let timestep = r
        .get("unet_t500_b2/timestep")
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    assert_eq!(timestep, 500.0);
    let (out, intermediates) = unet
        .forward_with_intermediates(
            &r.get("unet_t500_b2/sample"),
            timestep,
            &r.get("unet_t500_b2/encoder_hidden_states"),
            Tiling::None,
        )
        .unwrap();
    let names: Vec<&str> = intermediates.iter().map(|(n, _)| n.as_str()).collect();
    assert!(!names.contains(&"mid_block"), "no mid block ran: {names:?}");
    let mut compared = 0;
    for (name, tensor) in &intermediates {
        let key = format!("unet_t500_b2/intermediate/{name}");
        if r.has(&key) {
            check(&key, tensor, &r.get(&key));
            compared += 1;
        }
    }
    assert_eq!(
        compared, 13,
        "every stored block output compared: {names:?}"
    );
    check(
        "unet_t500_b2/noise_pred",
        &out,
        &r.get("unet_t500_b2/noise_pred"),
    );
    // The residual stack: conv_in + 3 skips of down_blocks.0 + 1 of down_blocks.1, channels as
    // references.json lists them.
    let channels: Vec<usize> = intermediates
        .iter()
        .filter(|(n, _)| n == "conv_in" || n.contains("/res"))
        .map(|(_, t)| t.dim(1).unwrap())
        .collect();
    let expected: Vec<usize> = r.case("unet_t500_b2")["residual_stack_channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(channels, expected);
}

#[test]
fn folder_vae_is_autoencoder_tiny_and_decodes_like_diffusers() {
    let m = model();
    assert!(matches!(m.vae_config.class, VaeClass::Tiny(_)));
    assert_eq!(m.vae_config.scaling_factor, 1.0);
    assert_eq!(m.vae_config.downscale_factor, 8);
    let Vae::Tiny(taesd) = &m.vae else {
        panic!("the vae should be AutoencoderTiny")
    };
    let r = refs();
    let (out, inter) = taesd
        .decode_with_intermediates(&r.get("vae_decode/z"), Tiling::None)
        .unwrap();
    check(
        "vae_decode/z_soft_clamped",
        &inter["decoder.z_soft_clamped"],
        &r.get("vae_decode/z_soft_clamped"),
    );
    for name in [
        "decoder.layers.1",
        "decoder.layers.4",
        "decoder.layers.9",
        "decoder.layers.14",
        "decoder.layers",
    ] {
        check(
            &format!("vae_decode/{name}"),
            &inter[name],
            &r.get(&format!("vae_decode/intermediate/{name}")),
        );
    }
    check(
        "vae_decode/decoded_raw",
        &out,
        &r.get("vae_decode/decoded_raw"),
    );
}

/// Runs pipeline `case` of the tiny-sdxs fixture (see [`run_case_with`]).
fn run_case(case: &str) {
    run_case_with(model(), refs(), case);
}

/// Runs pipeline `case` of references `r` on `m` and compares the prompt embeddings (when
/// stored), every step, the final latents, the decoder input, the raw decode and the image.
pub fn run_case_with(m: &StableDiffusion, r: &References, case: &str) {
    let c = r.case(case);
    let (scheduler, spacing) = scheduler_for(c);
    let request = GenerationRequest {
        prompt: c["prompt"].as_str().unwrap().into(),
        negative_prompt: Some(c["negative_prompt"].as_str().unwrap_or("").to_string()),
        width: c["width"].as_u64().unwrap() as u32,
        height: c["height"].as_u64().unwrap() as u32,
        num_inference_steps: Some(c["steps"].as_u64().unwrap() as usize),
        guidance_scale: Some(c["guidance_scale"].as_f64().unwrap()),
        scheduler: Some(scheduler),
        timestep_spacing: Some(spacing),
        ..Default::default()
    };
    let steps = request.steps();
    let mut noise = replay_step_noise(case, steps, |n| r.has(n), |n| r.get(n));
    let explicit = ExplicitNoise {
        noise: Some(r.get(&format!("{case}/init_noise"))),
        vae_sample_eps: None,
    };
    let guidance = request.guidance() > 1.0;
    if r.has(&format!("{case}/prompt_embeds")) {
        let embeds = pipeline::encode_prompt(
            m,
            &request.prompt,
            request.negative_prompt.as_deref(),
            guidance,
        )
        .unwrap();
        check(
            &format!("{case}/prompt_embeds"),
            &embeds.embeds,
            &r.get(&format!("{case}/prompt_embeds")),
        );
    }
    let mut rec = StepRecorder::default();
    let out = pipeline::generate_with_noise(m, &request, &explicit, noise.as_mut(), &mut rec)
        .unwrap_or_else(|e| panic!("{case}: {e}"));
    assert_timesteps_match(case, &out.timesteps, c);
    assert_steps_match(case, &rec.steps, steps, &ALL_STEP_TENSORS, |n| r.get(n));
    check(
        &format!("{case}/final_latents"),
        &out.final_latents,
        &r.get(&format!("{case}/final_latents")),
    );
    // scaling_factor 1.0: the decoder input is the final latents unchanged.
    let scaling_factor = match &m.decoder {
        Some(taesd) => taesd.config().scaling_factor,
        None => m.vae_config.scaling_factor,
    };
    assert_eq!(scaling_factor, 1.0, "TAESD decodes the latents unscaled");
    let decoder_input = (&out.final_latents / scaling_factor).unwrap();
    check(
        &format!("{case}/decoder_input"),
        &decoder_input,
        &r.get(&format!("{case}/decoder_input")),
    );
    let raw = pipeline::decode_latents_raw(m, &out.final_latents, Tiling::None).unwrap();
    check(
        &format!("{case}/decoded_raw"),
        &raw,
        &r.get(&format!("{case}/decoded_raw")),
    );
    assert_image_within_1_255(case, &out.image, &r.get(&format!("{case}/image")));
}

#[test]
fn pipe_ddim4() {
    run_case("pipe_ddim4");
}

#[test]
fn pipe_turbo_euler_a1() {
    run_case("pipe_turbo_euler_a1");
}

/// img2img through the TAESD encoder runs (deterministic encode, no posterior draw) and keeps the
/// requested size.
#[test]
fn img2img_with_autoencoder_tiny_encodes_without_a_draw() {
    let init = bevy_diffusion::request::InitImage::Path(
        fixture_dir("tiny-sdxs").join("images/pipe_ddim4__image.png"),
    );
    let request = GenerationRequest {
        prompt: "mossy stones".into(),
        num_inference_steps: Some(4),
        strength: 0.5,
        scheduler: Some(SchedulerKind::Ddim),
        init_image: Some(init),
        ..Default::default()
    };
    let out = pipeline::generate(model(), &request, &mut pipeline::NoHooks).unwrap();
    assert_eq!(out.image.dimensions(), (64, 64));
    assert_eq!(out.timesteps.len(), 2);
}

/// A temporary copy of the fixture's unet/config.json with `key` set to `value`.
fn edited_unet_config(tag: &str, key: &str, value: serde_json::Value) -> PathBuf {
    let src = model_dir().join("unet/config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src).unwrap()).unwrap();
    json[key] = value;
    let dir = std::env::temp_dir().join(format!(
        "bevy_diffusion_sdxs_test_{}_{tag}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.json");
    std::fs::write(&path, json.to_string()).unwrap();
    path
}

/// Counts from the config are bounded before anything is allocated: a huge `layers_per_block`
/// (as an int or in a list) is a typed error naming the field, not an allocation failure.
#[test]
fn unet_counts_are_bounded_before_allocation() {
    let cases = [
        ("lpb_int", "layers_per_block", serde_json::json!(1u64 << 40)),
        (
            "lpb_list",
            "layers_per_block",
            serde_json::json!([2, 1_000_000_000]),
        ),
        ("lpb_len", "layers_per_block", serde_json::json!([2, 1, 1])),
        (
            "tlpb",
            "transformer_layers_per_block",
            serde_json::json!([1, 1_000_000]),
        ),
        (
            "heads",
            "attention_head_dim",
            serde_json::json!([1u64 << 40, 8]),
        ),
        (
            "channels",
            "block_out_channels",
            serde_json::json!([32, 1u64 << 40]),
        ),
    ];
    for (tag, key, value) in cases {
        let path = edited_unet_config(tag, key, value);
        let e = UNet2DConditionConfig::from_file(&path).expect_err(tag);
        assert!(
            matches!(e, DiffusionError::InvalidConfig { .. }),
            "{tag}: {e:?}"
        );
        assert!(e.to_string().contains(key), "{tag}: `{e}` names {key}");
        std::fs::remove_dir_all(path.parent().unwrap()).ok();
    }
}

/// `texgen inspect` on an SDXS-style folder: the family is named, TAESD is reported as the
/// decoder, and the dry build of the AutoencoderTiny finds every tensor.
#[test]
fn inspect_names_the_family_and_the_taesd_decoder() {
    use bevy_diffusion::tools::inspect::{InspectOptions, inspect};
    let report = inspect(
        &model_dir(),
        &InspectOptions {
            full_load: true,
            ..InspectOptions::default()
        },
    );
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.family_label(), "SDXS/pruned");
    assert_eq!(
        report.decoder_label().as_deref(),
        Some("TAESD (AutoencoderTiny, vae/)")
    );
    assert!(report.components.iter().all(|c| c.built), "{report}");
    assert_eq!(report.full_load, Some(true));
    let text = report.to_string();
    assert!(text.contains("family        SDXS/pruned"), "{text}");
    assert!(text.contains("decoder       TAESD"), "{text}");
    // A plain SD folder keeps its family and reports its AutoencoderKL.
    let sd = inspect(
        &bevy_diffusion_tests::tiny_sd_model(),
        &InspectOptions::default(),
    );
    assert_eq!(sd.family_label(), "SD1.x");
    assert_eq!(sd.decoder_label().as_deref(), Some("AutoencoderKL (vae/)"));
}

/// With TAESD as the vae, the plugin's previews are real TAESD decodes of the current estimate:
/// for a 1-step turbo generation the preview of the only step is the final image.
#[test]
fn previews_decode_with_taesd() {
    use bevy_diffusion::runtime::generator::SdGenerator;
    use bevy_diffusion::runtime::worker::Generator;
    let m = StableDiffusion::load(&model_dir(), &LoadOptions::default()).unwrap();
    let generator = SdGenerator::new(m);
    let request = GenerationRequest {
        prompt: "sci-fi hull panels".into(),
        num_inference_steps: Some(1),
        guidance_scale: Some(0.0),
        scheduler: Some(SchedulerKind::EulerAncestral),
        timestep_spacing: Some(TimestepSpacing::Trailing),
        ..Default::default()
    };
    let mut rec = StepRecorder::default();
    let image = generator.generate(&request, &mut rec).unwrap();
    let preview = generator.preview(&rec.steps[0]).expect("a TAESD preview");
    assert_eq!(preview.dimensions(), (64, 64));
    // x0 and x_{t-1} = x + (x - x0)/sigma * (0 - sigma) agree to rounding: within 1/255.
    let worst = preview
        .as_raw()
        .iter()
        .zip(image.as_raw())
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    assert!(worst <= 1, "preview vs final image: {worst}/255");
}
