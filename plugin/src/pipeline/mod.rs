//! Where a prompt becomes pixels: the text-to-image and img2img pipeline, one linear story in the
//! order of diffusers' `StableDiffusionPipeline.__call__` /
//! `StableDiffusionImg2ImgPipeline.__call__`:
//!
//! 1. [`check_inputs`]: validate the request, resolve the output size.
//! 2. [`encode_prompt`]: tokenize and encode `[uncond, cond]` (classifier-free guidance) or `[cond]`
//!    (SDXL: both text encoders and the pooled embedding, see [`sdxl`]).
//! 3. [`prepare_scheduler`]: build the scheduler from the folder's config; img2img keeps the tail
//!    of the schedule (`strength`).
//! 4. [`prepare_latents`]: unit noise times `init_noise_sigma`, or the VAE-encoded init image
//!    noised to the first timestep.
//! 5. [`denoise`]: the loop: UNet (twice batched for guidance), guidance, scheduler step, hooks
//!    (progress, preview, cancel).
//! 6. [`decode_latents`]: VAE decode and map to RGBA8 ([`crate::pipeline::postprocess`]).
//! 7. [`upscale::upscale_output`]: `request.upscale` (the x4 upscaler model when loaded, else
//!    wrap-aware Lanczos).
//!
//! Requests with a `mask` (or on a 9-channel inpainting UNet) run [`inpaint`] instead of stages
//! 1-6.
//!
//! All randomness comes from the request's seed through [`crate::noise`], or from tensors the
//! caller passes in [`ExplicitNoise`], so the same request gives the same bytes.

pub mod inpaint;
pub mod model;
pub mod pbr;
pub mod postprocess;
pub mod preview;
pub mod sdxl;
pub mod upscale;

use candle_core::{DType, Tensor};
use image::RgbaImage;

use crate::error::{DiffusionError, Result};
use crate::models::autoencoders::Vae;
use crate::models::unet_2d_condition::AddedCondKwargs;
use crate::noise::{NoiseSource, SeededNoise};
use crate::pipeline::model::StableDiffusion;
use crate::pipeline::postprocess::{rgba_to_tensor, tensor_to_rgba};
use crate::request::{GenerationRequest, InitImage};
use crate::schedulers::{Scheduler, SchedulerKind, build_scheduler};

mod stages;
pub use stages::*;

/// The result of one generation.
#[derive(Debug, Clone)]
pub struct GeneratedImage {
    /// RGBA8 pixels, `width x height`. A 3-channel model gives alpha 255.
    pub image: RgbaImage,
    /// The seed the noise stream used (the request's).
    pub seed: u64,
    /// True when the prompt was longer than the text encoder's 77 tokens and was truncated.
    pub prompt_truncated: bool,
    /// Same for the negative prompt.
    pub negative_prompt_truncated: bool,
    /// Timesteps the UNet ran at, in order.
    pub timesteps: Vec<f64>,
    /// Latents after the last step, `[1, latent_channels, height/f, width/f] (f = the VAE factor)`, before the
    /// division by the VAE's `scaling_factor`.
    pub final_latents: Tensor,
}

/// Everything about one finished denoising step, for progress bars, previews and tests.
/// Tensors are `[batch, channels, h/f, w/f]` (f = the VAE factor); cloning them is cheap (reference counted).
#[derive(Debug, Clone)]
pub struct DenoisingStep {
    /// 0-based index of this step among the steps that run.
    pub step: usize,
    /// Number of steps that run (img2img runs fewer than `num_inference_steps`).
    pub total: usize,
    /// The timestep the UNet saw.
    pub timestep: f64,
    /// x_t given to the scheduler.
    pub latents_in: Tensor,
    /// `scale_model_input(x_t)`, batched twice under guidance (`[2, ...]`, rows [uncond, cond]).
    pub unet_input: Tensor,
    /// Raw UNet output, rows [uncond, cond] under guidance.
    pub unet_output: Tensor,
    /// The guided prediction `uncond + g * (cond - uncond)` (= unet_output without guidance).
    pub noise_pred: Tensor,
    /// The scheduler's estimate of the clean latents (for previews).
    pub pred_original_sample: Tensor,
    /// The latents after the step.
    pub latents_out: Tensor,
}

