//! A headless game loop (no window) with the diffusion plugin on the default model: measures the
//! main thread's frame time while the model loads, with no job, then while 4 requests of 2
//! players generate.
//!
//! ```text
//! cargo run --release --example headless_generation            # jobs on AsyncComputeTaskPool
//! cargo run --release --example headless_generation -- thread  # jobs on the worker thread
//! ```
//!
//! Frames are paced at 60 Hz like a game's; the figures are the time `app.update()` takes.

use std::time::{Duration, Instant};

use bevy::prelude::*;
use bevy_diffusion::bevy_plugin::JobRunner;
use bevy_diffusion::{
    Diffusion, DiffusionPlugin, DiffusionStatus, GenerationFailed, GenerationFinished,
    PlayerProfile, PromptTemplate,
};

const FRAME: Duration = Duration::from_micros(16_667);

/// Requests finished (or failed) so far, and the handles of those submitted (a request whose
/// handles are all dropped is cancelled).
#[derive(Resource, Default)]
struct Done {
    finished: usize,
    failed: usize,
    handles: Vec<Handle<Image>>,
}

fn count(
    mut done: ResMut<Done>,
    mut ok: MessageReader<GenerationFinished>,
    mut bad: MessageReader<GenerationFailed>,
) {
    for f in ok.read() {
        println!(
            "request {} finished in {:.2} s (cached: {})",
            f.id,
            f.elapsed.as_secs_f64(),
            f.cached
        );
        done.finished += 1;
    }
    for f in bad.read() {
        println!("request {} failed: {}", f.id, f.reason);
        done.failed += 1;
    }
}

/// Two players, each asking for a wall texture and a sword sprite from their own theme.
fn submit_requests(mut diffusion: Diffusion, mut done: ResMut<Done>) {
    let wall = PromptTemplate::parse("{theme} stone wall, seamless").expect("template");
    let sword =
        PromptTemplate::parse("{theme} sword, game item, plain background").expect("template");
    let players = [
        PlayerProfile::new("ann").with("theme", "mossy"),
        PlayerProfile::new("bob").with("theme", "icy"),
    ];
    for player in &players {
        let requests = [
            player.texture_request(&wall, "castle/wall"),
            player.sprite_request(&sword, "weapon/sword"),
        ];
        for request in requests {
            let request = request.expect("every attribute is set");
            match diffusion.submit(request) {
                Ok(job) => {
                    println!(
                        "request {} for {} -> {:?}",
                        job.id,
                        player.id,
                        job.handle.id()
                    );
                    done.handles.push(job.handle);
                }
                Err(reason) => println!("refused: {reason}"),
            }
        }
    }
}

/// Runs one paced frame and returns how long `app.update()` took.
fn frame(app: &mut App, next: &mut Instant) -> Duration {
    let start = Instant::now();
    app.update();
    let took = start.elapsed();
    *next += FRAME;
    if let Some(wait) = next.checked_duration_since(Instant::now()) {
        std::thread::sleep(wait);
    } else {
        *next = Instant::now();
    }
    took
}

fn report(phase: &str, mut times: Vec<Duration>) {
    if times.is_empty() {
        return;
    }
    times.sort_unstable();
    let ms = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
    println!("phase {phase}");
    println!("frames {}", times.len());
    println!("frame_ms_p50 {:.3}", ms(0.50));
    println!("frame_ms_p99 {:.3}", ms(0.99));
    println!("frame_ms_max {:.3}", ms(1.0));
}

fn main() {
    // `-- thread` runs jobs on the plugin's dedicated thread instead of AsyncComputeTaskPool.
    let runner = match std::env::args().nth(1).as_deref() {
        Some("thread") => JobRunner::DedicatedThread,
        _ => JobRunner::AsyncComputeTaskPool,
    };
    println!("job_runner {runner:?}");
    let mut app = App::new();
    app.add_plugins((
        MinimalPlugins,
        AssetPlugin::default(),
        ImagePlugin::default(),
    ))
    .add_plugins(DiffusionPlugin::default().configure(|s| s.job_runner = runner))
    .init_resource::<Done>()
    .add_systems(Update, count);
    app.finish();
    app.cleanup();

    let mut next = Instant::now();
    let loading = Instant::now();
    let mut loading_frames = Vec::new();
    while matches!(
        app.world().resource::<DiffusionStatus>(),
        DiffusionStatus::Loading
    ) {
        loading_frames.push(frame(&mut app, &mut next));
        assert!(
            loading.elapsed() < Duration::from_secs(300),
            "the model did not load in 5 minutes"
        );
    }
    let status = app.world().resource::<DiffusionStatus>().clone();
    println!(
        "model {status:?} after {:.2} s",
        loading.elapsed().as_secs_f64()
    );
    if let DiffusionStatus::Failed { reason } = status {
        eprintln!("cannot run without a model: {reason}");
        std::process::exit(1);
    }
    report("loading", loading_frames);

    let idle: Vec<Duration> = (0..300).map(|_| frame(&mut app, &mut next)).collect();
    report("no_job", idle);

    app.world_mut()
        .run_system_cached(submit_requests)
        .expect("submit system runs");
    let generating = Instant::now();
    let mut busy = Vec::new();
    loop {
        busy.push(frame(&mut app, &mut next));
        let done = app.world().resource::<Done>();
        if done.finished + done.failed >= 4 {
            break;
        }
        assert!(
            generating.elapsed() < Duration::from_secs(1800),
            "generation took over 30 minutes"
        );
    }
    let finished = app.world().resource::<Done>().finished;
    println!("generation_s {:.2}", generating.elapsed().as_secs_f64());
    report("generating", busy);
    println!("finished {finished}/4");
}
