//! Our own CPU kernels for the hot ops of the UNet and the VAE (pure Rust, `f32`, rayon), and the
//! per-op timing registry the bench reads.
//!
//! candle 0.11's CPU backend re-lays a convolution's input out (NCHW -> NHWC) and its weights on
//! one thread at every call, runs elementwise ops on one thread with a scalar `exp`, and computes
//! a GroupNorm in ~11 full-tensor passes. The kernels here work on contiguous `f32` slices of
//! CPU tensors instead:
//!
//! | file | kernel |
//! |---|---|
//! | `attention.rs` | blocked (flash) attention with an online softmax, parallel over heads and query blocks |
//! | `conv.rs` | 2-D convolution: im2col tiles (zero or circular padding per axis, stride 1 or 2) into a `gemm` with bias, time embedding and residual fused into the output |
//! | `winograd.rs` (+ `winograd/`) | 3x3 stride-1 convolution by Winograd F(4x4, 3x3) (the default; `BEVY_DIFFUSION_WINOGRAD=off` for im2col): 4x fewer products, a 6x16 microkernel (AVX2; two blocks at a time as 6x32 with AVX-512F, `micro.rs`), transforms fused with padding, nearest 2x upsampling, bias, residual and ReLU |
//! | `linear.rs` | `Linear` as one GEMM over all rows, bias fused (bf16 weights through `bf16.rs`) |
//! | `bf16.rs` | a bf16 x bf16 -> f32 GEMM for `Linear` layers with bf16 weights (and, opt-in, im2col convolutions): an AVX-512 BF16 microkernel (self-checked at first use) and its portable emulation |
//! | `group_norm.rs` | GroupNorm (+ optional SiLU) in two reads and one write, parallel over groups |
//! | `elementwise.rs` | parallel nearest-2x upsampling and GEGLU for large tensors |
//! | `simd.rs` | vectorisable `exp` / SiLU / erf-GELU, compiled for AVX2+FMA when the CPU has it |
//! | `profile.rs` | the per-op-kind timing registry |
//!
//! Every kernel falls back to candle's own ops for tensors that are not `f32` on the CPU (CUDA,
//! Metal, other dtypes), so the same model code runs everywhere.

pub mod attention;
pub mod bf16;
pub mod conv;
pub mod elementwise;
pub mod group_norm;
pub mod linear;
mod micro;
pub mod profile;
pub mod simd;
mod winograd;

pub use conv::{AxisPad, Conv2dKernel};
pub use group_norm::GroupNormKernel;

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};

use candle_core::{CpuStorage, DType, Result, Storage, Tensor};

/// 0 = not decided yet, 1 = on, 2 = off.
static STATE: AtomicU8 = AtomicU8::new(0);
static FROM_ENV: OnceLock<bool> = OnceLock::new();

/// Whether the CPU kernels are used (default: yes). The environment variable
/// `BEVY_DIFFUSION_KERNELS=off` (or [`set_enabled`]`(false)`) routes every op through candle's own
/// CPU ops instead: the A/B switch of the bench and of the kernel tests.
pub fn enabled() -> bool {
    match STATE.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => *FROM_ENV.get_or_init(|| {
            !matches!(
                std::env::var("BEVY_DIFFUSION_KERNELS").as_deref(),
                Ok("off" | "0" | "false")
            )
        }),
    }
}

/// Turns the kernels on or off for the whole process (overrides the environment variable).
pub fn set_enabled(on: bool) {
    STATE.store(if on { 1 } else { 2 }, Ordering::Relaxed);
}

/// True when `t` can go through the CPU `f32` kernels (and they are [`enabled`]).
pub(crate) fn on_cpu_f32(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32 && enabled()
}

/// Runs `f` on the contiguous `f32` data of a CPU tensor (made contiguous first if needed).
pub(crate) fn with_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    with_cpu_storage(t, |storage, range| match storage {
        CpuStorage::F32(v) => f(&v[range]),
        _ => candle_core::bail!("kernel input must be an f32 CPU tensor"),
    })
}

/// Runs `f` on the contiguous bf16 data (as bits) of a CPU tensor (made contiguous first if
/// needed).
pub(crate) fn with_bf16_slice<R>(t: &Tensor, f: impl FnOnce(&[u16]) -> Result<R>) -> Result<R> {
    use half::slice::HalfFloatSliceExt;
    with_cpu_storage(t, |storage, range| match storage {
        CpuStorage::BF16(v) => f(v[range].reinterpret_cast()),
        _ => candle_core::bail!("kernel input must be a bf16 CPU tensor"),
    })
}

