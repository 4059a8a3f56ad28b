//! `AutoencoderKL`, mirroring diffusers `models/autoencoders/autoencoder_kl.py`: the VAE that maps
//! pixels in [-1, 1] to a diagonal-Gaussian posterior over latents (`encode`) and latents back to
//! pixels (`decode`). The networks themselves are in [`super::vae`].
//!
//! Latent convention (as in diffusers' pipelines): the UNet works on `scaling_factor * z`;
//! [`AutoencoderKL::decode`] takes `z` already divided by `scaling_factor`, and
//! [`AutoencoderKL::encode`] returns the unscaled posterior (multiply a sample by
//! `scaling_factor` before handing it to the UNet).

use std::path::{Path, PathBuf};

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2d, VarBuilder};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::vae::{Decoder, Encoder, Intermediates};
use crate::configuration_utils::JsonConfig;
use crate::error::DiffusionError;
use crate::tiling::Tiling;

/// The block types [`AutoencoderKL`] implements (diffusers' `down_block_types`/`up_block_types`).
const DOWN_BLOCK: &str = "DownEncoderBlock2D";
const UP_BLOCK: &str = "UpDecoderBlock2D";

/// `vae/config.json` (diffusers `AutoencoderKL.__init__` arguments), parsed and validated.
///
/// Missing keys take diffusers' defaults. Keys of features we do not implement are refused
/// rather than ignored: `shift_factor`, `latents_mean`, `latents_std` other than `null` (SD3 /
/// Flux VAEs), block types other than `DownEncoderBlock2D` / `UpDecoderBlock2D`, `act_fn` other
/// than `silu`, and a `_class_name` other than `AutoencoderKL`.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoencoderKLConfig {
    /// Image channels the encoder takes (3 for RGB; 4 for an RGBA VAE).
    pub in_channels: usize,
    /// Image channels the decoder produces.
    pub out_channels: usize,
    /// Channels of the latent (4 for SD 1.x/2.x).
    pub latent_channels: usize,
    /// The UNet sees `scaling_factor * z` (0.18215 for SD 1.x/2.x).
    pub scaling_factor: f64,
    /// Pixels per latent along each axis: `2^(len(block_out_channels) - 1)` (8 for SD).
    pub downscale_factor: usize,
    /// Output channels of each encoder block (the decoder walks them in reverse).
    pub block_out_channels: Vec<usize>,
    /// Resnets per encoder block (the decoder uses one more per block).
    pub layers_per_block: usize,
    /// Groups of every GroupNorm.
    pub norm_num_groups: usize,
    /// Whether the 1x1 `quant_conv` follows the encoder.
    pub use_quant_conv: bool,
    /// Whether the 1x1 `post_quant_conv` precedes the decoder.
    pub use_post_quant_conv: bool,
    /// Whether the mid blocks have their self-attention.
    pub mid_block_add_attention: bool,
    /// diffusers runs this VAE in f32 even in an f16 pipeline when true (SD 1.x's VAE overflows
    /// in f16).
    pub force_upcast: bool,
}

impl AutoencoderKLConfig {
    /// Parses and validates `vae/config.json` at `path`.
    ///
    /// Errors: [`DiffusionError::MissingFile`] if the file does not exist, [`DiffusionError::Io`]
    /// if it cannot be read, [`DiffusionError::InvalidConfig`] for malformed JSON or a field of the
    /// wrong type or an inconsistent value (naming the field), and
    /// [`DiffusionError::UnsupportedConfig`] for a feature we do not implement (naming the field
    /// and its value).
    pub fn from_file(path: &Path) -> crate::Result<Self> {
        let config = JsonConfig::read_required(path, "the VAE config (vae/config.json)")?;
        Self::from_config(&config)
    }

    /// Parses and validates the text of a `vae/config.json`; `path` is only used in errors.
    /// Errors as [`AutoencoderKLConfig::from_file`].
    pub fn from_json_str(text: &str, path: &Path) -> crate::Result<Self> {
        Self::from_config(&JsonConfig::parse_str(text, path)?)
    }

