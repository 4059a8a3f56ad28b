//! 2-D convolution as im2col tiles into a GEMM (the `gemm` crate candle itself uses), NCHW in and
//! out, with padding done inside the im2col (zeros, or circular per axis for seamless tiling) and
//! bias / per-sample bias (the UNet's time embedding) / residual written into the output before
//! the GEMM accumulates onto it.
//!
//! For one image and a band of output rows, the im2col tile is `[cin * kh * kw, rows * ow]`;
//! each of its rows is a shifted copy of an input row (a contiguous copy at stride 1), so it is
//! built with memcpy-speed copies and no layout change. The weights `[cout, cin, kh, kw]` are
//! already the GEMM's `[cout, cin * kh * kw]` left operand: they are made contiguous once at load
//! and never copied again. The GEMM writes `[cout, rows * ow]` straight into the NCHW output.
//! Tiles run in parallel (one single-threaded GEMM each) when there are enough of them, else one
//! after the other with a multi-threaded GEMM.

use std::cell::RefCell;

use candle_core::{DType, Device, Result, Tensor};
use rayon::prelude::*;

use super::bf16::Bf16Kernel;
use super::profile::{self, OpKind};
use super::winograd::applies as winograd_applies;
use super::{SendPtr, on_cpu_f32, with_opt_slice, with_slice};

mod im2col;
pub use im2col::*;

/// How one spatial axis is padded: `before` / `after` elements, zeros or wrapped around.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AxisPad {
    /// Elements added before the first one.
    pub before: usize,
    /// Elements added after the last one.
    pub after: usize,
    /// Pad with the elements from the other end of the axis (PyTorch `padding_mode="circular"`).
    pub circular: bool,
}

impl AxisPad {
    /// `p` on both sides.
    pub fn symmetric(p: usize, circular: bool) -> Self {
        Self {
            before: p,
            after: p,
            circular,
        }
    }
}

/// Upper bound on the floats of one im2col tile (4 MiB): big enough that the GEMM is efficient,
/// small enough to stay in cache-friendly sizes.
const COL_BUDGET: usize = 1 << 20;
/// Smallest tile (output pixels) worth a GEMM of its own when splitting for parallelism.
const MIN_TILE: usize = 128;

/// A convolution's weights (`[cout, cin, kh, kw]`, contiguous; f32, or bf16 for a bf16 load's
/// UNet, see [`Conv2dKernel::new`]) and optional bias `[cout]`.
#[derive(Debug, Clone)]
pub struct Conv2dKernel {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: usize,
}

/// The shape of one convolution call.
#[derive(Debug, Clone, Copy)]
pub struct ConvGeom {
    /// Images in the batch.
    pub batch: usize,
    /// Input channels.
    pub cin: usize,
    /// Input height (pixels of the feature map).
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels.
    pub cout: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Stride on both axes (1 or 2).
    pub stride: usize,
    /// Padding of the height axis.
    pub pad_y: AxisPad,
    /// Padding of the width axis.
    pub pad_x: AxisPad,
}

impl ConvGeom {
    /// Output `(height, width)`; errors when the kernel does not fit or a circular pad exceeds
    /// its axis.
    pub fn out_hw(&self) -> Result<(usize, usize)> {
        let axis = |n: usize, k: usize, p: AxisPad, name: &str| -> Result<usize> {
            if p.circular && (p.before > n || p.after > n) {
                candle_core::bail!(
                    "circular padding of {}/{} is larger than the {name} axis ({n})",
                    p.before,
                    p.after
                );
            }
            let padded = n + p.before + p.after;
            if padded < k || self.stride == 0 {
                candle_core::bail!("conv2d: kernel {k} larger than the padded {name} ({padded})");
            }
            Ok((padded - k) / self.stride + 1)
        };
        Ok((
            axis(self.h, self.kh, self.pad_y, "height")?,
            axis(self.w, self.kw, self.pad_x, "width")?,
        ))
    }
}

impl Conv2dKernel {
    /// `weight` `[cout, cin, kh, kw]`, `bias` `[cout]`, `stride` >= 1. A bf16 `weight` (kept so
    /// by a bf16 load) runs the im2col + GEMM path through the bf16 kernel (the input rounded to
    /// bf16, f32 accumulation) and is widened to f32 per call on the other paths (Winograd, no
    /// bf16 kernel, an odd `cin * kh * kw`). Errors on a bias of the wrong length or stride 0.
    pub fn new(weight: Tensor, bias: Option<Tensor>, stride: usize) -> Result<Self> {
        let (cout, _, _, _) = weight.dims4()?;
        if let Some(b) = &bias
            && b.dims1()? != cout
        {
            {
                candle_core::bail!("conv bias has {} entries for {cout} outputs", b.dims1()?);
            }
        }
        if stride == 0 {
            candle_core::bail!("conv2d stride must be >= 1");
        }
        Ok(Self {
            weight: weight.contiguous()?,
            bias: bias.map(|b| b.contiguous()).transpose()?,
            stride,
        })
    }

