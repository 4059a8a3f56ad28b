//! A register-blocked GEMM microkernel: an `MR x NR` block of `M = Uᵀ V` accumulated over `k`
//! in registers (an AVX2+FMA 6x16 block of twelve 8-lane accumulators, picked at run time; a
//! portable loop elsewhere), with `U` packed `[k][MR]` and `V` rows of `NR` at any stride.
//! Serves the Winograd convolution (`MR` output channels x `NR` tiles of one transformed
//! position) and the attention kernel (6 keys x 16 queries of `Sᵀ = K Qᵀ`, 6 value columns x 16
//! queries of `Oᵀ = Vᵀ Pᵀ`).

/// Rows (of `U`'s packed columns) per microkernel block.
pub(crate) const MR: usize = 6;
/// Columns per microkernel block (two 8-lane vectors).
pub(crate) const NR: usize = 16;

/// `m[r * ms + t] = Σ_k u[k * mr + r] * v[k * vs + t]` for `r < mr`, `t < NR`.
pub(crate) fn micro(
    mr: usize,
    k: usize,
    u: &[f32],
    v: &[f32],
    vs: usize,
    m: &mut [f32],
    ms: usize,
) {
    micro_into::<false>(mr, k, u, v, vs, m, ms);
}

/// [`micro`], adding onto `m` instead of overwriting it: `m[r * ms + t] += Σ_k ...`.
pub(crate) fn micro_add(
    mr: usize,
    k: usize,
    u: &[f32],
    v: &[f32],
    vs: usize,
    m: &mut [f32],
    ms: usize,
) {
    micro_into::<true>(mr, k, u, v, vs, m, ms);
}

fn micro_into<const ADD: bool>(
    mr: usize,
    k: usize,
    u: &[f32],
    v: &[f32],
    vs: usize,
    m: &mut [f32],
    ms: usize,
) {
    assert!((1..=MR).contains(&mr) && u.len() >= k * mr && m.len() >= (mr - 1) * ms + NR);
    assert!(k == 0 || v.len() >= (k - 1) * vs + NR);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA; the asserts above bound every read and write.
        unsafe {
            let (u, v, m) = (u.as_ptr(), v.as_ptr(), m.as_mut_ptr());
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
        let row = &mut m[r * ms..r * ms + NR];
        if ADD {
            row.iter_mut().zip(&acc).for_each(|(o, a)| *o += a);
        } else {
            row.copy_from_slice(&acc);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// The [`super::micro`] block for `R` rows: 2R accumulators of 8 lanes, starting from `m`'s
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
