//! 3x3 stride-1 convolution by Winograd's minimal filtering F(4x4, 3x3) (Lavin & Gray, "Fast
//! Algorithms for Convolutional Neural Networks", 2015, interpolation points 0, ±1, ±2, ∞): each
//! 4x4 output tile costs 36 products per input/output channel pair instead of 144, 4x fewer than
//! the direct convolution (F(2x2, 3x3) in `winograd.rs` saves 2.25x).
//!
//! Work is split into jobs of up to [`MAX_TILES`] tiles of one tile row of one image, so that a
//! job's transformed input (`36 x cin x tiles` floats) stays in the L2 cache:
//! 1. the 6 padded input rows of the tile row are gathered per channel (zeros or circular per
//!    axis, and optionally read through a nearest 2x upsampling, so `Upsample2D -> conv` never
//!    materialises the upsampled map) and split by column modulo 4, so that every later pass is
//!    a contiguous, vectorisable loop over tiles;
//! 2. the input transform `V = Bᵀ d B` writes `V[ξ][cin][tiles]` for the 36 positions `ξ`;
//! 3. per block of [`MR`] output channels, 36 small GEMMs `M[ξ] = U[ξ] · V[ξ]` (`U = G g Gᵀ`,
//!    packed `[ξ][cout block][cin][MR]` once per call) by an AVX2+FMA 6x16 register-blocked
//!    microkernel (a portable loop elsewhere);
//! 4. the output transform `Y = Aᵀ M A` of those channels writes the NCHW output with the bias,
//!    per-sample bias, residual and optional ReLU fused in.

use std::cell::RefCell;

use rayon::prelude::*;

use super::SendPtr;
use super::conv::ConvGeom;
use super::simd;

/// Output channels per microkernel block.
const MR: usize = 6;
/// Tiles per microkernel block (two 8-lane vectors).
const NR: usize = 16;
/// Tiles per job (a segment of one tile row).
const MAX_TILES: usize = 32;

/// Whether [`conv3x3`] handles this geometry: 3x3, stride 1, at least 8 input channels and 256
/// output pixels (any number of output channels: TAESD's last conv has 3).
pub(crate) fn applies(g: &ConvGeom, oh: usize, ow: usize) -> bool {
    g.kh == 3 && g.kw == 3 && g.stride == 1 && g.cin >= 8 && g.cout >= 1 && oh * ow >= 256
}

/// `U = G g Gᵀ` for every (cout, cin), packed `[ξ][cout block][cin][mr]` (`ξ = 6 * row + col`,
/// blocks of [`MR`] output channels, the last one shorter).
fn transform_weights(wt: &[f32], cout: usize, cin: usize) -> Vec<f32> {
    let mut u = vec![0f32; 36 * cout * cin];
    let ptr = SendPtr(u.as_mut_ptr());
    (0..cout).into_par_iter().for_each(|co| {
        let (cb, r) = (co / MR, co % MR);
        let mr = MR.min(cout - cb * MR);
        for ci in 0..cin {
            let g = &wt[(co * cin + ci) * 9..(co * cin + ci) * 9 + 9];
            // G g: 6 rows of 3.
            let col = |a: f32, b: f32, c: f32| {
                [
                    a / 4.0,
                    -(a + b + c) / 6.0,
                    -(a - b + c) / 6.0,
                    a / 24.0 + b / 12.0 + c / 6.0,
                    a / 24.0 - b / 12.0 + c / 6.0,
                    c,
                ]
            };
            let gg: [[f32; 6]; 3] = std::array::from_fn(|c| col(g[c], g[3 + c], g[6 + c]));
            for i in 0..6 {
                let row = col(gg[0][i], gg[1][i], gg[2][i]);
                for (j, &val) in row.iter().enumerate() {
                    let xi = 6 * i + j;
                    let at = xi * cout * cin + cb * MR * cin + ci * mr + r;
                    // SAFETY: each (ξ, co, ci) slot is written by the task of `co` only.
                    unsafe { *ptr.get().add(at) = val };
                }
            }
        }
    });
    u
}

