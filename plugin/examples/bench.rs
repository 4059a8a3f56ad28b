//! Speed figures (not a test): `cargo run --release -p bevy_diffusion --example bench [-- --quick]`.
//!
//! Prints seconds per UNet step and per whole image on the tiny fixture model, and, for a
//! full-size SD 1.5 architecture built in memory with zero weights (no download: the work of a
//! dense network does not depend on its values), seconds per UNet step (batch 2, 64x64 latent =
//! 512 px), per VAE decode at 512x512, and per CLIP-L prompt encoding. `--quick` runs SD 1.5 at
//! 256 px (32x32 latent) instead.
//!
//! After the SD 1.5 UNet step and VAE decode, a per-op-kind table (conv, group norm, attention,
//! matmul, elementwise/copies, upsample, ...) from [`bevy_diffusion::testing::kernels::profile`] shows
//! where the time of one run goes; `other` is what no wrapped op accounts for.
//!
//! `--dtype f32|bf16` asks for a compute precision; it is resolved as the plugin resolves it
//! ([`bevy_diffusion::precision::resolve`]: bf16 runs in f32 with a printed notice where the CPU
//! has no bf16 kernel). A resolved bf16 builds the SD 1.5 UNet with its transformer linear
//! and convolution weights in bf16, as a bf16 load does.
//!
//! `--only gemm` times a 2048³ GEMM in f32 (the `Linear` kernel) and, where a bf16 kernel runs,
//! in bf16 (the bf16 `Linear` kernel), printing GFLOP/s.
//!
//! `--only taesd|turbo|unet|vae|memory|gemm` runs one part: `turbo` is the SD-Turbo-architecture image
//! (SD 2.1 UNet, OpenCLIP-H text encoder, 512 px, 1 step, no CFG) with the full VAE and with
//! TAESD; `memory` writes a real-size SD 1.5 folder with random f32 weights (a child process),
//! loads it and generates one 512 px image, printing peak RSS (VmHWM) against the weights' bytes.

#[path = "bench_parts/memory.rs"]
mod memory;
#[path = "bench_parts/turbo.rs"]
mod turbo;

use std::path::{Path, PathBuf};
use std::time::Instant;

use bevy_diffusion::models::autoencoder_kl::{AutoencoderKL, AutoencoderKLConfig};
use bevy_diffusion::models::clip_text_model::{ClipTextConfig, ClipTextModel};
use bevy_diffusion::models::unet_2d_condition::{UNet2DConditionConfig, UNet2DConditionModel};
use bevy_diffusion::pipeline::{self, NoHooks};
use bevy_diffusion::testing::kernels::profile;
use bevy_diffusion::{GenerationRequest, LoadOptions, SchedulerKind, StableDiffusion, Tiling};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

const SD15_UNET: &str = r#"{"_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": 8,
 "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": false, "cross_attention_dim": 768,
 "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
 "downsample_padding": 1, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
 "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
 "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]}"#;
const SD15_VAE: &str = r#"{"_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
 "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
 "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3,
 "sample_size": 512, "scaling_factor": 0.18215,
 "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]}"#;
const CLIP_L: &str = r#"{"architectures": ["CLIPTextModel"], "hidden_act": "quick_gelu", "hidden_size": 768,
 "intermediate_size": 3072, "layer_norm_eps": 1e-05, "max_position_embeddings": 77, "num_attention_heads": 12,
 "num_hidden_layers": 12, "vocab_size": 49408, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
 "projection_dim": 768, "model_type": "clip_text_model"}"#;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    if let Some(dir) = flag_value(&args, "--write-random-sd15") {
        return memory::write_random_sd15(
            Path::new(&dir),
            &write_config,
            SD15_UNET,
            SD15_VAE,
            CLIP_L,
        );
    }
    let requested: bevy_diffusion::ComputeDtype = match flag_value(&args, "--dtype") {
        Some(d) => d.parse().map_err(anyhow::Error::msg)?,
        None => bevy_diffusion::ComputeDtype::F32,
    };
    let (dtype, notice) = bevy_diffusion::precision::resolve(requested, &Device::Cpu);
    if let Some(note) = notice {
        println!("note: --dtype {requested}: {note}");
    }
    println!(
        "threads: {}, dtype: {dtype}, kernels: {}",
        candle_core::utils::get_num_threads(),
        if bevy_diffusion::testing::kernels::enabled() {
            "ours"
        } else {
            "candle (BEVY_DIFFUSION_KERNELS=off)"
        }
    );
    if only.is_none() {
        fixture_bench()?;
        sdxs_fixture_bench()?;
    }
    if only.as_deref().is_none_or(|o| o == "taesd") {
        taesd_bench(if quick { 32 } else { 64 })?;
    }
    if only.as_deref() == Some("taesd") {
        return Ok(());
    }
    if only.as_deref().is_none_or(|o| o == "turbo") {
        turbo::turbo_bench(&write_config, SD15_VAE, &|label, f| timed(label, 1, f))?;
    }
    if only.as_deref() == Some("turbo") {
        return Ok(());
    }
    if only.as_deref() == Some("memory") {
        return memory::memory_bench();
    }
    if only.as_deref() == Some("gemm") {
        return gemm_bench(dtype);
    }
    sd15_bench(if quick { 32 } else { 64 }, only.as_deref(), dtype)?;
    Ok(())
}