    /// Validates an already read `vae/config.json`. Errors as [`AutoencoderKLConfig::from_file`].
    pub fn from_config(config: &JsonConfig) -> crate::Result<Self> {
        let map = config.map();
        let path = config.path.as_path();
        let fields = Fields { map, path };

        if let Some(class) = fields.get::<Option<String>>("_class_name", Some(None))?
            && class != "AutoencoderKL"
        {
            return Err(fields.unsupported("_class_name", &map["_class_name"]));
        }
        for key in ["shift_factor", "latents_mean", "latents_std"] {
            if let Some(v) = map.get(key)
                && !v.is_null()
            {
                return Err(fields.unsupported(key, v));
            }
        }
        let act_fn: String = fields.get("act_fn", Some("silu".into()))?;
        // diffusers' get_activation maps both names to nn.SiLU.
        if act_fn != "silu" && act_fn != "swish" {
            return Err(fields.unsupported("act_fn", &map["act_fn"]));
        }

        let block_out_channels: Vec<usize> = fields.get("block_out_channels", Some(vec![64]))?;
        if block_out_channels.is_empty() {
            return Err(fields.invalid("block_out_channels", "must list at least one block"));
        }
        if block_out_channels.len() > 16 {
            return Err(fields.invalid("block_out_channels", "more than 16 blocks"));
        }
        let n = block_out_channels.len();
        for (key, expected) in [
            ("down_block_types", DOWN_BLOCK),
            ("up_block_types", UP_BLOCK),
        ] {
            let types: Vec<String> = fields.get(key, Some(vec![expected.to_owned()]))?;
            if let Some(other) = types.iter().find(|t| t.as_str() != expected) {
                return Err(DiffusionError::UnsupportedConfig {
                    path: path.to_owned(),
                    field: key.into(),
                    value: format!("{other:?} (only {expected:?} is implemented)"),
                });
            }
            if types.len() != n {
                return Err(fields.invalid(
                    key,
                    format!("has {} entries but block_out_channels has {n}", types.len()),
                ));
            }
        }

        let cfg = Self {
            in_channels: fields.get("in_channels", Some(3))?,
            out_channels: fields.get("out_channels", Some(3))?,
            latent_channels: fields.get("latent_channels", Some(4))?,
            scaling_factor: fields.get("scaling_factor", Some(0.18215))?,
            downscale_factor: 1 << (n - 1),
            layers_per_block: fields.get("layers_per_block", Some(1))?,
            norm_num_groups: fields.get("norm_num_groups", Some(32))?,
            use_quant_conv: fields.get("use_quant_conv", Some(true))?,
            use_post_quant_conv: fields.get("use_post_quant_conv", Some(true))?,
            mid_block_add_attention: fields.get("mid_block_add_attention", Some(true))?,
            force_upcast: fields.get("force_upcast", Some(true))?,
            block_out_channels,
        };

        for (key, v) in [
            ("in_channels", cfg.in_channels),
            ("out_channels", cfg.out_channels),
            ("latent_channels", cfg.latent_channels),
            ("layers_per_block", cfg.layers_per_block),
            ("norm_num_groups", cfg.norm_num_groups),
        ] {
            if v == 0 {
                return Err(fields.invalid(key, "must be at least 1"));
            }
        }
        {
            use crate::config_bounds::*;
            check_bounds(
                path,
                &[
                    ("in_channels", cfg.in_channels, MAX_IMAGE_CHANNELS),
                    ("out_channels", cfg.out_channels, MAX_IMAGE_CHANNELS),
                    ("latent_channels", cfg.latent_channels, MAX_IMAGE_CHANNELS),
                    (
                        "layers_per_block",
                        cfg.layers_per_block,
                        MAX_LAYERS_PER_BLOCK,
                    ),
                    ("norm_num_groups", cfg.norm_num_groups, MAX_HEADS),
                ],
            )?;
            check_each(
                path,
                "block_out_channels",
                &cfg.block_out_channels,
                MAX_CHANNELS,
            )?;
        }
        if let Some(&c) = cfg
            .block_out_channels
            .iter()
            .find(|&&c| c == 0 || !c.is_multiple_of(cfg.norm_num_groups))
        {
            return Err(fields.invalid(
                "block_out_channels",
                format!(
                    "{c} is not a positive multiple of norm_num_groups = {}",
                    cfg.norm_num_groups
                ),
            ));
        }
        if !(cfg.scaling_factor.is_finite() && cfg.scaling_factor > 0.0) {
            return Err(fields.invalid(
                "scaling_factor",
                format!("{} is not a positive number", cfg.scaling_factor),
            ));
        }
        Ok(cfg)
    }
}

