//! The stages [`super::generate`] runs, each a method of diffusers' `StableDiffusionPipeline`
//! (`pipelines/stable_diffusion/pipeline_stable_diffusion.py`): `encode_prompt`, the scheduler's
//! `set_timesteps` (+ img2img's `get_timesteps`), `prepare_latents`, the denoising loop, and the
//! VAE decode.

use super::*;

/// Prompt embeddings for the UNet's cross-attention.
#[derive(Debug, Clone)]
pub struct PromptEmbeds {
    /// `[2, 77, cross_attention_dim]` rows [uncond, cond] under guidance, else `[1, 77, dim]`.
    pub embeds: Tensor,
    /// SDXL: text_encoder_2's projected pooled embedding `[batch, projection_dim]`, same rows
    /// (the UNet's `text_embeds`); `None` for SD 1.x/2.x.
    pub pooled: Option<Tensor>,
    /// The prompt was longer than the text encoder's 77 tokens and was cut.
    pub prompt_truncated: bool,
    /// The negative prompt was cut the same way.
    pub negative_prompt_truncated: bool,
}

/// diffusers' `encode_prompt`: tokenizes `prompt` (and, under guidance, `negative_prompt`;
/// `None` = diffusers' `negative_prompt=None`, the empty prompt) and runs the text encoder once on
/// the batch `[uncond, cond]`. SDXL models go through [`sdxl::encode_prompt_xl`] (where `None`
/// and `Some("")` differ: `force_zeros_for_empty_prompt`).
pub fn encode_prompt(
    model: &StableDiffusion,
    prompt: &str,
    negative_prompt: Option<&str>,
    guidance: bool,
) -> Result<PromptEmbeds> {
    if let Some(parts) = &model.sdxl {
        return sdxl::encode_prompt_xl(model, parts, prompt, negative_prompt, guidance);
    }
    let cond = model.tokenizer.encode(prompt)?;
    let mut rows = Vec::new();
    let mut negative_prompt_truncated = false;
    if guidance {
        let uncond = model.tokenizer.encode(negative_prompt.unwrap_or(""))?;
        negative_prompt_truncated = uncond.truncated;
        rows.extend_from_slice(&uncond.ids);
    }
    rows.extend_from_slice(&cond.ids);
    let batch = if guidance { 2 } else { 1 };
    let ids = Tensor::from_vec(rows, (batch, cond.ids.len()), &model.device)?;
    let embeds = model.text_encoder.forward(&ids)?;
    Ok(PromptEmbeds {
        embeds,
        pooled: None,
        prompt_truncated: cond.truncated,
        negative_prompt_truncated,
    })
}

/// Builds the request's scheduler from the folder's config and returns it with the index of the
/// first step to run: 0 for text-to-image; for img2img diffusers' `get_timesteps`:
/// `init_timestep = min(int(steps * strength), steps)`, `begin = steps - init_timestep`.
pub fn prepare_scheduler(
    model: &StableDiffusion,
    request: &GenerationRequest,
) -> Result<(Box<dyn Scheduler>, usize)> {
    let kind = request
        .scheduler
        .unwrap_or_else(|| model.scheduler_config.default_kind());
    let steps = request.steps();
    let scheduler = build_scheduler(
        &model.scheduler_config,
        kind,
        steps,
        request.timestep_spacing,
    )?;
    let begin = if request.init_image.is_some() {
        let init_timestep = ((steps as f64 * request.strength) as usize).min(steps);
        steps - init_timestep
    } else {
        0
    };
    if begin >= steps {
        return Err(DiffusionError::InvalidRequest {
            field: "strength",
            value: request.strength.to_string(),
            reason: format!(
                "runs no step with num_inference_steps = {steps}; raise strength or steps"
            ),
        });
    }
    Ok((scheduler, begin))
}

/// The starting latents `[1, latent_channels, height/f, width/f] (f = the VAE factor)`.
///
/// Text-to-image: `noise * init_noise_sigma` (diffusers' `prepare_latents`). img2img: the init
/// image resized to `size`, VAE-encoded (`AutoencoderKL`: sampled, `mean + std * eps`;
/// `AutoencoderTiny`: its deterministic latents), times `scaling_factor`,
/// then `scheduler.add_noise(image_latents, noise, begin)`.
pub fn prepare_latents(
    model: &StableDiffusion,
    scheduler: &dyn Scheduler,
    begin: usize,
    (width, height): (u32, u32),
    init_image: Option<&RgbaImage>,
    explicit: &ExplicitNoise,
    noise: &mut dyn NoiseSource,
) -> Result<Tensor> {
    let scale = model.vae_config.downscale_factor;
    let shape = [
        1,
        model.unet_config.in_channels,
        height as usize / scale,
        width as usize / scale,
    ];
    let mut draw = |given: &Option<Tensor>, what: &'static str| -> Result<Tensor> {
        match given {
            Some(t) if t.dims() == shape => {
                let t = t.to_dtype(DType::F32)?.to_device(&model.device)?;
                if !super::all_finite(&t)? {
                    return Err(DiffusionError::InvalidRequest {
                        field: what,
                        value: "a tensor with NaN/inf values".into(),
                        reason: "explicit noise must be finite".into(),
                    });
                }
                Ok(t)
            }
            Some(t) => Err(DiffusionError::InvalidRequest {
                field: what,
                value: format!("shape {:?}", t.dims()),
                reason: format!("expected shape {shape:?}"),
            }),
            None => Ok(noise.randn(&shape, &model.device)?),
        }
    };
    let Some(image) = init_image else {
        return Ok((draw(&explicit.noise, "noise")? * scheduler.init_noise_sigma())?);
    };
    let image = if image.dimensions() == (width, height) {
        image.clone()
    } else {
        image::imageops::resize(image, width, height, image::imageops::FilterType::Lanczos3)
    };
    let pixels = rgba_to_tensor(&image, model.vae_config.in_channels, &model.device)?;
    // diffusers' `retrieve_latents`: `latent_dist.sample()` for AutoencoderKL (one draw), the
    // deterministic `latents` for AutoencoderTiny (no draw).
    let latents = match &model.vae {
        Vae::Kl(vae) => {
            let posterior = vae.encode(&pixels)?;
            posterior.sample(&draw(&explicit.vae_sample_eps, "vae_sample_eps")?)?
        }
        Vae::Tiny(vae) => vae.encode(&pixels)?,
    };
    let image_latents = (latents * model.vae_config.scaling_factor)?;
    let noise = draw(&explicit.noise, "noise")?;
    Ok(scheduler.add_noise(&image_latents, &noise, begin)?)
}

