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

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;

use super::autoencoder_kl::AutoencoderKLConfig;
use super::resnet::{Downsample2D, ResnetBlock2D, ResnetBlock2DConfig, Upsample2D};
use crate::kernels::profile::{self, OpKind};
use crate::kernels::{GroupNormKernel, elementwise};
use crate::tiling::{TiledConv2d, Tiling};

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

/// The single-head spatial self-attention of the VAE mid block: diffusers `Attention(channels,
/// heads=1, dim_head=channels, norm_num_groups=groups, eps=1e-6, residual_connection=True,
/// bias=True, upcast_softmax=True, _from_deprecated_attn_block=True)` run by `AttnProcessor2_0`.
///
/// `x + to_out(softmax(q k^T / sqrt(c)) v)` with `q, k, v = to_q/to_k/to_v(group_norm(x))` over the
/// `h*w` positions. Weights: `group_norm`, `to_q`, `to_k`, `to_v`, `to_out.0` (Linear, with bias);
/// the pre-0.14 names `query`, `key`, `value`, `proj_attn` are accepted too, as diffusers'
/// `_convert_deprecated_attention_blocks` does.
///
/// The projections are computed in the `[batch, channels, h*w]` layout the feature map already
/// has, with q/k/v fused into one matmul and the `1/sqrt(c)` scale folded into the query weights
/// at load time, so no transposed copy is ever made. Memory: one `[batch, h*w, h*w]` score matrix
/// (64 MiB in f32 for a 512x512 image, whose mid block sees 64x64 = 4096 positions).
#[derive(Debug, Clone)]
pub struct AttentionBlock {
    group_norm: GroupNormKernel,
    /// `[3c, c]`: rows `to_q / sqrt(c)`, `to_k`, `to_v`.
    qkv_weight: Tensor,
    /// `[3c, 1]`.
    qkv_bias: Tensor,
    /// `[c, c]`.
    out_weight: Tensor,
    /// `[c, 1]`.
    out_bias: Tensor,
    channels: usize,
}

impl AttentionBlock {
    /// Loads the block from `vb` (`mid_block.attentions.0`), for `channels` channels normalised in
    /// `groups` groups.
    pub fn new(vb: VarBuilder, channels: usize, groups: usize) -> Result<Self> {
        let c = channels;
        let group_norm = GroupNormKernel::new(groups, c, VAE_NORM_EPS, vb.pp("group_norm"))?;
        // Modern names first; fall back to the deprecated ones only when those are what is there,
        // so that a missing tensor is reported under its modern name.
        let name = |modern: &'static str, legacy: &'static str| {
            if !vb.contains_tensor(&format!("{modern}.weight"))
                && vb.contains_tensor(&format!("{legacy}.weight"))
            {
                legacy
            } else {
                modern
            }
        };
        let linear = |prefix: &str| -> Result<(Tensor, Tensor)> {
            let vb = vb.pp(prefix);
            Ok((vb.get((c, c), "weight")?, vb.get(c, "bias")?))
        };
        let (wq, bq) = linear(name("to_q", "query"))?;
        let (wk, bk) = linear(name("to_k", "key"))?;
        let (wv, bv) = linear(name("to_v", "value"))?;
        let (wo, bo) = linear(name("to_out.0", "proj_attn"))?;
        // SDPA's default scale 1/sqrt(head_dim) with a single head of dim c, folded into q.
        let scale = 1.0 / (c as f64).sqrt();
        let qkv_weight = Tensor::cat(&[&(wq * scale)?, &wk, &wv], 0)?;
        let qkv_bias = Tensor::cat(&[&(bq * scale)?, &bk, &bv], 0)?.reshape((3 * c, 1))?;
        let out_bias = bo.reshape((c, 1))?;
        Ok(Self {
            group_norm,
            qkv_weight,
            qkv_bias,
            out_weight: wo,
            out_bias,
            channels: c,
        })
    }

    /// `[batch, c, h, w]` -> `[batch, c, h, w]` (residual included).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let n = h * w;
        let xn = self.group_norm.forward(x)?.reshape((b, c, n))?;
        // [b, 3c, n] = W_qkv [3c, c] @ xn [b, c, n] + bias.
        let qkv = profile::timed(OpKind::Matmul, || {
            self.qkv_weight
                .broadcast_left(b)?
                .matmul(&xn)?
                .broadcast_add(&self.qkv_bias)
        })?;
        let q = qkv.narrow(1, 0, c)?; // [b, c, n], already scaled
        let k = qkv.narrow(1, c, c)?;
        let v = qkv.narrow(1, 2 * c, c)?;
        // scores[b, i, j] = q_i . k_j: [b, n, c] @ [b, c, n] (the transpose is a strided view).
        let attn = profile::timed(OpKind::Attention, || {
            let scores = q.transpose(1, 2)?.matmul(&k)?;
            // diffusers upcasts the softmax of this block (`upcast_softmax=True`).
            let probs = if scores.dtype() == DType::F32 || scores.dtype() == DType::F64 {
                candle_nn::ops::softmax_last_dim(&scores)?
            } else {
                candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?
                    .to_dtype(scores.dtype())?
            };
            // out^T [b, c, n] = v [b, c, n] @ probs^T [b, n, n]: already the feature-map layout.
            v.matmul(&probs.transpose(1, 2)?)
        })?;
        let out = profile::timed(OpKind::Matmul, || {
            self.out_weight
                .broadcast_left(b)?
                .matmul(&attn)?
                .broadcast_add(&self.out_bias)
        })?;
        profile::timed(OpKind::Elementwise, || out.reshape((b, c, h, w))? + x)
    }

    /// Number of channels (= the head dimension).
    pub fn channels(&self) -> usize {
        self.channels
    }
}

