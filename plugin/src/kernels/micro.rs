//! A register-blocked GEMM microkernel: an `MR x NR` block of `M = Uᵀ V` accumulated over `k`
//! in registers (an AVX2+FMA 6x16 block of twelve 8-lane accumulators, picked at run time; a
//! portable loop elsewhere), with `U` packed `[k][MR]` and `V` rows of `NR` at any stride.
//! [`micro_cols`] / [`micro_add_cols`] run a whole row of such blocks, two at a time (6x32,
//! twelve 16-lane accumulators) where the CPU has AVX-512F: the same fused multiply-adds in the
//! same order per element, so the values are bit-identical to the AVX2 blocks, with half the
//! instructions (on CPUs with two 512-bit FMA pipes, e.g. AMD Zen 5 and Intel Xeons, twice the
//! FMA throughput).
//! Serves the Winograd convolution (`MR` output channels x `NR` tiles of one transformed
//! position) and the attention kernel (6 keys x 16 queries of `Sᵀ = K Qᵀ`, 6 value columns x 16
//! queries of `Oᵀ = Vᵀ Pᵀ`).

/// Rows (of `U`'s packed columns) per microkernel block.
pub(crate) const MR: usize = 6;
/// Columns per microkernel block (two 8-lane vectors).
pub(crate) const NR: usize = 16;

/// A row of `MR x NR` blocks, `cols` columns (a multiple of [`NR`]): `m[r * ms + t] = Σ_k
/// u[k * mr + r] * v[k * vs + t]` for `r < mr` (1..=[`MR`]), `t < cols`; `u` packed `[k][mr]`,
/// `v` rows of `cols` at stride `vs`, `m` rows of `cols` at stride `ms`. Panics (asserts) when a
/// slice is too short, `mr` is out of range or `cols` is not a multiple of `NR`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn micro_cols(
    mr: usize,
    k: usize,
    u: &[f32],
    v: &[f32],
    vs: usize,
    m: &mut [f32],
    ms: usize,
    cols: usize,
) {
    assert!(cols == 0 || m.len() >= (mr.max(1) - 1) * ms + cols);
    // SAFETY: m's rows 0..mr of `cols` floats at stride ms lie in `m` (asserted), which this
    // call borrows mutably.
    unsafe { cols_checked::<false>(mr, k, u, v, vs, m.as_mut_ptr(), ms, cols) }
}

/// [`micro_cols`], adding onto `m`: `m[r * ms + t] += Σ_k ...` for `t < cols`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn micro_add_cols(
    mr: usize,
    k: usize,
    u: &[f32],
    v: &[f32],
    vs: usize,
    m: &mut [f32],
    ms: usize,
    cols: usize,
) {
    assert!(cols == 0 || m.len() >= (mr.max(1) - 1) * ms + cols);
    // SAFETY: as in `micro_cols`.
    unsafe { cols_checked::<true>(mr, k, u, v, vs, m.as_mut_ptr(), ms, cols) }
}

/// [`micro_cols`] writing through a raw pointer, for tasks that write interleaved rows of one
/// buffer (the batched Winograd GEMMs: `M[co][ξ][tile]`, one `ξ` per task). Same asserts on `u`,
/// `v`, `mr` and `cols`.
///
/// # Safety
/// `m.add(r * ms + t)` for `r < mr`, `t < cols` is valid for writes and written by no one else
/// meanwhile.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn micro_cols_ptr(
    mr: usize,
    k: usize,
    u: &[f32],
    v: &[f32],
    vs: usize,
    m: *mut f32,
    ms: usize,
    cols: usize,
) {
    // SAFETY: the caller's contract.
    unsafe { cols_checked::<false>(mr, k, u, v, vs, m, ms, cols) }
}

/// Whether the 6x32 AVX-512F blocks run: the CPU has AVX-512F and
/// `BEVY_DIFFUSION_MICRO=avx2` (read once; for A/B runs) does not ask for the AVX2 blocks.
#[cfg(target_arch = "x86_64")]
fn use_avx512() -> bool {
    static USE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *USE.get_or_init(|| {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::env::var("BEVY_DIFFUSION_MICRO").as_deref() != Ok("avx2")
    })
}

