//! One slot's loop and one job's life: pull (interactive before batch), the cancel mark, the
//! stored object, the delivery bound, then the run (`run_job.rs`) and its one end
//! (object, KV state, event, acknowledgement).

use async_nats::jetstream::AckKind;

use super::run_job::Outcome;
use super::*;
use crate::farm::schema::{FarmEvent, JobMessage, JobState, SCHEMA_VERSION, now_ms};

impl<G: Generator + Sync> SlotCtx<G> {
    pub(super) async fn run(self) {
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

    pub(super) async fn publish(&self, hash: &str, event: &FarmEvent) {
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
}
