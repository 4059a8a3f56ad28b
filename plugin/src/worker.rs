//! The generation worker: one background thread that owns a loaded model and runs requests from
//! a priority queue, talking to the game through crossbeam channels both ways.
//!
//! - [`GenerationWorker::submit`] checks the bounded queue and per-player quotas synchronously and
//!   answers at once: an id, or [`SubmitError`] with the reason (never a silent drop).
//! - Commands (submit, cancel) travel to the worker thread over a channel; the thread drains it
//!   between denoising steps, so a cancel takes effect within one step.
//! - Every job ends in exactly one of [`WorkerEvent::Finished`], [`WorkerEvent::Failed`] or
//!   [`WorkerEvent::Cancelled`]. A panic inside a job fails that job only; the worker keeps
//!   serving.
//! - Compute runs in a rayon pool of `compute_threads` threads, so a game can keep a core free.
//!
//! The worker is generic over [`Generator`] so the queue logic is testable without a model.

use std::collections::{BinaryHeap, HashMap};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use image::RgbaImage;

use crate::cache::{CacheKey, ImageCache};
use crate::error::DiffusionError;
use crate::pipeline::{DenoisingStep, GenerationHooks};
use crate::request::GenerationRequest;

/// Identifies one submitted request for its whole life.
pub type RequestId = u64;

/// What the worker needs from a model: run one request with hooks.
pub trait Generator: Send + 'static {
    /// A stable identity of the model (for cache keys and logs).
    fn identity(&self) -> String;
    /// Runs `request`; `hooks` get every step and may cancel.
    fn generate(
        &self,
        request: &GenerationRequest,
        hooks: &mut dyn GenerationHooks,
    ) -> crate::Result<RgbaImage>;
    /// The most compute threads that still speed this model up (`None` = no limit). Small models
    /// are dominated by per-operation overhead and run fastest on one thread.
    fn max_useful_threads(&self) -> Option<usize> {
        None
    }
    /// A cheap RGBA preview of a step (no VAE), or `None` when unsupported.
    fn preview(&self, _step: &DenoisingStep) -> Option<RgbaImage> {
        None
    }
}

/// Queue limits and threading of a [`GenerationWorker`].
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Requests waiting or running at once, over all players.
    pub max_queued: usize,
    /// Requests waiting or running at once for one player.
    pub max_per_player: usize,
    /// Upper bound on threads for tensor maths (a rayon pool private to the worker); `None` = all
    /// cores. Lowered further to [`Generator::max_useful_threads`].
    pub compute_threads: Option<usize>,
    /// Send a preview every this many steps (`None` = no previews).
    pub preview_every: Option<usize>,
    /// Finished images kept in memory for cache hits (0 = no memory cache).
    pub cache_memory_entries: usize,
    /// Directory of the on-disk cache (`None` = no disk cache).
    pub cache_dir: Option<std::path::PathBuf>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            max_queued: 64,
            max_per_player: 8,
            compute_threads: None,
            preview_every: Some(1),
            cache_memory_entries: 64,
            cache_dir: None,
        }
    }
}

/// Why a submission was refused at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("queue full: {queued} requests waiting or running (limit {limit})")]
    QueueFull { queued: usize, limit: usize },
    #[error("player `{player}` has {queued} requests waiting or running (limit {limit})")]
    PlayerQuota {
        player: String,
        queued: usize,
        limit: usize,
    },
    #[error("the generation worker has stopped")]
    WorkerStopped,
}