/// Callbacks during [`generate`] (stable-diffusion.cpp's progress/preview callbacks and cancel).
pub trait GenerationHooks {
    /// Called after every denoising step.
    fn on_step(&mut self, _step: &DenoisingStep) {}
    /// Polled before every UNet call; returning true ends the generation with
    /// [`DiffusionError::Cancelled`].
    fn should_cancel(&mut self) -> bool {
        false
    }
    /// A cheap check the models poll between their blocks (UNet down/mid/up blocks, VAE blocks,
    /// text-encoder layers) and the pipeline between its stages (`cancel.rs`), so a cancel
    /// lands within one block rather than one whole UNet call or VAE decode. `None` (the
    /// default): only [`GenerationHooks::should_cancel`] is polled, before every UNet call.
    fn cancel_check(&self) -> Option<crate::cancel::CancelCheck> {
        None
    }
    /// Called once the prompts are encoded, saying whether either was cut to the text
    /// encoder's 77 tokens (so a caller that only sees the image can still report it).
    fn on_prompt_encoded(&mut self, _truncated: PromptTruncation) {}
}

/// Which prompts were longer than the text encoder's context (77 tokens: bos + 75 + eos) and
/// were cut; the model never saw the rest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PromptTruncation {
    /// The prompt was truncated.
    pub prompt: bool,
    /// The negative prompt was truncated (only encoded under guidance).
    pub negative_prompt: bool,
}

impl PromptTruncation {
    /// True when either prompt was truncated.
    pub fn any(&self) -> bool {
        self.prompt || self.negative_prompt
    }

    /// A note for logs and CLIs, e.g. "the prompt and the negative prompt were longer than 77
    /// tokens and were truncated"; `None` when nothing was cut.
    pub fn note(&self) -> Option<String> {
        let what = match (self.prompt, self.negative_prompt) {
            (true, true) => "the prompt and the negative prompt were",
            (true, false) => "the prompt was",
            (false, true) => "the negative prompt was",
            (false, false) => return None,
        };
        Some(format!("{what} longer than 77 tokens and truncated"))
    }
}

/// Hooks that do nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHooks;
impl GenerationHooks for NoHooks {}

/// Noise given by the caller instead of drawing it from the seed (diffusers' `latents=` argument,
/// the CLI's `--noise` file, or parity tests). Shapes `[1, latent_channels, height/f, width/f] (f = the VAE factor)`.
#[derive(Debug, Clone, Default)]
pub struct ExplicitNoise {
    /// Text-to-image: the initial latents before scaling by `init_noise_sigma`.
    /// img2img: the noise passed to the scheduler's `add_noise`.
    pub noise: Option<Tensor>,
    /// img2img: the unit draw for sampling the VAE posterior
    /// (`image_latents = scaling_factor * (mean + std * eps)`).
    pub vae_sample_eps: Option<Tensor>,
}

/// Runs `request` on `model` with noise from the request's seed.
///
/// Errors: [`DiffusionError::InvalidRequest`] for bad fields, [`DiffusionError::Image`] for an
/// unreadable init image, [`DiffusionError::Cancelled`] when `hooks` cancels.
pub fn generate(
    model: &StableDiffusion,
    request: &GenerationRequest,
    hooks: &mut dyn GenerationHooks,
) -> Result<GeneratedImage> {
    let mut noise = SeededNoise::new(request.seed);
    generate_with_noise(model, request, &ExplicitNoise::default(), &mut noise, hooks)
}

