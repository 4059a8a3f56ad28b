//! diffusers' `UNet2DConditionModel` (`models/unets/unet_2d_condition.py`), the noise
//! predictor of SD 1.x, SD 2.x and SD-Turbo, with its `unet/config.json`.
//!
//! Every architectural number comes from the config; keys whose feature we do not implement
//! are refused by name when set to a non-default value (see [`UNet2DConditionConfig::from_file`]).

use std::path::{Path, PathBuf};

use crate::kernels::{GroupNormKernel, elementwise};
use candle_core::{Module, Result, Tensor};
/// Re-exported: the weight source of [`UNet2DConditionModel::new`] and the other models.
pub use candle_nn::VarBuilder;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::embeddings::{TextTimeEmbedding, TimestepEmbedding, Timesteps};
use super::unet_2d_blocks::{
    CrossAttnConfig, DownBlock, DownBlockConfig, MidBlockConfig, UNetMidBlock2DCrossAttn, UpBlock,
    UpBlockConfig,
};
use crate::error::DiffusionError;
use crate::tiling::{TiledConv2d, Tiling};

/// A parsed `config.json` that names the file and the field in every error (shared by the
/// model configs of this crate).
#[derive(Debug, Clone)]
pub(crate) struct JsonConfig {
    /// The file, named in every error.
    pub path: PathBuf,
    map: serde_json::Map<String, Value>,
}

impl JsonConfig {
    /// Reads and parses `path` (a JSON object). Missing file: `Io`; bad JSON: `InvalidConfig`.
    pub fn read(path: &Path) -> crate::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| DiffusionError::io(path, e))?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| DiffusionError::config(path, "(file)", format!("not valid JSON: {e}")))?;
        match value {
            Value::Object(map) => Ok(Self {
                path: path.to_path_buf(),
                map,
            }),
            other => Err(DiffusionError::config(
                path,
                "(file)",
                format!("expected a JSON object, found {other}"),
            )),
        }
    }

    /// The raw value of `key` (`None` when absent or `null`).
    pub fn raw(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn parse<T: DeserializeOwned>(&self, key: &str, value: &Value) -> crate::Result<T> {
        serde_json::from_value(value.clone()).map_err(|e| {
            DiffusionError::config(
                &self.path,
                key,
                format!("cannot use {value}: {e} ({})", std::any::type_name::<T>()),
            )
        })
    }

    /// `key` parsed as `T`, or `default` when absent or `null`.
    pub fn get_or<T: DeserializeOwned>(&self, key: &str, default: T) -> crate::Result<T> {
        Ok(self.opt(key)?.unwrap_or(default))
    }

    /// `key` parsed as `T`; `None` when absent or `null`.
    pub fn opt<T: DeserializeOwned>(&self, key: &str) -> crate::Result<Option<T>> {
        self.raw(key).map(|v| self.parse(key, v)).transpose()
    }

    /// An `UnsupportedConfig` error naming `key` and its value.
    pub fn unsupported(&self, key: &str, value: &Value) -> DiffusionError {
        DiffusionError::UnsupportedConfig {
            path: self.path.clone(),
            field: key.to_string(),
            value: value.to_string(),
        }
    }

    /// Refuses `key` unless it is absent or `is_default(value)` holds (`null` counts as absent
    /// when `null_ok`).
    pub fn refuse_unless(
        &self,
        key: &str,
        null_ok: bool,
        is_default: impl Fn(&Value) -> bool,
    ) -> crate::Result<()> {
        match self.map.get(key) {
            None => Ok(()),
            Some(Value::Null) if null_ok => Ok(()),
            Some(v) if is_default(v) => Ok(()),
            Some(v) => Err(self.unsupported(key, v)),
        }
    }

    /// [`Self::per_block`] for a count (`layers_per_block`, `transformer_layers_per_block`): an
    /// int or a per-block list, each entry at most [`MAX_LAYERS_PER_BLOCK`], checked before
    /// anything is built from it.
    pub fn per_block_count(
        &self,
        key: &str,
        n: usize,
        default: usize,
    ) -> crate::Result<Vec<usize>> {
        let counts: Vec<usize> = self.per_block(key, n, default)?;
        if let Some(c) = counts.iter().find(|&&c| c > MAX_LAYERS_PER_BLOCK) {
            let reason =
                format!("{c} layers in one block is out of range (0..={MAX_LAYERS_PER_BLOCK})");
            return Err(DiffusionError::config(&self.path, key, reason));
        }
        Ok(counts)
    }

    /// `key` as one value per block: a scalar is repeated `n` times, a list must have `n` entries.
    pub fn per_block<T: DeserializeOwned + Clone>(
        &self,
        key: &str,
        n: usize,
        default: T,
    ) -> crate::Result<Vec<T>> {
        match self.raw(key) {
            None => Ok(vec![default; n]),
            Some(Value::Array(items)) => {
                if items.len() != n {
                    return Err(DiffusionError::config(
                        &self.path,
                        key,
                        format!("has {} entries but there are {n} down blocks", items.len()),
                    ));
                }
                items.iter().map(|v| self.parse(key, v)).collect()
            }
            Some(v) => Ok(vec![self.parse(key, v)?; n]),
        }
    }
}