/// The row of blocks after checking `mr`, `cols`, `u` and `v`.
///
/// # Safety
/// As [`micro_cols_ptr`].
#[allow(clippy::too_many_arguments)]
unsafe fn cols_checked<const ADD: bool>(
    mr: usize,
    k: usize,
    u: &[f32],
    v: &[f32],
    vs: usize,
    m: *mut f32,
    ms: usize,
    cols: usize,
) {
    assert!(cols.is_multiple_of(NR), "micro_cols: {cols} columns");
    if cols == 0 {
        return;
    }
    assert!((1..=MR).contains(&mr) && u.len() >= k * mr);
    assert!(k == 0 || v.len() >= (k - 1) * vs + cols);
    let mut t0 = 0;
    #[cfg(target_arch = "x86_64")]
    if use_avx512() {
        while t0 + 2 * NR <= cols {
            // SAFETY: the CPU has AVX-512F; the asserts bound columns t0..t0 + 32 of every
            // row of u and v, the caller's contract those of m.
            unsafe {
                let (u, v, m) = (u.as_ptr(), v.as_ptr().add(t0), m.add(t0));
                match mr {
                    6 => avx512::micro32::<6, ADD>(k, u, v, vs, m, ms),
                    5 => avx512::micro32::<5, ADD>(k, u, v, vs, m, ms),
                    4 => avx512::micro32::<4, ADD>(k, u, v, vs, m, ms),
                    3 => avx512::micro32::<3, ADD>(k, u, v, vs, m, ms),
                    2 => avx512::micro32::<2, ADD>(k, u, v, vs, m, ms),
                    _ => avx512::micro32::<1, ADD>(k, u, v, vs, m, ms),
                }
            }
            t0 += 2 * NR;
        }
    }
    for tb in (t0..cols).step_by(NR) {
        // SAFETY: columns tb..tb + NR of the caller's rows; u and v checked above.
        unsafe { block::<ADD>(mr, k, u, &v[tb..], vs, m.add(tb), ms) };
    }
}