/// News from the worker, in the order it happened.
#[derive(Debug, Clone)]
pub enum WorkerEvent {
    /// The model loaded (identity given) or failed to load (every queued job then fails too).
    ModelLoaded {
        identity: String,
    },
    ModelFailed {
        reason: String,
    },
    /// A job left the queue and started.
    Started {
        id: RequestId,
    },
    /// A denoising step finished (`step` is 1-based); `preview` when previews are on.
    Progress {
        id: RequestId,
        step: usize,
        total: usize,
        preview: Option<RgbaImage>,
    },
    /// The final image; `cached` when it came from the cache without running the model.
    Finished {
        id: RequestId,
        image: RgbaImage,
        seed: u64,
        elapsed: Duration,
        cached: bool,
    },
    Failed {
        id: RequestId,
        reason: String,
    },
    Cancelled {
        id: RequestId,
    },
}

enum Command {
    Submit(RequestId, GenerationRequest),
    Cancel(RequestId),
    CancelPlayer(String),
}

/// Counts of waiting+running jobs, shared between submitters and the worker thread.
#[derive(Default)]
struct Occupancy {
    total: usize,
    per_player: HashMap<String, usize>,
    next_id: RequestId,
}

/// A background generation thread with a priority queue. Dropping it stops the thread after the
/// running job.
pub struct GenerationWorker {
    commands: Sender<Command>,
    events: Receiver<WorkerEvent>,
    occupancy: Arc<Mutex<Occupancy>>,
    config: WorkerConfig,
    thread: Option<JoinHandle<()>>,
}

impl GenerationWorker {
    /// Starts the worker thread; `load` runs on it (model loading never blocks the caller).
    pub fn spawn<G, F>(config: WorkerConfig, load: F) -> Self
    where
        G: Generator,
        F: FnOnce() -> crate::Result<G> + Send + 'static,
    {
        let (cmd_tx, cmd_rx) = crossbeam_channel::unbounded();
        let (ev_tx, ev_rx) = crossbeam_channel::unbounded();
        let occupancy = Arc::new(Mutex::new(Occupancy::default()));
        let thread_occupancy = occupancy.clone();
        let thread_config = config.clone();
        let thread = std::thread::Builder::new()
            .name("bevy_diffusion-worker".into())
            .spawn(move || {
                let mut state = WorkerThread {
                    queue: BinaryHeap::new(),
                    commands: cmd_rx,
                    events: ev_tx,
                    occupancy: thread_occupancy,
                    cache: ImageCache::new(
                        thread_config.cache_memory_entries,
                        thread_config.cache_dir.clone(),
                    ),
                    config: thread_config,
                    stopped: false,
                };
                let model = state.load(load);
                let useful = model.as_ref().ok().and_then(Generator::max_useful_threads);
                let pool = rayon_pool(compute_threads(state.config.compute_threads, useful));
                let serve = || state.serve(model);
                match pool {
                    Some(pool) => pool.install(serve),
                    None => serve(),
                }
            })
            .expect("spawning a thread");
        Self {
            commands: cmd_tx,
            events: ev_rx,
            occupancy,
            config,
            thread: Some(thread),
        }
    }

