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
//!
//! [`attention_heads_bf16`] runs the two products on the bf16 microkernel of `kernels/bf16.rs`
//! (`vdpbf16ps`, f32 accumulation), as PyTorch's bf16 SDPA does: `K` and `Vᵀ` are rounded to
//! bf16 once per (image, head), `Qᵀ * scale` once per task, and each block of probabilities
//! `Pᵀ` as it is multiplied by `Vᵀ`; the scores, the online softmax (max, `exp`, sums, the
//! rescaling) and the accumulated output stay f32.

use candle_core::{Device, Result, Tensor};
use rayon::prelude::*;

use super::bf16::{self, Bf16Kernel, to_bf16};
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
    run_heads(
        q,
        k,
        v,
        heads,
        scale,
        |(k, v, m, d, dv)| Packed::new(k, v, m, d, dv),
        attend_block,
    )
}

/// [`attention_heads`] with `Sᵀ = K Qᵀ` and `Oᵀ += Vᵀ Pᵀ` on the bf16 `kernel` (see the module
/// docs: `Q * scale`, `K`, `V` and the probabilities rounded to bf16 to nearest even, products
/// accumulated in f32; the softmax in f32). Shapes, layout and `None` as [`attention_heads`];
/// where the head size `d` is 0 or odd (a pair of `d` would straddle two heads) or `kernel` is the
/// AMX one (it has no driver for these operands: the model passes `bf16::conv_kernel`'s
/// choice, the AVX-512 BF16 kernel on AMX CPUs) this is
/// [`attention_heads`]. Measured error: see `tests/core/kernels.rs`
/// (`bf16_attention_is_the_f32_attention_of_bf16_operands`) and docs/speed.md.
///
/// # Errors
/// As [`attention_heads`]: shapes that do not match `heads`.
pub fn attention_heads_bf16(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f64,
    kernel: Bf16Kernel,
) -> Result<Option<Tensor>> {
    let d = if heads > 0 {
        q.dims().last().copied().unwrap_or(0) / heads
    } else {
        0
    };
    if kernel == Bf16Kernel::Amx || d == 0 || !d.is_multiple_of(2) {
        return attention_heads(q, k, v, heads, scale);
    }
    run_heads(
        q,
        k,
        v,
        heads,
        scale,
        |(k, v, m, d, dv)| Packed16::new(k, v, m, d, dv, kernel),
        attend_block16,
    )
}

