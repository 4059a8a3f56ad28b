//! The worker thread of [`crate::runtime::worker::GenerationWorker`]: loads the model inside the compute
//! pool, then serves the priority queue, one job at a time, each job's maths in the pool.

use std::collections::BinaryHeap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TryRecvError};

use crate::cancel::CancelCheck;
use crate::error::DiffusionError;
use crate::pipeline::{DenoisingStep, GenerationHooks, PromptTruncation};
use crate::request::GenerationRequest;
use crate::runtime::cache::{CacheKey, ImageCache};
use crate::runtime::worker::{Generator, RequestId, Shared, WorkerConfig, WorkerEvent};

/// From the handle to the thread.
pub(crate) enum Command {
    Submit(Box<Queued>),
    /// The job's flag is already set; a queued job leaves the queue on this command.
    Cancel(RequestId),
}

/// A job in the queue.
pub(crate) struct Queued {
    pub id: RequestId,
    pub job: GenerationRequest,
    pub cancel: Arc<AtomicBool>,
}
impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    /// Max-heap: higher priority first, then lower id (earlier submission) first.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.job
            .priority
            .cmp(&other.job.priority)
            .then_with(|| other.id.cmp(&self.id))
    }
}

pub(crate) struct WorkerThread {
    queue: BinaryHeap<Queued>,
    pub(crate) commands: Receiver<Command>,
    pub(crate) events: Sender<WorkerEvent>,
    shared: Arc<Shared>,
    pub(crate) config: WorkerConfig,
    cache: ImageCache,
    /// The compute pool, when jobs run as tasks (else the serving loop runs inside it).
    pub(crate) pool: Option<Arc<rayon::ThreadPool>>,
    /// The command channel closed (the handle was dropped).
    pub(crate) closed: bool,
}

impl WorkerThread {
    pub fn new(
        commands: Receiver<Command>,
        events: Sender<WorkerEvent>,
        shared: Arc<Shared>,
        config: WorkerConfig,
    ) -> Self {
        Self {
            queue: BinaryHeap::new(),
            commands,
            events,
            shared,
            cache: ImageCache::new(config.cache_memory_entries, config.cache_dir.clone()),
            config,
            pool: None,
            closed: false,
        }
    }

    /// The thread's body: lower its priority, build the compute pool, load the model in it, then
    /// serve in it until the handle is dropped.
    pub fn run<G: Generator>(mut self, load: impl FnOnce() -> crate::Result<G> + Send) {
        let background = self.config.background_priority;
        if background {
            crate::compute_pool::lower_current_thread_priority();
        }
        let configured = self
            .config
            .compute_threads
            .unwrap_or_else(crate::compute_pool::available_cores);
        let pool = build_pool(configured, background);
        let load = || catch_unwind(AssertUnwindSafe(load));
        let loaded = match &pool {
            Some(pool) => pool.install(load),
            None => load(),
        };
        let model = match loaded {
            Ok(Ok(model)) => Ok(model),
            Ok(Err(e)) => Err(Arc::new(e)),
            Err(panic) => Err(Arc::new(DiffusionError::Panicked {
                what: "model loading",
                message: panic_message(&panic),
            })),
        };
        let event = match &model {
            Ok(m) => WorkerEvent::ModelLoaded {
                identity: m.identity(),
            },
            Err(error) => WorkerEvent::ModelFailed {
                error: error.clone(),
            },
        };
        let _ = self.events.send(event);
        // The model may use fewer threads well than configured (a small UNet: one).
        let pool = match model.as_ref().ok().and_then(Generator::max_useful_threads) {
            Some(useful) if useful < configured => build_pool(useful, background).or(pool),
            _ => pool,
        };
        match pool {
            // Jobs as tasks: this thread only dispatches; each task enters the pool itself.
            Some(pool) if self.config.job_spawner.is_some() => {
                self.pool = Some(Arc::new(pool));
                self.serve(model)
            }
            Some(pool) => pool.install(move || self.serve(model)),
            None => self.serve(model),
        }
    }

