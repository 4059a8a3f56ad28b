//! A request cannot hurt the game: sizes and counts refused at `submit` before anything is
//! allocated, cancel true once, dropping every handle cancels, app exit stops a running request
//! within a step, typed errors and truncation reach the messages.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bevy::prelude::*;
use bevy_diffusion::pipeline::{DenoisingStep, GenerationHooks};
use bevy_diffusion::{DiffusionError, DiffusionPlugin, GenerationRequest, Generator, SubmitError};
use bevy_diffusion_tests::tiny_sd_model;
use candle_core::{Device, Tensor};
use image::RgbaImage;

use crate::{app, cancel, log, submit, wait_ended, wait_for};

/// `num_inference_steps` steps of `step_ms`, counted; polls only the fine-grained cancel check
/// (as a model's blocks do).
struct Slow {
    step_ms: u64,
    steps: Arc<AtomicUsize>,
}

impl Generator for Slow {
    fn identity(&self) -> String {
        "slow".into()
    }
    fn generate(
        &self,
        request: &GenerationRequest,
        hooks: &mut dyn GenerationHooks,
    ) -> bevy_diffusion::Result<RgbaImage> {
        let check = hooks.cancel_check();
        let t = Tensor::zeros((1, 1, 1, 1), candle_core::DType::F32, &Device::Cpu)?;
        for step in 0..request.steps() {
            if check.as_ref().is_some_and(|c| c()) {
                return Err(DiffusionError::Cancelled);
            }
            std::thread::sleep(Duration::from_millis(self.step_ms));
            self.steps.fetch_add(1, Ordering::SeqCst);
            let s = || t.clone();
            hooks.on_step(&DenoisingStep {
                step,
                total: request.steps(),
                timestep: 0.0,
                latents_in: s(),
                unet_input: s(),
                unet_output: s(),
                noise_pred: s(),
                pred_original_sample: s(),
                latents_out: s(),
            });
        }
        Ok(RgbaImage::new(8, 8))
    }
}

fn slow(step_ms: u64) -> (DiffusionPlugin, Arc<AtomicUsize>) {
    let steps = Arc::new(AtomicUsize::new(0));
    let counter = steps.clone();
    let plugin = DiffusionPlugin::with_generator(move || {
        Ok(Slow {
            step_ms,
            steps: counter.clone(),
        })
    });
    (plugin, steps)
}

fn long(n: usize) -> GenerationRequest {
    GenerationRequest {
        prompt: "slow".into(),
        num_inference_steps: Some(n),
        ..Default::default()
    }
}

#[test]
fn absurd_sizes_are_refused_at_submit_without_a_placeholder_or_a_panic() {
    let (plugin, _) = slow(1);
    let mut app = app(plugin);
    let images_before = app.world().resource::<Assets<Image>>().len();
    for (w, h) in [
        (u32::MAX, u32::MAX),
        (65536, 65536),
        (16384, 16384),
        (4097, 8),
    ] {
        let request = GenerationRequest {
            width: w,
            height: h,
            ..long(1)
        };
        let e = submit(&mut app, request).expect_err("refused at once");
        assert!(
            matches!(e, SubmitError::InvalidRequest { .. }),
            "{w}x{h}: {e}"
        );
    }
    let images = app.world().resource::<Assets<Image>>();
    assert_eq!(images.len(), images_before, "no placeholder was allocated");
    let ok = submit(&mut app, long(1)).expect("a sane request is still accepted");
    wait_ended(&mut app, ok.id);
}

#[test]
fn cancel_answers_true_once() {
    let (plugin, _) = slow(5);
    let mut app = app(plugin);
    let job = submit(&mut app, long(1000)).expect("accepted");
    wait_for(&mut app, "the job to run", |app| {
        !log(app).progress_of(job.id).is_empty()
    });
    assert!(cancel(&mut app, job.id));
    assert!(
        !cancel(&mut app, job.id),
        "the second cancel of one id is false"
    );
    wait_ended(&mut app, job.id);
    assert_eq!(log(&app).cancelled.len(), 1);
    assert!(!cancel(&mut app, job.id));
}

#[test]
fn dropping_every_handle_cancels_the_request() {
    let (plugin, steps) = slow(5);
    let mut app = app(plugin);
    let job = submit(&mut app, long(1000)).expect("accepted");
    let id = job.id;
    wait_for(&mut app, "the job to run", |app| {
        !log(app).progress_of(id).is_empty()
    });
    drop(job);
    wait_ended(&mut app, id);
    assert_eq!(log(&app).cancelled.iter().filter(|c| c.id == id).count(), 1);
    assert!(steps.load(Ordering::SeqCst) < 1000);
}

#[test]
fn with_cancel_unused_off_a_dropped_request_runs_to_its_end() {
    let (plugin, _) = slow(1);
    let mut app = app(plugin.configure(|s| s.cancel_unused = false));
    let id = submit(&mut app, long(5)).expect("accepted").id;
    wait_ended(&mut app, id);
    assert_eq!(log(&app).finished_of(id).len(), 1, "{:?}", log(&app));
}

#[test]
fn app_exit_stops_a_running_request_within_a_step() {
    let (plugin, steps) = slow(10);
    let mut app = app(plugin);
    let job = submit(&mut app, long(1000)).expect("accepted");
    wait_for(&mut app, "the job to run", |app| {
        !log(app).progress_of(job.id).is_empty()
    });
    let before = steps.load(Ordering::SeqCst);
    drop(app); // joins the worker
    let after = steps.load(Ordering::SeqCst);
    assert!(
        after <= before + 2,
        "{} steps ran after the app was dropped",
        after - before
    );
}

fn tiny() -> DiffusionPlugin {
    DiffusionPlugin::from_folder(tiny_sd_model()).configure(|s| s.worker.compute_threads = Some(1))
}

#[test]
fn failures_carry_the_typed_error_and_truncation_is_reported() {
    let mut app = app(tiny());
    // 100 is no multiple of the fixture's VAE factor 8: accepted, fails once the model knows.
    let bad = submit(
        &mut app,
        GenerationRequest {
            width: 100,
            num_inference_steps: Some(1),
            ..Default::default()
        },
    )
    .expect("accepted");
    let long_prompt = "stone ".repeat(100);
    let long = submit(
        &mut app,
        GenerationRequest {
            prompt: long_prompt.clone(),
            negative_prompt: Some(long_prompt),
            num_inference_steps: Some(1),
            ..Default::default()
        },
    )
    .expect("accepted");
    wait_ended(&mut app, bad.id);
    wait_ended(&mut app, long.id);
    let failed = log(&app)
        .failed
        .iter()
        .find(|m| m.id == bad.id)
        .expect("failed");
    assert!(
        matches!(
            &*failed.error,
            DiffusionError::InvalidRequest { field: "width", .. }
        ),
        "{:?}",
        failed.error
    );
    assert_eq!(failed.reason, failed.error.to_string());
    let finished = log(&app).finished_of(long.id);
    assert_eq!(finished.len(), 1);
    assert!(
        finished[0].truncated.prompt && finished[0].truncated.negative_prompt,
        "{:?}",
        finished[0].truncated
    );
}