/// Index read at padded position `p` of an axis of logical length `n` (the upsampled length when
/// `up` is 2) padded `before` / `after`: the stored index, or `None` for a zero.
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

/// Per-thread scratch: gathered rows, row-transformed rows, transformed input, GEMM output.
#[derive(Default)]
struct Scratch {
    pad: Vec<f32>,
    rows: Vec<f32>,
    v: Vec<f32>,
    m: Vec<f32>,
    out_row: Vec<f32>,
    line: Vec<f32>,
    t: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
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
    let u = transform_weights(wt, cout, cin);
    let (th, tw) = (oh.div_ceil(4), ow.div_ceil(4));
    // 32 tiles per job when their transformed input fits in ~320 KB (L2), else 16.
    let max_tiles = if 36 * cin * MAX_TILES * 4 <= 320 << 10 {
        MAX_TILES
    } else {
        NR
    };
    let nseg = tw.div_ceil(max_tiles);
    let seg = tw.div_ceil(nseg);
    let total = g.batch * th * nseg;
    // Stored column read at each padded column (4 per tile plus the 2-column overlap).
    let xsrc: Vec<Option<usize>> = (0..4 * (tw + 1))
        .map(|q| src_index(q, g.w, g.pad_x.before, g.pad_x.after, g.pad_x.circular).map(|i| i / up))
        .collect();
    let out_ptr = SendPtr(out.as_mut_ptr());
    let ohw = oh * ow;
    let job = |j: usize| {
        let bi = j / (th * nseg);
        let ty = (j / nseg) % th;
        let tx0 = (j % nseg) * seg;
        let n = seg.min(tw - tx0);
        let (n1, np) = (n + 1, n.div_ceil(NR) * NR);
        let x_img = &x[bi * cin * sh * sw..(bi + 1) * cin * sh * sw];
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            let s = &mut *s;
            grow(&mut s.pad, cin * 24 * n1);
            grow(&mut s.rows, 24 * n1);
            grow(&mut s.v, 36 * cin * np);
            grow(&mut s.m, 36 * MR * np);
            grow(&mut s.out_row, 16 * n);
            // 1. the 6 padded rows of each channel, columns split modulo 4.
            let ysrc: [Option<usize>; 6] = std::array::from_fn(|r| {
                src_index(
                    4 * ty + r,
                    g.h,
                    g.pad_y.before,
                    g.pad_y.after,
                    g.pad_y.circular,
                )
                .map(|i| i / up)
            });
            // Job columns [lo, hi) read the stored row directly (no padding, no wrap).
            let q0 = 4 * tx0;
            let direct = |q: usize| {
                let p = (q0 + q) as isize - g.pad_x.before as isize;
                (0..g.w as isize).contains(&p)
            };
            let w4 = 4 * n1;
            let lo = (0..w4).find(|&q| direct(q)).unwrap_or(w4);
            let hi = (lo..w4).find(|&q| !direct(q)).unwrap_or(w4);
            let xs = &xsrc[q0..q0 + w4];
            grow(&mut s.line, w4);
            for ci in 0..cin {
                let plane = &x_img[ci * sh * sw..(ci + 1) * sh * sw];
                for (r, sy) in ysrc.iter().enumerate() {
                    let dst = &mut s.pad[(ci * 6 + r) * w4..(ci * 6 + r + 1) * w4];
                    let Some(sy) = *sy else {
                        dst.fill(0.0);
                        continue;
                    };
                    let src = &plane[sy * sw..(sy + 1) * sw];
                    let line = &mut s.line[..w4];
                    for q in (0..lo).chain(hi..w4) {
                        line[q] = xs[q].map_or(0.0, |i| src[i]);
                    }
                    if hi > lo {
                        let first = q0 + lo - g.pad_x.before;
                        if up == 1 {
                            line[lo..hi].copy_from_slice(&src[first..first + hi - lo]);
                        } else {
                            for (q, v) in line[lo..hi].iter_mut().enumerate() {
                                *v = src[(first + q) / 2];
                            }
                        }
                    }
                    split4(line, n1, dst);
                }
            }
            // 2. V[ξ][ci][tx].
            for ci in 0..cin {
                let d = &s.pad[ci * 24 * n1..(ci + 1) * 24 * n1];
                input_transform(d, n, n1, np, &mut s.rows, &mut s.v, ci, cin);
            }
            // 3 + 4. per block of output channels: the 36 GEMMs, then the output transform.
            for cb in 0..cout.div_ceil(MR) {
                let mr = MR.min(cout - cb * MR);
                for xi in 0..36 {
                    let ub = &u[xi * cout * cin + cb * MR * cin..][..cin * mr];
                    let vb = &s.v[xi * cin * np..(xi + 1) * cin * np];
                    let mb = &mut s.m[xi * MR * np..(xi * MR + mr) * np];
                    for tb in (0..np).step_by(NR) {
                        micro(mr, cin, ub, &vb[tb..], np, &mut mb[tb..], np);
                    }
                }
                for r in 0..mr {
                    let co = cb * MR + r;
                    let bv = bias.map_or(0.0, |b| b[bi * cout + co]);
                    grow(&mut s.t, 24 * n);
                    output_transform(&s.m, r, np, n, &mut s.t, &mut s.out_row);
                    for a in 0..4.min(oh - 4 * ty) {
                        let y = 4 * ty + a;
                        let x0 = 4 * tx0;
                        let len = (4 * n).min(ow - x0);
                        let base = bi * cout * ohw + co * ohw + y * ow + x0;
                        // SAFETY: row y, columns [x0, x0 + len) of channel (bi, co) belong to
                        // this job's tiles only.
                        let dst =
                            unsafe { std::slice::from_raw_parts_mut(out_ptr.get().add(base), len) };
                        let res = residual.map(|rs| &rs[base..base + len]);
                        let row = &s.out_row[a * 4 * n..a * 4 * n + len];
                        finish_row(dst, row, bv, res, relu);
                    }
                }
            }
        });
    };
    (0..total).into_par_iter().for_each(job);
}