    /// The weight `[cout, cin, kh, kw]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias `[cout]`.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// `x` `[b, cin, h, w]` -> `[b, cout, oh, ow]`: the convolution of `x` padded by `pad_y` /
    /// `pad_x`, plus the bias, plus `extra_bias` `[b, cout]` per sample and channel (optional),
    /// plus `residual` `[b, cout, oh, ow]` (optional). Errors on mismatched shapes.
    pub fn forward(
        &self,
        x: &Tensor,
        pad_y: AxisPad,
        pad_x: AxisPad,
        extra_bias: Option<&Tensor>,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        profile::timed(OpKind::Conv, || {
            self.forward_inner(x, 1, pad_y, pad_x, extra_bias, residual, false)
        })
    }

    /// [`Conv2dKernel::forward`] of the nearest 2x upsampling of `x` (`[b, cin, h, w]` ->
    /// `[b, cout, 2h + .., 2w + ..]`), optionally followed by a ReLU: diffusers' `Upsample2D`
    /// (`interpolate(scale_factor=2.0, mode="nearest")` then `conv`) and TAESD's
    /// `Upsample -> Conv`. The Winograd kernel reads `x` through the upsampling, so the
    /// upsampled map is never stored; other paths upsample first.
    pub fn forward_upsampled2x(
        &self,
        x: &Tensor,
        pad_y: AxisPad,
        pad_x: AxisPad,
        relu: bool,
    ) -> Result<Tensor> {
        profile::timed(OpKind::Conv, || {
            self.forward_inner(x, 2, pad_y, pad_x, None, None, relu)
        })
    }

