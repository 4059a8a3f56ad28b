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
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use futures_util::StreamExt;

use super::topology::{self, Farm, FarmLimits, PriorityClass};
use crate::error::DiffusionError;
use crate::runtime::worker::Generator;

mod run_job;
mod slot;

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

/// One slot: its consumers, its generator, and what it sends (its loop in `slot.rs`, the run
/// of one job in `run_job.rs`).
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
