//! The generation worker: one background thread that owns a loaded model and runs requests from
//! a priority queue, talking to the game through crossbeam channels both ways.
//!
//! - [`GenerationWorker::submit`] validates the request's sizes and counts and checks the bounded
//!   queue and per-player quotas synchronously, answering at once: an id, or [`SubmitError`] with
//!   the reason (never a silent drop, nothing allocated for a refused request).
//! - [`GenerationWorker::cancel`] flags the request at once (true the first time only); the
//!   running job sees the flag at its next model block (`cancel.rs`), a waiting one leaves
//!   the queue when the worker next drains its commands.
//! - Every job ends in exactly one of [`WorkerEvent::Finished`], [`WorkerEvent::Failed`] or
//!   [`WorkerEvent::Cancelled`]. A panic inside a job fails that job only; the worker keeps
//!   serving. Dropping the worker cancels everything: the running job stops within one block.
//! - Compute runs in a rayon pool of `compute_threads` threads ([`crate::compute_pool`]), built
//!   before the model loads (so loading runs in it too) and, with `background_priority`, made of
//!   threads at a lowered OS priority.
//!
//! The worker is generic over [`Generator`] so the queue logic is testable without a model.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use image::RgbaImage;

use crate::error::DiffusionError;
use crate::pipeline::PromptTruncation;
use crate::request::GenerationRequest;
use crate::runtime::worker_thread::{Command, Queued, WorkerThread};

/// The trait the worker drives, defined beside its model implementation.
pub use crate::runtime::generator::Generator;

mod config;
mod submit;
pub use config::*;
pub use submit::*;

/// Identifies one submitted request for its whole life: unique within one worker (one
/// `DiffusionPlugin`), handed out by [`GenerationWorker::submit`] in increasing order from 0.
/// Every message about the request carries it; `Display` prints the number (`request 7`), serde
/// writes it as a plain number.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub struct RequestId(u64);

impl RequestId {
    /// The id with number `n` (ids from a worker are `0, 1, 2, ...` in submission order).
    pub const fn new(n: u64) -> Self {
        Self(n)
    }

    /// The number inside.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The id after this one.
    pub(crate) fn next(self) -> Self {
        Self(self.0.wrapping_add(1))
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl From<RequestId> for u64 {
    fn from(id: RequestId) -> Self {
        id.0
    }
}

/// News from the worker, in the order it happened.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum WorkerEvent {
    /// The model loaded (identity given).
    ModelLoaded {
        /// [`Generator::identity`] of the loaded model.
        identity: String,
    },
    /// The model failed to load (every queued job then fails too, naming this error).
    ModelFailed {
        /// Why it failed.
        error: Arc<DiffusionError>,
    },
    /// A job left the queue and started.
    Started {
        /// The request.
        id: RequestId,
    },
    /// A denoising step finished (`step` is 1-based); `preview` when previews are on.
    Progress {
        /// The request.
        id: RequestId,
        /// Denoising steps done so far (1-based).
        step: usize,
        /// Denoising steps in all.
        total: usize,
        /// A preview of this step (RGBA8, the request's size), when previews are on.
        preview: Option<RgbaImage>,
    },
    /// The final image; `cached` when it came from the cache without running the model;
    /// `truncated` says which prompts were cut to 77 tokens (as the generator reported it
    /// through [`crate::pipeline::GenerationHooks::on_prompt_encoded`]; nothing on a cache hit).
    Finished {
        /// The request.
        id: RequestId,
        /// The finished RGBA8 image.
        image: RgbaImage,
        /// The seed that ran.
        seed: u64,
        /// Wall time from start to finish.
        elapsed: Duration,
        /// Served from the cache (no model ran).
        cached: bool,
        /// Which prompts were cut to the text encoder's 77 tokens.
        truncated: PromptTruncation,
    },
    /// The job failed; `error` is the typed cause (its Display is the message to show).
    Failed {
        /// The request.
        id: RequestId,
        /// Why it failed.
        error: Arc<DiffusionError>,
    },
    /// The job was cancelled (by id, by player, or because the worker is shutting down).
    Cancelled {
        /// The request.
        id: RequestId,
    },
}

/// A job between submission and its terminal event.
pub(crate) struct Ticket {
    pub player: Option<String>,
    /// Set once by [`GenerationWorker::cancel`] (or cancel_player); read by the running job.
    pub cancel: Arc<AtomicBool>,
}

/// Jobs waiting+running, shared between submitters and the worker thread.
#[derive(Default)]
pub(crate) struct Occupancy {
    pub per_player: HashMap<String, usize>,
    pub jobs: HashMap<RequestId, Ticket>,
    pub next_id: RequestId,
}

impl Occupancy {
    /// Frees the slot of `id` (its terminal event is being sent); false if it was already free.
    pub fn release(&mut self, id: RequestId) -> bool {
        let Some(ticket) = self.jobs.remove(&id) else {
            return false;
        };
        if let Some(player) = &ticket.player
            && let Some(n) = self.per_player.get_mut(player)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_player.remove(player);
            }
        }
        true
    }
}