    /// Queues `job`; answers at once with its id or why it was refused.
    pub fn submit(&self, job: GenerationRequest) -> Result<RequestId, SubmitError> {
        let mut occ = self
            .occupancy
            .lock()
            .map_err(|_| SubmitError::WorkerStopped)?;
        if occ.total >= self.config.max_queued {
            return Err(SubmitError::QueueFull {
                queued: occ.total,
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
        occ.next_id += 1;
        occ.total += 1;
        if let Some(player) = &job.player {
            *occ.per_player.entry(player.clone()).or_default() += 1;
        }
        drop(occ);
        self.commands
            .send(Command::Submit(id, job))
            .map_err(|_| SubmitError::WorkerStopped)?;
        Ok(id)
    }

    /// Cancels a waiting or running request (a running one stops before its next step).
    pub fn cancel(&self, id: RequestId) {
        let _ = self.commands.send(Command::Cancel(id));
    }

    /// Cancels every waiting or running request of `player`.
    pub fn cancel_player(&self, player: &str) {
        let _ = self
            .commands
            .send(Command::CancelPlayer(player.to_string()));
    }

    /// The event channel (poll it with `try_recv` every frame).
    pub fn events(&self) -> &Receiver<WorkerEvent> {
        &self.events
    }

    /// Requests waiting or running now.
    pub fn occupancy(&self) -> usize {
        self.occupancy.lock().map(|o| o.total).unwrap_or(0)
    }
}

impl Drop for GenerationWorker {
    fn drop(&mut self) {
        // Closing the command channel ends the thread after its current job.
        let (dead_tx, _) = crossbeam_channel::unbounded();
        self.commands = dead_tx;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The compute pool's size: the configured upper bound (`None` = all cores), lowered to what
/// the model can use well.
fn compute_threads(configured: Option<usize>, useful: Option<usize>) -> Option<usize> {
    match (configured, useful) {
        (Some(c), Some(u)) => Some(c.min(u)),
        (c, u) => c.or(u),
    }
}

fn rayon_pool(threads: Option<usize>) -> Option<std::sync::Arc<rayon::ThreadPool>> {
    crate::kernels::threads::shared_pool(threads?)
}

#[derive(Debug)]
struct Queued {
    id: RequestId,
    job: GenerationRequest,
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

struct WorkerThread {
    queue: BinaryHeap<Queued>,
    commands: Receiver<Command>,
    events: Sender<WorkerEvent>,
    occupancy: Arc<Mutex<Occupancy>>,
    config: WorkerConfig,
    cache: ImageCache,
    stopped: bool,
}

impl WorkerThread {
    /// Loads the model (on the worker thread) and reports the outcome.
    fn load<G: Generator>(&mut self, load: impl FnOnce() -> crate::Result<G>) -> Result<G, String> {
        match catch_unwind(AssertUnwindSafe(load)) {
            Ok(Ok(model)) => {
                let _ = self.events.send(WorkerEvent::ModelLoaded {
                    identity: model.identity(),
                });
                Ok(model)
            }
            Ok(Err(e)) => {
                let reason = e.to_string();
                let _ = self.events.send(WorkerEvent::ModelFailed {
                    reason: reason.clone(),
                });
                Err(reason)
            }
            Err(panic) => {
                let reason = format!("model loading panicked: {}", panic_message(&panic));
                let _ = self.events.send(WorkerEvent::ModelFailed {
                    reason: reason.clone(),
                });
                Err(reason)
            }
        }
    }

    /// Runs queued jobs until the command channel closes.
    fn serve<G: Generator>(&mut self, model: Result<G, String>) {
        loop {
            // Block for a command when idle.
            if self.queue.is_empty() {
                match self.commands.recv() {
                    Ok(cmd) => {
                        self.apply(cmd, None);
                    }
                    Err(_) => return,
                }
            }
            self.drain(None);
            if self.stopped && self.queue.is_empty() {
                return;
            }
            let Some(Queued { id, job }) = self.queue.pop() else {
                continue;
            };
            match &model {
                Ok(model) => self.run_job(model, id, job),
                Err(why) => {
                    // Every job names the load error, so a game that only watches its requests
                    // still learns why.
                    let reason = format!("the model failed to load: {why}");
                    self.finish(id, &job, WorkerEvent::Failed { id, reason })
                }
            }
        }
    }

    /// Applies every pending command; `running` is the id of the job in progress, if any.
    /// Returns true when the running job was cancelled.
    fn drain(&mut self, running: Option<(RequestId, &Option<String>)>) -> bool {
        let mut cancel_running = false;
        loop {
            match self.commands.try_recv() {
                Ok(cmd) => cancel_running |= self.apply(cmd, running),
                Err(TryRecvError::Empty) => return cancel_running,
                Err(TryRecvError::Disconnected) => {
                    self.stopped = true;
                    return cancel_running;
                }
            }
        }
    }

    fn apply(&mut self, cmd: Command, running: Option<(RequestId, &Option<String>)>) -> bool {
        match cmd {
            Command::Submit(id, job) => {
                self.queue.push(Queued { id, job });
                false
            }
            Command::Cancel(target) => {
                self.cancel_queued(|q| q.id == target);
                running.is_some_and(|(id, _)| id == target)
            }
            Command::CancelPlayer(player) => {
                self.cancel_queued(|q| q.job.player.as_deref() == Some(player.as_str()));
                running.is_some_and(|(_, p)| p.as_deref() == Some(player.as_str()))
            }
        }
    }

    fn cancel_queued(&mut self, matches: impl Fn(&Queued) -> bool) {
        let (cancelled, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.queue)
            .into_iter()
            .partition(|q| matches(q));
        self.queue = kept.into();
        for q in cancelled {
            self.finish(q.id, &q.job, WorkerEvent::Cancelled { id: q.id });
        }
    }

    fn run_job<G: Generator>(&mut self, model: &G, id: RequestId, job: GenerationRequest) {
        let _ = self.events.send(WorkerEvent::Started { id });
        let started = Instant::now();
        let key = (self.config.cache_memory_entries > 0 || self.config.cache_dir.is_some())
            .then(|| CacheKey::new(&model.identity(), &job));
        if let Some(image) = key.and_then(|k| self.cache.get(&k)) {
            let event = WorkerEvent::Finished {
                id,
                image,
                seed: job.seed,
                elapsed: started.elapsed(),
                cached: true,
            };
            return self.finish(id, &job, event);
        }
        let mut hooks = GenerationRequestHooks {
            worker: self,
            model,
            id,
            player: job.player.clone(),
            cancelled: false,
        };
        let result = catch_unwind(AssertUnwindSafe(|| model.generate(&job, &mut hooks)));
        let cancelled = hooks.cancelled;
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
                }
            }
            Ok(Err(DiffusionError::Cancelled)) => WorkerEvent::Cancelled { id },
            Ok(Err(_)) if cancelled => WorkerEvent::Cancelled { id },
            Ok(Err(e)) => WorkerEvent::Failed {
                id,
                reason: e.to_string(),
            },
            Err(panic) => WorkerEvent::Failed {
                id,
                reason: format!("generation panicked: {}", panic_message(&panic)),
            },
        };
        self.finish(id, &job, event);
    }

    /// Sends the job's last event and frees its slot.
    fn finish(&mut self, _id: RequestId, job: &GenerationRequest, event: WorkerEvent) {
        if let Ok(mut occ) = self.occupancy.lock() {
            occ.total = occ.total.saturating_sub(1);
            if let Some(player) = &job.player
                && let Some(n) = occ.per_player.get_mut(player)
            {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    occ.per_player.remove(player);
                }
            }
        }
        let _ = self.events.send(event);
    }
}

struct GenerationRequestHooks<'a, G: Generator> {
    worker: &'a mut WorkerThread,
    model: &'a G,
    id: RequestId,
    player: Option<String>,
    cancelled: bool,
}

impl<G: Generator> GenerationHooks for GenerationRequestHooks<'_, G> {
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
        let player = self.player.clone();
        if self.worker.drain(Some((self.id, &player))) {
            self.cancelled = true;
        }
        self.cancelled
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// A fake model: `num_inference_steps` steps of `step_ms` each; prompt "panic" panics,
    /// "fail" fails. The image is 1x1 with red = seed.
    struct Fake {
        step_ms: u64,
    }

