//! Running requests in the background, bevy-free: the [`generator::Generator`] trait the worker
//! drives, the worker thread with its bounded queue, per-player quotas and cancel, and the
//! in-memory + on-disk image cache.

pub(crate) mod atomic_file;
pub mod cache;
pub mod generator;
pub mod worker;
mod worker_task;
mod worker_thread;
#[cfg(feature = "farm")]
pub(crate) use worker_thread::panic_message;
