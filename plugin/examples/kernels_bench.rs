//! Micro-benchmark of the conv kernel (not a test): GFLOP/s of one 3x3 convolution through our
//! kernel and through candle's `conv2d`, next to a plain `gemm` of the same size, run alternately.
//! `cargo run --release -p bevy_diffusion --example kernels_bench [-- CIN COUT H W]`.

use std::time::Instant;

use bevy_diffusion::testing::kernels::{self, AxisPad, Conv2dKernel};
use candle_core::{Device, Tensor};

/// `BF16_SHAPES=1`: GFLOP/s of the bf16 GEMM alone (`dst` reused, no tensors) on the SD 1.5
/// UNet's linear shapes at batch 2 and a 2048³ square, for each bf16 kernel this CPU runs.
fn bf16_shapes() {
    use kernels::bf16::{self, Bf16Kernel};
    let mut kinds = vec![];
    if bf16::cpu_has_amx_bf16() {
        kinds.push(Bf16Kernel::Amx);
    }
    if bf16::cpu_has_avx512_bf16() {
        kinds.push(Bf16Kernel::Avx512);
    }
    for (rows, k, out) in [
        (2048, 2048, 2048),
        (8192, 320, 320),
        (8192, 320, 2560),
        (8192, 1280, 320),
        (2048, 640, 640),
        (128, 1280, 1280),
        (128, 1280, 10240),
        (154, 768, 320),
    ] {
        let x: Vec<f32> = (0..rows * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let w: Vec<u16> = (0..out * k)
            .map(|i| bf16::to_bf16((i % 5) as f32 * 0.1))
            .collect();
        let mut dst = vec![0f32; rows * out];
        let flop = 2.0 * (rows * k * out) as f64;
        let mut line = format!("bf16 gemm [{rows}, {k}] x [{out}, {k}]:");
        for &kind in &kinds {
            bf16::gemm(kind, rows, k, out, &x, &w, &mut dst).unwrap();
            let mut best = f64::MAX;
            for _ in 0..5 {
                let t = Instant::now();
                bf16::gemm(kind, rows, k, out, &x, &w, &mut dst).unwrap();
                best = best.min(t.elapsed().as_secs_f64());
            }
            line += &format!(
                " {kind:?} {:.0} GFLOP/s ({:.3} ms)",
                flop / best / 1e9,
                best * 1e3
            );
        }
        println!("{line}");
    }
}

/// `LINEAR_SHAPES=1`: GFLOP/s of `kernels::linear::forward` (f32 weights, bias, output
/// allocated per call as in the UNet) on the SD 1.5 UNet's linear shapes at batch 2 (rows x in ->
/// out), and of the fused GEGLU projection (`forward_geglu`, in -> 2 x inner) at its three levels;
/// best of 5. The same shapes for PyTorch: `torch.nn.Linear` on 2 threads.
fn linear_shapes() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    kernels::set_enabled(true);
    let shapes = [
        (8192, 320, 2560, false),
        (8192, 320, 320, false),
        (8192, 1280, 320, false),
        (2048, 640, 5120, false),
        (2048, 2560, 640, false),
        (2048, 640, 640, false),
        (512, 1280, 10240, false),
        (512, 5120, 1280, false),
        (154, 768, 320, false),
        (8192, 320, 2560, true),
        (2048, 640, 5120, true),
        (512, 1280, 10240, true),
    ];
    for (rows, k, out, geglu) in shapes {
        let x = Tensor::randn(0f32, 1., (rows, k), &dev)?;
        let w = Tensor::randn(0f32, 0.05, (out, k), &dev)?;
        let b = Tensor::randn(0f32, 1., out, &dev)?;
        let lin = candle_nn::Linear::new(w, Some(b));
        let run = || {
            if geglu {
                kernels::linear::forward_geglu(&lin, &x)
            } else {
                kernels::linear::forward(&lin, &x)
            }
        };
        run()?;
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            drop(run()?);
            best = best.min(t.elapsed().as_secs_f64());
        }
        let flop = 2.0 * (rows * k * out) as f64;
        println!(
            "linear{} [{rows}, {k}] -> {out}: {:.0} GFLOP/s ({:.2} ms)",
            if geglu { " + GEGLU" } else { "" },
            flop / best / 1e9,
            best * 1e3
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    if std::env::var("LINEAR_SHAPES").is_ok() {
        return linear_shapes();
    }
    if std::env::var("GEMM_SHAPES").is_ok() {
        gemm_shapes();
        return Ok(());
    }
    if std::env::var("BF16_SHAPES").is_ok() {
        bf16_shapes();
        return Ok(());
    }
    if std::env::var("ATTENTION_ONLY").is_ok() {
        return attention_and_linear();
    }
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|s| s.parse().ok())
        .collect();
    let (cin, cout, h, w) = match a.as_slice() {
        [c, o, h, w] => (*c, *o, *h, *w),
        _ => (512, 512, 64, 64),
    };
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1., (1, cin, h, w), &dev)?;
    let wt = Tensor::randn(0f32, 1., (cout, cin, 3, 3), &dev)?;
    let b = Tensor::randn(0f32, 1., cout, &dev)?;
    let conv = Conv2dKernel::new(wt.clone(), Some(b), 1)?;
    let flops = 2.0 * (cout * cin * 9 * h * w) as f64;
    let p = AxisPad::symmetric(1, false);
    let k = cin * 9;
    let lhs = vec![1f32; cout * k];
    let rhs = vec![1f32; k * h * w];
    let mut dst = vec![0f32; cout * h * w];
    for round in 0..3 {
        kernels::set_enabled(true);
        let t = Instant::now();
        conv.forward(&x, p, p, None, None)?;
        let ours = t.elapsed().as_secs_f64();
        kernels::set_enabled(false);
        let t = Instant::now();
        conv.forward(&x, p, p, None, None)?;
        let candle = t.elapsed().as_secs_f64();
        let t = Instant::now();
        unsafe {
            gemm::gemm(
                cout,
                h * w,
                k,
                dst.as_mut_ptr(),
                1,
                (h * w) as isize,
                false,
                lhs.as_ptr(),
                1,
                k as isize,
                rhs.as_ptr(),
                1,
                (h * w) as isize,
                1.0f32,
                1.0f32,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(rayon::current_num_threads()),
            )
        };
        let g = t.elapsed().as_secs_f64();
        println!(
            "round {round}: {cin}->{cout} {h}x{w}: ours {:.1} GFLOP/s ({ours:.3} s), candle {:.1} ({candle:.3} s), plain gemm {:.1} ({g:.3} s)",
            flops / ours / 1e9,
            flops / candle / 1e9,
            flops / g / 1e9
        );
    }
    attention_and_linear()?;
    Ok(())
}

