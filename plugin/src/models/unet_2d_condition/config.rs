//! `UNet2DConditionConfig`, the arguments of diffusers' `UNet2DConditionModel.__init__`
//! (`unet/config.json`), resolved to per-block lists; parsing is in [`super::from_config`].

use super::*;

/// Most resnets / transformer layers one block may have (SDXL's deepest block has 10).
pub use crate::config_bounds::MAX_LAYERS_PER_BLOCK;
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
    /// Accepted; the scores and softmax are always f32 (under `--dtype bf16` the two products'
    /// operands are rounded to bf16, accumulated in f32: `kernels::attention::attention_heads_bf16`).
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
    pub(super) fn from_json(j: &JsonConfig) -> crate::Result<Option<Self>> {
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
pub(super) const MUST_BE_NULL: &[&str] = &[
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

    /// Refuses counts that would build an absurd model (`config_bounds.rs`).
    pub(super) fn check_bounds(&self, path: &Path) -> crate::Result<()> {
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

    pub(super) fn cross_attn(&self, i: usize, cross: bool) -> Option<CrossAttnConfig> {
        cross.then(|| CrossAttnConfig {
            num_attention_heads: self.num_attention_heads[i],
            transformer_layers: self.transformer_layers_per_block[i],
            cross_attention_dim: self.cross_attention_dim,
            use_linear_projection: self.use_linear_projection,
            only_cross_attention: self.only_cross_attention[i],
        })
    }
}
