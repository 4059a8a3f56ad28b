//! Inpainting: diffusers' `StableDiffusionInpaintPipeline.__call__`
//! (`pipelines/stable_diffusion/pipeline_stable_diffusion_inpaint.py`), for both kinds of model:
//!
//! - **9-channel inpainting UNets** (`unet.in_channels == 9`, e.g. `stable-diffusion-inpainting`):
//!   every step the UNet sees `cat([scale_model_input(x_t), mask, masked_image_latents], dim=1)`.
//! - **ordinary 4-channel models**: after every scheduler step the latents outside the mask are
//!   replaced by the init image's latents noised to the next timestep (the last step uses the
//!   clean latents): `x = (1 - mask) * add_noise(image_latents, noise, t_next) + mask * x`.
//!
//! Preprocessing as diffusers: the mask is read as grey (PIL `convert("L")`), scaled to [0, 1],
//! **binarised** (`>= 0.5` = repaint); `masked_image = init_image * (mask < 0.5)`; the latent mask
//! is the pixel mask **nearest**-resized to the latent grid (`F.interpolate` default); the masked
//! image latents are a VAE posterior **sample** (`mean + std * eps`) times `scaling_factor`. The
//! output is the plain decode of the final latents: no pixel paste-back. Random draws, in
//! diffusers' order: the init image's VAE sample (4-channel models, or strength < 1), the
//! initial noise, the masked image's VAE sample.
//!
//! Tiling: the VAE encoder (init and masked image), the UNet and the VAE decoder run circular on
//! the request's tiled axes, so a seamless texture stays seamless after a repaint. With
//! `Tiling::None` everything is exactly diffusers'.

use candle_core::{DType, Tensor};
use image::RgbaImage;

use crate::error::{DiffusionError, Result};
use crate::models::autoencoders::Vae;
use crate::noise::NoiseSource;
use crate::pipeline::model::StableDiffusion;
use crate::pipeline::postprocess::rgba_to_tensor;
use crate::pipeline::{
    DenoisingStep, ExplicitNoise, GeneratedImage, GenerationHooks, PromptTruncation, check_finite,
    check_inputs, decode_latents, encode_prompt, load_image_of, prepare_scheduler, sdxl,
};
use crate::request::{GenerationRequest, InitImage};
use crate::tiling::Tiling;

/// UNet input channels of a diffusers inpainting model: 4 latents + 1 mask + 4 masked-image latents.
pub const INPAINT_UNET_CHANNELS: usize = 9;

/// True when `request` on `model` runs the inpainting pipeline: it has a mask, or the model's
/// UNet is an inpainting UNet.
pub fn is_inpaint(model: &StableDiffusion, request: &GenerationRequest) -> bool {
    request.mask.is_some() || model.unet_config.in_channels == INPAINT_UNET_CHANNELS
}

/// The preprocessed inputs of one inpaint, shapes for an `H x W` image and latents of
/// `h = H / f`, `w = W / f` (`f` the VAE's downscale factor).
#[derive(Debug, Clone)]
pub struct InpaintInputs {
    /// The init image `[1, C, H, W]` in [-1, 1] (`C` = the VAE's `in_channels`, 3 or 4).
    pub init_image: Tensor,
    /// The binarised mask `[1, 1, H, W]`, 1 = repaint (diffusers' `mask_condition`).
    pub mask_condition: Tensor,
    /// `init_image * (mask_condition < 0.5)` `[1, C, H, W]`.
    pub masked_image: Tensor,
    /// The mask nearest-resized to the latents, `[1, 1, h, w]`.
    pub mask_latents: Tensor,
}

