//! Parallel elementwise kernels for large `f32` CPU tensors: nearest-neighbour 2x upsampling,
//! GEGLU, SiLU. Each falls back to candle's ops on other devices / dtypes.

use candle_core::{D, Device, Result, Tensor};
use rayon::prelude::*;

use super::profile::{self, OpKind};
use super::{on_cpu_f32, simd, with_slice};

/// Elements per parallel chunk of the flat kernels.
const CHUNK: usize = 1 << 14;

/// `[b, c, h, w]` -> `[b, c, oh, ow]` by nearest neighbour (PyTorch `interpolate(mode="nearest")`:
/// source index `floor(dst * in / out)`). The exact-2x case is a parallel row-doubling copy.
pub fn upsample_nearest2d(x: &Tensor, oh: usize, ow: usize) -> Result<Tensor> {
    profile::timed(OpKind::Upsample, || upsample_inner(x, oh, ow))
}

fn upsample_inner(x: &Tensor, oh: usize, ow: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if !on_cpu_f32(x) || oh != 2 * h || ow != 2 * w {
        return x.upsample_nearest2d(oh, ow);
    }
    let mut out = super::zeroed(b * c * oh * ow);
    with_slice(x, |xs| {
        out.par_chunks_mut(oh * ow)
            .zip(xs.par_chunks(h * w))
            .for_each(|(o, p)| {
                for y in 0..h {
                    let src = &p[y * w..(y + 1) * w];
                    let (r0, r1) = o[2 * y * ow..(2 * y + 2) * ow].split_at_mut(ow);
                    for (d, &v) in r0.chunks_exact_mut(2).zip(src) {
                        d[0] = v;
                        d[1] = v;
                    }
                    r1.copy_from_slice(r0);
                }
            });
        Ok(())
    })?;
    Tensor::from_vec(out, (b, c, oh, ow), &Device::Cpu)
}

/// diffusers `GEGLU` after its projection: `h` `[..., 2 * inner]` -> `[..., inner]` =
/// `h[..., :inner] * gelu_erf(h[..., inner:])` (exact erf GELU).
pub fn geglu(h: &Tensor) -> Result<Tensor> {
    profile::timed(OpKind::Elementwise, || geglu_inner(h))
}

fn geglu_inner(h: &Tensor) -> Result<Tensor> {
    let last = h.dim(D::Minus1)?;
    if last % 2 != 0 {
        candle_core::bail!("GEGLU input width {last} is odd");
    }
    let inner = last / 2;
    if !on_cpu_f32(h) {
        let hidden = h.narrow(D::Minus1, 0, inner)?;
        let gate = h.narrow(D::Minus1, inner, inner)?.gelu_erf()?;
        return hidden * gate;
    }
    let mut shape = h.dims().to_vec();
    *shape.last_mut().expect("rank >= 1") = inner;
    let rows = h.elem_count() / last.max(1);
    let mut out = vec![0f32; rows * inner];
    if inner > 0 {
        with_slice(h, |hs| {
            let rows_per = (CHUNK / inner).max(1);
            out.par_chunks_mut(rows_per * inner)
                .zip(hs.par_chunks(rows_per * last))
                .for_each(|(o, hr)| {
                    for (orow, hrow) in o.chunks_mut(inner).zip(hr.chunks(last)) {
                        simd::geglu(orow, &hrow[..inner], &hrow[inner..]);
                    }
                });
            Ok(())
        })?;
    }
    Tensor::from_vec(out, shape, &Device::Cpu)
}

/// `silu(x)`, in parallel chunks.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    profile::timed(OpKind::Elementwise, || silu_inner(x))
}

fn silu_inner(x: &Tensor) -> Result<Tensor> {
    if !on_cpu_f32(x) {
        return x.silu();
    }
    let mut out = with_slice(x, |xs| Ok(xs.to_vec()))?;
    out.par_chunks_mut(CHUNK).for_each(simd::silu_inplace);
    Tensor::from_vec(out, x.dims(), &Device::Cpu)
}
