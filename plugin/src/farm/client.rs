//! [`FarmClient`]: the submitting side of the farm, with the surface of the in-process
//! [`crate::runtime::worker::GenerationWorker`] (submit answers at once with an id or a
//! [`SubmitError`], cancel by id or player, a channel of [`WorkerEvent`]s ending every accepted
//! request in exactly one terminal event), so the Bevy plugin and texgen drive either the same
//! way.
//!
//! `submit` blocks for one broker round trip (the publish acknowledgement): that is where the
//! broker refuses a player's (quota+1)-th request or the (bound+1)-th overall, so the refusal
//! holds across every game server publishing to the same stream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::message::PublishMessage as Publish;
use crossbeam_channel::{Receiver, Sender};

use super::schema::{self, JobMessage, SCHEMA_VERSION};
use super::topology::{self, Farm, FarmLimits, PriorityClass};
use crate::error::DiffusionError;
use crate::request::GenerationRequest;
use crate::runtime::worker::{RequestId, SubmitError, WorkerEvent, validate_submission};

mod follow;
use follow::follow;

/// Where the farm is and which model it serves.
#[derive(Debug, Clone)]
pub struct FarmSettings {
    /// The broker, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// The name of the model the farm's workers serve; part of every content hash.
    pub model: String,
    /// Limits used if this client creates the stream (an existing stream keeps its own).
    pub limits: FarmLimits,
    /// How long `submit` waits for the broker (connect + publish acknowledgement).
    pub submit_timeout: Duration,
}

impl FarmSettings {
    /// The farm at `url` serving model `default`, default limits, 5 s submit timeout.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            model: "default".into(),
            limits: FarmLimits::default(),
            submit_timeout: Duration::from_secs(5),
        }
    }
}

struct Tracked {
    hash: String,
    player: Option<String>,
    cancelled: bool,
    started: bool,
}

struct Shared {
    settings: FarmSettings,
    farm: tokio::sync::OnceCell<Farm>,
    events: Sender<WorkerEvent>,
    jobs: Mutex<HashMap<RequestId, Tracked>>,
    next_id: AtomicU64,
}

impl Shared {
    fn jobs(&self) -> std::sync::MutexGuard<'_, HashMap<RequestId, Tracked>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn farm(&self) -> crate::Result<&Farm> {
        self.farm
            .get_or_try_init(|| topology::ensure(&self.settings.url, self.settings.limits.clone()))
            .await
    }

    /// Sends `event` as the terminal event of `id` unless one was sent already.
    fn finish(&self, id: RequestId, event: WorkerEvent) {
        if self.jobs().remove(&id).is_some() {
            let _ = self.events.send(event);
        }
    }
}

/// A connection to the farm that submits requests and turns the workers' news into
/// [`WorkerEvent`]s. Dropping it stops following requests (they still run on the farm).
pub struct FarmClient {
    rt: Option<tokio::runtime::Runtime>,
    shared: Arc<Shared>,
    events: Receiver<WorkerEvent>,
}

fn farm_error(reason: impl Into<String>) -> Arc<DiffusionError> {
    Arc::new(DiffusionError::Farm {
        reason: reason.into(),
    })
}

