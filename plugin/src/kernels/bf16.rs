//! A bf16 GEMM with f32 accumulation for `Linear` layers: `dst[r, o] += Σ_i x[r, i] * w[o, i]`
//! with `x` f32 (rounded to bf16 as it is packed) and `w` a bf16 `[out, in]` weight read in
//! place, for CPUs that multiply bf16 natively.
//!
//! The microkernel is one `vdpbf16ps` per 16 lanes (x86-64 AVX-512 BF16, `_mm512_dpbf16_ps`):
//! each f32 lane adds the products of one pair of bf16 values, `acc += a₀b₀ + a₁b₁`, so a pair
//! of consecutive `k` is one 32-bit element of both operands. The weight `[out, in]` already
//! holds its pairs consecutively along `k` (an even `in` keeps every pair inside its row), so
//! it is broadcast pair by pair from `MR` rows at once and needs no packing; `x` is packed per
//! task into panels of 32 rows (`[k / 2][32]` pairs), converted to bf16 on the way (round to
//! nearest even, as `half::bf16::from_f32`). A tile is `MR` output channels x 32 rows over the
//! whole `k` (24 accumulators of the 32 zmm registers), transposed into `dst` at the end. Tasks
//! are blocks of rows, and strips of output channels where the rows alone give fewer tasks
//! than threads.
//!
//! [`Bf16Kernel::Emulated`] runs the same arithmetic in portable Rust (lane by lane, in the
//! order of Intel's pseudo-code for `VDPBF16PS`: the odd product, then the even one), except
//! that it keeps denormals where the instruction flushes them to zero (a difference below
//! 1.2e-38 per product or sum). It
//! checks the driver and the packing on any CPU (the tests run it), is the reference of the
//! AVX-512 kernel's self-check, and lets a machine without the instructions compute what a bf16
//! run computes (slowly: `BEVY_DIFFUSION_BF16=emulate` or [`set_emulation`]). The AVX-512 path
//! is used only after that self-check: on its first use it multiplies a fixed 45 x 70 x 29
//! problem both ways and, if they differ by more than f32 rounding, it is not used (a warning
//! names the difference) and bf16 requests run in f32.
//!
//! On CPUs with Intel AMX (AMX-TILE + AMX-BF16: Sapphire Rapids and later) [`Bf16Kernel::Amx`]
//! (`bf16/amx.rs`) runs the same product on tile registers (`tdpbf16ps`: 16 x 16 x 32
//! multiply-adds per instruction, 256x one 512-bit `vdpbf16ps`), preferred over the AVX-512 kernel after the same kind of self-check;
//! `BEVY_DIFFUSION_BF16=avx512` skips it.
//!
//! Where the CPU has no bf16 instructions at all a bf16 GEMM cannot beat the f32 one (every value
//! must be widened before the multiply), so [`kernel`] is `None` there (see
//! [`crate::precision::resolve`]).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};

use rayon::prelude::*;

mod amx;

/// Output channels per microkernel tile.
pub(crate) const MR: usize = 12;
/// Rows of `x` per microkernel tile (two 16-lane accumulators per channel).
pub(crate) const NR: usize = 32;

/// Which bf16 microkernel runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bf16Kernel {
    /// Intel AMX tiles (`tdpbf16ps`, AMX-TILE + AMX-BF16, with the tile state granted by the OS:
    /// `amx.rs`), after its self-check; 8192 multiply-adds per instruction (256x one `vdpbf16ps`).
    Amx,
    /// `vdpbf16ps` on 512-bit registers (AVX-512F + AVX-512 BF16), after its self-check.
    Avx512,
    /// The portable emulation of the same arithmetic (for checking; ~100x slower).
    Emulated,
}

/// 0 = from the environment, 1 = emulation forced on, 2 = forced off.
static EMULATION: AtomicU8 = AtomicU8::new(0);
static EMULATION_FROM_ENV: OnceLock<bool> = OnceLock::new();
static AVX512_CHECKED: OnceLock<bool> = OnceLock::new();
static AMX_CHECKED: OnceLock<bool> = OnceLock::new();

/// Forces the portable emulation on (or back off) for the whole process, overriding
/// `BEVY_DIFFUSION_BF16=emulate`: bf16 requests then run on a CPU without bf16 instructions, with
/// the arithmetic of the native kernel (used by the bf16 parity tests).
pub fn set_emulation(on: bool) {
    EMULATION.store(if on { 1 } else { 2 }, Ordering::Relaxed);
}

