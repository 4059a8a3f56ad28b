//! `AutoencoderTiny` (TAESD, madebyollin/taesd), mirroring diffusers
//! `models/autoencoders/autoencoder_tiny.py` and its halves `EncoderTiny` / `DecoderTiny` /
//! `AutoencoderTinyBlock` in `models/autoencoders/vae.py` and `models/unets/unet_2d_blocks.py`.
//!
//! A ~1.2 M-parameter VAE without GroupNorm, attention or a Gaussian posterior: 3x3 convolutions
//! and ReLUs only, so it decodes a 512x512 image many times faster than `AutoencoderKL`. SDXS-512
//! ships it as the pipeline's `vae`; it also serves as a fast drop-in decoder for any SD 1.x/2.x
//! model (it was distilled against SD's VAE latent space).
//!
//! Latent convention: the encoder's output is **already in the UNet's latent space** (it matches
//! `AutoencoderKL` mean x 0.18215), so `scaling_factor` is 1.0 and a pipeline's
//! `latents / scaling_factor` leaves the latents unchanged. `latent_magnitude` / `latent_shift`
//! are only TAESD's uint8 storage convention ([`AutoencoderTiny::scale_latents`]); no pipeline
//! applies them.
//!
//! Weight names are `nn.Sequential` indices: `encoder.layers.N.*`, `decoder.layers.N.*`, a block's
//! convs `layers.N.conv.{0,2,4}.*`. Every 3x3 convolution takes a [`Tiling`] (circular on the
//! tiled axes, for seamless textures). The networks are in [`super::vae_tiny`].

use std::path::Path;

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use serde_json::Value;

pub use super::vae_tiny::Intermediates;
use super::vae_tiny::{DecoderTiny, EncoderTiny};
use crate::configuration_utils::JsonConfig;
use crate::error::DiffusionError;
use crate::tiling::Tiling;

/// Upper bounds on the counts of a config, checked before anything is allocated.
const MAX_LEVELS: usize = 8;
const MAX_BLOCKS_PER_LEVEL: usize = 64;
const MAX_CHANNELS: usize = 4096;
const MAX_IMAGE_CHANNELS: usize = 16;
const MAX_LATENT_CHANNELS: usize = 64;

/// The activation of `act_fn` (diffusers' `get_activation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TinyActivation {
    /// `relu` (TAESD).
    Relu,
    /// `silu` / `swish`.
    Silu,
}

impl TinyActivation {
    pub(crate) fn apply(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Relu => x.relu(),
            Self::Silu => x.silu(),
        }
    }
}

/// `vae/config.json` of an `AutoencoderTiny` (diffusers' `__init__` arguments), validated.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoencoderTinyConfig {
    /// Image channels the encoder takes (3).
    pub in_channels: usize,
    /// Image channels the decoder produces (3).
    pub out_channels: usize,
    /// Latent channels (4 for SD 1.x/2.x).
    pub latent_channels: usize,
    /// Channels of each encoder level (all equal: diffusers' `EncoderTiny` only runs then).
    pub encoder_block_out_channels: Vec<usize>,
    /// Channels of each decoder level (all equal, as for the encoder).
    pub decoder_block_out_channels: Vec<usize>,
    /// `AutoencoderTinyBlock`s per encoder level ([1, 3, 3, 3]).
    pub num_encoder_blocks: Vec<usize>,
    /// `AutoencoderTinyBlock`s per decoder level ([3, 3, 3, 1]).
    pub num_decoder_blocks: Vec<usize>,
    /// `act_fn`.
    pub act_fn: TinyActivation,
    /// `latent_magnitude` (3): only [`AutoencoderTiny::scale_latents`] uses it.
    pub latent_magnitude: f64,
    /// `latent_shift` (0.5): only [`AutoencoderTiny::scale_latents`] uses it.
    pub latent_shift: f64,
    /// The pipeline decodes `latents / scaling_factor` (1.0 for TAESD).
    pub scaling_factor: f64,
    /// `shift_factor` (0.0); `StableDiffusionPipeline` does not use it.
    pub shift_factor: f64,
    /// Pixels per latent along each axis: `2^(len(decoder_block_out_channels) - 1)` (8), as
    /// diffusers' `vae_scale_factor` computes it from the registered `block_out_channels`.
    pub downscale_factor: usize,
    /// `force_upcast` (false: TAESD is safe in f16).
    pub force_upcast: bool,
}

