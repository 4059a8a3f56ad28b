//! 3x3 stride-1 convolution by Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray, "Fast
//! Algorithms for Convolutional Neural Networks", 2015): each 2x2 output tile costs 16 products
//! per input/output channel pair instead of 36, so the GEMM work of a 3x3 convolution drops
//! 2.25x. The transforms use only additions and halvings, so the result stays within a few ulp
//! of the direct convolution (the kernel tests compare it with candle's `conv2d`).
//!
//! For one image and a band of tile rows:
//! 1. the input rows the band reads are gathered once, padded (zeros or circular, per axis, as
//!    [`AxisPad`] says) and split into even / odd columns, so every later pass is a contiguous,
//!    vectorisable loop;
//! 2. the input transform `V = Bᵀ d B` writes `V[ξ][cin][tiles]` for the 16 positions `ξ`;
//! 3. 16 GEMMs `M[ξ] = U[ξ] · V[ξ]` with `U = G g Gᵀ` (`[cout][cin][16]`, transformed once per
//!    call: at most 16 x cout x cin floats, a few ms for 512 channels);
//! 4. the output transform `Y = Aᵀ M A` writes the NCHW output with the bias, per-sample bias,
//!    residual and an optional ReLU fused in.

use std::cell::RefCell;

use rayon::prelude::*;

use super::conv::ConvGeom;
use super::{SendPtr, simd};

/// Floats of one band's transformed input (and of its GEMM output): 2 MiB each.
const BAND_BUDGET: usize = 1 << 19;
/// Below this many output pixels per image the direct im2col path is used.
const MIN_PIXELS: usize = 256;

/// Whether [`conv3x3`] handles this geometry: 3x3, stride 1, enough channels and pixels that the
/// transforms pay off.
pub(crate) fn applies(g: &ConvGeom, oh: usize, ow: usize) -> bool {
    g.kh == 3
        && g.kw == 3
        && g.stride == 1
        && g.cin >= 8
        && g.cout >= 8
        && oh * ow >= MIN_PIXELS
        && oh >= 2
        && ow >= 2
}

/// `U = G g Gᵀ` for every (cout, cin): `[cout][cin][16]`, position `ξ = 4 * row + col`.
fn transform_weights(wt: &[f32], cout: usize, cin: usize) -> Vec<f32> {
    let mut u = vec![0f32; cout * cin * 16];
    u.par_chunks_mut(cin * 16)
        .zip(wt.par_chunks(cin * 9))
        .for_each(|(u, w)| {
            for ci in 0..cin {
                let g = &w[ci * 9..ci * 9 + 9];
                // G g: 4 rows of 3.
                let mut gg = [[0f32; 3]; 4];
                for c in 0..3 {
                    let (a, b, d) = (g[c], g[3 + c], g[6 + c]);
                    gg[0][c] = a;
                    gg[1][c] = 0.5 * (a + b + d);
                    gg[2][c] = 0.5 * (a - b + d);
                    gg[3][c] = d;
                }
                let o = &mut u[ci * 16..ci * 16 + 16];
                for (r, row) in gg.iter().enumerate() {
                    let (a, b, d) = (row[0], row[1], row[2]);
                    o[4 * r] = a;
                    o[4 * r + 1] = 0.5 * (a + b + d);
                    o[4 * r + 2] = 0.5 * (a - b + d);
                    o[4 * r + 3] = d;
                }
            }
        });
    u
}

/// Input index read at padded position `p` of an axis of length `n` padded `before` / `after`
/// (`None` = zero).
fn src_index(p: usize, n: usize, before: usize, after: usize, circular: bool) -> Option<usize> {
    let i = p as isize - before as isize;
    if (0..n as isize).contains(&i) {
        Some(i as usize)
    } else if circular && p < n + before + after {
        Some(i.rem_euclid(n as isize) as usize)
    } else {
        None
    }
}

