//! The Bevy layer (feature `bevy`): [`DiffusionPlugin`], the [`Diffusion`] system parameter, the
//! messages, and [`DiffusionStatus`].
//!
//! # Frame order
//!
//! - `PreStartup`, [`DiffusionSystems::Start`]: the worker thread starts and loads the model in the
//!   background; the first frames run while it loads ([`DiffusionStatus::Loading`]).
//! - `PreUpdate`, [`DiffusionSystems::Poll`]: the worker's news of the last frame is drained (bounded
//!   per frame, never blocking): model ready/failed, progress, previews and results are written
//!   into the requests' images and sent as messages. Systems in `Update` therefore see this
//!   frame's messages without any ordering; systems in `PreUpdate` that want them go
//!   `.after(DiffusionSystems::Poll)`.
//! - Submitting and cancelling ([`Diffusion::submit`], [`Diffusion::cancel`]) take effect at
//!   once, from any system in any schedule.
//!
//! The queue (priorities, quotas, cancels) lives on the plugin's worker thread; each job runs as
//! one task on Bevy's `AsyncComputeTaskPool` ([`JobRunner::AsyncComputeTaskPool`], the default)
//! or on the worker thread itself ([`JobRunner::DedicatedThread`]). Either way the tensor maths
//! run in the plugin's own compute pool of `DiffusionSettings::worker.compute_threads` threads (at a
//! lowered OS priority with `DiffusionSettings::worker.background_priority`), results come back
//! through channels, and a frame never waits for a model. The model loads in that pool too.
//!
//! A request cannot hurt the game: sizes and counts are checked in [`Diffusion::submit`] before
//! anything is allocated; a cancel or app exit stops a running request at its next model block
//! (a UNet or VAE resnet/attention block, or a text-encoder layer); dropping every handle of a
//! request cancels it ([`DiffusionSettings::cancel_unused`]).

mod backend;
mod images;
#[cfg(feature = "pbr")]
mod material;
mod messages;
mod request_param;
mod runtime;
mod settings;
mod systems;
mod texgen_asset;

use bevy::app::{App, Plugin, PreStartup, PreUpdate};
use bevy::ecs::schedule::{IntoScheduleConfigs, SystemSet};

pub use backend::DiffusionBackend;
pub use images::{placeholder, sampler_for, to_bevy_image};
#[cfg(feature = "pbr")]
pub use material::{
    DiffusionMaterialPlugin, DiffusionMaterials, PendingMaterials, SubmittedMaterial,
};
pub use messages::{
    DiffusionStatus, GenerationCancelled, GenerationFailed, GenerationFinished, GenerationProgress,
    GenerationStarted, ModelLoadFailed, ModelReady,
};
pub use request_param::{Diffusion, Submitted};
pub use runtime::DiffusionRuntime;
pub use settings::{
    BoxedGenerator, ComputeDevice, DiffusionSettings, GeneratorLoader, JobRunner, ModelSource,
    default_compute_threads,
};
pub use texgen_asset::{TexgenAssets, TexgenLoadError, TexgenLoader, submit_texgen_assets};

use crate::runtime::worker::Generator;

/// The plugin's systems, for ordering your own against them (see the [module docs](self)).
/// Named after Bevy's `*Systems` sets (`TransformSystems`, `AssetTrackingSystems`).
#[derive(SystemSet, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DiffusionSystems {
    /// `PreStartup`: start the worker, which loads the model in the background.
    Start,
    /// `PreUpdate`: drain the worker's events into images, [`DiffusionStatus`] and messages.
    Poll,
}

/// The old name of [`DiffusionSystems`].
#[deprecated(
    since = "0.1.1",
    note = "renamed to `DiffusionSystems`, after Bevy's `*Systems` sets"
)]
pub type DiffusionSet = DiffusionSystems;

/// Runs Stable-Diffusion-family models in the background and hands their images to the game as
/// `Handle<Image>`s. Needs `AssetPlugin` and `ImagePlugin` (or `DefaultPlugins`).
///
/// `build` only registers resources, messages and systems; the model loads on the worker thread
/// from `PreStartup` on.
#[derive(Debug, Clone, Default)]
pub struct DiffusionPlugin {
    /// The plugin's settings.
    pub settings: DiffusionSettings,
}

impl DiffusionPlugin {
    /// A plugin with `settings`.
    pub fn new(settings: DiffusionSettings) -> Self {
        Self { settings }
    }

    /// The default model in `dir` (a diffusers-layout folder) with default settings.
    pub fn from_folder(dir: impl Into<std::path::PathBuf>) -> Self {
        Self::new(DiffusionSettings {
            model: ModelSource::Folder(dir.into()),
            ..Default::default()
        })
    }

    /// A plugin running your own [`Generator`], built by `load` on the worker thread.
    pub fn with_generator<G, F>(load: F) -> Self
    where
        G: Generator,
        F: Fn() -> crate::Result<G> + Send + Sync + 'static,
    {
        Self::new(DiffusionSettings {
            model: ModelSource::Custom(GeneratorLoader::new(load)),
            ..Default::default()
        })
    }

    /// Changes the settings in place (builder style).
    pub fn configure(mut self, f: impl FnOnce(&mut DiffusionSettings)) -> Self {
        f(&mut self.settings);
        self
    }
}

impl Plugin for DiffusionPlugin {
    fn build(&self, app: &mut App) {
        app.insert_resource(DiffusionRuntime::new(self.settings.clone()))
            .init_resource::<DiffusionStatus>()
            .add_message::<ModelReady>()
            .add_message::<ModelLoadFailed>()
            .add_message::<GenerationStarted>()
            .add_message::<GenerationProgress>()
            .add_message::<GenerationFinished>()
            .add_message::<GenerationFailed>()
            .add_message::<GenerationCancelled>()
            .add_systems(
                PreStartup,
                systems::start_worker.in_set(DiffusionSystems::Start),
            )
            .add_systems(
                PreUpdate,
                (texgen_asset::submit_texgen_assets, systems::poll_worker)
                    .chain()
                    .in_set(DiffusionSystems::Poll)
                    // After Bevy drops the images nobody holds, so their requests are cancelled
                    // in the same frame.
                    .after(bevy::asset::AssetTrackingSystems),
            );
    }

    fn finish(&self, app: &mut App) {
        // Fail at start-up with the fix rather than at the first frame with a missing resource.
        assert!(
            app.world()
                .contains_resource::<bevy::asset::Assets<bevy::image::Image>>(),
            "DiffusionPlugin needs Bevy's AssetPlugin and ImagePlugin (or DefaultPlugins) in the app"
        );
        // Diffusion::submit reserves image handles without borrowing Assets<Image>.
        let provider = app
            .world()
            .resource::<bevy::asset::Assets<bevy::image::Image>>()
            .get_handle_provider();
        app.world_mut()
            .resource_mut::<DiffusionRuntime>()
            .image_handles = Some(provider);
        // `*.texgen.ron` prompt files (registered here: the AssetServer exists by now).
        let (loader, queue) = texgen_asset::texgen_loader(self.settings.placeholder_size);
        app.insert_resource(queue);
        bevy::asset::AssetApp::register_asset_loader(app, loader);
    }
}
