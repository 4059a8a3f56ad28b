//! `ResnetBlock2D`, mirroring diffusers `models/resnet.py` (time_embedding_norm "default",
//! output_scale_factor 1, no up/down sampling inside the block). Shared by the UNet (with a
//! timestep embedding) and the VAE (without).

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use crate::kernels::profile::{self, OpKind};
use crate::kernels::{AxisPad, Conv2dKernel, GroupNormKernel, elementwise};
use crate::tiling::{TiledConv2d, Tiling};

/// Configuration of one [`ResnetBlock2D`].
#[derive(Debug, Clone, Copy)]
pub struct ResnetBlock2DConfig {
    /// Channels of the input feature map.
    pub in_channels: usize,
    /// Channels of the output feature map (a 1x1 `conv_shortcut` when they differ).
    pub out_channels: usize,
    /// Width of the timestep embedding (`4 * block_out_channels[0]` in the UNet); `None` in the VAE.
    pub temb_channels: Option<usize>,
    /// Groups of both GroupNorms.
    pub groups: usize,
    /// `eps` of both GroupNorms.
    pub eps: f64,
    /// diffusers' `output_scale_factor` (1.0 in SD; the mid block of old configs may differ).
    pub output_scale_factor: f64,
}

/// `norm1 -> SiLU -> conv1 (+ time_emb_proj(SiLU(temb))) -> norm2 -> SiLU -> conv2`, plus a
/// 1x1 `conv_shortcut` when the channel count changes.
///
/// Input `[batch, in_channels, h, w]`, output `[batch, out_channels, h, w]`.
#[derive(Debug, Clone)]
pub struct ResnetBlock2D {
    norm1: GroupNormKernel,
    conv1: TiledConv2d,
    time_emb_proj: Option<Linear>,
    norm2: GroupNormKernel,
    conv2: TiledConv2d,
    conv_shortcut: Option<TiledConv2d>,
    output_scale_factor: f64,
}

impl ResnetBlock2D {
    /// Loads the block from `vb` (names `norm1`, `conv1`, `time_emb_proj`, `norm2`, `conv2`,
    /// `conv_shortcut`).
    pub fn new(vb: VarBuilder, cfg: ResnetBlock2DConfig) -> Result<Self> {
        let (cin, cout) = (cfg.in_channels, cfg.out_channels);
        let norm1 = GroupNormKernel::new(cfg.groups, cin, cfg.eps, vb.pp("norm1"))?;
        let conv1 = TiledConv2d::new(cin, cout, 3, 1, 1, vb.pp("conv1"))?;
        let time_emb_proj = match cfg.temb_channels {
            Some(t) => Some(candle_nn::linear(t, cout, vb.pp("time_emb_proj"))?),
            None => None,
        };
        let norm2 = GroupNormKernel::new(cfg.groups, cout, cfg.eps, vb.pp("norm2"))?;
        let conv2 = TiledConv2d::new(cout, cout, 3, 1, 1, vb.pp("conv2"))?;
        let conv_shortcut = if cin != cout {
            Some(TiledConv2d::new(
                cin,
                cout,
                1,
                1,
                0,
                vb.pp("conv_shortcut"),
            )?)
        } else {
            None
        };
        Ok(Self {
            norm1,
            conv1,
            time_emb_proj,
            norm2,
            conv2,
            conv_shortcut,
            output_scale_factor: cfg.output_scale_factor,
        })
    }

