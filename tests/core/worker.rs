//! The generation worker without a model: queue order, quotas, cancel (once, by id, by player,
//! on drop, at a finer grain than a step), validation at submit, typed errors, threads and
//! priority. Fake generators; no timing assertions (waits are bounded).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bevy_diffusion::pipeline::{DenoisingStep, GenerationHooks};
use bevy_diffusion::runtime::worker::{GenerationWorker, WorkerConfig, WorkerEvent};
use bevy_diffusion::{DiffusionError, GenerationRequest, Generator, RequestId, SubmitError};
use candle_core::{Device, Tensor};
use image::RgbaImage;

/// A fake model: `num_inference_steps` steps of `step_ms` each; prompt "panic" panics, "fail"
/// fails. The image is 1x1 with red = seed.
struct Fake {
    step_ms: u64,
}

fn fake_step(step: usize, total: usize) -> DenoisingStep {
    let t = Tensor::zeros((1, 1), candle_core::DType::F32, &Device::Cpu).unwrap();
    DenoisingStep {
        step,
        total,
        timestep: 0.0,
        latents_in: t.clone(),
        unet_input: t.clone(),
        unet_output: t.clone(),
        noise_pred: t.clone(),
        pred_original_sample: t.clone(),
        latents_out: t,
    }
}

impl Generator for Fake {
    fn identity(&self) -> String {
        "fake".into()
    }
    fn generate(
        &self,
        request: &GenerationRequest,
        hooks: &mut dyn GenerationHooks,
    ) -> bevy_diffusion::Result<RgbaImage> {
        match request.prompt.as_str() {
            "panic" => panic!("boom"),
            "fail" => {
                return Err(DiffusionError::InvalidRequest {
                    field: "prompt",
                    value: "fail".into(),
                    reason: "test failure".into(),
                });
            }
            _ => {}
        }
        for step in 0..request.steps() {
            if hooks.should_cancel() {
                return Err(DiffusionError::Cancelled);
            }
            std::thread::sleep(Duration::from_millis(self.step_ms));
            hooks.on_step(&fake_step(step, request.steps()));
        }
        Ok(RgbaImage::from_pixel(
            1,
            1,
            image::Rgba([request.seed as u8, 0, 0, 255]),
        ))
    }
}

fn job(
    prompt: &str,
    seed: u64,
    steps: usize,
    player: Option<&str>,
    priority: i32,
) -> GenerationRequest {
    GenerationRequest {
        prompt: prompt.into(),
        seed,
        num_inference_steps: Some(steps),
        player: player.map(str::to_string),
        priority,
        ..Default::default()
    }
}

/// Collects events until every id in `ids` has ended.
fn wait_all(worker: &GenerationWorker, ids: &[RequestId]) -> Vec<WorkerEvent> {
    let mut events = Vec::new();
    let mut open: Vec<RequestId> = ids.to_vec();
    while !open.is_empty() {
        let ev = worker
            .events()
            .recv_timeout(Duration::from_secs(30))
            .expect("worker event");
        if let WorkerEvent::Finished { id, .. }
        | WorkerEvent::Failed { id, .. }
        | WorkerEvent::Cancelled { id } = &ev
        {
            open.retain(|x| x != id);
        }
        events.push(ev);
    }
    events
}

fn ended(events: &[WorkerEvent]) -> Vec<(RequestId, &'static str)> {
    events
        .iter()
        .filter_map(|e| match e {
            WorkerEvent::Finished { id, .. } => Some((*id, "finished")),
            WorkerEvent::Failed { id, .. } => Some((*id, "failed")),
            WorkerEvent::Cancelled { id } => Some((*id, "cancelled")),
            _ => None,
        })
        .collect()
}

/// Waits for the first progress event of `id`.
fn wait_running(worker: &GenerationWorker, id: RequestId) {
    loop {
        if let WorkerEvent::Progress { id: p, .. } = worker
            .events()
            .recv_timeout(Duration::from_secs(30))
            .expect("progress")
            && p == id
        {
            return;
        }
    }
}

#[test]
fn panic_and_error_fail_only_their_job_with_typed_errors() {
    let w = GenerationWorker::spawn(WorkerConfig::default(), || Ok(Fake { step_ms: 1 }));
    let a = w.submit(job("panic", 1, 2, None, 0)).unwrap();
    let b = w.submit(job("fail", 2, 2, None, 0)).unwrap();
    let c = w.submit(job("ok", 3, 2, None, 0)).unwrap();
    let events = wait_all(&w, &[a, b, c]);
    assert_eq!(
        ended(&events),
        vec![(a, "failed"), (b, "failed"), (c, "finished")]
    );
    let error_of = |want| {
        events.iter().find_map(|e| match e {
            WorkerEvent::Failed { id, error } if *id == want => Some(error.clone()),
            _ => None,
        })
    };
    let panicked = error_of(a).unwrap();
    assert!(
        matches!(&*panicked, DiffusionError::Panicked { message, .. } if message == "boom"),
        "{panicked:?}"
    );
    let invalid = error_of(b).unwrap();
    assert!(
        matches!(
            &*invalid,
            DiffusionError::InvalidRequest {
                field: "prompt",
                ..
            }
        ),
        "a game can match on the cause: {invalid:?}"
    );
    assert!(invalid.to_string().contains("test failure"));
    assert_eq!(w.occupancy(), 0);
}