impl FarmClient {
    /// Starts the client; it connects in the background and sends
    /// [`WorkerEvent::ModelLoaded`] (identity `farm:<model>@<url>`) or
    /// [`WorkerEvent::ModelFailed`]. Never blocks.
    pub fn spawn(settings: FarmSettings) -> crate::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("bevy_diffusion-farm")
            .enable_all()
            .build()
            .map_err(|e| DiffusionError::Farm {
                reason: format!("tokio runtime: {e}"),
            })?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared {
            settings,
            farm: tokio::sync::OnceCell::new(),
            events: tx,
            jobs: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        });
        let s = shared.clone();
        rt.spawn(async move {
            let event = match s.farm().await {
                Ok(_) => WorkerEvent::ModelLoaded {
                    identity: format!("farm:{}@{}", s.settings.model, s.settings.url),
                },
                Err(e) => WorkerEvent::ModelFailed { error: Arc::new(e) },
            };
            let _ = s.events.send(event);
        });
        Ok(Self {
            rt: Some(rt),
            shared,
            events: rx,
        })
    }

    /// [`FarmClient::spawn`], then waits until connected and set up (it takes the
    /// `ModelLoaded` event off the channel).
    ///
    /// Errors: [`DiffusionError::Farm`] when the broker cannot be reached (after
    /// [`topology::CONNECT_TIMEOUT`]) or does not set up the farm's stream and buckets within
    /// `submit_timeout` more.
    pub fn connect(settings: FarmSettings) -> crate::Result<Self> {
        let client = Self::spawn(settings)?;
        let timeout = client.shared.settings.submit_timeout + topology::CONNECT_TIMEOUT;
        match client.events.recv_timeout(timeout) {
            Ok(WorkerEvent::ModelLoaded { .. }) => Ok(client),
            Ok(WorkerEvent::ModelFailed { error }) => Err(DiffusionError::Farm {
                reason: match error.as_ref() {
                    DiffusionError::Farm { reason } => reason.clone(),
                    other => other.to_string(),
                },
            }),
            _ => Err(DiffusionError::Farm {
                reason: format!(
                    "the NATS server at {} did not set up the farm within {timeout:?}",
                    s_url(&client)
                ),
            }),
        }
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt
            .as_ref()
            .expect("the runtime lives until drop")
            .block_on(f)
    }

    /// Validates `request` ([`validate_submission`]) and publishes it; answers once the broker
    /// has stored it (or found it a duplicate of a job in flight, which this request then
    /// shares).
    ///
    /// Errors: [`SubmitError::PlayerQuota`] / [`SubmitError::QueueFull`] when the broker refuses
    /// it (the stream's per-player or global bound), [`SubmitError::InvalidRequest`],
    /// [`SubmitError::WorkerStopped`] when the broker is unreachable.
    pub fn submit(&self, request: GenerationRequest) -> Result<RequestId, SubmitError> {
        validate_submission(&request)?;
        let shared = self.shared.clone();
        let timeout = shared.settings.submit_timeout;
        let hash = schema::content_hash(&shared.settings.model, &request);
        let player = request.player.clone();
        let class = PriorityClass::of(request.priority);
        let subject = topology::job_subject(class, player.as_deref(), &hash);
        let id = RequestId::new(shared.next_id.fetch_add(1, Ordering::SeqCst));
        let submitted = Instant::now();
        let s = shared.clone();
        let h = hash.clone();
        let published = self.block_on(async move {
            let farm = tokio::time::timeout(timeout, s.farm())
                .await
                .map_err(|_| "connect timed out".to_string())?
                .map_err(|e| e.to_string())?;
            // Subscribed before publishing, so no event of this job can be missed.
            let sub = farm
                .client
                .subscribe(topology::events_subject(&h))
                .await
                .map_err(|e| e.to_string())?;
            let seed = request.seed;
            let job = JobMessage {
                v: SCHEMA_VERSION,
                hash: h.clone(),
                request,
                submitted_ms: schema::now_ms(),
            };
            let payload = serde_json::to_vec(&job).map_err(|e| e.to_string())?;
            let ack = farm
                .js
                .send_publish(
                    subject,
                    Publish::build().payload(payload.into()).message_id(&h),
                )
                .await
                .map_err(|e| e.to_string())?;
            let ack = tokio::time::timeout(timeout, ack)
                .await
                .map_err(|_| "publish acknowledgement timed out".to_string())?
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((sub, ack.duplicate, seed))
        });
        let (sub, duplicate, seed) = published.map_err(|reason| {
            // The broker's limits (read when connecting) are the ones that refused it.
            let limits = shared.farm.get().map(|f| &f.limits);
            let limits = limits.unwrap_or(&shared.settings.limits);
            refusal(&reason, player.as_deref(), limits)
        })?;
        shared.jobs().insert(
            id,
            Tracked {
                hash: hash.clone(),
                player,
                cancelled: false,
                started: false,
            },
        );
        let s = shared.clone();
        self.block_on(async move {
            tokio::spawn(follow(s, id, hash, sub, duplicate, seed, submitted));
        });
        Ok(id)
    }

    /// Cancels a request in flight: marks it in the KV bucket (a worker that pulls it ends it
    /// at once) and tells a worker running it (it stops within one step). True the first time
    /// for a request in flight. Requests sharing the job (same hash) are cancelled with it.
    pub fn cancel(&self, id: RequestId) -> bool {
        let hash = {
            let mut jobs = self.shared.jobs();
            match jobs.get_mut(&id) {
                Some(t) if !t.cancelled => {
                    t.cancelled = true;
                    t.hash.clone()
                }
                _ => return false,
            }
        };
        let s = self.shared.clone();
        self.block_on(async move {
            if let Ok(farm) = s.farm().await {
                let _ = farm
                    .state
                    .put(topology::cancel_key(&hash), "1".into())
                    .await;
                let _ = farm
                    .client
                    .publish(topology::cancel_subject(&hash), "cancel".into())
                    .await;
                let _ = farm.client.flush().await;
            }
        });
        true
    }

    /// Cancels every request of `player` in flight; returns how many were newly cancelled.
    pub fn cancel_player(&self, player: &str) -> usize {
        let ids: Vec<RequestId> = self
            .shared
            .jobs()
            .iter()
            .filter(|(_, t)| t.player.as_deref() == Some(player) && !t.cancelled)
            .map(|(id, _)| *id)
            .collect();
        ids.into_iter().filter(|id| self.cancel(*id)).count()
    }

    /// The event channel (poll it with `try_recv`, or block on `recv`).
    pub fn events(&self) -> &Receiver<WorkerEvent> {
        &self.events
    }

    /// Requests of this client in flight (their terminal event not yet sent).
    pub fn occupancy(&self) -> usize {
        self.shared.jobs().len()
    }

    /// True while `id` is in flight.
    pub fn is_in_flight(&self, id: RequestId) -> bool {
        self.shared.jobs().contains_key(&id)
    }

    /// The content hash request `id` is known by on the farm, while it is in flight.
    pub fn hash_of(&self, id: RequestId) -> Option<String> {
        self.shared.jobs().get(&id).map(|t| t.hash.clone())
    }
}

fn s_url(client: &FarmClient) -> String {
    client.shared.settings.url.clone()
}

impl Drop for FarmClient {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// The broker's refusal of a publish, as the in-process worker would say it.
fn refusal(reason: &str, player: Option<&str>, limits: &FarmLimits) -> SubmitError {
    let limit = |n: i64| usize::try_from(n).unwrap_or(0);
    if reason.contains("maximum messages per subject exceeded") {
        SubmitError::PlayerQuota {
            player: player.unwrap_or("(anonymous)").to_string(),
            queued: limit(limits.max_per_player),
            limit: limit(limits.max_per_player),
        }
    } else if reason.contains("maximum messages exceeded") {
        SubmitError::QueueFull {
            queued: limit(limits.max_queued),
            limit: limit(limits.max_queued),
        }
    } else {
        tracing::warn!("farm: submit failed: {reason}");
        SubmitError::WorkerStopped
    }
}