fn emulation() -> bool {
    match EMULATION.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => *EMULATION_FROM_ENV.get_or_init(|| {
            matches!(
                std::env::var("BEVY_DIFFUSION_BF16").as_deref(),
                Ok("emulate")
            )
        }),
    }
}

/// Whether this CPU has AVX-512F and AVX-512 BF16.
pub fn cpu_has_avx512_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512bf16")
            && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this CPU has AMX-TILE + AMX-BF16 and the OS grants this process the tile state.
pub fn cpu_has_amx_bf16() -> bool {
    amx::available()
}

/// The bf16 kernel this process uses, or `None` (bf16 then runs in f32): the emulation when
/// forced ([`set_emulation`], `BEVY_DIFFUSION_BF16=emulate`), else AMX where the CPU and the OS
/// allow it, else AVX-512 BF16 where the CPU has it, each only after its one-time self-check
/// passed. `BEVY_DIFFUSION_BF16=avx512` skips AMX (to compare the two).
pub fn kernel() -> Option<Bf16Kernel> {
    if emulation() {
        return Some(Bf16Kernel::Emulated);
    }
    if !cpu_has_avx512_bf16() {
        return None;
    }
    static SKIP_AMX: OnceLock<bool> = OnceLock::new();
    let skip_amx = *SKIP_AMX.get_or_init(|| {
        matches!(
            std::env::var("BEVY_DIFFUSION_BF16").as_deref(),
            Ok("avx512")
        )
    });
    if !skip_amx && cpu_has_amx_bf16() && checked(&AMX_CHECKED, Bf16Kernel::Amx) {
        return Some(Bf16Kernel::Amx);
    }
    checked(&AVX512_CHECKED, Bf16Kernel::Avx512).then_some(Bf16Kernel::Avx512)
}

/// Whether kernel `k` passed its one-time self-check (run on first ask, a warning if it fails).
fn checked(cell: &OnceLock<bool>, k: Bf16Kernel) -> bool {
    *cell.get_or_init(|| match self_check(k) {
        Ok(()) => true,
        Err(why) => {
            tracing::warn!("the {k:?} bf16 kernel failed its self-check ({why}): not used");
            false
        }
    })
}

/// The kernel for [`gemm_cols_on_this_thread`] (im2col convolutions), which has no AMX
/// driver: [`kernel`], with AMX replaced by the AVX-512 BF16 kernel (every AMX CPU has it)
/// after that one's own self-check; `None` where neither runs.
pub(crate) fn conv_kernel() -> Option<Bf16Kernel> {
    match kernel()? {
        Bf16Kernel::Amx => {
            checked(&AVX512_CHECKED, Bf16Kernel::Avx512).then_some(Bf16Kernel::Avx512)
        }
        k => Some(k),
    }
}

/// Multiplies two fixed problems with `kernel` and with the emulation; `Err` names the largest
/// difference when it exceeds f32 rounding (1e-5 of the problem's largest Σ|x·w|). The second
/// one (45 x 1090 x 61) reaches the AMX kernel's main path: whole 32 x 32 blocks accumulated in
/// place across several slices of `k`, beside ragged edge blocks.
pub fn self_check(kernel: Bf16Kernel) -> Result<(), String> {
    for (rows, in_dim, out_dim) in [(45, 70, 29), (45, 1090, 61)] {
        self_check_shape(kernel, rows, in_dim, out_dim)?;
    }
    Ok(())
}

fn self_check_shape(
    kernel: Bf16Kernel,
    rows: usize,
    in_dim: usize,
    out_dim: usize,
) -> Result<(), String> {
    let mut seed = 0x9e37_79b9_u32;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        (seed >> 8) as f32 / (1 << 23) as f32 - 1.0
    };
    let x: Vec<f32> = (0..rows * in_dim).map(|_| next()).collect();
    let w: Vec<u16> = (0..out_dim * in_dim).map(|_| to_bf16(next())).collect();
    let mut got = vec![0.5f32; rows * out_dim];
    let mut want = got.clone();
    gemm(kernel, rows, in_dim, out_dim, &x, &w, &mut got)?;
    gemm(
        Bf16Kernel::Emulated,
        rows,
        in_dim,
        out_dim,
        &x,
        &w,
        &mut want,
    )?;
    let worst = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(
            0f32,
            |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) },
        );
    // |x| <= 1, |w| <= 1: every Σ|x·w| is at most in_dim.
    let bound = 1e-5 * in_dim as f32;
    if worst <= bound {
        Ok(())
    } else {
        Err(format!(
            "[{rows}, {in_dim}] x [{out_dim}, {in_dim}]: largest difference {worst:e} from the \
             emulation, over {bound:e}"
        ))
    }
}

