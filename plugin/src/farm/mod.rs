//! A generation farm on NATS JetStream (feature `farm`): game servers and tools submit requests
//! to a work-queue stream, a pool of `texgen serve` workers runs them on the same
//! [`crate::runtime::worker::Generator`] core as the in-process worker, and results come back
//! through an object store keyed by the request's content hash. docs/farm.md describes the
//! streams, subjects, buckets, schemas and limits.
//!
//! A layer beside [`crate::runtime`]: it imports runtime, pipeline and request, and only
//! `bevy_plugin`, `tools::bake::farm` (`texgen bake --farm`) and `bin/texgen` import it.
//!
//! - [`topology`]: names, limits, and creating the stream, consumers and buckets.
//! - [`schema`]: the job message, the per-job events, the KV job state.
//! - [`serve`]: the worker loop (`texgen serve`).
//! - [`client`]: [`client::FarmClient`], the submitting side with the in-process worker's API.
//! - [`probe`]: [`probe::FarmProbe`], queue counts, stored objects and the event feed.

pub mod client;
pub mod probe;
pub mod schema;
pub mod serve;
pub mod topology;

pub use client::{FarmClient, FarmSettings};
pub use probe::{FarmProbe, QueueState};
pub use serve::{ServeConfig, serve};
pub use topology::{FarmLimits, PriorityClass};
