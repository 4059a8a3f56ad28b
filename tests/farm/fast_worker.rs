//! `farm_fast_worker`: a farm worker process for the farm tests and `farm_load`, serving with
//! the real [`bevy_diffusion::farm::serve`] loop on a fast stand-in [`Generator`] instead of a
//! model (so the tests can SIGKILL it mid-job and measure the broker, not the UNet).
//!
//! `farm_fast_worker --nats URL [--name NAME] [--slots N] [--step-ms MS] [--ack-wait-ms MS]
//! [--max-deliveries N]`
//!
//! The generator runs `num_inference_steps` steps (default 4) of `--step-ms` each, checking
//! cancel before every step, and returns an 8x8 image whose red channel is the seed's low
//! byte. A prompt starting with `fail` always fails.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use bevy_diffusion::farm::{FarmLimits, ServeConfig};
use bevy_diffusion::pipeline::{DenoisingStep, GenerationHooks};
use bevy_diffusion::{DiffusionError, GenerationRequest, Generator};
use candle_core::{Device, Tensor};

struct Fast {
    step_ms: u64,
}

impl Generator for Fast {
    fn identity(&self) -> String {
        "farm-fast".into()
    }

    fn generate(
        &self,
        request: &GenerationRequest,
        hooks: &mut dyn GenerationHooks,
    ) -> bevy_diffusion::Result<image::RgbaImage> {
        if request.prompt.starts_with("fail") {
            return Err(DiffusionError::Farm {
                reason: "the test generator always fails on `fail` prompts".into(),
            });
        }
        let total = request.num_inference_steps.unwrap_or(4).clamp(1, 1000);
        let t = Tensor::zeros((1, 1), candle_core::DType::F32, &Device::Cpu)?;
        for step in 0..total {
            if hooks.should_cancel() {
                return Err(DiffusionError::Cancelled);
            }
            std::thread::sleep(Duration::from_millis(self.step_ms));
            hooks.on_step(&DenoisingStep {
                step,
                total,
                timestep: 0.0,
                latents_in: t.clone(),
                unet_input: t.clone(),
                unet_output: t.clone(),
                noise_pred: t.clone(),
                pred_original_sample: t.clone(),
                latents_out: t.clone(),
            });
        }
        let red = (request.seed & 0xff) as u8;
        Ok(image::RgbaImage::from_pixel(
            8,
            8,
            image::Rgba([red, 7, 9, 255]),
        ))
    }
}

#[allow(dead_code)]
fn main() {
    worker_main(std::env::args().skip(1));
}

/// Parses the flags above and serves until killed.
pub fn worker_main(args: impl Iterator<Item = String>) {
    let mut args = args;
    let mut config = ServeConfig::new("nats://127.0.0.1:4222");
    let mut limits = FarmLimits::default();
    let mut step_ms = 20;
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_default();
        let number = || -> u64 {
            value.parse().unwrap_or_else(|_| {
                eprintln!("{flag}: `{value}` is not a number");
                std::process::exit(2)
            })
        };
        match flag.as_str() {
            "--nats" => config.url = value.clone(),
            "--name" => config.name = value.clone(),
            "--slots" => config.slots = number() as usize,
            "--step-ms" => step_ms = number(),
            "--ack-wait-ms" => limits.ack_wait = Duration::from_millis(number()),
            "--max-deliveries" => limits.max_deliveries = number() as u32,
            other => {
                eprintln!("unknown flag {other}");
                std::process::exit(2)
            }
        }
    }
    config.limits = limits;
    let stop = Arc::new(AtomicBool::new(false));
    if let Err(e) = bevy_diffusion::farm::serve(config, Arc::new(Fast { step_ms }), stop) {
        eprintln!("farm_fast_worker: {e}");
        std::process::exit(1);
    }
}