/// Per-thread scratch: padded split input, transformed input, GEMM output.
#[derive(Default)]
struct Scratch {
    pad: Vec<f32>,
    rows: Vec<f32>,
    v: Vec<f32>,
    m: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

fn grow(v: &mut Vec<f32>, n: usize) {
    if v.len() < n {
        v.resize(n, 0.0);
    }
}

/// The convolution on slices (same contract as [`super::conv::conv2d_f32`], `relu` applied last).
/// The caller checked [`applies`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv3x3(
    g: &ConvGeom,
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
    let u = transform_weights(wt, cout, cin);
    let (th, tw) = (oh.div_ceil(2), ow.div_ceil(2));
    let threads = rayon::current_num_threads().max(1);
    let per_row = 16 * cin.max(cout) * tw;
    let max_rows = (BAND_BUDGET / per_row).clamp(1, th);
    let want = (4 * threads).div_ceil(g.batch);
    let band_rows = th.div_ceil(want).clamp(1, max_rows);
    let bands = th.div_ceil(band_rows);
    let total = g.batch * bands;
    // Column map of the padded, even/odd-split row: `ew = tw + 1` entries each.
    let ew = tw + 1;
    let xsrc: Vec<Option<usize>> = (0..2 * ew)
        .map(|q| src_index(q, g.w, g.pad_x.before, g.pad_x.after, g.pad_x.circular))
        .collect();
    let out_ptr = SendPtr(out.as_mut_ptr());
    let ohw = oh * ow;
    let run = |job: usize, par: gemm::Parallelism| {
        let (bi, band) = (job / bands, job % bands);
        let ty0 = band * band_rows;
        let nty = band_rows.min(th - ty0);
        let t = nty * tw;
        let prow = 2 * nty + 2;
        let x_img = &x[bi * cin * g.h * g.w..(bi + 1) * cin * g.h * g.w];
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            let s = &mut *s;
            grow(&mut s.pad, cin * prow * 2 * ew);
            grow(&mut s.rows, 8 * ew);
            grow(&mut s.v, 16 * cin * t);
            grow(&mut s.m, 16 * cout * t);
            // 1. padded rows, even columns then odd columns.
            for ci in 0..cin {
                let plane = &x_img[ci * g.h * g.w..(ci + 1) * g.h * g.w];
                for r in 0..prow {
                    let dst = &mut s.pad[(ci * prow + r) * 2 * ew..(ci * prow + r + 1) * 2 * ew];
                    let sy = src_index(
                        2 * ty0 + r,
                        g.h,
                        g.pad_y.before,
                        g.pad_y.after,
                        g.pad_y.circular,
                    );
                    let Some(sy) = sy else {
                        dst.fill(0.0);
                        continue;
                    };
                    let src = &plane[sy * g.w..(sy + 1) * g.w];
                    let (even, odd) = dst.split_at_mut(ew);
                    for xi in 0..ew {
                        even[xi] = xsrc[2 * xi].map_or(0.0, |i| src[i]);
                        odd[xi] = xsrc[2 * xi + 1].map_or(0.0, |i| src[i]);
                    }
                }
            }
            // 2. V[ξ][ci][r * tw + tx].
            let plane_v = cin * t;
            for ci in 0..cin {
                for r in 0..nty {
                    let rows =
                        &s.pad[(ci * prow + 2 * r) * 2 * ew..(ci * prow + 2 * r + 4) * 2 * ew];
                    let off = ci * t + r * tw;
                    input_transform(rows, ew, tw, &mut s.rows, &mut s.v, off, plane_v);
                }
            }
            // 3. M[ξ] = U[ξ] V[ξ]: [cout, cin] x [cin, t].
            for xi in 0..16 {
                // SAFETY: U[ξ] is read with column stride 16 and row stride 16 * cin inside `u`;
                // V[ξ] / M[ξ] are [cin, t] / [cout, t] row-major blocks inside the scratch.
                unsafe {
                    gemm::gemm(
                        cout,
                        t,
                        cin,
                        s.m.as_mut_ptr().add(xi * cout * t),
                        1,
                        t as isize,
                        false,
                        u.as_ptr().add(xi),
                        16,
                        (16 * cin) as isize,
                        s.v.as_ptr().add(xi * cin * t),
                        1,
                        t as isize,
                        0.0f32,
                        1.0f32,
                        false,
                        false,
                        false,
                        par,
                    )
                }
            }
            // 4. Y = Aᵀ M A into the output rows of this band.
            let y0 = 2 * ty0;
            let ny = (2 * nty).min(oh - y0);
            for co in 0..cout {
                let bv = bias.map_or(0.0, |b| b[bi * cout + co]);
                let base = bi * cout * ohw + co * ohw + y0 * ow;
                // SAFETY: output rows [y0, y0 + ny) of (bi, co) belong to this band only.
                let dst =
                    unsafe { std::slice::from_raw_parts_mut(out_ptr.get().add(base), ny * ow) };
                let res = residual.map(|r| &r[base..base + ny * ow]);
                for r in 0..nty {
                    let rows_here = (ny - 2 * r).min(2);
                    output_transform(
                        &s.m,
                        co * t + r * tw,
                        cout * t,
                        tw,
                        ow,
                        rows_here,
                        bv,
                        res.map(|x| &x[2 * r * ow..(2 * r + rows_here) * ow]),
                        relu,
                        &mut dst[2 * r * ow..(2 * r + rows_here) * ow],
                    );
                }
            }
        });
    };
    if total >= threads && threads > 1 {
        (0..total)
            .into_par_iter()
            .for_each(|job| run(job, gemm::Parallelism::None));
    } else {
        let par = if threads > 1 {
            gemm::Parallelism::Rayon(threads)
        } else {
            gemm::Parallelism::None
        };
        (0..total).for_each(|job| run(job, par));
    }
}

