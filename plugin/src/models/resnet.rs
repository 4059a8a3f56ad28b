//! `ResnetBlock2D`, mirroring diffusers `models/resnet.py` (time_embedding_norm "default",
//! output_scale_factor 1, no up/down sampling inside the block). Shared by the UNet (with a
//! timestep embedding) and the VAE (without).

use candle_core::{Module, Result, Tensor};
use candle_nn::{GroupNorm, Linear, VarBuilder};

use crate::tiling::{TiledConv2d, Tiling};

/// Configuration of one [`ResnetBlock2D`].
#[derive(Debug, Clone, Copy)]
pub struct ResnetBlock2DConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    /// Width of the timestep embedding (`4 * block_out_channels[0]` in the UNet); `None` in the VAE.
    pub temb_channels: Option<usize>,
    pub groups: usize,
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
    norm1: GroupNorm,
    conv1: TiledConv2d,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: TiledConv2d,
    conv_shortcut: Option<TiledConv2d>,
    output_scale_factor: f64,
}

impl ResnetBlock2D {
    /// Loads the block from `vb` (names `norm1`, `conv1`, `time_emb_proj`, `norm2`, `conv2`,
    /// `conv_shortcut`).
    pub fn new(vb: VarBuilder, cfg: ResnetBlock2DConfig) -> Result<Self> {
        let (cin, cout) = (cfg.in_channels, cfg.out_channels);
        let norm1 = candle_nn::group_norm(cfg.groups, cin, cfg.eps, vb.pp("norm1"))?;
        let conv1 = TiledConv2d::new(cin, cout, 3, 1, 1, vb.pp("conv1"))?;
        let time_emb_proj = match cfg.temb_channels {
            Some(t) => Some(candle_nn::linear(t, cout, vb.pp("time_emb_proj"))?),
            None => None,
        };
        let norm2 = candle_nn::group_norm(cfg.groups, cout, cfg.eps, vb.pp("norm2"))?;
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
        let h = self.norm1.forward(x)?.silu()?;
        let mut h = self.conv1.forward(&h, tiling)?;
        if let (Some(proj), Some(temb)) = (&self.time_emb_proj, temb) {
            let t = proj.forward(&temb.silu()?)?.unsqueeze(2)?.unsqueeze(3)?;
            h = h.broadcast_add(&t)?;
        }
        crate::cancel::checkpoint()?;
        let h = self.norm2.forward(&h)?.silu()?;
        let h = self.conv2.forward(&h, tiling)?;
        let shortcut = match &self.conv_shortcut {
            Some(c) => c.forward(x, tiling)?,
            None => x.clone(),
        };
        let out = (shortcut + h)?;
        if self.output_scale_factor == 1.0 {
            Ok(out)
        } else {
            out / self.output_scale_factor
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
    conv: candle_nn::Conv2d,
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
        let cfg = candle_nn::Conv2dConfig {
            stride: 2,
            padding: 0,
            ..Default::default()
        };
        let conv = candle_nn::conv2d(channels, out_channels, 3, cfg, vb.pp("conv"))?;
        Ok(Self { conv, padding })
    }

    /// `[b, c, h, w]` -> `[b, out, h/2, w/2]`.
    pub fn forward(&self, x: &Tensor, tiling: Tiling) -> Result<Tensor> {
        let x = if self.padding == 0 {
            let x = pad_end(x, 3, tiling.wraps_x())?;
            pad_end(&x, 2, tiling.wraps_y())?
        } else {
            crate::tiling::pad_2d(x, self.padding, tiling)?
        };
        self.conv.forward(&x)
    }
}

/// Pads one element at the end of `dim`: the first element when circular, else zero.
fn pad_end(x: &Tensor, dim: usize, circular: bool) -> Result<Tensor> {
    if circular {
        Tensor::cat(&[x, &x.narrow(dim, 0, 1)?], dim)
    } else {
        x.pad_with_zeros(dim, 0, 1)
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
        let x = x.upsample_nearest2d(oh, ow)?;
        self.conv.forward(&x, tiling)
    }
}
