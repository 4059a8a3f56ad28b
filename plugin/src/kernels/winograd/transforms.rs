//! The Winograd F(4x4, 3x3) transforms (interpolation points 0, ±1, ±2, ∞): the weights'
//! `U = G g Gᵀ` (once per call), the input tiles' `V = Bᵀ d B` and the output tiles'
//! `Y = Aᵀ M A`, each a contiguous loop over the tiles of one job so that it vectorises (compiled
//! for AVX2+FMA when the CPU has it), plus the column split and the fused bias / residual / ReLU
//! of a finished output row.

use rayon::prelude::*;

use super::super::micro::MR;
use super::super::{Scratch, SendPtr, simd};

/// `U = G g Gᵀ` for every (cout, cin), packed `[ξ][cout block][cin][mr]` (`ξ = 6 * row + col`,
/// blocks of [`MR`] output channels, the last one shorter).
pub(super) fn transform_weights(wt: &[f32], cout: usize, cin: usize) -> Scratch {
    transform_weights_at(
        wt,
        cout,
        cin,
        |xi, co| {
            let (cb, r) = (co / MR, co % MR);
            xi * cout * cin + cb * MR * cin + r
        },
        |co| MR.min(cout - co / MR * MR),
    )
}

/// Input channels per vectorised chunk of [`weight_chunk`].
const WL: usize = 16;

/// `U = G g Gᵀ` for every (cout, cin), element `(ξ, co, ci)` stored at `base(ξ, co) + ci *
/// step(co)` (together a permutation of `0..36 cout cin`). Parallel over output channels; per
/// chunk of [`WL`] input channels the 36 values are computed lane-wise (vectorised) by
/// [`weight_chunk`] and stored along `ci`. The arithmetic is the scalar formula's, operation for
/// operation (divisions included), so `U` does not depend on the chunking. This runs on every
/// call of the convolution; before the chunks (one scalar channel pair at a time, 63 divisions
/// each, 36 scattered stores) it cost ~45 ms of a 640 -> 640 call at 32x32, batch 2 (the
/// convolution itself ~40 ms), ~0.9 s of an SD 1.5 UNet step.
fn transform_weights_at(
    wt: &[f32],
    cout: usize,
    cin: usize,
    base: impl Fn(usize, usize) -> usize + Sync,
    step: impl Fn(usize) -> usize + Sync,
) -> Scratch {
    let len = 36 * cout * cin;
    // Every slot is written below (`base`/`step` are a permutation), so the reused buffer's
    // old contents never show.
    let mut u = Scratch::new(len);
    let ptr = SendPtr(u.as_mut_ptr());
    (0..cout).into_par_iter().for_each(|co| {
        let st = step(co);
        let bases: [usize; 36] = std::array::from_fn(|xi| base(xi, co));
        let wrow = &wt[co * cin * 9..(co + 1) * cin * 9];
        let mut vals = [[0f32; WL]; 36];
        for c0 in (0..cin).step_by(WL) {
            let n = WL.min(cin - c0);
            weight_chunk(&wrow[c0 * 9..(c0 + n) * 9], &mut vals);
            for (xi, (&b, row)) in bases.iter().zip(&vals).enumerate() {
                let first = b + c0 * st;
                assert!(
                    first + (n - 1) * st < len,
                    "U slot of ({xi}, {co}, {c0}) out of range"
                );
                for (l, &val) in row[..n].iter().enumerate() {
                    // SAFETY: in bounds (asserted); `base`/`step` are a permutation of the 36
                    // cout cin slots, and each (ξ, co, ci) slot is written by the task of `co`
                    // only.
                    unsafe { *ptr.get().add(first + l * st) = val };
                }
            }
        }
    });
    u
}

/// `G` times a column `(a, b, c)`: the 6 values of F(4x4, 3x3)'s weight transform.
#[inline(always)]
fn g_col(a: f32, b: f32, c: f32) -> [f32; 6] {
    [
        a / 4.0,
        -(a + b + c) / 6.0,
        -(a - b + c) / 6.0,
        a / 24.0 + b / 12.0 + c / 6.0,
        a / 24.0 - b / 12.0 + c / 6.0,
        c,
    ]
}

