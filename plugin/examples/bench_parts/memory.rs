//! The bench's memory figures: peak RSS (`VmHWM` of `/proc/self/status`) of loading a real-size
//! SD 1.5 folder whose weights are random f32 values (not broadcast zeros, so every page is
//! real), and of one 512 px generation, against the weights' bytes on disk.
//!
//! The folder is written by a child process (`bench --write-random-sd15 DIR`), so the writer's
//! memory does not count; its tensor names and shapes are those our model code requests.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bevy_diffusion::models::autoencoder_kl::{AutoencoderKL, AutoencoderKLConfig};
use bevy_diffusion::models::clip_text_model::{ClipTextConfig, ClipTextModel};
use bevy_diffusion::models::unet_2d_condition::{UNet2DConditionConfig, UNet2DConditionModel};
use bevy_diffusion::pipeline::{self, NoHooks};
use bevy_diffusion::{GenerationRequest, LoadOptions, SchedulerKind, StableDiffusion};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;

/// Records every (name, shape) a model asks for and hands out broadcast zeros.
#[derive(Default)]
struct Recorder(Mutex<Vec<(String, Vec<usize>)>>);

impl candle_nn::var_builder::SimpleBackend for Recorder {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if let Ok(mut v) = self.0.lock() {
            v.push((name.to_string(), s.dims().to_vec()));
        }
        Tensor::zeros(1, dtype, dev)?.broadcast_as(s)
    }
    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("{name}: shape unknown")
    }
    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// Streams a safetensors file of uniform random f32 values in [-0.02, 0.02] (norm weights
/// around 1) for `tensors`.
fn write_random_safetensors(path: &Path, tensors: &[(String, Vec<usize>)]) -> anyhow::Result<()> {
    let mut tensors = tensors.to_vec();
    tensors.sort();
    tensors.dedup();
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape) in &tensors {
        let bytes = 4 * shape.iter().product::<usize>();
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut h = serde_json::to_vec(&serde_json::Value::Object(header))?;
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut f = std::io::BufWriter::with_capacity(1 << 22, std::fs::File::create(path)?);
    f.write_all(&(h.len() as u64).to_le_bytes())?;
    f.write_all(&h)?;
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for (name, shape) in &tensors {
        let n: usize = shape.iter().product();
        let norm = name.contains("norm") && name.ends_with("weight");
        let mut buf = Vec::with_capacity(4 * n.min(1 << 20));
        for i in 0..n {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = (state >> 40) as f32 / (1u64 << 24) as f32 * 0.04 - 0.02;
            buf.extend_from_slice(&(if norm { 1.0 + u } else { u }).to_le_bytes());
            if buf.len() >= 4 << 20 || i + 1 == n {
                f.write_all(&buf)?;
                buf.clear();
            }
        }
    }
    f.flush()?;
    Ok(())
}

fn record(
    build: impl FnOnce(VarBuilder) -> candle_core::Result<()>,
) -> anyhow::Result<Vec<(String, Vec<usize>)>> {
    let rec = std::sync::Arc::new(Recorder::default());
    struct Shared(std::sync::Arc<Recorder>);
    impl candle_nn::var_builder::SimpleBackend for Shared {
        fn get(
            &self,
            s: Shape,
            n: &str,
            h: candle_nn::Init,
            d: DType,
            dev: &Device,
        ) -> candle_core::Result<Tensor> {
            self.0.get(s, n, h, d, dev)
        }
        fn get_unchecked(&self, n: &str, d: DType, dev: &Device) -> candle_core::Result<Tensor> {
            self.0.get_unchecked(n, d, dev)
        }
        fn contains_tensor(&self, n: &str) -> bool {
            self.0.contains_tensor(n)
        }
    }
    build(VarBuilder::from_backend(
        Box::new(Shared(rec.clone())),
        DType::F32,
        Device::Cpu,
    ))?;
    let out = rec
        .0
        .lock()
        .map_err(|_| anyhow::anyhow!("recorder poisoned"))?
        .clone();
    Ok(out)
}

