//! Blocked ("flash") attention with an online softmax: `softmax(q k^T * scale) v` without ever
//! holding more than one `[BLOCK_K, BLOCK_Q]` block of scores per task, parallel over (head,
//! query block).
//!
//! Everything is computed transposed, queries along the vector lanes: per task `Qᵀ` (scaled) is
//! packed `[d][queries]`; per key block `Sᵀ = K Qᵀ` (`[keys][queries]`) by the 6x16 register
//! microkernel of `kernels/micro.rs` (6 keys x 16 queries, accumulated over the head size
//! `d`), the running per-query max `m` and sum `l` are updated with loops that run along the
//! queries (`exp` vectorised, see `simd.rs`), the accumulated `Oᵀ` (`[dv][queries]`) is rescaled
//! by `exp(m_old - m_new)` and `Oᵀ += Vᵀ Pᵀ` by the same microkernel (6 value columns x 16
//! queries, accumulated over the keys); finally `O = (Oᵀ / l)ᵀ`. Same maths as the one-shot
//! softmax, reordered; results agree to float rounding. The `gemm` crate's kernel, used before,
//! re-packed both operands on each of these small calls and ran the SD 1.5 self-attention
//! (16 x 4096 x 40) at 51 GFLOP/s here, PyTorch's SDPA at 78.

use candle_core::{Device, Result, Tensor};
use rayon::prelude::*;

use super::micro::{MR, NR, micro_add_cols, micro_cols};
use super::{SendPtr, on_cpu_f32, simd, with_slice};

/// Queries per task (a multiple of [`NR`]).
const BLOCK_Q: usize = 128;
/// Keys per score block (a multiple of [`MR`]): `Sᵀ` is `BLOCK_K x BLOCK_Q` floats (120 KiB, in
/// L2).
const BLOCK_K: usize = 240;

/// `q` `[bh, n, d]`, `k` `[bh, m, d]`, `v` `[bh, m, dv]` (f32, CPU) -> `[bh, n, dv]`. Returns
/// `None` when the tensors are not f32 CPU tensors (the caller uses its own path then).
pub fn flash_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Option<Tensor>> {
    // [bh, n, d] is [batch = bh, n, 1 head * d].
    attention_heads(q, k, v, 1, scale)
}