    impl Generator for Fake {
        fn identity(&self) -> String {
            "fake".into()
        }
        fn generate(
            &self,
            request: &GenerationRequest,
            hooks: &mut dyn GenerationHooks,
        ) -> crate::Result<RgbaImage> {
            match request.prompt.as_str() {
                "panic" => panic!("boom"),
                "fail" => return Err(DiffusionError::Cancelled.into_invalid()),
                _ => {}
            }
            let t = Tensor::zeros((1, 1), candle_core::DType::F32, &Device::Cpu)?;
            for step in 0..request.num_inference_steps {
                if hooks.should_cancel() {
                    return Err(DiffusionError::Cancelled);
                }
                std::thread::sleep(Duration::from_millis(self.step_ms));
                hooks.on_step(&DenoisingStep {
                    step,
                    total: request.num_inference_steps,
                    timestep: 0.0,
                    latents_in: t.clone(),
                    unet_input: t.clone(),
                    unet_output: t.clone(),
                    noise_pred: t.clone(),
                    pred_original_sample: t.clone(),
                    latents_out: t.clone(),
                });
            }
            Ok(RgbaImage::from_pixel(
                1,
                1,
                image::Rgba([request.seed as u8, 0, 0, 255]),
            ))
        }
    }

    impl DiffusionError {
        fn into_invalid(self) -> Self {
            DiffusionError::InvalidRequest {
                field: "prompt",
                value: "fail".into(),
                reason: "test failure".into(),
            }
        }
    }

