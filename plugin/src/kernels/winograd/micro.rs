//! The GEMM microkernel of the Winograd convolution: `MR` output channels x `NR` tiles of one
//! transformed position, accumulated over the input channels in registers (an AVX2+FMA 6x16
//! block of twelve 8-lane accumulators, picked at run time; a portable loop elsewhere).

/// Output channels per microkernel block.
pub(super) const MR: usize = 6;
/// Tiles per microkernel block (two 8-lane vectors).
pub(super) const NR: usize = 16;

/// `m[r * ms + t] = Σ_k u[k * mr + r] * v[k * vs + t]` for `r < mr`, `t < NR`.
pub(super) fn micro(
    mr: usize,
    k: usize,
    u: &[f32],
    v: &[f32],
    vs: usize,
    m: &mut [f32],
    ms: usize,
) {
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