    /// Runs queued jobs until the command channel closes.
    fn serve<G: Generator>(&mut self, mut model: Result<G, Arc<DiffusionError>>) {
        loop {
            if self.shared.stop.load(Ordering::SeqCst) {
                return self.cancel_everything();
            }
            if self.queue.is_empty() {
                match self.commands.recv() {
                    Ok(cmd) => self.apply(cmd),
                    Err(_) => self.closed = true,
                }
            }
            self.drain();
            if self.shared.stop.load(Ordering::SeqCst) || (self.closed && self.queue.is_empty()) {
                return self.cancel_everything();
            }
            let Some(queued) = self.queue.pop() else {
                continue;
            };
            if queued.cancel.load(Ordering::SeqCst) {
                self.finish(queued.id, WorkerEvent::Cancelled { id: queued.id });
                continue;
            }
            let placeholder = Err(Arc::new(DiffusionError::Cancelled));
            model = match std::mem::replace(&mut model, placeholder) {
                Ok(m) => self.run_job(m, queued),
                Err(why) => {
                    // Every job names the load error, so a game that only watches its requests
                    // still learns why.
                    let error = Arc::new(DiffusionError::ModelUnavailable(why.clone()));
                    self.finish(
                        queued.id,
                        WorkerEvent::Failed {
                            id: queued.id,
                            error,
                        },
                    );
                    Err(why)
                }
            };
        }
    }

    /// Shutting down: every job still queued (or still in the channel) ends as cancelled.
    fn cancel_everything(&mut self) {
        self.drain();
        for q in std::mem::take(&mut self.queue) {
            self.finish(q.id, WorkerEvent::Cancelled { id: q.id });
        }
    }

    /// Applies every pending command without blocking.
    fn drain(&mut self) {
        loop {
            match self.commands.try_recv() {
                Ok(cmd) => self.apply(cmd),
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    self.closed = true;
                    return;
                }
            }
        }
    }

    pub(crate) fn apply(&mut self, cmd: Command) {
        match cmd {
            Command::Submit(q) => self.queue.push(*q),
            Command::Cancel(target) => {
                if self.queue.iter().any(|q| q.id == target) {
                    let kept: Vec<Queued> = std::mem::take(&mut self.queue)
                        .into_iter()
                        .filter(|q| q.id != target)
                        .collect();
                    self.queue = kept.into();
                    self.finish(target, WorkerEvent::Cancelled { id: target });
                }
            }
        }
    }

    /// Runs one job (on this thread, or as a task of [`WorkerConfig::job_spawner`]), sends its
    /// terminal event and hands the model back; `Err` when the model was lost with a task that
    /// never came back (later jobs then fail with that reason).
    fn run_job<G: Generator>(
        &mut self,
        model: G,
        queued: Queued,
    ) -> Result<G, Arc<DiffusionError>> {
        let Queued { id, job, cancel } = queued;
        let _ = self.events.send(WorkerEvent::Started { id });
        let started = Instant::now();
        let key = (self.config.cache_memory_entries > 0 || self.config.cache_dir.is_some())
            .then(|| CacheKey::for_job(&model.identity(), &job))
            .flatten();
        if let Some(image) = key.as_ref().and_then(|k| self.cache.get(k)) {
            let event = WorkerEvent::Finished {
                id,
                image,
                seed: job.seed,
                elapsed: started.elapsed(),
                cached: true,
                truncated: PromptTruncation::default(),
            };
            self.finish(id, event);
            return Ok(model);
        }
        let stop = self.shared.clone();
        let flag = cancel.clone();
        let check: CancelCheck =
            Arc::new(move || flag.load(Ordering::Relaxed) || stop.stop.load(Ordering::Relaxed));
        let (model, result, truncated) = match self.config.job_spawner.clone() {
            Some(spawner) => {
                let done = crate::runtime::worker_task::run_as_task(
                    self, model, &job, id, check, &spawner,
                );
                match done {
                    Ok(done) => (Ok(done.model), done.result, done.truncated),
                    Err(lost) => (
                        Err(lost.clone()),
                        Ok(Err(DiffusionError::ModelUnavailable(lost))),
                        PromptTruncation::default(),
                    ),
                }
            }
            None => {
                let m = &model;
                let mut hooks = JobHooks {
                    worker: self,
                    model: m,
                    id,
                    check,
                    truncated: PromptTruncation::default(),
                };
                let result = catch_unwind(AssertUnwindSafe(|| m.generate(&job, &mut hooks)));
                let truncated = hooks.truncated;
                (Ok(model), result, truncated)
            }
        };
        let cancelled = cancel.load(Ordering::SeqCst) || self.shared.stop.load(Ordering::SeqCst);
        let event = match result {
            Ok(Ok(image)) => {
                if let Some(k) = key {
                    self.cache.put(k, &image);
                }
                WorkerEvent::Finished {
                    id,
                    image,
                    seed: job.seed,
                    elapsed: started.elapsed(),
                    cached: false,
                    truncated,
                }
            }
            Ok(Err(DiffusionError::Cancelled)) => WorkerEvent::Cancelled { id },
            Ok(Err(_)) if cancelled => WorkerEvent::Cancelled { id },
            Ok(Err(e)) => WorkerEvent::Failed {
                id,
                error: Arc::new(e),
            },
            Err(panic) => WorkerEvent::Failed {
                id,
                error: Arc::new(DiffusionError::Panicked {
                    what: "generation",
                    message: panic_message(&panic),
                }),
            },
        };
        self.finish(id, event);
        model
    }

    /// Frees the job's slot and sends its terminal event (exactly once per job).
    pub(crate) fn finish(&mut self, id: RequestId, event: WorkerEvent) {
        if self.shared.lock().release(id) {
            let _ = self.events.send(event);
        }
    }
}

