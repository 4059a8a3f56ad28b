//! The two halves of [`AutoencoderKL`](super::autoencoder_kl::AutoencoderKL), mirroring diffusers
//! `models/autoencoders/vae.py` (`Encoder`, `Decoder`) and the blocks they are built from in
//! `models/unets/unet_2d_blocks.py` (`DownEncoderBlock2D`, `UpDecoderBlock2D`, `UNetMidBlock2D`)
//! and `models/attention_processor.py` (`Attention` as the VAE mid block configures it).
//!
//! Module and field names follow diffusers, so `vb.pp(...)` walks the checkpoint's tensor names
//! (`encoder.down_blocks.0.resnets.1.conv2.weight`, `decoder.mid_block.attentions.0.to_q.bias`, ...).
//!
//! Every 3x3 convolution takes a [`Tiling`]: the decoder is run circularly on the tiled axes for
//! seamless textures; [`AutoencoderKL::encode`](super::autoencoder_kl::AutoencoderKL::encode)
//! runs the encoder with [`Tiling::None`].

use std::collections::BTreeMap;

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::autoencoder_kl::AutoencoderKLConfig;
use super::resnet::{Downsample2D, ResnetBlock2D, ResnetBlock2DConfig, Upsample2D};
use crate::kernels::profile::{self, OpKind};
use crate::kernels::{GroupNormKernel, elementwise};
use crate::tiling::{TiledConv2d, Tiling};

mod blocks;
pub use blocks::*;

/// `eps` of every GroupNorm in the VAE (diffusers hard-codes `resnet_eps=1e-6` and the
/// `conv_norm_out` eps in `vae.py`).
const VAE_NORM_EPS: f64 = 1e-6;

/// Intermediate activations by diffusers module path (`"encoder.down_blocks.1"`,
/// `"decoder.mid_block"`, `"post_quant_conv"`, ...), for parity debugging.
pub type Intermediates = BTreeMap<String, Tensor>;

/// Records `t` under `name` when tracing.
fn record(trace: &mut Option<&mut Intermediates>, name: impl Into<String>, t: &Tensor) {
    if let Some(trace) = trace.as_deref_mut() {
        trace.insert(name.into(), t.clone());
    }
}

/// `silu(norm(x))`, fused unless tracing (the trace records the norm's output before the SiLU).
fn norm_silu(
    norm: &GroupNormKernel,
    x: &Tensor,
    trace: &mut Option<&mut Intermediates>,
    name: &str,
) -> Result<Tensor> {
    if trace.is_some() {
        let h = norm.forward(x)?;
        record(trace, name, &h);
        elementwise::silu(&h)
    } else {
        norm.forward_silu(x)
    }
}

fn resnet_config(
    cfg: &AutoencoderKLConfig,
    in_channels: usize,
    out_channels: usize,
) -> ResnetBlock2DConfig {
    ResnetBlock2DConfig {
        in_channels,
        out_channels,
        temb_channels: None,
        groups: cfg.norm_num_groups,
        eps: VAE_NORM_EPS,
        output_scale_factor: 1.0,
    }
}

/// diffusers `vae.Encoder` with `double_z=True`: `conv_in -> down_blocks -> mid_block ->
/// conv_norm_out -> SiLU -> conv_out`.
///
/// `[batch, in_channels, H, W]` (pixels in [-1, 1]) ->
/// `[batch, 2 * latent_channels, H / f, W / f]` with `f` = `downscale_factor` (the moments before
/// `quant_conv`).
#[derive(Debug, Clone)]
pub struct Encoder {
    conv_in: TiledConv2d,
    down_blocks: Vec<DownEncoderBlock2D>,
    mid_block: VaeMidBlock,
    conv_norm_out: GroupNormKernel,
    conv_out: TiledConv2d,
}

impl Encoder {
    /// Loads the encoder from `vb` (the `encoder` prefix of the VAE weights).
    pub fn new(vb: VarBuilder, cfg: &AutoencoderKLConfig) -> Result<Self> {
        let ch = &cfg.block_out_channels;
        let last = *ch
            .last()
            .expect("validated: block_out_channels is not empty");
        let conv_in = TiledConv2d::new(cfg.in_channels, ch[0], 3, 1, 1, vb.pp("conv_in"))?;
        let mut down_blocks = Vec::with_capacity(ch.len());
        let mut out_channels = ch[0];
        for (i, &c) in ch.iter().enumerate() {
            let in_channels = out_channels;
            out_channels = c;
            let is_final = i + 1 == ch.len();
            let vb = vb.pp(format!("down_blocks.{i}"));
            down_blocks.push(DownEncoderBlock2D::new(
                vb,
                cfg,
                in_channels,
                out_channels,
                !is_final,
            )?);
        }
        let mid_block = VaeMidBlock::new(vb.pp("mid_block"), cfg, last)?;
        let conv_norm_out = GroupNormKernel::new(
            cfg.norm_num_groups,
            last,
            VAE_NORM_EPS,
            vb.pp("conv_norm_out"),
        )?;
        let conv_out = TiledConv2d::new(last, 2 * cfg.latent_channels, 3, 1, 1, vb.pp("conv_out"))?;
        Ok(Self {
            conv_in,
            down_blocks,
            mid_block,
            conv_norm_out,
            conv_out,
        })
    }

