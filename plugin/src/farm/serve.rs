//! The farm worker (`texgen serve --nats URL`): `slots` loops, each pulling one job at a time
//! (interactive before batch) and running it on the same [`Generator`] core as the in-process
//! worker, on a blocking thread.
//!
//! Per job: a cancel mark or an existing object ends it at once; a job delivered more than
//! [`FarmLimits::max_deliveries`] times (its earlier runs crashed or timed out) ends `Failed`.
//! While it runs, every step publishes progress and sends an in-progress ack (plus one every
//! `ack_wait / 3`, for steps longer than that). The result is stored (object, then KV state,
//! then the event) before the message is acknowledged, so a crash at any point leaves the job
//! to be redelivered, and the redelivery reuses the stored object.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use futures_util::StreamExt;

use super::schema::{FarmEvent, JobMessage, JobState, SCHEMA_VERSION, now_ms};
use super::topology::{self, Farm, FarmLimits, PriorityClass};
use crate::cancel::CancelCheck;
use crate::error::DiffusionError;
use crate::pipeline::{DenoisingStep, GenerationHooks};
use crate::runtime::worker::Generator;

/// How a worker process serves.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The broker, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// Jobs run at once by this process (1..=64).
    pub slots: usize,
    /// The worker's name in events and states (default: `<host>-<pid>`).
    pub name: String,
    /// A preview PNG in every this many progress events (`None` = no previews).
    pub preview_every: Option<usize>,
    /// Limits used if this worker creates the stream (an existing stream keeps its own).
    pub limits: FarmLimits,
}

impl ServeConfig {
    /// One slot, no previews, default limits.
    pub fn new(url: impl Into<String>) -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".into());
        Self {
            url: url.into(),
            slots: 1,
            name: format!("{host}-{}", std::process::id()),
            preview_every: None,
            limits: FarmLimits::default(),
        }
    }
}

/// Serves jobs until `stop` is set (or forever). Blocks; builds its own tokio runtime.
///
/// Errors: [`DiffusionError::Farm`] when the broker cannot be reached at start or `slots` is
/// out of 1..=64.
pub fn serve<G: Generator + Sync>(
    config: ServeConfig,
    generator: Arc<G>,
    stop: Arc<AtomicBool>,
) -> crate::Result<()> {
    if !(1..=64).contains(&config.slots) {
        return Err(DiffusionError::Farm {
            reason: format!("--slots {} must be in 1..=64", config.slots),
        });
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| DiffusionError::Farm {
            reason: format!("tokio runtime: {e}"),
        })?;
    rt.block_on(async move {
        let farm = topology::ensure(&config.url, config.limits.clone()).await?;
        let interactive = farm.consumer(PriorityClass::Interactive).await?;
        let batch = farm.consumer(PriorityClass::Batch).await?;
        tracing::info!("texgen serve: {} slot(s) on {}", config.slots, config.url);
        tokio::spawn(sweep_loop(farm.clone(), stop.clone()));
        let mut slots = Vec::new();
        for slot in 0..config.slots {
            let ctx = SlotCtx {
                farm: farm.clone(),
                interactive: interactive.clone(),
                batch: batch.clone(),
                generator: generator.clone(),
                name: if config.slots == 1 {
                    config.name.clone()
                } else {
                    format!("{}#{slot}", config.name)
                },
                preview_every: config.preview_every,
                stop: stop.clone(),
            };
            slots.push(tokio::spawn(ctx.run()));
        }
        for s in slots {
            let _ = s.await;
        }
        Ok(())
    })
}

type Pull = jetstream::consumer::Consumer<jetstream::consumer::pull::Config>;

/// Runs [`sweep_acknowledged_leftovers`] now and then every `ack_wait / 3` (1..=10 s).
async fn sweep_loop(farm: Farm, stop: Arc<AtomicBool>) {
    let every = (farm.limits.ack_wait / 3).clamp(Duration::from_secs(1), Duration::from_secs(10));
    while !stop.load(Ordering::SeqCst) {
        let removed = sweep_acknowledged_leftovers(&farm).await;
        if removed > 0 {
            tracing::warn!("removed {removed} acknowledged job message(s) left in the work queue");
        }
        tokio::time::sleep(every).await;
    }
}