struct JobHooks<'a, G: Generator> {
    worker: &'a mut WorkerThread,
    model: &'a G,
    id: RequestId,
    check: CancelCheck,
    truncated: PromptTruncation,
}

impl<G: Generator> GenerationHooks for JobHooks<'_, G> {
    fn on_step(&mut self, step: &DenoisingStep) {
        let n = step.step + 1;
        let preview = match self.worker.config.preview_every {
            Some(every) if every > 0 && n.is_multiple_of(every) && n < step.total => {
                self.model.preview(step)
            }
            _ => None,
        };
        let _ = self.worker.events.send(WorkerEvent::Progress {
            id: self.id,
            step: n,
            total: step.total,
            preview,
        });
    }

    fn should_cancel(&mut self) -> bool {
        // New submissions and cancels of queued jobs are applied between steps, so a cancelled
        // queued job ends at once rather than after the running one.
        self.worker.drain();
        (self.check)()
    }

    fn cancel_check(&self) -> Option<CancelCheck> {
        Some(self.check.clone())
    }

    fn on_prompt_encoded(&mut self, truncated: PromptTruncation) {
        self.truncated = truncated;
    }
}

/// The worker's compute pool ([`crate::compute_pool::build_pool`]: capped at the cores, threads
/// at lowered priority when `background`); `None` (rayon's global pool) if the OS refuses.
fn build_pool(threads: usize, background: bool) -> Option<rayon::ThreadPool> {
    let (threads, capped) = crate::compute_pool::cap_threads(threads);
    if let Some(why) = capped {
        tracing::warn!("bevy_diffusion: {why}");
    }
    crate::compute_pool::build_pool(threads, background)
        .map_err(|e| {
            tracing::warn!("bevy_diffusion: no compute pool ({e}); using rayon's global pool")
        })
        .ok()
}

/// The text of a caught panic: its `&str` or `String` payload, else "unknown panic" (the
/// worker's and the farm's failure messages).
pub(crate) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".into()
    }
}
