//! NaN/inf is caught where it starts (issue 10's break-it run): a LoRA whose merge overflows is
//! named at load, non-finite explicit noise is refused before the first step, and a diverging
//! schedule fails after the step it diverged in, not after the whole schedule.

use bevy_diffusion::loading::lora::LoraSpec;
use bevy_diffusion::noise::SeededNoise;
use bevy_diffusion::pipeline::{self, ExplicitNoise, NoHooks};
use bevy_diffusion::{DiffusionError, GenerationRequest, LoadOptions, StableDiffusion};
use bevy_diffusion_tests::{fixture_dir, tiny_sd_model};
use candle_core::{Device, Tensor};

fn model() -> StableDiffusion {
    StableDiffusion::load(&tiny_sd_model(), &LoadOptions::default()).unwrap()
}

#[test]
fn a_lora_scale_that_overflows_the_merge_is_named_at_load() {
    let options = LoadOptions {
        loras: vec![LoraSpec {
            path: fixture_dir("tiny-lora").join("lora_kohya.safetensors"),
            scale: 1e30,
        }],
        ..LoadOptions::default()
    };
    let e = match StableDiffusion::load(&tiny_sd_model(), &options) {
        Ok(_) => panic!("a LoRA at scale 1e30 loaded"),
        Err(e) => e,
    };
    let text = e.to_string();
    assert!(
        matches!(&e, DiffusionError::InvalidLora { path, key, .. }
            if path.ends_with("lora_kohya.safetensors") && key.ends_with(".weight")),
        "{text}"
    );
    assert!(text.contains("NaN/inf"), "{text}");
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
