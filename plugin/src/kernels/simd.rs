//! Branch-free `exp`, SiLU and exact-erf GELU over `f32` slices, written so that the compiler
//! vectorises them; on x86-64 the loops are compiled a second time for AVX2+FMA and picked at
//! run time. Accuracy: `exp` within ~2 ulp (relative 2.5e-7) on [-87, 88]; `erf` within 1.5e-7
//! absolute (Abramowitz & Stegun 7.1.26 is not enough, so a rational Cephes-style fit is used).

// `exp`'s and `exp_fma`'s constants: ln 2 split in a high part (exact products with small
// integers) and the rest; 1.5 * 2^23, whose addition rounds to an integer; the degree-6
// Taylor/minimax polynomial of e^r on [-ln2/2, ln2/2] (Cephes expf), its coefficients from the
// highest down to r^2's (then 1/2, 1, 1).
const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_145_75;
#[allow(clippy::excessive_precision)]
const LN2_LO: f32 = 1.428_606_8e-6;
const ROUND: f32 = 12_582_912.0;
#[allow(clippy::excessive_precision)]
const EXP_P: [f32; 5] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
];

/// `e^x` for finite `x`; clamps to [-87.3, 88.7]. Below -87.3 the result is e^-87.3 (a normal
/// f32, ~1.2e-38, where the true value is denormal or 0); above 88.38 (where the rounded power
/// of two reaches 2^128) it is +inf, a little before f32's own overflow at 88.72. Every caller
/// (softmax on `x - max <= 0`, SiLU's and GELU's `e^-|x|`-style terms) only meets the top end
/// where +inf gives the right limit (SiLU of x < -88.38 is -0.0 instead of ~-1e-36).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.7);
    // t = ROUND + n for the integer n nearest x log2(e): floats in [2^23, 2^24) are spaced 1
    // apart, so t's bits are ROUND's bits + n (|n| <= 128), read without a float -> int cast
    // (whose saturation keeps it from vectorising).
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let ni = t.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    // e^r on [-ln2/2, ln2/2].
    let p = EXP_P[0];
    let p = p * r + EXP_P[1];
    let p = p * r + EXP_P[2];
    let p = p * r + EXP_P[3];
    let p = p * r + EXP_P[4];
    let p = p * r + 0.5;
    let p = p * r * r + r + 1.0;
    let bits = (ni.wrapping_add(127) as u32) << 23;
    p * f32::from_bits(bits)
}

/// [`exp`] with its multiply-adds fused (`mul_add`: one `vfmadd` each where the caller is
/// compiled with FMA, as in `multiversion!`'s AVX2 + FMA version; a slow library call
/// elsewhere). Relative error below 1e-6 as [`exp`]'s (tested), results differing from it by
/// float rounding; used where the result is rounded to bf16 next (the bf16 attention's
/// probabilities), so that [`exp`]'s results stay those of the f32 paths.
#[inline(always)]
pub fn exp_fma(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.7);
    let t = x.mul_add(LOG2E, ROUND);
    let n = t - ROUND;
    let ni = t.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, x));
    let p = EXP_P[0];
    let p = p.mul_add(r, EXP_P[1]);
    let p = p.mul_add(r, EXP_P[2]);
    let p = p.mul_add(r, EXP_P[3]);
    let p = p.mul_add(r, EXP_P[4]);
    let p = p.mul_add(r, 0.5);
    let p = (p * r).mul_add(r, r + 1.0);
    let bits = (ni.wrapping_add(127) as u32) << 23;
    p * f32::from_bits(bits)
}

