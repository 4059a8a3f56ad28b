//! 3x3 stride-1 convolution by Winograd's minimal filtering F(4x4, 3x3) (Lavin & Gray, "Fast
//! Algorithms for Convolutional Neural Networks", 2015): each 4x4 output tile costs 36 products
//! per input/output channel pair instead of 144, 4x fewer than the direct convolution.
//!
//! Work is split into jobs of [`tiles_per_job`] consecutive tiles of one image (row-major over
//! the tile grid), so that a job's transformed input (`36 x cin x tiles` floats) stays in the L2
//! cache where it can:
//! 1. the 6 padded input rows of the tile row are gathered per channel by the im2col row gather
//!    ([`gather_row`]: zeros or circular per axis, and optionally read through a nearest 2x
//!    upsampling, so `Upsample2D -> conv` never materialises the upsampled map) and split by
//!    column modulo 4, so that every later pass is a contiguous, vectorisable loop over tiles;
//! 2. the input transform `V = Bᵀ d B` writes `V[ξ][cin][tiles]` for the 36 positions `ξ`;
//! 3. per block of [`MR`] output channels, 36 small GEMMs `M[ξ] = U[ξ] · V[ξ]` (`U = G g Gᵀ`,
//!    packed `[ξ][cout block][cin][MR]` once per call) by the register-blocked microkernel of
//!    `kernels/micro.rs`;
//! 4. the output transform `Y = Aᵀ M A` of those channels writes the NCHW output with the bias,
//!    per-sample bias, residual and optional ReLU fused in.
//!
//! The transforms are in `winograd/transforms.rs`.

use std::cell::RefCell;

use rayon::prelude::*;

use super::SendPtr;
use super::conv::{ConvGeom, axis_map, gather_row};

mod batched;
mod transforms;

use super::micro::{MR, NR, micro_cols};
use transforms::{finish_row, input_transform, output_transform, split4, transform_weights};

/// Tiles per job when their transformed input (`36 x cin x tiles` floats) fits in ~320 KB (L2).
const MAX_TILES: usize = 32;

/// Tiles per job: [`MAX_TILES`] when their transformed input fits in L2; else 16, or 64 when the
/// transformed weights (`36 x cin x cout` floats) exceed 8 MiB: every job streams all of them
/// from memory (38 MB at 512 channels), so more tiles per job mean fewer passes.
fn tiles_per_job(cin: usize, cout: usize) -> usize {
    if 36 * cin * MAX_TILES * 4 <= 320 << 10 {
        MAX_TILES
    } else if 36 * cin * cout * 4 > 8 << 20 {
        4 * NR
    } else {
        NR
    }
}

/// Whether [`conv3x3`] handles this geometry: 3x3, stride 1, at least 8 input channels and 256
/// output pixels (any number of output channels: TAESD's last conv has 3), and at least 2048
/// output pixels over the batch (128 tiles) when `cin x cout` >= 512 x 512: with fewer tiles the
/// transformed weights (4x the weights, 471 MB at 2560 -> 1280) serve too little work, and
/// im2col + GEMM was faster (SD 1.5's 16x16 level at batch 2: 2.4x at 2560 -> 1280, 2.8x at
/// 1280 -> 1280; its 32x32 level at batch 1: 1.3x at 1280 -> 640, 1.4x at 640 -> 640), while
/// from 128 tiles on the Winograd paths won (32x32 at batch 2: 1.2-1.3x at 1280 / 1920 -> 640).
pub(crate) fn applies(g: &ConvGeom, oh: usize, ow: usize) -> bool {
    let large = g.cin * g.cout >= 512 * 512;
    g.kh == 3
        && g.kw == 3
        && g.stride == 1
        && g.cin >= 8
        && g.cout >= 1
        && oh * ow >= 256
        && (!large || g.batch * oh * ow >= 2048)
}

/// The stored row / column read at each padded position of a `th x tw` tile grid (4 per tile
/// plus the 2-row / column overlap; -1 = zero), through the upsampling when `up` is 2.
fn padded_maps(g: &ConvGeom, up: usize, th: usize, tw: usize) -> (Vec<isize>, Vec<isize>) {
    let stored = |m: Vec<isize>| -> Vec<isize> {
        m.into_iter()
            .map(|i| if i < 0 { -1 } else { i / up as isize })
            .collect()
    };
    (
        stored(axis_map(g.h, 4 * (th + 1), 1, 1, g.pad_y)),
        stored(axis_map(g.w, 4 * (tw + 1), 1, 1, g.pad_x)),
    )
}

/// What is fused into an output row: the (per-sample) bias, a residual `[b, cout, oh, ow]`, a
/// final ReLU.
#[derive(Clone, Copy)]
struct Fused<'a> {
    bias: f32,
    residual: Option<&'a [f32]>,
    relu: bool,
}