/// [`generate`] with caller-chosen noise: `explicit` replaces the named draws; every other draw
/// (in diffusers' order: VAE sample, img2img/initial noise, then one per ancestral step) comes
/// from `noise`.
pub fn generate_with_noise(
    model: &StableDiffusion,
    request: &GenerationRequest,
    explicit: &ExplicitNoise,
    noise: &mut dyn NoiseSource,
    hooks: &mut dyn GenerationHooks,
) -> Result<GeneratedImage> {
    // Unset steps/guidance/scheduler/size take the model folder's recommendation.
    let request = &request.with_recommended(&model.recommended);
    // Any error raised once the request's cancel check answers true (a model's checkpoint
    // between two blocks, or a tensor op cut short) is the cancel, not a failure.
    let check = hooks.cancel_check();
    crate::cancel::with_cancel_check(check, || {
        run_stages(model, request, explicit, noise, hooks)
            .and_then(|mut out| {
                // 7. The optional upscale (`request.upscale`).
                out.image = upscale::upscale_output(model, request, out.image, hooks)?;
                Ok(out)
            })
            .map_err(|e| {
                if crate::cancel::is_cancelled() {
                    DiffusionError::Cancelled
                } else {
                    e
                }
            })
    })
}

/// The numbered stages of [`generate_with_noise`], with a cancel checkpoint between each.
fn run_stages(
    model: &StableDiffusion,
    request: &GenerationRequest,
    explicit: &ExplicitNoise,
    noise: &mut dyn NoiseSource,
    hooks: &mut dyn GenerationHooks,
) -> Result<GeneratedImage> {
    let checkpoint = |hooks: &mut dyn GenerationHooks| -> Result<()> {
        crate::cancel::checkpoint()?;
        if hooks.should_cancel() {
            return Err(DiffusionError::Cancelled);
        }
        Ok(())
    };
    if inpaint::is_inpaint(model, request) {
        return inpaint::generate_inpaint(model, request, explicit, None, noise, hooks);
    }
    // 1. Check inputs.
    let init_image = load_init_image(request)?;
    let (width, height) = check_inputs(model, request, init_image.as_ref())?;
    // 2. Encode the prompt (and the negative prompt under guidance).
    let guidance = request.guidance() > 1.0;
    checkpoint(hooks)?;
    let prompt = encode_prompt(
        model,
        &request.prompt,
        request.negative_prompt.as_deref(),
        guidance,
    )?;
    if !all_finite(&prompt.embeds)?
        || prompt.pooled.as_ref().map(all_finite).transpose()? == Some(false)
    {
        return Err(DiffusionError::NonFiniteOutput {
            stage: "prompt encoding",
            hint: "the text encoder's weights (or a LoRA merged into them) hold NaN/inf or \
                   overflow; check them with `texgen inspect DIR --load`"
                .into(),
        });
    }
    hooks.on_prompt_encoded(PromptTruncation {
        prompt: prompt.prompt_truncated,
        negative_prompt: prompt.negative_prompt_truncated,
    });
    let added = sdxl::added_cond(model, request, &prompt, (width, height))?;
    checkpoint(hooks)?;
    // 3. Timesteps.
    let (mut scheduler, begin) = prepare_scheduler(model, request)?;
    // 4. Latents.
    let latents = prepare_latents(
        model,
        scheduler.as_ref(),
        begin,
        (width, height),
        init_image.as_ref(),
        explicit,
        noise,
    )?;
    // 5. Denoising loop.
    let final_latents = denoise(
        model,
        request,
        scheduler.as_mut(),
        begin,
        latents,
        &prompt.embeds,
        added.as_ref(),
        noise,
        hooks,
    )?;
    let kind = request
        .scheduler
        .unwrap_or_else(|| model.scheduler_config.default_kind());
    check_finite(&final_latents, scheduler.timesteps().len() - begin, kind)?;
    checkpoint(hooks)?;
    // 6. Decode.
    let image = decode_latents(model, &final_latents, request.tiling)?;
    Ok(GeneratedImage {
        image,
        seed: request.seed,
        prompt_truncated: prompt.prompt_truncated,
        negative_prompt_truncated: prompt.negative_prompt_truncated,
        timesteps: scheduler.timesteps()[begin..].to_vec(),
        final_latents,
    })
}

