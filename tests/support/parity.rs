//! The comparisons every whole-pipeline parity test makes against a diffusers fixture: each
//! recorded denoising step, the timesteps, and the final image. Tolerances are the fixture
//! README's: tensors within `1e-4 * max(1, max|ref|)` ([`assert_close`]), images within 1/255.

use bevy_diffusion::noise::{NoiseSource, ReplayNoise, SeededNoise};
use bevy_diffusion::pipeline::{self, DenoisingStep, ExplicitNoise, GenerationHooks, NoHooks};
use bevy_diffusion::schedulers::TimestepSpacing;
use bevy_diffusion::{GenerationRequest, SchedulerKind, StableDiffusion, Tiling};
use candle_core::Tensor;

use crate::{assert_close, max_abs_diff};

/// Keeps a copy of every denoising step the pipeline reports.
#[derive(Default)]
pub struct StepRecorder {
    /// The steps, in order.
    pub steps: Vec<DenoisingStep>,
}

impl GenerationHooks for StepRecorder {
    fn on_step(&mut self, step: &DenoisingStep) {
        self.steps.push(step.clone());
    }
}

/// Every tensor of a [`DenoisingStep`], by the name the fixtures store it under
/// (`<case>/step_<kk>/<name>`).
pub const ALL_STEP_TENSORS: [&str; 6] = [
    "latents_in",
    "unet_input",
    "unet_output",
    "noise_pred",
    "pred_original_sample",
    "latents_out",
];

/// The tensor `name` (one of [`ALL_STEP_TENSORS`]) of `step`.
pub fn step_tensor<'a>(step: &'a DenoisingStep, name: &str) -> &'a Tensor {
    match name {
        "latents_in" => &step.latents_in,
        "unet_input" => &step.unet_input,
        "unet_output" => &step.unet_output,
        "noise_pred" => &step.noise_pred,
        "pred_original_sample" => &step.pred_original_sample,
        "latents_out" => &step.latents_out,
        other => panic!("a denoising step has no tensor `{other}`"),
    }
}

/// [`assert_close`], after printing the figures (seen with `--nocapture` or on failure).
pub fn check(what: &str, actual: &Tensor, reference: &Tensor) {
    let (diff, scale) = max_abs_diff(actual, reference);
    eprintln!("{what}: max|diff| = {diff:.3e} (max|ref| = {scale:.3})");
    assert_close(what, actual, reference);
}

/// `steps` ran `expected` steps, and each step's `tensors` match `reference(<case>/step_<kk>/<name>)`
/// within the fixture tolerance ([`check`]).
pub fn assert_steps_match(
    case: &str,
    steps: &[DenoisingStep],
    expected: usize,
    tensors: &[&str],
    reference: impl Fn(&str) -> Tensor,
) {
    assert_eq!(steps.len(), expected, "{case}: steps run");
    for (k, step) in steps.iter().enumerate() {
        for name in tensors {
            let what = format!("{case}/step_{k:02}/{name}");
            check(&what, step_tensor(step, name), &reference(&what));
        }
    }
}

/// The UNet timesteps diffusers used (`case_json["unet_timesteps"]`) against ours, compared as
/// diffusers saw them (f32).
pub fn assert_timesteps_match(case: &str, ours: &[f64], case_json: &serde_json::Value) {
    let expected: Vec<f64> = case_json["unet_timesteps"]
        .as_array()
        .unwrap_or_else(|| panic!("{case}: no unet_timesteps"))
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let got: Vec<f64> = ours.iter().map(|&t| t as f32 as f64).collect();
    assert_eq!(got, expected, "{case}: timesteps");
}

/// The noise a stochastic scheduler drew in diffusers (`<case>/step_<kk>/step_noise` for each
/// of `steps` steps that has one), replayed in order, then seed-0 noise.
pub fn replay_step_noise(
    case: &str,
    steps: usize,
    has: impl Fn(&str) -> bool,
    get: impl Fn(&str) -> Tensor,
) -> Box<dyn NoiseSource> {
    let step_noise: Vec<Tensor> = (0..steps)
        .map(|k| format!("{case}/step_{k:02}/step_noise"))
        .filter(|name| has(name))
        .map(|name| get(&name))
        .collect();
    Box::new(ReplayNoise::with_fallback(
        step_noise,
        Box::new(SeededNoise::new(0)),
    ))
}

/// `[H, W, 3]` in [0, 1] of an RGBA8 image (alpha dropped), to compare with a fixture's `image`.
pub fn image_hwc(img: &image::RgbaImage) -> Tensor {
    let (w, h) = img.dimensions();
    let v: Vec<f32> = img
        .pixels()
        .flat_map(|p| [p.0[0], p.0[1], p.0[2]])
        .map(|c| c as f32 / 255.0)
        .collect();
    Tensor::from_vec(v, (h as usize, w as usize, 3), &candle_core::Device::Cpu).unwrap()
}