/// `v` rounded to bf16 (nearest even; NaN stays NaN), as bits.
#[inline]
pub fn to_bf16(v: f32) -> u16 {
    half::bf16::from_f32(v).to_bits()
}

/// The f32 value of bf16 bits (exact).
#[inline]
pub(crate) fn from_bf16(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// `dst[r * out_dim + o] += Σ_i bf16(x[r * in_dim + i]) * w[o * in_dim + i]`, accumulated in
/// f32: `x` `[rows, in_dim]` row-major f32, `w` `[out_dim, in_dim]` row-major bf16 bits, `dst`
/// `[rows, out_dim]` row-major (its values are added onto: write the bias or residual first).
/// Parallel over blocks of rows (rayon).
///
/// # Errors
/// A message when `in_dim` is odd (a pair would straddle two weight rows) or a slice is shorter
/// than its shape.
pub fn gemm(
    kernel: Bf16Kernel,
    rows: usize,
    in_dim: usize,
    out_dim: usize,
    x: &[f32],
    w: &[u16],
    dst: &mut [f32],
) -> Result<(), String> {
    gemm_with(kernel, rows, in_dim, out_dim, x, w, dst, true)
}

/// [`gemm`] on the calling thread alone (for callers that split the work into their own rayon
/// tasks, e.g. the fused bf16 GEGLU of `kernels::linear`). Same errors as [`gemm`].
pub(crate) fn gemm_on_this_thread(
    kernel: Bf16Kernel,
    rows: usize,
    in_dim: usize,
    out_dim: usize,
    x: &[f32],
    w: &[u16],
    dst: &mut [f32],
) -> Result<(), String> {
    gemm_with(kernel, rows, in_dim, out_dim, x, w, dst, false)
}

/// The product of [`gemm`] with `x` and `dst` transposed, the layout of an im2col
/// convolution: `dst[c * ds + r] += Σ_i bf16(x[i * xs + r]) * w[c * ws + i]` for `r < rows`,
/// `c < out_dim`, `i < in_dim`; `x` `[in_dim, rows]` at row stride `xs` (the im2col columns
/// `[cin·kh·kw, pixels]`), `w` `[out_dim, in_dim]` bf16 bits at row stride `ws` (the conv
/// weight `[cout, cin, kh, kw]` flattened), `dst` `[out_dim, rows]` at row stride `ds` (an NCHW
/// output plane per channel; its values are added onto). The kernel's tile is already
/// `[channel][row]`, so nothing is transposed; `x` is packed per block of rows from its
/// contiguous rows. On the calling thread. Pick the kernel with [`conv_kernel`].
///
/// # Errors
/// As [`gemm`]: `in_dim` odd, or `x` / `w` shorter than their shapes; the AMX kernel (its
/// driver takes row-major operands only).
///
/// # Safety
/// `dst.add(c * ds + r)` for `c < out_dim`, `r < rows` is valid for reads and writes and no one
/// else's meanwhile.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_cols_on_this_thread(
    kernel: Bf16Kernel,
    rows: usize,
    in_dim: usize,
    out_dim: usize,
    x: &[f32],
    xs: usize,
    w: &[u16],
    ws: usize,
    dst: *mut f32,
    ds: usize,
) -> Result<(), String> {
    if !in_dim.is_multiple_of(2) {
        return Err(format!("bf16 gemm: in_dim {in_dim} is odd"));
    }
    if rows == 0 || out_dim == 0 || in_dim == 0 {
        return Ok(());
    }
    if x.len() < (in_dim - 1) * xs + rows || w.len() < (out_dim - 1) * ws + in_dim || ws < in_dim {
        return Err(format!(
            "bf16 gemm: slices of {}, {} values for [{in_dim}, {rows}] (stride {xs}) x \
             [{out_dim}, {in_dim}] (stride {ws})",
            x.len(),
            w.len()
        ));
    }
    if kernel == Bf16Kernel::Amx {
        return Err("bf16 gemm: the AMX kernel has no column-layout driver (conv_kernel)".into());
    }
    let kp = in_dim / 2;
    let block = rows_per_block(in_dim);
    let mut packed = Vec::new();
    let mut tile = [[0f32; NR]; MR];
    for r0 in (0..rows).step_by(block) {
        let n = block.min(rows - r0);
        let panels = n.div_ceil(NR);
        packed.clear();
        packed.resize(panels * kp * NR, 0);
        for p in 0..kp {
            let (a, b) = (&x[2 * p * xs + r0..][..n], &x[(2 * p + 1) * xs + r0..][..n]);
            for (t, (&a, &b)) in a.iter().zip(b).enumerate() {
                packed[(t / NR) * kp * NR + p * NR + t % NR] =
                    to_bf16(a) as u32 | (to_bf16(b) as u32) << 16;
            }
        }
        for o0 in (0..out_dim).step_by(MR) {
            let r = MR.min(out_dim - o0);
            let wr = &w[o0 * ws..];
            for pj in 0..panels {
                let xp = &packed[pj * kp * NR..(pj + 1) * kp * NR];
                micro(kernel, r, kp, wr, ws, xp, &mut tile);
                let t0 = pj * NR;
                let cols = NR.min(n - t0);
                for (c, tile_row) in tile.iter().enumerate().take(r) {
                    // SAFETY: channel o0 + c < out_dim, rows r0 + t0 .. + cols < rows: the
                    // caller's contract.
                    let row = unsafe {
                        std::slice::from_raw_parts_mut(dst.add((o0 + c) * ds + r0 + t0), cols)
                    };
                    for (o, v) in row.iter_mut().zip(tile_row) {
                        *o += v;
                    }
                }
            }
        }
    }
    Ok(())
}

