//! A loaded [`StableDiffusion`] as the worker's [`Generator`]: the full pipeline, the request's
//! post-processing ([`crate::pipeline::postprocess::finish`]) and fitted latent previews.

use std::sync::OnceLock;

use image::RgbaImage;

use crate::pipeline::model::StableDiffusion;
use crate::pipeline::preview::LatentPreviewer;
use crate::pipeline::{self, DenoisingStep, GenerationHooks};
use crate::request::GenerationRequest;
use crate::runtime::worker::Generator;

/// [`StableDiffusion`] plus a lazily fitted [`LatentPreviewer`].
pub struct SdGenerator {
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
        self.previewer()?.preview(&step.pred_original_sample).ok()
    }
}
