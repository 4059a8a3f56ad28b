//! How long app exit takes while a request runs: loads a model, submits one `SIZE x SIZE`
//! request, waits `DELAY_MS` after it started (so the exit lands inside prompt encoding, a UNet
//! call or the VAE decode), then drops the app (what `AppExit` does) and prints the time the drop
//! took, i.e. until the worker thread has been joined.
//!
//! ```text
//! cargo run --release -p bevy_diffusion --example exit_latency -- [SIZE] [DELAY_MS] [MODEL_DIR]
//! ```
//!
//! Defaults: 512, 1500 ms, the embedded model.

use std::time::{Duration, Instant};

use bevy::prelude::*;
use bevy_diffusion::{
    Diffusion, DiffusionPlugin, DiffusionSettings, DiffusionStatus, GenerationProgress,
    GenerationRequest, GenerationStarted, ModelSource, Submitted,
};

#[derive(Resource, Default)]
struct Seen {
    started: Option<Instant>,
    steps: usize,
}

fn watch(
    mut seen: ResMut<Seen>,
    mut started: MessageReader<GenerationStarted>,
    mut progress: MessageReader<GenerationProgress>,
) {
    if started.read().next().is_some() {
        seen.started.get_or_insert_with(Instant::now);
    }
    seen.steps += progress.read().count();
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let size: u32 = args.first().and_then(|s| s.parse().ok()).unwrap_or(512);
    let delay = Duration::from_millis(args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1500));
    let model = match args.get(2) {
        Some(dir) => ModelSource::Folder(dir.into()),
        None => ModelSource::Embedded,
    };
    let settings = DiffusionSettings::default()
        .with_model(model)
        .with_previews(None);
    let mut app = App::new();
    app.add_plugins((
        MinimalPlugins,
        AssetPlugin::default(),
        ImagePlugin::default(),
    ))
    .add_plugins(DiffusionPlugin::new(settings))
    .init_resource::<Seen>()
    .add_systems(Update, watch);
    app.finish();
    app.cleanup();
    while matches!(
        app.world().resource::<DiffusionStatus>(),
        DiffusionStatus::Loading
    ) {
        app.update();
        std::thread::sleep(Duration::from_millis(5));
    }
    if let DiffusionStatus::Failed { reason } = app.world().resource::<DiffusionStatus>() {
        eprintln!("no model: {reason}");
        std::process::exit(1);
    }
    let request = GenerationRequest {
        prompt: "mossy cobblestone".into(),
        width: size,
        height: size,
        num_inference_steps: Some(12),
        ..Default::default()
    };
    let job: Submitted = app
        .world_mut()
        .run_system_once(move |mut d: Diffusion| d.submit(request.clone()))
        .expect("submit runs")
        .expect("accepted");
    loop {
        app.update();
        let seen = app.world().resource::<Seen>();
        if seen.started.is_some_and(|t| t.elapsed() >= delay) {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let steps = app.world().resource::<Seen>().steps;
    let t = Instant::now();
    drop(app);
    let exit = t.elapsed();
    drop(job);
    println!("size {size}");
    println!("exit_after_ms {}", delay.as_millis());
    println!("steps_done_before_exit {steps}");
    println!("exit_ms {:.1}", exit.as_secs_f64() * 1e3);
}

use bevy::ecs::system::RunSystemOnce;
