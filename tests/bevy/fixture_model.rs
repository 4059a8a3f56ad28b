//! The plugin on the tiny fixture model (`tests/fixtures/tiny-sd/model`): results bit-identical to
//! the core pipeline, failures that do not stop the next request, cache hits, load failures.

use bevy::prelude::*;
use bevy_diffusion::request::InitImage;
use bevy_diffusion::{
    DiffusionPlugin, DiffusionStatus, GenerationRequest, LoadOptions, StableDiffusion, Tiling,
    pipeline, pipeline::postprocess,
};
use bevy_diffusion_tests::tiny_sd_model;

use crate::{app, log, pixels, submit, wait_ended, wait_for};

fn plugin() -> DiffusionPlugin {
    DiffusionPlugin::from_folder(tiny_sd_model()).configure(|s| s.worker.compute_threads = Some(1))
}

fn wall(seed: u64) -> GenerationRequest {
    GenerationRequest {
        seed,
        num_inference_steps: Some(3),
        ..GenerationRequest::texture("a mossy stone wall")
    }
}

#[test]
fn the_result_is_bit_identical_to_the_core_pipeline_and_finishes_once() {
    let mut app = app(plugin());
    let request = wall(7);
    let job = submit(&mut app, request.clone()).expect("accepted while loading");
    let (w, h, _) = pixels(&app, &job.handle);
    assert_eq!(
        (w, h),
        (64, 64),
        "a native-size request's placeholder before the model is known"
    );
    wait_ended(&mut app, job.id);
    assert_eq!(
        log(&app).finished_of(job.id).len(),
        1,
        "{:?}",
        log(&app).failure_of(job.id)
    );
    assert!(!log(&app).finished_of(job.id)[0].cached);
    let steps: Vec<usize> = log(&app)
        .progress_of(job.id)
        .iter()
        .map(|p| p.step)
        .collect();
    assert_eq!(steps, vec![1, 2, 3]);
    // More frames: the finished message is not repeated.
    for _ in 0..5 {
        app.update();
    }
    assert_eq!(
        log(&app).finished_of(job.id).len(),
        1,
        "finished exactly once"
    );
    assert!(matches!(
        app.world().resource::<DiffusionStatus>(),
        DiffusionStatus::Ready { .. }
    ));
    assert_eq!(log(&app).ready.len(), 1);

    let model =
        StableDiffusion::load(&tiny_sd_model(), &LoadOptions::default()).expect("fixture loads");
    let core = pipeline::generate(&model, &request, &mut pipeline::NoHooks).expect("core pipeline");
    let expected = postprocess::finish(core.image, &request);
    let (w, h, px) = pixels(&app, &job.handle);
    assert_eq!((w, h), expected.dimensions());
    assert!(
        px == expected.as_raw().as_slice(),
        "the plugin's pixels equal the core's, byte for byte"
    );
}

#[test]
fn a_failing_request_reports_its_reason_and_the_next_one_succeeds() {
    let mut app = app(plugin());
    let missing = "/nonexistent/bevy_diffusion/init.png";
    let bad = GenerationRequest {
        init_image: Some(InitImage::Path(missing.into())),
        strength: 0.5,
        ..wall(1)
    };
    let bad = submit(&mut app, bad).expect("accepted; fails later");
    let good = submit(
        &mut app,
        GenerationRequest {
            tiling: Tiling::None,
            ..wall(2)
        },
    )
    .expect("accepted");
    wait_ended(&mut app, bad.id);
    wait_ended(&mut app, good.id);
    let reason = log(&app)
        .failure_of(bad.id)
        .expect("the bad request failed")
        .to_string();
    assert!(
        reason.contains(missing),
        "the reason names the file: {reason}"
    );
    assert_eq!(
        log(&app).finished_of(good.id).len(),
        1,
        "{:?}",
        log(&app).failure_of(good.id)
    );
}

#[test]
fn a_cache_hit_returns_the_same_pixels_without_running_the_model() {
    let mut app = app(plugin());
    let first = submit(
        &mut app,
        GenerationRequest {
            player: Some("ann".into()),
            ..wall(3)
        },
    )
    .expect("accepted");
    wait_ended(&mut app, first.id);
    // Same pixel fields, another player: served from the cache.
    let second = submit(
        &mut app,
        GenerationRequest {
            player: Some("bob".into()),
            ..wall(3)
        },
    )
    .expect("accepted");
    wait_ended(&mut app, second.id);
    let l = log(&app);
    let (a, b) = (l.finished_of(first.id), l.finished_of(second.id));
    assert_eq!((a.len(), b.len()), (1, 1), "{:?}", l.failed);
    assert!(!a[0].cached && b[0].cached);
    assert!(
        l.progress_of(second.id).is_empty(),
        "no denoising steps on a hit"
    );
    assert_ne!(first.handle, second.handle);
    assert_eq!(pixels(&app, &first.handle), pixels(&app, &second.handle));
}

#[test]
fn a_bad_model_folder_fails_with_the_reason_and_the_game_goes_on() {
    let folder = "/nonexistent/bevy_diffusion/model";
    let mut app = app(DiffusionPlugin::from_folder(folder));
    let job = submit(&mut app, wall(1)).expect("accepted while loading");
    wait_ended(&mut app, job.id);
    let status = app.world().resource::<DiffusionStatus>().clone();
    let DiffusionStatus::Failed { reason } = status else {
        panic!("status {status:?}")
    };
    assert!(
        reason.contains(folder),
        "the loader's error names the folder: {reason}"
    );
    assert_eq!(log(&app).load_failed.len(), 1);
    assert_eq!(log(&app).load_failed[0].reason, reason);
    let failure = log(&app)
        .failure_of(job.id)
        .expect("the request failed")
        .to_string();
    assert!(
        failure.contains(&reason),
        "requests fail with the load error: {failure}"
    );
    // The game keeps running, and later requests fail the same way.
    let later = submit(&mut app, wall(2)).expect("accepted");
    wait_for(&mut app, "the later request to fail", |app| {
        log(app).failure_of(later.id).is_some()
    });
    assert!(log(&app).ready.is_empty());
}
