//! The plugin with generators the tests control (`DiffusionPlugin::with_generator`): previews,
//! cancel, quotas, sprites and samplers, deterministically.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bevy::image::{ImageAddressMode, ImageFilterMode, ImageSampler};
use bevy::prelude::*;
use bevy_diffusion::pipeline::{DenoisingStep, GenerationHooks};
use bevy_diffusion::{
    AssetKind, DiffusionError, DiffusionPlugin, DiffusionStatus, GenerationRequest, Generator,
    SubmitError,
};
use candle_core::{Device, Tensor};
use image::RgbaImage;

use crate::{app, cancel, log, pixels, submit, wait_ended, wait_for};

/// `num_inference_steps` steps of `step_ms` each, counted in `steps_done`; previews are solid
/// `[step % 256, 1, 2, 255]`. The result: a white `width x height` (default 32) image with a red
/// disc in the middle, post-processed like `SdGenerator` does (`postprocess::finish`).
struct Disc {
    step_ms: u64,
    steps_done: Arc<AtomicUsize>,
}

impl Disc {
    fn plugin(step_ms: u64) -> (DiffusionPlugin, Arc<AtomicUsize>) {
        let steps = Arc::new(AtomicUsize::new(0));
        let counter = steps.clone();
        let plugin = DiffusionPlugin::with_generator(move || {
            Ok(Disc {
                step_ms,
                steps_done: counter.clone(),
            })
        });
        (plugin, steps)
    }
}

fn size(request: &GenerationRequest) -> (u32, u32) {
    let pick = |v: u32| if v == 0 { 32 } else { v };
    (pick(request.width), pick(request.height))
}

impl Generator for Disc {
    fn identity(&self) -> String {
        "disc".into()
    }

    fn generate(
        &self,
        request: &GenerationRequest,
        hooks: &mut dyn GenerationHooks,
    ) -> bevy_diffusion::Result<RgbaImage> {
        let t = Tensor::zeros((1, 1, 1, 1), candle_core::DType::F32, &Device::Cpu)?;
        let total = request.steps();
        for step in 0..total {
            if hooks.should_cancel() {
                return Err(DiffusionError::Cancelled);
            }
            std::thread::sleep(Duration::from_millis(self.step_ms));
            self.steps_done.fetch_add(1, Ordering::SeqCst);
            let s = || t.clone();
            hooks.on_step(&DenoisingStep {
                step,
                total,
                timestep: 0.0,
                latents_in: s(),
                unet_input: s(),
                unet_output: s(),
                noise_pred: s(),
                pred_original_sample: Tensor::full(step as f32, (1, 1, 1, 1), &Device::Cpu)?,
                latents_out: s(),
            });
        }
        let (w, h) = size(request);
        let image = RgbaImage::from_fn(w, h, |x, y| {
            let d =
                ((x as f32 - w as f32 / 2.0).powi(2) + (y as f32 - h as f32 / 2.0).powi(2)).sqrt();
            if d < w.min(h) as f32 / 4.0 {
                image::Rgba([200, 30, 30, 255])
            } else {
                image::Rgba([255, 255, 255, 255])
            }
        });
        Ok(bevy_diffusion::pipeline::postprocess::finish(
            image, request,
        ))
    }

    fn preview(&self, step: &DenoisingStep) -> Option<RgbaImage> {
        let v = step
            .pred_original_sample
            .flatten_all()
            .ok()?
            .to_vec1::<f32>()
            .ok()?[0] as u32;
        Some(RgbaImage::from_pixel(
            32,
            32,
            image::Rgba([(v % 256) as u8, 1, 2, 255]),
        ))
    }
}

fn steps(n: usize) -> GenerationRequest {
    GenerationRequest {
        prompt: "disc".into(),
        num_inference_steps: Some(n),
        ..Default::default()
    }
}

