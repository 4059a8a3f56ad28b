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
//! 2. per position `ξ` and chunk of tiles (its `V` columns ~256 KB, in L2): the GEMM
//!    `M[ξ] = U[ξ] · V[ξ]` (`[cout, cin] x [cin, tiles]`) by the register-blocked microkernel of
//!    `kernels/micro.rs` (AVX-512 where the CPU has it), one block of [`MR`] output channels at a
//!    time, `U = G g Gᵀ` packed `[ξ][cout block][cin][MR]` as on the job-wise path;
//! 3. per output channel: the output transform of `M[co][ξ][tile]`, with bias, residual and
//!    ReLU fused, into the NCHW output.
//!
//! A pass covers whole tile rows; `V` and `M` together are bounded by [`PASS_BYTES`], so large
//! feature maps run in several passes. Within a pass the tiles are padded to a multiple of
//! [`NR`] (zero columns of `V`; the matching columns of `M` are never read).

use rayon::prelude::*;

use super::super::conv::ConvGeom;
use super::super::micro::{MR, NR, micro_cols_ptr};
use super::super::{Scratch, SendPtr};
use super::transforms::{input_transform, output_transform, transform_weights};
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
    // Tile rows of the whole batch: row r is tile row r % th of image r / th.
    let all_rows = g.batch * th;
    if all_rows == 0 || cout == 0 {
        return;
    }
    let u = transform_weights(wt, cout, cin);
    let row_bytes = 36 * (cin + cout) * tw * 4;
    let per_pass = (pass_bytes / row_bytes.max(1)).clamp(1, all_rows);
    let first_pass = (per_pass * tw).next_multiple_of(NR);
    // Tiles per GEMM task: V's columns of one chunk (cin x chunk floats) ~256 KB, so that they
    // stay in L2 while every block of output channels runs over them; a multiple of 2 NR.
    let chunk = ((64 << 10) / cin.max(1))
        .next_multiple_of(2 * NR)
        .max(2 * NR);
    // Reused buffers (stale contents): every pass writes all of its `V` (the input transform
    // covers each tile of its rows at every position) and all of its `M` (the GEMMs overwrite).
    let mut v = Scratch::new(36 * cin * first_pass);
    let mut m = Scratch::new(36 * cout * first_pass);
    let out_ptr = SendPtr(out.as_mut_ptr());
    for r0 in (0..all_rows).step_by(per_pass) {
        let r1 = (r0 + per_pass).min(all_rows);
        let nt = (r1 - r0) * tw;
        // Tiles padded to whole microkernel columns: the GEMMs run over ntp, zeros past nt.
        let ntp = nt.next_multiple_of(NR);
        let (v, m) = (&mut v[..36 * cin * ntp], &mut m[..36 * cout * ntp]);
        // 1. V[ci][ξ][t], t = (r - r0) tw + tx; the pass's last row also zeroes [nt, ntp).
        v.par_chunks_mut(36 * ntp).enumerate().for_each(|(ci, vc)| {
            with_scratch(tw, |s| {
                for r in r0..r1 {
                    let (bi, ty) = (r / th, r % th);
                    let plane = &x[(bi * cin + ci) * sh * sw..][..sh * sw];
                    let piece = Piece::new(g, ymap, xmap, ty, 0, tw);
                    piece.gather(plane, sw, up, &mut s.line, &mut s.pad);
                    let pad = if r + 1 == r1 { ntp - nt } else { 0 };
                    input_transform(&s.pad, tw, pad, &mut s.rows, vc, (r - r0) * tw, ntp);
                }
            })
        });
        // 2. M[co][ξ][t] = Σ_ci U[ξ][co][ci] V[ci][ξ][t], per (ξ, chunk of tiles).
        let m_ptr = SendPtr(m.as_mut_ptr());
        let (u, v) = (&*u, &*v);
        let chunks = ntp.div_ceil(chunk);
        let stride = 36 * ntp;
        (0..36 * chunks).into_par_iter().for_each(|task| {
            let (xi, t0) = (task / chunks, (task % chunks) * chunk);
            let cols = chunk.min(ntp - t0);
            let vx = &v[xi * ntp + t0..];
            for cb in 0..cout.div_ceil(MR) {
                let mr = MR.min(cout - cb * MR);
                let ub = &u[xi * cout * cin + cb * MR * cin..][..cin * mr];
                // SAFETY: rows co = cb MR .. cb MR + mr of M[co][ξ][t0..t0 + cols] (row stride
                // 36 ntp) lie inside m and are written by this (ξ, chunk) task only; vx holds
                // rows 0..cin of `cols` at stride 36 ntp (checked by the microkernel).
                unsafe {
                    let mp = m_ptr.get().add(cb * MR * stride + xi * ntp + t0);
                    micro_cols_ptr(mr, cin, ub, vx, stride, mp, stride, cols);
                }
            }
        });
        // 3. The output transform per output channel.
        m.par_chunks(36 * ntp).enumerate().for_each(|(co, mc)| {
            with_scratch(tw, |s| {
                for r in r0..r1 {
                    let (bi, ty) = (r / th, r % th);
                    output_transform(mc, (r - r0) * tw, ntp, tw, &mut s.t, &mut s.out_row);
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
    /// the upsampled read, per-sample bias, residual and ReLU; and many input channels with
    /// 144 tiles in one pass, so that the GEMMs run in chunks of 64, 64 and 16 tiles (weights scaled
    /// by 1/100 there, to keep the outputs near 1 for the same absolute bound).
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
            (
                2,
                1100,
                7,
                30,
                34,
                1,
                pad(1, 1, false),
                pad(1, 1, true),
                true,
                false,
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
            let scale = if cin > 100 { 0.01 } else { 1.0 };
            let wt: Vec<f32> = values(cout * cin * 9, 100 + i as u64)
                .iter()
                .map(|w| w * scale)
                .collect();
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
