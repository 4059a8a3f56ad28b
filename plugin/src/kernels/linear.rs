//! `y = x W^T + b` as one GEMM over all rows of `x` (`[..., in]` flattened to `[rows, in]`), the
//! weight `[out, in]` read in place as the transposed right operand and the bias written into the
//! output before the GEMM accumulates onto it. candle's `Linear` runs a batched matmul against a
//! broadcast, transposed weight instead.

use candle_core::{Device, Result, Tensor};
use candle_nn::Linear;

use super::profile::{self, OpKind};
use super::{on_cpu_f32, with_opt_slice, with_slice};

/// `linear.forward(x)` for `x` `[..., in]` -> `[..., out]`, through the kernel for f32 CPU
/// tensors (else candle's `Linear`).
pub fn forward(linear: &Linear, x: &Tensor) -> Result<Tensor> {
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
