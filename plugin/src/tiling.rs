//! Seamless tiling: circular padding per axis in every 3x3 convolution of the UNet and the VAE
//! decoder, chosen per request without reloading weights.
//!
//! A convolution with `padding = p` normally pads with zeros. When an axis tiles, we pad it with
//! the wrapped-around rows/columns instead (PyTorch `padding_mode="circular"`), so the image is
//! computed as if it lay on a torus and its opposite edges match. This is what
//! stable-diffusion.cpp's `--circular` and Blender Dream Textures' seamless option do; the VAE
//! decoder must be circular too or the seam reappears in pixel space.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use crate::kernels::{AxisPad, Conv2dKernel};
use serde::{Deserialize, Serialize};

/// Which image axes wrap around.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tiling {
    /// Ordinary zero padding: no seamless edges.
    #[default]
    #[serde(alias = "None")]
    None,
    /// Left and right edges match (horizontal repeat).
    #[serde(alias = "X")]
    X,
    /// Top and bottom edges match (vertical repeat).
    #[serde(alias = "Y")]
    Y,
    /// Both axes repeat.
    #[serde(alias = "XY")]
    XY,
}

impl Tiling {
    /// True when the width axis (last tensor dim) wraps around.
    pub fn wraps_x(self) -> bool {
        matches!(self, Tiling::X | Tiling::XY)
    }
    /// True when the height axis (second-to-last tensor dim) wraps around.
    pub fn wraps_y(self) -> bool {
        matches!(self, Tiling::Y | Tiling::XY)
    }
}

impl std::str::FromStr for Tiling {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Ok(Tiling::None),
            "x" => Ok(Tiling::X),
            "y" => Ok(Tiling::Y),
            "xy" => Ok(Tiling::XY),
            other => Err(format!(
                "unknown tiling `{other}`; expected none, x, y or xy"
            )),
        }
    }
}

/// Pads `x` (`[batch, channels, height, width]`) by `pad` on every side: circularly on the axes
/// that `tiling` wraps, with zeros on the others.
pub fn pad_2d(x: &Tensor, pad: usize, tiling: Tiling) -> Result<Tensor> {
    if pad == 0 {
        return Ok(x.clone());
    }
    let x = pad_axis(x, 3, pad, tiling.wraps_x())?;
    pad_axis(&x, 2, pad, tiling.wraps_y())
}

fn pad_axis(x: &Tensor, dim: usize, pad: usize, circular: bool) -> Result<Tensor> {
    if !circular {
        return x.pad_with_zeros(dim, pad, pad);
    }
    let n = x.dim(dim)?;
    if pad > n {
        candle_core::bail!("circular padding of {pad} is larger than the axis ({n})");
    }
    let head = x.narrow(dim, n - pad, pad)?;
    let tail = x.narrow(dim, 0, pad)?;
    Tensor::cat(&[&head, x, &tail], dim)
}

/// A `Conv2d` whose padding mode is chosen at each call: zeros, or circular on tiled axes.
///
/// Weights are loaded exactly as `torch.nn.Conv2d` stores them (`weight`
/// `[out, in, k, k]`, `bias` `[out]`), so the module tree matches the checkpoint. The work is done
/// by [`Conv2dKernel`] (padding inside the im2col, bias fused), which also takes an optional
/// per-sample bias and residual ([`TiledConv2d::forward_fused`]).
#[derive(Debug, Clone)]
pub struct TiledConv2d {
    conv: Conv2dKernel,
    padding: usize,
}

impl TiledConv2d {
    /// Loads a `kernel x kernel` convolution with symmetric `padding` and `stride` from `vb`.
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let weight = vb.get((out_channels, in_channels, kernel, kernel), "weight")?;
        let bias = vb.get(out_channels, "bias")?;
        let conv = Conv2dKernel::new(weight, Some(bias), stride)?;
        Ok(Self { conv, padding })
    }

    /// [`TiledConv2d::new`] for a convolution without bias (`bias=False`: only `weight`).
    pub fn new_no_bias(
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let weight = vb.get((out_channels, in_channels, kernel, kernel), "weight")?;
        let conv = Conv2dKernel::new(weight, None, stride)?;
        Ok(Self { conv, padding })
    }

    /// Applies the convolution to `[batch, in, height, width]` with the given tiling.
    pub fn forward(&self, x: &Tensor, tiling: Tiling) -> Result<Tensor> {
        self.forward_fused(x, tiling, None, None)
    }

    /// `relu(conv(x) + residual[b, c, h, w])` in one pass over the output (`residual` optional,
    /// `[batch, out, oh, ow]`).
    pub fn forward_relu(
        &self,
        x: &Tensor,
        tiling: Tiling,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let p = self.padding;
        self.conv.forward_relu(
            x,
            AxisPad::symmetric(p, tiling.wraps_y()),
            AxisPad::symmetric(p, tiling.wraps_x()),
            residual,
        )
    }

    /// `conv(x) + extra_bias[b, c] + residual[b, c, h, w]` in one pass over the output;
    /// `extra_bias` `[batch, out]`, `residual` `[batch, out, oh, ow]`.
    pub fn forward_fused(
        &self,
        x: &Tensor,
        tiling: Tiling,
        extra_bias: Option<&Tensor>,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let p = self.padding;
        self.conv.forward(
            x,
            AxisPad::symmetric(p, tiling.wraps_y()),
            AxisPad::symmetric(p, tiling.wraps_x()),
            extra_bias,
            residual,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn circular_padding_wraps_only_the_tiled_axis() -> Result<()> {
        let x = Tensor::arange(0f32, 6., &Device::Cpu)?.reshape((1, 1, 2, 3))?;
        let p = pad_2d(&x, 1, Tiling::X)?
            .squeeze(0)?
            .squeeze(0)?
            .to_vec2::<f32>()?;
        assert_eq!(
            p,
            vec![
                vec![0., 0., 0., 0., 0.],
                vec![2., 0., 1., 2., 0.],
                vec![5., 3., 4., 5., 3.],
                vec![0., 0., 0., 0., 0.],
            ]
        );
        let p = pad_2d(&x, 1, Tiling::XY)?
            .squeeze(0)?
            .squeeze(0)?
            .to_vec2::<f32>()?;
        assert_eq!(p[0], vec![5., 3., 4., 5., 3.]);
        assert_eq!(p[3], vec![2., 0., 1., 2., 0.]);
        Ok(())
    }
}