#[test]
fn quotas_reject_at_once_with_a_reason_and_free_on_finish() {
    let cfg = WorkerConfig {
        max_queued: 3,
        max_per_player: 2,
        ..Default::default()
    };
    let w = GenerationWorker::spawn(cfg, || Ok(Fake { step_ms: 20 }));
    let a = w.submit(job("a", 1, 3, Some("ann"), 0)).unwrap();
    let b = w.submit(job("b", 2, 3, Some("ann"), 0)).unwrap();
    let e = w.submit(job("c", 3, 3, Some("ann"), 0)).unwrap_err();
    assert_eq!(
        e,
        SubmitError::PlayerQuota {
            player: "ann".into(),
            queued: 2,
            limit: 2
        }
    );
    assert!(e.to_string().contains("ann"));
    let c = w.submit(job("c", 3, 3, Some("bob"), 0)).unwrap();
    assert!(matches!(
        w.submit(job("d", 4, 3, Some("cid"), 0)),
        Err(SubmitError::QueueFull { limit: 3, .. })
    ));
    wait_all(&w, &[a, b, c]);
    assert!(
        w.submit(job("e", 5, 1, Some("ann"), 0)).is_ok(),
        "slots are freed when jobs end"
    );
}

#[test]
fn cancel_stops_a_running_job_within_a_step_and_priority_orders_the_queue() {
    let w = GenerationWorker::spawn(WorkerConfig::default(), || Ok(Fake { step_ms: 30 }));
    let long = w.submit(job("long", 1, 1000, Some("ann"), 0)).unwrap();
    wait_running(&w, long);
    let low = w.submit(job("low", 2, 1, None, 0)).unwrap();
    let high = w.submit(job("high", 3, 1, None, 5)).unwrap();
    let queued = w.submit(job("queued", 4, 1, Some("ann"), 9)).unwrap();
    assert_eq!(w.cancel_player("ann"), 2);
    assert_eq!(w.cancel_player("ann"), 0, "already cancelled");
    let events = wait_all(&w, &[long, low, high, queued]);
    let order = ended(&events);
    assert!(order.contains(&(long, "cancelled")) && order.contains(&(queued, "cancelled")));
    let finished: Vec<_> = order
        .iter()
        .filter(|(_, s)| *s == "finished")
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(finished, vec![high, low], "higher priority runs first");
    let steps_of_long = events
        .iter()
        .filter(|e| matches!(e, WorkerEvent::Progress { id, .. } if *id == long))
        .count();
    assert!(
        steps_of_long < 10,
        "cancel took effect within a step ({steps_of_long} more steps ran)"
    );
}

#[test]
fn cancel_is_true_once_and_false_for_unknown_or_ended_ids() {
    let w = GenerationWorker::spawn(WorkerConfig::default(), || Ok(Fake { step_ms: 20 }));
    let a = w.submit(job("a", 1, 1000, None, 0)).unwrap();
    let b = w.submit(job("b", 2, 1, None, 0)).unwrap();
    assert!(w.cancel(b), "queued: cancelled");
    assert!(!w.cancel(b), "the second cancel of the same id is false");
    assert!(w.cancel(a), "running: cancelled");
    assert!(!w.cancel(a));
    assert!(!w.cancel(RequestId::new(9999)), "never submitted");
    let events = wait_all(&w, &[a, b]);
    assert_eq!(ended(&events).len(), 2, "one terminal event each");
    assert!(!w.cancel(a), "ended");
}

#[test]
fn cancelling_one_id_leaves_every_other_queued_and_running_job_alone() {
    let w = GenerationWorker::spawn(WorkerConfig::default(), || Ok(Fake { step_ms: 5 }));
    let running = w.submit(job("running", 1, 20, Some("ann"), 0)).unwrap();
    wait_running(&w, running);
    let queued: Vec<RequestId> = (0..6)
        .map(|i| w.submit(job("q", 10 + i, 2, Some("ann"), 0)).unwrap())
        .collect();
    let victim = queued[3];
    assert!(w.cancel(victim));
    let mut all = queued.clone();
    all.push(running);
    let events = wait_all(&w, &all);
    for (id, end) in ended(&events) {
        let want = if id == victim {
            "cancelled"
        } else {
            "finished"
        };
        assert_eq!(end, want, "request {id}");
    }
    let steps_of_running = events
        .iter()
        .filter(|e| matches!(e, WorkerEvent::Progress { id, .. } if *id == running))
        .count();
    assert_eq!(
        steps_of_running, 19,
        "the running job ran all its steps (first one seen above)"
    );
    assert_eq!(w.occupancy(), 0);
}