/// Most resnets / transformer layers one block may have (SDXL's deepest block has 10).
pub const MAX_LAYERS_PER_BLOCK: usize = 64;
/// Most resolution levels (`block_out_channels` entries) a UNet config may list (SD has 4).
pub const MAX_LEVELS: usize = 8;
/// Most channels one level may have (SD's widest is 1280).
pub const MAX_CHANNELS: usize = 16384;

/// A down block of the UNet (`down_block_types`; a `UNetRes` prefix is accepted as diffusers
/// strips it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownBlockType {
    /// `CrossAttnDownBlock2D`: resnets interleaved with transformers.
    CrossAttnDownBlock2D,
    /// `DownBlock2D`: resnets only.
    DownBlock2D,
}

/// An up block of the UNet (`up_block_types`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpBlockType {
    /// `CrossAttnUpBlock2D`: resnets interleaved with transformers.
    CrossAttnUpBlock2D,
    /// `UpBlock2D`: resnets only.
    UpBlock2D,
}

/// `unet/config.json` of a `UNet2DConditionModel`, resolved to per-block lists.
///
/// diffusers quirk: `attention_head_dim` is the NUMBER of heads of every transformer (head width
/// = channels / heads); `num_attention_heads`, when set, takes precedence. Both may be an int or
/// one entry per down block; up blocks use the reversed list and the mid block the last entry.
#[derive(Debug, Clone)]
pub struct UNet2DConditionConfig {
    /// Latent channels in (4 for SD).
    pub in_channels: usize,
    /// Channels predicted (4 for SD).
    pub out_channels: usize,
    /// Width of the text embeddings (768 SD 1.x, 1024 SD 2.x). A per-block list is accepted
    /// when all entries agree.
    pub cross_attention_dim: usize,
    /// Native latent size (`sample_size`; 64 for SD 1.5 = 512 px). 64 when the config has none.
    pub sample_size: usize,
    /// `center_input_sample`: the input is mapped `x -> 2x - 1` first.
    pub center_input_sample: bool,
    /// Timestep embedding is `cat(cos, sin)` instead of `cat(sin, cos)` (true for SD).
    pub flip_sin_to_cos: bool,
    /// `freq_shift`: the timestep embedding's `downscale_freq_shift` (0 for SD).
    pub freq_shift: f64,
    /// One per entry of `block_out_channels`.
    pub down_block_types: Vec<DownBlockType>,
    /// One per entry of `block_out_channels`, deepest first.
    pub up_block_types: Vec<UpBlockType>,
    /// `mid_block_type` is `UNetMidBlock2DCrossAttn` (true) or `null` (false: no mid block).
    pub has_mid_block: bool,
    /// Per down block (up blocks use it reversed).
    pub only_cross_attention: Vec<bool>,
    /// Channels of each resolution level ([320, 640, 1280, 1280] in SD); one downsampler
    /// between consecutive levels.
    pub block_out_channels: Vec<usize>,
    /// Per down block (up blocks have one more resnet each, reversed).
    pub layers_per_block: Vec<usize>,
    /// Padding of the stride-2 downsampler convs (1 in SD).
    pub downsample_padding: usize,
    /// Output scale of the mid block's resnets (1 in SD).
    pub mid_block_scale_factor: f64,
    /// Groups of every GroupNorm (resnets, transformers, `conv_norm_out`).
    pub norm_num_groups: usize,
    /// Eps of the resnets' GroupNorms and of `conv_norm_out` (the transformers' own norms use
    /// diffusers' fixed 1e-6 / 1e-5).
    pub norm_eps: f64,
    /// Per down block.
    pub transformer_layers_per_block: Vec<usize>,
    /// Heads per down block, resolved from `num_attention_heads` or `attention_head_dim`.
    pub num_attention_heads: Vec<usize>,
    /// Transformers' `proj_in`/`proj_out` are `Linear` (SD 2.x) instead of 1x1 convs (SD 1.x).
    pub use_linear_projection: bool,
    /// Accepted; attention is always computed in f32.
    pub upcast_attention: bool,
    /// Kernel of `conv_in` (3; padding `(k - 1) / 2`).
    pub conv_in_kernel: usize,
    /// Kernel of `conv_out` (3; padding `(k - 1) / 2`).
    pub conv_out_kernel: usize,
    /// Width of the timestep embedding (`time_embedding_dim`, default `4 * block_out_channels[0]`).
    pub time_embed_dim: usize,
    /// `addition_embed_type: "text_time"` (SDXL); `None` when the key is absent or null.
    pub addition_embed: Option<TextTimeConfig>,
    /// `num_class_embeds` with `class_embed_type` null: an `nn.Embedding(num_class_embeds,
    /// time_embed_dim)` whose row `class_labels[b]` is added to the time embedding (the x4
    /// upscaler's noise level). `None` for text-to-image UNets.
    pub num_class_embeds: Option<usize>,
}