/// Runs `f` on the CPU storage of `t` (made contiguous first if needed) and the range of it `t`
/// covers; the shared part of [`with_slice`] and [`with_bf16_slice`].
fn with_cpu_storage<R>(
    t: &Tensor,
    f: impl FnOnce(&CpuStorage, std::ops::Range<usize>) -> Result<R>,
) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("kernel input is not contiguous after contiguous()");
    };
    match &*storage {
        Storage::Cpu(s) => f(s, start..end),
        _ => candle_core::bail!("kernel input must be a CPU tensor"),
    }
}

/// [`with_slice`] for an optional tensor.
pub(crate) fn with_opt_slice<R>(
    t: Option<&Tensor>,
    f: impl FnOnce(Option<&[f32]>) -> Result<R>,
) -> Result<R> {
    match t {
        Some(t) => with_slice(t, |s| f(Some(s))),
        None => f(None),
    }
}

/// A zeroed `Vec<f32>` of `n` floats for a kernel's output tensor. On Linux, a buffer of 8 MiB
/// or more is advised to use transparent huge pages before its first touch
/// (`madvise(MADV_HUGEPAGE)` on its 2 MiB-aligned interior; a no-op where the system does not
/// allow them on request): a 512²x64 map (67 MB) then takes ~32 page faults instead of ~16 000,
/// and the kernels' reads and writes across 64 channel planes 1 MB apart stay within the TLB.
/// `BEVY_DIFFUSION_HUGE_PAGES=off` turns the advice off (the A/B switch of the bench).
pub(crate) fn zeroed(n: usize) -> Vec<f32> {
    let v = vec![0f32; n];
    #[cfg(target_os = "linux")]
    {
        static ON: OnceLock<bool> = OnceLock::new();
        let on = *ON.get_or_init(|| {
            !matches!(
                std::env::var("BEVY_DIFFUSION_HUGE_PAGES").as_deref(),
                Ok("off" | "0" | "false")
            )
        });
        if on {
            advise_huge_pages(&v);
        }
    }
    v
}

/// Most buffers [`Scratch`] keeps for reuse.
const SCRATCH_KEPT: usize = 4;
/// Most bytes the buffers [`Scratch`] keeps may hold together.
const SCRATCH_KEPT_BYTES: usize = 512 << 20;

/// Freed [`Scratch`] buffers, for the next call that needs one.
static SCRATCH_POOL: std::sync::Mutex<Vec<Vec<f32>>> = std::sync::Mutex::new(Vec::new());

/// A per-call work buffer of `f32` that goes back to a small process-wide pool when dropped,
/// for buffers a kernel fills completely before reading (the Winograd transformed weights
/// `U`, 36 x cout x cin floats: 236 MB per call at SD 1.5's 1280 -> 1280 upsampler). Its
/// contents on [`Scratch::new`] are unspecified (a previous call's values, or zeros), never
/// uninitialised. Reuse saves the fresh allocation's page faults and the kernel's zeroing of
/// every page: measured on SD 1.5's UNet step (batch 2, 2 threads), the weight transforms took
/// ~0.6 s of fresh-buffer time per step with huge pages advised (a 236 MB buffer alone 240-310
/// ms: compaction on the fault path) and ~0.43 s without; reused, ~0.27 s. At most
/// [`SCRATCH_KEPT`] buffers and 512 MiB are kept (SD 1.5's largest convolution needs 236 MB of
/// `U` plus at most 128 MB of `V` and `M`); a larger or further one is freed on drop. What the
/// pool keeps stays allocated for the life of the process.
pub(crate) struct Scratch(Vec<f32>);

impl Scratch {
    /// `n` floats: the smallest kept buffer that holds them (truncated, or extended with
    /// zeros within its capacity), else a new zeroed one ([`zeroed`]).
    pub(crate) fn new(n: usize) -> Self {
        if n == 0 {
            return Scratch(Vec::new());
        }
        let reused = {
            let mut pool = SCRATCH_POOL.lock().unwrap_or_else(|e| e.into_inner());
            let best = pool
                .iter()
                .enumerate()
                .filter(|(_, b)| b.capacity() >= n)
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, _)| i);
            best.map(|i| pool.swap_remove(i))
        };
        match reused {
            Some(mut v) => {
                if v.len() >= n {
                    v.truncate(n);
                } else {
                    v.resize(n, 0.0);
                }
                Scratch(v)
            }
            None => Scratch(zeroed(n)),
        }
    }
}