/// [`gemm`], on the calling thread alone unless `parallel`.
#[allow(clippy::too_many_arguments)]
fn gemm_with(
    kernel: Bf16Kernel,
    rows: usize,
    in_dim: usize,
    out_dim: usize,
    x: &[f32],
    w: &[u16],
    dst: &mut [f32],
    parallel: bool,
) -> Result<(), String> {
    if !in_dim.is_multiple_of(2) {
        return Err(format!("bf16 gemm: in_dim {in_dim} is odd"));
    }
    if x.len() < rows * in_dim || w.len() < out_dim * in_dim || dst.len() < rows * out_dim {
        return Err(format!(
            "bf16 gemm: slices of {}, {}, {} floats for [{rows}, {in_dim}] x [{out_dim}, {in_dim}]",
            x.len(),
            w.len(),
            dst.len()
        ));
    }
    if rows == 0 || out_dim == 0 || in_dim == 0 {
        return Ok(());
    }
    if kernel == Bf16Kernel::Amx {
        if !amx::available() {
            return Err("bf16 gemm: AMX is not available on this CPU / OS".to_string());
        }
        // SAFETY: AMX is available (just checked); the shapes, the slice lengths and the
        // non-zero sizes were checked above.
        unsafe { amx::gemm(rows, in_dim, out_dim, x, w, dst, parallel) };
        return Ok(());
    }
    let kp = in_dim / 2;
    let block = rows_per_block(in_dim).min(rows.next_multiple_of(NR));
    let row_blocks = rows.div_ceil(block);
    // Where that leaves fewer tasks than threads (cross-attention's 154 rows at batch 2, the
    // 8x8 level's 128), the output channels are split into strips as well (multiples of MR);
    // each strip packs its rows of x again. On the calling thread alone, one strip.
    let threads = if parallel {
        rayon::current_num_threads().max(1)
    } else {
        1
    };
    let strip = out_dim
        .div_ceil(threads.div_ceil(row_blocks))
        .next_multiple_of(MR)
        .min(out_dim);
    let strips = out_dim.div_ceil(strip);
    let dst_ptr = super::SendPtr(dst.as_mut_ptr());
    // The tile is added in with AVX-512 where the AVX-512 kernel really runs (`micro` falls
    // back to the emulation on a CPU without it).
    #[cfg(target_arch = "x86_64")]
    let native = kernel == Bf16Kernel::Avx512 && cpu_has_avx512_bf16();
    let body = |packed: &mut Vec<u32>, task: usize| {
        let (rb, sj) = (task / strips, task % strips);
        let (r0, c0) = (rb * block, sj * strip);
        let (n, c1) = (block.min(rows - r0), (c0 + strip).min(out_dim));
        let panels = n.div_ceil(NR);
        packed.clear();
        packed.resize(panels * kp * NR, 0);
        pack_x(&x[r0 * in_dim..(r0 + n) * in_dim], n, in_dim, packed);
        let mut tile = [[0f32; NR]; MR];
        for o0 in (c0..c1).step_by(MR) {
            let r = MR.min(c1 - o0);
            let wr = &w[o0 * in_dim..(o0 + r) * in_dim];
            for pj in 0..panels {
                let xp = &packed[pj * kp * NR..(pj + 1) * kp * NR];
                micro(kernel, r, kp, wr, in_dim, xp, &mut tile);
                let t0 = pj * NR;
                #[cfg(target_arch = "x86_64")]
                if native {
                    // SAFETY: the CPU has AVX-512F (`native`); rows r0 + t0 .. + NR.min(n - t0)
                    // < rows, columns [o0, o0 + r) of this task's strip: as below.
                    unsafe {
                        avx512::add_tile_transposed(
                            &tile,
                            r,
                            NR.min(n - t0),
                            dst_ptr.get().add((r0 + t0) * out_dim + o0),
                            out_dim,
                        )
                    };
                    continue;
                }
                for t in 0..NR.min(n - t0) {
                    // SAFETY: row r0 + t0 + t < rows, columns [o0, o0 + r) within this
                    // task's strip [c0, c1) < out_dim: dst (checked to hold rows x out_dim
                    // floats above) has them, and no other task writes them.
                    let row = unsafe {
                        std::slice::from_raw_parts_mut(
                            dst_ptr.get().add((r0 + t0 + t) * out_dim + o0),
                            r,
                        )
                    };
                    for (o, tile_row) in row.iter_mut().zip(&tile) {
                        *o += tile_row[t];
                    }
                }
            }
        }
    };
    if parallel {
        (0..row_blocks * strips)
            .into_par_iter()
            .for_each_init(Vec::new, body);
    } else {
        let mut packed = Vec::new();
        (0..row_blocks * strips).for_each(|task| body(&mut packed, task));
    }
    Ok(())
}

