//! `y = x W^T + b` as one GEMM over all rows of `x` (`[..., in]` flattened to `[rows, in]`), the
//! weight `[out, in]` read in place as the transposed right operand and the bias written into the
//! output before the GEMM accumulates onto it. candle's `Linear` runs a batched matmul against a
//! broadcast, transposed weight instead.
//!
//! A bf16 weight (loaded so for a bf16 request, see `crate::precision`) goes through
//! [`super::bf16::gemm`] in [`forward`] and [`forward_residual`] (and so in the fallbacks of the
//! others), with `x` rounded to bf16 and f32 accumulation; without a bf16 kernel it is widened
//! to f32 at each call (correct, slower). [`forward_geglu`] fuses the GEGLU projection with its
//! GELU product in both dtypes.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::Linear;
use rayon::prelude::*;

use super::profile::{self, OpKind};
use super::{on_cpu_f32, simd, with_opt_slice, with_slice};

/// `linear.forward(x)` for `x` `[..., in]` -> `[..., out]`, through the kernel for f32 CPU
/// tensors (else candle's `Linear`).
pub fn forward(linear: &Linear, x: &Tensor) -> Result<Tensor> {
    if linear.weight().dtype() == DType::BF16 {
        return forward_bf16(linear, x, None);
    }
    profile::timed(OpKind::Matmul, || {
        let w = linear.weight();
        let b = linear.bias();
        if !(on_cpu_f32(x) && on_cpu_f32(w) && b.is_none_or(on_cpu_f32)) {
            return candle_core::Module::forward(linear, x);
        }
        let (out_dim, in_dim) = w.dims2()?;
        let dims = x.dims();
        if dims.last() != Some(&in_dim) {
            candle_core::bail!(
                "linear: input {:?} for a [{out_dim}, {in_dim}] weight",
                dims
            );
        }
        let rows = x.elem_count() / in_dim.max(1);
        let mut shape = dims.to_vec();
        *shape.last_mut().expect("rank >= 1") = out_dim;
        let mut out = vec![0f32; rows * out_dim];
        if !out.is_empty() {
            with_slice(x, |xs| {
                with_slice(w, |ws| {
                    with_opt_slice(b, |bs| {
                        if let Some(bs) = bs {
                            for row in out.chunks_mut(out_dim) {
                                row.copy_from_slice(bs);
                            }
                        }
                        let threads = rayon::current_num_threads();
                        let par = if threads > 1 && rows * out_dim * in_dim > 1 << 16 {
                            gemm::Parallelism::Rayon(threads)
                        } else {
                            gemm::Parallelism::None
                        };
                        // SAFETY: dst [rows, out] row-major, lhs [rows, in] row-major, rhs the
                        // [in, out] transpose of the row-major [out, in] weight.
                        unsafe {
                            gemm::gemm(
                                rows,
                                out_dim,
                                in_dim,
                                out.as_mut_ptr(),
                                1,
                                out_dim as isize,
                                bs.is_some(),
                                xs.as_ptr(),
                                1,
                                in_dim as isize,
                                ws.as_ptr(),
                                in_dim as isize,
                                1,
                                1.0f32,
                                1.0f32,
                                false,
                                false,
                                false,
                                par,
                            )
                        };
                        Ok(())
                    })
                })
            })?;
        }
        Tensor::from_vec(out, shape, &Device::Cpu)
    })
}