/// `Bᵀ d B` for the `n` tiles of one channel: `d` = 6 padded rows of 4 phase arrays of `n1`
/// columns; writes `v[(ξ * cin + ci) * np + tx]`, zero for `n <= tx < np`.
#[allow(clippy::too_many_arguments)]
fn input_transform(
    d: &[f32],
    n: usize,
    n1: usize,
    np: usize,
    rows: &mut [f32],
    v: &mut [f32],
    ci: usize,
    cin: usize,
) {
    input_transform_simd(d, n, n1, np, rows, v, ci, cin);
}

simd::multiversion! {
    pub fn input_transform_simd(d: &[f32], n: usize, n1: usize, np: usize, rows: &mut [f32], v: &mut [f32], ci: usize, cin: usize) {
        // Bᵀ over the 6 rows, per phase array: rows[(a * 4 + ph) * n1 + k].
        let w = 4 * n1;
        let r = |i: usize| &d[i * w..(i + 1) * w];
        let (d0, d1, d2, d3, d4, d5) = (r(0), r(1), r(2), r(3), r(4), r(5));
        let rows = &mut rows[..6 * w];
        let (b0, rest) = rows.split_at_mut(w);
        let (b1, rest) = rest.split_at_mut(w);
        let (b2, rest) = rest.split_at_mut(w);
        let (b3, rest) = rest.split_at_mut(w);
        let (b4, b5) = rest.split_at_mut(w);
        for k in 0..w {
            let (x0, x1, x2, x3, x4, x5) = (d0[k], d1[k], d2[k], d3[k], d4[k], d5[k]);
            b0[k] = 4.0 * x0 - 5.0 * x2 + x4;
            b1[k] = -4.0 * (x1 + x2) + x3 + x4;
            b2[k] = 4.0 * (x1 - x2) - x3 + x4;
            b3[k] = 2.0 * (x3 - x1) - x2 + x4;
            b4[k] = 2.0 * (x1 - x3) - x2 + x4;
            b5[k] = 4.0 * x1 - 5.0 * x3 + x5;
        }
        // Bᵀ over the 6 columns of each tile: c0..c3 = phases 0..3 at tx, c4, c5 = phases 0, 1
        // at tx + 1.
        for (a, b) in [&*b0, &*b1, &*b2, &*b3, &*b4, &*b5].into_iter().enumerate() {
            let (p0, p1, p2, p3) = (&b[..n1], &b[n1..2 * n1], &b[2 * n1..3 * n1], &b[3 * n1..]);
            let at = |j: usize| (6 * a + j) * cin * np + ci * np;
            for j in 0..6 {
                v[at(j) + n..at(j) + np].fill(0.0);
            }
            let (o0, o1, o2) = (at(0), at(1), at(2));
            let (o3, o4, o5) = (at(3), at(4), at(5));
            for tx in 0..n {
                let (c0, c1, c2, c3, c4, c5) = (p0[tx], p1[tx], p2[tx], p3[tx], p0[tx + 1], p1[tx + 1]);
                v[o0 + tx] = 4.0 * c0 - 5.0 * c2 + c4;
                v[o1 + tx] = -4.0 * (c1 + c2) + c3 + c4;
                v[o2 + tx] = 4.0 * (c1 - c2) - c3 + c4;
                v[o3 + tx] = 2.0 * (c3 - c1) - c2 + c4;
                v[o4 + tx] = 2.0 * (c1 - c3) - c2 + c4;
                v[o5 + tx] = 4.0 * c1 - 5.0 * c3 + c5;
            }
        }
    }
}