impl std::ops::Deref for Scratch {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.0
    }
}

impl std::ops::DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        if v.capacity() == 0 {
            return;
        }
        let bytes = |b: &Vec<f32>| b.capacity() * std::mem::size_of::<f32>();
        let mut pool = SCRATCH_POOL.lock().unwrap_or_else(|e| e.into_inner());
        let held: usize = pool.iter().map(bytes).sum();
        if pool.len() < SCRATCH_KEPT && held + bytes(&v) <= SCRATCH_KEPT_BYTES {
            pool.push(v);
        } else if let Some(i) = (0..pool.len()).min_by_key(|&i| pool[i].capacity())
            && pool[i].capacity() < v.capacity()
            && held - bytes(&pool[i]) + bytes(&v) <= SCRATCH_KEPT_BYTES
        {
            // Keep the larger buffer: the next large call then needs no fresh one.
            pool[i] = v;
        }
    }
}

#[cfg(target_os = "linux")]
fn advise_huge_pages(v: &[f32]) {
    const HUGE: usize = 2 << 20;
    let (addr, bytes) = (v.as_ptr() as usize, std::mem::size_of_val(v));
    if bytes < 4 * HUGE {
        return;
    }
    let start = addr.next_multiple_of(HUGE);
    let end = (addr + bytes) / HUGE * HUGE;
    if end > start {
        // SAFETY: [start, end) is a range of whole pages inside `v`'s allocation; the advice
        // changes neither the contents nor the validity of that memory (the kernel only picks
        // the page size of later faults), and a refusal (THP off) is harmless, so the result
        // is ignored.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
        }
    }
}

/// A raw pointer that may cross threads; every user writes disjoint ranges.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub *mut f32);
// SAFETY: only used to hand disjoint output ranges to rayon tasks.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer (a method, so closures capture the whole `SendPtr`, not its field).
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// True when every value of `t` is finite (one pass: the sum of |x| is finite iff each value
/// is). Serves the LoRA merge check at load and the pipeline's per-step latent checks.
pub fn all_finite(t: &Tensor) -> Result<bool> {
    let sum = t
        .abs()?
        .sum_all()?
        .to_dtype(DType::F32)?
        .to_scalar::<f32>()?;
    Ok(sum.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pool's invariants, which hold whatever other tests do with it meanwhile.
    fn pool_within_bounds() {
        let pool = SCRATCH_POOL.lock().unwrap_or_else(|e| e.into_inner());
        let bytes: usize = pool.iter().map(|b| b.capacity() * 4).sum();
        assert!(pool.len() <= SCRATCH_KEPT, "{} buffers kept", pool.len());
        assert!(bytes <= SCRATCH_KEPT_BYTES, "{bytes} bytes kept");
    }

    #[test]
    fn scratch_buffers_have_the_asked_length_and_the_pool_stays_bounded() {
        let mut a = Scratch::new(1000);
        assert_eq!(a.len(), 1000);
        a.fill(7.0);
        drop(a);
        // Shorter and longer requests after a reuse: the length asked, every float readable
        // and writable (a reused buffer extended within its capacity is zero-filled there).
        for n in [10, 1000, 1500, 0] {
            let mut b = Scratch::new(n);
            assert_eq!(b.len(), n);
            b.iter_mut().for_each(|x| *x += 1.0);
            assert!(b.iter().all(|x| x.is_finite()));
        }
        // Many live buffers at once, then all dropped: at most SCRATCH_KEPT kept, and never
        // more than SCRATCH_KEPT_BYTES (a 300 MB one and a second of 300 MB cannot both stay).
        let live: Vec<Scratch> = (1..=6).map(|i| Scratch::new(i * 1000)).collect();
        drop(live);
        pool_within_bounds();
        let big: Vec<Scratch> = (0..2).map(|_| Scratch::new(75 << 20)).collect();
        drop(big);
        pool_within_bounds();
    }
}