/// The sizes of SDXL's added conditioning (`addition_embed_type: "text_time"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextTimeConfig {
    /// Width of the sinusoidal embedding of each time id (`addition_time_embed_dim`, 256 in SDXL).
    pub addition_time_embed_dim: usize,
    /// Input width of `add_embedding` (`projection_class_embeddings_input_dim`, 2816 in SDXL =
    /// 6 time ids x 256 + text_encoder_2's `projection_dim` 1280).
    pub projection_class_embeddings_input_dim: usize,
}

impl TextTimeConfig {
    /// `addition_embed_type` and its two sizes: `None` when absent/null, `text_time` with both
    /// sizes positive, else `UnsupportedConfig` (`text`, `text_image`, `image`, `image_hint`) or
    /// `InvalidConfig` naming the missing size.
    fn from_json(j: &JsonConfig) -> crate::Result<Option<Self>> {
        match j.raw("addition_embed_type") {
            None => Ok(None),
            Some(Value::String(s)) if s == "text_time" => {
                let size = |key: &str| -> crate::Result<usize> {
                    match j.opt::<usize>(key)? {
                        Some(n) if (1..=1 << 16).contains(&n) => Ok(n),
                        other => Err(DiffusionError::config(
                            &j.path,
                            key,
                            format!(
                                "is {other:?}; addition_embed_type \"text_time\" needs a positive \
                                 size (at most 65536)"
                            ),
                        )),
                    }
                };
                Ok(Some(Self {
                    addition_time_embed_dim: size("addition_time_embed_dim")?,
                    projection_class_embeddings_input_dim: size(
                        "projection_class_embeddings_input_dim",
                    )?,
                }))
            }
            Some(v) => Err(j.unsupported("addition_embed_type", v)),
        }
    }
}

/// Keys whose only supported value is `null` (or absence).
const MUST_BE_NULL: &[&str] = &[
    "time_cond_proj_dim",
    "class_embed_type",
    "encoder_hid_dim_type",
    "encoder_hid_dim",
    "timestep_post_act",
    "time_embedding_act_fn",
    "cross_attention_norm",
    "reverse_transformer_layers_per_block",
];

impl UNet2DConditionConfig {
    /// Parses and validates `unet/config.json`.
    ///
    /// Errors: a missing/unreadable file is `DiffusionError::Io`; bad JSON, a wrongly typed or
    /// inconsistent field is `InvalidConfig`; a feature we do not implement set to a non-default
    /// value is `UnsupportedConfig` naming the field and value: `addition_embed_type` other than
    /// `text_time` (SDXL's, see [`TextTimeConfig`]), `time_cond_proj_dim`, `class_embed_type`
    /// (`num_class_embeds` alone is the upscaler's class embedding, bounded 1..=100000),
    /// `encoder_hid_dim(_type)`,
    /// `timestep_post_act`, `time_embedding_act_fn`, `cross_attention_norm`,
    /// `reverse_transformer_layers_per_block`, `time_embedding_type` != positional,
    /// `attention_type` != default, `dual_cross_attention`, `class_embeddings_concat`,
    /// `resnet_skip_time_act`, `resnet_out_scale_factor` != 1, `resnet_time_scale_shift` !=
    /// default, `act_fn` other than silu/swish, `norm_num_groups` null, unknown block types,
    /// `mid_block_type` other than `UNetMidBlock2DCrossAttn`/null. Keys that do not change the
    /// math (`_class_name`, `dropout`, ...) are ignored.
    pub fn from_file(path: &Path) -> crate::Result<Self> {
        Self::from_json(&JsonConfig::read(path)?)
    }