#[test]
fn the_handle_is_valid_at_once_and_filled_in_place_with_the_result() {
    let (plugin, _) = Disc::plugin(0);
    let mut app = app(plugin);
    let request = GenerationRequest {
        width: 24,
        height: 40,
        ..steps(2)
    };
    let job = submit(&mut app, request).expect("accepted");
    // Same frame: a placeholder of the request's size.
    let (w, h, placeholder) = pixels(&app, &job.handle);
    assert_eq!((w, h), (24, 40));
    assert!(
        placeholder.chunks(4).all(|p| p == [128, 128, 128, 255]),
        "grey placeholder"
    );
    wait_ended(&mut app, job.id);
    let finished = log(&app).finished_of(job.id);
    assert_eq!(finished.len(), 1);
    assert_eq!(
        finished[0].handle, job.handle,
        "the result lands in the handle returned at submission"
    );
    let (w, h, result) = pixels(&app, &job.handle);
    assert_eq!((w, h), (24, 40));
    assert_eq!(&result[..4], &[255, 255, 255, 255]);
    let image = app
        .world()
        .resource::<Assets<Image>>()
        .get(&job.handle)
        .unwrap();
    assert_eq!(
        image.texture_descriptor.format,
        wgpu_types::TextureFormat::Rgba8UnormSrgb
    );
    let ImageSampler::Descriptor(d) = &image.sampler else {
        panic!("textures get an explicit sampler")
    };
    assert_eq!(
        (d.address_mode_u, d.address_mode_v),
        (ImageAddressMode::Repeat, ImageAddressMode::Repeat)
    );
    assert!(
        matches!(app.world().resource::<DiffusionStatus>(), DiffusionStatus::Ready { identity } if identity == "disc")
    );
    assert_eq!(log(&app).ready.len(), 1);
}

#[test]
fn a_sprite_is_keyed_transparent_around_an_opaque_centre_with_a_nearest_sampler() {
    let (plugin, _) = Disc::plugin(0);
    let mut app = app(plugin);
    let request = GenerationRequest {
        num_inference_steps: Some(1),
        ..GenerationRequest::sprite("disc")
    };
    let job = submit(&mut app, request).expect("accepted");
    let (_, _, placeholder) = pixels(&app, &job.handle);
    assert!(
        placeholder.chunks(4).all(|p| p[3] == 0),
        "transparent sprite placeholder"
    );
    wait_ended(&mut app, job.id);
    let (w, h, px) = pixels(&app, &job.handle);
    let alpha = |x: u32, y: u32| px[((y * w + x) * 4 + 3) as usize];
    for (x, y) in [(0, 0), (w - 1, 0), (0, h - 1), (w - 1, h - 1)] {
        assert_eq!(alpha(x, y), 0, "corner ({x}, {y}) is transparent");
    }
    assert_eq!(alpha(w / 2, h / 2), 255, "centre is opaque");
    let image = app
        .world()
        .resource::<Assets<Image>>()
        .get(&job.handle)
        .unwrap();
    let ImageSampler::Descriptor(d) = &image.sampler else {
        panic!("sprites get an explicit sampler")
    };
    assert_eq!(
        (d.mag_filter, d.min_filter),
        (ImageFilterMode::Nearest, ImageFilterMode::Nearest)
    );
    assert_eq!(AssetKind::Sprite, GenerationRequest::sprite("x").kind);
}

#[test]
fn previews_update_the_same_handle_during_denoising() {
    let (plugin, _) = Disc::plugin(3);
    let mut app = app(plugin);
    let job = submit(&mut app, steps(1000)).expect("accepted");
    let mut checked = 0;
    wait_for(&mut app, "five frames with progress", |app| {
        // The image holds the preview of the newest step seen so far (previews are coalesced).
        if let Some(last) = log(app).progress_of(job.id).last().map(|p| p.step) {
            let (_, _, px) = pixels(app, &job.handle);
            assert_eq!(
                &px[..4],
                &[((last - 1) % 256) as u8, 1, 2, 255],
                "preview of step {last}"
            );
            checked += 1;
        }
        checked >= 5
    });
    assert!(cancel(&mut app, job.id));
    wait_ended(&mut app, job.id);
    assert_eq!(log(&app).cancelled.len(), 1);
}