/// Writes tiles `tx0..tx0 + n` of tile row `ty` of one output channel (`plane`: its offset in
/// `out`, `[b, cout, oh, ow]`) from the output transform's 4 rows of `4 n` columns, clipped to
/// the map, with `fused` applied.
///
/// # Safety
/// Those rows and columns of the plane lie inside `out` and no one else touches them meanwhile.
unsafe fn write_tiles(
    out: SendPtr,
    plane: usize,
    (oh, ow): (usize, usize),
    (ty, tx0, n): (usize, usize, usize),
    out_row: &[f32],
    fused: Fused,
) {
    let x0 = 4 * tx0;
    let len = (4 * n).min(ow - x0);
    for a in 0..(oh - 4 * ty).min(4) {
        let base = plane + (4 * ty + a) * ow + x0;
        // SAFETY: the caller's contract.
        let dst = unsafe { std::slice::from_raw_parts_mut(out.get().add(base), len) };
        let res = fused.residual.map(|rs| &rs[base..base + len]);
        finish_row(
            dst,
            &out_row[a * 4 * n..][..len],
            fused.bias,
            res,
            fused.relu,
        );
    }
}

/// Runs `f` on this thread's scratch with its row buffers grown for pieces of up to `n` tiles
/// (the transformed input and GEMM output are the caller's to size).
fn with_scratch<R>(n: usize, f: impl FnOnce(&mut ThreadScratch) -> R) -> R {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        let s = &mut *s;
        grow(&mut s.pad, 24 * (n + 1));
        grow(&mut s.rows, 24 * (n + 1));
        grow(&mut s.line, 4 * (n + 1));
        grow(&mut s.out_row, 16 * n);
        grow(&mut s.t, 24 * n);
        f(s)
    })
}

/// Per-thread scratch: one channel's gathered rows (split and row-transformed), the transformed
/// input, the GEMM output and the output transform's rows.
#[derive(Default)]
struct ThreadScratch {
    pad: Vec<f32>,
    rows: Vec<f32>,
    v: Vec<f32>,
    m: Vec<f32>,
    out_row: Vec<f32>,
    line: Vec<f32>,
    t: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<ThreadScratch> = RefCell::new(ThreadScratch::default());
}

fn grow(v: &mut Vec<f32>, n: usize) {
    if v.len() < n {
        v.resize(n, 0.0);
    }
}