    /// [`Conv2dKernel::forward`] followed by a ReLU, fused into the same pass over the output
    /// (TAESD's `conv -> ReLU` and `ReLU(conv(x) + x)`).
    pub fn forward_relu(
        &self,
        x: &Tensor,
        pad_y: AxisPad,
        pad_x: AxisPad,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        profile::timed(OpKind::Conv, || {
            self.forward_inner(x, 1, pad_y, pad_x, None, residual, true)
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn forward_inner(
        &self,
        x: &Tensor,
        up: usize,
        pad_y: AxisPad,
        pad_x: AxisPad,
        extra_bias: Option<&Tensor>,
        residual: Option<&Tensor>,
        relu: bool,
    ) -> Result<Tensor> {
        let (batch, cin, sh, sw) = x.dims4()?;
        let (h, w) = (sh * up, sw * up);
        let (cout, wcin, kh, kw) = self.weight.dims4()?;
        if cin != wcin {
            candle_core::bail!("conv2d: input has {cin} channels, weight expects {wcin}");
        }
        let g = ConvGeom {
            batch,
            cin,
            h,
            w,
            cout,
            kh,
            kw,
            stride: self.stride,
            pad_y,
            pad_x,
        };
        let (oh, ow) = g.out_hw()?;
        // A bf16 weight (a bf16 load): the im2col + GEMM path runs the bf16 kernel on it; every
        // other path (Winograd, whose transformed weights are f32; candle's; no bf16 kernel; an
        // odd cin * kh * kw) runs on the weight widened to f32 for this call.
        let mut bf16_kernel = None;
        if self.weight.dtype() == DType::BF16 {
            let winograd = winograd_enabled() && winograd_applies(&g, oh, ow);
            bf16_kernel = super::bf16::conv_kernel().filter(|_| {
                self.weight.device().is_cpu()
                    && on_cpu_f32(x)
                    && up == 1
                    && !winograd
                    && (cin * kh * kw).is_multiple_of(2)
            });
            if bf16_kernel.is_none() {
                let widened = Self {
                    weight: self.weight.to_dtype(DType::F32)?,
                    bias: self.bias.clone(),
                    stride: self.stride,
                };
                return widened.forward_inner(x, up, pad_y, pad_x, extra_bias, residual, relu);
            }
        }
        if let Some(e) = extra_bias
            && e.dims() != [batch, cout]
        {
            {
                candle_core::bail!(
                    "conv2d: extra bias {:?}, expected [{batch}, {cout}]",
                    e.dims()
                );
            }
        }
        if let Some(r) = residual
            && r.dims() != [batch, cout, oh, ow]
        {
            {
                candle_core::bail!(
                    "conv2d: residual {:?}, expected [{batch}, {cout}, {oh}, {ow}]",
                    r.dims()
                );
            }
        }
        let cpu = on_cpu_f32(x)
            && (bf16_kernel.is_some() || on_cpu_f32(&self.weight))
            && self.bias.as_ref().is_none_or(on_cpu_f32)
            && extra_bias.is_none_or(on_cpu_f32)
            && residual.is_none_or(on_cpu_f32);
        let fused_up = up == 1 || (winograd_enabled() && winograd_applies(&g, oh, ow));
        if !cpu || !fused_up {
            let x = if up == 1 {
                x.clone()
            } else {
                super::elementwise::upsample_nearest2d(x, h, w)?
            };
            if cpu {
                return self.forward_inner(&x, 1, pad_y, pad_x, extra_bias, residual, relu);
            }
            let y = self.forward_candle(&x, pad_y, pad_x, extra_bias, residual)?;
            return if relu { y.relu() } else { Ok(y) };
        }
        // Per (sample, channel) bias: the conv bias plus the extra one.
        let bias: Option<Vec<f32>> = match (&self.bias, extra_bias) {
            (None, None) => None,
            (b, e) => {
                let mut v = vec![0f32; batch * cout];
                if let Some(b) = b {
                    let b = b.to_vec1::<f32>()?;
                    for row in v.chunks_mut(cout) {
                        row.copy_from_slice(&b);
                    }
                }
                if let Some(e) = e {
                    let e = e.flatten_all()?.to_vec1::<f32>()?;
                    v.iter_mut().zip(&e).for_each(|(a, b)| *a += b);
                }
                Some(v)
            }
        };
        let mut out = super::zeroed(batch * cout * oh * ow);
        if let Some(kernel) = bf16_kernel {
            with_slice(x, |xs| {
                super::with_bf16_slice(&self.weight, |ws| {
                    with_opt_slice(residual, |rs| {
                        let b = bias.as_deref();
                        conv2d_bf16(&g, kernel, xs, ws, b, rs, relu, &mut out)
                    })
                })
            })?;
            return Tensor::from_vec(out, (batch, cout, oh, ow), &Device::Cpu);
        }
        with_slice(x, |xs| {
            with_slice(&self.weight, |ws| {
                with_opt_slice(residual, |rs| {
                    if up == 1 {
                        conv2d_f32(&g, xs, ws, bias.as_deref(), rs, relu, &mut out);
                    } else {
                        let b = bias.as_deref();
                        super::winograd::conv3x3(&g, up, oh, ow, xs, ws, b, rs, relu, &mut out);
                    }
                    Ok(())
                })
            })
        })?;
        Tensor::from_vec(out, (batch, cout, oh, ow), &Device::Cpu)
    }

    /// The same computation with candle ops (any device / dtype).
    fn forward_candle(
        &self,
        x: &Tensor,
        pad_y: AxisPad,
        pad_x: AxisPad,
        extra_bias: Option<&Tensor>,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let x = pad_axis(x, 3, pad_x)?;
        let x = pad_axis(&x, 2, pad_y)?;
        let w = if self.weight.dtype() == x.dtype() {
            self.weight.clone()
        } else {
            self.weight.to_dtype(x.dtype())?
        };
        let mut y = x.conv2d(&w, 0, self.stride, 1, 1)?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(&b.reshape((1, (), 1, 1))?)?;
        }
        if let Some(e) = extra_bias {
            y = y.broadcast_add(&e.unsqueeze(2)?.unsqueeze(3)?.to_dtype(y.dtype())?)?;
        }
        if let Some(r) = residual {
            y = (y + r)?;
        }
        Ok(y)
    }
}

/// Pads `dim` of `x` as `p` says (candle ops; the reference and the non-CPU path).
pub fn pad_axis(x: &Tensor, dim: usize, p: AxisPad) -> Result<Tensor> {
    if p.before == 0 && p.after == 0 {
        return Ok(x.clone());
    }
    if !p.circular {
        return x.pad_with_zeros(dim, p.before, p.after);
    }
    let n = x.dim(dim)?;
    if p.before > n || p.after > n {
        candle_core::bail!(
            "circular padding of {}/{} is larger than the axis ({n})",
            p.before,
            p.after
        );
    }
    let mut parts = Vec::with_capacity(3);
    if p.before > 0 {
        parts.push(x.narrow(dim, n - p.before, p.before)?);
    }
    parts.push(x.clone());
    if p.after > 0 {
        parts.push(x.narrow(dim, 0, p.after)?);
    }
    Tensor::cat(&parts, dim)
}
