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
mod from_config;
pub use config::*;

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
