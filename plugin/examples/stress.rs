//! A burst through the whole plugin: 1,000 requests from 50 players against a fast custom
//! generator, with per-player quotas and a bounded queue, some cancelled by id, some by player,
//! some failing. Prints what happened to every request:
//!
//! ```text
//! cargo run --release -p bevy_diffusion --example stress
//! ```
//!
//! `lost` must be 0: every accepted id ends in exactly one terminal message (finished, failed or
//! cancelled). Also prints the peak resident memory and the frame-time percentiles.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bevy::prelude::*;
use bevy_diffusion::pipeline::{DenoisingStep, GenerationHooks};
use bevy_diffusion::{
    Diffusion, DiffusionError, DiffusionPlugin, GenerationCancelled, GenerationFailed,
    GenerationFinished, GenerationRequest, Generator, RequestId,
};
use candle_core::{Device, Tensor};
use image::RgbaImage;

const REQUESTS: usize = 1000;
const PLAYERS: usize = 50;
const PER_FRAME: usize = 20;

/// Two steps of ~0.2 ms, a 16x16 image; prompt "fail" fails.
struct Fast;

impl Generator for Fast {
    fn identity(&self) -> String {
        "fast".into()
    }
    fn generate(
        &self,
        request: &GenerationRequest,
        hooks: &mut dyn GenerationHooks,
    ) -> bevy_diffusion::Result<RgbaImage> {
        if request.prompt == "fail" {
            return Err(DiffusionError::InvalidRequest {
                field: "prompt",
                value: "fail".into(),
                reason: "this generator refuses it".into(),
            });
        }
        let t = Tensor::zeros((1, 1, 1, 1), candle_core::DType::F32, &Device::Cpu)?;
        for step in 0..request.steps() {
            if hooks.should_cancel() {
                return Err(DiffusionError::Cancelled);
            }
            std::thread::sleep(Duration::from_micros(200));
            hooks.on_step(&DenoisingStep {
                step,
                total: request.steps(),
                timestep: 0.0,
                latents_in: t.clone(),
                unet_input: t.clone(),
                unet_output: t.clone(),
                noise_pred: t.clone(),
                pred_original_sample: t.clone(),
                latents_out: t.clone(),
            });
        }
        let v = (request.seed % 256) as u8;
        Ok(RgbaImage::from_pixel(16, 16, image::Rgba([v, v, v, 255])))
    }
}

/// Everything counted, and the handles of the requests in flight (dropping one would cancel it).
#[derive(Resource, Default)]
struct Tally {
    submitted: usize,
    accepted: usize,
    refused: HashMap<&'static str, usize>,
    finished: usize,
    failed: usize,
    cancelled: usize,
    ended_twice: usize,
    open: HashMap<RequestId, Handle<Image>>,
}

fn submit_burst(mut diffusion: Diffusion, mut tally: ResMut<Tally>) {
    let start = tally.submitted;
    for i in start..(start + PER_FRAME).min(REQUESTS) {
        tally.submitted += 1;
        let player = format!("player{}", i % PLAYERS);
        let request = GenerationRequest {
            prompt: if i % 97 == 0 {
                "fail".into()
            } else {
                format!("wall {i}")
            },
            seed: i as u64,
            num_inference_steps: Some(2),
            player: Some(player.clone()),
            priority: (i % 3) as i32,
            ..Default::default()
        };
        match diffusion.submit(request) {
            Ok(job) => {
                tally.accepted += 1;
                // Some requests are cancelled by id at once, some players cancel everything.
                if i % 13 == 0 {
                    diffusion.cancel(job.id);
                }
                tally.open.insert(job.id, job.handle);
                if i % 211 == 0 {
                    diffusion.cancel_player(&player);
                }
            }
            Err(e) => *tally.refused.entry(e.kind()).or_default() += 1,
        }
    }
}

fn count(
    mut tally: ResMut<Tally>,
    mut finished: MessageReader<GenerationFinished>,
    mut failed: MessageReader<GenerationFailed>,
    mut cancelled: MessageReader<GenerationCancelled>,
) {
    let end = |tally: &mut Tally, id: RequestId| {
        if tally.open.remove(&id).is_none() {
            tally.ended_twice += 1;
        }
    };
    for m in finished.read() {
        tally.finished += 1;
        end(&mut tally, m.id);
    }
    for m in failed.read() {
        tally.failed += 1;
        end(&mut tally, m.id);
    }
    for m in cancelled.read() {
        tally.cancelled += 1;
        end(&mut tally, m.id);
    }
}

/// Peak resident memory (Linux `VmHWM`), in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn main() {
    let mut app = App::new();
    app.add_plugins((
        MinimalPlugins,
        AssetPlugin::default(),
        ImagePlugin::default(),
    ))
    .add_plugins(DiffusionPlugin::with_generator(|| Ok(Fast)).configure(|s| {
        s.worker.max_queued = 64;
        s.worker.max_per_player = 4;
        s.worker.compute_threads = Some(1);
    }))
    .init_resource::<Tally>()
    .add_systems(Update, (submit_burst, count).chain());
    app.finish();
    app.cleanup();

    let started = Instant::now();
    let mut frames = Vec::new();
    loop {
        let t = Instant::now();
        app.update();
        frames.push(t.elapsed());
        let tally = app.world().resource::<Tally>();
        if tally.submitted >= REQUESTS && tally.open.is_empty() {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            eprintln!("gave up after 120 s with {} open", tally.open.len());
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let tally = app.world().resource::<Tally>();
    frames.sort_unstable();
    let ms = |q: f64| frames[((frames.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
    let ended = tally.finished + tally.failed + tally.cancelled;
    let mut refused: Vec<_> = tally.refused.iter().collect();
    refused.sort();
    println!("submitted {}", tally.submitted);
    println!("accepted {}", tally.accepted);
    for (reason, n) in refused {
        println!("refused_{reason} {n}");
    }
    println!("finished {}", tally.finished);
    println!("failed {}", tally.failed);
    println!("cancelled {}", tally.cancelled);
    println!(
        "lost {}",
        tally.accepted.saturating_sub(ended) + tally.ended_twice
    );
    println!("seconds {:.2}", started.elapsed().as_secs_f64());
    println!("frames {}", frames.len());
    println!("frame_ms_p50 {:.3}", ms(0.5));
    println!("frame_ms_p99 {:.3}", ms(0.99));
    println!("frame_ms_max {:.3}", ms(1.0));
    if let Some(mib) = peak_rss_mib() {
        println!("peak_rss_mib {mib:.1}");
    }
}