/// `Bᵀ d B` for one tile row: `rows` = 4 padded rows, each `ew` even then `ew` odd columns;
/// writes `v[ξ * plane + off + tx]` for `tx < tw`; `buf` is scratch of `8 * ew` floats.
fn input_transform(
    rows: &[f32],
    ew: usize,
    tw: usize,
    buf: &mut [f32],
    v: &mut [f32],
    off: usize,
    plane: usize,
) {
    input_transform_simd(rows, ew, tw, buf, v, off, plane);
}

simd::multiversion! {
    pub fn input_transform_simd(rows: &[f32], ew: usize, tw: usize, buf: &mut [f32], v: &mut [f32], off: usize, plane: usize) {
        let row = |i: usize| &rows[i * 2 * ew..(i + 1) * 2 * ew];
        let (d0, d1, d2, d3) = (row(0), row(1), row(2), row(3));
        // Bᵀ on the rows: s0 = d0 - d2, s1 = d1 + d2, s2 = d2 - d1, s3 = d1 - d3.
        let n = 2 * ew;
        let buf = &mut buf[..4 * n];
        {
            let (s0, rest) = buf.split_at_mut(n);
            let (s1, rest) = rest.split_at_mut(n);
            let (s2, s3) = rest.split_at_mut(n);
            for i in 0..n {
                s0[i] = d0[i] - d2[i];
                s1[i] = d1[i] + d2[i];
                s2[i] = d2[i] - d1[i];
                s3[i] = d1[i] - d3[i];
            }
        }
        for k in 0..4 {
            let sk = &buf[k * n..(k + 1) * n];
            let (e, o) = sk.split_at(ew);
            let base = (4 * k) * plane + off;
            let (v0, rest) = v[base..].split_at_mut(plane);
            let (v1, rest) = rest.split_at_mut(plane);
            let (v2, rest) = rest.split_at_mut(plane);
            let v3 = &mut rest[..tw];
            for tx in 0..tw {
                let (c0, c1, c2, c3) = (e[tx], o[tx], e[tx + 1], o[tx + 1]);
                v0[tx] = c0 - c2;
                v1[tx] = c1 + c2;
                v2[tx] = c2 - c1;
                v3[tx] = c1 - c3;
            }
        }
    }
}

/// `Aᵀ M A` for one tile row of one output channel: `m[ξ * plane + off + tx]` -> `rows` (1 or 2)
/// output rows of width `ow`, plus `bias`, plus `res` (same shape as `dst`), then ReLU if `relu`.
#[allow(clippy::too_many_arguments)]
fn output_transform(
    m: &[f32],
    off: usize,
    plane: usize,
    tw: usize,
    ow: usize,
    rows: usize,
    bias: f32,
    res: Option<&[f32]>,
    relu: bool,
    dst: &mut [f32],
) {
    output_transform_simd(m, off, plane, tw, ow, rows, bias, res, relu, dst);
}

simd::multiversion! {
    pub fn output_transform_simd(
        m: &[f32],
        off: usize,
        plane: usize,
        tw: usize,
        ow: usize,
        rows: usize,
        bias: f32,
        res: Option<&[f32]>,
        relu: bool,
        dst: &mut [f32]
    ) {
        let at = |xi: usize| &m[xi * plane + off..xi * plane + off + tw];
        let mm: [&[f32]; 16] = std::array::from_fn(at);
        let (r0, r1) = dst.split_at_mut(ow);
        let even_w = ow / 2;
        for tx in 0..tw {
            // Aᵀ on the rows: a0 = m0 + m1 + m2, a1 = m1 - m2 - m3 (per column j).
            let mut a0 = [0f32; 4];
            let mut a1 = [0f32; 4];
            for j in 0..4 {
                let (p0, p1, p2, p3) = (mm[j][tx], mm[4 + j][tx], mm[8 + j][tx], mm[12 + j][tx]);
                a0[j] = p0 + p1 + p2;
                a1[j] = p1 - p2 - p3;
            }
            let y00 = a0[0] + a0[1] + a0[2] + bias;
            let y01 = a0[1] - a0[2] - a0[3] + bias;
            let y10 = a1[0] + a1[1] + a1[2] + bias;
            let y11 = a1[1] - a1[2] - a1[3] + bias;
            if tx < even_w {
                r0[2 * tx] = y00;
                r0[2 * tx + 1] = y01;
                if rows > 1 {
                    r1[2 * tx] = y10;
                    r1[2 * tx + 1] = y11;
                }
            } else {
                r0[2 * tx] = y00;
                if rows > 1 {
                    r1[2 * tx] = y10;
                }
            }
        }
        if let Some(res) = res {
            for (d, r) in dst.iter_mut().zip(res) {
                *d += r;
            }
        }
        if relu {
            for d in dst.iter_mut() {
                *d = d.max(0.0);
            }
        }
    }
}