/// Operands of one (image, head): the first key / value row and its row stride, `m`, `d`, `dv`.
type HeadOperands<'a> = ((&'a [f32], usize), (&'a [f32], usize), usize, usize, usize);

/// The frame of [`attention_heads`] and [`attention_heads_bf16`]: checks the shapes, packs the
/// keys and values of every (image, head) with `pack`, runs `attend` on every (head, query
/// block) task in parallel.
fn run_heads<P: Send + Sync>(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f64,
    pack: impl Fn(HeadOperands) -> P + Sync,
    attend: unsafe fn(&P, (&[f32], usize), (*mut f32, usize), usize, f32),
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
                // K and V of every (image, head) packed once for the microkernel.
                let packed: Vec<P> = (0..b * heads)
                    .into_par_iter()
                    .map(|bh| {
                        let (bi, h) = (bh / heads, bh % heads);
                        let k = &ks[bi * m * kw + h * d..];
                        let v = &vs[bi * m * vw + h * dv..];
                        pack(((k, kw), (v, vw), m, d, dv))
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
                    unsafe { attend(&packed[bh], (q, qw), (o, vw), rows, scale) };
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
    // SAFETY: the caller's contract.
    unsafe { write_rows(&ot, &row_sum, rp, rows, dv, (o, o_rs)) };
}

/// The end of [`attend_block`] and [`attend_block16`]: `O = (Oᵀ / l)ᵀ`, row `r < rows` of `o`
/// (first row, row stride) = column `r` of `ot` (`[dv][rp]`) divided by `row_sum[r]`.
///
/// # Safety
/// `o` must address `rows` rows of `dv` floats at its stride that no one else writes meanwhile.
unsafe fn write_rows(
    ot: &[f32],
    row_sum: &[f32],
    rp: usize,
    rows: usize,
    dv: usize,
    (o, o_rs): (*mut f32, usize),
) {
    for r in 0..rows {
        let inv = 1.0 / row_sum[r];
        // SAFETY: row r of the output block (the caller's contract).
        let o = unsafe { std::slice::from_raw_parts_mut(o.add(r * o_rs), dv) };
        for (j, x) in o.iter_mut().enumerate() {
            *x = ot[j * rp + r] * inv;
        }
    }
}

/// One (image, head)'s keys and values as bf16 bits for the bf16 microkernel (`w` operands,
/// pairs consecutive along the summed axis): `k` `[m][d]` (pairs of `d`), `vt` = `Vᵀ`
/// `[dv][mp]` (pairs of keys; `mp` = `m` rounded up to even, the padding key zero).
struct Packed16 {
    k: Vec<u16>,
    vt: Vec<u16>,
    m: usize,
    mp: usize,
    d: usize,
    dv: usize,
    kernel: Bf16Kernel,
}

impl Packed16 {
    /// `k` / `v`: the head's first key / value row and its row stride; `d` even.
    fn new(
        (k, k_rs): (&[f32], usize),
        (v, v_rs): (&[f32], usize),
        m: usize,
        d: usize,
        dv: usize,
        kernel: Bf16Kernel,
    ) -> Self {
        let mp = m.next_multiple_of(2);
        let mut kb = vec![0u16; m * d];
        for (c, row) in kb.chunks_exact_mut(d).enumerate() {
            for (o, &x) in row.iter_mut().zip(&k[c * k_rs..][..d]) {
                *o = to_bf16(x);
            }
        }
        let mut vt = vec![0u16; dv * mp];
        for c in 0..m {
            for (j, &x) in v[c * v_rs..][..dv].iter().enumerate() {
                vt[j * mp + c] = to_bf16(x);
            }
        }
        Packed16 {
            k: kb,
            vt,
            m,
            mp,
            d,
            dv,
            kernel,
        }
    }
}

/// [`attend_block`] on the bf16 microkernel (tiles of [`bf16::MR`] keys or value columns x
/// [`bf16::NR`] queries).
///
/// # Safety
/// As [`attend_block`].
unsafe fn attend_block16(
    p: &Packed16,
    (q, q_rs): (&[f32], usize),
    (o, o_rs): (*mut f32, usize),
    rows: usize,
    scale: f32,
) {
    const TR: usize = bf16::MR;
    const TC: usize = bf16::NR;
    let (m, mp, d, dv) = (p.m, p.mp, p.d, p.dv);
    let kp = d / 2;
    // Queries padded to whole tiles of TC (zero queries, dropped at the end).
    let rp = rows.div_ceil(TC) * TC;
    let panels = rp / TC;
    // Qᵀ * scale as bf16 pairs of d, per panel of TC queries: [panel][kp][TC].
    let mut qp = vec![0u32; panels * kp * TC];
    for r in 0..rows {
        let panel = &mut qp[(r / TC) * kp * TC + r % TC..];
        for (i, pair) in q[r * q_rs..][..d].chunks_exact(2).enumerate() {
            panel[i * TC] =
                to_bf16(pair[0] * scale) as u32 | (to_bf16(pair[1] * scale) as u32) << 16;
        }
    }
    let mut st = vec![0f32; BLOCK_K * rp];
    let mut pp = vec![0u32; panels * BLOCK_K.div_ceil(2) * TC];
    let mut ot = vec![0f32; dv * rp];
    let mut row_max = vec![f32::NEG_INFINITY; rp];
    let mut row_sum = vec![0f32; rp];
    let mut alpha = vec![0f32; rp];
    let mut tile = [[0f32; TC]; TR];
    for c0 in (0..m).step_by(BLOCK_K) {
        let cols = BLOCK_K.min(m - c0);
        // Sᵀ[c][r] = Σ_k K[c][k] (Qᵀ scale)[k][r], per tile of TR keys x TC queries.
        for g0 in (0..cols).step_by(TR) {
            let r = TR.min(cols - g0);
            let w = &p.k[(c0 + g0) * d..];
            for (pn, xp) in qp.chunks_exact(kp * TC).enumerate() {
                bf16::micro(p.kernel, r, kp, w, d, xp, &mut tile);
                for (c, t) in tile.iter().enumerate().take(r) {
                    st[(g0 + c) * rp + pn * TC..][..TC].copy_from_slice(t);
                }
            }
        }
        // The online softmax, its probabilities Pᵀ written as bf16 pairs of keys per panel:
        // [panel][cols / 2 rounded up][TC].
        let kc = cols.div_ceil(2);
        softmax_to_pairs(
            &st[..cols * rp],
            rp,
            &mut row_max,
            &mut row_sum,
            &mut alpha,
            &mut pp[..panels * kc * TC],
        );
        for oj in ot.chunks_exact_mut(rp) {
            scale_by(oj, &alpha);
        }
        // Oᵀ[j][r] += Σ_c Vᵀ[j][c] Pᵀ[c][r], per tile of TR value columns x TC queries.
        for j0 in (0..dv).step_by(TR) {
            let r = TR.min(dv - j0);
            let w = &p.vt[j0 * mp + c0..];
            for (pn, xp) in pp[..panels * kc * TC].chunks_exact(kc * TC).enumerate() {
                bf16::micro(p.kernel, r, kc, w, mp, xp, &mut tile);
                for (c, t) in tile.iter().enumerate().take(r) {
                    for (o, &x) in ot[(j0 + c) * rp + pn * TC..][..TC].iter_mut().zip(t) {
                        *o += x;
                    }
                }
            }
        }
    }
    // SAFETY: the caller's contract.
    unsafe { write_rows(&ot, &row_sum, rp, rows, dv, (o, o_rs)) };
}

simd::multiversion! {
    /// [`softmax_update`] for the bf16 products: the same new max, `alpha` and sums (`st` is
    /// `Sᵀ`, `[cols][rp]`), but the probabilities `exp(st[c][r] - m')` go to `pp` as bf16 pairs
    /// of keys instead of back into `st`: `[rp / 32][cols.div_ceil(2)][32]`, query `r` in lane
    /// `r % 32` of panel `r / 32`, pair `i` holding keys `2i` (low half) and `2i + 1` (high half;
    /// zero past `cols`). Rounded to nearest even, NaN kept NaN (as [`to_bf16`]), on integer
    /// lanes so that it vectorises; the sums add the f32 probabilities.
    pub fn softmax_to_pairs(st: &[f32], rp: usize, row_max: &mut [f32], row_sum: &mut [f32], alpha: &mut [f32], pp: &mut [u32]) {
        const TC: usize = bf16::NR;
        #[inline(always)]
        fn round(x: f32) -> u32 {
            let b = x.to_bits();
            let r = b.wrapping_add(0x7fff + ((b >> 16) & 1));
            let nan = b & 0x7fff_ffff > 0x7f80_0000;
            (if nan { b | 0x0040_0000 } else { r }) & 0xffff_0000
        }
        let cols = st.len() / rp;
        let (row_max, row_sum, alpha) = (&mut row_max[..rp], &mut row_sum[..rp], &mut alpha[..rp]);
        let mut new_max = [f32::NEG_INFINITY; BLOCK_Q];
        let new_max = &mut new_max[..rp];
        rescale(st, row_max, row_sum, alpha, new_max);
        let kc = cols.div_ceil(2);
        for i in 0..kc {
            let a = &st[2 * i * rp..][..rp];
            let b = (2 * i + 1 < cols).then(|| &st[(2 * i + 1) * rp..][..rp]);
            for pn in 0..rp / TC {
                let dst = &mut pp[(pn * kc + i) * TC..][..TC];
                let (a, m) = (&a[pn * TC..][..TC], &new_max[pn * TC..][..TC]);
                let sum = &mut row_sum[pn * TC..][..TC];
                match b {
                    Some(b) => {
                        let b = &b[pn * TC..][..TC];
                        for t in 0..TC {
                            let (x, y) = (simd::exp_fma(a[t] - m[t]), simd::exp_fma(b[t] - m[t]));
                            sum[t] += x + y;
                            dst[t] = (round(x) >> 16) | round(y);
                        }
                    }
                    None => {
                        for t in 0..TC {
                            let x = simd::exp_fma(a[t] - m[t]);
                            sum[t] += x;
                            dst[t] = round(x) >> 16;
                        }
                    }
                }
            }
        }
        row_max.copy_from_slice(new_max);
    }
}

/// The part of one key block's online-softmax update shared by [`softmax_update`] and
/// [`softmax_to_pairs`] (inlined into their vectorised versions): `new_max[r]` = max(`row_max[r]`,
/// the block's max over `st` `[keys][rp]`), `alpha[r]` = `exp(row_max[r] - new_max[r])` (0 on
/// the first block), `row_sum[r] *= alpha[r]`. All slices `rp` long (`st` a multiple).
#[inline(always)]
fn rescale(
    st: &[f32],
    row_max: &[f32],
    row_sum: &mut [f32],
    alpha: &mut [f32],
    new_max: &mut [f32],
) {
    new_max.copy_from_slice(row_max);
    for c in st.chunks_exact(row_max.len()) {
        // max() rather than a compare-and-select: an unconditional store vectorises.
        for (m, &x) in new_max.iter_mut().zip(c) {
            *m = m.max(x);
        }
    }
    for ((a, &old), &new) in alpha.iter_mut().zip(row_max.iter()).zip(new_max.iter()) {
        *a = if old == f32::NEG_INFINITY {
            0.0
        } else {
            simd::exp(old - new)
        };
    }
    for (s, &a) in row_sum.iter_mut().zip(alpha.iter()) {
        *s *= a;
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
        rescale(st, row_max, row_sum, alpha, new_max);
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