/// The convolution on slices: `x` `[b, cin, h / up, w / up]` read as its nearest `up`x
/// upsampling `[b, cin, h, w]` (`up` 1 or 2; `g.h`, `g.w` are the upsampled sizes), `wt`
/// `[cout, cin, 3, 3]`, `bias` `[b, cout]`, `residual` `[b, cout, oh, ow]`, ReLU last when
/// `relu`; `out` `[b, cout, oh, ow]`. The caller checked [`applies`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv3x3(
    g: &ConvGeom,
    up: usize,
    oh: usize,
    ow: usize,
    x: &[f32],
    wt: &[f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    relu: bool,
    out: &mut [f32],
) {
    let (cin, cout) = (g.cin, g.cout);
    let (sh, sw) = (g.h / up, g.w / up);
    assert_eq!(x.len(), g.batch * cin * sh * sw);
    assert_eq!(out.len(), g.batch * cout * oh * ow);
    let (th, tw) = (oh.div_ceil(4), ow.div_ceil(4));
    let (ymap, xmap) = padded_maps(g, up, th, tw);
    if batched::applies(cin, cout) {
        let maps = (ymap.as_slice(), xmap.as_slice());
        let pass = batched::PASS_BYTES;
        return batched::conv3x3(g, up, oh, ow, maps, x, wt, bias, residual, relu, out, pass);
    }
    let u = transform_weights(wt, cout, cin);
    // Jobs: runs of consecutive tiles (row-major over the tile grid of one image), at least one
    // per thread.
    let tiles = th * tw;
    let threads = rayon::current_num_threads().max(1);
    let per_job = tiles_per_job(cin, cout).min((g.batch * tiles).div_ceil(threads).max(NR));
    let jobs = tiles.div_ceil(per_job);
    let per_job = tiles.div_ceil(jobs);
    let total = g.batch * jobs;
    let out_ptr = SendPtr(out.as_mut_ptr());
    let ohw = oh * ow;
    let job = |j: usize| {
        let bi = j / jobs;
        let t0 = (j % jobs) * per_job;
        let nt = per_job.min(tiles - t0);
        let np = nt.div_ceil(NR) * NR;
        // The job's pieces of tile rows: (ty, first tx, tiles, offset in the job).
        let segs: Vec<(usize, usize, usize, usize)> = {
            let mut v = Vec::new();
            let mut t = t0;
            while t < t0 + nt {
                let (ty, tx0) = (t / tw, t % tw);
                let n = (tw - tx0).min(t0 + nt - t);
                v.push((ty, tx0, n, t - t0));
                t += n;
            }
            v
        };
        let nmax = segs.iter().map(|s| s.2).max().unwrap_or(0);
        let x_img = &x[bi * cin * sh * sw..(bi + 1) * cin * sh * sw];
        with_scratch(nmax, |s| {
            grow(&mut s.v, 36 * cin * np);
            grow(&mut s.m, 36 * MR * np);
            // 1 + 2: per piece and channel, the 6 padded input rows (columns split modulo 4,
            // in L1), then V[ξ][ci][off + tx]; the padding tiles [nt, np) are zero.
            for &(ty, tx0, n, off) in &segs {
                let piece = Piece::new(g, &ymap, &xmap, ty, tx0, n);
                let pad = if off + n == nt { np - nt } else { 0 };
                for ci in 0..cin {
                    let plane = &x_img[ci * sh * sw..(ci + 1) * sh * sw];
                    piece.gather(plane, sw, up, &mut s.line, &mut s.pad);
                    let at = ci * np + off;
                    input_transform(&s.pad, n, pad, &mut s.rows, &mut s.v, at, cin * np);
                }
            }
            // 3 + 4. per block of output channels: the 36 GEMMs, then the output transform.
            for cb in 0..cout.div_ceil(MR) {
                let mr = MR.min(cout - cb * MR);
                for xi in 0..36 {
                    let ub = &u[xi * cout * cin + cb * MR * cin..][..cin * mr];
                    let vb = &s.v[xi * cin * np..(xi + 1) * cin * np];
                    let mb = &mut s.m[xi * MR * np..(xi * MR + mr) * np];
                    micro_cols(mr, cin, ub, vb, np, mb, np, np);
                }
                for r in 0..mr {
                    let co = cb * MR + r;
                    let bv = bias.map_or(0.0, |b| b[bi * cout + co]);
                    for &(ty, tx0, n, off) in &segs {
                        let (ms, stride) = (r * np + off, MR * np);
                        output_transform(&s.m, ms, stride, n, &mut s.t, &mut s.out_row);
                        let plane = (bi * cout + co) * ohw;
                        let fused = Fused {
                            bias: bv,
                            residual,
                            relu,
                        };
                        // SAFETY: these tiles of channel (bi, co) belong to this job only.
                        unsafe {
                            write_tiles(out_ptr, plane, (oh, ow), (ty, tx0, n), &s.out_row, fused)
                        };
                    }
                }
            }
        });
    };
    (0..total).into_par_iter().for_each(job);
}

/// The padded input rows of one piece of a tile row: tiles `tx0..tx0 + n` of tile row `ty`.
struct Piece<'a> {
    /// Stored rows read by the 6 padded rows (-1 = zero).
    ys: &'a [isize],
    /// Stored columns read by the `4 (n + 1)` padded columns (-1 = zero).
    xs: &'a [isize],
    /// Columns `[lo, hi)` read the stored row directly, starting at column `first`.
    lo: usize,
    hi: usize,
    first: usize,
    /// Tiles in the piece.
    n: usize,
}

impl<'a> Piece<'a> {
    fn new(
        g: &ConvGeom,
        ymap: &'a [isize],
        xmap: &'a [isize],
        ty: usize,
        tx0: usize,
        n: usize,
    ) -> Self {
        let w4 = 4 * (n + 1);
        let q0 = 4 * tx0;
        let direct = |q: usize| {
            let p = (q0 + q) as isize - g.pad_x.before as isize;
            (0..g.w as isize).contains(&p)
        };
        let lo = (0..w4).find(|&q| direct(q)).unwrap_or(w4);
        let hi = (lo..w4).find(|&q| !direct(q)).unwrap_or(w4);
        let first = (q0 + lo).saturating_sub(g.pad_x.before);
        Piece {
            ys: &ymap[4 * ty..4 * ty + 6],
            xs: &xmap[q0..q0 + w4],
            lo,
            hi,
            first,
            n,
        }
    }

    /// The piece's 6 padded rows of one channel's stored plane (`sw` columns), each split by
    /// column modulo 4, into `pad` (`24 (n + 1)` floats); `line` is scratch of `4 (n + 1)`.
    fn gather(&self, plane: &[f32], sw: usize, up: usize, line: &mut [f32], pad: &mut [f32]) {
        let n1 = self.n + 1;
        let w4 = 4 * n1;
        for (r, &sy) in self.ys.iter().enumerate() {
            let dst = &mut pad[r * w4..(r + 1) * w4];
            if sy < 0 {
                dst.fill(0.0);
                continue;
            }
            let src = &plane[sy as usize * sw..(sy as usize + 1) * sw];
            let line = &mut line[..w4];
            gather_row(src, self.xs, (self.lo, self.hi), self.first, 1, up, line);
            split4(line, n1, dst);
        }
    }
}
