//! [`DiffusionBackend`]: where the plugin's requests run: the in-process worker, or (feature
//! `farm`, [`super::ModelSource::Farm`]) a generation farm on NATS JetStream. Both answer a
//! submit at once, cancel by id or player, and end every accepted request in exactly one
//! terminal [`WorkerEvent`], so the plugin's systems treat them alike.

use crossbeam_channel::Receiver;

use crate::request::GenerationRequest;
use crate::runtime::worker::{GenerationWorker, RequestId, SubmitError, WorkerEvent};

/// The plugin's generation backend (see the module docs).
pub enum DiffusionBackend {
    /// The background worker thread with the model in this process.
    Local(GenerationWorker),
    /// A farm client: the model runs on `texgen serve` workers.
    #[cfg(feature = "farm")]
    Farm(crate::farm::FarmClient),
}

impl DiffusionBackend {
    /// Queues `job`; answers at once with its id or why it was refused.
    pub fn submit(&self, job: GenerationRequest) -> Result<RequestId, SubmitError> {
        match self {
            Self::Local(w) => w.submit(job),
            #[cfg(feature = "farm")]
            Self::Farm(f) => f.submit(job),
        }
    }

    /// Cancels a request in flight (true the first time).
    pub fn cancel(&self, id: RequestId) -> bool {
        match self {
            Self::Local(w) => w.cancel(id),
            #[cfg(feature = "farm")]
            Self::Farm(f) => f.cancel(id),
        }
    }

    /// Cancels every request of `player` in flight; returns how many.
    pub fn cancel_player(&self, player: &str) -> usize {
        match self {
            Self::Local(w) => w.cancel_player(player),
            #[cfg(feature = "farm")]
            Self::Farm(f) => f.cancel_player(player),
        }
    }

    /// The event channel.
    pub fn events(&self) -> &Receiver<WorkerEvent> {
        match self {
            Self::Local(w) => w.events(),
            #[cfg(feature = "farm")]
            Self::Farm(f) => f.events(),
        }
    }

    /// Requests waiting or running now (for the farm: this client's requests in flight).
    pub fn occupancy(&self) -> usize {
        match self {
            Self::Local(w) => w.occupancy(),
            #[cfg(feature = "farm")]
            Self::Farm(f) => f.occupancy(),
        }
    }

    /// True while `id` is in flight.
    pub fn is_in_flight(&self, id: RequestId) -> bool {
        match self {
            Self::Local(w) => w.is_in_flight(id),
            #[cfg(feature = "farm")]
            Self::Farm(f) => f.is_in_flight(id),
        }
    }
}