simd::multiversion! {
    /// `out[ξ][l] = (G g_l Gᵀ)[ξ]` for the 3x3 kernels `g_l = g[9 l..9 l + 9]` (row-major) of up to
    /// [`WL`] input channels `l` (`g.len() / 9` of them; lanes past them are computed on zeros).
    pub fn weight_chunk(g: &[f32], out: &mut [[f32; WL]; 36]) {
        let n = (g.len() / 9).min(WL);
        // gk[k][l] = g_l[k]: one lane per input channel.
        let mut gk = [[0f32; WL]; 9];
        for (l, kern) in g.chunks_exact(9).take(n).enumerate() {
            for (k, &x) in kern.iter().enumerate() {
                gk[k][l] = x;
            }
        }
        // t[c][i] = (G g)[i][c]: G times column c of g.
        let mut t = [[[0f32; WL]; 6]; 3];
        for (c, tc) in t.iter_mut().enumerate() {
            for l in 0..WL {
                let col = g_col(gk[c][l], gk[3 + c][l], gk[6 + c][l]);
                for (i, v) in col.iter().enumerate() {
                    tc[i][l] = *v;
                }
            }
        }
        // (G g) Gᵀ: row i of G g times Gᵀ is G times that row.
        for i in 0..6 {
            for l in 0..WL {
                let row = g_col(t[0][i][l], t[1][i][l], t[2][i][l]);
                for (j, v) in row.iter().enumerate() {
                    out[6 * i + j][l] = *v;
                }
            }
        }
    }
}

/// `Bᵀ d B` for `n` tiles of one channel: `d` = 6 padded rows of 4 phase arrays of `n + 1`
/// columns; writes `v[ξ * plane + at + tx]` for `tx < n` and zeros for `n <= tx < n + pad`;
/// `rows` is scratch of `24 * (n + 1)` floats.
pub(super) fn input_transform(
    d: &[f32],
    n: usize,
    pad: usize,
    rows: &mut [f32],
    v: &mut [f32],
    at: usize,
    plane: usize,
) {
    input_transform_simd(d, n, pad, rows, v, at, plane);
}

/// The first `n` floats of `o` (the tiles of one piece), the rest of `o` zeroed (the padding
/// tiles the microkernel reads).
#[inline(always)]
fn tiles(o: &mut [f32], n: usize) -> &mut [f32] {
    let (head, pad) = o.split_at_mut(n);
    pad.fill(0.0);
    head
}

// Every loop below runs over slices cut to exactly its trip count, so that the compiler drops
// the bounds checks and vectorises it.
simd::multiversion! {
    pub fn input_transform_simd(d: &[f32], n: usize, pad: usize, rows: &mut [f32], v: &mut [f32], at: usize, plane: usize) {
        let n1 = n + 1;
        let w = 4 * n1;
        // Bᵀ over the 6 rows, per phase array: rows[(a * 4 + ph) * n1 + k].
        {
            let r = |i: usize| &d[i * w..][..w];
            let (d0, d1, d2, d3, d4, d5) = (r(0), r(1), r(2), r(3), r(4), r(5));
            let rows = &mut rows[..6 * w];
            let (b0, rest) = rows.split_at_mut(w);
            let (b1, rest) = rest.split_at_mut(w);
            let (b2, rest) = rest.split_at_mut(w);
            let (b3, rest) = rest.split_at_mut(w);
            let (b4, b5) = rest.split_at_mut(w);
            let b5 = &mut b5[..w];
            for k in 0..w {
                let (x0, x1, x2, x3, x4, x5) = (d0[k], d1[k], d2[k], d3[k], d4[k], d5[k]);
                b0[k] = 4.0 * x0 - 5.0 * x2 + x4;
                b1[k] = -4.0 * (x1 + x2) + x3 + x4;
                b2[k] = 4.0 * (x1 - x2) - x3 + x4;
                b3[k] = 2.0 * (x3 - x1) - x2 + x4;
                b4[k] = 2.0 * (x1 - x3) - x2 + x4;
                b5[k] = 4.0 * x1 - 5.0 * x3 + x5;
            }
        }
        // Bᵀ over the 6 columns of each tile: c0..c3 = phases 0..3 at tx, c4, c5 = phases 0, 1
        // at tx + 1.
        for a in 0..6 {
            let b = &rows[a * w..][..w];
            let ph = |i: usize, shift: usize| &b[i * n1 + shift..][..n];
            let (p0, p1, p2, p3) = (ph(0, 0), ph(1, 0), ph(2, 0), ph(3, 0));
            let (p4, p5) = (ph(0, 1), ph(1, 1));
            let vb = &mut v[6 * a * plane..][..6 * plane];
            let (o0, rest) = vb.split_at_mut(plane);
            let (o1, rest) = rest.split_at_mut(plane);
            let (o2, rest) = rest.split_at_mut(plane);
            let (o3, rest) = rest.split_at_mut(plane);
            let (o4, o5) = rest.split_at_mut(plane);
            let o0 = tiles(&mut o0[at..][..n + pad], n);
            let o1 = tiles(&mut o1[at..][..n + pad], n);
            let o2 = tiles(&mut o2[at..][..n + pad], n);
            let o3 = tiles(&mut o3[at..][..n + pad], n);
            let o4 = tiles(&mut o4[at..][..n + pad], n);
            let o5 = tiles(&mut o5[at..][..n + pad], n);
            let (o0, o1, o2, o3, o4, o5) = (&mut o0[..n], &mut o1[..n], &mut o2[..n], &mut o3[..n], &mut o4[..n], &mut o5[..n]);
            for tx in 0..n {
                let (c0, c1, c2, c3, c4, c5) = (p0[tx], p1[tx], p2[tx], p3[tx], p4[tx], p5[tx]);
                o0[tx] = 4.0 * c0 - 5.0 * c2 + c4;
                o1[tx] = -4.0 * (c1 + c2) + c3 + c4;
                o2[tx] = 4.0 * (c1 - c2) - c3 + c4;
                o3[tx] = 2.0 * (c3 - c1) - c2 + c4;
                o4[tx] = 2.0 * (c1 - c3) - c2 + c4;
                o5[tx] = 4.0 * c1 - 5.0 * c3 + c5;
            }
        }
    }
}

