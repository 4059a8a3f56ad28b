//! The Winograd F(4x4, 3x3) convolution for many channels, as 36 whole-batch GEMMs.
//!
//! The job-wise path of `winograd.rs` keeps one job's transformed input `V` (`36 x cin x
//! tiles`) in L2 and runs every block of output channels over all of it. From a few hundred
//! input channels on, `V` outgrows the caches and is streamed from memory once per block of 6
//! output channels (1.9 GB per job at 1920 -> 640 channels, 32x32), so the microkernel waits on
//! memory: measured 45 GFLOP/s-equivalent at 1920 -> 640 channels against 227 at 320 -> 320.
//! Here the three steps run one after the other over all tiles of a pass, each parallel on its
//! own axis:
//! 1. per input channel: gather and transform its tiles into `V[ci][ξ][tile]`;
//! 2. per position `ξ`: one GEMM `M[ξ] = U[ξ] · V[ξ]` (`[cout, cin] x [cin, tiles]`, the `gemm`
//!    crate's cache-blocked kernel; `U = G g Gᵀ` is `[ξ][cout][cin]`);
//! 3. per output channel: the output transform of `M[co][ξ][tile]`, with bias, residual and
//!    ReLU fused, into the NCHW output.
//!
//! A pass covers whole tile rows; `V` and `M` together are bounded by [`PASS_BYTES`], so large
//! feature maps run in several passes.

use rayon::prelude::*;

use super::super::conv::ConvGeom;
use super::super::{Scratch, SendPtr};
use super::transforms::{input_transform, output_transform, transform_weights_plain};
use super::{Fused, Piece, with_scratch, write_tiles};

/// Upper bound on one pass's `V` + `M` buffers (bytes).
pub(super) const PASS_BYTES: usize = 128 << 20;

/// Which Winograd path runs, from `BEVY_DIFFUSION_WINOGRAD_PATH` (read once; for A/B runs):
/// `jobs` or `batched` force one, anything else (or unset) picks by [`applies`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PathChoice {
    Auto,
    Jobs,
    Batched,
}

fn path_choice() -> PathChoice {
    static CHOICE: std::sync::OnceLock<PathChoice> = std::sync::OnceLock::new();
    *CHOICE.get_or_init(
        || match std::env::var("BEVY_DIFFUSION_WINOGRAD_PATH").as_deref() {
            Ok("jobs") => PathChoice::Jobs,
            Ok("batched") => PathChoice::Batched,
            _ => PathChoice::Auto,
        },
    )
}

/// Whether a convolution with these channel counts takes this path rather than the job-wise
/// one: from 640 input channels on, where one job's transformed input no longer fits the
/// caches (measured on the SD 1.5 UNet's and VAE's shapes, 2 threads: batched/jobs time 0.26x at
/// 1280 -> 640 and 0.39x at 1920 -> 640 on 32x32, 0.31x at 960 -> 320 and 0.8x at 640 -> 320 on
/// 64x64; but 1.3x at 320 -> 320 and 1.2x at 512 -> 512 on 64x64, which stay job-wise).
pub(super) fn applies(cin: usize, cout: usize) -> bool {
    match path_choice() {
        PathChoice::Jobs => false,
        PathChoice::Batched => true,
        PathChoice::Auto => cin >= 640 && cout >= 16,
    }
}

