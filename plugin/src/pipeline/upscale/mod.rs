//! Super-resolution: the Stable Diffusion x4 upscaler (diffusers'
//! `StableDiffusionUpscalePipeline`, `pipelines/stable_diffusion/pipeline_stable_diffusion_upscale.py`)
//! and a cheap, model-free Lanczos fallback. Both wrap around on tiled axes, so a seamless
//! texture stays seamless at 4x.
//!
//! The diffusion upscaler, in diffusers' order:
//! 1. the prompt is encoded as for text-to-image (`[uncond, cond]` under guidance);
//! 2. the low-res image `[1, 3, h, w]` in [-1, 1] is noised **once**, with the DDPM
//!    `low_res_scheduler`: `sqrt(abar[noise_level]) * image + sqrt(1 - abar[noise_level]) * n`
//!    (first random draw, the image's shape);
//! 3. the latents `[1, 4, h, w]` start as unit noise times `init_noise_sigma` (second draw):
//!    they live at the **low-res** size;
//! 4. every step the UNet (7 input channels) sees `cat([scale_model_input(x_t), noised_image])`
//!    (latents first) with `class_labels = [noise_level] * batch` (its `class_embedding`);
//! 5. the VAE (3 levels, 4x) decodes `latents / 0.08333` (the pipeline forces that
//!    `scaling_factor`) to `[1, 3, 4h, 4w]`.

//!
//! Files: [`upscaler`] loads the folder ([`Upscaler`]), this module runs it ([`upscale`]),
//! [`lanczos`] is the fallback ([`lanczos_upscale`]).

pub mod lanczos;
pub mod upscaler;

use candle_core::{DType, Tensor};
use image::RgbaImage;

pub use lanczos::lanczos_upscale;
pub use upscaler::{UPSCALER_CLASS, UPSCALER_UNET_CHANNELS, UPSCALER_VAE_SCALING_FACTOR, Upscaler};

use crate::error::{DiffusionError, Result};
use crate::noise::{NoiseSource, SeededNoise};
use crate::pipeline::postprocess::{rgba_to_tensor, tensor_to_rgba};
use crate::pipeline::{DenoisingStep, GeneratedImage, GenerationHooks};
use crate::schedulers::{SchedulerKind, build_scheduler};
use crate::tiling::Tiling;

/// The arguments of diffusers' `StableDiffusionUpscalePipeline.__call__` that we use.
#[derive(Debug, Clone, PartialEq)]
pub struct UpscaleRequest {
    /// What the image shows (guides the detail the upscaler adds; truncated to 77 tokens).
    pub prompt: String,
    /// The unconditional prompt of classifier-free guidance (diffusers' `negative_prompt`;
    /// empty = the empty prompt).
    pub negative_prompt: String,
    /// Noise added to the low-res image, an integer timestep of the low-res DDPM schedule in
    /// `0..=max_noise_level` (diffusers' default 20).
    pub noise_level: u32,
    /// Classifier-free guidance weight (off when <= 1; diffusers' default 9).
    pub guidance_scale: f64,
    /// Denoising steps, 1..=1000 (diffusers' default 75).
    pub num_inference_steps: usize,
    /// `None` = the folder's scheduler class.
    pub scheduler: Option<SchedulerKind>,
    /// Seed of the noise stream.
    pub seed: u64,
    /// Circular convolutions on these axes (seamless input stays seamless).
    pub tiling: Tiling,
}

impl Default for UpscaleRequest {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative_prompt: String::new(),
            noise_level: 20,
            guidance_scale: 9.0,
            num_inference_steps: 20,
            scheduler: None,
            seed: 0,
            tiling: Tiling::None,
        }
    }
}

/// Caller-chosen draws (parity tests): `low_res_noise` `[1, 3, h, w]`, `init_noise`
/// `[1, 4, h, w]` (before `init_noise_sigma`).
#[derive(Debug, Clone, Default)]
pub struct UpscaleNoise {
    /// The unit noise added once to the low-res image, `[1, 3, h, w]`.
    pub low_res_noise: Option<Tensor>,
    /// The initial latents before `init_noise_sigma`, `[1, 4, h, w]` (the low-res size).
    pub init_noise: Option<Tensor>,
}

