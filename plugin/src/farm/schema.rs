//! The farm's message schemas (serde JSON, version field `v`): the job a client publishes, the
//! events a worker publishes per job, and the job state kept in the KV bucket.

use serde::{Deserialize, Serialize};

use crate::request::GenerationRequest;

/// Schema version of every farm message.
pub const SCHEMA_VERSION: u32 = 1;

/// The content hash a job is known by: blake3 (hex, 64 chars) of the farm's model name and the
/// request's pixel-affecting fields ([`crate::runtime::cache::CacheKey`]), so identical requests
/// of different players share one job, one object and one message id.
pub fn content_hash(model: &str, request: &GenerationRequest) -> String {
    crate::runtime::cache::CacheKey::new(&format!("farm:{model}"), request).hex()
}

/// A job on `texgen.jobs.<class>.<player>` (its `Nats-Msg-Id` header is `hash`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobMessage {
    /// [`SCHEMA_VERSION`].
    pub v: u32,
    /// [`content_hash`] of the request.
    pub hash: String,
    /// The request as submitted (an init image travels as pixels, not as a path).
    pub request: GenerationRequest,
    /// Milliseconds since the Unix epoch when the client published it.
    pub submitted_ms: u64,
}

/// What a worker publishes on `texgen.events.<hash>` (core NATS; the terminal ones are also
/// written to the KV bucket first, so a client that missed the event reads the state).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FarmEvent {
    /// A worker took the job (`delivery` is 1-based: 2 and more are redeliveries).
    Started {
        /// The worker's name (`texgen serve --name`).
        worker: String,
        /// 1-based delivery count of the job message.
        delivery: u32,
    },
    /// A denoising step finished (`step` 1-based); `preview_png` when the worker sends previews.
    Progress {
        /// The worker's name.
        worker: String,
        /// Denoising steps done (1-based).
        step: usize,
        /// Denoising steps in all.
        total: usize,
        /// A preview PNG (every `--preview-every` steps).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        preview_png: Option<Vec<u8>>,
    },
    /// The PNG is in the object store under the hash; `cached` when an existing object was
    /// reused without running the model.
    Finished {
        /// The worker's name.
        worker: String,
        /// The delivery that finished it.
        delivery: u32,
        /// The PNG's width in pixels.
        width: u32,
        /// The PNG's height in pixels.
        height: u32,
        /// The seed of the noise stream.
        seed: u64,
        /// True when an existing object was reused.
        cached: bool,
    },
    /// The job failed for good (`deliveries` runs were used up, or the request is invalid).
    Failed {
        /// The worker's name.
        worker: String,
        /// Runs used.
        deliveries: u32,
        /// Why (the generator's last error, or the crashes).
        reason: String,
    },
    /// The job was cancelled (before it ran, or within one step of the cancel).
    Cancelled {
        /// The worker's name.
        worker: String,
        /// Steps done when it stopped (0: it never ran).
        step: usize,
    },
}

impl FarmEvent {
    /// True for `Finished`, `Failed` and `Cancelled`.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Self::Finished { .. } | Self::Failed { .. } | Self::Cancelled { .. }
        )
    }
}

/// The KV value of a job (key = its hash): its last state and, once terminal, its terminal
/// event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobState {
    /// [`SCHEMA_VERSION`].
    pub v: u32,
    /// `running`, `retrying`, or the terminal event's type.
    pub state: String,
    /// The worker that wrote it.
    pub worker: String,
    /// The delivery it was written in (1-based).
    pub delivery: u32,
    /// Milliseconds since the Unix epoch.
    pub updated_ms: u64,
    /// The terminal event, once there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminal: Option<FarmEvent>,
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