fn flag_value(args: &[String], flag: &str) -> Option<String> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn timed<T>(
    label: &str,
    reps: usize,
    mut f: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<f64> {
    f()?; // warm-up
    let mut runs = Vec::with_capacity(reps);
    for _ in 0..reps {
        let start = Instant::now();
        f()?;
        runs.push(start.elapsed().as_secs_f64());
    }
    runs.sort_by(f64::total_cmp);
    let median = if runs.len() % 2 == 1 {
        runs[runs.len() / 2]
    } else {
        (runs[runs.len() / 2 - 1] + runs[runs.len() / 2]) / 2.0
    };
    println!(
        "{label}: {median:.4} s (median of {reps}, min {:.4})",
        runs[0]
    );
    Ok(median)
}

/// Like [`timed`], then one more run with the op registry on, printed as a table.
fn timed_with_ops<T>(
    label: &str,
    reps: usize,
    mut f: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<f64> {
    let secs = timed(label, reps, &mut f)?;
    profile::reset();
    profile::set_enabled(true);
    let start = Instant::now();
    let out = f();
    let total = start.elapsed().as_secs_f64();
    profile::set_enabled(false);
    out?;
    println!("  per-op breakdown of one profiled run ({total:.3} s):");
    println!("  | op kind | seconds | share | calls |");
    println!("  |---|---|---|---|");
    let mut accounted = 0.0;
    for row in profile::snapshot() {
        let t = row.time.as_secs_f64();
        accounted += t;
        if row.calls > 0 {
            println!(
                "  | {} | {t:.3} | {:.1}% | {} |",
                row.kind.name(),
                100.0 * t / total,
                row.calls
            );
        }
    }
    let other = (total - accounted).max(0.0);
    println!(
        "  | other | {other:.3} | {:.1}% | - |",
        100.0 * other / total
    );
    Ok(secs)
}

fn fixture_bench() -> anyhow::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-sd/model");
    let model = StableDiffusion::load(&dir, &LoadOptions::default())?;
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1., (2, 4, 8, 8), &dev)?;
    let ctx = Tensor::randn(0f32, 1., (2, 77, 32), &dev)?;
    timed("tiny-sd unet step (batch 2, 8x8 latent)", 50, || {
        Ok(model.unet.forward(&x, 500.0, &ctx, Tiling::None)?)
    })?;
    let req = GenerationRequest {
        prompt: "mossy cobblestone".into(),
        num_inference_steps: Some(20),
        scheduler: Some(SchedulerKind::EulerAncestral),
        ..Default::default()
    };
    timed(
        "tiny-sd whole image (64 px, 20 steps euler-a, CFG)",
        5,
        || Ok(pipeline::generate(&model, &req, &mut NoHooks)?),
    )?;
    Ok(())
}

/// The tiny SDXS-architecture fixture (no UNet mid block, per-block layers_per_block, TAESD vae).
fn sdxs_fixture_bench() -> anyhow::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-sdxs/model");
    let model = StableDiffusion::load(&dir, &LoadOptions::default())?;
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1., (2, 4, 8, 8), &dev)?;
    let ctx = Tensor::randn(0f32, 1., (2, 77, 32), &dev)?;
    let secs = timed("tiny-sdxs unet step (batch 2, 8x8 latent)", 50, || {
        Ok(model.unet.forward(&x, 500.0, &ctx, Tiling::None)?)
    })?;
    println!("tiny-sdxs unet steps/s: {:.1}", 1.0 / secs);
    let req = GenerationRequest {
        prompt: "sci-fi hull panels".into(),
        num_inference_steps: Some(1),
        guidance_scale: Some(0.0),
        scheduler: Some(SchedulerKind::EulerAncestral),
        timestep_spacing: Some(bevy_diffusion::schedulers::TimestepSpacing::Trailing),
        ..Default::default()
    };
    timed(
        "tiny-sdxs whole image (64 px, 1 step euler-a, no CFG, TAESD)",
        10,
        || Ok(pipeline::generate(&model, &req, &mut NoHooks)?),
    )?;
    Ok(())
}

