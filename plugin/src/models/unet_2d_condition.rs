//! diffusers' `UNet2DConditionModel` (`models/unets/unet_2d_condition.py`), the noise
//! predictor of SD 1.x, SD 2.x and SD-Turbo, with its `unet/config.json`.
//!
//! Every architectural number comes from the config; keys whose feature we do not implement
//! are refused by name when set to a non-default value (see [`UNet2DConditionConfig::from_file`]).

use std::path::Path;

use crate::kernels::{GroupNormKernel, elementwise};
use candle_core::{Module, Result, Tensor};
/// Re-exported: the weight source of [`UNet2DConditionModel::new`] and the other models.
pub use candle_nn::VarBuilder;
use serde_json::Value;

use super::embeddings::{TextTimeEmbedding, TimestepEmbedding, Timesteps};
use super::unet_2d_blocks::{
    CrossAttnConfig, DownBlock, DownBlockConfig, MidBlockConfig, UNetMidBlock2DCrossAttn, UpBlock,
    UpBlockConfig,
};
use crate::configuration_utils::JsonConfig;
use crate::error::DiffusionError;
use crate::tiling::{TiledConv2d, Tiling};

mod config;
mod forward;
mod from_config;
pub use config::*;

/// Whether a UNet weight is kept in bf16 under a bf16 request: the transformer blocks' linear
/// layers ([`crate::models::transformer_2d::is_bf16_linear`]); and, when
/// [`crate::precision::bf16_convolutions`] (`BEVY_DIFFUSION_BF16_CONV=1`, opt-in), the
/// convolution weights (`[cout, cin, kh, kw]` with an even `cin * kh * kw`, the bf16 kernel's
/// pairs) other than `conv_in`, `conv_out` and the 1x1 `proj_in` / `proj_out` of SD 1.x (run as
/// linear layers on NCHW, whose fused f32 path they would leave). Biases, norms and the time
/// embedding stay f32.
pub fn is_bf16_weight(name: &str, shape: &[usize]) -> bool {
    crate::models::transformer_2d::is_bf16_linear(name, shape)
        || (crate::precision::bf16_convolutions()
            && name.ends_with(".weight")
            && !name.starts_with("conv_in.")
            && !name.starts_with("conv_out.")
            && !name.contains(".proj_in.")
            && !name.contains(".proj_out.")
            && matches!(shape, [_, c, kh, kw] if (c * kh * kw).is_multiple_of(2)))
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
}