/// Deletes job messages that their consumer has already acknowledged but that are still in the
/// work-queue stream, and returns how many (at most 64 per class and call).
///
/// nats-server 2.9 removes an acknowledged work-queue message in memory and writes the removal
/// to its index file lazily, while the consumer's ack floor is stored at once: after a SIGKILL
/// (or power loss) of the broker the message comes back in the stream, below the ack floor, so
/// it is never delivered again but counts against its player's quota and the global bound for
/// ever. A message at or below its consumer's ack floor has been acknowledged by definition
/// (one consumer per subject in a work queue), so deleting it is always safe.
pub async fn sweep_acknowledged_leftovers(farm: &Farm) -> usize {
    let mut removed = 0;
    for class in [PriorityClass::Interactive, PriorityClass::Batch] {
        let Ok(mut consumer) = farm.consumer(class).await else {
            continue;
        };
        let Ok(info) = consumer.info().await else {
            continue;
        };
        let floor = info.ack_floor.stream_sequence;
        let filter = format!("texgen.jobs.{}.>", class.as_str());
        let mut seq = 1;
        for _ in 0..64 {
            let next = farm
                .stream
                .raw_message_builder()
                .sequence(seq)
                .next_by_subject(filter.clone())
                .send()
                .await;
            match next {
                Ok(m) if m.sequence <= floor => {
                    if matches!(farm.stream.delete_message(m.sequence).await, Ok(true)) {
                        removed += 1;
                    }
                    seq = m.sequence + 1;
                }
                _ => break,
            }
        }
    }
    removed
}

struct SlotCtx<G> {
    farm: Farm,
    interactive: Pull,
    batch: Pull,
    generator: Arc<G>,
    name: String,
    preview_every: Option<usize>,
    stop: Arc<AtomicBool>,
}

