//! [`RecommendedSettings`]: a model folder's own sampling settings (`bevy_diffusion.json`).

use serde::{Deserialize, Serialize};

use super::GenerationRequest;
use crate::error::{DiffusionError, Result};
use crate::schedulers::SchedulerKind;

/// The sampling settings a model folder recommends, from `bevy_diffusion.json` beside
/// `model_index.json`; a request's unset fields take them ([`GenerationRequest::with_recommended`]).
///
/// ```json
/// { "num_inference_steps": 12, "guidance_scale": 4.0, "scheduler": "ddim", "width": 32, "height": 32 }
/// ```
///
/// Every key is optional; unknown keys are refused (a typo would silently do nothing).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecommendedSettings {
    /// Denoising steps (1..=1000).
    pub num_inference_steps: Option<usize>,
    /// Classifier-free guidance weight (finite, >= 0).
    pub guidance_scale: Option<f64>,
    /// The scheduler (CLI names: `ddim`, `euler`, `euler-a`, ...).
    pub scheduler: Option<SchedulerKind>,
    /// Output width in pixels for requests of width 0 (a multiple of the VAE factor `f`).
    pub width: Option<u32>,
    /// Output height in pixels for requests of height 0.
    pub height: Option<u32>,
}

impl RecommendedSettings {
    /// The file's name in a model folder.
    pub const FILE_NAME: &'static str = "bevy_diffusion.json";

    /// Reads `dir/bevy_diffusion.json`; no file = no recommendation.
    ///
    /// Errors: [`DiffusionError::InvalidConfig`] naming the file and field for bad JSON, an
    /// unknown key, or a value out of range; [`DiffusionError::Io`] if it cannot be read.
    pub fn read(dir: &std::path::Path) -> Result<Self> {
        let path = dir.join(Self::FILE_NAME);
        let Some(config) = crate::configuration_utils::JsonConfig::read_optional(&path)? else {
            return Ok(Self::default());
        };
        let this: Self = config.deserialize()?;
        let probe = GenerationRequest {
            num_inference_steps: this.num_inference_steps,
            guidance_scale: this.guidance_scale,
            ..Default::default()
        };
        if let Err(DiffusionError::InvalidRequest { field, reason, .. }) = probe.validate(1) {
            return Err(DiffusionError::config(&path, field, reason));
        }
        for (field, v) in [("width", this.width), ("height", this.height)] {
            if v.is_some_and(|v| v == 0 || v > 4096) {
                return Err(DiffusionError::config(&path, field, "must be in 1..=4096"));
            }
        }
        Ok(this)
    }

    /// True when the folder recommends nothing.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}