/// Upscales `image` (RGBA8, alpha dropped) 4x with the diffusion upscaler. Sides are rounded
/// down to a multiple of 4 (diffusers' image processor; resized with Lanczos when they change)
/// and must be 8..=1024 pixels.
///
/// Errors: [`DiffusionError::InvalidRequest`] naming `noise_level`, `num_inference_steps`,
/// `guidance_scale` or `image`; [`DiffusionError::Cancelled`].
pub fn upscale(
    up: &Upscaler,
    image: &RgbaImage,
    request: &UpscaleRequest,
    explicit: &UpscaleNoise,
    hooks: &mut dyn GenerationHooks,
) -> Result<GeneratedImage> {
    let mut noise = SeededNoise::new(request.seed);
    upscale_with_noise(up, image, request, explicit, &mut noise, hooks)
}

/// [`upscale`] with every other draw from `noise`.
pub fn upscale_with_noise(
    up: &Upscaler,
    image: &RgbaImage,
    request: &UpscaleRequest,
    explicit: &UpscaleNoise,
    noise: &mut dyn NoiseSource,
    hooks: &mut dyn GenerationHooks,
) -> Result<GeneratedImage> {
    let bad = |field: &'static str, value: String, reason: String| DiffusionError::InvalidRequest {
        field,
        value,
        reason,
    };
    if request.noise_level > up.max_noise_level {
        return Err(bad(
            "noise_level",
            request.noise_level.to_string(),
            format!("must be at most max_noise_level = {}", up.max_noise_level),
        ));
    }
    if !request.guidance_scale.is_finite() || request.guidance_scale < 0.0 {
        return Err(bad(
            "guidance_scale",
            request.guidance_scale.to_string(),
            "must be a finite number >= 0".into(),
        ));
    }
    let (w, h) = image.dimensions();
    let (w4, h4) = (w - w % 4, h - h % 4);
    if !(8..=1024).contains(&w4) || !(8..=1024).contains(&h4) {
        return Err(bad(
            "image",
            format!("{w}x{h}"),
            "the low-res image must be 8..=1024 pixels a side".into(),
        ));
    }
    let image = if (w4, h4) == (w, h) {
        image.clone()
    } else {
        image::imageops::resize(image, w4, h4, image::imageops::FilterType::Lanczos3)
    };
    let device = &up.device;
    // 1. Prompt.
    let guidance = request.guidance_scale > 1.0;
    let mut ids = Vec::new();
    if guidance {
        ids.extend(up.tokenizer.encode(&request.negative_prompt)?.ids);
    }
    let cond = up.tokenizer.encode(&request.prompt)?;
    ids.extend(&cond.ids);
    let rows = if guidance { 2 } else { 1 };
    let ids = Tensor::from_vec(ids, (rows, cond.ids.len()), device)?;
    let embeds = up.text_encoder.forward(&ids)?;
    // 2. Timesteps.
    let kind = request
        .scheduler
        .unwrap_or_else(|| up.scheduler_config.default_kind());
    let mut scheduler = build_scheduler(
        &up.scheduler_config,
        kind,
        request.num_inference_steps,
        None,
    )?;
    // 3. Noise the low-res image once.
    let low = rgba_to_tensor(&image, 3, device)?;
    let draw = |given: &Option<Tensor>,
                shape: [usize; 4],
                what: &'static str,
                noise: &mut dyn NoiseSource| match given {
        Some(t) if t.dims() == shape => Ok(t.to_dtype(DType::F32)?.to_device(device)?),
        Some(t) => Err(bad(
            what,
            format!("shape {:?}", t.dims()),
            format!("expected shape {shape:?}"),
        )),
        None => Ok(noise.randn(&shape, device)?),
    };
    let (hh, ww) = (h4 as usize, w4 as usize);
    let n = draw(
        &explicit.low_res_noise,
        [1, 3, hh, ww],
        "low_res_noise",
        noise,
    )?;
    let abar = up.low_res_alphas_cumprod[request.noise_level as usize] as f64;
    let noised = (low.affine(abar.sqrt(), 0.0)? + n.affine((1.0 - abar).sqrt(), 0.0)?)?;
    let noised_rows = Tensor::cat(&vec![&noised; rows], 0)?;
    let labels = Tensor::from_vec(vec![request.noise_level; rows], rows, device)?;
    // 4. Latents at the low-res size.
    let c = up.unet_config.out_channels;
    let init = draw(&explicit.init_noise, [1, c, hh, ww], "init_noise", noise)?;
    let mut latents = (init * scheduler.init_noise_sigma())?;
    // 5. Loop.
    let timesteps = scheduler.timesteps().to_vec();
    for (index, &timestep) in timesteps.iter().enumerate() {
        if hooks.should_cancel() {
            return Err(DiffusionError::Cancelled);
        }
        let batch = Tensor::cat(&vec![&latents; rows], 0)?;
        let scaled = scheduler.scale_model_input(&batch, index)?;
        let unet_input = Tensor::cat(&[&scaled, &noised_rows], 1)?;
        let unet_output = up.unet.forward_with_class_labels(
            &unet_input,
            timestep,
            &embeds,
            Some(&labels),
            request.tiling,
        )?;
        let noise_pred = if guidance {
            let uncond = unet_output.get(0)?.unsqueeze(0)?;
            let cond = unet_output.get(1)?.unsqueeze(0)?;
            (&uncond + ((cond - &uncond)? * request.guidance_scale)?)?
        } else {
            unet_output.clone()
        };
        let out = scheduler.step(&noise_pred, index, &latents, noise)?;
        hooks.on_step(&DenoisingStep {
            step: index,
            total: timesteps.len(),
            timestep,
            latents_in: latents,
            unet_input,
            unet_output,
            noise_pred,
            pred_original_sample: out.pred_original_sample,
            latents_out: out.prev_sample.clone(),
        });
        latents = out.prev_sample;
    }
    // 6. Decode at 4x.
    let decoded = up
        .vae
        .decode(&(&latents / UPSCALER_VAE_SCALING_FACTOR)?, request.tiling)?;
    Ok(GeneratedImage {
        image: tensor_to_rgba(&decoded)?,
        seed: request.seed,
        prompt_truncated: cond.truncated,
        negative_prompt_truncated: false,
        timesteps,
        final_latents: latents,
    })
}