/// Our RGBA8 image against diffusers' HWC float image in [0, 1]: every RGB channel within 1/255.
pub fn assert_image_within_1_255(case: &str, ours: &image::RgbaImage, reference: &Tensor) {
    let reference = reference.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let ours: Vec<f32> = ours
        .pixels()
        .flat_map(|p| {
            p.0[..3]
                .iter()
                .map(|&v| v as f32 / 255.0)
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(ours.len(), reference.len(), "{case}: image size");
    let worst = ours
        .iter()
        .zip(&reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!("{case}/image: max|diff| = {worst:.3e} (1/255 = 3.922e-3)");
    assert!(
        worst <= 1.0 / 255.0 + 1e-6,
        "{case}: image differs by {worst} (> 1/255)"
    );
}

/// The tiling tests' image: "seamless mossy cobblestone floor texture", 64x64, DDIM 4 steps,
/// CFG 7.5, from the explicit initial latents `noise` (`[1, 4, 8, 8]`; no other randomness).
pub fn cobblestone_ddim4(
    model: &StableDiffusion,
    noise: &Tensor,
    tiling: Tiling,
) -> image::RgbaImage {
    let req = GenerationRequest {
        prompt: "seamless mossy cobblestone floor texture".into(),
        width: 64,
        height: 64,
        num_inference_steps: Some(4),
        guidance_scale: Some(7.5),
        scheduler: Some(SchedulerKind::Ddim),
        tiling,
        ..Default::default()
    };
    let explicit = ExplicitNoise {
        noise: Some(noise.clone()),
        vae_sample_eps: None,
    };
    pipeline::generate_with_noise(
        model,
        &req,
        &explicit,
        &mut SeededNoise::new(0),
        &mut NoHooks,
    )
    .unwrap()
    .image
}

/// Mean absolute difference across the wrap-around seam vs between interior neighbours, along
/// columns (`x`) or rows, counting only the interior
/// pairs `(i, i + 1)` with `(i + 1) % period == 0`. TAESD upsamples by nearest neighbour, so
/// pixels inside one 8x8 latent cell are smoother than pairs across cells; the seam (63 -> 0)
/// is always across cells, so `period = 8` compares like with like (`period = 1` counts
/// every pair).
pub fn seam_ratio(img: &image::RgbaImage, along_x: bool, period: u32) -> f64 {
    let (w, h) = img.dimensions();
    let (n, m) = if along_x { (w, h) } else { (h, w) };
    let px = |i: u32, j: u32| {
        if along_x {
            img.get_pixel(i, j)
        } else {
            img.get_pixel(j, i)
        }
    };
    let diff = |a: u32, b: u32| -> f64 {
        (0..m)
            .map(|j| {
                (0..3)
                    .map(|c| (px(a, j).0[c] as f64 - px(b, j).0[c] as f64).abs())
                    .sum::<f64>()
            })
            .sum::<f64>()
            / (m as f64 * 3.0)
    };
    let seam = diff(n - 1, 0);
    let pairs: Vec<u32> = (0..n - 1).filter(|i| (i + 1) % period == 0).collect();
    let interior = pairs.iter().map(|&i| diff(i, i + 1)).sum::<f64>() / pairs.len() as f64;
    seam / interior
}

/// `t` rolled by `k` along `dim`: element `i` of the result is element `(i + k) % n` of `t`
/// (`torch.roll(t, -k, dim)`), e.g. latents `[1, C, H, W]` shifted by `k` cells along the width
/// (`dim` 3) or the height (`dim` 2).
pub fn roll(t: &Tensor, dim: usize, k: usize) -> Tensor {
    let n = t.dim(dim).expect("roll: the tensor has that dimension");
    Tensor::cat(
        &[
            t.narrow(dim, k, n - k).expect("roll: k <= n"),
            t.narrow(dim, 0, k).expect("roll: k <= n"),
        ],
        dim,
    )
    .expect("roll: the two parts concatenate")
}

/// The largest and the mean RGB difference (in 1/255) between `a` rolled by `(dx, dy)` pixels
/// (pixel `(x, y)` of the roll is `a`'s `((x + dx) % w, (y + dy) % h)`) and `b`: what a
/// shift-equivariance (torus) test compares after rolling the noise by [`roll`].
pub fn rolled_diff(a: &image::RgbaImage, b: &image::RgbaImage, dx: u32, dy: u32) -> (u8, f64) {
    let (w, h) = a.dimensions();
    let mut worst = 0u8;
    let mut sum = 0f64;
    for y in 0..h {
        for x in 0..w {
            let (p, q) = (
                a.get_pixel((x + dx) % w, (y + dy) % h).0,
                b.get_pixel(x, y).0,
            );
            for c in 0..3 {
                worst = worst.max(p[c].abs_diff(q[c]));
                sum += f64::from(p[c].abs_diff(q[c]));
            }
        }
    }
    (worst, sum / f64::from(w * h * 3))
}

/// The scheduler and timestep spacing diffusers ran a case with: `case_json["scheduler_class"]`
/// (or `["scheduler"]["class"]`) and `case_json["scheduler_config"]`.
pub fn scheduler_for(case_json: &serde_json::Value) -> (SchedulerKind, TimestepSpacing) {
    let cfg = &case_json["scheduler_config"];
    let class = case_json["scheduler_class"]
        .as_str()
        .or(case_json["scheduler"]["class"].as_str())
        .expect("the case names its scheduler class");
    let kind = match class {
        "DDIMScheduler" => SchedulerKind::Ddim,
        "EulerDiscreteScheduler" => SchedulerKind::Euler,
        "EulerAncestralDiscreteScheduler" => SchedulerKind::EulerAncestral,
        "DPMSolverMultistepScheduler" if cfg["use_karras_sigmas"] == true => {
            SchedulerKind::DpmSolverMultistepKarras
        }
        "DPMSolverMultistepScheduler" => SchedulerKind::DpmSolverMultistep,
        "LCMScheduler" => SchedulerKind::Lcm,
        other => panic!("unexpected scheduler class {other}"),
    };
    let spacing = cfg["timestep_spacing"]
        .as_str()
        .expect("scheduler_config.timestep_spacing")
        .parse()
        .expect("a known timestep_spacing");
    (kind, spacing)
}
