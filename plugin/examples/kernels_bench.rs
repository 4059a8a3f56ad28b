//! Micro-benchmark of the conv kernel (not a test): GFLOP/s of one 3x3 convolution through our
//! kernel and through candle's `conv2d`, next to a plain `gemm` of the same size, run alternately.
//! `cargo run --release -p bevy_diffusion --example kernels_bench [-- CIN COUT H W]`.

use std::time::Instant;

use bevy_diffusion::kernels::{self, AxisPad, Conv2dKernel};
use candle_core::{Device, Tensor};

fn main() -> anyhow::Result<()> {
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
    Ok(())
}
