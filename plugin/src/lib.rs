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
//! on by default). A prompt becomes pixels in [`pipeline`]: tokenize ([`tokenizer`]) -> encode
//! ([`models::clip_text_model`]) -> denoise with the UNet ([`models::unet_2d_condition`]) under a
//! [`schedulers`] loop -> decode with the VAE ([`models::autoencoder_kl`]) -> RGBA8
//! ([`postprocess`]). [`worker`] runs requests on a background thread with a queue, quotas and
//! a [`cache`]; [`player`] fills per-player prompts and seeds.
//!
//! Without Bevy:
//!
//! Editor-time tooling, also bevy-free: [`bake`] (`texgen bake`: manifests of named requests baked
//! to PNGs + sidecars, only what changed), [`inspect`] (`texgen inspect`: every problem of a model
//! folder) and [`hub`] (`--model owner/name` with the opt-in `hf-hub` feature).
//!
//! ```no_run
//! use bevy_diffusion::{GenerationRequest, StableDiffusion, LoadOptions};
//! let model = StableDiffusion::load("path/to/sd-folder".as_ref(), &LoadOptions::default())?;
//! let request = GenerationRequest { prompt: "mossy cobblestone".into(), seed: 42, ..Default::default() };
//! let out = bevy_diffusion::pipeline::generate(&model, &request, &mut bevy_diffusion::pipeline::NoHooks)?;
//! out.image.save("cobblestone.png").ok();
//! # Ok::<(), bevy_diffusion::DiffusionError>(())
//! ```

pub mod bake;
#[cfg(feature = "bevy")]
pub mod bevy_plugin;
pub mod cache;
pub mod embedded;
pub mod error;
pub mod generator;
pub mod hub;
pub mod inspect;
pub mod kernels;
pub mod model;
pub mod model_folder;
pub mod models;
pub mod noise;
pub mod pipeline;
pub mod player;
pub mod postprocess;
pub mod preview;
pub mod request;
pub mod schedulers;
pub mod tiling;
pub mod tokenizer;
pub mod weights;
pub mod worker;

pub use error::{DiffusionError, Result};
pub use model::{LoadOptions, StableDiffusion};
pub use request::GenerationRequest;
pub use schedulers::SchedulerKind;
pub use tiling::Tiling;

#[cfg(feature = "bevy")]
pub use bevy_plugin::{
    Diffusion, DiffusionPlugin, DiffusionSet, DiffusionSettings, DiffusionStatus,
    GenerationCancelled, GenerationFailed, GenerationFinished, GenerationProgress,
    GenerationStarted, ModelLoadFailed, ModelReady, ModelSource, Submitted,
};
pub use player::{PlayerProfile, PromptTemplate, derive_seed};
pub use request::AssetKind;
pub use worker::{Generator, RequestId, SubmitError};