/// `bench --write-random-sd15 DIR`: a StableDiffusionPipeline folder of SD 1.5 size (UNet, VAE,
/// CLIP-L) with random weights; scheduler and tokenizer from the tiny-sd fixture.
pub fn write_random_sd15(
    dir: &Path,
    write_config: &dyn Fn(&str, &str) -> anyhow::Result<PathBuf>,
    unet_json: &str,
    vae_json: &str,
    clip_json: &str,
) -> anyhow::Result<()> {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-sd/model");
    for sub in ["unet", "vae", "text_encoder", "scheduler", "tokenizer"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    std::fs::copy(
        fixture.join("model_index.json"),
        dir.join("model_index.json"),
    )?;
    std::fs::copy(
        fixture.join("scheduler/scheduler_config.json"),
        dir.join("scheduler/scheduler_config.json"),
    )?;
    for entry in std::fs::read_dir(fixture.join("tokenizer"))? {
        let entry = entry?;
        std::fs::copy(entry.path(), dir.join("tokenizer").join(entry.file_name()))?;
    }
    let unet_cfg = UNet2DConditionConfig::from_file(&write_config("unet.json", unet_json)?)?;
    let vae_cfg = AutoencoderKLConfig::from_file(&write_config("vae.json", vae_json)?)?;
    let clip_cfg = ClipTextConfig::from_file(&write_config("clip.json", clip_json)?)?;
    std::fs::write(dir.join("unet/config.json"), unet_json)?;
    std::fs::write(dir.join("vae/config.json"), vae_json)?;
    std::fs::write(dir.join("text_encoder/config.json"), clip_json)?;
    let parts = [
        (
            "unet/diffusion_pytorch_model.safetensors",
            record(|vb| UNet2DConditionModel::new(vb, &unet_cfg).map(drop))?,
        ),
        (
            "vae/diffusion_pytorch_model.safetensors",
            record(|vb| AutoencoderKL::new(vb, &vae_cfg).map(drop))?,
        ),
        (
            "text_encoder/model.safetensors",
            record(|vb| ClipTextModel::new(vb, &clip_cfg).map(drop))?,
        ),
    ];
    for (file, tensors) in &parts {
        write_random_safetensors(&dir.join(file), tensors)?;
    }
    Ok(())
}

/// `(VmHWM, VmRSS)` of this process in bytes.
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

fn gib(b: u64) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

/// `--only memory`: writes the random folder (once, in a child), loads it, generates one 512 px
/// image (1 DDIM step, CFG), printing peak RSS against the weights' bytes.
pub fn memory_bench() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join("bevy_diffusion_bench_sd15_random");
    if !dir.join("text_encoder/model.safetensors").exists() {
        let status = std::process::Command::new(std::env::current_exe()?)
            .arg("--write-random-sd15")
            .arg(&dir)
            .status()?;
        anyhow::ensure!(status.success(), "writing the random SD 1.5 folder failed");
    }
    let weights: u64 = [
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
    ]
    .iter()
    .map(|f| std::fs::metadata(dir.join(f)).map_or(0, |m| m.len()))
    .sum();
    let (hwm0, _) = rss();
    let started = std::time::Instant::now();
    let model = StableDiffusion::load(&dir, &LoadOptions::default())?;
    let load_s = started.elapsed().as_secs_f64();
    let (hwm, now) = rss();
    println!(
        "memory: sd15 (random f32) weights {:.2} GiB; before load peak {:.2} GiB; after load peak {:.2} GiB ({:.2}x weights), resident {:.2} GiB; load {load_s:.1} s",
        gib(weights),
        gib(hwm0),
        gib(hwm),
        hwm as f64 / weights as f64,
        gib(now)
    );
    // Reset the peak (Linux: 5 > clear_refs), then one 512 px image.
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let req = GenerationRequest {
        prompt: "mossy cobblestone".into(),
        width: 512,
        height: 512,
        num_inference_steps: Some(1),
        guidance_scale: Some(7.5),
        scheduler: Some(SchedulerKind::Ddim),
        ..Default::default()
    };
    let started = std::time::Instant::now();
    pipeline::generate(&model, &req, &mut NoHooks)?;
    let (hwm, now) = rss();
    println!(
        "memory: 512px generation (1 DDIM step, CFG) peak {:.2} GiB ({:.2}x weights; {}), resident after {:.2} GiB; {:.1} s",
        gib(hwm),
        hwm as f64 / weights as f64,
        if reset {
            "peak reset after load"
        } else {
            "peak since start"
        },
        gib(now),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
