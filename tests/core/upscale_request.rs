//! `GenerationRequest::upscale`: the last stage of `pipeline::generate`. With an x4 upscaler
//! loaded (`LoadOptions::upscaler`) a 4x request runs it on the decoded image; without one (or
//! for other factors) the wrap-aware Lanczos fallback. Also the request's bounds.

use std::path::PathBuf;

use bevy_diffusion::pipeline::upscale::{UpscaleNoise, UpscaleRequest, lanczos_upscale, upscale};
use bevy_diffusion::pipeline::{self, NoHooks};
use bevy_diffusion::{DiffusionError, GenerationRequest, LoadOptions, StableDiffusion, Tiling};
use bevy_diffusion_tests::tiny_sd_model;

fn upscaler_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/tiny-sd-upscaler/model")
}

fn request(upscale: Option<u32>) -> GenerationRequest {
    GenerationRequest {
        seed: 11,
        num_inference_steps: Some(2),
        upscale,
        ..GenerationRequest::texture("mossy cobblestone")
    }
}

#[test]
fn a_4x_request_runs_the_loaded_upscaler_on_the_decoded_image() {
    let options = LoadOptions {
        upscaler: Some(upscaler_dir()),
        ..LoadOptions::default()
    };
    let model = StableDiffusion::load(&tiny_sd_model(), &options).expect("loads with upscaler");
    let plain_model = StableDiffusion::load(&tiny_sd_model(), &LoadOptions::default()).unwrap();
    assert_ne!(
        model.identity, plain_model.identity,
        "caches must not mix results with and without the upscaler"
    );
    let low = pipeline::generate(&model, &request(None), &mut NoHooks).unwrap();
    let big = pipeline::generate(&model, &request(Some(4)), &mut NoHooks).unwrap();
    let (w, h) = low.image.dimensions();
    assert_eq!(big.image.dimensions(), (4 * w, 4 * h));
    // The same as calling the upscaler by hand with the request's prompt, seed, tiling, steps.
    let by_hand = upscale(
        model.upscaler.as_ref().unwrap(),
        &low.image,
        &UpscaleRequest {
            prompt: "mossy cobblestone".into(),
            num_inference_steps: 2,
            seed: 11,
            tiling: Tiling::XY,
            ..UpscaleRequest::default()
        },
        &UpscaleNoise::default(),
        &mut NoHooks,
    )
    .unwrap();
    assert!(
        big.image == by_hand.image,
        "diffusion upscale of the decoded image"
    );
    assert!(
        big.image != lanczos_upscale(&low.image, 4, Tiling::XY).unwrap(),
        "not the Lanczos fallback"
    );
    // A factor the upscaler does not do: Lanczos.
    let twice = pipeline::generate(&model, &request(Some(2)), &mut NoHooks).unwrap();
    assert!(twice.image == lanczos_upscale(&low.image, 2, Tiling::XY).unwrap());
}

#[test]
fn without_an_upscaler_the_request_uses_wrapped_lanczos() {
    let model = StableDiffusion::load(&tiny_sd_model(), &LoadOptions::default()).unwrap();
    let low = pipeline::generate(&model, &request(None), &mut NoHooks).unwrap();
    let big = pipeline::generate(&model, &request(Some(4)), &mut NoHooks).unwrap();
    assert!(big.image == lanczos_upscale(&low.image, 4, Tiling::XY).unwrap());
    // Same latents: the upscale is only the last stage.
    let same = (&big.final_latents - &low.final_latents)
        .unwrap()
        .abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(same, 0.0);
}

#[test]
fn upscale_factors_are_bounded() {
    for (request, what) in [
        (request(Some(0)), "`upscale` = 0"),
        (request(Some(9)), "`upscale` = 9"),
        (
            GenerationRequest {
                width: 4096,
                height: 64,
                ..request(Some(4))
            },
            "over 8192 pixels",
        ),
    ] {
        let e = request.validate(8).unwrap_err();
        assert!(
            matches!(
                e,
                DiffusionError::InvalidRequest {
                    field: "upscale",
                    ..
                }
            ) && e.to_string().contains(what),
            "{e}"
        );
    }
    assert!(request(Some(8)).validate(8).is_ok());
}
