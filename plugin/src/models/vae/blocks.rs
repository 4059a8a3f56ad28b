//! The blocks the VAE's [`super::Encoder`] and [`super::Decoder`] are built from, mirroring
//! diffusers `models/unets/unet_2d_blocks.py` (`DownEncoderBlock2D`, `UpDecoderBlock2D`,
//! `UNetMidBlock2D` as the VAE configures it) and `models/attention_processor.py` (`Attention`).

use super::*;

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
        // softmax(q^T k) v^T over the n = h*w positions, one head of c channels. The bounded
        // (blocked online-softmax) attention keeps memory linear in n: the full [b, n, n] score
        // matrix of diffusers' `Attention` would be 22 GB for a 1100² init image on a 4x VAE.
        // Scores and softmax in f32 (diffusers' `upcast_softmax=True` for this block).
        let attn = profile::timed(OpKind::Attention, || {
            let seq = |t: &Tensor| t.transpose(1, 2)?.contiguous(); // [b, n, c]
            let out = crate::models::transformer_2d::scaled_dot_product_attention(
                &seq(&q)?,
                &seq(&k)?,
                &seq(&v)?,
                1.0, // q is already scaled by 1/sqrt(c)
                None,
            )?;
            out.transpose(1, 2)?.contiguous() // [b, c, n]: the feature-map layout
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