#[test]
fn with_previews_off_the_placeholder_stays_until_the_result() {
    let (plugin, _) = Disc::plugin(3);
    let mut app = app(plugin.configure(|s| s.worker.preview_every = None));
    let job = submit(&mut app, steps(1000)).expect("accepted");
    wait_for(&mut app, "three progress messages", |app| {
        log(app).progress_of(job.id).len() >= 3
    });
    let (_, _, px) = pixels(&app, &job.handle);
    assert!(
        px.chunks(4).all(|p| p == [128, 128, 128, 255]),
        "still the placeholder"
    );
    assert!(cancel(&mut app, job.id));
    wait_ended(&mut app, job.id);
}

#[test]
#[should_panic(expected = "AssetPlugin and ImagePlugin")]
fn the_plugin_names_the_plugins_it_needs() {
    let (plugin, _) = Disc::plugin(0);
    let mut app = App::new();
    app.add_plugins((MinimalPlugins, plugin));
    app.finish();
}

#[test]
fn cancel_stops_a_running_job_within_one_step_and_frees_its_slot() {
    let (plugin, steps_done) = Disc::plugin(5);
    let mut app = app(plugin.configure(|s| s.worker.max_queued = 1));
    let job = submit(&mut app, steps(1000)).expect("accepted");
    wait_for(&mut app, "the job to run", |app| {
        !log(app).progress_of(job.id).is_empty()
    });
    assert!(
        matches!(
            submit(&mut app, steps(1)),
            Err(SubmitError::QueueFull { limit: 1, .. })
        ),
        "the slot is taken"
    );
    assert!(cancel(&mut app, job.id), "in flight");
    // Read after the cancel was sent: at most the step running now completes.
    let at_cancel = steps_done.load(Ordering::SeqCst);
    wait_ended(&mut app, job.id);
    assert_eq!(
        log(&app)
            .cancelled
            .iter()
            .filter(|c| c.id == job.id)
            .count(),
        1
    );
    assert!(log(&app).finished_of(job.id).is_empty());
    let after = steps_done.load(Ordering::SeqCst);
    assert!(
        after <= at_cancel + 1,
        "{} steps ran after the cancel",
        after - at_cancel
    );
    assert!(!cancel(&mut app, job.id), "no longer in flight");
    let next = submit(&mut app, steps(1)).expect("the cancelled job freed its slot");
    wait_ended(&mut app, next.id);
    assert_eq!(log(&app).finished_of(next.id).len(), 1);
}

#[test]
fn a_player_over_quota_is_rejected_at_once_with_the_reason_and_can_cancel_all() {
    let (plugin, _) = Disc::plugin(5);
    let mut app = app(plugin.configure(|s| s.worker.max_per_player = 2));
    let for_player = |p: &str| GenerationRequest {
        player: Some(p.into()),
        ..steps(1000)
    };
    let a = submit(&mut app, for_player("ann")).expect("first");
    let b = submit(&mut app, for_player("ann")).expect("second");
    let err = submit(&mut app, for_player("ann")).expect_err("third is over quota");
    assert_eq!(
        err,
        SubmitError::PlayerQuota {
            player: "ann".into(),
            queued: 2,
            limit: 2
        }
    );
    assert!(
        err.to_string().contains("ann") && err.to_string().contains("limit 2"),
        "{err}"
    );
    let c = submit(
        &mut app,
        GenerationRequest {
            num_inference_steps: Some(1),
            ..for_player("bob")
        },
    )
    .expect("bob has room");
    let n = app
        .world_mut()
        .run_system_once(|mut d: bevy_diffusion::Diffusion| d.cancel_player("ann"))
        .expect("cancel_player runs");
    assert_eq!(n, 2);
    for id in [a.id, b.id, c.id] {
        wait_ended(&mut app, id);
    }
    let l = log(&app);
    assert!(l.cancelled.iter().any(|m| m.id == a.id) && l.cancelled.iter().any(|m| m.id == b.id));
    assert_eq!(l.finished_of(c.id).len(), 1);
    submit(&mut app, for_player("ann")).expect("ann's slots were freed");
}

use bevy::ecs::system::RunSystemOnce;
