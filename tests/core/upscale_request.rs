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

/// Counts the model work a generation did before it ended.
#[derive(Default)]
struct CountWork {
    prompts_encoded: usize,
    steps: usize,
}

impl bevy_diffusion::pipeline::GenerationHooks for CountWork {
    fn on_step(&mut self, _step: &bevy_diffusion::pipeline::DenoisingStep) {
        self.steps += 1;
    }
    fn on_prompt_encoded(&mut self, _truncated: bevy_diffusion::pipeline::PromptTruncation) {
        self.prompts_encoded += 1;
    }
}

/// An img2img request (size from the init image: `width`/`height` 0) of a `w x h` grey image.
fn from_init_image(w: u32, h: u32, upscale: u32) -> GenerationRequest {
    GenerationRequest {
        init_image: Some(bevy_diffusion::request::InitImage::Rgba {
            width: w,
            height: h,
            pixels: vec![128; (w * h * 4) as usize],
        }),
        strength: 0.5,
        ..request(Some(upscale))
    }
}

#[test]
fn an_upscale_over_the_size_limit_is_refused_before_any_model_work() {
    // The size comes from the init image (2064 px wide: 8256 px at 4x, over 8192), so
    // `GenerationRequest::validate` cannot see it; the pipeline's up-front checks must.
    let model = StableDiffusion::load(&tiny_sd_model(), &LoadOptions::default()).unwrap();
    let req = from_init_image(2064, 64, 4);
    assert!(
        req.validate(8).is_ok(),
        "the size is not known from the fields"
    );
    let mut work = CountWork::default();
    let e = pipeline::generate(&model, &req, &mut work).unwrap_err();
    match &e {
        DiffusionError::InvalidRequest { field, value, .. } => {
            assert_eq!((*field, value.as_str()), ("upscale", "4"), "{e}")
        }
        other => panic!("expected InvalidRequest, got {other}"),
    }
    assert!(e.to_string().contains("8256x256"), "{e}");
    assert_eq!(
        (work.prompts_encoded, work.steps),
        (0, 0),
        "refused before encoding or denoising: {e}"
    );
    // 2048 px at 4x is exactly 8192: allowed (checked without running it).
    let fits = bevy_diffusion::pipeline::check_inputs(
        &model,
        &from_init_image(2048, 64, 4),
        Some(&image::RgbaImage::new(2048, 64)),
    );
    assert_eq!(fits.unwrap(), (2048, 64));
}

#[test]
fn an_image_too_large_for_the_x4_upscaler_is_refused_before_any_model_work() {
    let options = LoadOptions {
        upscaler: Some(upscaler_dir()),
        ..LoadOptions::default()
    };
    let model = StableDiffusion::load(&tiny_sd_model(), &options).unwrap();
    // 1040 px: 4160 px at 4x is under 8192, but the x4 upscaler takes at most 1024 a side.
    let mut work = CountWork::default();
    let e = pipeline::generate(&model, &from_init_image(1040, 64, 4), &mut work).unwrap_err();
    match &e {
        DiffusionError::InvalidRequest { field, value, .. } => {
            assert_eq!((*field, value.as_str()), ("upscale", "4"), "{e}")
        }
        other => panic!("expected InvalidRequest, got {other}"),
    }
    assert!(e.to_string().contains("1040x64"), "{e}");
    assert_eq!((work.prompts_encoded, work.steps), (0, 0), "{e}");
    // Factor 2 does not run the upscaler (Lanczos): 1040 px is fine.
    assert!(
        bevy_diffusion::pipeline::check_inputs(
            &model,
            &from_init_image(1040, 64, 2),
            Some(&image::RgbaImage::new(1040, 64)),
        )
        .is_ok()
    );
}