/// Multi-head attention on the un-split projections: `q` `[b, n, heads * d]`, `k`
/// `[b, m, heads * d]`, `v` `[b, m, heads * dv]` -> `[b, n, heads * dv]`, head `h` using
/// columns `h * d..(h + 1) * d` (what diffusers' `head_to_batch_dim` + SDPA + `batch_to_head_dim`
/// compute, without the two layout copies). `None` when not f32 CPU tensors.
pub fn attention_heads(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f64,
) -> Result<Option<Tensor>> {
    if !(on_cpu_f32(q) && on_cpu_f32(k) && on_cpu_f32(v)) {
        return Ok(None);
    }
    let (b, n, qw) = q.dims3()?;
    let (bk, m, kw) = k.dims3()?;
    let (bv, mv, vw) = v.dims3()?;
    if heads == 0 || bk != b || bv != b || kw != qw || mv != m || qw % heads != 0 || vw % heads != 0
    {
        candle_core::bail!(
            "attention shapes q {:?}, k {:?}, v {:?} do not match {heads} heads",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    let (d, dv) = (qw / heads, vw / heads);
    let mut out = vec![0f32; b * n * vw];
    if out.is_empty() || m == 0 {
        return Ok(Some(Tensor::from_vec(out, (b, n, vw), &Device::Cpu)?));
    }
    let scale = scale as f32;
    with_slice(q, |qs| {
        with_slice(k, |ks| {
            with_slice(v, |vs| {
                // K and V of every (image, head) packed once for the microkernel (see `Packed`).
                let packed: Vec<Packed> = (0..b * heads)
                    .into_par_iter()
                    .map(|bh| {
                        let (bi, h) = (bh / heads, bh % heads);
                        let k = &ks[bi * m * kw + h * d..];
                        let v = &vs[bi * m * vw + h * dv..];
                        Packed::new((k, kw), (v, vw), m, d, dv)
                    })
                    .collect();
                let out_ptr = SendPtr(out.as_mut_ptr());
                let qblocks = n.div_ceil(BLOCK_Q);
                (0..b * heads * qblocks).into_par_iter().for_each(|task| {
                    let (bh, qb) = (task / qblocks, task % qblocks);
                    let (bi, h) = (bh / heads, bh % heads);
                    let r0 = qb * BLOCK_Q;
                    let rows = BLOCK_Q.min(n - r0);
                    let q = &qs[(bi * n + r0) * qw + h * d..];
                    // SAFETY: rows [r0, r0 + rows) x the dv columns of head h of image bi: this
                    // task's only, inside `out` ([b, n, vw]).
                    let o = unsafe { out_ptr.get().add((bi * n + r0) * vw + h * dv) };
                    // SAFETY: `o` as above; `q` holds `rows` rows of `d` at stride `qw`.
                    unsafe { attend_block(&packed[bh], (q, qw), (o, vw), rows, scale) };
                });
                Ok(())
            })
        })
    })?;
    Ok(Some(Tensor::from_vec(out, (b, n, vw), &Device::Cpu)?))
}

/// One (image, head)'s keys and values in the microkernel's operand order, per block of
/// [`BLOCK_K`] keys (the last one shorter): `k` holds the keys in groups of 6, `[group][d][6]`
/// (the last group narrower), `v` per block `[value group][keys][6]` (groups of 6 of the `dv`
/// value columns, the last one narrower), block `c0` starting at `c0 * dv`.
struct Packed {
    k: Vec<f32>,
    v: Vec<f32>,
    m: usize,
    d: usize,
    dv: usize,
}

impl Packed {
    /// `k` / `v`: the head's first key / value row and its row stride.
    fn new(
        (k, k_rs): (&[f32], usize),
        (v, v_rs): (&[f32], usize),
        m: usize,
        d: usize,
        dv: usize,
    ) -> Self {
        let mut kp = vec![0f32; m * d];
        for c in 0..m {
            let (g, i) = (c / MR, c % MR);
            let mr = MR.min(m - g * MR);
            for (kk, &x) in k[c * k_rs..][..d].iter().enumerate() {
                kp[g * MR * d + kk * mr + i] = x;
            }
        }
        let mut vp = vec![0f32; m * dv];
        for c0 in (0..m).step_by(BLOCK_K) {
            let cols = BLOCK_K.min(m - c0);
            let blk = &mut vp[c0 * dv..][..cols * dv];
            for c in 0..cols {
                for (j, &x) in v[(c0 + c) * v_rs..][..dv].iter().enumerate() {
                    let (g, i) = (j / MR, j % MR);
                    let mr = MR.min(dv - g * MR);
                    blk[g * MR * cols + c * mr + i] = x;
                }
            }
        }
        Packed {
            k: kp,
            v: vp,
            m,
            d,
            dv,
        }
    }
}

/// Attention of `rows` queries (`q`: first row, row stride) over one head's packed keys and
/// values, written to `o` (first row, row stride).
///
/// # Safety
/// `o` must address `rows` rows of `dv` floats at its stride that no one else writes meanwhile.
unsafe fn attend_block(
    p: &Packed,
    (q, q_rs): (&[f32], usize),
    (o, o_rs): (*mut f32, usize),
    rows: usize,
    scale: f32,
) {
    let (m, d, dv) = (p.m, p.d, p.dv);
    // Queries padded to whole microkernel columns; the padding queries are zero and dropped.
    let rp = rows.div_ceil(NR) * NR;
    // Qᵀ * scale: [d][rp].
    let mut qt = vec![0f32; d * rp];
    for r in 0..rows {
        for (k, &x) in q[r * q_rs..][..d].iter().enumerate() {
            qt[k * rp + r] = x * scale;
        }
    }
    let mut st = vec![0f32; BLOCK_K * rp];
    let mut ot = vec![0f32; dv * rp];
    let mut row_max = vec![f32::NEG_INFINITY; rp];
    let mut row_sum = vec![0f32; rp];
    let mut alpha = vec![0f32; rp];
    for c0 in (0..m).step_by(BLOCK_K) {
        let cols = BLOCK_K.min(m - c0);
        // Sᵀ[c][r] = Σ_k K[c][k] Qᵀ[k][r], per group of 6 keys.
        let g0 = c0 / MR;
        for g in 0..cols.div_ceil(MR) {
            let mr = MR.min(cols - g * MR);
            let u = &p.k[(g0 + g) * MR * d..][..mr * d];
            micro_cols(mr, d, u, &qt, rp, &mut st[g * MR * rp..], rp, rp);
        }
        let st = &mut st[..cols * rp];
        softmax_update(st, rp, &mut row_max, &mut row_sum, &mut alpha);
        for oj in ot.chunks_exact_mut(rp) {
            scale_by(oj, &alpha);
        }
        // Oᵀ[j][r] += Σ_c V[c][j] Pᵀ[c][r], per group of 6 value columns.
        let vb = &p.v[c0 * dv..][..cols * dv];
        for g in 0..dv.div_ceil(MR) {
            let mr = MR.min(dv - g * MR);
            let u = &vb[g * MR * cols..][..mr * cols];
            micro_add_cols(mr, cols, u, st, rp, &mut ot[g * MR * rp..], rp, rp);
        }
    }
    for r in 0..rows {
        let inv = 1.0 / row_sum[r];
        // SAFETY: row r of this task's output block (the caller's contract).
        let o = unsafe { std::slice::from_raw_parts_mut(o.add(r * o_rs), dv) };
        for (j, x) in o.iter_mut().enumerate() {
            *x = ot[j * rp + r] * inv;
        }
    }
}

simd::multiversion! {
    /// One key block of the online softmax, along the queries: `st` is `Sᵀ` (`[keys][rp]`);
    /// per query `r` the new max `m'` = max(`row_max[r]`, the block's max), `alpha[r]` =
    /// `exp(row_max[r] - m')` (0 on the first block), `st[c][r] = exp(st[c][r] - m')`,
    /// `row_sum[r] = row_sum[r] * alpha[r] + Σ_c st[c][r]`, `row_max[r] = m'`.
    pub fn softmax_update(st: &mut [f32], rp: usize, row_max: &mut [f32], row_sum: &mut [f32], alpha: &mut [f32]) {
        let (row_max, row_sum, alpha) = (&mut row_max[..rp], &mut row_sum[..rp], &mut alpha[..rp]);
        let mut new_max = [f32::NEG_INFINITY; BLOCK_Q];
        let new_max = &mut new_max[..rp];
        new_max.copy_from_slice(row_max);
        for c in st.chunks_exact(rp) {
            // max() rather than a compare-and-select: an unconditional store vectorises.
            for (m, &x) in new_max.iter_mut().zip(c) {
                *m = m.max(x);
            }
        }
        for ((a, &old), &new) in alpha.iter_mut().zip(row_max.iter()).zip(new_max.iter()) {
            *a = if old == f32::NEG_INFINITY { 0.0 } else { simd::exp(old - new) };
        }
        for (s, &a) in row_sum.iter_mut().zip(alpha.iter()) {
            *s *= a;
        }
        for c in st.chunks_exact_mut(rp) {
            for ((x, &m), s) in c.iter_mut().zip(new_max.iter()).zip(row_sum.iter_mut()) {
                *x = simd::exp(*x - m);
                *s += *x;
            }
        }
        row_max.copy_from_slice(new_max);
    }
}

simd::multiversion! {
    /// `x[i] *= a[i]`.
    pub fn scale_by(x: &mut [f32], a: &[f32]) {
        for (v, &s) in x.iter_mut().zip(a) {
            *v *= s;
        }
    }
}
