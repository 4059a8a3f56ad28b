//! The messages the plugin writes (read them with `MessageReader<T>`), and the
//! [`DiffusionStatus`] resource.
//!
//! All are written by [`super::DiffusionSet::Poll`] in `PreUpdate`, so systems in `Update` see
//! them in the frame the worker's news arrived. Every request ends in exactly one of
//! [`GenerationFinished`], [`GenerationFailed`] or [`GenerationCancelled`].

use std::time::Duration;

use bevy::asset::Handle;
use bevy::ecs::message::Message;
use bevy::ecs::resource::Resource;
use bevy::image::Image;

use crate::runtime::worker::RequestId;

/// Where the model is: loading in the background, ready, or failed (the game goes on; requests
/// then fail with the reason).
#[derive(Resource, Debug, Clone, PartialEq, Eq, Default)]
pub enum DiffusionStatus {
    /// The worker is loading the model (or has not started yet).
    #[default]
    Loading,
    /// The model is loaded.
    Ready {
        /// The model's identity (cache keys and logs use it).
        identity: String,
    },
    /// The model could not be loaded; every request fails with this reason.
    Failed {
        /// The loader's error, e.g. the missing file it names.
        reason: String,
    },
}

impl DiffusionStatus {
    /// True once the model is loaded.
    pub fn is_ready(&self) -> bool {
        matches!(self, Self::Ready { .. })
    }
}

/// The model finished loading.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
pub struct ModelReady {
    /// The model's identity.
    pub identity: String,
}

/// The model failed to load.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
pub struct ModelLoadFailed {
    /// The loader's error text.
    pub reason: String,
}

/// A request left the queue and its generation started.
#[derive(Message, Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenerationStarted {
    /// The request.
    pub id: RequestId,
}

/// A denoising step of a request finished (its image holds a new preview when previews are on).
#[derive(Message, Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenerationProgress {
    /// The request.
    pub id: RequestId,
    /// Steps done, 1-based.
    pub step: usize,
    /// Steps in all.
    pub total: usize,
}

/// A request's final pixels are in its image.
#[derive(Message, Debug, Clone)]
pub struct GenerationFinished {
    /// The request.
    pub id: RequestId,
    /// The image handle returned at submission, now holding the result.
    pub handle: Handle<Image>,
    /// The seed the noise used.
    pub seed: u64,
    /// Time from the start of the job to its end (not counting time in the queue).
    pub elapsed: Duration,
    /// True when the image came from the cache without running the model.
    pub cached: bool,
}

/// A request failed; its image keeps the placeholder (or the last preview).
#[derive(Message, Debug, Clone, PartialEq, Eq)]
pub struct GenerationFailed {
    /// The request.
    pub id: RequestId,
    /// Why (the core's error text).
    pub reason: String,
}

/// A request was cancelled; its image keeps the placeholder (or the last preview).
#[derive(Message, Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenerationCancelled {
    /// The request.
    pub id: RequestId,
}
