//! The [`Generator`] trait the worker drives, and a loaded [`StableDiffusion`] as one: the full pipeline, the request's
//! post-processing ([`crate::pipeline::postprocess::finish`]) and fitted latent previews.

use std::sync::OnceLock;

use image::RgbaImage;

use crate::pipeline::model::StableDiffusion;
use crate::pipeline::preview::LatentPreviewer;
use crate::pipeline::{self, DenoisingStep, GenerationHooks};
use crate::request::GenerationRequest;

/// What the worker needs from a model: run one request with hooks.
pub trait Generator: Send + 'static {
    /// A stable identity of the model (for cache keys and logs).
    fn identity(&self) -> String;
    /// Runs `request`; `hooks` get every step and may cancel.
    fn generate(
        &self,
        request: &GenerationRequest,
        hooks: &mut dyn GenerationHooks,
    ) -> crate::Result<RgbaImage>;
    /// The most compute threads that still speed this model up (`None` = no limit). Small models
    /// are dominated by per-operation overhead and run fastest on one thread.
    fn max_useful_threads(&self) -> Option<usize> {
        None
    }
    /// A cheap RGBA preview of a step (no VAE), or `None` when unsupported.
    fn preview(&self, _step: &DenoisingStep) -> Option<RgbaImage> {
        None
    }
}

/// A boxed generator is a generator with every method forwarded (a wrapper that forgot
/// `max_useful_threads` once ran a one-thread model on all cores but one).
impl<G: Generator + ?Sized> Generator for Box<G> {
    fn identity(&self) -> String {
        (**self).identity()
    }
    fn generate(
        &self,
        request: &GenerationRequest,
        hooks: &mut dyn GenerationHooks,
    ) -> crate::Result<RgbaImage> {
        (**self).generate(request, hooks)
    }
    fn max_useful_threads(&self) -> Option<usize> {
        (**self).max_useful_threads()
    }
    fn preview(&self, step: &DenoisingStep) -> Option<RgbaImage> {
        (**self).preview(step)
    }
}

/// [`StableDiffusion`] plus a lazily fitted [`LatentPreviewer`].
pub struct SdGenerator {
    /// The loaded pipeline.
    pub model: StableDiffusion,
    previewer: OnceLock<Option<LatentPreviewer>>,
}

impl SdGenerator {
    /// Wraps a loaded model.
    pub fn new(model: StableDiffusion) -> Self {
        Self {
            model,
            previewer: OnceLock::new(),
        }
    }

    fn previewer(&self) -> Option<&LatentPreviewer> {
        self.previewer
            .get_or_init(|| {
                let m = &self.model;
                let decode = |z: &candle_core::Tensor| {
                    pipeline::decode_latents_raw(m, z, crate::Tiling::None)
                        .map_err(|e| candle_core::Error::Msg(e.to_string()))
                };
                LatentPreviewer::fit(
                    m.unet_config.in_channels,
                    m.vae_config.downscale_factor,
                    &m.device,
                    decode,
                )
                .map_err(|e| tracing::warn!("latent previews are off: {e}"))
                .ok()
            })
            .as_ref()
    }
}

impl Generator for SdGenerator {
    fn identity(&self) -> String {
        self.model.identity.clone()
    }

    fn generate(
        &self,
        request: &GenerationRequest,
        hooks: &mut dyn GenerationHooks,
    ) -> crate::Result<RgbaImage> {
        let out = pipeline::generate(&self.model, request, hooks)?;
        Ok(crate::pipeline::postprocess::finish(out.image, request))
    }

    fn max_useful_threads(&self) -> Option<usize> {
        self.model.max_useful_threads()
    }

    fn preview(&self, step: &DenoisingStep) -> Option<RgbaImage> {
        // With TAESD at hand (the folder's vae or LoadOptions::decoder), a real decode of the
        // current estimate; else the fitted linear map.
        if let Some(taesd) = self.model.taesd() {
            return crate::pipeline::preview::taesd_preview(taesd, &step.pred_original_sample)
                .map_err(|e| tracing::debug!("TAESD preview failed: {e}"))
                .ok();
        }
        self.previewer()?.preview(&step.pred_original_sample).ok()
    }
}
