//! The compute precision a model is asked to run in ([`ComputeDtype`], `--dtype`,
//! [`LoadOptions::dtype`](crate::LoadOptions::dtype),
//! `DiffusionSettings::dtype` of the Bevy plugin) and what this
//! machine actually runs ([`resolve`]).
//!
//! bf16 only pays where the CPU multiplies bf16 natively (x86-64 AVX-512 BF16 `vdpbf16ps`,
//! AArch64 `BFDOT`): there a bf16 GEMM does ~4x the f32 work per cycle. Without those
//! instructions bf16 values must be widened to f32 before every multiply; measured on a 2-core
//! AVX2 EPYC (no AVX-512 at all), PyTorch 2.15's own bf16 `torch.mm` ran at 0.4 GFLOP/s against
//! 5-8 GFLOP/s for f32 at 256-512 (a loaded machine; a 2048³ bf16 matmul did not finish in 5
//! minutes while f32 ran at 38 GFLOP/s). So a bf16 request on such a CPU runs in f32, with a
//! notice naming the missing feature, and the f32 results are the parity-tested ones.
//!
//! On a CPU with AVX-512 BF16 (after the kernel's self-check, `kernels/bf16.rs`; on Intel AMX
//! CPUs the AMX tile kernel, `kernels/bf16/amx.rs`) a bf16 request keeps the UNet's transformer
//! linear layers in bf16 ([`crate::models::transformer_2d::is_bf16_linear`]) and runs them
//! through the bf16 GEMM with f32 accumulation, and its attention's two products (`QKᵀ`, `PV`)
//! on the AVX-512 BF16 kernel (also on AMX CPUs; [`bf16_attention`]; the softmax stays f32);
//! everything else (convolutions, norms, the text
//! encoder, the VAE, the scheduler) stays f32. `BEVY_DIFFUSION_BF16_CONV=1` also keeps the UNet's
//! convolutions in bf16 (opt-in: faster, with a larger measured error; [`bf16_convolutions`]).
//! The bf16 results are checked against f32 with the kernel's portable emulation
//! (`BEVY_DIFFUSION_BF16=emulate`), which computes the same arithmetic on any CPU.

use std::fmt;
use std::str::FromStr;

use candle_core::Device;

/// The precision of the weights and of the GEMM / convolution inputs. Norms, softmax and the
/// scheduler are f32 in every mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum ComputeDtype {
    /// 32-bit floats everywhere (default; the parity-tested path).
    #[default]
    F32,
    /// bfloat16 weights and GEMM inputs with f32 accumulation for the UNet's transformer
    /// linear layers, where the CPU multiplies bf16 natively (see [`resolve`]; elsewhere
    /// resolved to f32 with a notice).
    Bf16,
}

impl ComputeDtype {
    /// `"f32"` / `"bf16"`.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        }
    }
}

impl fmt::Display for ComputeDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ComputeDtype {
    type Err = String;

    /// `f32` / `float32` / `fp32`, `bf16` / `bfloat16` (any case); anything else is an error
    /// naming the value.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" => Ok(Self::F32),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            other => Err(format!("unknown dtype `{other}` (expected f32 or bf16)")),
        }
    }
}

/// What the CPU offers for bf16 arithmetic, from run-time feature detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuBf16 {
    /// The instruction-set feature bf16 GEMMs need on this architecture (`avx512bf16`,
    /// `bf16`), or `None` on an architecture without one.
    pub feature: Option<&'static str>,
    /// Whether this CPU has it.
    pub present: bool,
}

/// Detects the bf16 multiply instructions of the running CPU (`avx512bf16` + `avx512f` on
/// x86-64, `bf16` on AArch64).
pub fn cpu_bf16() -> CpuBf16 {
    #[cfg(target_arch = "x86_64")]
    {
        CpuBf16 {
            feature: Some("avx512bf16"),
            present: crate::kernels::bf16::cpu_has_avx512_bf16(),
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        CpuBf16 {
            feature: Some("bf16"),
            present: std::arch::is_aarch64_feature_detected!("bf16"),
        }
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        CpuBf16 {
            feature: None,
            present: false,
        }
    }
}

/// The precision a request for `requested` on `device` runs in, and a one-line notice when it
/// is not what was asked, or is the slow emulation (`None` otherwise). bf16 runs where
/// the bf16 GEMM (`kernels/bf16.rs`) has a kernel (AMX or AVX-512 BF16 after its self-check, or
/// the forced emulation) and the CPU kernels are on; anything else resolves to
/// [`ComputeDtype::F32`] with a notice naming why (the missing CPU feature, a GPU device, the
/// kernels switched off).
pub fn resolve(requested: ComputeDtype, device: &Device) -> (ComputeDtype, Option<String>) {
    use crate::kernels::bf16::{Bf16Kernel, kernel};
    if requested == ComputeDtype::F32 {
        return (ComputeDtype::F32, None);
    }
    if !device.is_cpu() {
        return (
            ComputeDtype::F32,
            Some("dtype bf16 is not implemented for GPU devices yet: computing in f32".to_string()),
        );
    }
    let why = if !crate::kernels::enabled() {
        "the CPU kernels are off (BEVY_DIFFUSION_KERNELS=off)".to_string()
    } else {
        match kernel() {
            Some(Bf16Kernel::Avx512 | Bf16Kernel::Amx) => return (ComputeDtype::Bf16, None),
            Some(Bf16Kernel::Emulated) => {
                return (
                    ComputeDtype::Bf16,
                    Some(
                        "dtype bf16 runs on the portable emulation of the bf16 kernel \
                         (BEVY_DIFFUSION_BF16=emulate): the results of a bf16 CPU, many times \
                         slower than f32"
                            .to_string(),
                    ),
                );
            }
            None => {
                let cpu = cpu_bf16();
                match (cpu.feature, cpu.present) {
                    (Some(f), false) => format!(
                        "this CPU lacks `{f}` (bf16 multiply instructions), where bf16 runs \
                         slower than f32"
                    ),
                    (Some("avx512bf16"), true) => {
                        "the AVX-512 BF16 kernel failed its self-check (see the warning)"
                            .to_string()
                    }
                    (Some(f), true) => {
                        format!(
                            "this CPU has `{f}`, but bevy_diffusion has no bf16 kernel for it yet"
                        )
                    }
                    (None, _) => {
                        "this CPU architecture has no bf16 multiply instructions".to_string()
                    }
                }
            }
        }
    };
    (
        ComputeDtype::F32,
        Some(format!("dtype bf16 requested: {why}; computing in f32")),
    )
}

/// Whether a bf16 load also keeps the UNet's convolutions in bf16 (`BEVY_DIFFUSION_BF16_CONV=1`,
/// read once; see `models::unet_2d_condition::is_bf16_weight`). `Conv2dKernel` then runs their
/// im2col + GEMM path (3x3 at the 16x16 and 8x8 levels, stride 2, 1x1 shortcuts) through the
/// bf16 kernel and widens the weight per call for Winograd. Opt-in because it multiplies the
/// bf16 error beyond what the bf16 tests hold (measured on tiny-sd and timed on SD 1.5's shapes
/// in docs/speed.md, "On an AMD Zen 5 machine"). Part of the bf16 [`identity`].
pub fn bf16_convolutions() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("BEVY_DIFFUSION_BF16_CONV").as_deref() == Ok("1"))
}