impl AutoencoderTinyConfig {
    /// Parses and validates an `AutoencoderTiny` `config.json` at `path`.
    ///
    /// Errors: [`DiffusionError::Io`] if the file cannot be read; [`DiffusionError::InvalidConfig`]
    /// for bad JSON, a wrongly typed field, a count out of range (more than 8 levels, 64 blocks
    /// per level, 4096 channels) or inconsistent lists; [`DiffusionError::UnsupportedConfig`] for
    /// a `_class_name` other than `AutoencoderTiny`, `act_fn` other than relu/silu,
    /// `upsample_fn` other than nearest, `upsampling_scaling_factor` other than 2.
    pub fn from_file(path: &Path) -> crate::Result<Self> {
        Self::from_json(&JsonConfig::read(path)?)
    }

    pub(crate) fn from_json(j: &JsonConfig) -> crate::Result<Self> {
        let path = &j.path;
        let invalid = |field: &str, reason: String| DiffusionError::config(path, field, reason);
        j.refuse_unless("_class_name", true, |v| {
            v.as_str() == Some("AutoencoderTiny")
        })?;
        let act_fn = match j.get_or("act_fn", "relu".to_string())?.as_str() {
            "relu" => TinyActivation::Relu,
            "silu" | "swish" => TinyActivation::Silu,
            _ => return Err(j.unsupported("act_fn", j.raw("act_fn").unwrap_or(&Value::Null))),
        };
        j.refuse_unless("upsample_fn", true, |v| v.as_str() == Some("nearest"))?;
        j.refuse_unless("upsampling_scaling_factor", true, |v| {
            v.as_f64() == Some(2.0)
        })?;

        let list = |key: &str, default: [usize; 4]| -> crate::Result<Vec<usize>> {
            let v: Vec<usize> = j.get_or(key, default.to_vec())?;
            if v.is_empty() || v.len() > MAX_LEVELS {
                return Err(invalid(
                    key,
                    format!("has {} entries; expected 1 to {MAX_LEVELS}", v.len()),
                ));
            }
            Ok(v)
        };
        let encoder_block_out_channels = list("encoder_block_out_channels", [64; 4])?;
        let decoder_block_out_channels = list("decoder_block_out_channels", [64; 4])?;
        let num_encoder_blocks = list("num_encoder_blocks", [1, 3, 3, 3])?;
        let num_decoder_blocks = list("num_decoder_blocks", [3, 3, 3, 1])?;
        for (channels_key, channels, blocks_key, blocks) in [
            (
                "encoder_block_out_channels",
                &encoder_block_out_channels,
                "num_encoder_blocks",
                &num_encoder_blocks,
            ),
            (
                "decoder_block_out_channels",
                &decoder_block_out_channels,
                "num_decoder_blocks",
                &num_decoder_blocks,
            ),
        ] {
            if channels.len() != blocks.len() {
                return Err(invalid(
                    blocks_key,
                    format!(
                        "has {} entries but {channels_key} has {}",
                        blocks.len(),
                        channels.len()
                    ),
                ));
            }
            if let Some(&c) = channels.iter().find(|&&c| c == 0 || c > MAX_CHANNELS) {
                return Err(invalid(
                    channels_key,
                    format!("{c} channels is out of range (1..={MAX_CHANNELS})"),
                ));
            }
            // diffusers builds every layer of level i with block_out_channels[i] in and out, so
            // its forward pass only runs when all levels have the same width.
            if channels.iter().any(|&c| c != channels[0]) {
                return Err(invalid(
                    channels_key,
                    format!(
                        "{channels:?}: diffusers' AutoencoderTiny only runs when all entries are equal"
                    ),
                ));
            }
            if let Some(&b) = blocks.iter().find(|&&b| b > MAX_BLOCKS_PER_LEVEL) {
                return Err(invalid(
                    blocks_key,
                    format!("{b} blocks in one level is out of range (0..={MAX_BLOCKS_PER_LEVEL})"),
                ));
            }
        }
        if num_encoder_blocks.len() != num_decoder_blocks.len() {
            return Err(invalid(
                "num_encoder_blocks",
                format!(
                    "has {} levels but num_decoder_blocks has {}: the encoder's downsampling must \
                     match the decoder's upsampling",
                    num_encoder_blocks.len(),
                    num_decoder_blocks.len()
                ),
            ));
        }
        if let Some(registered) = j.opt::<Vec<usize>>("block_out_channels")?
            && registered.len() != decoder_block_out_channels.len()
        {
            return Err(invalid(
                "block_out_channels",
                format!(
                    "has {} entries but decoder_block_out_channels has {}",
                    registered.len(),
                    decoder_block_out_channels.len()
                ),
            ));
        }

        let bounded = |key: &str, default: usize, max: usize| -> crate::Result<usize> {
            let v: usize = j.get_or(key, default)?;
            if v == 0 || v > max {
                return Err(invalid(key, format!("{v} is out of range (1..={max})")));
            }
            Ok(v)
        };
        let finite = |key: &str, default: f64| -> crate::Result<f64> {
            let v: f64 = j.get_or(key, default)?;
            if !v.is_finite() {
                return Err(invalid(key, format!("{v} is not a finite number")));
            }
            Ok(v)
        };
        let scaling_factor = finite("scaling_factor", 1.0)?;
        if scaling_factor <= 0.0 {
            return Err(invalid(
                "scaling_factor",
                format!("{scaling_factor} is not a positive number"),
            ));
        }
        let latent_magnitude = finite("latent_magnitude", 3.0)?;
        if latent_magnitude <= 0.0 {
            return Err(invalid(
                "latent_magnitude",
                format!("{latent_magnitude} is not a positive number"),
            ));
        }
        Ok(Self {
            in_channels: bounded("in_channels", 3, MAX_IMAGE_CHANNELS)?,
            out_channels: bounded("out_channels", 3, MAX_IMAGE_CHANNELS)?,
            latent_channels: bounded("latent_channels", 4, MAX_LATENT_CHANNELS)?,
            downscale_factor: 1 << (decoder_block_out_channels.len() - 1),
            encoder_block_out_channels,
            decoder_block_out_channels,
            num_encoder_blocks,
            num_decoder_blocks,
            act_fn,
            latent_magnitude,
            latent_shift: finite("latent_shift", 0.5)?,
            scaling_factor,
            shift_factor: finite("shift_factor", 0.0)?,
            force_upcast: j.get_or("force_upcast", false)?,
        })
    }
}