/// diffusers `UNetMidBlock2D` as the VAE builds it: `resnets.0 -> attentions.0 -> resnets.1`
/// (the attention is absent when `mid_block_add_attention` is false). `[b, c, h, w]` in and out.
#[derive(Debug, Clone)]
pub struct VaeMidBlock {
    resnets: [ResnetBlock2D; 2],
    attention: Option<AttentionBlock>,
}

impl VaeMidBlock {
    /// Loads `resnets.{0,1}` and `attentions.0` from `vb` (`encoder.mid_block` / `decoder.mid_block`).
    pub fn new(vb: VarBuilder, cfg: &AutoencoderKLConfig, channels: usize) -> Result<Self> {
        let rcfg = resnet_config(cfg, channels, channels);
        let resnets = [
            ResnetBlock2D::new(vb.pp("resnets.0"), rcfg)?,
            ResnetBlock2D::new(vb.pp("resnets.1"), rcfg)?,
        ];
        let attention = if cfg.mid_block_add_attention {
            Some(AttentionBlock::new(
                vb.pp("attentions.0"),
                channels,
                cfg.norm_num_groups,
            )?)
        } else {
            None
        };
        Ok(Self { resnets, attention })
    }

    /// `[b, c, h, w]` -> `[b, c, h, w]`; the resnets' 3x3 convs honour `tiling`.
    pub fn forward(&self, x: &Tensor, tiling: Tiling) -> Result<Tensor> {
        let mut h = self.resnets[0].forward(x, None, tiling)?;
        if let Some(attn) = &self.attention {
            h = attn.forward(&h)?;
        }
        self.resnets[1].forward(&h, None, tiling)
    }
}

/// diffusers `DownEncoderBlock2D`: `layers_per_block` resnets, then (all but the last block) a
/// stride-2 `downsamplers.0.conv` with diffusers' asymmetric `(0, 1, 0, 1)` padding.
/// `[b, in, h, w]` -> `[b, out, h/2, w/2]` (or `[b, out, h, w]` for the last block).
#[derive(Debug, Clone)]
pub struct DownEncoderBlock2D {
    resnets: Vec<ResnetBlock2D>,
    downsampler: Option<Downsample2D>,
}

impl DownEncoderBlock2D {
    /// Loads `resnets.j` and `downsamplers.0` from `vb` (`encoder.down_blocks.i`).
    pub fn new(
        vb: VarBuilder,
        cfg: &AutoencoderKLConfig,
        in_channels: usize,
        out_channels: usize,
        add_downsample: bool,
    ) -> Result<Self> {
        let resnets = (0..cfg.layers_per_block)
            .map(|j| {
                let cin = if j == 0 { in_channels } else { out_channels };
                ResnetBlock2D::new(
                    vb.pp(format!("resnets.{j}")),
                    resnet_config(cfg, cin, out_channels),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let downsampler = if add_downsample {
            Some(Downsample2D::new(
                vb.pp("downsamplers.0"),
                out_channels,
                out_channels,
                0,
            )?)
        } else {
            None
        };
        Ok(Self {
            resnets,
            downsampler,
        })
    }

    /// `[b, in, h, w]` -> `[b, out, h/2, w/2]` (no downsampling in the last block).
    pub fn forward(&self, x: &Tensor, tiling: Tiling) -> Result<Tensor> {
        let mut h = x.clone();
        for resnet in &self.resnets {
            crate::cancel::checkpoint()?;
            h = resnet.forward(&h, None, tiling)?;
        }
        crate::cancel::checkpoint()?;
        match &self.downsampler {
            Some(down) => down.forward(&h, tiling),
            None => Ok(h),
        }
    }
}

/// diffusers `UpDecoderBlock2D`: `layers_per_block + 1` resnets, then (all but the last block) a
/// nearest-2x `upsamplers.0.conv`. `[b, in, h, w]` -> `[b, out, 2h, 2w]` (or `[b, out, h, w]`).
#[derive(Debug, Clone)]
pub struct UpDecoderBlock2D {
    resnets: Vec<ResnetBlock2D>,
    upsampler: Option<Upsample2D>,
}

impl UpDecoderBlock2D {
    /// Loads `resnets.j` and `upsamplers.0` from `vb` (`decoder.up_blocks.i`).
    pub fn new(
        vb: VarBuilder,
        cfg: &AutoencoderKLConfig,
        in_channels: usize,
        out_channels: usize,
        add_upsample: bool,
    ) -> Result<Self> {
        let resnets = (0..cfg.layers_per_block + 1)
            .map(|j| {
                let cin = if j == 0 { in_channels } else { out_channels };
                ResnetBlock2D::new(
                    vb.pp(format!("resnets.{j}")),
                    resnet_config(cfg, cin, out_channels),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let upsampler = if add_upsample {
            Some(Upsample2D::new(
                vb.pp("upsamplers.0"),
                out_channels,
                out_channels,
            )?)
        } else {
            None
        };
        Ok(Self { resnets, upsampler })
    }

    /// `[b, in, h, w]` -> `[b, out, 2h, 2w]` (no upsampling in the last block); every 3x3 conv
    /// honours `tiling`.
    pub fn forward(&self, x: &Tensor, tiling: Tiling) -> Result<Tensor> {
        let mut h = x.clone();
        for resnet in &self.resnets {
            crate::cancel::checkpoint()?;
            h = resnet.forward(&h, None, tiling)?;
        }
        crate::cancel::checkpoint()?;
        match &self.upsampler {
            Some(up) => up.forward(&h, None, tiling),
            None => Ok(h),
        }
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
