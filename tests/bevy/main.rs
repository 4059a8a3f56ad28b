//! Integration tests of the Bevy layer: headless apps (MinimalPlugins + AssetPlugin + ImagePlugin
//! + DiffusionPlugin), on the tiny fixture model and on generators the tests control.
//!
//! Waiting loops are bounded ([`wait_for`]) and fail with a message naming what they waited for.
//! No test asserts on timing.

mod custom;
#[cfg(feature = "farm")]
mod farm;
mod fixture_model;
#[cfg(feature = "file_watcher")]
mod hot_reload;
#[cfg(feature = "pbr")]
mod material;
mod robustness;
mod texgen_asset;

use std::time::Duration;

use bevy::ecs::system::RunSystemOnce;
use bevy::prelude::*;
use bevy_diffusion::{
    Diffusion, DiffusionPlugin, DiffusionStatus, DiffusionSystems, GenerationCancelled,
    GenerationFailed, GenerationFinished, GenerationProgress, GenerationRequest, GenerationStarted,
    ModelLoadFailed, ModelReady, RequestId, SubmitError, Submitted,
};

/// Every message the plugin wrote, in order, collected after [`DiffusionSystems::Poll`].
#[derive(Resource, Default, Debug)]
pub struct Log {
    pub ready: Vec<ModelReady>,
    pub load_failed: Vec<ModelLoadFailed>,
    pub started: Vec<GenerationStarted>,
    pub progress: Vec<GenerationProgress>,
    pub finished: Vec<GenerationFinished>,
    pub failed: Vec<GenerationFailed>,
    pub cancelled: Vec<GenerationCancelled>,
}

impl Log {
    /// Finished messages of `id`.
    pub fn finished_of(&self, id: RequestId) -> Vec<&GenerationFinished> {
        self.finished.iter().filter(|f| f.id == id).collect()
    }
    /// Progress messages of `id`.
    pub fn progress_of(&self, id: RequestId) -> Vec<&GenerationProgress> {
        self.progress.iter().filter(|p| p.id == id).collect()
    }
    /// True when `id` has ended (finished, failed or cancelled).
    pub fn ended(&self, id: RequestId) -> bool {
        self.finished.iter().any(|m| m.id == id)
            || self.failed.iter().any(|m| m.id == id)
            || self.cancelled.iter().any(|m| m.id == id)
    }
    /// The failure reason of `id`, if it failed.
    pub fn failure_of(&self, id: RequestId) -> Option<&str> {
        self.failed
            .iter()
            .find(|m| m.id == id)
            .map(|m| m.reason.as_str())
    }
}

#[allow(clippy::too_many_arguments)]
pub fn collect(
    mut log: ResMut<Log>,
    mut ready: MessageReader<ModelReady>,
    mut load_failed: MessageReader<ModelLoadFailed>,
    mut started: MessageReader<GenerationStarted>,
    mut progress: MessageReader<GenerationProgress>,
    mut finished: MessageReader<GenerationFinished>,
    mut failed: MessageReader<GenerationFailed>,
    mut cancelled: MessageReader<GenerationCancelled>,
) {
    log.ready.extend(ready.read().cloned());
    log.load_failed.extend(load_failed.read().cloned());
    log.started.extend(started.read().cloned());
    log.progress.extend(progress.read().cloned());
    log.finished.extend(finished.read().cloned());
    log.failed.extend(failed.read().cloned());
    log.cancelled.extend(cancelled.read().cloned());
}

/// A headless app with `plugin` and a [`Log`] of every message, ready for `app.update()`.
pub fn app(plugin: DiffusionPlugin) -> App {
    let mut app = App::new();
    app.add_plugins((
        MinimalPlugins,
        AssetPlugin::default(),
        ImagePlugin::default(),
        plugin,
    ))
    .init_resource::<Log>()
    .add_systems(PreUpdate, collect.after(DiffusionSystems::Poll));
    app.finish();
    app.cleanup();
    app
}

/// Updates `app` (up to 2000 times, 5 ms apart) until `done` holds; panics naming `what`.
pub fn wait_for(app: &mut App, what: &str, mut done: impl FnMut(&mut App) -> bool) {
    for _ in 0..2000 {
        app.update();
        if done(app) {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = app.world().resource::<DiffusionStatus>().clone();
    panic!(
        "gave up waiting for {what} after 2000 updates (status {status:?}, log {:?})",
        app.world().resource::<Log>()
    );
}

/// Waits until request `id` has ended.
pub fn wait_ended(app: &mut App, id: RequestId) {
    wait_for(app, &format!("request {id} to end"), |app| {
        app.world().resource::<Log>().ended(id)
    });
}

/// Submits `request` through the [`Diffusion`] system parameter, as a game system would.
pub fn submit(app: &mut App, request: GenerationRequest) -> Result<Submitted, SubmitError> {
    app.world_mut()
        .run_system_once(move |mut diffusion: Diffusion| diffusion.submit(request.clone()))
        .expect("the submit system runs")
}

/// Cancels request `id` through [`Diffusion::cancel`].
pub fn cancel(app: &mut App, id: RequestId) -> bool {
    app.world_mut()
        .run_system_once(move |mut diffusion: Diffusion| diffusion.cancel(id))
        .expect("cancel runs")
}

/// The pixels and size behind `handle` now.
pub fn pixels(app: &App, handle: &Handle<Image>) -> (u32, u32, Vec<u8>) {
    let images = app.world().resource::<Assets<Image>>();
    let image = images.get(handle).expect("the handle has an image");
    (
        image.width(),
        image.height(),
        image.data.clone().expect("CPU-side pixels"),
    )
}

/// The log so far.
pub fn log(app: &App) -> &Log {
    app.world().resource::<Log>()
}