/// Refuses latents with NaN or infinite values (a diverging schedule, non-finite explicit noise,
/// or a broken model) instead of writing a black image: [`DiffusionError::NonFiniteLatents`]
/// naming the step count and the scheduler that ran.
pub(crate) fn check_finite(latents: &Tensor, steps: usize, scheduler: SchedulerKind) -> Result<()> {
    if all_finite(latents)? {
        return Ok(());
    }
    Err(DiffusionError::NonFiniteLatents {
        step: steps,
        total: steps,
        scheduler: format!("{scheduler:?}"),
    })
}

/// True when every value of `t` is finite (one pass: the sum of |x| is finite iff each is;
/// latents and embeddings are small, so this costs nothing next to a UNet call).
pub(crate) fn all_finite(t: &Tensor) -> Result<bool> {
    Ok(crate::kernels::all_finite(t)?)
}

/// Validates `request` against `model` and returns the output size `(width, height)` in pixels:
/// the request's, else the init image's, else the UNet's native `sample_size * vae_scale`.
/// The upscale of the last stage is checked against that size here too
/// ([`upscale::check_upscale_size`]), before any model work.
///
/// Errors: [`DiffusionError::InvalidRequest`] naming the field (`width`, `height`, `upscale`,
/// ...) and its value.
pub fn check_inputs(
    model: &StableDiffusion,
    request: &GenerationRequest,
    init_image: Option<&RgbaImage>,
) -> Result<(u32, u32)> {
    let scale = model.vae_config.downscale_factor;
    request.validate(scale)?;
    let native = (model.unet_config.sample_size * scale) as u32;
    let pick = |requested: u32, from_image: Option<u32>| {
        if requested != 0 {
            requested
        } else {
            from_image
                .map(|v| v - v % scale as u32)
                .filter(|&v| v > 0)
                .unwrap_or(native)
        }
    };
    let width = pick(request.width, init_image.map(|i| i.width()));
    let height = pick(request.height, init_image.map(|i| i.height()));
    // The same cap as explicit sizes (GenerationRequest::validate): a model's native size or an
    // init image's must not ask for more memory than an explicit request may.
    for (field, v) in [("width", width), ("height", height)] {
        if v > 4096 {
            return Err(DiffusionError::InvalidRequest {
                field,
                value: v.to_string(),
                reason: "the resolved size (model's native size or init image) must be at most 4096 pixels; set width/height".into(),
            });
        }
    }
    // The last stage's size, known now: an upscale that must fail fails before any model work.
    upscale::check_upscale_size(model, request.upscale, (width, height))?;
    Ok((width, height))
}

/// Reads the init image of an img2img request (RGBA8), or `None` for text-to-image.
fn load_init_image(request: &GenerationRequest) -> Result<Option<RgbaImage>> {
    request
        .init_image
        .as_ref()
        .map(|i| load_image_of(i, "init_image"))
        .transpose()
}

/// Reads an init image or mask (RGBA8): a file, or in-memory pixels of the right length.
///
/// Errors: [`DiffusionError::Image`] for an unreadable file, [`DiffusionError::InvalidRequest`]
/// naming `field` for in-memory pixels whose length is not `width * height * 4`.
pub(crate) fn load_image_of(init: &InitImage, field: &'static str) -> Result<RgbaImage> {
    match init {
        InitImage::Path(path) => {
            image::open(path)
                .map(|i| i.to_rgba8())
                .map_err(|e| DiffusionError::Image {
                    path: path.clone(),
                    reason: e.to_string(),
                })
        }
        InitImage::Rgba {
            width,
            height,
            pixels,
        } => RgbaImage::from_raw(*width, *height, pixels.clone()).ok_or_else(|| {
            DiffusionError::InvalidRequest {
                field,
                value: format!("{width}x{height} with {} bytes", pixels.len()),
                reason: "RGBA8 pixels must have width * height * 4 bytes".into(),
            }
        }),
    }
}
