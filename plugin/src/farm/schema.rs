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
    pub v: u32,
    /// [`content_hash`] of the request.
    pub hash: String,
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
    Started { worker: String, delivery: u32 },
    /// A denoising step finished (`step` 1-based); `preview_png` when the worker sends previews.
    Progress {
        worker: String,
        step: usize,
        total: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        preview_png: Option<Vec<u8>>,
    },
    /// The PNG is in the object store under the hash; `cached` when an existing object was
    /// reused without running the model.
    Finished {
        worker: String,
        delivery: u32,
        width: u32,
        height: u32,
        seed: u64,
        cached: bool,
    },
    /// The job failed for good (`deliveries` runs were used up, or the request is invalid).
    Failed {
        worker: String,
        deliveries: u32,
        reason: String,
    },
    /// The job was cancelled (before it ran, or within one step of the cancel).
    Cancelled { worker: String, step: usize },
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
    pub v: u32,
    /// `running`, `retrying`, or the terminal event's type.
    pub state: String,
    pub worker: String,
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