    pub(crate) fn from_json(j: &JsonConfig) -> crate::Result<Self> {
        let path = &j.path;
        for key in MUST_BE_NULL {
            j.refuse_unless(key, true, |_| false)?;
        }
        let is_str = |s: &'static str| move |v: &Value| v.as_str() == Some(s);
        let is_false = |v: &Value| v.as_bool() == Some(false);
        j.refuse_unless("time_embedding_type", true, is_str("positional"))?;
        j.refuse_unless("attention_type", true, is_str("default"))?;
        j.refuse_unless("resnet_time_scale_shift", true, is_str("default"))?;
        j.refuse_unless("act_fn", false, |v| {
            matches!(v.as_str(), Some("silu" | "swish"))
        })?;
        j.refuse_unless("dual_cross_attention", true, is_false)?;
        j.refuse_unless("class_embeddings_concat", true, is_false)?;
        j.refuse_unless("resnet_skip_time_act", true, is_false)?;
        j.refuse_unless("resnet_out_scale_factor", true, |v| v.as_f64() == Some(1.0))?;
        j.refuse_unless("mid_block_type", true, is_str("UNetMidBlock2DCrossAttn"))?;
        let has_mid_block =
            j.raw("mid_block_type").is_some() || !j.map.contains_key("mid_block_type");
        if j.map.get("norm_num_groups") == Some(&Value::Null) {
            return Err(j.unsupported("norm_num_groups", &Value::Null));
        }

        let block_out_channels: Vec<usize> =
            j.get_or("block_out_channels", vec![320, 640, 1280, 1280])?;
        let n = block_out_channels.len();
        if n == 0 {
            return Err(DiffusionError::config(
                path,
                "block_out_channels",
                "must not be empty",
            ));
        }
        let down_names: Vec<String> = j.get_or(
            "down_block_types",
            [
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "DownBlock2D",
            ]
            .map(String::from)
            .to_vec(),
        )?;
        let up_names: Vec<String> = j.get_or(
            "up_block_types",
            [
                "UpBlock2D",
                "CrossAttnUpBlock2D",
                "CrossAttnUpBlock2D",
                "CrossAttnUpBlock2D",
            ]
            .map(String::from)
            .to_vec(),
        )?;
        let strip = |s: &str| s.strip_prefix("UNetRes").unwrap_or(s).to_string();
        let down_block_types = down_names
            .iter()
            .map(|s| match strip(s).as_str() {
                "CrossAttnDownBlock2D" => Ok(DownBlockType::CrossAttnDownBlock2D),
                "DownBlock2D" => Ok(DownBlockType::DownBlock2D),
                _ => Err(j.unsupported("down_block_types", &Value::String(s.clone()))),
            })
            .collect::<crate::Result<Vec<_>>>()?;
        let up_block_types = up_names
            .iter()
            .map(|s| match strip(s).as_str() {
                "CrossAttnUpBlock2D" => Ok(UpBlockType::CrossAttnUpBlock2D),
                "UpBlock2D" => Ok(UpBlockType::UpBlock2D),
                _ => Err(j.unsupported("up_block_types", &Value::String(s.clone()))),
            })
            .collect::<crate::Result<Vec<_>>>()?;
        for (key, len) in [
            ("down_block_types", down_block_types.len()),
            ("up_block_types", up_block_types.len()),
        ] {
            if len != n {
                let reason = format!("has {len} entries but block_out_channels has {n}");
                return Err(DiffusionError::config(path, key, reason));
            }
        }

        let norm_num_groups: usize = j.get_or("norm_num_groups", 32)?;
        if norm_num_groups == 0 {
            return Err(DiffusionError::config(
                path,
                "norm_num_groups",
                "must be positive",
            ));
        }
        if n > MAX_LEVELS {
            let reason = format!("{n} levels is out of range (1..={MAX_LEVELS})");
            return Err(DiffusionError::config(path, "block_out_channels", reason));
        }
        if let Some(c) = block_out_channels.iter().find(|&&c| c > MAX_CHANNELS) {
            let reason = format!("{c} channels is out of range (1..={MAX_CHANNELS})");
            return Err(DiffusionError::config(path, "block_out_channels", reason));
        }
        if let Some(c) = block_out_channels
            .iter()
            .find(|&&c| c == 0 || c % norm_num_groups != 0)
        {
            let reason = format!(
                "channel count {c} is not a positive multiple of norm_num_groups {norm_num_groups}"
            );
            return Err(DiffusionError::config(path, "block_out_channels", reason));
        }

        // `num_attention_heads or attention_head_dim` (diffusers' naming quirk).
        let heads_key = if j.raw("num_attention_heads").is_some() {
            "num_attention_heads"
        } else {
            "attention_head_dim"
        };
        let num_attention_heads: Vec<usize> = j.per_block(heads_key, n, 8)?;
        let uses_attention = |i: usize| {
            down_block_types[i] == DownBlockType::CrossAttnDownBlock2D
                || up_block_types[n - 1 - i] == UpBlockType::CrossAttnUpBlock2D
                || (has_mid_block && i == n - 1)
        };
        for (i, (&heads, &c)) in num_attention_heads
            .iter()
            .zip(&block_out_channels)
            .enumerate()
        {
            if uses_attention(i) && (heads == 0 || c % heads != 0) {
                let reason = format!("{heads} heads do not divide the {c} channels of block {i}");
                return Err(DiffusionError::config(path, heads_key, reason));
            }
        }

        let cross_attention_dims: Vec<usize> = j.per_block("cross_attention_dim", n, 1280)?;
        let cross_attention_dim = cross_attention_dims[0];
        if cross_attention_dims
            .iter()
            .any(|&d| d != cross_attention_dim)
        {
            return Err(j.unsupported(
                "cross_attention_dim",
                j.raw("cross_attention_dim").unwrap_or(&Value::Null),
            ));
        }
        if let Some(Value::Array(items)) = j.raw("transformer_layers_per_block")
            && items.iter().any(Value::is_array)
        {
            return Err(j.unsupported(
                "transformer_layers_per_block",
                j.raw("transformer_layers_per_block").unwrap(),
            ));
        }

        let sample_size = match j.raw("sample_size") {
            None => 64,
            Some(Value::Array(hw)) if hw.len() == 2 && hw[0] == hw[1] => {
                j.parse("sample_size", &hw[0])?
            }
            Some(Value::Array(_)) => {
                return Err(j.unsupported("sample_size", j.raw("sample_size").unwrap()));
            }
            Some(v) => j.parse("sample_size", v)?,
        };
        if !(1..=512).contains(&sample_size) {
            return Err(DiffusionError::config(
                &j.path,
                "sample_size",
                format!("{sample_size} latents is out of range (1..=512)"),
            ));
        }
        let conv_in_kernel: usize = j.get_or("conv_in_kernel", 3)?;
        let conv_out_kernel: usize = j.get_or("conv_out_kernel", 3)?;
        for (key, k) in [
            ("conv_in_kernel", conv_in_kernel),
            ("conv_out_kernel", conv_out_kernel),
        ] {
            if k % 2 == 0 {
                return Err(DiffusionError::config(
                    path,
                    key,
                    format!("kernel {k} must be odd"),
                ));
            }
        }
        let time_embed_dim = j.get_or("time_embedding_dim", 4 * block_out_channels[0])?;
        let num_class_embeds: Option<usize> = j.opt("num_class_embeds")?;
        if let Some(n) = num_class_embeds
            && !(1..=100_000).contains(&n)
        {
            return Err(DiffusionError::config(
                path,
                "num_class_embeds",
                format!("{n} is out of range (1..=100000)"),
            ));
        }

        let cfg = Self {
            in_channels: j.get_or("in_channels", 4)?,
            out_channels: j.get_or("out_channels", 4)?,
            cross_attention_dim,
            sample_size,
            center_input_sample: j.get_or("center_input_sample", false)?,
            flip_sin_to_cos: j.get_or("flip_sin_to_cos", true)?,
            freq_shift: j.get_or("freq_shift", 0.0)?,
            down_block_types,
            up_block_types,
            has_mid_block,
            only_cross_attention: j.per_block("only_cross_attention", n, false)?,
            layers_per_block: j.per_block_count("layers_per_block", n, 2)?,
            downsample_padding: j.get_or("downsample_padding", 1)?,
            mid_block_scale_factor: j.get_or("mid_block_scale_factor", 1.0)?,
            norm_num_groups,
            norm_eps: j.get_or("norm_eps", 1e-5)?,
            transformer_layers_per_block: j.per_block_count(
                "transformer_layers_per_block",
                n,
                1,
            )?,
            num_attention_heads,
            use_linear_projection: j.get_or("use_linear_projection", false)?,
            upcast_attention: j.get_or("upcast_attention", false)?,
            conv_in_kernel,
            conv_out_kernel,
            time_embed_dim,
            addition_embed: TextTimeConfig::from_json(j)?,
            num_class_embeds,
            block_out_channels,
        };
        cfg.check_bounds(path)?;
        Ok(cfg)
    }

