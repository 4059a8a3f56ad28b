//! `vae/config.json` for [`super::AutoencoderKL`] (diffusers `AutoencoderKL.__init__` arguments).

use std::path::Path;

use crate::configuration_utils::JsonConfig;
use crate::error::DiffusionError;

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

        if let Some(class) = config.field::<Option<String>>("_class_name", Some(None))?
            && class != "AutoencoderKL"
        {
            return Err(config.unsupported("_class_name", &map["_class_name"]));
        }
        for key in ["shift_factor", "latents_mean", "latents_std"] {
            if let Some(v) = map.get(key)
                && !v.is_null()
            {
                return Err(config.unsupported(key, v));
            }
        }
        let act_fn: String = config.field("act_fn", Some("silu".into()))?;
        // diffusers' get_activation maps both names to nn.SiLU.
        if act_fn != "silu" && act_fn != "swish" {
            return Err(config.unsupported("act_fn", &map["act_fn"]));
        }

        let block_out_channels: Vec<usize> = config.field("block_out_channels", Some(vec![64]))?;
        if block_out_channels.is_empty() {
            return Err(config.invalid("block_out_channels", "must list at least one block"));
        }
        if block_out_channels.len() > 16 {
            return Err(config.invalid("block_out_channels", "more than 16 blocks"));
        }
        let n = block_out_channels.len();
        for (key, expected) in [
            ("down_block_types", DOWN_BLOCK),
            ("up_block_types", UP_BLOCK),
        ] {
            let types: Vec<String> = config.field(key, Some(vec![expected.to_owned()]))?;
            if let Some(other) = types.iter().find(|t| t.as_str() != expected) {
                return Err(DiffusionError::UnsupportedConfig {
                    path: path.to_owned(),
                    field: key.into(),
                    value: format!("{other:?} (only {expected:?} is implemented)"),
                });
            }
            if types.len() != n {
                return Err(config.invalid(
                    key,
                    format!("has {} entries but block_out_channels has {n}", types.len()),
                ));
            }
        }

        let cfg = Self {
            in_channels: config.field("in_channels", Some(3))?,
            out_channels: config.field("out_channels", Some(3))?,
            latent_channels: config.field("latent_channels", Some(4))?,
            scaling_factor: config.field("scaling_factor", Some(0.18215))?,
            downscale_factor: 1 << (n - 1),
            layers_per_block: config.field("layers_per_block", Some(1))?,
            norm_num_groups: config.field("norm_num_groups", Some(32))?,
            use_quant_conv: config.field("use_quant_conv", Some(true))?,
            use_post_quant_conv: config.field("use_post_quant_conv", Some(true))?,
            mid_block_add_attention: config.field("mid_block_add_attention", Some(true))?,
            force_upcast: config.field("force_upcast", Some(true))?,
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
                return Err(config.invalid(key, "must be at least 1"));
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
            return Err(config.invalid(
                "block_out_channels",
                format!(
                    "{c} is not a positive multiple of norm_num_groups = {}",
                    cfg.norm_num_groups
                ),
            ));
        }
        if !(cfg.scaling_factor.is_finite() && cfg.scaling_factor > 0.0) {
            return Err(config.invalid(
                "scaling_factor",
                format!("{} is not a positive number", cfg.scaling_factor),
            ));
        }
        Ok(cfg)
    }
}
