//! The UNet's down, mid and up blocks, mirroring diffusers `models/unets/unet_2d_blocks.py`:
//! `CrossAttnDownBlock2D` / `DownBlock2D` ([`DownBlock`]), `UNetMidBlock2DCrossAttn`
//! ([`UNetMidBlock2DCrossAttn`]) and `CrossAttnUpBlock2D` / `UpBlock2D` ([`UpBlock`]).
//!
//! A cross-attention block is the plain block with one [`Transformer2DModel`] after each resnet,
//! so each pair shares one type whose `attentions` may be empty. Every 3x3 convolution takes the
//! per-call [`Tiling`].

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::resnet::{Downsample2D, ResnetBlock2D, ResnetBlock2DConfig, Upsample2D};
use super::transformer_2d::{Transformer2DModel, Transformer2DModelConfig};
use crate::tiling::Tiling;

/// The cross-attention part of a block (absent in `DownBlock2D` / `UpBlock2D`).
#[derive(Debug, Clone, Copy)]
pub struct CrossAttnConfig {
    /// Heads of every attention in the block (diffusers' `num_attention_heads`; the head width
    /// is `out_channels / num_attention_heads`).
    pub num_attention_heads: usize,
    /// `BasicTransformerBlock`s per `Transformer2DModel` (`transformer_layers_per_block`).
    pub transformer_layers: usize,
    /// Width of the text context.
    pub cross_attention_dim: usize,
    /// `proj_in`/`proj_out` are `Linear` instead of 1x1 convolutions.
    pub use_linear_projection: bool,
    /// `attn1` attends to the context.
    pub only_cross_attention: bool,
}

impl CrossAttnConfig {
    fn transformer(&self, channels: usize, groups: usize) -> Transformer2DModelConfig {
        Transformer2DModelConfig {
            num_attention_heads: self.num_attention_heads,
            attention_head_dim: channels / self.num_attention_heads,
            in_channels: channels,
            num_layers: self.transformer_layers,
            cross_attention_dim: self.cross_attention_dim,
            norm_num_groups: groups,
            use_linear_projection: self.use_linear_projection,
            only_cross_attention: self.only_cross_attention,
        }
    }
}

fn resnet_config(
    cin: usize,
    cout: usize,
    temb: usize,
    groups: usize,
    eps: f64,
    scale: f64,
) -> ResnetBlock2DConfig {
    ResnetBlock2DConfig {
        in_channels: cin,
        out_channels: cout,
        temb_channels: Some(temb),
        groups,
        eps,
        output_scale_factor: scale,
    }
}

/// Configuration of a [`DownBlock`].
#[derive(Debug, Clone, Copy)]
pub struct DownBlockConfig {
    /// Channels of the input (the previous block's output).
    pub in_channels: usize,
    /// Channels of every resnet output.
    pub out_channels: usize,
    /// Width of the timestep embedding.
    pub temb_channels: usize,
    /// Resnets (and attentions) in the block (`layers_per_block`).
    pub num_layers: usize,
    /// A stride-2 `downsamplers.0` follows (every block but the last).
    pub add_downsample: bool,
    /// `downsample_padding` (1 in SD; 0 means diffusers' asymmetric right/bottom pad).
    pub downsample_padding: usize,
    /// `norm_eps` of the UNet config.
    pub resnet_eps: f64,
    /// `norm_num_groups` of the UNet config (resnets and the transformers' GroupNorm).
    pub resnet_groups: usize,
    /// `Some` for `CrossAttnDownBlock2D`, `None` for `DownBlock2D`.
    pub cross_attention: Option<CrossAttnConfig>,
}

/// diffusers' `CrossAttnDownBlock2D` (with `attentions`) or `DownBlock2D` (without):
/// `num_layers` x (`resnets.i`, then `attentions.i` if any), then an optional `downsamplers.0`.
#[derive(Debug, Clone)]
pub struct DownBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    downsampler: Option<Downsample2D>,
}

