//! One job run on the `Generator` core on a blocking thread, with its progress relayed as
//! events and in-progress acks, heartbeats every `ack_wait / 3`, and cancels passed on.

use std::sync::atomic::AtomicUsize;

use async_nats::jetstream::AckKind;

use super::*;
use crate::cancel::CancelCheck;
use crate::farm::schema::{FarmEvent, JobMessage};
use crate::pipeline::{DenoisingStep, GenerationHooks};

impl<G: Generator + Sync> SlotCtx<G> {
    /// Runs the job on a blocking thread; relays progress, heartbeats and cancels meanwhile.
    pub(super) async fn run_job(
        &self,
        msg: &jetstream::Message,
        job: &JobMessage,
        delivery: u32,
    ) -> Outcome {
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
                crate::runtime::panic_message(&panic)
            )),
            Err(e) => Outcome::Error(format!("generation task: {e}")),
        }
    }
}

/// How one run ended: the PNG and its width and height, cancelled at a step, or why it failed.
pub(super) enum Outcome {
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