    /// Refuses counts that would build an absurd model ([`crate::config_bounds`]).
    fn check_bounds(&self, path: &Path) -> crate::Result<()> {
        use crate::config_bounds::*;
        check_bounds(
            path,
            &[
                ("block_out_channels", self.block_out_channels.len(), 16),
                ("in_channels", self.in_channels, MAX_IMAGE_CHANNELS),
                ("out_channels", self.out_channels, MAX_IMAGE_CHANNELS),
                (
                    "cross_attention_dim",
                    self.cross_attention_dim,
                    MAX_CHANNELS,
                ),
                ("norm_num_groups", self.norm_num_groups, MAX_HEADS),
                ("time_embedding_dim", self.time_embed_dim, MAX_WIDTH),
                ("conv_in_kernel", self.conv_in_kernel, 15),
                ("conv_out_kernel", self.conv_out_kernel, 15),
            ],
        )?;
        check_each(
            path,
            "block_out_channels",
            &self.block_out_channels,
            MAX_CHANNELS,
        )?;
        check_each(
            path,
            "layers_per_block",
            &self.layers_per_block,
            MAX_LAYERS_PER_BLOCK,
        )?;
        check_each(
            path,
            "transformer_layers_per_block",
            &self.transformer_layers_per_block,
            MAX_LAYERS_PER_BLOCK,
        )?;
        check_each(
            path,
            "num_attention_heads",
            &self.num_attention_heads,
            MAX_HEADS,
        )
    }

    /// How many times the UNet halves the latent (`len(block_out_channels) - 1`); latent sides
    /// that are multiples of `2^this` need no upsample-size correction.
    pub fn num_downsamplers(&self) -> usize {
        self.block_out_channels.len() - 1
    }

    fn cross_attn(&self, i: usize, cross: bool) -> Option<CrossAttnConfig> {
        cross.then(|| CrossAttnConfig {
            num_attention_heads: self.num_attention_heads[i],
            transformer_layers: self.transformer_layers_per_block[i],
            cross_attention_dim: self.cross_attention_dim,
            use_linear_projection: self.use_linear_projection,
            only_cross_attention: self.only_cross_attention[i],
        })
    }
}

