//! # bevy_diffusion
//!
//! Stable-Diffusion-family text-to-image on [candle](https://github.com/huggingface/candle),
//! made to run inside a game: prompts become textures and sprites at runtime.
//!
//! The crate is a bevy-free core (this page) with a thin Bevy layer on top. A prompt becomes
//! pixels in [`pipeline`]: tokenize ([`tokenizer`]) -> encode ([`models::clip_text_model`]) ->
//! denoise with the UNet ([`models::unet_2d_condition`]) under a [`schedulers`] loop -> decode with
//! the VAE ([`models::autoencoder_kl`]) -> RGBA8 ([`postprocess`]).
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
pub mod cache;
pub mod embedded;
pub mod error;
pub mod generator;
pub mod hub;
pub mod inspect;
pub mod model;
pub mod model_folder;
pub mod models;
pub mod noise;
pub mod pipeline;
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