/// One message from `consumer`, waiting at most `wait` (`None` = only what is there now).
///
/// Bounded on this side too: a pull request dies with a broker that restarts, and its end
/// (the broker's timeout status) then never comes.
async fn pull_one(consumer: &Pull, wait: Option<Duration>) -> Option<jetstream::Message> {
    let limit = wait.unwrap_or_default() + Duration::from_secs(2);
    let pulled = tokio::time::timeout(limit, async {
        let batch = match wait {
            None => consumer.fetch().max_messages(1).messages().await,
            Some(w) => consumer.batch().max_messages(1).expires(w).messages().await,
        };
        match batch {
            Ok(mut b) => match b.next().await {
                Some(Ok(m)) => Ok(Some(m)),
                _ => Ok(None),
            },
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    match pulled {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => {
            tracing::debug!("pull: {e}");
            tokio::time::sleep(Duration::from_millis(200)).await;
            None
        }
        Err(_) => None,
    }
}

impl<G: Generator + Sync> SlotCtx<G> {
    async fn run(self) {
        while !self.stop.load(Ordering::SeqCst) {
            // Interactive first; batch only when no interactive job waits.
            let mut msg = pull_one(&self.interactive, None).await;
            if msg.is_none() {
                msg = pull_one(&self.batch, None).await;
            }
            if msg.is_none() {
                msg = pull_one(&self.interactive, Some(Duration::from_millis(200))).await;
            }
            if let Some(m) = msg {
                self.handle(m).await;
            }
        }
    }

    async fn publish(&self, hash: &str, event: &FarmEvent) {
        if let Ok(bytes) = serde_json::to_vec(event) {
            let _ = self
                .farm
                .client
                .publish(topology::events_subject(hash), bytes.into())
                .await;
        }
    }

    async fn put_state(
        &self,
        hash: &str,
        state: &str,
        delivery: u32,
        terminal: Option<FarmEvent>,
    ) -> bool {
        let s = JobState {
            v: SCHEMA_VERSION,
            state: state.into(),
            worker: self.name.clone(),
            delivery,
            updated_ms: now_ms(),
            terminal,
        };
        let Ok(bytes) = serde_json::to_vec(&s) else {
            return false;
        };
        match self.farm.state.put(hash, bytes.into()).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!("job {hash}: state not written ({e})");
                false
            }
        }
    }

    /// Records `event` as the job's end (KV, then the event), then acknowledges the message.
    /// Nothing is acknowledged when the state could not be written: the job is redelivered.
    async fn end(&self, msg: &jetstream::Message, hash: &str, delivery: u32, event: FarmEvent) {
        let state = match &event {
            FarmEvent::Finished { .. } => "finished",
            FarmEvent::Failed { .. } => "failed",
            _ => "cancelled",
        };
        if !self
            .put_state(hash, state, delivery, Some(event.clone()))
            .await
        {
            return;
        }
        self.publish(hash, &event).await;
        if let Err(e) = msg.double_ack().await {
            tracing::warn!("job {hash}: ack not confirmed ({e}); it may be redelivered");
        }
        if state == "cancelled" {
            // The mark is spent: a later identical request runs again.
            let _ = self.farm.state.delete(topology::cancel_key(hash)).await;
        }
    }

    async fn handle(&self, msg: jetstream::Message) {
        let delivery = msg
            .info()
            .map(|i| i.delivered.clamp(1, i64::from(u32::MAX)) as u32)
            .unwrap_or(1);
        let job: JobMessage = match serde_json::from_slice(&msg.payload) {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!("dropping an unreadable job on {}: {e}", msg.subject);
                let _ = msg.ack_with(AckKind::Term).await;
                return;
            }
        };
        let hash = job.hash.clone();
        let worker = self.name.clone();
        let cancelled = matches!(
            self.farm.state.get(topology::cancel_key(&hash)).await,
            Ok(Some(_))
        );
        if cancelled {
            let event = FarmEvent::Cancelled { worker, step: 0 };
            return self.end(&msg, &hash, delivery, event).await;
        }
        if let Some((width, height)) = self.existing(&hash).await {
            let event = FarmEvent::Finished {
                worker,
                delivery,
                width,
                height,
                seed: job.request.seed,
                cached: true,
            };
            return self.end(&msg, &hash, delivery, event).await;
        }
        let max = self.farm.limits.max_deliveries;
        if delivery > max {
            let reason = format!(
                "delivered {delivery} times; the last {} run(s) crashed or timed out",
                delivery - 1
            );
            let event = FarmEvent::Failed {
                worker,
                deliveries: delivery - 1,
                reason,
            };
            return self.end(&msg, &hash, delivery, event).await;
        }
        self.put_state(&hash, "running", delivery, None).await;
        let started = FarmEvent::Started {
            worker: worker.clone(),
            delivery,
        };
        self.publish(&hash, &started).await;
        let outcome = self.run_job(&msg, &job, delivery).await;
        match outcome {
            Outcome::Done(png, width, height) => {
                let mut reader = std::io::Cursor::new(png);
                if let Err(e) = self.farm.results.put(hash.as_str(), &mut reader).await {
                    tracing::warn!("job {hash}: result not stored ({e}); left for redelivery");
                    return;
                }
                let event = FarmEvent::Finished {
                    worker,
                    delivery,
                    width,
                    height,
                    seed: job.request.seed,
                    cached: false,
                };
                self.end(&msg, &hash, delivery, event).await;
            }
            Outcome::Cancelled(step) => {
                let event = FarmEvent::Cancelled { worker, step };
                self.end(&msg, &hash, delivery, event).await;
            }
            Outcome::Error(reason) if delivery >= max => {
                let event = FarmEvent::Failed {
                    worker,
                    deliveries: delivery,
                    reason,
                };
                self.end(&msg, &hash, delivery, event).await;
            }
            Outcome::Error(reason) => {
                tracing::info!("job {hash}: run {delivery} of {max} failed ({reason}); retrying");
                self.put_state(&hash, "retrying", delivery, None).await;
                let _ = msg
                    .ack_with(AckKind::Nak(Some(Duration::from_millis(100))))
                    .await;
            }
        }
    }

    /// The size of the stored object for `hash`, if a whole one exists.
    async fn existing(&self, hash: &str) -> Option<(u32, u32)> {
        use tokio::io::AsyncReadExt;
        let info = self.farm.results.info(hash).await.ok()?;
        if info.deleted {
            return None;
        }
        let mut object = self.farm.results.get(hash).await.ok()?;
        let mut png = Vec::new();
        object.read_to_end(&mut png).await.ok()?;
        let img = image::load_from_memory(&png).ok()?;
        Some((img.width(), img.height()))
    }

    /// Runs the job on a blocking thread; relays progress, heartbeats and cancels meanwhile.
    async fn run_job(&self, msg: &jetstream::Message, job: &JobMessage, delivery: u32) -> Outcome {
        let cancel = Arc::new(AtomicBool::new(false));
        let last_step = Arc::new(AtomicUsize::new(0));
        let mut cancels = self
            .farm
            .client
            .subscribe(topology::cancel_subject(&job.hash))
            .await
            .ok();
        // A cancel that came between the check above and the subscription.
        if matches!(
            self.farm.state.get(topology::cancel_key(&job.hash)).await,
            Ok(Some(_))
        ) {
            return Outcome::Cancelled(0);
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let generator = self.generator.clone();
        let request = job.request.clone();
        let flag = cancel.clone();
        let preview_every = self.preview_every;
        let mut task = tokio::task::spawn_blocking(move || {
            let check: CancelCheck = Arc::new(move || flag.load(Ordering::Relaxed));
            let mut hooks = FarmHooks {
                generator: generator.as_ref(),
                tx,
                check,
                preview_every,
            };
            let run = std::panic::AssertUnwindSafe(|| generator.generate(&request, &mut hooks));
            std::panic::catch_unwind(run)
        });
        let mut heartbeat = tokio::time::interval(self.farm.limits.ack_wait / 3);
        heartbeat.tick().await;
        let hash = job.hash.as_str();
        let result = loop {
            tokio::select! {
                done = &mut task => break done,
                Some((step, total, preview_png)) = rx.recv() => {
                    last_step.store(step, Ordering::SeqCst);
                    let _ = msg.ack_with(AckKind::Progress).await;
                    let ev = FarmEvent::Progress { worker: self.name.clone(), step, total, preview_png };
                    self.publish(hash, &ev).await;
                }
                _ = heartbeat.tick() => { let _ = msg.ack_with(AckKind::Progress).await; }
                Some(_) = async { match cancels.as_mut() { Some(s) => s.next().await, None => None } } => {
                    tracing::info!("job {hash}: cancel received at step {}", last_step.load(Ordering::SeqCst));
                    cancel.store(true, Ordering::SeqCst);
                }
            }
        };
        // Progress sent just before the end still goes out, in order.
        while let Ok((step, total, preview_png)) = rx.try_recv() {
            last_step.store(step, Ordering::SeqCst);
            let ev = FarmEvent::Progress {
                worker: self.name.clone(),
                step,
                total,
                preview_png,
            };
            self.publish(hash, &ev).await;
        }
        let step = last_step.load(Ordering::SeqCst);
        let _ = delivery;
        match result {
            _ if cancel.load(Ordering::SeqCst) => Outcome::Cancelled(step),
            Ok(Ok(Ok(image))) => match crate::runtime::atomic_file::encode_png(&image) {
                Ok(png) => Outcome::Done(png, image.width(), image.height()),
                Err(e) => Outcome::Error(format!("PNG encoding: {e}")),
            },
            Ok(Ok(Err(DiffusionError::Cancelled))) => Outcome::Cancelled(step),
            Ok(Ok(Err(e))) => Outcome::Error(e.to_string()),
            Ok(Err(panic)) => Outcome::Error(format!(
                "generation panicked: {}",
                panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default()
            )),
            Err(e) => Outcome::Error(format!("generation task: {e}")),
        }
    }
}

enum Outcome {
    Done(Vec<u8>, u32, u32),
    Cancelled(usize),
    Error(String),
}

type ProgressTx = tokio::sync::mpsc::UnboundedSender<(usize, usize, Option<Vec<u8>>)>;

struct FarmHooks<'a, G> {
    generator: &'a G,
    tx: ProgressTx,
    check: CancelCheck,
    preview_every: Option<usize>,
}

impl<G: Generator> GenerationHooks for FarmHooks<'_, G> {
    fn on_step(&mut self, step: &DenoisingStep) {
        let n = step.step + 1;
        let preview = match self.preview_every {
            Some(every) if every > 0 && n.is_multiple_of(every) && n < step.total => self
                .generator
                .preview(step)
                .and_then(|img| crate::runtime::atomic_file::encode_png(&img).ok()),
            _ => None,
        };
        let _ = self.tx.send((n, step.total, preview));
    }

    fn should_cancel(&mut self) -> bool {
        (self.check)()
    }

    fn cancel_check(&self) -> Option<CancelCheck> {
        Some(self.check.clone())
    }
}