#[test]
fn absurd_sizes_and_counts_are_refused_at_submit_without_taking_a_slot() {
    let w = GenerationWorker::spawn(WorkerConfig::default(), || Ok(Fake { step_ms: 1 }));
    let huge = GenerationRequest {
        width: u32::MAX,
        height: u32::MAX,
        ..Default::default()
    };
    let e = w.submit(huge).unwrap_err();
    assert!(
        matches!(e, SubmitError::InvalidRequest { field: "width", .. }),
        "{e}"
    );
    assert_eq!(e.kind(), "invalid_request");
    for bad in [
        GenerationRequest {
            width: 65536,
            ..Default::default()
        },
        GenerationRequest {
            height: 16384,
            ..Default::default()
        },
        GenerationRequest {
            num_inference_steps: Some(usize::MAX),
            ..Default::default()
        },
        GenerationRequest {
            prompt: "x".repeat(1 << 20),
            ..Default::default()
        },
        GenerationRequest {
            init_image: Some(bevy_diffusion::request::InitImage::Rgba {
                width: u32::MAX,
                height: u32::MAX,
                pixels: vec![0; 16],
            }),
            ..Default::default()
        },
    ] {
        assert!(
            matches!(w.submit(bad), Err(SubmitError::InvalidRequest { .. })),
            "refused at once"
        );
    }
    // Size 0 takes the in-memory init image's 2048x16: upscaled 8x that is 16384 wide.
    let from_init = GenerationRequest {
        width: 0,
        height: 0,
        upscale: Some(8),
        strength: 0.5,
        init_image: Some(bevy_diffusion::request::InitImage::Rgba {
            width: 2048,
            height: 16,
            pixels: vec![0; 2048 * 16 * 4],
        }),
        ..Default::default()
    };
    let e = w.submit(from_init.clone()).unwrap_err();
    assert!(
        matches!(&e, SubmitError::InvalidRequest { field: "upscale", reason, .. }
            if reason.contains("2048x16")),
        "{e}"
    );
    assert_eq!(w.occupancy(), 0, "no slot taken");
    // The same image upscaled 4x (8192 wide) is accepted.
    let ok = GenerationRequest {
        upscale: Some(4),
        ..from_init
    };
    let id = w.submit(ok).expect("8192 a side is allowed");
    w.cancel(id);
}

