//! [`GenerationRequest`]: the one plain, serialisable description of a generation, in the spirit
//! of stable-diffusion.cpp's `sd_img_gen_params_t` and diffusers' pipeline `__call__` arguments.

pub mod player;
pub mod ron;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{DiffusionError, Result};
use crate::schedulers::{SchedulerKind, TimestepSpacing};
use crate::tiling::Tiling;

/// An init image for img2img: a PNG/JPEG file, or RGBA8 pixels already in memory.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum InitImage {
    /// An image file on disk (resized to the request's size if it differs).
    Path(PathBuf),
    /// Row-major RGBA8 pixels, `width * height * 4` bytes.
    Rgba {
        width: u32,
        height: u32,
        pixels: Vec<u8>,
    },
}

/// What the image is for: decides post-processing (and, in the Bevy layer, the sampler).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AssetKind {
    /// A surface texture: usually requested with seamless tiling; opaque.
    #[default]
    #[serde(alias = "Texture")]
    Texture,
    /// An item sprite with real transparency: the model's alpha channel where it has one, else the
    /// solid background colour is keyed out with soft edges ([`crate::pipeline::postprocess::key_out_background`]).
    #[serde(alias = "Sprite")]
    Sprite,
}

/// An optional pixel-art pass: snap to a grid of `cell`-pixel blocks and to a palette.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PixelArt {
    /// Block size in pixels (>= 1): each block becomes one flat colour.
    pub cell: u32,
    /// Number of palette colours (2..=256).
    pub colors: u32,
}

/// Everything that determines the pixels of one generation (with the model), plus two
/// scheduling fields (`player`, `priority`) that do not.
///
/// Same request + same model = same bytes on the same machine. Defaults follow diffusers'
/// `StableDiffusionPipeline.__call__`, except the size (the model's native size when 0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GenerationRequest {
    /// What to draw. Over-long prompts are truncated to the text encoder's 77 tokens
    /// (bos + 75 + eos); the result reports it.
    pub prompt: String,
    /// What to steer away from (the unconditional branch of classifier-free guidance).
    /// Empty = diffusers' `negative_prompt=None` (the empty prompt).
    pub negative_prompt: String,
    /// Seed of the request's noise stream (ChaCha8; see [`crate::noise`]).
    pub seed: u64,
    /// Output width in pixels, a multiple of 8 (the VAE's downscale factor); 0 = the model's
    /// native `unet.sample_size * 8`.
    pub width: u32,
    /// Output height in pixels, a multiple of 8; 0 = the model's native size.
    pub height: u32,
    /// Denoising steps (diffusers' `num_inference_steps`), >= 1.
    pub num_inference_steps: usize,
    /// Classifier-free guidance weight; guidance is off (one UNet pass per step) when <= 1.
    pub guidance_scale: f64,
    /// Which scheduler; `None` = the class named by the folder's `scheduler_config.json`.
    pub scheduler: Option<SchedulerKind>,
    /// Overrides the folder's `timestep_spacing`.
    pub timestep_spacing: Option<TimestepSpacing>,
    /// Seamless tiling per axis (circular convolutions in the UNet and VAE decoder).
    pub tiling: Tiling,
    /// img2img: start from this image instead of pure noise.
    pub init_image: Option<InitImage>,
    /// img2img strength in (0, 1]: the fraction of the schedule that runs (1 = ignore the image).
    pub strength: f64,
    /// Texture or sprite (post-processing).
    pub kind: AssetKind,
    /// Optional pixel-art pass applied after decoding.
    pub pixel_art: Option<PixelArt>,
    /// Whose request this is (queue quotas, "cancel all of a player's"); does not change pixels.
    pub player: Option<String>,
    /// Queue priority, higher first; does not change pixels.
    pub priority: i32,
}

impl Default for GenerationRequest {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative_prompt: String::new(),
            seed: 0,
            width: 0,
            height: 0,
            num_inference_steps: 20,
            guidance_scale: 7.5,
            scheduler: None,
            timestep_spacing: None,
            tiling: Tiling::None,
            init_image: None,
            strength: 0.8,
            kind: AssetKind::Texture,
            pixel_art: None,
            player: None,
            priority: 0,
        }
    }
}