/// Rows of `x` per packed block: the block (`rows x in_dim` bf16) ~320 KB (of L2) where
/// `in_dim <= 2560`, at least 64 rows (655 KB at `in_dim` 5120) and at most 256.
fn rows_per_block(in_dim: usize) -> usize {
    ((160 * 1024 / in_dim) / NR * NR).clamp(2 * NR, 8 * NR)
}

/// Packs `n` rows of `x` (`[n, in_dim]`) into panels of [`NR`] rows, `[panel][in_dim / 2][NR]`
/// bf16 pairs (the even `k` in the low half), rows past `n` zero.
fn pack_x(x: &[f32], n: usize, in_dim: usize, packed: &mut [u32]) {
    let kp = in_dim / 2;
    for (t, row) in x.chunks_exact(in_dim).take(n).enumerate() {
        let panel = &mut packed[(t / NR) * kp * NR..][..kp * NR];
        let lane = t % NR;
        for (p, pair) in row.chunks_exact(2).enumerate() {
            panel[p * NR + lane] = to_bf16(pair[0]) as u32 | (to_bf16(pair[1]) as u32) << 16;
        }
    }
}

/// One tile: `tile[c][t] = Σ_p pair(w[c * ws + 2p..]) · xp[p * NR + t]` for `c < r`, `t < NR`
/// (`w`: `r` rows of `2 * kp` bf16 bits at stride `ws`; `xp`: `kp` groups of [`NR`] bf16 pairs,
/// the even `k` in the low half). Panics on short slices or `r` outside `1..=MR`; not for AMX.
pub(crate) fn micro(
    kernel: Bf16Kernel,
    r: usize,
    kp: usize,
    w: &[u16],
    ws: usize,
    xp: &[u32],
    tile: &mut [[f32; NR]; MR],
) {
    assert!((1..=MR).contains(&r) && xp.len() >= kp * NR && w.len() >= (r - 1) * ws + 2 * kp);
    match kernel {
        Bf16Kernel::Emulated => micro_emulated(r, kp, w, ws, xp, tile),
        Bf16Kernel::Amx => unreachable!("the AMX kernel has its own driver (amx::gemm)"),
        Bf16Kernel::Avx512 => {
            #[cfg(target_arch = "x86_64")]
            if cpu_has_avx512_bf16() {
                macro_rules! rows {
                    ($($n:literal)*) => {
                        match r {
                            // SAFETY: the CPU has AVX-512F + BF16 (checked above); the assert
                            // bounds every read of w and xp, and tile holds MR rows of NR.
                            $($n => unsafe { avx512::micro::<$n>(kp, w.as_ptr(), ws, xp.as_ptr(), tile) },)*
                            _ => unreachable!("r is in 1..=MR"),
                        }
                    };
                }
                rows!(1 2 3 4 5 6 7 8 9 10 11 12);
                return;
            }
            micro_emulated(r, kp, w, ws, xp, tile)
        }
    }
}