/// diffusers' `GEGLU` with its projection fused: `x` `[..., in]` -> `[..., inner]` =
/// `h[..., :inner] * gelu_erf(h[..., inner:])` for `h = linear(x)` (`[..., 2 * inner]`, exact
/// erf GELU). Runs per block of rows (one single-threaded GEMM into a block buffer, then the
/// GELU product), so the `2 * inner`-wide projection (84 MB at SD 1.5's 64x64 level, batch 2)
/// never exists whole: that write, its page faults and the re-read made the unfused projection
/// run at 60 GFLOP/s against 90 for the other linear layers of the same size. Errors when the
/// projection's width is odd or `x`'s last axis does not match. A bf16 weight runs the same
/// plan through the bf16 kernel (`forward_geglu_bf16`); other devices / dtypes run `linear`
/// then `elementwise::geglu`.
pub fn forward_geglu(linear: &Linear, x: &Tensor) -> Result<Tensor> {
    let w = linear.weight();
    let b = linear.bias();
    if w.dtype() == DType::BF16 {
        return forward_geglu_bf16(linear, x);
    }
    if !(on_cpu_f32(x) && on_cpu_f32(w) && b.is_none_or(on_cpu_f32)) {
        return super::elementwise::geglu(&forward(linear, x)?);
    }
    profile::timed(OpKind::Matmul, || {
        let (width, in_dim) = w.dims2()?;
        // Without a bias the buffers are zeros and the GEMM overwrites them, as before the frame
        // was shared.
        let has_bias = b.is_some();
        with_slice(w, |ws| {
            // Stripes in multiples of 16 (the `gemm` crate's column blocks).
            geglu_tasks(x, b, (width, in_dim), 16, |xb, w0, cw, buf| {
                let g = Gemm {
                    rows: xb.len() / in_dim,
                    in_dim,
                    out_dim: cw,
                    x: xb.as_ptr(),
                    x_rs: in_dim as isize,
                    x_cs: 1,
                    dst_rs: cw as isize,
                    dst_cs: 1,
                };
                // SAFETY: the block's rows of x ([n, in]) times weight rows [w0, w0 + cw)
                // ([width, in]) into buf ([n, cw], holding the bias when there is one).
                unsafe {
                    g.run_with(
                        &ws[w0 * in_dim..(w0 + cw) * in_dim],
                        buf.as_mut_ptr(),
                        has_bias,
                        false,
                    )
                };
                Ok(())
            })
        })
    })
}

/// The fused GEGLU's frame, shared by the f32 and bf16 projections: checks `x` `[..., in]`
/// against the `[width, in]` projection (`width` even), then runs tasks of blocks of rows x
/// stripes of the inner columns (stripes in multiples of `align`) and writes `[..., width / 2]`.
/// Each task fills two `[n, cw]` buffers with the stripe's bias (or zeros), has `project(xb,
/// w0, cw, buf)` add `xb · W[w0..w0 + cw]ᵀ` onto each (`xb`: the block's `n` rows of `x`; `w0`:
/// the stripe's first hidden column, then its first gate column), then writes the exact-erf
/// GELU product. Blocks of 256-1024 rows, ~2 per thread (measured at SD 1.5's three levels,
/// batch 2: fewer, larger blocks won); where that leaves fewer blocks than threads (256 rows at
/// the 16x16 level, batch 1, with a [10240, 1280] weight) the columns are split as well. Each
/// task's GEMM packs its operands again: row blocks repeat the weight's packing, stripes `x`'s.
fn geglu_tasks(
    x: &Tensor,
    b: Option<&Tensor>,
    (width, in_dim): (usize, usize),
    align: usize,
    project: impl Fn(&[f32], usize, usize, &mut [f32]) -> Result<()> + Sync,
) -> Result<Tensor> {
    let dims = x.dims();
    if dims.last() != Some(&in_dim) || width % 2 != 0 {
        candle_core::bail!(
            "GEGLU: input {:?} for a [{width}, {in_dim}] projection",
            dims
        );
    }
    let inner = width / 2;
    let rows = x.elem_count() / in_dim.max(1);
    let mut shape = dims.to_vec();
    *shape.last_mut().expect("rank >= 1") = inner;
    let mut out = vec![0f32; rows * inner];
    if out.is_empty() {
        return Tensor::from_vec(out, shape, &Device::Cpu);
    }
    let threads = rayon::current_num_threads().max(1);
    let block = (rows / (2 * threads)).clamp(256, 1024).min(rows);
    let row_blocks = rows.div_ceil(block);
    let stripe = inner
        .div_ceil(threads.div_ceil(row_blocks))
        .next_multiple_of(align)
        .min(inner);
    let stripes = inner.div_ceil(stripe);
    let out_ptr = super::SendPtr(out.as_mut_ptr());
    with_slice(x, |xs| {
        with_opt_slice(b, |bs| {
            (0..row_blocks * stripes).into_par_iter().try_for_each_init(
                || (Vec::new(), Vec::new()),
                |(hidden, gate): &mut (Vec<f32>, Vec<f32>), task| {
                    let (rb, sj) = (task / stripes, task % stripes);
                    let (r0, c0) = (rb * block, sj * stripe);
                    let (n, cw) = (block.min(rows - r0), stripe.min(inner - c0));
                    let xb = &xs[r0 * in_dim..(r0 + n) * in_dim];
                    for (buf, w0) in [(&mut *hidden, c0), (&mut *gate, inner + c0)] {
                        buf.clear();
                        match bs {
                            Some(bs) => {
                                for _ in 0..n {
                                    buf.extend_from_slice(&bs[w0..w0 + cw]);
                                }
                            }
                            None => buf.resize(n * cw, 0.0),
                        }
                        project(xb, w0, cw, buf)?;
                    }
                    for (r, (h, g)) in hidden.chunks(cw).zip(gate.chunks(cw)).enumerate() {
                        // SAFETY: row r0 + r, columns [c0, c0 + cw) of out ([rows, inner])
                        // belong to this task only.
                        let orow = unsafe {
                            std::slice::from_raw_parts_mut(
                                out_ptr.get().add((r0 + r) * inner + c0),
                                cw,
                            )
                        };
                        simd::geglu(orow, h, g);
                    }
                    Ok(())
                },
            )
        })
    })?;
    Tensor::from_vec(out, shape, &Device::Cpu)
}