impl DownBlock {
    /// Loads `resnets.{i}`, `attentions.{i}`, `downsamplers.0` from `vb` (= `down_blocks.{n}`).
    pub fn new(vb: VarBuilder, cfg: DownBlockConfig) -> Result<Self> {
        let mut resnets = Vec::with_capacity(cfg.num_layers);
        let mut attentions = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let cin = if i == 0 {
                cfg.in_channels
            } else {
                cfg.out_channels
            };
            let rc = resnet_config(
                cin,
                cfg.out_channels,
                cfg.temb_channels,
                cfg.resnet_groups,
                cfg.resnet_eps,
                1.0,
            );
            resnets.push(ResnetBlock2D::new(vb.pp("resnets").pp(i), rc)?);
            if let Some(ca) = &cfg.cross_attention {
                let tc = ca.transformer(cfg.out_channels, cfg.resnet_groups);
                attentions.push(Transformer2DModel::new(vb.pp("attentions").pp(i), tc)?);
            }
        }
        let downsampler = if cfg.add_downsample {
            let vb = vb.pp("downsamplers").pp(0);
            Some(Downsample2D::new(
                vb,
                cfg.out_channels,
                cfg.out_channels,
                cfg.downsample_padding,
            )?)
        } else {
            None
        };
        Ok(Self {
            resnets,
            attentions,
            downsampler,
        })
    }

    /// `x` `[b, in, h, w]`, `temb` `[b, temb_channels]`, `context` `[b, m, cross_attention_dim]`
    /// (unused without attention). Returns the block output (`[b, out, h/2, w/2]` with a
    /// downsampler, else `[b, out, h, w]`) and the skip connections in push order: one per
    /// layer, plus the downsampled output.
    pub fn forward(
        &self,
        x: &Tensor,
        temb: &Tensor,
        context: &Tensor,
        tiling: Tiling,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let mut h = x.clone();
        let mut skips = Vec::with_capacity(self.resnets.len() + 1);
        for (i, resnet) in self.resnets.iter().enumerate() {
            crate::cancel::checkpoint()?;
            h = resnet.forward(&h, Some(temb), tiling)?;
            if let Some(attn) = self.attentions.get(i) {
                h = attn.forward(&h, context)?;
            }
            skips.push(h.clone());
        }
        if let Some(down) = &self.downsampler {
            h = down.forward(&h, tiling)?;
            skips.push(h.clone());
        }
        Ok((h, skips))
    }

    /// Number of skip connections this block pushes.
    pub fn num_skips(&self) -> usize {
        self.resnets.len() + usize::from(self.downsampler.is_some())
    }
}

/// Configuration of a [`UNetMidBlock2DCrossAttn`].
#[derive(Debug, Clone, Copy)]
pub struct MidBlockConfig {
    /// Channels in and out (`block_out_channels[-1]`).
    pub channels: usize,
    /// Width of the timestep embedding.
    pub temb_channels: usize,
    /// `norm_eps` of the UNet config.
    pub resnet_eps: f64,
    /// `norm_num_groups` of the UNet config.
    pub resnet_groups: usize,
    /// `mid_block_scale_factor`: the resnets' `output_scale_factor`.
    pub output_scale_factor: f64,
    /// The attention (`only_cross_attention` is ignored: diffusers does not pass it here).
    pub cross_attention: CrossAttnConfig,
}

/// diffusers' `UNetMidBlock2DCrossAttn` with `num_layers = 1`:
/// `resnets.0 -> attentions.0 -> resnets.1`, channels unchanged.
#[derive(Debug, Clone)]
pub struct UNetMidBlock2DCrossAttn {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
}

impl UNetMidBlock2DCrossAttn {
    /// Loads `resnets.{0,1}` and `attentions.0` from `vb` (= `mid_block`).
    pub fn new(vb: VarBuilder, cfg: MidBlockConfig) -> Result<Self> {
        let c = cfg.channels;
        let rc = resnet_config(
            c,
            c,
            cfg.temb_channels,
            cfg.resnet_groups,
            cfg.resnet_eps,
            cfg.output_scale_factor,
        );
        let ca = CrossAttnConfig {
            only_cross_attention: false,
            ..cfg.cross_attention
        };
        let resnets = vec![
            ResnetBlock2D::new(vb.pp("resnets").pp(0), rc)?,
            ResnetBlock2D::new(vb.pp("resnets").pp(1), rc)?,
        ];
        let attentions = vec![Transformer2DModel::new(
            vb.pp("attentions").pp(0),
            ca.transformer(c, cfg.resnet_groups),
        )?];
        Ok(Self {
            resnets,
            attentions,
        })
    }

    /// `[b, c, h, w]` -> `[b, c, h, w]`.
    pub fn forward(
        &self,
        x: &Tensor,
        temb: &Tensor,
        context: &Tensor,
        tiling: Tiling,
    ) -> Result<Tensor> {
        let mut h = self.resnets[0].forward(x, Some(temb), tiling)?;
        for (attn, resnet) in self.attentions.iter().zip(&self.resnets[1..]) {
            crate::cancel::checkpoint()?;
            h = attn.forward(&h, context)?;
            h = resnet.forward(&h, Some(temb), tiling)?;
        }
        Ok(h)
    }
}