/// The UNet's biggest self-attention (SD 1.5, 512 px, batch 2: 16 heads x 4096 tokens x 40) and
/// its biggest Linear (8192 tokens, 320 -> 2560), ours vs candle.
fn attention_and_linear() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    kernels::set_enabled(true);
    let (bh, n, d) = (16, 4096, 40);
    let q = Tensor::randn(0f32, 1., (2, n, 8 * d), &dev)?;
    let k = Tensor::randn(0f32, 1., (2, n, 8 * d), &dev)?;
    let v = Tensor::randn(0f32, 1., (2, n, 8 * d), &dev)?;
    let split = |x: &Tensor| -> anyhow::Result<Tensor> {
        Ok(x.reshape((2, n, 8, d))?
            .transpose(1, 2)?
            .reshape((bh, n, d))?)
    };
    let (qs, ks, vs) = (split(&q)?, split(&k)?, split(&v)?);
    let flops = 4.0 * (bh * n * n * d) as f64;
    let w = Tensor::randn(0f32, 1., (2560, 320), &dev)?;
    let b = Tensor::randn(0f32, 1., 2560, &dev)?;
    let lin = candle_nn::Linear::new(w, Some(b));
    let x = Tensor::randn(0f32, 1., (2, 4096, 320), &dev)?;
    let lflops = 2.0 * 8192.0 * 320.0 * 2560.0;
    let bf16 = match kernels::bf16::kernel() {
        Some(kernels::bf16::Bf16Kernel::Amx) => Some(kernels::bf16::Bf16Kernel::Avx512),
        k => k,
    };
    // ATTENTION_ONLY=f32|bf16: that attention alone, 5 times (for profiling).
    if let Ok(which) = std::env::var("ATTENTION_ONLY") {
        for _ in 0..5 {
            let t = Instant::now();
            match (which.as_str(), bf16) {
                ("bf16", Some(kernel)) => {
                    kernels::attention::attention_heads_bf16(&q, &k, &v, 8, 0.15, kernel)?;
                }
                _ => {
                    kernels::attention::attention_heads(&q, &k, &v, 8, 0.15)?;
                }
            }
            let secs = t.elapsed().as_secs_f64();
            println!(
                "attention 16x4096x40 {which}: {:.1} GFLOP/s ({secs:.3} s)",
                flops / secs / 1e9
            );
        }
        return Ok(());
    }
    for round in 0..2 {
        let t = Instant::now();
        kernels::attention::attention_heads(&q, &k, &v, 8, 0.15)?;
        let ours = t.elapsed().as_secs_f64();
        if let Some(kernel) = bf16 {
            let t = Instant::now();
            kernels::attention::attention_heads_bf16(&q, &k, &v, 8, 0.15, kernel)?;
            let secs = t.elapsed().as_secs_f64();
            println!(
                "round {round}: attention 16x4096x40 bf16 ({kernel:?}): {:.1} GFLOP/s ({secs:.3} s)",
                flops / secs / 1e9
            );
        }
        let t = Instant::now();
        let s = (qs.matmul(&ks.t()?)? * 0.15)?;
        candle_nn::ops::softmax_last_dim(&s)?.matmul(&vs)?;
        let candle = t.elapsed().as_secs_f64();
        println!(
            "round {round}: attention 16x4096x40: ours {:.1} GFLOP/s ({ours:.3} s), candle one-shot {:.1} ({candle:.3} s)",
            flops / ours / 1e9,
            flops / candle / 1e9
        );
        let t = Instant::now();
        kernels::linear::forward(&lin, &x)?;
        let ours = t.elapsed().as_secs_f64();
        let t = Instant::now();
        candle_core::Module::forward(&lin, &x)?;
        let candle = t.elapsed().as_secs_f64();
        println!(
            "round {round}: linear 8192x320->2560: ours {:.1} GFLOP/s ({ours:.3} s), candle {:.1} ({candle:.3} s)",
            lflops / ours / 1e9,
            lflops / candle / 1e9
        );
    }
    Ok(())
}