/// [`forward_geglu`] for a bf16 `[2 * inner, in]` projection (a bf16 load keeps `ff.net.0.proj`
/// in bf16): `x` `[..., in]` f32 -> `[..., inner]` f32, fused like the f32 path
/// ([`geglu_tasks`]): the stripe's hidden and gate columns go through
/// [`super::bf16::gemm_on_this_thread`] into the task's two block buffers, then the exact-erf
/// GELU product; the `2 * inner`-wide projection is never written whole (unfused it cost an 84
/// MB write and re-read at SD 1.5's 64x64 level, batch 2, and a separate elementwise pass). With
/// the AVX-512 BF16 kernel and the emulation the values are exactly those of the unfused
/// `forward` then `elementwise::geglu` (each output is its own accumulator, the same sum in the
/// same order); with the AMX kernel they agree within f32 rounding (its full 32x32 blocks
/// accumulate onto the bias per slice of `k`, its edge blocks add a finished sum, and fusing
/// moves the block edges). Without a bf16 kernel (or off the CPU) it runs unfused, the weight
/// widened to f32 as in `forward`.
fn forward_geglu_bf16(linear: &Linear, x: &Tensor) -> Result<Tensor> {
    let (w, b) = (linear.weight(), linear.bias());
    let kernel = super::bf16::kernel()
        .filter(|_| w.device().is_cpu() && on_cpu_f32(x) && b.is_none_or(on_cpu_f32));
    let Some(kernel) = kernel else {
        return super::elementwise::geglu(&forward(linear, x)?);
    };
    profile::timed(OpKind::Matmul, || {
        let (width, in_dim) = w.dims2()?;
        super::with_bf16_slice(w, |ws| {
            // Stripes in multiples of the bf16 microkernel's channel count.
            geglu_tasks(x, b, (width, in_dim), super::bf16::MR, |xb, w0, cw, buf| {
                let n = xb.len() / in_dim;
                let wb = &ws[w0 * in_dim..(w0 + cw) * in_dim];
                super::bf16::gemm_on_this_thread(kernel, n, in_dim, cw, xb, wb, buf)
                    .map_err(candle_core::Error::Msg)
            })
        })
    })
}

/// `linear.forward(x) + residual` with the residual (and bias) written into the output first:
/// `x` `[..., in]`, `residual` `[..., out]` -> `[..., out]`.
pub fn forward_residual(linear: &Linear, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
    if linear.weight().dtype() == DType::BF16 {
        return forward_bf16(linear, x, Some(residual));
    }
    profile::timed(OpKind::Matmul, || {
        let w = linear.weight();
        let b = linear.bias();
        if !(on_cpu_f32(x) && on_cpu_f32(w) && b.is_none_or(on_cpu_f32) && on_cpu_f32(residual)) {
            return candle_core::Module::forward(linear, x)? + residual;
        }
        let (out_dim, in_dim) = w.dims2()?;
        let rows = x.elem_count() / in_dim.max(1);
        let mut shape = x.dims().to_vec();
        *shape.last_mut().expect("rank >= 1") = out_dim;
        if x.dims().last() != Some(&in_dim) || residual.dims() != shape.as_slice() {
            candle_core::bail!(
                "linear: input {:?}, residual {:?} for a [{out_dim}, {in_dim}] weight",
                x.dims(),
                residual.dims()
            );
        }
        let mut out = with_slice(residual, |r| Ok(r.to_vec()))?;
        with_slice(x, |xs| {
            with_slice(w, |ws| {
                with_opt_slice(b, |bs| {
                    if let Some(bs) = bs {
                        add_bias(&mut out, bs);
                    }
                    let g = Gemm {
                        rows,
                        in_dim,
                        out_dim,
                        x: xs.as_ptr(),
                        x_rs: in_dim as isize,
                        x_cs: 1,
                        dst_rs: out_dim as isize,
                        dst_cs: 1,
                    };
                    // SAFETY: shapes checked above; out holds rows x out_dim floats.
                    unsafe { g.run(ws, out.as_mut_ptr(), true) };
                    Ok(())
                })
            })
        })?;
        Tensor::from_vec(out, shape, &Device::Cpu)
    })
}

