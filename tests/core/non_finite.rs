//! NaN/inf is caught where it starts (issue 10's break-it run): a LoRA whose merge overflows is
//! named at load, non-finite explicit noise is refused before the first step, and a diverging
//! schedule fails after the step it diverged in, not after the whole schedule.

use bevy_diffusion::loading::lora::LoraSpec;
use bevy_diffusion::noise::SeededNoise;
use bevy_diffusion::pipeline::{self, ExplicitNoise, NoHooks};
use bevy_diffusion::{DiffusionError, GenerationRequest, LoadOptions, StableDiffusion};
use bevy_diffusion_tests::tiny_sd_model;
use candle_core::{Device, Tensor};

fn model() -> StableDiffusion {
    StableDiffusion::load(&tiny_sd_model(), &LoadOptions::default()).unwrap()
}

#[test]
fn a_lora_with_nan_weights_is_named_at_load() {
    // One kohya module whose `lora_up` is NaN: the merged weight would be NaN, and before this
    // check the whole schedule ran before "non-finite latents" blamed the scheduler.
    let dir = std::env::temp_dir().join(format!("bevy_diffusion_nan_lora_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("nan_up.safetensors");
    let module = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q";
    let dev = Device::Cpu;
    let tensors: std::collections::HashMap<String, Tensor> = [
        (
            format!("{module}.lora_down.weight"),
            Tensor::full(0.1f32, (4, 32), &dev).unwrap(),
        ),
        (
            format!("{module}.lora_up.weight"),
            Tensor::full(f32::NAN, (32, 4), &dev).unwrap(),
        ),
    ]
    .into_iter()
    .collect();
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let options = LoadOptions {
        loras: vec![LoraSpec {
            path: path.clone(),
            scale: 1.0,
        }],
        ..LoadOptions::default()
    };
    let result = StableDiffusion::load(&tiny_sd_model(), &options);
    let _ = std::fs::remove_dir_all(&dir);
    let e = match result {
        Ok(_) => panic!("a NaN LoRA loaded"),
        Err(e) => e,
    };
    let text = e.to_string();
    assert!(
        matches!(&e, DiffusionError::InvalidLora { path: p, key, .. }
            if *p == path && key.ends_with("attn1.to_q.weight")),
        "{text}"
    );
    assert!(text.contains("NaN/inf") && text.contains(module), "{text}");
}

#[test]
fn non_finite_explicit_noise_is_refused_before_denoising() {
    let m = model();
    let request = GenerationRequest {
        prompt: "moss".into(),
        width: 64,
        height: 64,
        num_inference_steps: Some(3),
        ..Default::default()
    };
    let mut values = vec![0f32; 4 * 8 * 8];
    values[5] = f32::NAN;
    let explicit = ExplicitNoise {
        noise: Some(Tensor::from_vec(values, (1, 4, 8, 8), &Device::Cpu).unwrap()),
        vae_sample_eps: None,
    };
    let e = pipeline::generate_with_noise(
        &m,
        &request,
        &explicit,
        &mut SeededNoise::new(0),
        &mut NoHooks,
    )
    .err()
    .expect("NaN noise is refused");
    assert!(
        matches!(&e, DiffusionError::InvalidRequest { field: "noise", .. }),
        "{e}"
    );
}

#[test]
fn a_diverging_schedule_fails_after_its_first_step_not_its_last() {
    let m = model();
    let request = GenerationRequest {
        prompt: "moss".into(),
        negative_prompt: Some("blur".into()),
        width: 64,
        height: 64,
        num_inference_steps: Some(10),
        guidance_scale: Some(3e38),
        ..Default::default()
    };
    let e = pipeline::generate(&m, &request, &mut NoHooks)
        .err()
        .expect("guidance 3e38 diverges");
    assert!(
        matches!(
            &e,
            DiffusionError::NonFiniteLatents {
                step: 1,
                total: 10,
                ..
            }
        ),
        "{e}"
    );
}