/// The convolution, same contract as `winograd::conv3x3`; `maps` are its padded row / column
/// maps (stored index per padded position, -1 = zero); passes of whole tile rows whose `V` and
/// `M` take at most `pass_bytes` (at least one tile row per pass).
#[allow(clippy::too_many_arguments)]
pub(super) fn conv3x3(
    g: &ConvGeom,
    up: usize,
    oh: usize,
    ow: usize,
    (ymap, xmap): (&[isize], &[isize]),
    x: &[f32],
    wt: &[f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    relu: bool,
    out: &mut [f32],
    pass_bytes: usize,
) {
    let (cin, cout) = (g.cin, g.cout);
    let (sh, sw) = (g.h / up, g.w / up);
    let (th, tw) = (oh.div_ceil(4), ow.div_ceil(4));
    let ohw = oh * ow;
    let u = transform_weights_plain(wt, cout, cin);
    // Tile rows of the whole batch: row r is tile row r % th of image r / th.
    let all_rows = g.batch * th;
    if all_rows == 0 || cout == 0 {
        return;
    }
    let row_bytes = 36 * (cin + cout) * tw * 4;
    let per_pass = (pass_bytes / row_bytes.max(1)).clamp(1, all_rows);
    let first_pass = per_pass * tw;
    // Reused buffers (stale contents): every pass writes all of its `V` (the input transform
    // covers each tile of its rows at every position) and all of its `M` (the GEMMs overwrite).
    let mut v = Scratch::new(36 * cin * first_pass);
    let mut m = Scratch::new(36 * cout * first_pass);
    let out_ptr = SendPtr(out.as_mut_ptr());
    for r0 in (0..all_rows).step_by(per_pass) {
        let r1 = (r0 + per_pass).min(all_rows);
        let nt = (r1 - r0) * tw;
        let (v, m) = (&mut v[..36 * cin * nt], &mut m[..36 * cout * nt]);
        // 1. V[ci][ξ][t], t = (r - r0) tw + tx.
        v.par_chunks_mut(36 * nt).enumerate().for_each(|(ci, vc)| {
            with_scratch(tw, |s| {
                for r in r0..r1 {
                    let (bi, ty) = (r / th, r % th);
                    let plane = &x[(bi * cin + ci) * sh * sw..][..sh * sw];
                    let piece = Piece::new(g, ymap, xmap, ty, 0, tw);
                    piece.gather(plane, sw, up, &mut s.line, &mut s.pad);
                    input_transform(&s.pad, tw, 0, &mut s.rows, vc, (r - r0) * tw, nt);
                }
            })
        });
        // 2. M[co][ξ][t] = Σ_ci U[ξ][co][ci] V[ci][ξ][t].
        let m_ptr = SendPtr(m.as_mut_ptr());
        let (u, v) = (&u, &*v);
        (0..36).into_par_iter().for_each(|xi| {
            let stride = (36 * nt) as isize;
            // SAFETY: dst M[.][ξ][.] is [cout, nt] at row stride 36 nt, written by the task of
            // ξ only; lhs U[ξ] is row-major [cout, cin]; rhs V[.][ξ][.] is [cin, nt] at row
            // stride 36 nt. Every index stays inside m, u and v (sized above).
            unsafe {
                gemm::gemm(
                    cout,
                    nt,
                    cin,
                    m_ptr.get().add(xi * nt),
                    1,
                    stride,
                    false,
                    u.as_ptr().add(xi * cout * cin),
                    1,
                    cin as isize,
                    v.as_ptr().add(xi * nt),
                    1,
                    stride,
                    0.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                )
            }
        });
        // 3. The output transform per output channel.
        m.par_chunks(36 * nt).enumerate().for_each(|(co, mc)| {
            with_scratch(tw, |s| {
                for r in r0..r1 {
                    let (bi, ty) = (r / th, r % th);
                    output_transform(mc, (r - r0) * tw, nt, tw, &mut s.t, &mut s.out_row);
                    let bias = bias.map_or(0.0, |b| b[bi * cout + co]);
                    let fused = Fused {
                        bias,
                        residual,
                        relu,
                    };
                    let plane = (bi * cout + co) * ohw;
                    // SAFETY: channel (bi, co) is written by the task of `co` only.
                    unsafe {
                        write_tiles(out_ptr, plane, (oh, ow), (ty, 0, tw), &s.out_row, fused)
                    };
                }
            })
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::conv::{AxisPad, ConvGeom};
    use super::super::padded_maps;

    /// Deterministic values in [-1, 1).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// The direct 3x3 stride-1 convolution, read through the nearest `up`x upsampling.
    #[allow(clippy::too_many_arguments)]
    fn naive(
        g: &ConvGeom,
        up: usize,
        x: &[f32],
        wt: &[f32],
        bias: &[f32],
        residual: Option<&[f32]>,
        relu: bool,
        (oh, ow): (usize, usize),
    ) -> Vec<f32> {
        let (sh, sw) = (g.h / up, g.w / up);
        let at = |i: isize, n: usize, p: AxisPad| -> Option<usize> {
            let i = i - p.before as isize;
            if (0..n as isize).contains(&i) {
                Some(i as usize)
            } else if p.circular {
                Some(i.rem_euclid(n as isize) as usize)
            } else {
                None
            }
        };
        let mut out = vec![0f32; g.batch * g.cout * oh * ow];
        for b in 0..g.batch {
            for co in 0..g.cout {
                for y in 0..oh {
                    for xo in 0..ow {
                        let mut acc = bias[b * g.cout + co] as f64;
                        for ci in 0..g.cin {
                            for ky in 0..3 {
                                for kx in 0..3 {
                                    let iy = at((y + ky) as isize, g.h, g.pad_y);
                                    let ix = at((xo + kx) as isize, g.w, g.pad_x);
                                    if let (Some(iy), Some(ix)) = (iy, ix) {
                                        let v = x[((b * g.cin + ci) * sh + iy / up) * sw + ix / up];
                                        let w = wt[((co * g.cin + ci) * 3 + ky) * 3 + kx];
                                        acc += (v * w) as f64;
                                    }
                                }
                            }
                        }
                        let i = ((b * g.cout + co) * oh + y) * ow + xo;
                        let v = acc as f32 + residual.map_or(0.0, |r| r[i]);
                        out[i] = if relu { v.max(0.0) } else { v };
                    }
                }
            }
        }
        out
    }

    /// The batched path against the direct convolution: one and several passes (a ragged last
    /// one), batch 2, sizes not a multiple of 4, zero / circular / asymmetric padding per axis,
    /// the upsampled read, per-sample bias, residual and ReLU.
    #[test]
    fn batched_winograd_matches_the_direct_convolution() {
        let pad = |before, after, circular| AxisPad {
            before,
            after,
            circular,
        };
        let cases = [
            // (batch, cin, cout, h, w, up, pad_y, pad_x, residual, relu)
            (
                2,
                9,
                7,
                10,
                13,
                1,
                pad(1, 1, false),
                pad(1, 1, true),
                true,
                false,
            ),
            (
                1,
                5,
                3,
                11,
                6,
                1,
                pad(0, 1, false),
                pad(2, 2, false),
                false,
                true,
            ),
            (
                2,
                4,
                6,
                12,
                10,
                2,
                pad(1, 1, true),
                pad(1, 1, false),
                true,
                true,
            ),
        ];
        for (i, &(batch, cin, cout, h, w, up, pad_y, pad_x, with_res, relu)) in
            cases.iter().enumerate()
        {
            let g = ConvGeom {
                batch,
                cin,
                h,
                w,
                cout,
                kh: 3,
                kw: 3,
                stride: 1,
                pad_y,
                pad_x,
            };
            let (oh, ow) = g.out_hw().expect("valid geometry");
            let x = values(batch * cin * (h / up) * (w / up), 1 + i as u64);
            let wt = values(cout * cin * 9, 100 + i as u64);
            let bias = values(batch * cout, 200 + i as u64);
            let res = with_res.then(|| values(batch * cout * oh * ow, 300 + i as u64));
            let want = naive(&g, up, &x, &wt, &bias, res.as_deref(), relu, (oh, ow));
            let (th, tw) = (oh.div_ceil(4), ow.div_ceil(4));
            let (ymap, xmap) = padded_maps(&g, up, th, tw);
            let row_bytes = 36 * (cin + cout) * tw * 4;
            // One pass; one tile row per pass; four rows per pass (with 3 tile rows per image
            // the first pass spans two images, and with 6 rows in all the last one is short).
            for pass in [usize::MAX / 2, 1, 4 * row_bytes] {
                let mut got = vec![f32::NAN; want.len()];
                super::conv3x3(
                    &g,
                    up,
                    oh,
                    ow,
                    (&ymap, &xmap),
                    &x,
                    &wt,
                    Some(&bias),
                    res.as_deref(),
                    relu,
                    &mut got,
                    pass,
                );
                let err = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(err < 1e-4, "case {i}, pass budget {pass}: max error {err}");
            }
        }
    }
}