/// [`forward`] (`residual` `None`) or [`forward_residual`] for a bf16 `[out, in]` weight: `x`
/// `[..., in]` f32 -> `[..., out]` f32 through [`super::bf16::gemm`]. Without a bf16 kernel
/// ([`super::bf16::kernel`] `None`, the kernels off, or tensors off the CPU / not f32) the weight
/// is widened to f32 and the f32 path runs.
fn forward_bf16(linear: &Linear, x: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
    let (w, b) = (linear.weight(), linear.bias());
    let kernel = super::bf16::kernel().filter(|_| {
        w.device().is_cpu()
            && on_cpu_f32(x)
            && b.is_none_or(on_cpu_f32)
            && residual.is_none_or(on_cpu_f32)
    });
    let Some(kernel) = kernel else {
        // An f32 weight: `forward` cannot come back here.
        let widened = Linear::new(w.to_dtype(DType::F32)?, b.cloned());
        return match residual {
            Some(r) => forward_residual(&widened, x, r),
            None => forward(&widened, x),
        };
    };
    profile::timed(OpKind::Matmul, || {
        let (out_dim, in_dim) = w.dims2()?;
        let rows = x.elem_count() / in_dim.max(1);
        let mut shape = x.dims().to_vec();
        *shape.last_mut().expect("rank >= 1") = out_dim;
        if x.dims().last() != Some(&in_dim) || residual.is_some_and(|r| r.dims() != shape) {
            candle_core::bail!(
                "linear: input {:?}, residual {:?} for a [{out_dim}, {in_dim}] weight",
                x.dims(),
                residual.map(|r| r.dims().to_vec())
            );
        }
        let mut out = match residual {
            Some(r) => with_slice(r, |r| Ok(r.to_vec()))?,
            None => vec![0f32; rows * out_dim],
        };
        with_opt_slice(b, |bs| {
            if let Some(bs) = bs {
                add_bias(&mut out, bs);
            }
            Ok(())
        })?;
        with_slice(x, |xs| {
            super::with_bf16_slice(w, |ws| {
                super::bf16::gemm(kernel, rows, in_dim, out_dim, xs, ws, &mut out)
                    .map_err(candle_core::Error::Msg)
            })
        })?;
        Tensor::from_vec(out, shape, &Device::Cpu)
    })
}

/// Adds the bias `bs` (`[out]`) onto every row of `out` (`[rows, out]`).
fn add_bias(out: &mut [f32], bs: &[f32]) {
    for row in out.chunks_mut(bs.len()) {
        row.iter_mut().zip(bs).for_each(|(o, b)| *o += b);
    }
}

/// `proj_in` of a `Transformer2DModel` straight from the feature map: `x` `[b, c, h, w]` ->
/// tokens `[b, h*w, out]` (= `linear(x.permute(0, 2, 3, 1).reshape(b, h*w, c))`, without the
/// permuted copy: the GEMM reads `x` with the transposed strides).
pub fn forward_from_nchw(linear: &Linear, x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let hw = h * w;
    let (wt, bias) = (linear.weight(), linear.bias());
    if !(on_cpu_f32(x) && on_cpu_f32(wt) && bias.is_none_or(on_cpu_f32)) {
        let tokens = profile::timed(OpKind::Elementwise, || {
            x.permute((0, 2, 3, 1))?.reshape((b, hw, c))
        })?;
        return forward(linear, &tokens);
    }
    profile::timed(OpKind::Matmul, || {
        let (out_dim, in_dim) = wt.dims2()?;
        if in_dim != c {
            candle_core::bail!("linear: {c} channels for a [{out_dim}, {in_dim}] weight");
        }
        let mut out = vec![0f32; b * hw * out_dim];
        with_slice(x, |xs| {
            with_slice(wt, |ws| {
                with_opt_slice(bias, |bs| {
                    if let Some(bs) = bs {
                        for row in out.chunks_mut(out_dim) {
                            row.copy_from_slice(bs);
                        }
                    }
                    for bi in 0..b {
                        let g = Gemm {
                            rows: hw,
                            in_dim,
                            out_dim,
                            x: xs[bi * c * hw..].as_ptr(),
                            x_rs: 1,
                            x_cs: hw as isize,
                            dst_rs: out_dim as isize,
                            dst_cs: 1,
                        };
                        // SAFETY: image bi of x is [c, hw]; its tokens fill out[bi].
                        unsafe { g.run(ws, out[bi * hw * out_dim..].as_mut_ptr(), bs.is_some()) };
                    }
                    Ok(())
                })
            })
        })?;
        Tensor::from_vec(out, (b, hw, out_dim), &Device::Cpu)
    })
}

