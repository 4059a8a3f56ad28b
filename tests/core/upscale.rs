//! Super-resolution (`bevy_diffusion::pipeline::upscale`): parity with diffusers'
//! `StableDiffusionUpscalePipeline` on `tests/fixtures/tiny-sd-upscaler` (UNet with the
//! noise-level class embedding, 3-level VAE, whole pipeline), seamless 4x output (diffusion and
//! Lanczos), and upscaler / text-to-image folder mix-ups.

use std::path::PathBuf;
use std::sync::OnceLock;

use bevy_diffusion::noise::SeededNoise;
use bevy_diffusion::pipeline::NoHooks;
use bevy_diffusion::pipeline::upscale::{
    UpscaleNoise, UpscaleRequest, Upscaler, lanczos_upscale, upscale, upscale_with_noise,
};
use bevy_diffusion::{DiffusionError, LoadOptions, SchedulerKind, StableDiffusion, Tiling};
use bevy_diffusion_tests::parity::{
    ALL_STEP_TENSORS, StepRecorder, assert_steps_match, image_hwc, seam_ratio,
};
use bevy_diffusion_tests::{References, assert_close, max_abs_diff, tiny_sd_model};
use candle_core::{Device, Tensor};

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/tiny-sd-upscaler")
}

fn refs() -> &'static References {
    static R: OnceLock<References> = OnceLock::new();
    R.get_or_init(|| References::load_from(&fixture_dir()))
}

fn upscaler() -> &'static Upscaler {
    static M: OnceLock<Upscaler> = OnceLock::new();
    M.get_or_init(|| {
        Upscaler::load(&fixture_dir().join("model"), &LoadOptions::default())
            .expect("tiny-sd-upscaler loads")
    })
}

#[test]
fn unet_t500_b2_with_class_labels() {
    let r = refs();
    let labels = Tensor::new(&[20u32, 250], &Device::Cpu).unwrap();
    let (out, rec) = upscaler()
        .unet
        .forward_with_class_labels_traced(
            &r.get("unet_t500_b2/sample"),
            500.0,
            &r.get("unet_t500_b2/encoder_hidden_states"),
            Some(&labels),
            Tiling::None,
        )
        .unwrap();
    let mut checked = 0;
    for (name, t) in &rec {
        let key = format!("unet_t500_b2/intermediate/{name}");
        if r.has(&key) {
            assert_close(&key, t, &r.get(&key));
            checked += 1;
        }
    }
    assert!(checked >= 12, "only {checked} intermediates compared");
    assert_close(
        "unet_t500_b2/noise_pred",
        &out,
        &r.get("unet_t500_b2/noise_pred"),
    );
    // Without the labels the class-embedding UNet refuses to run.
    let e = upscaler()
        .unet
        .forward(
            &r.get("unet_t500_b2/sample"),
            500.0,
            &r.get("unet_t500_b2/encoder_hidden_states"),
            Tiling::None,
        )
        .unwrap_err();
    assert!(e.to_string().contains("class_labels"), "{e}");
}

#[test]
fn vae_decode_three_levels() {
    let r = refs();
    let (out, rec) = upscaler()
        .vae
        .decode_with_intermediates(&r.get("vae_decode/z"), Tiling::None)
        .unwrap();
    for (name, t) in &rec {
        let key = format!("vae_decode/intermediate/{name}");
        if r.has(&key) {
            assert_close(&key, t, &r.get(&key));
        }
    }
    assert_close(
        "vae_decode/decoded_raw",
        &out,
        &r.get("vae_decode/decoded_raw"),
    );
}

#[test]
fn pipe_upscale_ddim4() {
    let r = refs();
    let case = "pipe_upscale_ddim4";
    let c = &r.json["cases"][case];
    let low = image::open(fixture_dir().join("images/pipe_upscale_ddim4__low_res_image.png"))
        .unwrap()
        .to_rgba8();
    let req = UpscaleRequest {
        prompt: c["prompt"].as_str().unwrap().into(),
        negative_prompt: c["negative_prompt"].as_str().unwrap().into(),
        noise_level: c["noise_level"].as_u64().unwrap() as u32,
        guidance_scale: c["guidance_scale"].as_f64().unwrap(),
        num_inference_steps: c["steps"].as_u64().unwrap() as usize,
        scheduler: Some(SchedulerKind::Ddim),
        ..Default::default()
    };
    let explicit = UpscaleNoise {
        low_res_noise: Some(r.get(&format!("{case}/low_res_noise"))),
        init_noise: Some(r.get(&format!("{case}/init_noise"))),
    };
    let mut rec = StepRecorder::default();
    let out = upscale_with_noise(
        upscaler(),
        &low,
        &req,
        &explicit,
        &mut SeededNoise::new(0),
        &mut rec,
    )
    .unwrap();
    let ts: Vec<f64> = r
        .get(&format!("{case}/timesteps"))
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|&t| t as f64)
        .collect();
    assert_eq!(out.timesteps, ts);
    assert_eq!(rec.steps.len(), 4);
    // The noised low-res image is channels 4..7 of every UNet input row.
    let noised = rec.steps[0]
        .unet_input
        .narrow(1, 4, 3)
        .unwrap()
        .narrow(0, 0, 1)
        .unwrap();
    assert_close(
        "noised_low_res_image",
        &noised,
        &r.get(&format!("{case}/noised_low_res_image")),
    );
    assert_steps_match(case, &rec.steps, 4, &ALL_STEP_TENSORS, |n| r.get(n));
    assert_close(
        "final_latents",
        &out.final_latents,
        &r.get(&format!("{case}/final_latents")),
    );
    assert_eq!(out.image.dimensions(), (64, 64));
    let (diff, _) = max_abs_diff(&image_hwc(&out.image), &r.get(&format!("{case}/image")));
    eprintln!("pipe_upscale_ddim4: image max |diff| = {diff:e}");
    assert!(diff <= 1.0 / 255.0 + 1e-6, "image differs by {diff}");
}