/// Reads the mask of `request` as grey values (0 = keep, 255 = repaint), PIL's `convert("L")`:
/// `L = (299 R + 587 G + 114 B) / 1000`.
///
/// Errors: [`DiffusionError::Image`] for an unreadable file; [`DiffusionError::InvalidRequest`]
/// (`mask`) for RGBA bytes of the wrong length, or a mask whose only varying channel is alpha
/// (white = repaint is read from the colour, so an alpha-only mask would repaint nothing or
/// everything).
pub fn load_mask(mask: &InitImage) -> Result<image::GrayImage> {
    let rgba = load_image_of(mask, "mask")?;
    let grey = |p: &image::Rgba<u8>| {
        ((299 * p.0[0] as u32 + 587 * p.0[1] as u32 + 114 * p.0[2] as u32 + 500) / 1000) as u8
    };
    let first = rgba.pixels().next().copied();
    if let Some(first) = first {
        let colour_uniform = rgba.pixels().all(|p| grey(p) == grey(&first));
        let alpha_varies = rgba.pixels().any(|p| p.0[3] != first.0[3]);
        if colour_uniform && alpha_varies {
            return Err(DiffusionError::InvalidRequest {
                field: "mask",
                value: format!(
                    "{}x{} with only the alpha channel varying",
                    rgba.width(),
                    rgba.height()
                ),
                reason:
                    "the mask is read from its grey level (white = repaint, black = keep), not \
                         from alpha; paint the area to repaint white on black"
                        .into(),
            });
        }
    }
    Ok(image::GrayImage::from_fn(
        rgba.width(),
        rgba.height(),
        |x, y| image::Luma([grey(rgba.get_pixel(x, y))]),
    ))
}

/// diffusers' `F.interpolate(mask, size=(h, w))` in its default `nearest` mode on
/// `[1, 1, H, W]`: output `(i, j)` takes input `(floor(i * H / h), floor(j * W / w))`.
pub fn nearest_resize(mask: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (_, _, big_h, big_w) = mask.dims4()?;
    let data = mask.flatten_all()?.to_vec1::<f32>()?;
    let mut out = Vec::with_capacity(h * w);
    for i in 0..h {
        let si = ((i as f64 * big_h as f64 / h as f64).floor() as usize).min(big_h - 1);
        for j in 0..w {
            let sj = ((j as f64 * big_w as f64 / w as f64).floor() as usize).min(big_w - 1);
            out.push(data[si * big_w + sj]);
        }
    }
    Ok(Tensor::from_vec(out, (1, 1, h, w), mask.device())?)
}

/// Builds the [`InpaintInputs`] for an init image and a grey mask of the same size, both resized
/// (Lanczos, as diffusers' image processors) to `width x height` first.
///
/// Errors: [`DiffusionError::InvalidRequest`] (`mask`) when the mask's size differs from the
/// init image's.
pub fn prepare_inputs(
    model: &StableDiffusion,
    image: &RgbaImage,
    mask: &image::GrayImage,
    (width, height): (u32, u32),
) -> Result<InpaintInputs> {
    if mask.dimensions() != image.dimensions() {
        return Err(DiffusionError::InvalidRequest {
            field: "mask",
            value: format!("{}x{}", mask.width(), mask.height()),
            reason: format!(
                "must be the init image's size, {}x{}",
                image.width(),
                image.height()
            ),
        });
    }
    let lanczos = image::imageops::FilterType::Lanczos3;
    let image = if image.dimensions() == (width, height) {
        image.clone()
    } else {
        image::imageops::resize(image, width, height, lanczos)
    };
    let mask = if mask.dimensions() == (width, height) {
        mask.clone()
    } else {
        image::imageops::resize(mask, width, height, lanczos)
    };
    let device = &model.device;
    // RGB, or RGBA for 4-channel VAEs (the embedded model), as img2img.
    let init_image = rgba_to_tensor(&image, model.vae_config.in_channels, device)?;
    let binary: Vec<f32> = mask
        .pixels()
        .map(|p| {
            if p.0[0] as f32 / 255.0 < 0.5 {
                0.0
            } else {
                1.0
            }
        })
        .collect();
    let (h, w) = (height as usize, width as usize);
    let mask_condition = Tensor::from_vec(binary, (1, 1, h, w), device)?;
    let keep = mask_condition.lt(0.5)?.to_dtype(DType::F32)?;
    let masked_image = init_image.broadcast_mul(&keep)?;
    let f = model.vae_config.downscale_factor;
    let mask_latents = nearest_resize(&mask_condition, h / f, w / f)?;
    Ok(InpaintInputs {
        init_image,
        mask_condition,
        masked_image,
        mask_latents,
    })
}

