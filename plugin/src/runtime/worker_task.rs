//! One job as a task ([`crate::runtime::worker::WorkerConfig::job_spawner`], e.g. Bevy's
//! `AsyncComputeTaskPool`): the model travels into the task and back, the task enters the
//! worker's compute pool for the tensor maths and sends progress straight to the game, and the
//! worker thread keeps applying commands (new submissions, cancels of queued jobs) meanwhile.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use crossbeam_channel::Sender;
use image::RgbaImage;

use crate::cancel::CancelCheck;
use crate::error::DiffusionError;
use crate::pipeline::{DenoisingStep, GenerationHooks, PromptTruncation};
use crate::request::GenerationRequest;
use crate::runtime::worker::{Generator, JobSpawner, RequestId, WorkerEvent};
use crate::runtime::worker_thread::WorkerThread;

/// What a finished task hands back.
pub(crate) struct TaskDone<G> {
    pub model: G,
    pub result: std::thread::Result<crate::Result<RgbaImage>>,
    pub truncated: PromptTruncation,
}

/// Runs `job` with `model` as one task of `spawner` and waits for it, applying commands
/// meanwhile. `Err` when the task was dropped without finishing (the model is lost with it).
pub(crate) fn run_as_task<G: Generator>(
    worker: &mut WorkerThread,
    model: G,
    job: &GenerationRequest,
    id: RequestId,
    check: CancelCheck,
    spawner: &JobSpawner,
) -> Result<TaskDone<G>, Arc<DiffusionError>> {
    let (done_tx, done_rx) = crossbeam_channel::bounded(1);
    let events = worker.events.clone();
    let preview_every = worker.config.preview_every;
    let pool = worker.pool.clone();
    let job = job.clone();
    spawner.spawn(Box::new(move || {
        let run = move || {
            let mut hooks = TaskHooks {
                events,
                preview_every,
                model: &model,
                id,
                check,
                truncated: PromptTruncation::default(),
            };
            let result = catch_unwind(AssertUnwindSafe(|| model.generate(&job, &mut hooks)));
            let truncated = hooks.truncated;
            drop(hooks);
            TaskDone {
                model,
                result,
                truncated,
            }
        };
        let done = match pool {
            Some(pool) => pool.install(run),
            None => run(),
        };
        let _ = done_tx.send(done);
    }));
    let lost = || {
        Arc::new(DiffusionError::Panicked {
            what: "a generation task",
            message: "the task was dropped before it finished (did the task pool shut down?)"
                .into(),
        })
    };
    loop {
        crossbeam_channel::select! {
            recv(done_rx) -> done => return done.map_err(|_| lost()),
            recv(worker.commands) -> cmd => match cmd {
                Ok(cmd) => worker.apply(cmd),
                Err(_) => {
                    // Shutting down: the job's cancel check already says stop; wait for it.
                    worker.closed = true;
                    return done_rx.recv().map_err(|_| lost());
                }
            },
        }
    }
}

struct TaskHooks<'a, G: Generator> {
    events: Sender<WorkerEvent>,
    preview_every: Option<usize>,
    model: &'a G,
    id: RequestId,
    check: CancelCheck,
    truncated: PromptTruncation,
}

impl<G: Generator> GenerationHooks for TaskHooks<'_, G> {
    fn on_step(&mut self, step: &DenoisingStep) {
        let n = step.step + 1;
        let preview = match self.preview_every {
            Some(every) if every > 0 && n.is_multiple_of(every) && n < step.total => {
                self.model.preview(step)
            }
            _ => None,
        };
        let _ = self.events.send(WorkerEvent::Progress {
            id: self.id,
            step: n,
            total: step.total,
            preview,
        });
    }

    fn should_cancel(&mut self) -> bool {
        (self.check)()
    }

    fn cancel_check(&self) -> Option<CancelCheck> {
        Some(self.check.clone())
    }

    fn on_prompt_encoded(&mut self, truncated: PromptTruncation) {
        self.truncated = truncated;
    }
}