/// Typed access to the fields of a config object, with errors that name the file and field.
struct Fields<'a> {
    map: &'a Map<String, Value>,
    path: &'a Path,
}

impl Fields<'_> {
    /// The field `key` as `T`; `default` when absent (an error when absent without default).
    fn get<T: DeserializeOwned>(&self, key: &str, default: Option<T>) -> crate::Result<T> {
        match (self.map.get(key), default) {
            (Some(v), _) => {
                T::deserialize(v).map_err(|e| self.invalid(key, format!("{e} (found {v})")))
            }
            (None, Some(d)) => Ok(d),
            (None, None) => Err(self.invalid(key, "missing")),
        }
    }

    fn invalid(&self, key: &str, reason: impl Into<String>) -> DiffusionError {
        DiffusionError::config(self.path, key, reason)
    }

    fn unsupported(&self, key: &str, value: &Value) -> DiffusionError {
        DiffusionError::UnsupportedConfig {
            path: PathBuf::from(self.path),
            field: key.into(),
            value: value.to_string(),
        }
    }
}

/// The posterior `N(mean, std^2)` the encoder predicts (diffusers `DiagonalGaussianDistribution`
/// built from the `quant_conv` output). Each tensor is `[batch, latent_channels, H/f, W/f]`.
#[derive(Debug, Clone)]
pub struct DiagonalGaussian {
    /// The first `latent_channels` channels of the moments (`latent_dist.mean` / `.mode()`).
    pub mean: Tensor,
    /// The last `latent_channels` channels of the moments, clamped to [-30, 20] as diffusers does.
    pub logvar: Tensor,
    /// `exp(0.5 * logvar)`.
    pub std: Tensor,
}

impl DiagonalGaussian {
    /// Splits `moments` `[batch, 2 * latent_channels, h, w]` into mean and log-variance along
    /// channels (diffusers `torch.chunk(parameters, 2, dim=1)`), clamps the log-variance to
    /// [-30, 20] and computes `std = exp(0.5 * logvar)`.
    pub fn from_moments(moments: &Tensor) -> Result<Self> {
        let c2 = moments.dim(1)?;
        if !c2.is_multiple_of(2) {
            candle_core::bail!(
                "moments must have an even number of channels, got shape {:?}",
                moments.dims()
            );
        }
        let c = c2 / 2;
        let mean = moments.narrow(1, 0, c)?.contiguous()?;
        let logvar = moments.narrow(1, c, c)?.clamp(-30f32, 20f32)?;
        let std = (&logvar * 0.5)?.exp()?;
        Ok(Self { mean, logvar, std })
    }

    /// `mean + std * eps` (diffusers' `latent_dist.sample()` with the draw `eps` given),
    /// `eps` ~ N(0, 1) of the same shape as `mean`.
    pub fn sample(&self, eps: &Tensor) -> Result<Tensor> {
        self.mean.add(&self.std.mul(eps)?)
    }
}

/// diffusers `AutoencoderKL` (without its sliced / overlapping-tile inference modes).
///
/// Weights: `encoder.*`, `decoder.*`, `quant_conv.*`, `post_quant_conv.*` of
/// `vae/diffusion_pytorch_model.safetensors`.
#[derive(Debug, Clone)]
pub struct AutoencoderKL {
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    config: AutoencoderKLConfig,
}