/// The portable [`micro`]: per lane, `acc += a₁b₁` then `acc += a₀b₀` (Intel's order).
fn micro_emulated(
    r: usize,
    kp: usize,
    w: &[u16],
    ws: usize,
    xp: &[u32],
    tile: &mut [[f32; NR]; MR],
) {
    for (c, acc) in tile.iter_mut().enumerate().take(r) {
        *acc = [0.0; NR];
        let wrow = &w[c * ws..c * ws + 2 * kp];
        for (p, wp) in wrow.chunks_exact(2).enumerate() {
            let (w0, w1) = (from_bf16(wp[0]), from_bf16(wp[1]));
            for (a, &xv) in acc.iter_mut().zip(&xp[p * NR..(p + 1) * NR]) {
                *a += w1 * from_bf16((xv >> 16) as u16);
                *a += w0 * from_bf16(xv as u16);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{MR, NR};

    /// The AVX-512 BF16 tile for `R` channels: 2R accumulators of 16 lanes.
    ///
    /// # Safety
    /// AVX-512F + AVX-512 BF16 present; `w` holds `R` rows of `2 * kp` bf16 at stride `ws`,
    /// `xp` holds `kp * NR` pairs.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn micro<const R: usize>(
        kp: usize,
        w: *const u16,
        ws: usize,
        xp: *const u32,
        tile: &mut [[f32; NR]; MR],
    ) {
        // SAFETY: the caller's contract bounds every pointer below; __m512i and __m512bh are
        // both 64 bytes of packed lanes.
        unsafe {
            let mut a0 = [_mm512_setzero_ps(); R];
            let mut a1 = [_mm512_setzero_ps(); R];
            for p in 0..kp {
                let x = xp.add(p * NR);
                let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(x.cast()));
                let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(x.add(16).cast()));
                for c in 0..R {
                    let pair = w.add(c * ws + 2 * p).cast::<u32>().read_unaligned();
                    let a: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair as i32));
                    a0[c] = _mm512_dpbf16_ps(a0[c], a, b0);
                    a1[c] = _mm512_dpbf16_ps(a1[c], a, b1);
                }
            }
            for c in 0..R {
                _mm512_storeu_ps(tile[c].as_mut_ptr(), a0[c]);
                _mm512_storeu_ps(tile[c].as_mut_ptr().add(16), a1[c]);
            }
        }
    }

    /// `dst[t * ds + c] += tile[c][t]` for `c < r`, `t < rows` (the scalar loop of
    /// `gemm_with`, same sums): two 16 x 16 transposes in registers (channels `r..16` zero),
    /// then one masked add of `r` lanes per output row.
    ///
    /// # Safety
    /// AVX-512F present; `r <= MR`, `rows <= NR`; `dst.add(t * ds + c)` valid for reads and
    /// writes for those `t`, `c`, and no one else's meanwhile.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn add_tile_transposed(
        tile: &[[f32; NR]; MR],
        r: usize,
        rows: usize,
        dst: *mut f32,
        ds: usize,
    ) {
        let mask: __mmask16 = ((1u32 << r) - 1) as __mmask16;
        for t0 in (0..rows).step_by(16) {
            let mut v = [_mm512_setzero_ps(); 16];
            for (c, row) in tile.iter().enumerate().take(r) {
                // SAFETY: t0 + 16 <= NR: inside the row.
                v[c] = unsafe { _mm512_loadu_ps(row.as_ptr().add(t0)) };
            }
            transpose16(&mut v);
            for (t, vt) in v.iter().enumerate().take((rows - t0).min(16)) {
                // SAFETY: row t0 + t < rows, lanes c < r only (masked): the caller's contract.
                unsafe {
                    let p = dst.add((t0 + t) * ds);
                    let d = _mm512_maskz_loadu_ps(mask, p);
                    _mm512_mask_storeu_ps(p, mask, _mm512_add_ps(d, *vt));
                }
            }
        }
    }

    /// `v[k][i]` <- `v[i][k]` for a 16 x 16 block of f32 (unpack 32-bit, unpack 64-bit, then
    /// two rounds of 128-bit lane shuffles).
    #[target_feature(enable = "avx512f")]
    fn transpose16(v: &mut [__m512; 16]) {
        let mut t = [_mm512_setzero_ps(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]);
        }
        // r[4i + j], 128-bit lane L: column 4L + j of rows 4i..4i + 3.
        let mut r = [_mm512_setzero_ps(); 16];
        let (lo, hi) = (
            |a: __m512, b: __m512| {
                _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)))
            },
            |a: __m512, b: __m512| {
                _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)))
            },
        );
        for i in 0..4 {
            r[4 * i] = lo(t[4 * i], t[4 * i + 2]);
            r[4 * i + 1] = hi(t[4 * i], t[4 * i + 2]);
            r[4 * i + 2] = lo(t[4 * i + 1], t[4 * i + 3]);
            r[4 * i + 3] = hi(t[4 * i + 1], t[4 * i + 3]);
        }
        for j in 0..4 {
            let u0 = _mm512_shuffle_f32x4::<0x44>(r[j], r[4 + j]);
            let u1 = _mm512_shuffle_f32x4::<0xEE>(r[j], r[4 + j]);
            let u2 = _mm512_shuffle_f32x4::<0x44>(r[8 + j], r[12 + j]);
            let u3 = _mm512_shuffle_f32x4::<0xEE>(r[8 + j], r[12 + j]);
            v[j] = _mm512_shuffle_f32x4::<0x88>(u0, u2);
            v[4 + j] = _mm512_shuffle_f32x4::<0xDD>(u0, u2);
            v[8 + j] = _mm512_shuffle_f32x4::<0x88>(u1, u3);
            v[12 + j] = _mm512_shuffle_f32x4::<0xDD>(u1, u3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX-512 transposed tile add gives exactly the scalar loop's sums, for every channel
    /// count and row count of a tile.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn transposed_tile_add_is_the_scalar_one() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return;
        }
        let mut tile = [[0f32; NR]; MR];
        for (c, row) in tile.iter_mut().enumerate() {
            for (t, x) in row.iter_mut().enumerate() {
                *x = (c * 37 + t) as f32 * 0.25 - 40.0;
            }
        }
        let ds = 17;
        for r in 1..=MR {
            for rows in 1..=NR {
                let base: Vec<f32> = (0..NR * ds).map(|i| i as f32 * 0.5).collect();
                let mut want = base.clone();
                for t in 0..rows {
                    for c in 0..r {
                        want[t * ds + c] += tile[c][t];
                    }
                }
                let mut got = base;
                // SAFETY: AVX-512F checked above; got holds NR rows of ds >= r floats.
                unsafe { avx512::add_tile_transposed(&tile, r, rows, got.as_mut_ptr(), ds) };
                assert_eq!(got, want, "r {r}, rows {rows}");
            }
        }
    }

    /// Deterministic operands `x` `[rows, k]` (|x| < 3) and `w` `[out, k]` bf16 (|w| < 2).
    fn operands(rows: usize, k: usize, out: usize) -> (Vec<f32>, Vec<u16>) {
        let x = (0..rows * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0)
            .collect();
        let w = (0..out * k)
            .map(|i| to_bf16(((i * 53 % 89) as f32 - 44.0) / 23.0))
            .collect();
        (x, w)
    }

    /// Σ in f64 of the bf16-rounded operands.
    fn reference(rows: usize, k: usize, out: usize, x: &[f32], w: &[u16]) -> Vec<f64> {
        let mut d = vec![0f64; rows * out];
        for r in 0..rows {
            for o in 0..out {
                d[r * out + o] = (0..k)
                    .map(|i| {
                        from_bf16(to_bf16(x[r * k + i])) as f64 * from_bf16(w[o * k + i]) as f64
                    })
                    .sum();
            }
        }
        d
    }

    #[test]
    fn emulated_gemm_matches_the_bf16_product_on_ragged_shapes() {
        for (rows, k, out) in [
            (1, 2, 1),
            (31, 70, 11),
            (33, 6, 12),
            (100, 320, 13),
            (257, 40, 40),
        ] {
            let (x, w) = operands(rows, k, out);
            let mut d = vec![1.0f32; rows * out];
            gemm(Bf16Kernel::Emulated, rows, k, out, &x, &w, &mut d).unwrap();
            let want = reference(rows, k, out, &x, &w);
            for (i, (&g, &e)) in d.iter().zip(&want).enumerate() {
                let e = e + 1.0;
                assert!(
                    (g as f64 - e).abs() <= 1e-5 * e.abs().max(k as f64),
                    "[{rows}, {k}] x [{out}, {k}] at {i}: {g} vs {e}"
                );
            }
        }
    }

    #[test]
    fn native_kernels_match_the_emulation_on_ragged_shapes() {
        let kernels: Vec<Bf16Kernel> = [
            (cpu_has_amx_bf16(), Bf16Kernel::Amx),
            (cpu_has_avx512_bf16(), Bf16Kernel::Avx512),
        ]
        .into_iter()
        .filter_map(|(has, k)| has.then_some(k))
        .collect();
        if kernels.is_empty() {
            eprintln!("this CPU has no bf16 instructions: only the emulation is checked here");
        }
        for kernel in kernels {
            for (rows, k, out) in [
                (1, 2, 1),
                (15, 30, 17),
                (31, 70, 11),
                (33, 64, 32),
                (100, 320, 13),
                (257, 40, 40),
                (700, 130, 70),
                (64, 2050, 33),
            ] {
                let (x, w) = operands(rows, k, out);
                let mut got = vec![1.0f32; rows * out];
                gemm(kernel, rows, k, out, &x, &w, &mut got).unwrap();
                let want = reference(rows, k, out, &x, &w);
                let bound = 1e-5 * (k as f64) * 3.0 * 1.95;
                for (i, (&g, &e)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g as f64 - (e + 1.0)).abs() <= bound.max(1e-5 * e.abs()),
                        "{kernel:?} [{rows}, {k}] x [{out}, {k}] at {i}: {g} vs {}",
                        e + 1.0
                    );
                }
                // The same on one thread.
                let mut one = vec![1.0f32; rows * out];
                gemm_with(kernel, rows, k, out, &x, &w, &mut one, false).unwrap();
                assert_eq!(
                    one, got,
                    "{kernel:?} [{rows}, {k}] x [{out}, {k}]: 1 vs n threads"
                );
            }
        }
    }

    #[test]
    fn rounding_is_to_nearest_even_and_odd_k_is_refused() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between bf16 1.0 and 1.0078125: ties go to the even 1.0.
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        let e = gemm(
            Bf16Kernel::Emulated,
            1,
            3,
            1,
            &[0.0; 3],
            &[0; 3],
            &mut [0.0],
        )
        .unwrap_err();
        assert!(e.contains("odd"), "{e}");
        // in_dim 0: nothing is added (no panic).
        let mut d = [2.0f32; 3];
        gemm(Bf16Kernel::Emulated, 3, 0, 1, &[], &[], &mut d).unwrap();
        assert_eq!(d, [2.0; 3]);
    }

    #[test]
    fn the_native_kernel_passes_its_self_check_where_the_cpu_has_it() {
        if cpu_has_amx_bf16() {
            assert_eq!(self_check(Bf16Kernel::Amx), Ok(()));
        } else {
            eprintln!("no AMX here (CPU or OS): the AMX kernel is not checked");
        }
        if cpu_has_avx512_bf16() {
            assert_eq!(self_check(Bf16Kernel::Avx512), Ok(()));
        } else {
            eprintln!("this CPU lacks AVX-512 BF16: only the emulation is checked here");
        }
    }
}