/// Forwards cancel polling only (the upscaler's steps are not the text model's: no progress or
/// previews for them).
struct CancelOnly<'a>(&'a mut dyn GenerationHooks);

impl GenerationHooks for CancelOnly<'_> {
    fn should_cancel(&mut self) -> bool {
        self.0.should_cancel()
    }
    fn cancel_check(&self) -> Option<crate::cancel::CancelCheck> {
        self.0.cancel_check()
    }
}

/// The last stage of [`crate::pipeline::generate`]: `request.upscale` applied to the decoded
/// image. Factor 4 with `StableDiffusion::upscaler` loaded runs the diffusion upscaler with the
/// request's prompt, negative prompt, seed, tiling and step count (noise level 20, guidance 9,
/// the upscaler folder's scheduler: diffusers' defaults); any other factor, or no upscaler, uses
/// [`lanczos_upscale`] (wrapping on tiled axes). `None` or 1 returns `image` unchanged.
///
/// Errors: those of [`upscale`] and [`lanczos_upscale`] (an output over 8192 pixels a side).
pub fn upscale_output(
    model: &crate::pipeline::model::StableDiffusion,
    request: &crate::request::GenerationRequest,
    image: RgbaImage,
    hooks: &mut dyn GenerationHooks,
) -> Result<RgbaImage> {
    let factor = match request.upscale {
        None | Some(1) => return Ok(image),
        Some(f) => f,
    };
    match &model.upscaler {
        Some(up) if factor as usize == up.factor() => {
            let up_request = UpscaleRequest {
                prompt: request.prompt.clone(),
                negative_prompt: request.negative_prompt.clone().unwrap_or_default(),
                num_inference_steps: request.steps(),
                seed: request.seed,
                tiling: request.tiling,
                ..UpscaleRequest::default()
            };
            crate::cancel::checkpoint()?;
            let out = upscale(
                up,
                &image,
                &up_request,
                &UpscaleNoise::default(),
                &mut CancelOnly(hooks),
            )?;
            let mut big = out.image;
            keep_alpha(&image, &mut big, factor, request.tiling)?;
            Ok(big)
        }
        _ => lanczos_upscale(&image, factor, request.tiling),
    }
}

/// The largest side, in pixels, of an upscaled output ([`lanczos_upscale`]'s limit).
pub const MAX_UPSCALED_SIDE: u32 = 8192;

