//! [`GenerationRequest`]: the one plain, serialisable description of a generation, in the spirit
//! of stable-diffusion.cpp's `sd_img_gen_params_t` and diffusers' pipeline `__call__` arguments.

mod names;
pub mod player;
mod recommended;
pub mod ron;

pub use recommended::RecommendedSettings;

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
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// RGBA8 bytes, row-major, `width * height * 4` of them.
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

/// Steps of a request that sets none, on a model folder that recommends none (diffusers'
/// `StableDiffusionPipeline.__call__` default is 50; 20 is enough for the DDIM/DPM++ schedulers).
pub const DEFAULT_STEPS: usize = 20;
/// Guidance of a request that sets none, on a model folder that recommends none (diffusers').
pub const DEFAULT_GUIDANCE_SCALE: f64 = 7.5;

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
    /// `None` = diffusers' `negative_prompt=None`: the empty prompt for SD 1.x/2.x, zero
    /// embeddings for SDXL (`force_zeros_for_empty_prompt`); `Some("")` encodes the empty prompt
    /// on every model. RON/JSON take a bare string.
    pub negative_prompt: Option<String>,
    /// Seed of the request's noise stream (ChaCha8; see [`crate::noise`]).
    pub seed: u64,
    /// Output width in pixels, a multiple of the model's VAE factor `f` (its downscale factor:
    /// 8 for SD and for the embedded model); 0 = the model's native `unet.sample_size * f`.
    pub width: u32,
    /// Output height in pixels, a multiple of the VAE factor `f`; 0 = the model's native size.
    pub height: u32,
    /// Denoising steps (diffusers' `num_inference_steps`), in 1..=1000; `None` = the model
    /// folder's recommendation ([`RecommendedSettings`], `bevy_diffusion.json`), else
    /// [`DEFAULT_STEPS`]. RON and JSON take a bare number (`num_inference_steps: 12`).
    pub num_inference_steps: Option<usize>,
    /// Classifier-free guidance weight; guidance is off (one UNet pass per step) when <= 1.
    /// `None` = the model folder's recommendation, else [`DEFAULT_GUIDANCE_SCALE`].
    pub guidance_scale: Option<f64>,
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
    /// Inpainting: a mask of the init image's size, white (grey >= 128) = repaint, black = keep
    /// (diffusers' `mask_image`; read as grey, not from alpha). Needs `init_image`. See
    /// [`crate::pipeline::inpaint`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mask: Option<InitImage>,
    /// Upscale the finished image by this integer factor (1..=8) with wrap-aware Lanczos3
    /// ([`crate::pipeline::upscale::lanczos_upscale`]; tiled axes wrap, so a seamless texture
    /// stays seamless); `None` = no upscale. The output side must stay at most 8192 pixels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upscale: Option<u32>,
    /// Also derive PBR maps (normal, height, roughness, AO) from the finished image
    /// ([`crate::pipeline::pbr`]): `texgen bake` writes `NAME_normal.png` etc. beside `NAME.png`;
    /// with the `pbr` feature, `bevy_plugin::DiffusionMaterials` puts them on a material.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub pbr: bool,
    /// Texture or sprite (post-processing).
    pub kind: AssetKind,
    /// Optional pixel-art pass applied after decoding.
    pub pixel_art: Option<PixelArt>,
    /// Whose request this is (queue quotas, "cancel all of a player's"); does not change pixels.
    pub player: Option<String>,
    /// Queue priority, higher first; does not change pixels.
    pub priority: i32,
    /// SDXL micro-conditioning (diffusers' `original_size`, `(height, width)` in pixels); `None`
    /// = the output size. Ignored by SD 1.x/2.x models.
    pub original_size: Option<(u32, u32)>,
    /// SDXL: diffusers' `crops_coords_top_left`, `(top, left)` in pixels; default `(0, 0)`.
    pub crops_coords_top_left: (u32, u32),
    /// SDXL: diffusers' `target_size`, `(height, width)`; `None` = the output size.
    pub target_size: Option<(u32, u32)>,
    /// SDXL: the unconditional row's `original_size`; used (with the two below) only when both
    /// it and `negative_target_size` are set, else that row repeats the positive micro-conditioning.
    pub negative_original_size: Option<(u32, u32)>,
    /// SDXL: the unconditional row's `crops_coords_top_left`; default `(0, 0)`.
    pub negative_crops_coords_top_left: (u32, u32),
    /// SDXL: the unconditional row's `target_size`.
    pub negative_target_size: Option<(u32, u32)>,
}

impl Default for GenerationRequest {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative_prompt: None,
            seed: 0,
            width: 0,
            height: 0,
            num_inference_steps: None,
            guidance_scale: None,
            scheduler: None,
            timestep_spacing: None,
            tiling: Tiling::None,
            init_image: None,
            strength: 0.8,
            mask: None,
            upscale: None,
            pbr: false,
            kind: AssetKind::Texture,
            pixel_art: None,
            player: None,
            priority: 0,
            original_size: None,
            crops_coords_top_left: (0, 0),
            target_size: None,
            negative_original_size: None,
            negative_crops_coords_top_left: (0, 0),
            negative_target_size: None,
        }
    }
}

