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

use candle_core::{Device, Result, Tensor};
use rayon::prelude::*;

use super::profile::{self, OpKind};
use super::{SendPtr, on_cpu_f32, with_opt_slice, with_slice};

/// How one spatial axis is padded: `before` / `after` elements, zeros or wrapped around.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AxisPad {
    pub before: usize,
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

/// A convolution's weights (`[cout, cin, kh, kw]`, contiguous) and optional bias `[cout]`.
#[derive(Debug, Clone)]
pub struct Conv2dKernel {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: usize,
}

/// The shape of one convolution call.
#[derive(Debug, Clone, Copy)]
pub struct ConvGeom {
    pub batch: usize,
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad_y: AxisPad,
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
    /// `weight` `[cout, cin, kh, kw]`, `bias` `[cout]`, `stride` >= 1.
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
            self.forward_inner(x, pad_y, pad_x, extra_bias, residual, false)
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
            self.forward_inner(x, pad_y, pad_x, None, residual, true)
        })
    }

    fn forward_inner(
        &self,
        x: &Tensor,
        pad_y: AxisPad,
        pad_x: AxisPad,
        extra_bias: Option<&Tensor>,
        residual: Option<&Tensor>,
        relu: bool,
    ) -> Result<Tensor> {
        let (batch, cin, h, w) = x.dims4()?;
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
            && on_cpu_f32(&self.weight)
            && self.bias.as_ref().is_none_or(on_cpu_f32)
            && extra_bias.is_none_or(on_cpu_f32)
            && residual.is_none_or(on_cpu_f32);
        if !cpu {
            let y = self.forward_candle(x, pad_y, pad_x, extra_bias, residual)?;
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
        let mut out = vec![0f32; batch * cout * oh * ow];
        with_slice(x, |xs| {
            with_slice(&self.weight, |ws| {
                with_opt_slice(residual, |rs| {
                    conv2d_f32(&g, xs, ws, bias.as_deref(), rs, relu, &mut out);
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
        let mut y = x.conv2d(&self.weight, 0, self.stride, 1, 1)?;
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

/// For each kernel tap `t` and output position `o`: the input index read (`-1` = zero padding).
fn axis_map(n: usize, out: usize, k: usize, stride: usize, p: AxisPad) -> Vec<isize> {
    let mut m = Vec::with_capacity(k * out);
    for t in 0..k {
        for o in 0..out {
            let i = (o * stride + t) as isize - p.before as isize;
            m.push(if (0..n as isize).contains(&i) {
                i
            } else if p.circular {
                i.rem_euclid(n as isize)
            } else {
                -1
            });
        }
    }
    m
}

thread_local! {
    static COL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Whether 3x3 stride-1 convolutions take the Winograd F(2x2, 3x3) path (default: yes;
/// `BEVY_DIFFUSION_WINOGRAD=off` keeps every convolution on im2col + GEMM, the A/B switch).
pub fn winograd_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        !matches!(
            std::env::var("BEVY_DIFFUSION_WINOGRAD").as_deref(),
            Ok("off" | "0" | "false")
        )
    })
}

/// The convolution on slices: `x` `[b, cin, h, w]`, `wt` `[cout, cin*kh*kw]`, `bias`
/// `[b, cout]` (optional), `residual` `[b, cout, oh, ow]` (optional), then a ReLU when `relu`;
/// `out` `[b, cout, oh, ow]`. 3x3 stride-1 convolutions of at least 8 channels and 256 output
/// pixels go through [`super::winograd`] (unless [`winograd_enabled`] is off).
#[allow(clippy::too_many_arguments)]
pub fn conv2d_f32(
    g: &ConvGeom,
    x: &[f32],
    wt: &[f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    relu: bool,
    out: &mut [f32],
) {
    let (oh, ow) = g.out_hw().expect("geometry checked by the caller");
    if winograd_enabled() && super::winograd::applies(g, oh, ow) {
        assert_eq!(x.len(), g.batch * g.cin * g.h * g.w);
        assert_eq!(wt.len(), g.cout * g.cin * 9);
        assert_eq!(out.len(), g.batch * g.cout * oh * ow);
        super::winograd::conv3x3(g, oh, ow, x, wt, bias, residual, relu, out);
        return;
    }
    let k = g.cin * g.kh * g.kw;
    let ohw = oh * ow;
    assert_eq!(x.len(), g.batch * g.cin * g.h * g.w);
    assert_eq!(wt.len(), g.cout * k);
    assert_eq!(out.len(), g.batch * g.cout * ohw);
    let pointwise = g.kh == 1
        && g.kw == 1
        && g.stride == 1
        && g.pad_x == AxisPad::default()
        && g.pad_y == AxisPad::default();
    let threads = rayon::current_num_threads().max(1);
    // Rows of output per tile: as many as the im2col budget allows, then split further (down to
    // MIN_TILE pixels) until there are a few tiles per thread.
    let max_rows = if pointwise {
        oh
    } else {
        (COL_BUDGET / k / ow.max(1)).clamp(1, oh)
    };
    let min_tiles = oh.div_ceil(max_rows);
    let want = (4 * threads).div_ceil(g.batch).max(min_tiles);
    let min_rows = MIN_TILE.div_ceil(ow.max(1)).clamp(1, oh);
    let rows = oh.div_ceil(want).clamp(min_rows.min(max_rows), max_rows);
    let tiles_per_image = oh.div_ceil(rows);
    let total = g.batch * tiles_per_image;
    let ymap = axis_map(g.h, oh, g.kh, g.stride, g.pad_y);
    let xmap = axis_map(g.w, ow, g.kw, g.stride, g.pad_x);
    // Per tap kx: the output range [lo, hi) read directly (no padding, no wrap).
    let xrange: Vec<(usize, usize)> = (0..g.kw)
        .map(|kx| {
            let direct = |ox: usize| {
                let i = (ox * g.stride + kx) as isize - g.pad_x.before as isize;
                (0..g.w as isize).contains(&i)
            };
            let lo = (0..ow).find(|&o| direct(o)).unwrap_or(ow);
            let hi = (lo..ow).find(|&o| !direct(o)).unwrap_or(ow);
            (lo, hi)
        })
        .collect();
    let out_ptr = SendPtr(out.as_mut_ptr());
    let parallel_tiles = total >= threads && threads > 1;
    let run = |tile: usize, par: gemm::Parallelism| {
        let (bi, ti) = (tile / tiles_per_image, tile % tiles_per_image);
        let row0 = ti * rows;
        let nrows = rows.min(oh - row0);
        let t = nrows * ow;
        let dst_off = bi * g.cout * ohw + row0 * ow;
        let dst = out_ptr;
        // Prefill with bias (+ residual) so that the GEMM accumulates onto it.
        let read_dst = bias.is_some() || residual.is_some();
        if read_dst {
            for co in 0..g.cout {
                let off = dst_off + co * ohw;
                // SAFETY: [off, off + t) lies inside `out` and belongs to this tile only.
                let d = unsafe { std::slice::from_raw_parts_mut(dst.0.add(off), t) };
                match residual {
                    Some(r) => d.copy_from_slice(&r[off..off + t]),
                    None => d.fill(0.0),
                }
                if let Some(b) = bias {
                    let bv = b[bi * g.cout + co];
                    d.iter_mut().for_each(|v| *v += bv);
                }
            }
        }
        let x_img = &x[bi * g.cin * g.h * g.w..(bi + 1) * g.cin * g.h * g.w];
        let gemm_call = |rhs: *const f32, rhs_rs: isize| {
            // SAFETY: lhs is [cout, k] row-major, rhs [k, t] with row stride rhs_rs, dst
            // [cout, t] with row stride ohw inside this tile's disjoint columns.
            unsafe {
                gemm::gemm(
                    g.cout,
                    t,
                    k,
                    dst.0.add(dst_off),
                    1,
                    ohw as isize,
                    read_dst,
                    wt.as_ptr(),
                    1,
                    k as isize,
                    rhs,
                    1,
                    rhs_rs,
                    1.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    par,
                )
            }
        };
        let relu_tile = || {
            if relu {
                for co in 0..g.cout {
                    // SAFETY: as for the prefill above: this tile's own output columns.
                    let d =
                        unsafe { std::slice::from_raw_parts_mut(dst.0.add(dst_off + co * ohw), t) };
                    d.iter_mut().for_each(|v| *v = v.max(0.0));
                }
            }
        };
        if pointwise {
            gemm_call(x_img[row0 * ow..].as_ptr(), (g.h * g.w) as isize);
            relu_tile();
            return;
        }
        COL.with(|col| {
            let mut col = col.borrow_mut();
            if col.len() < k * t {
                col.resize(k * t, 0.0);
            }
            fill_col(
                g,
                x_img,
                row0,
                nrows,
                oh,
                ow,
                &ymap,
                &xmap,
                &xrange,
                &mut col[..k * t],
            );
            gemm_call(col.as_ptr(), t as isize);
        });
        relu_tile();
    };
    if parallel_tiles {
        (0..total)
            .into_par_iter()
            .for_each(|tile| run(tile, gemm::Parallelism::None));
    } else {
        let par = if threads > 1 {
            gemm::Parallelism::Rayon(threads)
        } else {
            gemm::Parallelism::None
        };
        (0..total).for_each(|tile| run(tile, par));
    }
}

/// Writes the im2col tile of output rows `[row0, row0 + nrows)` of one image:
/// `col[(ci * kh + ky) * kw + kx][r * ow + ox] = x[ci][ymap(ky, oy)][xmap(kx, ox)]`.
#[allow(clippy::too_many_arguments)]
fn fill_col(
    g: &ConvGeom,
    x_img: &[f32],
    row0: usize,
    nrows: usize,
    oh: usize,
    ow: usize,
    ymap: &[isize],
    xmap: &[isize],
    xrange: &[(usize, usize)],
    col: &mut [f32],
) {
    let t = nrows * ow;
    let (h, w, s) = (g.h, g.w, g.stride);
    for ci in 0..g.cin {
        let plane = &x_img[ci * h * w..(ci + 1) * h * w];
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let kidx = (ci * g.kh + ky) * g.kw + kx;
                let dst = &mut col[kidx * t..(kidx + 1) * t];
                let xm = &xmap[kx * ow..(kx + 1) * ow];
                let (lo, hi) = xrange[kx];
                for r in 0..nrows {
                    let d = &mut dst[r * ow..(r + 1) * ow];
                    let iy = ymap[ky * oh + row0 + r];
                    if iy < 0 {
                        d.fill(0.0);
                        continue;
                    }
                    let src = &plane[iy as usize * w..(iy as usize + 1) * w];
                    for ox in (0..lo).chain(hi..ow) {
                        let ix = xm[ox];
                        d[ox] = if ix < 0 { 0.0 } else { src[ix as usize] };
                    }
                    if hi > lo {
                        let first = (lo * s + kx) - g.pad_x.before;
                        if s == 1 {
                            d[lo..hi].copy_from_slice(&src[first..first + (hi - lo)]);
                        } else {
                            for (j, v) in d[lo..hi].iter_mut().enumerate() {
                                *v = src[first + j * s];
                            }
                        }
                    }
                }
            }
        }
    }
}