/// The model-free part of [`check_upscale_size`]: a `width x height` image upscaled `factor`x
/// stays at most [`MAX_UPSCALED_SIDE`] pixels a side (`None` and 1 pass). Also made at submit
/// ([`crate::runtime::worker::validate_submission`]) once an in-memory init image gives the size.
///
/// Errors: [`DiffusionError::InvalidRequest`] naming `upscale` and its factor.
pub fn check_upscaled_side(factor: Option<u32>, (width, height): (u32, u32)) -> Result<()> {
    let factor = match factor {
        None | Some(1) => return Ok(()),
        Some(f) => f,
    };
    let (big_w, big_h) = (
        u64::from(width) * u64::from(factor),
        u64::from(height) * u64::from(factor),
    );
    if big_w > u64::from(MAX_UPSCALED_SIDE) || big_h > u64::from(MAX_UPSCALED_SIDE) {
        return Err(DiffusionError::InvalidRequest {
            field: "upscale",
            value: factor.to_string(),
            reason: format!(
                "the {width}x{height} image upscaled {factor}x would be {big_w}x{big_h}, over \
                 {MAX_UPSCALED_SIDE} pixels a side; set a smaller width/height (or init image) or \
                 factor"
            ),
        });
    }
    Ok(())
}

/// The size checks of [`upscale_output`] for a generation whose image is `width x height`
/// pixels, made up front by [`crate::pipeline::check_inputs`] (the size is only known once the
/// init image is read), so that an upscale that must fail is refused before any denoising or
/// decoding. `factor` is `request.upscale`; `None` and 1 pass.
///
/// Errors: [`DiffusionError::InvalidRequest`] naming `upscale` and its factor when the output
/// would be over [`MAX_UPSCALED_SIDE`] pixels a side, or when `model`'s x4 upscaler would run
/// and the image is not 8..=1024 pixels a side (what [`upscale`] takes).
pub fn check_upscale_size(
    model: &crate::pipeline::model::StableDiffusion,
    factor: Option<u32>,
    (width, height): (u32, u32),
) -> Result<()> {
    check_upscaled_side(factor, (width, height))?;
    let factor = match factor {
        None | Some(1) => return Ok(()),
        Some(f) => f,
    };
    let bad = |reason: String| DiffusionError::InvalidRequest {
        field: "upscale",
        value: factor.to_string(),
        reason,
    };
    if let Some(up) = &model.upscaler
        && factor as usize == up.factor()
    {
        let (w4, h4) = (width - width % 4, height - height % 4);
        if !(8..=1024).contains(&w4) || !(8..=1024).contains(&h4) {
            return Err(bad(format!(
                "the x4 upscaler ({}) takes images of 8..=1024 pixels a side and this one is \
                 {width}x{height}; set width/height to at most 1024, or upscale by another factor \
                 (Lanczos)",
                up.dir.display()
            )));
        }
    }
    Ok(())
}

/// The diffusion upscaler draws RGB only: gives `big` (the `factor`x upscale of `low`, whose
/// sides the upscaler first rounded down to a multiple of 4) `low`'s alpha, resampled with
/// [`lanczos_upscale`] (wrapping on `tiling`'s axes), when `low` has any transparency
/// (sprites); an opaque `low` leaves `big` as it is.
///
/// Errors: those of [`lanczos_upscale`]; [`DiffusionError::InvalidRequest`] (`upscale`) when
/// `big`'s sides are not `factor` times whole numbers.
pub fn keep_alpha(low: &RgbaImage, big: &mut RgbaImage, factor: u32, tiling: Tiling) -> Result<()> {
    if low.pixels().all(|p| p.0[3] == 255) {
        return Ok(());
    }
    let (bw, bh) = big.dimensions();
    if factor == 0 || bw % factor != 0 || bh % factor != 0 {
        return Err(DiffusionError::InvalidRequest {
            field: "upscale",
            value: format!("{factor}"),
            reason: format!("{bw}x{bh} is not a whole multiple of the factor"),
        });
    }
    let size = (bw / factor, bh / factor);
    let resized;
    let low = if low.dimensions() == size {
        low
    } else {
        resized =
            image::imageops::resize(low, size.0, size.1, image::imageops::FilterType::Lanczos3);
        &resized
    };
    let alpha = lanczos_upscale(low, factor, tiling)?;
    for (p, a) in big.pixels_mut().zip(alpha.pixels()) {
        p.0[3] = a.0[3];
    }
    Ok(())
}