    /// `[batch, in_channels, H, W]` -> `[batch, 2 * latent_channels, H / f, W / f]`.
    pub fn forward(&self, x: &Tensor, tiling: Tiling) -> Result<Tensor> {
        self.forward_traced(x, tiling, None)
    }

    /// [`Encoder::forward`], recording the output of each top-level module under its diffusers
    /// path (`encoder.conv_in`, `encoder.down_blocks.{i}`, `encoder.mid_block`,
    /// `encoder.conv_norm_out` (before the SiLU), `encoder.conv_out`).
    pub fn forward_traced(
        &self,
        x: &Tensor,
        tiling: Tiling,
        mut trace: Option<&mut Intermediates>,
    ) -> Result<Tensor> {
        let mut h = self.conv_in.forward(x, tiling)?;
        record(&mut trace, "encoder.conv_in", &h);
        for (i, block) in self.down_blocks.iter().enumerate() {
            crate::cancel::checkpoint()?;
            h = block.forward(&h, tiling)?;
            record(&mut trace, format!("encoder.down_blocks.{i}"), &h);
        }
        let h = self.mid_block.forward(&h, tiling)?;
        record(&mut trace, "encoder.mid_block", &h);
        let h = norm_silu(&self.conv_norm_out, &h, &mut trace, "encoder.conv_norm_out")?;
        let h = self.conv_out.forward(&h, tiling)?;
        record(&mut trace, "encoder.conv_out", &h);
        Ok(h)
    }
}

/// diffusers `vae.Decoder` (`norm_type="group"`): `conv_in -> mid_block -> up_blocks ->
/// conv_norm_out -> SiLU -> conv_out`.
///
/// `[batch, latent_channels, h, w]` (after `post_quant_conv`) -> `[batch, out_channels, h * f, w * f]`
/// with `f` = `downscale_factor`; roughly [-1, 1], not clamped.
#[derive(Debug, Clone)]
pub struct Decoder {
    conv_in: TiledConv2d,
    mid_block: VaeMidBlock,
    up_blocks: Vec<UpDecoderBlock2D>,
    conv_norm_out: GroupNormKernel,
    conv_out: TiledConv2d,
}

impl Decoder {
    /// Loads the decoder from `vb` (the `decoder` prefix of the VAE weights).
    pub fn new(vb: VarBuilder, cfg: &AutoencoderKLConfig) -> Result<Self> {
        let reversed: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
        let (first, top) = (cfg.block_out_channels[0], reversed[0]);
        let conv_in = TiledConv2d::new(cfg.latent_channels, top, 3, 1, 1, vb.pp("conv_in"))?;
        let mid_block = VaeMidBlock::new(vb.pp("mid_block"), cfg, top)?;
        let mut up_blocks = Vec::with_capacity(reversed.len());
        let mut out_channels = top;
        for (i, &c) in reversed.iter().enumerate() {
            let in_channels = out_channels;
            out_channels = c;
            let is_final = i + 1 == reversed.len();
            let vb = vb.pp(format!("up_blocks.{i}"));
            up_blocks.push(UpDecoderBlock2D::new(
                vb,
                cfg,
                in_channels,
                out_channels,
                !is_final,
            )?);
        }
        let conv_norm_out = GroupNormKernel::new(
            cfg.norm_num_groups,
            first,
            VAE_NORM_EPS,
            vb.pp("conv_norm_out"),
        )?;
        let conv_out = TiledConv2d::new(first, cfg.out_channels, 3, 1, 1, vb.pp("conv_out"))?;
        Ok(Self {
            conv_in,
            mid_block,
            up_blocks,
            conv_norm_out,
            conv_out,
        })
    }

    /// `[batch, latent_channels, h, w]` -> `[batch, out_channels, h * f, w * f]`; every 3x3 conv is
    /// circular on the axes `tiling` wraps.
    pub fn forward(&self, z: &Tensor, tiling: Tiling) -> Result<Tensor> {
        self.forward_traced(z, tiling, None)
    }

    /// [`Decoder::forward`], recording the output of each top-level module under its diffusers
    /// path (`decoder.conv_in`, `decoder.mid_block`, `decoder.up_blocks.{i}`,
    /// `decoder.conv_norm_out` (before the SiLU), `decoder.conv_out`).
    pub fn forward_traced(
        &self,
        z: &Tensor,
        tiling: Tiling,
        mut trace: Option<&mut Intermediates>,
    ) -> Result<Tensor> {
        let h = self.conv_in.forward(z, tiling)?;
        record(&mut trace, "decoder.conv_in", &h);
        crate::cancel::checkpoint()?;
        let mut h = self.mid_block.forward(&h, tiling)?;
        record(&mut trace, "decoder.mid_block", &h);
        for (i, block) in self.up_blocks.iter().enumerate() {
            crate::cancel::checkpoint()?;
            h = block.forward(&h, tiling)?;
            record(&mut trace, format!("decoder.up_blocks.{i}"), &h);
        }
        let h = norm_silu(&self.conv_norm_out, &h, &mut trace, "decoder.conv_norm_out")?;
        let h = self.conv_out.forward(&h, tiling)?;
        record(&mut trace, "decoder.conv_out", &h);
        Ok(h)
    }
}