impl GenerationRequest {
    /// Checks the fields that do not depend on the model. `vae_scale` is the model's
    /// pixels-per-latent factor (8 for SD).
    ///
    /// Errors: [`DiffusionError::InvalidRequest`] naming the field and its value.
    pub fn validate(&self, vae_scale: usize) -> Result<()> {
        let bad = |field: &'static str, value: String, reason: String| {
            Err(DiffusionError::InvalidRequest {
                field,
                value,
                reason,
            })
        };
        for (field, v) in [("width", self.width), ("height", self.height)] {
            if v != 0 && !(v as usize).is_multiple_of(vae_scale) {
                return bad(
                    field,
                    v.to_string(),
                    format!("must be a multiple of {vae_scale} pixels"),
                );
            }
            if v > 4096 {
                return bad(field, v.to_string(), "must be at most 4096 pixels".into());
            }
        }
        if self.num_inference_steps == 0 {
            return bad(
                "num_inference_steps",
                "0".into(),
                "must be at least 1".into(),
            );
        }
        if self.num_inference_steps > 1000 {
            return bad(
                "num_inference_steps",
                self.num_inference_steps.to_string(),
                "must be at most 1000 (the training schedule's length)".into(),
            );
        }
        if !self.guidance_scale.is_finite() || self.guidance_scale < 0.0 {
            return bad(
                "guidance_scale",
                self.guidance_scale.to_string(),
                "must be a finite number >= 0".into(),
            );
        }
        if self.init_image.is_some() && !(self.strength > 0.0 && self.strength <= 1.0) {
            return bad(
                "strength",
                self.strength.to_string(),
                "must be in (0, 1]".into(),
            );
        }
        if let Some(p) = self.pixel_art
            && (p.cell == 0 || !(2..=256).contains(&p.colors))
        {
            return bad(
                "pixel_art",
                format!("cell {}, colors {}", p.cell, p.colors),
                "cell must be >= 1 and colors in 2..=256".into(),
            );
        }
        Ok(())
    }

    /// A seamless (x and y) texture request for `prompt`.
    pub fn texture(prompt: impl Into<String>) -> Self {
        Self {
            prompt: prompt.into(),
            tiling: Tiling::XY,
            kind: AssetKind::Texture,
            ..Default::default()
        }
    }

    /// A sprite request for `prompt` (transparent background, no tiling).
    pub fn sprite(prompt: impl Into<String>) -> Self {
        Self {
            prompt: prompt.into(),
            kind: AssetKind::Sprite,
            ..Default::default()
        }
    }

    /// The request without its scheduling fields (`player`, `priority`): what the pixels depend
    /// on, and so what caches key on.
    pub fn pixel_fields(&self) -> Self {
        Self {
            player: None,
            priority: 0,
            ..self.clone()
        }
    }
}

impl std::str::FromStr for SchedulerKind {
    type Err = DiffusionError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "ddim" => SchedulerKind::Ddim,
            "euler" => SchedulerKind::Euler,
            "euler-a" | "euler_a" | "euler-ancestral" => SchedulerKind::EulerAncestral,
            "dpmpp-2m" | "dpm++2m" | "dpmpp_2m" => SchedulerKind::DpmSolverMultistep,
            "dpmpp-2m-karras" | "dpm++2m-karras" | "dpmpp_2m_karras" => {
                SchedulerKind::DpmSolverMultistepKarras
            }
            "lcm" => SchedulerKind::Lcm,
            _ => return Err(DiffusionError::UnknownScheduler(s.to_string())),
        })
    }
}

impl std::str::FromStr for TimestepSpacing {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "leading" => Ok(TimestepSpacing::Leading),
            "linspace" => Ok(TimestepSpacing::Linspace),
            "trailing" => Ok(TimestepSpacing::Trailing),
            other => Err(format!(
                "unknown timestep spacing `{other}`; expected leading, linspace or trailing"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_field() {
        let r = GenerationRequest {
            width: 100,
            ..Default::default()
        };
        let e = r.validate(8).unwrap_err().to_string();
        assert!(
            e.contains("`width` = 100") && e.contains("multiple of 8"),
            "{e}"
        );
        let r = GenerationRequest {
            num_inference_steps: 0,
            ..Default::default()
        };
        assert!(
            r.validate(8)
                .unwrap_err()
                .to_string()
                .contains("num_inference_steps")
        );
        let r = GenerationRequest {
            init_image: Some(InitImage::Path("x.png".into())),
            strength: 1.5,
            ..Default::default()
        };
        assert!(
            r.validate(8)
                .unwrap_err()
                .to_string()
                .contains("`strength` = 1.5")
        );
        assert!(GenerationRequest::default().validate(8).is_ok());
    }

    #[test]
    fn scheduler_names_parse_and_unknown_is_typed() {
        assert_eq!(
            "euler-a".parse::<SchedulerKind>().unwrap(),
            SchedulerKind::EulerAncestral
        );
        let e = "heun".parse::<SchedulerKind>().unwrap_err();
        assert!(matches!(e, DiffusionError::UnknownScheduler(ref s) if s == "heun"));
    }
}
