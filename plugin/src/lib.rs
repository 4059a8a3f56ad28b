//! # bevy_diffusion
//!
//! Stable-Diffusion-family text-to-image on [candle](https://github.com/huggingface/candle),
//! made to run inside a game: any system asks for a texture or a sprite and gets a
//! `Handle<Image>` at once; the pixels arrive a few seconds later in the same handle, while the
//! game keeps its frame rate.
//!
//! ```no_run
//! use bevy::prelude::*;
//! use bevy_diffusion::{Diffusion, DiffusionPlugin, GenerationFinished, GenerationRequest};
//!
//! /// Something that shows a generated image (in a real game: `Sprite::from_image(handle)`).
//! #[derive(Component)]
//! struct Crate(Handle<Image>);
//!
//! fn main() {
//!     App::new()
//!         // `DefaultPlugins` in a game; the plugin itself needs only assets and images.
//!         .add_plugins((MinimalPlugins, AssetPlugin::default(), ImagePlugin::default()))
//!         .add_plugins(DiffusionPlugin::default()) // the embedded model, on the CPU
//!         .add_systems(Startup, ask)
//!         .add_systems(Update, done)
//!         .run();
//! }
//!
//! /// The handle is valid at once (a placeholder); the same handle gets the pixels later.
//! fn ask(mut commands: Commands, mut diffusion: Diffusion) {
//!     match diffusion.submit(GenerationRequest::sprite("a wooden crate, game item")) {
//!         Ok(job) => {
//!             commands.spawn(Crate(job.handle));
//!         }
//!         Err(reason) => warn!("request refused: {reason}"),
//!     }
//! }
//!
//! fn done(mut finished: MessageReader<GenerationFinished>) {
//!     for f in finished.read() {
//!         info!("request {} done in {:?} (cached: {})", f.id, f.elapsed, f.cached);
//!     }
//! }
//! ```
//!
//! The crate is a bevy-free core with a thin Bevy layer on top ([`bevy_plugin`], feature `bevy`,
//! on by default). A prompt becomes pixels in [`pipeline`]: tokenize ([`models::tokenizer`]) -> encode
//! ([`models::clip_text_model`]) -> denoise with the UNet ([`models::unet_2d_condition`]) under a
//! [`schedulers`] loop -> decode with the VAE ([`models::autoencoder_kl`]) -> RGBA8
//! ([`pipeline::postprocess`]). [`runtime::worker`] runs requests in the background with a queue,
//! quotas and a [`runtime::cache`]; [`request::player`] fills per-player prompts and seeds.
//! [`loading`] reads model folders (and, with the opt-in `hf-hub` feature, [`loading::hub`]
//! fetches `owner/name` ids).
//!
//! Editor-time tooling, also bevy-free: [`tools::bake`] (`texgen bake`: manifests of named
//! requests baked to PNGs + sidecars, only what changed) and [`tools::inspect`] (`texgen inspect`:
//! every problem of a model folder).
//!
//! Without Bevy:
//!
//! ```no_run
//! use bevy_diffusion::{GenerationRequest, StableDiffusion, LoadOptions};
//! let model = StableDiffusion::load("path/to/sd-folder".as_ref(), &LoadOptions::default())?;
//! let request = GenerationRequest { prompt: "mossy cobblestone".into(), seed: 42, ..Default::default() };
//! let out = bevy_diffusion::pipeline::generate(&model, &request, &mut bevy_diffusion::pipeline::NoHooks)?;
//! out.image.save("cobblestone.png").ok();
//! # Ok::<(), bevy_diffusion::DiffusionError>(())
//! ```

#![warn(missing_docs)]

// Layers, each importing only from those above it in this list:
// leaves (error, noise, tiling, kernels, cancel, compute_pool, config_bounds, configuration_utils) -> schedulers, models -> request -> loading -> pipeline -> runtime
// -> tools and bevy_plugin.
pub(crate) mod cancel;
pub mod compute_pool;
pub(crate) mod config_bounds;
pub(crate) mod configuration_utils;
pub mod error;
pub(crate) mod kernels;
pub mod noise;
pub mod tiling;

pub mod models;
pub mod schedulers;

pub mod request;

pub mod loading;

pub mod pipeline;

pub mod runtime;

#[cfg(feature = "farm")]
pub mod farm;

#[cfg(feature = "bevy")]
pub mod bevy_plugin;
pub mod tools;

pub use error::{DiffusionError, Result};
pub use pipeline::model::{LoadOptions, StableDiffusion};
pub use request::GenerationRequest;
pub use schedulers::SchedulerKind;
pub use tiling::Tiling;

#[cfg(feature = "bevy")]
pub use bevy_plugin::{
    Diffusion, DiffusionPlugin, DiffusionSettings, DiffusionStatus, DiffusionSystems,
    GenerationCancelled, GenerationFailed, GenerationFinished, GenerationProgress,
    GenerationStarted, ModelLoadFailed, ModelReady, ModelSource, Submitted,
};
pub use request::AssetKind;
pub use request::player::{PlayerProfile, PromptTemplate, derive_seed};
pub use runtime::worker::{Generator, RequestId, SubmitError};

#[cfg(feature = "bevy")]
#[allow(deprecated)]
pub use bevy_plugin::DiffusionSet;

/// The names a game needs: `use bevy_diffusion::prelude::*;`.
pub mod prelude {
    #[cfg(feature = "bevy")]
    pub use crate::bevy_plugin::{
        Diffusion, DiffusionPlugin, DiffusionSettings, DiffusionStatus, DiffusionSystems,
        GenerationCancelled, GenerationFailed, GenerationFinished, GenerationProgress,
        GenerationStarted, ModelLoadFailed, ModelReady, ModelSource, Submitted,
    };
    pub use crate::error::DiffusionError;
    pub use crate::request::{AssetKind, GenerationRequest, PixelArt};
    pub use crate::runtime::worker::{Generator, RequestId, SubmitError};
    pub use crate::tiling::Tiling;
    pub use crate::{PlayerProfile, PromptTemplate, SchedulerKind};
}

/// Internals the workspace's tests, benches and examples reach into: our CPU kernels, the
/// safetensors header reader and checking backend, the LoRA merge, atomic file writes, the
/// config reader. Not part of the API: no stability promise, hidden from the
/// docs.
#[doc(hidden)]
pub mod testing {
    /// `crate::kernels`: conv / GroupNorm / attention / Linear / elementwise kernels, profile.
    pub mod kernels {
        pub use crate::kernels::*;
    }
    /// `crate::loading::weights`: safetensors headers, weight files, the checking loader.
    pub mod weights {
        pub use crate::loading::model_loading_utils::*;
        pub use crate::loading::weights::*;
    }
    /// `crate::loading::lora_merge`: LoRA deltas merged while a model loads.
    pub mod lora_merge {
        pub use crate::loading::lora_merge::*;
    }
    /// `crate::runtime::atomic_file`: PNG encoding and atomic writes.
    pub mod atomic_file {
        pub use crate::runtime::atomic_file::*;
    }
    /// `crate::configuration_utils`: the one JSON config reader.
    pub mod configuration_utils {
        pub use crate::configuration_utils::*;
    }
    /// `crate::cancel`: cancel checkpoints inside the models.
    pub mod cancel {
        pub use crate::cancel::*;
    }
}