/// State shared by the handle and the worker thread.
pub(crate) struct Shared {
    pub occupancy: Mutex<Occupancy>,
    /// Set when the [`GenerationWorker`] is dropped: every job stops at its next block.
    pub stop: AtomicBool,
}

impl Shared {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Occupancy> {
        self.occupancy
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A background generation thread with a priority queue. Dropping it cancels every job and
/// joins the thread, which takes at most one model block of the running job.
pub struct GenerationWorker {
    commands: Option<Sender<Command>>,
    events: Receiver<WorkerEvent>,
    shared: Arc<Shared>,
    config: WorkerConfig,
    thread: Option<JoinHandle<()>>,
}

impl GenerationWorker {
    /// Starts the worker thread; `load` runs on it, inside the compute pool (model loading never
    /// blocks the caller, and runs at the worker's priority).
    pub fn spawn<G, F>(config: WorkerConfig, load: F) -> Self
    where
        G: Generator,
        F: FnOnce() -> crate::Result<G> + Send + 'static,
    {
        let (cmd_tx, cmd_rx) = crossbeam_channel::unbounded();
        let (ev_tx, ev_rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared {
            occupancy: Mutex::new(Occupancy::default()),
            stop: AtomicBool::new(false),
        });
        let state = WorkerThread::new(cmd_rx, ev_tx, shared.clone(), config.clone());
        let thread = std::thread::Builder::new()
            .name("bevy_diffusion-worker".into())
            .spawn(move || state.run(load));
        let thread = match thread {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::error!("bevy_diffusion: could not start the worker thread: {e}");
                None
            }
        };
        Self {
            commands: thread.as_ref().map(|_| cmd_tx),
            events: ev_rx,
            shared,
            config,
            thread,
        }
    }

    /// Validates `job` (sizes, counts, init image bytes: [`validate_submission`]) and queues it;
    /// answers at once with its id or why it was refused.
    pub fn submit(&self, job: GenerationRequest) -> Result<RequestId, SubmitError> {
        validate_submission(&job)?;
        let Some(commands) = &self.commands else {
            return Err(SubmitError::WorkerStopped);
        };
        let mut occ = self.shared.lock();
        if occ.jobs.len() >= self.config.max_queued {
            return Err(SubmitError::QueueFull {
                queued: occ.jobs.len(),
                limit: self.config.max_queued,
            });
        }
        if let Some(player) = &job.player {
            let n = occ.per_player.get(player).copied().unwrap_or(0);
            if n >= self.config.max_per_player {
                return Err(SubmitError::PlayerQuota {
                    player: player.clone(),
                    queued: n,
                    limit: self.config.max_per_player,
                });
            }
        }
        let id = occ.next_id;
        occ.next_id = id.next();
        if let Some(player) = &job.player {
            *occ.per_player.entry(player.clone()).or_default() += 1;
        }
        let cancel = Arc::new(AtomicBool::new(false));
        occ.jobs.insert(
            id,
            Ticket {
                player: job.player.clone(),
                cancel: cancel.clone(),
            },
        );
        // Sent under the lock, so the worker never sees a cancel before its submit.
        if commands
            .send(Command::Submit(Box::new(Queued { id, job, cancel })))
            .is_err()
        {
            occ.release(id);
            return Err(SubmitError::WorkerStopped);
        }
        Ok(id)
    }

    /// Cancels a waiting or running request (a running one stops at its next model block).
    /// True the first time for a request in flight; false when it already ended, was never
    /// submitted, or was cancelled before.
    pub fn cancel(&self, id: RequestId) -> bool {
        let occ = self.shared.lock();
        let Some(ticket) = occ.jobs.get(&id) else {
            return false;
        };
        if ticket.cancel.swap(true, Ordering::SeqCst) {
            return false;
        }
        if let Some(c) = &self.commands {
            let _ = c.send(Command::Cancel(id));
        }
        true
    }

    /// Cancels every waiting or running request of `player`; returns how many were newly
    /// cancelled.
    pub fn cancel_player(&self, player: &str) -> usize {
        let occ = self.shared.lock();
        let mut n = 0;
        for (id, ticket) in &occ.jobs {
            if ticket.player.as_deref() == Some(player)
                && !ticket.cancel.swap(true, Ordering::SeqCst)
            {
                n += 1;
                if let Some(c) = &self.commands {
                    let _ = c.send(Command::Cancel(*id));
                }
            }
        }
        n
    }

    /// The event channel (poll it with `try_recv` every frame).
    pub fn events(&self) -> &Receiver<WorkerEvent> {
        &self.events
    }

    /// Requests waiting or running now.
    pub fn occupancy(&self) -> usize {
        self.shared.lock().jobs.len()
    }

    /// True while `id` is waiting or running (its terminal event not yet sent).
    pub fn is_in_flight(&self, id: RequestId) -> bool {
        self.shared.lock().jobs.contains_key(&id)
    }
}

impl Drop for GenerationWorker {
    fn drop(&mut self) {
        // Stop the running job at its next block, cancel the queue, close the command channel
        // (the thread then ends), and wait for it.
        self.shared.stop.store(true, Ordering::SeqCst);
        self.commands = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