/// Configuration of an [`UpBlock`].
#[derive(Debug, Clone, Copy)]
pub struct UpBlockConfig {
    /// Channels of the skip connection consumed by the LAST resnet (diffusers' `in_channels`).
    pub in_channels: usize,
    /// Channels of the incoming hidden state (the previous up block's output).
    pub prev_output_channels: usize,
    /// Channels of every resnet output.
    pub out_channels: usize,
    /// Width of the timestep embedding.
    pub temb_channels: usize,
    /// Resnets in the block (`layers_per_block + 1`).
    pub num_layers: usize,
    /// A nearest-2x `upsamplers.0` follows (every block but the last).
    pub add_upsample: bool,
    /// `norm_eps` of the UNet config.
    pub resnet_eps: f64,
    /// `norm_num_groups` of the UNet config.
    pub resnet_groups: usize,
    /// `Some` for `CrossAttnUpBlock2D`, `None` for `UpBlock2D`.
    pub cross_attention: Option<CrossAttnConfig>,
}

/// diffusers' `CrossAttnUpBlock2D` (with `attentions`) or `UpBlock2D` (without): per layer, the
/// last skip connection is concatenated on channels, then `resnets.i` (then `attentions.i` if any);
/// finally an optional `upsamplers.0`.
#[derive(Debug, Clone)]
pub struct UpBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    upsampler: Option<Upsample2D>,
}

impl UpBlock {
    /// Loads `resnets.{i}`, `attentions.{i}`, `upsamplers.0` from `vb` (= `up_blocks.{n}`).
    pub fn new(vb: VarBuilder, cfg: UpBlockConfig) -> Result<Self> {
        let mut resnets = Vec::with_capacity(cfg.num_layers);
        let mut attentions = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let skip = if i == cfg.num_layers - 1 {
                cfg.in_channels
            } else {
                cfg.out_channels
            };
            let cin = if i == 0 {
                cfg.prev_output_channels
            } else {
                cfg.out_channels
            };
            let rc = resnet_config(
                cin + skip,
                cfg.out_channels,
                cfg.temb_channels,
                cfg.resnet_groups,
                cfg.resnet_eps,
                1.0,
            );
            resnets.push(ResnetBlock2D::new(vb.pp("resnets").pp(i), rc)?);
            if let Some(ca) = &cfg.cross_attention {
                let tc = ca.transformer(cfg.out_channels, cfg.resnet_groups);
                attentions.push(Transformer2DModel::new(vb.pp("attentions").pp(i), tc)?);
            }
        }
        let upsampler = if cfg.add_upsample {
            Some(Upsample2D::new(
                vb.pp("upsamplers").pp(0),
                cfg.out_channels,
                cfg.out_channels,
            )?)
        } else {
            None
        };
        Ok(Self {
            resnets,
            attentions,
            upsampler,
        })
    }

    /// Number of skip connections this block consumes (= its resnets).
    pub fn num_skips(&self) -> usize {
        self.resnets.len()
    }

    /// `x` `[b, prev_output_channels, h, w]`; `skips` the block's `num_skips()` skip
    /// connections in push order (the last is consumed first); `upsample_size` the output size
    /// of the upsampler (the next skip connection's `(h, w)`; `None` = `2h x 2w`).
    /// Returns `[b, out, H, W]` (upsampled when the block has an upsampler).
    pub fn forward(
        &self,
        x: &Tensor,
        skips: &[Tensor],
        temb: &Tensor,
        context: &Tensor,
        upsample_size: Option<(usize, usize)>,
        tiling: Tiling,
    ) -> Result<Tensor> {
        if skips.len() != self.resnets.len() {
            candle_core::bail!(
                "up block expects {} skip connections, got {}",
                self.resnets.len(),
                skips.len()
            );
        }
        let mut h = x.clone();
        for (i, (resnet, skip)) in self.resnets.iter().zip(skips.iter().rev()).enumerate() {
            crate::cancel::checkpoint()?;
            h = crate::kernels::profile::timed(
                crate::kernels::profile::OpKind::Elementwise,
                || Tensor::cat(&[&h, skip], 1),
            )?;
            h = resnet.forward(&h, Some(temb), tiling)?;
            if let Some(attn) = self.attentions.get(i) {
                h = attn.forward(&h, context)?;
            }
        }
        if let Some(up) = &self.upsampler {
            h = up.forward(&h, upsample_size, tiling)?;
        }
        Ok(h)
    }
}