/// The denoising loop over `scheduler.timesteps()[begin..]`: per step, the UNet on
/// `scale_model_input(x)` (batched `[uncond, cond]` under guidance; SDXL: with `added`, the
/// `text_embeds` and `time_ids` of the same rows), the guided prediction
/// `uncond + guidance_scale * (cond - uncond)`, and the scheduler step. Returns the final latents.
#[allow(clippy::too_many_arguments)]
pub fn denoise(
    model: &StableDiffusion,
    request: &GenerationRequest,
    scheduler: &mut dyn Scheduler,
    begin: usize,
    mut latents: Tensor,
    prompt_embeds: &Tensor,
    added: Option<&AddedCondKwargs>,
    noise: &mut dyn NoiseSource,
    hooks: &mut dyn GenerationHooks,
) -> Result<Tensor> {
    let guidance = prompt_embeds.dim(0)? == 2;
    let timesteps = scheduler.timesteps().to_vec();
    let total = timesteps.len() - begin;
    for (step, (index, &timestep)) in timesteps.iter().enumerate().skip(begin).enumerate() {
        if hooks.should_cancel() {
            return Err(DiffusionError::Cancelled);
        }
        let batch = if guidance {
            Tensor::cat(&[&latents, &latents], 0)?
        } else {
            latents.clone()
        };
        let unet_input = scheduler.scale_model_input(&batch, index)?;
        let unet_output = model.unet.forward_added(
            &unet_input,
            timestep,
            prompt_embeds,
            added,
            request.tiling,
        )?;
        let noise_pred = if guidance {
            let uncond = unet_output.get(0)?.unsqueeze(0)?;
            let cond = unet_output.get(1)?.unsqueeze(0)?;
            (&uncond + ((cond - &uncond)? * request.guidance())?)?
        } else {
            unet_output.clone()
        };
        let out = scheduler.step(&noise_pred, index, &latents, noise)?;
        hooks.on_step(&DenoisingStep {
            step,
            total,
            timestep,
            latents_in: latents,
            unet_input,
            unet_output,
            noise_pred,
            pred_original_sample: out.pred_original_sample,
            latents_out: out.prev_sample.clone(),
        });
        latents = out.prev_sample;
        // Found after the step it happened in, not after the last one: a broken model or LoRA
        // fails in seconds instead of after the whole schedule.
        if !super::all_finite(&latents)? {
            return Err(DiffusionError::NonFiniteLatents {
                step: step + 1,
                total,
                scheduler: format!(
                    "{:?}",
                    request
                        .scheduler
                        .unwrap_or_else(|| model.scheduler_config.default_kind())
                ),
            });
        }
    }
    Ok(latents)
}

/// diffusers' `vae.decode(latents / scaling_factor)` then `postprocess`: `[1, C, h, w]` latents
/// to an RGBA8 image of `f*w x f*h` pixels (f = the VAE factor) (circular decoder convolutions on tiled axes).
pub fn decode_latents(
    model: &StableDiffusion,
    latents: &Tensor,
    tiling: crate::Tiling,
) -> Result<RgbaImage> {
    let decoded = decode_latents_raw(model, latents, tiling)?;
    Ok(tensor_to_rgba(&decoded)?)
}

/// The decoder's raw output for `latents` (`[1, out_channels, f*h, f*w]`, roughly [-1, 1],
/// unclamped): `vae.decode(latents / vae.scaling_factor)`, or with [`StableDiffusion::decoder`]
/// (TAESD) when one was loaded, `decoder.decode(latents / decoder.scaling_factor)` (1.0).
///
/// The VAE always runs in f32 (fp16 weight files are converted on load), which is what
/// diffusers' `force_upcast` does for SDXL's VAE, whose f16 activations overflow on large latents
/// (candle #1060). Should the decoder still produce NaN/inf, the result is
/// [`DiffusionError::InvalidRequest`] naming the latents, never a black image.
pub fn decode_latents_raw(
    model: &StableDiffusion,
    latents: &Tensor,
    tiling: crate::Tiling,
) -> Result<Tensor> {
    let decoded = match &model.decoder {
        // LoadOptions::decoder: TAESD in place of the model's own decoder, with its own scaling.
        Some(taesd) => taesd.decode(&(latents / taesd.config().scaling_factor)?, tiling)?,
        None => {
            let z = (latents / model.vae_config.scaling_factor)?;
            model.vae.decode(&z, tiling)?
        }
    };
    let sum = decoded
        .abs()?
        .sum_all()?
        .to_dtype(DType::F32)?
        .to_scalar::<f32>()?;
    if !sum.is_finite() {
        return Err(DiffusionError::InvalidRequest {
            field: "latents",
            value: format!("shape {:?}", latents.dims()),
            reason: "the VAE decoder produced non-finite pixels (NaN/inf): the latents are far \
                     outside the VAE's range"
                .into(),
        });
    }
    Ok(decoded)
}