/// `Aᵀ M A` for the `n` tiles of channel `r` of the current block: `m[(ξ * MR + r) * np + tx]`
/// -> `out` = 4 output rows of `4 * n` columns; `t` is scratch of `24 * n` floats.
fn output_transform(m: &[f32], r: usize, np: usize, n: usize, t: &mut [f32], out: &mut [f32]) {
    output_transform_simd(m, r, np, n, t, out);
}

simd::multiversion! {
    pub fn output_transform_simd(m: &[f32], r: usize, np: usize, n: usize, t: &mut [f32], out: &mut [f32]) {
        let at = |xi: usize| &m[(xi * MR + r) * np..(xi * MR + r) * np + n];
        // Aᵀ over the rows i, per column j, vectorised over the tiles: t[(a * 6 + j) * n + tx].
        let t = &mut t[..24 * n];
        for j in 0..6 {
            let (p0, p1, p2) = (at(j), at(6 + j), at(12 + j));
            let (p3, p4, p5) = (at(18 + j), at(24 + j), at(30 + j));
            let (t0, rest) = t[j * n..].split_at_mut(6 * n);
            let (t1, rest) = rest.split_at_mut(6 * n);
            let (t2, t3) = rest.split_at_mut(6 * n);
            for tx in 0..n {
                let (s12, d12) = (p1[tx] + p2[tx], p1[tx] - p2[tx]);
                let (s34, d34) = (p3[tx] + p4[tx], p3[tx] - p4[tx]);
                t0[tx] = p0[tx] + s12 + s34;
                t1[tx] = d12 + 2.0 * d34;
                t2[tx] = s12 + 4.0 * s34;
                t3[tx] = d12 + 8.0 * d34 + p5[tx];
            }
        }
        // Aᵀ over the columns j, then the 4 columns of each tile interleaved into the row.
        let out = &mut out[..16 * n];
        for a in 0..4 {
            let ta = |j: usize| &t[(a * 6 + j) * n..(a * 6 + j + 1) * n];
            let (c0, c1, c2, c3, c4, c5) = (ta(0), ta(1), ta(2), ta(3), ta(4), ta(5));
            let row = &mut out[a * 4 * n..(a + 1) * 4 * n];
            for (tx, o) in row.chunks_exact_mut(4).enumerate() {
                let (s12, d12) = (c1[tx] + c2[tx], c1[tx] - c2[tx]);
                let (s34, d34) = (c3[tx] + c4[tx], c3[tx] - c4[tx]);
                o[0] = c0[tx] + s12 + s34;
                o[1] = d12 + 2.0 * d34;
                o[2] = s12 + 4.0 * s34;
                o[3] = d12 + 8.0 * d34 + c5[tx];
            }
        }
    }
}