/// `x * sigmoid(x)`.
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// `erf(x)` with ~1.5e-7 absolute error: `1 - t * exp(-x^2 + P(t))`, `t = 1 / (1 + p|x|/2)`
/// (Numerical Recipes' erfc Chebyshev fit, relative error < 1.2e-7 on erfc).
#[inline(always)]
#[allow(clippy::excessive_precision)] // the published coefficients, as printed
pub fn erf(x: f32) -> f32 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -1.265_512_2
        + t * (1.000_023_7
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_9
                                + t * (1.488_515_9 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let erfc = t * exp(-z * z + poly);
    let r = 1.0 - erfc;
    if x < 0.0 { -r } else { r }
}

/// Exact (erf) GELU: `x/2 * (1 + erf(x / sqrt 2))`.
#[inline(always)]
pub fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// Defines `pub fn $name($args)` that runs `$body` compiled for AVX2+FMA when the CPU has them,
/// else for the baseline target.
macro_rules! multiversion {
    ($(#[$m:meta])* pub fn $name:ident($($a:ident: $t:ty),*) $body:block) => {
        $(#[$m])*
        pub fn $name($($a: $t),*) {
            #[inline(always)]
            fn inner($($a: $t),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($a: $t),*) { inner($($a),*) }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has the features `avx2` was compiled for.
                    return unsafe { avx2($($a),*) };
                }
            }
            inner($($a),*)
        }
    };
}
pub(crate) use multiversion;

multiversion! {
    /// `x[i] = silu(x[i])` in place.
    pub fn silu_inplace(x: &mut [f32]) {
        for v in x.iter_mut() {
            *v = silu(*v);
        }
    }
}

multiversion! {
    /// `x[i] = a[c] * x[i] + b[c]` (then SiLU when `act`), for one channel: `a`, `b` scalars.
    pub fn affine_inplace(x: &mut [f32], a: f32, b: f32, act: bool) {
        if act {
            for v in x.iter_mut() {
                *v = silu(*v * a + b);
            }
        } else {
            for v in x.iter_mut() {
                *v = *v * a + b;
            }
        }
    }
}

multiversion! {
    /// `out[i] = hidden[i] * gelu_erf(gate[i])` (diffusers' GEGLU).
    pub fn geglu(out: &mut [f32], hidden: &[f32], gate: &[f32]) {
        for ((o, &h), &g) in out.iter_mut().zip(hidden).zip(gate) {
            *o = h * gelu_erf(g);
        }
    }
}

multiversion! {
    /// `(sum x, sum x^2)` of a slice, accumulated in 8 f32 lanes per 256-element block and f64
    /// across blocks.
    pub fn sum_and_squares(x: &[f32], out: &mut [f64; 2]) {
        let (mut s, mut q) = (0f64, 0f64);
        for block in x.chunks(256) {
            let mut ls = [0f32; 8];
            let mut lq = [0f32; 8];
            let mut it = block.chunks_exact(8);
            for c in &mut it {
                for j in 0..8 {
                    ls[j] += c[j];
                    lq[j] += c[j] * c[j];
                }
            }
            for &v in it.remainder() {
                ls[0] += v;
                lq[0] += v * v;
            }
            s += ls.iter().map(|&v| v as f64).sum::<f64>();
            q += lq.iter().map(|&v| v as f64).sum::<f64>();
        }
        *out = [s, q];
    }
}

multiversion! {
    /// `sum (x - mean)^2` of a slice (f32 lanes per block, f64 across blocks).
    pub fn centered_squares(x: &[f32], mean: f32, out: &mut f64) {
        let mut q = 0f64;
        for block in x.chunks(256) {
            let mut lq = [0f32; 8];
            let mut it = block.chunks_exact(8);
            for c in &mut it {
                for j in 0..8 {
                    let d = c[j] - mean;
                    lq[j] += d * d;
                }
            }
            for &v in it.remainder() {
                lq[0] += (v - mean) * (v - mean);
            }
            q += lq.iter().map(|&v| v as f64).sum::<f64>();
        }
        *out = q;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_erf_silu_match_std() {
        let mut worst = (0f32, 0f32, 0f32);
        for i in -20000..=20000 {
            let x = i as f32 * 0.004; // [-80, 80]
            let e = exp(x);
            let r = x.exp();
            worst.0 = worst.0.max(((e - r) / r).abs());
            let xs = x * 0.1;
            let er = erf(xs);
            let reference = libm_erf(xs as f64) as f32;
            worst.1 = worst.1.max((er - reference).abs());
            let s = silu(xs);
            let sr = xs / (1.0 + (-xs).exp());
            worst.2 = worst.2.max((s - sr).abs() / sr.abs().max(1.0));
        }
        assert!(worst.0 < 1e-6, "exp rel err {}", worst.0);
        // exp_fma: the same polynomial with fused multiply-adds, as accurate.
        let worst_fma = (-20000..=20000)
            .map(|i| i as f32 * 0.004)
            .map(|x| ((exp_fma(x) as f64 - (x as f64).exp()) / (x as f64).exp()).abs())
            .fold(0f64, f64::max);
        assert!(worst_fma < 1e-6, "exp_fma rel err {worst_fma}");
        assert!(worst.1 < 6e-7, "erf abs err {}", worst.1);
        assert!(worst.2 < 1e-6, "silu err {}", worst.2);
    }

    /// erf in f64 by its Taylor series (|x| <= 3) or erfc's continued fraction (|x| > 3).
    fn libm_erf(x: f64) -> f64 {
        let z = x.abs();
        let r = if z <= 3.0 {
            let mut sum = 0.0;
            let mut term = z;
            let mut n = 0.0;
            loop {
                let t = term / (2.0 * n + 1.0);
                sum += t;
                if t.abs() < 1e-17 {
                    break;
                }
                n += 1.0;
                term *= -z * z / n;
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            // erfc continued fraction (Lentz), very accurate for z > 3.
            let mut f = 0.0;
            for k in (1..60).rev() {
                f = (k as f64 / 2.0) / (z + f);
            }
            1.0 - (-z * z).exp() / std::f64::consts::PI.sqrt() / (z + f)
        };
        if x < 0.0 { -r } else { r }
    }
}