    fn job(
        prompt: &str,
        seed: u64,
        steps: usize,
        player: Option<&str>,
        priority: i32,
    ) -> GenerationRequest {
        GenerationRequest {
            prompt: prompt.into(),
            seed,
            num_inference_steps: steps,
            player: player.map(str::to_string),
            priority,
            ..Default::default()
        }
    }

    /// Collects events until every id in `ids` has ended.
    fn wait_all(worker: &GenerationWorker, ids: &[RequestId]) -> Vec<WorkerEvent> {
        let mut events = Vec::new();
        let mut open: Vec<RequestId> = ids.to_vec();
        while !open.is_empty() {
            let ev = worker
                .events()
                .recv_timeout(Duration::from_secs(20))
                .expect("worker event");
            if let WorkerEvent::Finished { id, .. }
            | WorkerEvent::Failed { id, .. }
            | WorkerEvent::Cancelled { id } = &ev
            {
                open.retain(|x| x != id);
            }
            events.push(ev);
        }
        events
    }

    fn ended(events: &[WorkerEvent]) -> Vec<(RequestId, &'static str)> {
        events
            .iter()
            .filter_map(|e| match e {
                WorkerEvent::Finished { id, .. } => Some((*id, "finished")),
                WorkerEvent::Failed { id, .. } => Some((*id, "failed")),
                WorkerEvent::Cancelled { id } => Some((*id, "cancelled")),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn panic_and_error_fail_only_their_job() {
        let w = GenerationWorker::spawn(WorkerConfig::default(), || Ok(Fake { step_ms: 1 }));
        let a = w.submit(job("panic", 1, 2, None, 0)).unwrap();
        let b = w.submit(job("fail", 2, 2, None, 0)).unwrap();
        let c = w.submit(job("ok", 3, 2, None, 0)).unwrap();
        let events = wait_all(&w, &[a, b, c]);
        assert_eq!(
            ended(&events),
            vec![(a, "failed"), (b, "failed"), (c, "finished")]
        );
        let reason = events.iter().find_map(|e| match e {
            WorkerEvent::Failed { id, reason } if *id == a => Some(reason.clone()),
            _ => None,
        });
        assert!(reason.unwrap().contains("boom"));
        assert_eq!(w.occupancy(), 0);
    }

    #[test]
    fn quotas_reject_at_once_with_a_reason_and_free_on_finish() {
        let cfg = WorkerConfig {
            max_queued: 3,
            max_per_player: 2,
            ..Default::default()
        };
        let w = GenerationWorker::spawn(cfg, || Ok(Fake { step_ms: 20 }));
        let a = w.submit(job("a", 1, 3, Some("ann"), 0)).unwrap();
        let b = w.submit(job("b", 2, 3, Some("ann"), 0)).unwrap();
        let e = w.submit(job("c", 3, 3, Some("ann"), 0)).unwrap_err();
        assert_eq!(
            e,
            SubmitError::PlayerQuota {
                player: "ann".into(),
                queued: 2,
                limit: 2
            }
        );
        assert!(e.to_string().contains("ann"));
        let c = w.submit(job("c", 3, 3, Some("bob"), 0)).unwrap();
        assert!(matches!(
            w.submit(job("d", 4, 3, Some("cid"), 0)),
            Err(SubmitError::QueueFull { limit: 3, .. })
        ));
        wait_all(&w, &[a, b, c]);
        assert!(
            w.submit(job("e", 5, 1, Some("ann"), 0)).is_ok(),
            "slots are freed when jobs end"
        );
    }

    #[test]
    fn cancel_stops_a_running_job_within_a_step_and_priority_orders_the_queue() {
        let w = GenerationWorker::spawn(WorkerConfig::default(), || Ok(Fake { step_ms: 30 }));
        let long = w.submit(job("long", 1, 1000, Some("ann"), 0)).unwrap();
        // Wait until it runs, then queue more.
        loop {
            if let WorkerEvent::Progress { id, .. } =
                w.events().recv_timeout(Duration::from_secs(20)).unwrap()
                && id == long
            {
                break;
            }
        }
        let low = w.submit(job("low", 2, 1, None, 0)).unwrap();
        let high = w.submit(job("high", 3, 1, None, 5)).unwrap();
        let queued = w.submit(job("queued", 4, 1, Some("ann"), 9)).unwrap();
        w.cancel_player("ann");
        let events = wait_all(&w, &[long, low, high, queued]);
        let order = ended(&events);
        assert!(order.contains(&(long, "cancelled")) && order.contains(&(queued, "cancelled")));
        let finished: Vec<_> = order
            .iter()
            .filter(|(_, s)| *s == "finished")
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(finished, vec![high, low], "higher priority runs first");
        let steps_of_long = events
            .iter()
            .filter(|e| matches!(e, WorkerEvent::Progress { id, .. } if *id == long))
            .count();
        assert!(
            steps_of_long < 10,
            "cancel took effect within a step ({steps_of_long} more steps ran)"
        );
    }

    #[test]
    fn a_model_that_fails_to_load_fails_its_jobs_with_the_reason() {
        let w = GenerationWorker::spawn(WorkerConfig::default(), || -> crate::Result<Fake> {
            Err(DiffusionError::ModelFolderMissing {
                path: "/nope".into(),
            })
        });
        let id = w.submit(job("a", 1, 1, None, 0)).unwrap();
        let events = wait_all(&w, &[id]);
        assert!(
            matches!(&events[0], WorkerEvent::ModelFailed { reason } if reason.contains("/nope"))
        );
        assert_eq!(ended(&events), vec![(id, "failed")]);
    }

    #[test]
    fn a_cache_hit_returns_the_same_pixels_without_running_the_model() {
        let w = GenerationWorker::spawn(WorkerConfig::default(), || Ok(Fake { step_ms: 1 }));
        let a = w.submit(job("wall", 9, 3, Some("ann"), 0)).unwrap();
        let first = wait_all(&w, &[a]);
        // Same pixels fields, other player: a hit.
        let b = w.submit(job("wall", 9, 3, Some("bob"), 0)).unwrap();
        let second = wait_all(&w, &[b]);
        let image_of = |evs: &[WorkerEvent], want: RequestId| {
            evs.iter().find_map(|e| match e {
                WorkerEvent::Finished {
                    id, image, cached, ..
                } if *id == want => Some((image.clone(), *cached)),
                _ => None,
            })
        };
        let (img_a, cached_a) = image_of(&first, a).unwrap();
        let (img_b, cached_b) = image_of(&second, b).unwrap();
        assert!(!cached_a && cached_b);
        assert_eq!(img_a, img_b);
        assert!(
            !second
                .iter()
                .any(|e| matches!(e, WorkerEvent::Progress { .. })),
            "no model steps on a hit"
        );
    }
}