simd::multiversion! {
    /// `dst[ph * n1 + k] = line[4 * k + ph]`: one padded row split by column modulo 4.
    pub fn split4(line: &[f32], n1: usize, dst: &mut [f32]) {
        let (d0, rest) = dst[..4 * n1].split_at_mut(n1);
        let (d1, rest) = rest.split_at_mut(n1);
        let (d2, d3) = rest.split_at_mut(n1);
        for (k, c) in line[..4 * n1].chunks_exact(4).enumerate() {
            d0[k] = c[0];
            d1[k] = c[1];
            d2[k] = c[2];
            d3[k] = c[3];
        }
    }
}

simd::multiversion! {
    /// `dst = relu?(row + bias + res)`.
    pub fn finish_row(dst: &mut [f32], row: &[f32], bias: f32, res: Option<&[f32]>, relu: bool) {
        match res {
            Some(res) => {
                for ((d, &y), &r) in dst.iter_mut().zip(row).zip(res) {
                    *d = y + bias + r;
                }
            }
            None => {
                for (d, &y) in dst.iter_mut().zip(row) {
                    *d = y + bias;
                }
            }
        }
        if relu {
            for d in dst.iter_mut() {
                *d = d.max(0.0);
            }
        }
    }
}

/// `m[r * ms + t] = Σ_k u[k * mr + r] * v[k * vs + t]` for `r < mr`, `t < NR`.
fn micro(mr: usize, k: usize, u: &[f32], v: &[f32], vs: usize, m: &mut [f32], ms: usize) {
    assert!(mr <= MR && u.len() >= k * mr && m.len() >= (mr - 1) * ms + NR);
    assert!(k == 0 || v.len() >= (k - 1) * vs + NR);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA; the asserts above bound every read and write.
        unsafe {
            let (u, v, m) = (u.as_ptr(), v.as_ptr(), m.as_mut_ptr());
            match mr {
                6 => avx2::micro::<6>(k, u, v, vs, m, ms),
                5 => avx2::micro::<5>(k, u, v, vs, m, ms),
                4 => avx2::micro::<4>(k, u, v, vs, m, ms),
                3 => avx2::micro::<3>(k, u, v, vs, m, ms),
                2 => avx2::micro::<2>(k, u, v, vs, m, ms),
                _ => avx2::micro::<1>(k, u, v, vs, m, ms),
            }
        }
        return;
    }
    for r in 0..mr {
        let mut acc = [0f32; NR];
        for kk in 0..k {
            let a = u[kk * mr + r];
            for (s, &b) in acc.iter_mut().zip(&v[kk * vs..kk * vs + NR]) {
                *s += a * b;
            }
        }
        m[r * ms..r * ms + NR].copy_from_slice(&acc);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// The [`super::micro`] block for `R` rows: 2R accumulators of 8 lanes.
    ///
    /// # Safety
    /// AVX2 + FMA present; `u` holds `k * R` floats, `v` rows of 16 at stride `vs`, `m` rows of
    /// 16 at stride `ms`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn micro<const R: usize>(
        k: usize,
        u: *const f32,
        v: *const f32,
        vs: usize,
        m: *mut f32,
        ms: usize,
    ) {
        // SAFETY: the caller's contract bounds every pointer below.
        unsafe {
            let mut a0 = [_mm256_setzero_ps(); R];
            let mut a1 = [_mm256_setzero_ps(); R];
            for kk in 0..k {
                let vp = v.add(kk * vs);
                let (v0, v1) = (_mm256_loadu_ps(vp), _mm256_loadu_ps(vp.add(8)));
                let up = u.add(kk * R);
                for r in 0..R {
                    let b = _mm256_broadcast_ss(&*up.add(r));
                    a0[r] = _mm256_fmadd_ps(b, v0, a0[r]);
                    a1[r] = _mm256_fmadd_ps(b, v1, a1[r]);
                }
            }
            for r in 0..R {
                _mm256_storeu_ps(m.add(r * ms), a0[r]);
                _mm256_storeu_ps(m.add(r * ms + 8), a1[r]);
            }
        }
    }
}