/// Whether a bf16 model's attention multiplies in bf16 (`QKᵀ` and `PV` on the bf16 kernel,
/// the softmax in f32: `kernels::attention::attention_heads_bf16`): on unless
/// `BEVY_DIFFUSION_BF16_ATTENTION` is `0`, `off` or `false` (read once; for A/B runs). On
/// tiny-sd it leaves the bf16 noise prediction's error where it was (9.4e-4 of max|ref| with it,
/// 9.8e-4 without; docs/speed.md "bf16 attention"). Part of the bf16 [`identity`].
pub fn bf16_attention() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        !matches!(
            std::env::var("BEVY_DIFFUSION_BF16_ATTENTION").as_deref(),
            Ok("0" | "off" | "false")
        )
    })
}

/// The model identity (cache keys, bake's content hash) of a model `identity` computing in
/// `dtype`: unchanged for f32, a blake3 hash of it and the dtype for bf16, whose images differ
/// slightly from f32's (so a cached or baked f32 image is never taken for a bf16 one), with
/// [`bf16_convolutions`] hashed in when it is on and [`bf16_attention`] when it is off (their
/// images differ again).
pub fn identity(identity: &str, dtype: ComputeDtype) -> String {
    match dtype {
        ComputeDtype::F32 => identity.to_string(),
        ComputeDtype::Bf16 => {
            let mut h = blake3::Hasher::new();
            // v2: the attention products in bf16 (v1's images had them in f32).
            h.update(b"bevy_diffusion dtype v2\0");
            h.update(identity.as_bytes());
            h.update(b"\0bf16");
            if bf16_convolutions() {
                h.update(b"\0conv");
            }
            if !bf16_attention() {
                h.update(b"\0f32-attention");
            }
            h.finalize().to_hex().to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bf16_identity_differs_from_the_f32_one() {
        assert_eq!(identity("abc", ComputeDtype::F32), "abc");
        let bf16 = identity("abc", ComputeDtype::Bf16);
        assert_ne!(bf16, "abc");
        assert_eq!(bf16.len(), 64);
        assert_ne!(bf16, identity("abd", ComputeDtype::Bf16));
    }

    #[test]
    fn parses_and_resolves() {
        assert_eq!("BF16".parse::<ComputeDtype>(), Ok(ComputeDtype::Bf16));
        assert_eq!("fp32".parse::<ComputeDtype>(), Ok(ComputeDtype::F32));
        assert!("f16".parse::<ComputeDtype>().unwrap_err().contains("f16"));
        assert_eq!(
            resolve(ComputeDtype::F32, &Device::Cpu),
            (ComputeDtype::F32, None)
        );
        let (d, note) = resolve(ComputeDtype::Bf16, &Device::Cpu);
        let kernel = crate::kernels::bf16::kernel().filter(|_| crate::kernels::enabled());
        if let Some(k) = kernel {
            assert_eq!(d, ComputeDtype::Bf16);
            match k {
                crate::kernels::bf16::Bf16Kernel::Avx512
                | crate::kernels::bf16::Bf16Kernel::Amx => assert_eq!(note, None),
                crate::kernels::bf16::Bf16Kernel::Emulated => {
                    let note = note.expect("the emulation is named");
                    assert!(note.contains("emulation"), "{note}");
                }
            }
        } else {
            assert_eq!(d, ComputeDtype::F32);
            let note = note.expect("a bf16 request on the CPU explains itself");
            if let Some(f) = cpu_bf16().feature {
                assert!(note.contains(f), "{note}");
            }
        }
    }
}
