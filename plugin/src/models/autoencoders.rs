//! The pipeline's `vae`: an [`AutoencoderKL`] (SD 1.x/2.x) or an [`AutoencoderTiny`] (TAESD, as
//! SDXS ships), chosen by `vae/config.json` `_class_name` the way diffusers' `from_pretrained`
//! picks the class (diffusers `models/autoencoders/__init__.py` exports both).
//!
//! [`VaeConfig`] keeps the numbers a pipeline needs from either class as plain fields
//! (`downscale_factor`, `scaling_factor`, channels), so pipeline code reads them without caring
//! which class it has; the class-specific config is in [`VaeConfig::class`].

use std::path::Path;

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::autoencoder_kl::{AutoencoderKL, AutoencoderKLConfig};
use super::autoencoder_tiny::{AutoencoderTiny, AutoencoderTinyConfig};
use crate::error::DiffusionError;
use crate::tiling::Tiling;

/// The class-specific part of a [`VaeConfig`].
#[derive(Debug, Clone, PartialEq)]
pub enum VaeClass {
    /// `AutoencoderKL` (also a config without `_class_name`, as diffusers' default).
    Kl(AutoencoderKLConfig),
    /// `AutoencoderTiny` (TAESD).
    Tiny(AutoencoderTinyConfig),
}

/// `vae/config.json` of either VAE class, with the fields every pipeline reads.
#[derive(Debug, Clone, PartialEq)]
pub struct VaeConfig {
    /// Image channels the encoder takes (3 for RGB).
    pub in_channels: usize,
    /// Image channels the decoder produces.
    pub out_channels: usize,
    /// Latent channels (4 for SD 1.x/2.x).
    pub latent_channels: usize,
    /// The UNet sees `scaling_factor * z` (0.18215 for SD's `AutoencoderKL`, 1.0 for TAESD).
    pub scaling_factor: f64,
    /// Pixels per latent along each axis (diffusers' `vae_scale_factor`, 8 for SD).
    pub downscale_factor: usize,
    /// diffusers runs this VAE in f32 in an f16 pipeline when true.
    pub force_upcast: bool,
    /// The class and its full config.
    pub class: VaeClass,
}

impl VaeConfig {
    /// Parses `vae/config.json` at `path`, dispatching on `_class_name`: `AutoencoderTiny` ->
    /// [`AutoencoderTinyConfig::from_file`], anything else -> [`AutoencoderKLConfig::from_file`]
    /// (which refuses classes other than `AutoencoderKL` by name).
    ///
    /// Errors: [`DiffusionError::MissingFile`] when the file is absent, else those of the class's
    /// `from_file`.
    pub fn from_file(path: &Path) -> crate::Result<Self> {
        if !crate::loading::model_files::is_file(path) {
            return Err(DiffusionError::MissingFile {
                path: path.to_owned(),
                what: "the VAE config (vae/config.json)".into(),
            });
        }
        if class_name(path)?.as_deref() == Some("AutoencoderTiny") {
            Ok(AutoencoderTinyConfig::from_file(path)?.into())
        } else {
            Ok(AutoencoderKLConfig::from_file(path)?.into())
        }
    }

    /// `"AutoencoderKL"` or `"AutoencoderTiny"`.
    pub fn class_name(&self) -> &'static str {
        match self.class {
            VaeClass::Kl(_) => "AutoencoderKL",
            VaeClass::Tiny(_) => "AutoencoderTiny",
        }
    }
}

/// `_class_name` of the JSON object in `path` (`None` when absent or not a string).
///
/// Errors: [`DiffusionError::Io`] when unreadable, [`DiffusionError::InvalidConfig`] for bad JSON.
pub fn class_name(path: &Path) -> crate::Result<Option<String>> {
    let j = crate::configuration_utils::JsonConfig::read(path)?;
    Ok(j.raw("_class_name")
        .and_then(|v| v.as_str())
        .map(str::to_string))
}

impl From<AutoencoderKLConfig> for VaeConfig {
    fn from(c: AutoencoderKLConfig) -> Self {
        Self {
            in_channels: c.in_channels,
            out_channels: c.out_channels,
            latent_channels: c.latent_channels,
            scaling_factor: c.scaling_factor,
            downscale_factor: c.downscale_factor,
            force_upcast: c.force_upcast,
            class: VaeClass::Kl(c),
        }
    }
}

impl From<AutoencoderTinyConfig> for VaeConfig {
    fn from(c: AutoencoderTinyConfig) -> Self {
        Self {
            in_channels: c.in_channels,
            out_channels: c.out_channels,
            latent_channels: c.latent_channels,
            scaling_factor: c.scaling_factor,
            downscale_factor: c.downscale_factor,
            force_upcast: c.force_upcast,
            class: VaeClass::Tiny(c),
        }
    }
}

/// A loaded VAE of either class.
#[derive(Debug, Clone)]
pub enum Vae {
    /// SD's `AutoencoderKL`.
    Kl(Box<AutoencoderKL>),
    /// TAESD.
    Tiny(Box<AutoencoderTiny>),
}

impl Vae {
    /// Builds the class `cfg` names from the `vae/` var builder (no prefix).
    ///
    /// Errors: a missing tensor or one of another shape (candle's error names it).
    pub fn new(vb: VarBuilder, cfg: &VaeConfig) -> Result<Self> {
        Ok(match &cfg.class {
            VaeClass::Kl(c) => Self::Kl(Box::new(AutoencoderKL::new(vb, c)?)),
            VaeClass::Tiny(c) => Self::Tiny(Box::new(AutoencoderTiny::new(vb, c)?)),
        })
    }

    /// `vae.decode(z).sample`: `z` `[batch, latent_channels, h, w]`, already divided by
    /// `scaling_factor` -> pixels `[batch, out_channels, h*f, w*f]`, roughly [-1, 1], unclamped;
    /// circular convolutions on the axes `tiling` wraps.
    pub fn decode(&self, z: &Tensor, tiling: Tiling) -> Result<Tensor> {
        match self {
            Self::Kl(v) => v.decode(z, tiling),
            Self::Tiny(v) => v.decode(z, tiling),
        }
    }
}