/// The largest value of an SDXL micro-conditioning number (`original_size`, ...): far beyond
/// any training image (SDXL saw up to ~4096 px), small enough to stay exact in f32.
pub const MAX_MICRO_CONDITIONING: u32 = 65_536;

impl GenerationRequest {
    /// Checks the fields that do not depend on the model. `vae_scale` is the model's
    /// pixels-per-latent factor `f` (8 for SD and for the embedded model; 1 checks only the
    /// model-free bounds).
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
                    format!("must be a multiple of {vae_scale} pixels (this model's VAE factor f)"),
                );
            }
            if v > 4096 {
                return bad(field, v.to_string(), "must be at most 4096 pixels".into());
            }
        }
        if self.num_inference_steps == Some(0) {
            return bad(
                "num_inference_steps",
                "0".into(),
                "must be at least 1".into(),
            );
        }
        if let Some(steps) = self.num_inference_steps
            && steps > 1000
        {
            return bad(
                "num_inference_steps",
                steps.to_string(),
                "must be at most 1000 (the training schedule's length)".into(),
            );
        }
        if let Some(g) = self.guidance_scale
            && (!g.is_finite() || g < 0.0)
        {
            return bad(
                "guidance_scale",
                g.to_string(),
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
        if self.mask.is_some() && self.init_image.is_none() {
            return bad(
                "mask",
                "(given)".into(),
                "inpainting needs an init_image of the mask's size".into(),
            );
        }
        if let Some(f) = self.upscale
            && !(1..=8).contains(&f)
        {
            return bad("upscale", f.to_string(), "must be 1..=8".into());
        }
        if let Some(f) = self.upscale
            && (self.width.saturating_mul(f) > 8192 || self.height.saturating_mul(f) > 8192)
        {
            return bad(
                "upscale",
                f.to_string(),
                format!(
                    "{}x{} upscaled {f}x is over 8192 pixels a side",
                    self.width, self.height
                ),
            );
        }
        for (field, value) in [
            ("original_size", self.original_size),
            ("crops_coords_top_left", Some(self.crops_coords_top_left)),
            ("target_size", self.target_size),
            ("negative_original_size", self.negative_original_size),
            (
                "negative_crops_coords_top_left",
                Some(self.negative_crops_coords_top_left),
            ),
            ("negative_target_size", self.negative_target_size),
        ] {
            if let Some((a, b)) = value
                && (a > MAX_MICRO_CONDITIONING || b > MAX_MICRO_CONDITIONING)
            {
                return bad(
                    field,
                    format!("({a}, {b})"),
                    format!("each number must be at most {MAX_MICRO_CONDITIONING} pixels"),
                );
            }
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

    /// The steps this request runs on a model without a recommendation
    /// (`num_inference_steps`, else [`DEFAULT_STEPS`]).
    pub fn steps(&self) -> usize {
        self.num_inference_steps.unwrap_or(DEFAULT_STEPS)
    }

    /// The guidance weight on a model without a recommendation (`guidance_scale`, else
    /// [`DEFAULT_GUIDANCE_SCALE`]).
    pub fn guidance(&self) -> f64 {
        self.guidance_scale.unwrap_or(DEFAULT_GUIDANCE_SCALE)
    }

    /// The request with every unset field the model folder recommends filled in (steps,
    /// guidance, scheduler, and the size when it is 0), then the crate defaults for steps and
    /// guidance: what [`crate::pipeline::generate`] runs.
    pub fn with_recommended(&self, recommended: &RecommendedSettings) -> Self {
        let mut r = self.clone();
        r.num_inference_steps = Some(
            r.num_inference_steps
                .or(recommended.num_inference_steps)
                .unwrap_or(DEFAULT_STEPS),
        );
        r.guidance_scale = Some(
            r.guidance_scale
                .or(recommended.guidance_scale)
                .unwrap_or(DEFAULT_GUIDANCE_SCALE),
        );
        r.scheduler = r.scheduler.or(recommended.scheduler);
        if r.width == 0 && r.init_image.is_none() {
            r.width = recommended.width.unwrap_or(0);
        }
        if r.height == 0 && r.init_image.is_none() {
            r.height = recommended.height.unwrap_or(0);
        }
        r
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

    /// A seamless texture request for `prompt` that also asks for PBR maps (`pbr: true`): with
    /// the `pbr` feature, `bevy_plugin::DiffusionMaterials::submit` turns it into a
    /// `Handle<StandardMaterial>`; `texgen bake` writes the maps beside the PNG.
    pub fn material(prompt: impl Into<String>) -> Self {
        Self {
            pbr: true,
            ..Self::texture(prompt)
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

#[cfg(test)]
mod tests;