#[test]
fn dropping_the_worker_stops_the_running_job_within_a_step_and_cancels_the_queue() {
    let steps = Arc::new(AtomicUsize::new(0));
    struct Counting(Arc<AtomicUsize>);
    impl Generator for Counting {
        fn identity(&self) -> String {
            "counting".into()
        }
        fn generate(
            &self,
            request: &GenerationRequest,
            hooks: &mut dyn GenerationHooks,
        ) -> bevy_diffusion::Result<RgbaImage> {
            // Polls only the fine-grained check (as a model's blocks do), never should_cancel.
            let check = hooks
                .cancel_check()
                .expect("the worker gives a cancel check");
            for _ in 0..request.steps() {
                if check() {
                    return Err(DiffusionError::Cancelled);
                }
                std::thread::sleep(Duration::from_millis(10));
                self.0.fetch_add(1, Ordering::SeqCst);
            }
            Ok(RgbaImage::new(1, 1))
        }
    }
    let counter = steps.clone();
    let w = GenerationWorker::spawn(WorkerConfig::default(), move || {
        Ok(Counting(counter.clone()))
    });
    let events = w.events().clone();
    let a = w.submit(job("a", 1, 1000, None, 0)).unwrap();
    let b = w.submit(job("b", 2, 1, None, 0)).unwrap();
    while steps.load(Ordering::SeqCst) == 0 {
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(w);
    let at_drop = steps.load(Ordering::SeqCst);
    assert!(at_drop < 1000, "the job was stopped, not run to its end");
    let ends: Vec<_> = events
        .try_iter()
        .filter_map(|e| match e {
            WorkerEvent::Cancelled { id } => Some(id),
            _ => None,
        })
        .collect();
    assert!(
        ends.contains(&a) && ends.contains(&b),
        "both end cancelled: {ends:?}"
    );
}

#[test]
fn a_model_that_fails_to_load_fails_its_jobs_with_the_typed_reason() {
    let w = GenerationWorker::spawn(
        WorkerConfig::default(),
        || -> bevy_diffusion::Result<Fake> {
            Err(DiffusionError::ModelFolderMissing {
                path: "/nope".into(),
            })
        },
    );
    let id = w.submit(job("a", 1, 1, None, 0)).unwrap();
    let events = wait_all(&w, &[id]);
    assert!(
        matches!(&events[0], WorkerEvent::ModelFailed { error } if error.to_string().contains("/nope"))
    );
    let WorkerEvent::Failed { error, .. } = &events[1] else {
        panic!("{:?}", events[1]);
    };
    let DiffusionError::ModelUnavailable(cause) = &**error else {
        panic!("{error:?}");
    };
    assert!(matches!(
        &**cause,
        DiffusionError::ModelFolderMissing { .. }
    ));
    assert!(error.to_string().contains("/nope"));
}

#[test]
fn a_cache_hit_returns_the_same_pixels_without_running_the_model() {
    let w = GenerationWorker::spawn(WorkerConfig::default(), || Ok(Fake { step_ms: 1 }));
    let a = w.submit(job("wall", 9, 3, Some("ann"), 0)).unwrap();
    let first = wait_all(&w, &[a]);
    // Same pixels fields, other player: a hit.
    let b = w.submit(job("wall", 9, 3, Some("bob"), 0)).unwrap();
    let second = wait_all(&w, &[b]);
    let image_of = |evs: &[WorkerEvent], want: RequestId| {
        evs.iter().find_map(|e| match e {
            WorkerEvent::Finished {
                id, image, cached, ..
            } if *id == want => Some((image.clone(), *cached)),
            _ => None,
        })
    };
    let (img_a, cached_a) = image_of(&first, a).unwrap();
    let (img_b, cached_b) = image_of(&second, b).unwrap();
    assert!(!cached_a && cached_b);
    assert_eq!(img_a, img_b);
    assert!(
        !second
            .iter()
            .any(|e| matches!(e, WorkerEvent::Progress { .. })),
        "no model steps on a hit"
    );
}

/// Records, from inside `generate` and the loader, how many threads the compute pool has and
/// the nice value of every compute thread.
struct Probe {
    useful: Option<usize>,
    seen: Arc<Mutex<Vec<(usize, Vec<Option<i32>>)>>>,
}

impl Generator for Probe {
    fn identity(&self) -> String {
        "probe".into()
    }
    fn generate(
        &self,
        _: &GenerationRequest,
        _: &mut dyn GenerationHooks,
    ) -> bevy_diffusion::Result<RgbaImage> {
        let nice = rayon::broadcast(|_| bevy_diffusion::compute_pool::current_thread_nice());
        self.seen
            .lock()
            .unwrap()
            .push((rayon::current_num_threads(), nice));
        Ok(RgbaImage::new(1, 1))
    }
    fn max_useful_threads(&self) -> Option<usize> {
        self.useful
    }
}

#[test]
fn a_boxed_generator_keeps_its_thread_limit_and_the_compute_threads_run_at_lowered_priority() {
    // Start rayon's global pool from this (normal priority) thread first.
    let global_before = rayon::broadcast(|_| bevy_diffusion::compute_pool::current_thread_nice());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let loaded_in_pool = Arc::new(AtomicBool::new(false));
    let (s, l) = (seen.clone(), loaded_in_pool.clone());
    let config = WorkerConfig {
        compute_threads: Some(2),
        background_priority: true,
        ..Default::default()
    };
    let w = GenerationWorker::spawn(config, move || {
        l.store(rayon::current_thread_index().is_some(), Ordering::SeqCst);
        // Boxed as the plugin boxes custom generators: the limit must still reach the worker.
        Ok(Box::new(Probe {
            useful: Some(1),
            seen: s.clone(),
        }) as Box<dyn Generator>)
    });
    let id = w.submit(job("p", 1, 1, None, 0)).unwrap();
    wait_all(&w, &[id]);
    assert!(
        loaded_in_pool.load(Ordering::SeqCst),
        "the model loads inside the compute pool"
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let (threads, nice) = &seen[0];
    assert_eq!(
        *threads, 1,
        "max_useful_threads reached the worker through the Box"
    );
    let global_after = rayon::broadcast(|_| bevy_diffusion::compute_pool::current_thread_nice());
    if cfg!(target_os = "linux") {
        assert!(
            nice.iter().all(|n| *n == Some(10)),
            "compute threads at nice 10: {nice:?}"
        );
        assert_eq!(
            global_after, global_before,
            "rayon's global pool keeps its priority"
        );
        assert!(
            global_after.iter().all(|n| *n != Some(10)),
            "{global_after:?}"
        );
    }
}