/// One `MR x NR` block: `m[r * ms + t] = Σ_k u[k * mr + r] * v[k * vs + t]` (`+=` when `ADD`)
/// for `r < mr`, `t < NR`.
///
/// # Safety
/// `1 <= mr <= MR`, `u` holds `k * mr` floats, `v` rows `0..k` of `NR` at stride `vs`, and
/// `m.add(r * ms + t)` (`r < mr`, `t < NR`) is valid for writes and no one else's meanwhile.
unsafe fn block<const ADD: bool>(
    mr: usize,
    k: usize,
    u: &[f32],
    v: &[f32],
    vs: usize,
    m: *mut f32,
    ms: usize,
) {
    debug_assert!((1..=MR).contains(&mr) && u.len() >= k * mr);
    debug_assert!(k == 0 || v.len() >= (k - 1) * vs + NR);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA; the caller's contract bounds every read and write.
        unsafe {
            let (u, v) = (u.as_ptr(), v.as_ptr());
            match mr {
                6 => avx2::micro::<6, ADD>(k, u, v, vs, m, ms),
                5 => avx2::micro::<5, ADD>(k, u, v, vs, m, ms),
                4 => avx2::micro::<4, ADD>(k, u, v, vs, m, ms),
                3 => avx2::micro::<3, ADD>(k, u, v, vs, m, ms),
                2 => avx2::micro::<2, ADD>(k, u, v, vs, m, ms),
                _ => avx2::micro::<1, ADD>(k, u, v, vs, m, ms),
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
        for (t, a) in acc.iter().enumerate() {
            // SAFETY: r < mr, t < NR: the caller's contract.
            unsafe {
                let o = m.add(r * ms + t);
                *o = if ADD { *o + a } else { *a };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// The `MR x NR` block for `R` rows: 2R accumulators of 8 lanes, starting from `m`'s
    /// values when `ADD`.
    ///
    /// # Safety
    /// AVX2 + FMA present; `u` holds `k * R` floats, `v` rows of 16 at stride `vs`, `m` rows of
    /// 16 at stride `ms`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn micro<const R: usize, const ADD: bool>(
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
            if ADD {
                for r in 0..R {
                    a0[r] = _mm256_loadu_ps(m.add(r * ms));
                    a1[r] = _mm256_loadu_ps(m.add(r * ms + 8));
                }
            }
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

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// Two `MR x NR` blocks side by side for `R` rows (32 columns): 2R accumulators of
    /// 16 lanes, starting from `m`'s values when `ADD`. Per element the same `fmadd` sequence
    /// over `k` as the AVX2 block.
    ///
    /// # Safety
    /// AVX-512F present; `u` holds `k * R` floats, `v` rows of 32 at stride `vs`, `m` rows of
    /// 32 at stride `ms`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn micro32<const R: usize, const ADD: bool>(
        k: usize,
        u: *const f32,
        v: *const f32,
        vs: usize,
        m: *mut f32,
        ms: usize,
    ) {
        // SAFETY: the caller's contract bounds every pointer below.
        unsafe {
            let mut a0 = [_mm512_setzero_ps(); R];
            let mut a1 = [_mm512_setzero_ps(); R];
            if ADD {
                for r in 0..R {
                    a0[r] = _mm512_loadu_ps(m.add(r * ms));
                    a1[r] = _mm512_loadu_ps(m.add(r * ms + 16));
                }
            }
            for kk in 0..k {
                let vp = v.add(kk * vs);
                let (v0, v1) = (_mm512_loadu_ps(vp), _mm512_loadu_ps(vp.add(16)));
                let up = u.add(kk * R);
                for r in 0..R {
                    let b = _mm512_set1_ps(*up.add(r));
                    a0[r] = _mm512_fmadd_ps(b, v0, a0[r]);
                    a1[r] = _mm512_fmadd_ps(b, v1, a1[r]);
                }
            }
            for r in 0..R {
                _mm512_storeu_ps(m.add(r * ms), a0[r]);
                _mm512_storeu_ps(m.add(r * ms + 16), a1[r]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// A row of blocks (the AVX-512 pairs where the CPU has AVX-512F, an odd block left for
    /// the AVX2 one) gives exactly the values of one block at a time, overwriting and
    /// adding, for every `mr`, `k` = 0 / odd / long, strides wider than the columns; and the
    /// values are the products (against an f64 sum).
    #[test]
    fn a_row_of_blocks_is_exactly_the_blocks_one_by_one() {
        for mr in 1..=MR {
            for (k, cols) in [(0, 16), (1, 32), (7, 48), (37, 64), (130, 80)] {
                let (vs, ms) = (cols + 5, cols + 3);
                let u = values(k * mr, (mr * 100 + k) as u64);
                let v = values(k.max(1) * vs, (k + 7) as u64);
                let m0 = values(mr * ms, 3);
                for add in [false, true] {
                    let mut want = m0.clone();
                    for tb in (0..cols).step_by(NR) {
                        let mp = want[tb..].as_mut_ptr();
                        // SAFETY: rows 0..mr, columns tb..tb + NR lie in `want` (mr * ms floats).
                        unsafe {
                            if add {
                                block::<true>(mr, k, &u, &v[tb..], vs, mp, ms);
                            } else {
                                block::<false>(mr, k, &u, &v[tb..], vs, mp, ms);
                            }
                        }
                    }
                    let mut got = m0.clone();
                    if add {
                        micro_add_cols(mr, k, &u, &v, vs, &mut got, ms, cols);
                    } else {
                        micro_cols(mr, k, &u, &v, vs, &mut got, ms, cols);
                    }
                    assert!(got == want, "mr {mr}, k {k}, cols {cols}, add {add}");
                    for r in 0..mr {
                        for t in 0..cols {
                            let mut exact: f64 = (0..k)
                                .map(|kk| u[kk * mr + r] as f64 * v[kk * vs + t] as f64)
                                .sum();
                            if add {
                                exact += m0[r * ms + t] as f64;
                            }
                            let g = got[r * ms + t] as f64;
                            assert!(
                                (g - exact).abs() <= 1e-5 * (k as f64 + 1.0),
                                "{g} vs {exact}"
                            );
                        }
                        // Columns past `cols` (the stride's slack) are untouched.
                        let slack = r * ms + cols..(r + 1) * ms;
                        assert_eq!(got[slack.clone()], m0[slack], "mr {mr}, k {k}, row {r}");
                    }
                }
            }
        }
    }
}