impl AutoencoderKL {
    /// Loads the VAE from the `vae/` var builder (no prefix: `encoder.conv_in.weight`, ...).
    ///
    /// Errors: a missing tensor or one whose shape disagrees with `cfg` (candle's error names the
    /// tensor).
    pub fn new(vb: VarBuilder, cfg: &AutoencoderKLConfig) -> Result<Self> {
        let encoder = Encoder::new(vb.pp("encoder"), cfg)?;
        let decoder = Decoder::new(vb.pp("decoder"), cfg)?;
        let (l, conv) = (cfg.latent_channels, Default::default());
        let quant_conv = if cfg.use_quant_conv {
            Some(candle_nn::conv2d(
                2 * l,
                2 * l,
                1,
                conv,
                vb.pp("quant_conv"),
            )?)
        } else {
            None
        };
        let post_quant_conv = if cfg.use_post_quant_conv {
            Some(candle_nn::conv2d(l, l, 1, conv, vb.pp("post_quant_conv"))?)
        } else {
            None
        };
        Ok(Self {
            encoder,
            decoder,
            quant_conv,
            post_quant_conv,
            config: cfg.clone(),
        })
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &AutoencoderKLConfig {
        &self.config
    }

    /// diffusers `AutoencoderKL.encode(x).latent_dist`: `x` `[batch, in_channels, H, W]`, pixels
    /// in [-1, 1] -> the posterior over latents `[batch, latent_channels, H/f, W/f]`
    /// (`f = downscale_factor`; unscaled: multiply a sample by `scaling_factor` for the UNet).
    /// The encoder runs with ordinary zero padding (no tiling).
    ///
    /// Errors: `x` not 4-D or with a channel count other than `in_channels`.
    pub fn encode(&self, x: &Tensor) -> Result<DiagonalGaussian> {
        self.encode_traced(x, Tiling::None, None)
    }

    /// [`AutoencoderKL::encode`] with the encoder's convolutions circular on the axes `tiling`
    /// wraps (a seamless image keeps periodic latents; used by tiling-aware inpainting).
    pub fn encode_tiled(&self, x: &Tensor, tiling: Tiling) -> Result<DiagonalGaussian> {
        self.encode_traced(x, tiling, None)
    }

    /// [`AutoencoderKL::encode`], also returning intermediate activations by diffusers module
    /// path: `encoder.conv_in`, `encoder.down_blocks.{i}`, `encoder.mid_block`,
    /// `encoder.conv_norm_out` (pre-SiLU), `encoder.conv_out`, `quant_conv` (= the moments).
    pub fn encode_with_intermediates(
        &self,
        x: &Tensor,
    ) -> Result<(DiagonalGaussian, Intermediates)> {
        let mut trace = Intermediates::new();
        let dist = self.encode_traced(x, Tiling::None, Some(&mut trace))?;
        Ok((dist, trace))
    }

    fn encode_traced(
        &self,
        x: &Tensor,
        tiling: Tiling,
        mut trace: Option<&mut Intermediates>,
    ) -> Result<DiagonalGaussian> {
        let (_, c, _, _) = x.dims4()?;
        if c != self.config.in_channels {
            candle_core::bail!(
                "VAE encode: expected {} input channels, got shape {:?}",
                self.config.in_channels,
                x.dims()
            );
        }
        let h = self
            .encoder
            .forward_traced(x, tiling, trace.as_deref_mut())?;
        let moments = match &self.quant_conv {
            Some(conv) => {
                let m = conv.forward(&h)?;
                if let Some(trace) = &mut trace {
                    trace.insert("quant_conv".into(), m.clone());
                }
                m
            }
            None => h,
        };
        DiagonalGaussian::from_moments(&moments)
    }

    /// diffusers `AutoencoderKL.decode(z).sample`: `z` `[batch, latent_channels, h, w]`, already
    /// divided by `scaling_factor` -> pixels `[batch, out_channels, h*f, w*f]`
    /// (`f = downscale_factor`), roughly [-1, 1] and not clamped.
    ///
    /// Every 3x3 convolution of the decoder pads circularly on the axes `tiling` wraps, so the
    /// image tiles seamlessly along them when the latent does; [`Tiling::None`] reproduces
    /// diffusers exactly.
    ///
    /// Errors: `z` not 4-D or with a channel count other than `latent_channels`.
    pub fn decode(&self, z: &Tensor, tiling: Tiling) -> Result<Tensor> {
        self.decode_traced(z, tiling, None)
    }

    /// [`AutoencoderKL::decode`], also returning intermediate activations by diffusers module
    /// path: `post_quant_conv`, `decoder.conv_in`, `decoder.mid_block`, `decoder.up_blocks.{i}`,
    /// `decoder.conv_norm_out` (pre-SiLU), `decoder.conv_out` (= the output).
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
        mut trace: Option<&mut Intermediates>,
    ) -> Result<Tensor> {
        let (_, c, _, _) = z.dims4()?;
        if c != self.config.latent_channels {
            candle_core::bail!(
                "VAE decode: expected {} latent channels, got shape {:?}",
                self.config.latent_channels,
                z.dims()
            );
        }
        let z = match &self.post_quant_conv {
            Some(conv) => {
                let z = conv.forward(z)?;
                if let Some(trace) = &mut trace {
                    trace.insert("post_quant_conv".into(), z.clone());
                }
                z
            }
            None => z.clone(),
        };
        self.decoder.forward_traced(&z, tiling, trace)
    }
}