/// diffusers' `UNet2DConditionModel` (positional timestep embedding, no class/addition
/// embeddings): `time_proj -> time_embedding`, `conv_in`, down blocks (pushing skip
/// connections), mid block, up blocks (consuming them), `conv_norm_out -> SiLU -> conv_out`.
#[derive(Debug, Clone)]
pub struct UNet2DConditionModel {
    config: UNet2DConditionConfig,
    time_proj: Timesteps,
    time_embedding: TimestepEmbedding,
    /// `add_time_proj` + `add_embedding` of a `text_time` UNet (SDXL).
    add_embedding: Option<TextTimeEmbedding>,
    /// `class_embedding` of a UNet with `num_class_embeds` (the x4 upscaler's noise level).
    class_embedding: Option<candle_nn::Embedding>,
    conv_in: TiledConv2d,
    down_blocks: Vec<DownBlock>,
    mid_block: Option<UNetMidBlock2DCrossAttn>,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNormKernel,
    conv_out: TiledConv2d,
}

/// diffusers' `added_cond_kwargs` of a `text_time` UNet (SDXL), rows as the sample's batch.
#[derive(Debug, Clone)]
pub struct AddedCondKwargs {
    /// text_encoder_2's projected pooled prompt embedding `[batch, projection_dim]`.
    pub text_embeds: Tensor,
    /// `[batch, 6]` micro-conditioning `[orig_h, orig_w, crop_top, crop_left, target_h,
    /// target_w]` in pixels (see `pipeline::sdxl::add_time_ids`).
    pub time_ids: Tensor,
}

/// Named intermediate tensors of one UNet call, in computation order, with diffusers' module
/// names: `time_proj`, `time_embedding`, `conv_in`, `down_blocks.{i}/res{j}`,
/// `down_blocks.{i}/hidden`, `mid_block`, `up_blocks.{i}`, `conv_norm_out` (before the SiLU),
/// `conv_out`.
pub type Intermediates = Vec<(String, Tensor)>;