/// diffusers `AutoencoderTiny` (TAESD), without its sliced / tiled inference modes.
///
/// Weights: `encoder.layers.*`, `decoder.layers.*` of `diffusion_pytorch_model.safetensors`.
/// Built decoder-only ([`AutoencoderTiny::new_decoder_only`]) when it only replaces another VAE's
/// decoder.
#[derive(Debug, Clone)]
pub struct AutoencoderTiny {
    encoder: Option<EncoderTiny>,
    decoder: DecoderTiny,
    config: AutoencoderTinyConfig,
}

impl AutoencoderTiny {
    /// Loads encoder and decoder from the `vae/` var builder (no prefix).
    ///
    /// Errors: a missing tensor or one whose shape disagrees with `cfg` (candle's error names it).
    pub fn new(vb: VarBuilder, cfg: &AutoencoderTinyConfig) -> Result<Self> {
        Ok(Self {
            encoder: Some(EncoderTiny::new(vb.pp("encoder"), cfg)?),
            decoder: DecoderTiny::new(vb.pp("decoder"), cfg)?,
            config: cfg.clone(),
        })
    }

    /// Loads only the decoder (`decoder.layers.*`); [`AutoencoderTiny::encode`] then errors.
    pub fn new_decoder_only(vb: VarBuilder, cfg: &AutoencoderTinyConfig) -> Result<Self> {
        Ok(Self {
            encoder: None,
            decoder: DecoderTiny::new(vb.pp("decoder"), cfg)?,
            config: cfg.clone(),
        })
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &AutoencoderTinyConfig {
        &self.config
    }

    /// True when the encoder was loaded.
    pub fn has_encoder(&self) -> bool {
        self.encoder.is_some()
    }

    /// diffusers `AutoencoderTiny.encode(x).latents`: `x` `[batch, in_channels, H, W]`, pixels in
    /// [-1, 1] -> latents `[batch, latent_channels, H/f, W/f]`, deterministic (nothing is
    /// sampled), raw and unclamped; multiply by `scaling_factor` (1.0) for the UNet as diffusers'
    /// img2img does. The encoder runs with ordinary zero padding.
    ///
    /// Errors: no encoder loaded, `x` not 4-D or with a channel count other than `in_channels`.
    pub fn encode(&self, x: &Tensor) -> Result<Tensor> {
        self.encode_traced(x, Tiling::None, None)
    }

    /// [`AutoencoderTiny::encode`] with the encoder's convolutions circular on the axes `tiling`
    /// wraps (tiling-aware inpainting).
    pub fn encode_tiled(&self, x: &Tensor, tiling: Tiling) -> Result<Tensor> {
        self.encode_traced(x, tiling, None)
    }

    /// [`AutoencoderTiny::encode`], also returning `encoder.layers.N` by Sequential index.
    pub fn encode_with_intermediates(&self, x: &Tensor) -> Result<(Tensor, Intermediates)> {
        let mut trace = Intermediates::new();
        let out = self.encode_traced(x, Tiling::None, Some(&mut trace))?;
        Ok((out, trace))
    }

    fn encode_traced(
        &self,
        x: &Tensor,
        tiling: Tiling,
        trace: Option<&mut Intermediates>,
    ) -> Result<Tensor> {
        let Some(encoder) = &self.encoder else {
            candle_core::bail!("AutoencoderTiny: loaded as a decoder only, it cannot encode");
        };
        let (_, c, _, _) = x.dims4()?;
        if c != self.config.in_channels {
            candle_core::bail!(
                "AutoencoderTiny encode: expected {} input channels, got shape {:?}",
                self.config.in_channels,
                x.dims()
            );
        }
        encoder.forward_traced(x, tiling, trace)
    }

    /// diffusers `AutoencoderTiny.decode(z).sample`: `z` `[batch, latent_channels, h, w]`, already
    /// divided by `scaling_factor` -> pixels `[batch, out_channels, h*f, w*f]` in [-1, 1],
    /// unclamped (`image = clamp(out / 2 + 0.5, 0, 1)`).
    ///
    /// Every 3x3 convolution pads circularly on the axes `tiling` wraps; [`Tiling::None`]
    /// reproduces diffusers exactly.
    ///
    /// Errors: `z` not 4-D or with a channel count other than `latent_channels`.
    pub fn decode(&self, z: &Tensor, tiling: Tiling) -> Result<Tensor> {
        self.decode_traced(z, tiling, None)
    }

    /// [`AutoencoderTiny::decode`], also returning `decoder.z_soft_clamped`,
    /// `decoder.layers.N` and `decoder.layers` (the Sequential output, [0, 1] convention).
    pub fn decode_with_intermediates(
        &self,
        z: &Tensor,
        tiling: Tiling,
    ) -> Result<(Tensor, Intermediates)> {
        let mut trace = Intermediates::new();
        let out = self.decode_traced(z, tiling, Some(&mut trace))?;
        Ok((out, trace))
    }

    fn decode_traced(
        &self,
        z: &Tensor,
        tiling: Tiling,
        trace: Option<&mut Intermediates>,
    ) -> Result<Tensor> {
        let (_, c, _, _) = z.dims4()?;
        if c != self.config.latent_channels {
            candle_core::bail!(
                "AutoencoderTiny decode: expected {} latent channels, got shape {:?}",
                self.config.latent_channels,
                z.dims()
            );
        }
        self.decoder.forward_traced(z, tiling, trace)
    }

    /// diffusers `scale_latents`: `clamp(x / (2 * latent_magnitude) + latent_shift, 0, 1)`, TAESD's
    /// convention for storing latents as uint8 images (no pipeline uses it). Same shape as `x`.
    pub fn scale_latents(&self, x: &Tensor) -> Result<Tensor> {
        let m = self.config.latent_magnitude;
        x.affine(1.0 / (2.0 * m), self.config.latent_shift)?
            .clamp(0f32, 1f32)
    }

    /// diffusers `unscale_latents`: `(x - latent_shift) * 2 * latent_magnitude`, the inverse of
    /// [`AutoencoderTiny::scale_latents`] on unclamped values.
    pub fn unscale_latents(&self, x: &Tensor) -> Result<Tensor> {
        let m = self.config.latent_magnitude;
        x.affine(2.0 * m, -self.config.latent_shift * 2.0 * m)
    }
}