/// A seamless 16x16 texture (sines whose periods divide the size).
fn seamless_texture(n: u32) -> image::RgbaImage {
    use std::f32::consts::TAU;
    image::RgbaImage::from_fn(n, n, |x, y| {
        let (u, v) = (x as f32 / n as f32, y as f32 / n as f32);
        let c = |a: f32| ((0.5 + 0.45 * a).clamp(0.0, 1.0) * 255.0).round() as u8;
        image::Rgba([
            c((TAU * u).sin() * (TAU * v).cos()),
            c((TAU * 2.0 * u + 1.0).cos()),
            c((TAU * (u + v)).sin()),
            255,
        ])
    })
}

#[test]
fn upscaled_seamless_texture_stays_seamless() {
    let low = seamless_texture(16);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    // Diffusion upscaler with circular padding, a few seeds.
    let mut tiled = Vec::new();
    let mut plain = Vec::new();
    for seed in 0..3 {
        for (tiling, out) in [(Tiling::XY, &mut tiled), (Tiling::None, &mut plain)] {
            let req = UpscaleRequest {
                prompt: "wood".into(),
                num_inference_steps: 4,
                seed,
                tiling,
                ..Default::default()
            };
            let img = upscale(
                upscaler(),
                &low,
                &req,
                &UpscaleNoise::default(),
                &mut NoHooks,
            )
            .unwrap()
            .image;
            assert_eq!(img.dimensions(), (64, 64));
            out.extend([seam_ratio(&img, true, 1), seam_ratio(&img, false, 1)]);
        }
    }
    eprintln!(
        "x4 upscaler seam / interior: tiling xy {:.3}, none {:.3}",
        mean(&tiled),
        mean(&plain)
    );
    assert!(mean(&tiled) <= 1.1, "{tiled:?}");
    assert!(mean(&plain) > mean(&tiled));
    // Lanczos fallback: wraps on tiled axes.
    let big = lanczos_upscale(&low, 4, Tiling::XY).unwrap();
    assert_eq!(big.dimensions(), (64, 64));
    let r = (seam_ratio(&big, true, 1) + seam_ratio(&big, false, 1)) / 2.0;
    let big_plain = lanczos_upscale(&low, 4, Tiling::None).unwrap();
    let rp = (seam_ratio(&big_plain, true, 1) + seam_ratio(&big_plain, false, 1)) / 2.0;
    eprintln!("lanczos x4 seam / interior: tiling xy {r:.3}, none {rp:.3}");
    assert!(r <= 1.1, "{r}");
    assert!(rp > r);
    let e = lanczos_upscale(&low, 9, Tiling::XY).unwrap_err();
    assert!(
        matches!(
            e,
            DiffusionError::InvalidRequest {
                field: "upscale",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn upscaler_and_text_to_image_folders_are_not_mixed_up() {
    // An upscaler folder as a text-to-image model: refused, naming the unet and the class.
    let e = StableDiffusion::load(&fixture_dir().join("model"), &LoadOptions::default())
        .err()
        .expect("an upscaler is not a text-to-image model");
    let msg = e.to_string();
    assert!(
        msg.contains("model_index.json")
            && msg.contains("upscaler")
            && msg.contains("unet takes 7 input channels"),
        "{msg}"
    );
    // Typed, naming the class, and saying how to use the folder instead.
    assert!(
        matches!(&e, DiffusionError::WrongPipeline { class, .. } if class == "StableDiffusionUpscalePipeline"),
        "{e:?}"
    );
    assert!(
        msg.contains("LoadOptions::upscaler") && msg.contains("--upscaler"),
        "{msg}"
    );
    // A text-to-image folder as an upscaler: refused, naming the unet's input channels.
    let e = Upscaler::load(&tiny_sd_model(), &LoadOptions::default())
        .err()
        .expect("tiny-sd is not an upscaler");
    let msg = e.to_string();
    assert!(
        msg.contains("StableDiffusionPipeline") && msg.contains("unet takes 4 input channels"),
        "{msg}"
    );
    assert!(
        matches!(&e, DiffusionError::WrongPipeline { class, .. } if class == "StableDiffusionPipeline"),
        "{e:?}"
    );
    // Noise level above max_noise_level.
    let req = UpscaleRequest {
        noise_level: 351,
        ..Default::default()
    };
    let e = upscale(
        upscaler(),
        &seamless_texture(16),
        &req,
        &UpscaleNoise::default(),
        &mut NoHooks,
    )
    .unwrap_err();
    assert!(e.to_string().contains("`noise_level` = 351"), "{e}");
}