/// `Aᵀ M A` for `n` tiles of one output channel: `m[ξ * stride + base + tx]` -> `out` = 4
/// output rows of `4 * n` columns; `t` is scratch of `24 * n` floats.
pub(super) fn output_transform(
    m: &[f32],
    base: usize,
    stride: usize,
    n: usize,
    t: &mut [f32],
    out: &mut [f32],
) {
    output_transform_simd(m, base, stride, n, t, out);
}

simd::multiversion! {
    pub fn output_transform_simd(m: &[f32], base: usize, stride: usize, n: usize, t: &mut [f32], out: &mut [f32]) {
        let at = |xi: usize| &m[xi * stride + base..][..n];
        // Aᵀ over the rows i, per column j, vectorised over the tiles: t[(a * 6 + j) * n + tx].
        let t = &mut t[..24 * n];
        {
            let (t0, rest) = t.split_at_mut(6 * n);
            let (t1, rest) = rest.split_at_mut(6 * n);
            let (t2, t3) = rest.split_at_mut(6 * n);
            for j in 0..6 {
                let (p0, p1, p2) = (at(j), at(6 + j), at(12 + j));
                let (p3, p4, p5) = (at(18 + j), at(24 + j), at(30 + j));
                let (t0, t1) = (&mut t0[j * n..][..n], &mut t1[j * n..][..n]);
                let (t2, t3) = (&mut t2[j * n..][..n], &mut t3[j * n..][..n]);
                for tx in 0..n {
                    let (s12, d12) = (p1[tx] + p2[tx], p1[tx] - p2[tx]);
                    let (s34, d34) = (p3[tx] + p4[tx], p3[tx] - p4[tx]);
                    t0[tx] = p0[tx] + s12 + s34;
                    t1[tx] = d12 + 2.0 * d34;
                    t2[tx] = s12 + 4.0 * s34;
                    t3[tx] = d12 + 8.0 * d34 + p5[tx];
                }
            }
        }
        // Aᵀ over the columns j, then the 4 columns of each tile interleaved into the row.
        let out = &mut out[..16 * n];
        for (a, row) in out.chunks_exact_mut(4 * n.max(1)).enumerate() {
            let ta = |j: usize| t[(a * 6 + j) * n..][..n].iter();
            let cols = ta(0).zip(ta(1)).zip(ta(2)).zip(ta(3)).zip(ta(4)).zip(ta(5));
            for (o, (((((c0, c1), c2), c3), c4), c5)) in row.chunks_exact_mut(4).zip(cols) {
                let (s12, d12) = (c1 + c2, c1 - c2);
                let (s34, d34) = (c3 + c4, c3 - c4);
                o[0] = c0 + s12 + s34;
                o[1] = d12 + 2.0 * d34;
                o[2] = s12 + 4.0 * s34;
                o[3] = d12 + 8.0 * d34 + c5;
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
        let quads = line[..4 * n1].chunks_exact(4);
        for ((((c, a), b), e), f) in quads.zip(d0.iter_mut()).zip(d1.iter_mut()).zip(d2.iter_mut()).zip(d3.iter_mut()) {
            *a = c[0];
            *b = c[1];
            *e = c[2];
            *f = c[3];
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