impl UNet2DConditionModel {
    /// Loads from the `unet/` var builder (the root of `diffusion_pytorch_model.safetensors`).
    pub fn new(vb: VarBuilder, cfg: &UNet2DConditionConfig) -> Result<Self> {
        let c = &cfg.block_out_channels;
        let n = c.len();
        let (groups, eps, temb) = (cfg.norm_num_groups, cfg.norm_eps, cfg.time_embed_dim);
        let time_proj = Timesteps {
            num_channels: c[0],
            flip_sin_to_cos: cfg.flip_sin_to_cos,
            downscale_freq_shift: cfg.freq_shift,
        };
        let time_embedding = TimestepEmbedding::new(vb.pp("time_embedding"), c[0], temb)?;
        let add_embedding = match cfg.addition_embed {
            Some(tt) => Some(TextTimeEmbedding {
                add_time_proj: Timesteps {
                    num_channels: tt.addition_time_embed_dim,
                    flip_sin_to_cos: cfg.flip_sin_to_cos,
                    downscale_freq_shift: cfg.freq_shift,
                },
                add_embedding: TimestepEmbedding::new(
                    vb.pp("add_embedding"),
                    tt.projection_class_embeddings_input_dim,
                    temb,
                )?,
            }),
            None => None,
        };
        let class_embedding = match cfg.num_class_embeds {
            Some(n) => Some(candle_nn::embedding(n, temb, vb.pp("class_embedding"))?),
            None => None,
        };
        let k_in = cfg.conv_in_kernel;
        let conv_in = TiledConv2d::new(
            cfg.in_channels,
            c[0],
            k_in,
            1,
            (k_in - 1) / 2,
            vb.pp("conv_in"),
        )?;

        let mut down_blocks = Vec::with_capacity(n);
        for (i, ty) in cfg.down_block_types.iter().enumerate() {
            let dc = DownBlockConfig {
                in_channels: if i == 0 { c[0] } else { c[i - 1] },
                out_channels: c[i],
                temb_channels: temb,
                num_layers: cfg.layers_per_block[i],
                add_downsample: i + 1 < n,
                downsample_padding: cfg.downsample_padding,
                resnet_eps: eps,
                resnet_groups: groups,
                cross_attention: cfg.cross_attn(i, *ty == DownBlockType::CrossAttnDownBlock2D),
            };
            down_blocks.push(DownBlock::new(vb.pp("down_blocks").pp(i), dc)?);
        }

        let mid_block = if cfg.has_mid_block {
            let mc = MidBlockConfig {
                channels: c[n - 1],
                temb_channels: temb,
                resnet_eps: eps,
                resnet_groups: groups,
                output_scale_factor: cfg.mid_block_scale_factor,
                cross_attention: cfg
                    .cross_attn(n - 1, true)
                    .expect("cross attention requested"),
            };
            Some(UNetMidBlock2DCrossAttn::new(vb.pp("mid_block"), mc)?)
        } else {
            None
        };

        let mut up_blocks = Vec::with_capacity(n);
        let mut out = c[n - 1];
        for (i, ty) in cfg.up_block_types.iter().enumerate() {
            let r = n - 1 - i; // the down block this up block mirrors
            let prev = out;
            out = c[r];
            let uc = UpBlockConfig {
                in_channels: c[r.saturating_sub(1)],
                prev_output_channels: prev,
                out_channels: out,
                temb_channels: temb,
                num_layers: cfg.layers_per_block[r] + 1,
                add_upsample: i + 1 < n,
                resnet_eps: eps,
                resnet_groups: groups,
                cross_attention: cfg.cross_attn(r, *ty == UpBlockType::CrossAttnUpBlock2D),
            };
            up_blocks.push(UpBlock::new(vb.pp("up_blocks").pp(i), uc)?);
        }

        let conv_norm_out = GroupNormKernel::new(groups, c[0], eps, vb.pp("conv_norm_out"))?;
        let k_out = cfg.conv_out_kernel;
        let conv_out = TiledConv2d::new(
            c[0],
            cfg.out_channels,
            k_out,
            1,
            (k_out - 1) / 2,
            vb.pp("conv_out"),
        )?;
        Ok(Self {
            config: cfg.clone(),
            time_proj,
            time_embedding,
            add_embedding,
            class_embedding,
            conv_in,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out,
            conv_out,
        })
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &UNet2DConditionConfig {
        &self.config
    }

    /// One denoising prediction (diffusers' `UNet2DConditionModel.forward(...).sample`).
    ///
    /// `sample` `[batch, in_channels, h, w]` (noisy latents, already scaled by the scheduler's
    /// `scale_model_input`), `timestep` in `[0, num_train_timesteps)` shared by the whole batch
    /// (fractional values are kept; cast to f32 like diffusers), `encoder_hidden_states`
    /// `[batch, seq, cross_attention_dim]` (CLIP `last_hidden_state`). Returns
    /// `[batch, out_channels, h, w]`: epsilon or v, per the scheduler's `prediction_type`.
    /// `h` and `w` need not be multiples of `2^num_downsamplers` (upsampling then follows the
    /// skip connections' sizes, as diffusers' `upsample_size`). `tiling` makes every 3x3
    /// convolution circular on the chosen axes (seamless textures).
    pub fn forward(
        &self,
        sample: &Tensor,
        timestep: f64,
        encoder_hidden_states: &Tensor,
        tiling: Tiling,
    ) -> Result<Tensor> {
        self.run(
            sample,
            timestep,
            encoder_hidden_states,
            None,
            None,
            tiling,
            None,
        )
    }

    /// [`Self::forward`] with diffusers' `class_labels` (`[batch]` integer ids, u32/i64), for
    /// UNets with `num_class_embeds` (the x4 upscaler passes its noise level): `emb =
    /// time_embedding(time_proj(t)) + class_embedding.weight[class_labels]`.
    ///
    /// Errors (candle's): labels given to a UNet without a class embedding, or missing for one
    /// with it.
    pub fn forward_with_class_labels(
        &self,
        sample: &Tensor,
        timestep: f64,
        encoder_hidden_states: &Tensor,
        class_labels: Option<&Tensor>,
        tiling: Tiling,
    ) -> Result<Tensor> {
        let (hs, labels) = (encoder_hidden_states, class_labels);
        self.run(sample, timestep, hs, None, labels, tiling, None)
    }

    /// [`Self::forward_with_class_labels`] that also returns the named [`Intermediates`]
    /// (`class_embedding` `[batch, time_embed_dim]` follows `time_embedding` when labels are
    /// given).
    pub fn forward_with_class_labels_traced(
        &self,
        sample: &Tensor,
        timestep: f64,
        encoder_hidden_states: &Tensor,
        class_labels: Option<&Tensor>,
        tiling: Tiling,
    ) -> Result<(Tensor, Intermediates)> {
        let mut rec = Vec::new();
        let (hs, labels) = (encoder_hidden_states, class_labels);
        let out = self.run(sample, timestep, hs, None, labels, tiling, Some(&mut rec))?;
        Ok((out, rec))
    }

    /// [`Self::forward`] with diffusers' `added_cond_kwargs`, which a `text_time` UNet (SDXL)
    /// needs (`text_embeds` `[batch, projection_dim]`, `time_ids` `[batch, 6]`) and other UNets
    /// ignore. Errors (candle's) when a `text_time` UNet gets `None`, as diffusers raises.
    pub fn forward_added(
        &self,
        sample: &Tensor,
        timestep: f64,
        encoder_hidden_states: &Tensor,
        added: Option<&AddedCondKwargs>,
        tiling: Tiling,
    ) -> Result<Tensor> {
        self.run(
            sample,
            timestep,
            encoder_hidden_states,
            added,
            None,
            tiling,
            None,
        )
    }

    /// [`Self::forward_added`] that also returns the named [`Intermediates`] (`add_time_proj`
    /// `[batch * 6, addition_time_embed_dim]` and `add_embedding` `[batch, time_embed_dim]`
    /// follow `time_embedding` for a `text_time` UNet).
    pub fn forward_added_with_intermediates(
        &self,
        sample: &Tensor,
        timestep: f64,
        encoder_hidden_states: &Tensor,
        added: Option<&AddedCondKwargs>,
        tiling: Tiling,
    ) -> Result<(Tensor, Intermediates)> {
        let mut rec = Vec::new();
        let out = self.run(
            sample,
            timestep,
            encoder_hidden_states,
            added,
            None,
            tiling,
            Some(&mut rec),
        )?;
        Ok((out, rec))
    }

    /// [`Self::forward`] that also returns the named [`Intermediates`] (for parity debugging).
    pub fn forward_with_intermediates(
        &self,
        sample: &Tensor,
        timestep: f64,
        encoder_hidden_states: &Tensor,
        tiling: Tiling,
    ) -> Result<(Tensor, Intermediates)> {
        let mut rec = Vec::new();
        let out = self.run(
            sample,
            timestep,
            encoder_hidden_states,
            None,
            None,
            tiling,
            Some(&mut rec),
        )?;
        Ok((out, rec))
    }

    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        sample: &Tensor,
        timestep: f64,
        context: &Tensor,
        added: Option<&AddedCondKwargs>,
        class_labels: Option<&Tensor>,
        tiling: Tiling,
        mut rec: Option<&mut Intermediates>,
    ) -> Result<Tensor> {
        let mut record = |name: String, t: &Tensor| {
            if let Some(rec) = rec.as_deref_mut() {
                rec.push((name, t.clone()));
            }
        };
        let (batch, _, _, _) = sample.dims4()?;
        let sample = if self.config.center_input_sample {
            sample.affine(2.0, -1.0)?
        } else {
            sample.clone()
        };

        // 1. time
        let t_emb = self
            .time_proj
            .forward(timestep, batch, sample.device())?
            .to_dtype(sample.dtype())?;
        record("time_proj".into(), &t_emb);
        let mut emb = self.time_embedding.forward(&t_emb)?;
        record("time_embedding".into(), &emb);
        match (&self.class_embedding, class_labels) {
            (Some(table), Some(labels)) => {
                let class_emb = table.forward(labels)?.to_dtype(emb.dtype())?;
                record("class_embedding".into(), &class_emb);
                emb = (emb + class_emb)?;
            }
            (None, None) => {}
            (Some(_), None) => candle_core::bail!(
                "class_labels should be provided when num_class_embeds > 0 (this UNet embeds a \
                 class label, e.g. the upscaler's noise level)"
            ),
            (None, Some(_)) => {
                candle_core::bail!("class_labels given to a UNet without num_class_embeds")
            }
        }
        if let Some(add) = &self.add_embedding {
            let Some(added) = added else {
                candle_core::bail!(
                    "this UNet has addition_embed_type \"text_time\" and needs added_cond_kwargs \
                     (text_embeds and time_ids)"
                );
            };
            let (proj, aug) = add.forward(&added.text_embeds, &added.time_ids)?;
            record("add_time_proj".into(), &proj);
            record("add_embedding".into(), &aug);
            emb = (emb + aug)?;
        }

        // 2. pre-process
        let mut h = self.conv_in.forward(&sample, tiling)?;
        record("conv_in".into(), &h);

        // 3. down
        let mut skips = vec![h.clone()];
        for (i, block) in self.down_blocks.iter().enumerate() {
            crate::cancel::checkpoint()?;
            let (out, res) = block.forward(&h, &emb, context, tiling)?;
            for (j, r) in res.iter().enumerate() {
                record(format!("down_blocks.{i}/res{j}"), r);
            }
            record(format!("down_blocks.{i}/hidden"), &out);
            skips.extend(res);
            h = out;
        }

        // 4. mid
        if let Some(mid) = &self.mid_block {
            crate::cancel::checkpoint()?;
            h = mid.forward(&h, &emb, context, tiling)?;
            record("mid_block".into(), &h);
        }

        // 5. up
        for (i, block) in self.up_blocks.iter().enumerate() {
            crate::cancel::checkpoint()?;
            let k = block.num_skips();
            if skips.len() < k {
                candle_core::bail!(
                    "up_blocks.{i} needs {k} skip connections, {} left",
                    skips.len()
                );
            }
            let res = skips.split_off(skips.len() - k);
            let upsample_size = match skips.last() {
                Some(next) => {
                    let (_, _, sh, sw) = next.dims4()?;
                    Some((sh, sw))
                }
                None => None,
            };
            h = block.forward(&h, &res, &emb, context, upsample_size, tiling)?;
            record(format!("up_blocks.{i}"), &h);
        }

        // 6. post-process
        let h = self.conv_norm_out.forward(&h)?;
        record("conv_norm_out".into(), &h);
        let out = self.conv_out.forward(&elementwise::silu(&h)?, tiling)?;
        record("conv_out".into(), &out);
        Ok(out)
    }
}