    /// `x`: `[batch, in, h, w]`; `temb`: `[batch, temb_channels]` (ignored when the block has
    /// no `time_emb_proj`). Returns `[batch, out, h, w]`.
    pub fn forward(&self, x: &Tensor, temb: Option<&Tensor>, tiling: Tiling) -> Result<Tensor> {
        let h = self.norm1.forward_silu(x)?;
        // The time embedding is a per-(sample, channel) bias of conv1.
        let t = match (&self.time_emb_proj, temb) {
            (Some(proj), Some(temb)) => Some(profile::timed(OpKind::Matmul, || {
                proj.forward(&temb.silu()?)
            })?),
            _ => None,
        };
        let h = self.conv1.forward_fused(&h, tiling, t.as_ref(), None)?;
        crate::cancel::checkpoint()?;
        let h = self.norm2.forward_silu(&h)?;
        let shortcut = match &self.conv_shortcut {
            Some(c) => c.forward(x, tiling)?,
            None => x.clone(),
        };
        if self.output_scale_factor == 1.0 {
            // The residual add is fused into conv2's output.
            self.conv2.forward_fused(&h, tiling, None, Some(&shortcut))
        } else {
            let h = self.conv2.forward(&h, tiling)?;
            profile::timed(OpKind::Elementwise, || {
                (shortcut + h)? / self.output_scale_factor
            })
        }
    }
}

/// diffusers `Downsample2D` with `use_conv=True`: a stride-2 3x3 `conv`.
///
/// With `padding = 1` (UNet) the conv pads symmetrically; with `padding = 0` (VAE encoder)
/// diffusers first pads right and bottom by one (`F.pad(x, (0, 1, 0, 1))`). Circular on tiled
/// axes either way. `[b, c, h, w]` -> `[b, out, h/2, w/2]`.
#[derive(Debug, Clone)]
pub struct Downsample2D {
    conv: Conv2dKernel,
    padding: usize,
}

impl Downsample2D {
    /// Loads `conv` from `vb` (diffusers names it `downsamplers.0.conv`).
    pub fn new(
        vb: VarBuilder,
        channels: usize,
        out_channels: usize,
        padding: usize,
    ) -> Result<Self> {
        let vb = vb.pp("conv");
        let weight = vb.get((out_channels, channels, 3, 3), "weight")?;
        let bias = vb.get(out_channels, "bias")?;
        let conv = Conv2dKernel::new(weight, Some(bias), 2)?;
        Ok(Self { conv, padding })
    }

    /// `[b, c, h, w]` -> `[b, out, h/2, w/2]`.
    pub fn forward(&self, x: &Tensor, tiling: Tiling) -> Result<Tensor> {
        let axis = |circular: bool| {
            if self.padding == 0 {
                // diffusers' F.pad(x, (0, 1, 0, 1)): one extra element at the end.
                AxisPad {
                    before: 0,
                    after: 1,
                    circular,
                }
            } else {
                AxisPad::symmetric(self.padding, circular)
            }
        };
        self.conv.forward(
            x,
            axis(tiling.wraps_y()),
            axis(tiling.wraps_x()),
            None,
            None,
        )
    }
}

/// diffusers `Upsample2D` with `use_conv=True`: nearest-neighbour 2x, then a 3x3 `conv`.
/// `[b, c, h, w]` -> `[b, out, 2h, 2w]`.
#[derive(Debug, Clone)]
pub struct Upsample2D {
    conv: TiledConv2d,
}

impl Upsample2D {
    /// Loads `conv` from `vb` (diffusers names it `upsamplers.0.conv`).
    pub fn new(vb: VarBuilder, channels: usize, out_channels: usize) -> Result<Self> {
        Ok(Self {
            conv: TiledConv2d::new(channels, out_channels, 3, 1, 1, vb.pp("conv"))?,
        })
    }

    /// `[b, c, h, w]` -> `[b, out, 2h, 2w]`; `size` overrides the output size (diffusers'
    /// `upsample_size`, used when a skip connection has an odd size).
    pub fn forward(
        &self,
        x: &Tensor,
        size: Option<(usize, usize)>,
        tiling: Tiling,
    ) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let (oh, ow) = size.unwrap_or((2 * h, 2 * w));
        let x = elementwise::upsample_nearest2d(x, oh, ow)?;
        self.conv.forward(&x, tiling)
    }
}