/// TAESD at its real size (64 channels everywhere, diffusers' AutoencoderTiny defaults) with
/// random weights: one decode of a `latent x latent` latent.
fn taesd_bench(latent: usize) -> anyhow::Result<()> {
    use bevy_diffusion::models::autoencoder_tiny::{AutoencoderTiny, AutoencoderTinyConfig};
    let dev = Device::Cpu;
    let px = latent * 8;
    let cfg = AutoencoderTinyConfig::from_file(&write_config(
        "taesd.json",
        r#"{"_class_name": "AutoencoderTiny"}"#,
    )?)?;
    let varmap = candle_nn::VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let taesd = AutoencoderTiny::new(vb, &cfg)?;
    let z = Tensor::randn(0f32, 1., (1, 4, latent, latent), &dev)?;
    timed_with_ops(&format!("taesd decode {px}px"), 3, || {
        Ok(taesd.decode(&z, Tiling::None)?)
    })?;
    let x = Tensor::randn(0f32, 1., (1, 3, px, px), &dev)?;
    timed(&format!("taesd encode {px}px"), 3, || Ok(taesd.encode(&x)?))?;
    Ok(())
}

fn write_config(name: &str, json: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("bevy_diffusion_bench_{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(name);
    std::fs::write(&path, json)?;
    Ok(path)
}

/// Zero weights, with the UNet's transformer linear and conv weights in bf16 when `bf16` (what a bf16
/// load keeps in bf16: [`bevy_diffusion::models::unet_2d_condition::is_bf16_weight`]).
struct Zeros {
    bf16: bool,
}

impl candle_nn::var_builder::SimpleBackend for Zeros {
    fn get(
        &self,
        s: candle_core::Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let keep =
            self.bf16 && bevy_diffusion::models::unet_2d_condition::is_bf16_weight(name, s.dims());
        Tensor::zeros(s, if keep { DType::BF16 } else { dtype }, dev)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("bench zeros: `{name}` has no shape")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// 2048³ `x Wᵀ` through the `Linear` kernel, f32 and (where a bf16 kernel runs) bf16.
fn gemm_bench(dtype: bevy_diffusion::ComputeDtype) -> anyhow::Result<()> {
    let n = 2048;
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1., (n, n), &dev)?;
    let w = Tensor::randn(0f32, 1., (n, n), &dev)?;
    let flop = 2.0 * (n as f64).powi(3);
    let mut dtypes = vec![DType::F32];
    if dtype == bevy_diffusion::ComputeDtype::Bf16 {
        dtypes.push(DType::BF16);
    }
    for dt in dtypes {
        let linear = candle_nn::Linear::new(w.to_dtype(dt)?, None);
        let s = timed(&format!("gemm {n}³ {dt:?}"), 5, || {
            Ok(bevy_diffusion::testing::kernels::linear::forward(
                &linear, &x,
            )?)
        })?;
        let kernel = match dt {
            DType::BF16 => format!(
                " ({:?} kernel)",
                bevy_diffusion::testing::kernels::bf16::kernel()
            ),
            _ => String::new(),
        };
        println!("gemm {n}³ {dt:?}: {:.1} GFLOP/s{kernel}", flop / s / 1e9);
    }
    Ok(())
}

/// `only`: `Some("unet")` / `Some("vae")` runs just that stage (`--only unet|vae`).
fn sd15_bench(
    latent: usize,
    only: Option<&str>,
    dtype: bevy_diffusion::ComputeDtype,
) -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let px = latent * 8;
    let vb = VarBuilder::zeros(DType::F32, &dev);
    let unet_cfg = UNet2DConditionConfig::from_file(&write_config("unet.json", SD15_UNET)?)?;
    let started = Instant::now();
    let unet_vb = VarBuilder::from_backend(
        Box::new(Zeros {
            bf16: dtype == bevy_diffusion::ComputeDtype::Bf16,
        }),
        DType::F32,
        dev.clone(),
    );
    let unet = UNet2DConditionModel::new(unet_vb, &unet_cfg)?;
    println!(
        "sd15 unet built in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let x = Tensor::randn(0f32, 1., (2, 4, latent, latent), &dev)?;
    let ctx = Tensor::randn(0f32, 1., (2, 77, 768), &dev)?;
    if only.is_none_or(|o| o == "unet") {
        timed_with_ops(
            &format!("sd15 unet step (batch 2, {latent}x{latent} latent = {px} px)"),
            3,
            || Ok(unet.forward(&x, 500.0, &ctx, Tiling::None)?),
        )?;
    }
    drop(unet);
    if only == Some("unet") {
        return Ok(());
    }
    let vae_cfg = AutoencoderKLConfig::from_file(&write_config("vae.json", SD15_VAE)?)?;
    let vae = AutoencoderKL::new(vb.clone(), &vae_cfg)?;
    let z = Tensor::randn(0f32, 1., (1, 4, latent, latent), &dev)?;
    timed_with_ops(&format!("sd15 vae decode ({px}x{px})"), 3, || {
        Ok(vae.decode(&z, Tiling::None)?)
    })?;
    drop(vae);
    if only.is_some() {
        return Ok(());
    }
    let clip_cfg = ClipTextConfig::from_file(&write_config("clip.json", CLIP_L)?)?;
    let clip = ClipTextModel::new(vb, &clip_cfg)?;
    let ids = Tensor::zeros((2, 77), DType::U32, &dev)?;
    timed("clip-l text encoder (batch 2)", 3, || {
        Ok(clip.forward(&ids)?)
    })?;
    Ok(())
}