/// Temporary: single-threaded gemm GFLOP/s for the TAESD conv shapes in both orientations.
#[allow(dead_code)]
pub fn gemm_shapes() {
    for &(m, k) in &[(64usize, 64usize), (128, 128), (512, 512)] {
        for &t in &[64usize, 256, 1024] {
            let lhs = vec![1f32; m * k];
            let rhs = vec![1f32; k * t];
            let mut dst = vec![0f32; m * t];
            let reps = (2e9 / (2.0 * (m * k * t) as f64)).max(1.0) as usize;
            for orient in 0..2 {
                let s = Instant::now();
                for _ in 0..reps {
                    unsafe {
                        if orient == 0 {
                            gemm::gemm(
                                m,
                                t,
                                k,
                                dst.as_mut_ptr(),
                                1,
                                t as isize,
                                false,
                                lhs.as_ptr(),
                                1,
                                k as isize,
                                rhs.as_ptr(),
                                1,
                                t as isize,
                                1.0f32,
                                1.0f32,
                                false,
                                false,
                                false,
                                gemm::Parallelism::None,
                            )
                        } else {
                            gemm::gemm(
                                t,
                                m,
                                k,
                                dst.as_mut_ptr(),
                                t as isize,
                                1,
                                false,
                                rhs.as_ptr(),
                                t as isize,
                                1,
                                lhs.as_ptr(),
                                k as isize,
                                1,
                                1.0f32,
                                1.0f32,
                                false,
                                false,
                                false,
                                gemm::Parallelism::None,
                            )
                        }
                    }
                }
                let g = 2.0 * (m * k * t * reps) as f64 / s.elapsed().as_secs_f64() / 1e9;
                println!("m {m} k {k} t {t} orient {orient}: {g:.1} GFLOP/s single thread");
            }
        }
    }
}