/// The VAE's latents of `pixels` times `scaling_factor`, encoded circular on `tiling`'s axes:
/// an `AutoencoderKL` posterior sample `mean + std * eps` (`eps` drawn by `eps`), or an
/// `AutoencoderTiny`'s deterministic latents (no draw; diffusers' `retrieve_latents`).
fn encode_scaled(
    model: &StableDiffusion,
    pixels: &Tensor,
    tiling: Tiling,
    eps: impl FnOnce() -> Result<Tensor>,
) -> Result<Tensor> {
    let latents = match &model.vae {
        Vae::Kl(vae) => vae.encode_tiled(pixels, tiling)?.sample(&eps()?)?,
        Vae::Tiny(vae) => vae.encode_tiled(pixels, tiling)?,
    };
    Ok((latents * model.vae_config.scaling_factor)?)
}

/// Runs an inpaint request (see the module docs). `explicit.vae_sample_eps` replaces the init
/// image's VAE draw, `explicit.noise` the initial noise and `masked_image_vae_eps` the masked
/// image's VAE draw (each `[1, latent_channels, h, w]`); every other draw comes from `noise`.
/// SDXL models (4-channel) get their added conditioning as in text-to-image.
///
/// Errors: [`DiffusionError::InvalidRequest`] naming `mask` (missing, wrong size, alpha only, or
/// a model whose UNet takes neither its latent channels nor 9) or `init_image` (missing), plus
/// the errors of [`crate::pipeline::generate_with_noise`].
pub fn generate_inpaint(
    model: &StableDiffusion,
    request: &GenerationRequest,
    explicit: &ExplicitNoise,
    masked_image_vae_eps: Option<&Tensor>,
    noise: &mut dyn NoiseSource,
    hooks: &mut dyn GenerationHooks,
) -> Result<GeneratedImage> {
    let request = &request.with_recommended(&model.recommended);
    let unet_channels = model.unet_config.in_channels;
    let latent_channels = model.unet_config.out_channels;
    let nine = unet_channels == INPAINT_UNET_CHANNELS;
    let Some(mask) = &request.mask else {
        return Err(DiffusionError::InvalidRequest {
            field: "mask",
            value: "none".into(),
            reason: format!(
                "{} has an inpainting UNet ({unet_channels} input channels: latents, mask, \
                 masked-image latents); give a mask and an init_image",
                model.dir.display()
            ),
        });
    };
    if !nine && unet_channels != latent_channels {
        return Err(DiffusionError::InvalidRequest {
            field: "mask",
            value: "(given)".into(),
            reason: format!(
                "{}: unet in_channels {unet_channels} is neither {latent_channels} (an ordinary \
                 model) nor {INPAINT_UNET_CHANNELS} (an inpainting model)",
                model.dir.display()
            ),
        });
    }
    let Some(init) = &request.init_image else {
        return Err(DiffusionError::InvalidRequest {
            field: "init_image",
            value: "none".into(),
            reason: "inpainting (a mask) needs an init_image of the mask's size".into(),
        });
    };
    let init = load_image_of(init, "init_image")?;
    let mask = load_mask(mask)?;
    let (width, height) = check_inputs(model, request, Some(&init))?;
    let inputs = prepare_inputs(model, &init, &mask, (width, height))?;

    let guidance = request.guidance() > 1.0;
    crate::cancel::checkpoint()?;
    let prompt = encode_prompt(
        model,
        &request.prompt,
        request.negative_prompt.as_deref(),
        guidance,
    )?;
    hooks.on_prompt_encoded(PromptTruncation {
        prompt: prompt.prompt_truncated,
        negative_prompt: prompt.negative_prompt_truncated,
    });
    let added = sdxl::added_cond(model, request, &prompt, (width, height))?;
    crate::cancel::checkpoint()?;
    let (mut scheduler, begin) = prepare_scheduler(model, request)?;

    // prepare_latents, in diffusers' draw order.
    let f = model.vae_config.downscale_factor;
    let shape = [1, latent_channels, height as usize / f, width as usize / f];
    let device = &model.device;
    let draw = |given: Option<&Tensor>, what: &'static str, noise: &mut dyn NoiseSource| match given
    {
        Some(t) if t.dims() == shape => Ok(t.to_dtype(DType::F32)?.to_device(device)?),
        Some(t) => Err(DiffusionError::InvalidRequest {
            field: what,
            value: format!("shape {:?}", t.dims()),
            reason: format!("expected shape {shape:?}"),
        }),
        None => Ok(noise.randn(&shape, device)?),
    };
    let tiling = request.tiling;
    let strength_max = request.strength >= 1.0;
    let image_latents = if !nine || !strength_max {
        let eps = || draw(explicit.vae_sample_eps.as_ref(), "vae_sample_eps", noise);
        Some(encode_scaled(model, &inputs.init_image, tiling, eps)?)
    } else {
        None
    };
    let start_noise = draw(explicit.noise.as_ref(), "noise", noise)?;
    let mut latents = match (&image_latents, strength_max) {
        (Some(image_latents), false) => scheduler.add_noise(image_latents, &start_noise, begin)?,
        _ => (&start_noise * scheduler.init_noise_sigma())?,
    };
    // prepare_mask_latents (diffusers encodes the masked image for 4-channel models too).
    let eps = || draw(masked_image_vae_eps, "masked_image_vae_eps", noise);
    let masked_image_latents = encode_scaled(model, &inputs.masked_image, tiling, eps)?;
    let rows = if guidance { 2 } else { 1 };
    let mask_rows = Tensor::cat(&vec![&inputs.mask_latents; rows], 0)?;
    let masked_rows = Tensor::cat(&vec![&masked_image_latents; rows], 0)?;

    // Denoising loop.
    let timesteps = scheduler.timesteps().to_vec();
    let total = timesteps.len() - begin;
    let keep = inputs.mask_latents.affine(-1.0, 1.0)?;
    for (step, (index, &timestep)) in timesteps.iter().enumerate().skip(begin).enumerate() {
        if hooks.should_cancel() {
            return Err(DiffusionError::Cancelled);
        }
        let batch = Tensor::cat(&vec![&latents; rows], 0)?;
        let scaled = scheduler.scale_model_input(&batch, index)?;
        let unet_input = if nine {
            Tensor::cat(&[&scaled, &mask_rows, &masked_rows], 1)?
        } else {
            scaled
        };
        let unet_output = model.unet.forward_added(
            &unet_input,
            timestep,
            &prompt.embeds,
            added.as_ref(),
            tiling,
        )?;
        let noise_pred = if guidance {
            let uncond = unet_output.get(0)?.unsqueeze(0)?;
            let cond = unet_output.get(1)?.unsqueeze(0)?;
            (&uncond + ((cond - &uncond)? * request.guidance())?)?
        } else {
            unet_output.clone()
        };
        let out = scheduler.step(&noise_pred, index, &latents, noise)?;
        let mut next = out.prev_sample;
        if let (false, Some(image_latents)) = (nine, &image_latents) {
            // Legacy (4-channel) inpainting: keep the known region on the noised original.
            let proper = if index + 1 < timesteps.len() {
                scheduler.add_noise(image_latents, &start_noise, index + 1)?
            } else {
                image_latents.clone()
            };
            let m = &inputs.mask_latents;
            next = (proper.broadcast_mul(&keep)? + next.broadcast_mul(m)?)?;
        }
        hooks.on_step(&DenoisingStep {
            step,
            total,
            timestep,
            latents_in: latents,
            unet_input,
            unet_output,
            noise_pred,
            pred_original_sample: out.pred_original_sample,
            latents_out: next.clone(),
        });
        latents = next;
    }
    let kind = request
        .scheduler
        .unwrap_or_else(|| model.scheduler_config.default_kind());
    check_finite(&latents, total, kind)?;
    crate::cancel::checkpoint()?;
    let image = decode_latents(model, &latents, tiling)?;
    Ok(GeneratedImage {
        image,
        seed: request.seed,
        prompt_truncated: prompt.prompt_truncated,
        negative_prompt_truncated: prompt.negative_prompt_truncated,
        timesteps: timesteps[begin..].to_vec(),
        final_latents: latents,
    })
}
