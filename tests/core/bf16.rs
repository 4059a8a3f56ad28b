//! The bf16 compute path against f32 on the tiny fixture, through the bf16 kernel's portable
//! emulation (the arithmetic of the AVX-512 BF16 kernel, on any CPU): a bf16 request keeps the
//! UNet's transformer linear layers in bf16, multiplies its attention's `QKᵀ` and `PV` in bf16,
//! and the result stays within a measured tolerance of
//! the f32 one, per stage (the UNet's noise prediction against diffusers' f32 reference) and per
//! image.

use std::sync::OnceLock;

use bevy_diffusion::noise::{NoiseSource, SeededNoise};
use bevy_diffusion::{ComputeDtype, LoadOptions, StableDiffusion, Tiling};
use bevy_diffusion_tests::parity::cobblestone_ddim4;
use bevy_diffusion_tests::{References, max_abs_diff, tiny_sd_model};
use candle_core::Device;

fn load(dtype: ComputeDtype) -> StableDiffusion {
    bevy_diffusion::testing::kernels::bf16::set_emulation(true);
    let options = LoadOptions {
        dtype,
        ..LoadOptions::default()
    };
    StableDiffusion::load(&tiny_sd_model(), &options).expect("fixture loads")
}

fn bf16_model() -> &'static StableDiffusion {
    static MODEL: OnceLock<StableDiffusion> = OnceLock::new();
    MODEL.get_or_init(|| load(ComputeDtype::Bf16))
}

#[test]
fn a_bf16_request_runs_bf16_with_the_emulation_and_says_so() {
    let m = bf16_model();
    assert_eq!(m.dtype, ComputeDtype::Bf16);
    let notice = m.dtype_notice.as_deref().expect("the emulation is named");
    assert!(notice.contains("emulation"), "{notice}");
    // Its identity (cache keys, bake hashes) is not the f32 model's.
    assert_ne!(m.identity, load(ComputeDtype::F32).identity);
}

/// The UNet at t = 500 against diffusers' f32 noise prediction: f32 is within 1e-4 of max|ref|
/// (the parity tests); bf16 differs by more (the bf16 path ran) and by at most 3e-3 (measured:
/// 9.4e-4 with the attention products in bf16, 9.8e-4 without; docs/speed.md "bf16").
#[test]
fn bf16_unet_noise_pred_is_within_3e_3_of_diffusers_f32() {
    let refs = References::load();
    let m = bf16_model();
    let t = refs.get("unet_t500/timestep").to_scalar::<f32>().unwrap() as f64;
    let pred = m
        .unet
        .forward(
            &refs.get("unet_t500/sample"),
            t,
            &refs.get("unet_t500/encoder_hidden_states"),
            Tiling::None,
        )
        .unwrap();
    let (diff, scale) = max_abs_diff(&pred, &refs.get("unet_t500/noise_pred"));
    eprintln!(
        "bf16 unet_t500/noise_pred: max|diff| = {diff:.3e} = {:.3e} of max|ref| {scale:.3}",
        diff / scale
    );
    assert!(
        diff > 1e-4 * scale,
        "bf16 gave the f32 result: did the bf16 path run?"
    );
    assert!(diff <= 3e-3 * scale, "{diff} over 3e-3 of {scale}");
}

/// The tiling tests' 64x64 DDIM image from the same seeded noise in f32 and bf16: mean |diff|
/// at most 0.25/255, no channel more than 4/255 off (measured: 0.056/255 and 1/255;
/// docs/speed.md "bf16").
#[test]
fn bf16_image_is_within_a_measured_tolerance_of_f32() {
    let noise = SeededNoise::new(0)
        .randn(&[1, 4, 8, 8], &Device::Cpu)
        .unwrap();
    let image = |m: &StableDiffusion| cobblestone_ddim4(m, &noise, Tiling::None);
    let (a, b) = (image(&load(ComputeDtype::F32)), image(bf16_model()));
    let diffs: Vec<u8> = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| x.abs_diff(*y))
        .collect();
    let mean = diffs.iter().map(|&d| d as f64).sum::<f64>() / diffs.len() as f64;
    let max = diffs.iter().copied().max().unwrap_or(0);
    eprintln!("bf16 vs f32 image: mean |diff| {mean:.3}/255, max {max}/255");
    assert!(max > 0, "bf16 gave the f32 image: did the bf16 path run?");
    assert!(mean <= 0.25, "mean {mean}/255");
    assert!(max <= 4, "max {max}/255");
}