/// `proj_out` of a `Transformer2DModel` straight into the feature map, residual included:
/// tokens `[b, h*w, in]`, `residual` `[b, out, h, w]` -> `[b, out, h, w]`
/// (= `linear(tokens).reshape(b, h, w, out).permute(0, 3, 1, 2) + residual`).
pub fn forward_to_nchw(linear: &Linear, tokens: &Tensor, residual: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = residual.dims4()?;
    let hw = h * w;
    let (wt, bias) = (linear.weight(), linear.bias());
    if !(on_cpu_f32(tokens)
        && on_cpu_f32(wt)
        && bias.is_none_or(on_cpu_f32)
        && on_cpu_f32(residual))
    {
        let out = forward(linear, tokens)?;
        return profile::timed(OpKind::Elementwise, || {
            out.reshape((b, h, w, c))?.permute((0, 3, 1, 2))? + residual
        });
    }
    profile::timed(OpKind::Matmul, || {
        let (out_dim, in_dim) = wt.dims2()?;
        if out_dim != c || tokens.dims() != [b, hw, in_dim] {
            candle_core::bail!(
                "linear: tokens {:?}, residual {:?} for a [{out_dim}, {in_dim}] weight",
                tokens.dims(),
                residual.dims()
            );
        }
        let mut out = with_slice(residual, |r| Ok(r.to_vec()))?;
        with_slice(tokens, |ts| {
            with_slice(wt, |ws| {
                with_opt_slice(bias, |bs| {
                    if let Some(bs) = bs {
                        for (i, plane) in out.chunks_mut(hw).enumerate() {
                            let bv = bs[i % c];
                            plane.iter_mut().for_each(|v| *v += bv);
                        }
                    }
                    for bi in 0..b {
                        let g = Gemm {
                            rows: hw,
                            in_dim,
                            out_dim,
                            x: ts[bi * hw * in_dim..].as_ptr(),
                            x_rs: in_dim as isize,
                            x_cs: 1,
                            dst_rs: 1,
                            dst_cs: hw as isize,
                        };
                        // SAFETY: out[bi] is [c, hw], written with token p at column p.
                        unsafe { g.run(ws, out[bi * c * hw..].as_mut_ptr(), true) };
                    }
                    Ok(())
                })
            })
        })?;
        Tensor::from_vec(out, (b, c, h, w), &Device::Cpu)
    })
}

/// `dst[r, o] (+)= sum_i x[r, i] * w[o, i]` with explicit strides for `x` and `dst`.
struct Gemm {
    rows: usize,
    in_dim: usize,
    out_dim: usize,
    x: *const f32,
    x_rs: isize,
    x_cs: isize,
    dst_rs: isize,
    dst_cs: isize,
}

impl Gemm {
    /// # Safety
    /// `x` and `dst` must address `rows` x `in_dim` / `rows` x `out_dim` floats at their strides;
    /// `w` is the row-major `[out_dim, in_dim]` weight.
    unsafe fn run(&self, w: &[f32], dst: *mut f32, accumulate: bool) {
        unsafe { self.run_with(w, dst, accumulate, true) }
    }

    /// [`Gemm::run`], multi-threaded only when `parallel` (and the product is large enough).
    ///
    /// # Safety
    /// As for [`Gemm::run`].
    unsafe fn run_with(&self, w: &[f32], dst: *mut f32, accumulate: bool, parallel: bool) {
        let threads = rayon::current_num_threads();
        let par = if parallel && threads > 1 && self.rows * self.out_dim * self.in_dim > 1 << 16 {
            gemm::Parallelism::Rayon(threads)
        } else {
            gemm::Parallelism::None
        };
        unsafe {
            gemm::gemm(
                self.rows,
                self.out_dim,
                self.in_dim,
                dst,
                self.dst_cs,
                self.dst_rs,
                accumulate,
                self.x,
                self.x_cs,
                self.x_rs,
                w.as_ptr(),
                self.in_dim as isize,
                1,
                1.0f32,
                1.0f32,
                false,
                false,
                false,
                par,
            )
        }
    }
}
