//! The plugin on a generation farm (feature `farm`): `ModelSource::Farm` keeps `Diffusion::submit`'s
//! API — a handle at once, progress, the final pixels in the same handle, cancel — with the model
//! running in a `farm_fast_worker` process behind a real nats-server.

use bevy_diffusion::farm::FarmSettings;
use bevy_diffusion::{DiffusionPlugin, GenerationRequest, ModelSource};
use bevy_diffusion_tests::farm::{NatsServer, WorkerProcess};

use crate::{app, cancel, log, pixels, submit, wait_ended, wait_for};

const WORKER: &str = env!("CARGO_BIN_EXE_farm_fast_worker");

fn request(prompt: &str, seed: u64, steps: usize) -> GenerationRequest {
    GenerationRequest {
        prompt: prompt.into(),
        seed,
        width: 64,
        height: 64,
        num_inference_steps: Some(steps),
        player: Some("ann".into()),
        ..Default::default()
    }
}

#[test]
fn a_farm_model_source_keeps_the_submit_api() {
    let server = NatsServer::start();
    let _worker = WorkerProcess::spawn(WORKER, &server.url(), "w1", &["--step-ms", "100"]);
    let plugin = DiffusionPlugin::default().configure(|s| {
        s.model = ModelSource::Farm(FarmSettings::new(server.url()));
    });
    let mut app = app(plugin);
    wait_for(&mut app, "the farm client to connect", |app| {
        !app.world().resource::<crate::Log>().ready.is_empty()
    });
    let job = submit(&mut app, request("a farm crate", 42, 4)).expect("accepted");
    let long = submit(&mut app, request("a long one", 7, 200)).expect("accepted");
    wait_ended(&mut app, job.id);
    let l = log(&app);
    assert_eq!(l.finished_of(job.id).len(), 1);
    assert!(!l.progress_of(job.id).is_empty(), "progress came through");
    let (w, h, data) = pixels(&app, &job.handle);
    assert_eq!(
        (w, h),
        (8, 8),
        "the worker's image is in the request's handle"
    );
    assert_eq!(
        &data[..4],
        &[42, 7, 9, 255],
        "red = seed (the fast worker's pixels)"
    );
    wait_for(&mut app, "progress of the long request", |app| {
        !app.world()
            .resource::<crate::Log>()
            .progress_of(long.id)
            .is_empty()
    });
    assert!(cancel(&mut app, long.id));
    wait_ended(&mut app, long.id);
    assert!(log(&app).cancelled.iter().any(|c| c.id == long.id));
    assert!(log(&app).finished_of(long.id).is_empty());
}
