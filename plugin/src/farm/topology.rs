//! The farm's JetStream layout: one work-queue stream of jobs (two priority subjects, one
//! subject per player under each so the broker enforces quotas), two durable pull consumers,
//! a KV bucket of job states and an object store of finished PNGs. docs/farm.md draws it.
//!
//! Every name lives here; [`ensure`] creates what is missing (idempotent, first creator's
//! limits win).

use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, object_store, stream};

use crate::error::DiffusionError;

/// The work-queue stream of jobs.
pub const JOBS_STREAM: &str = "TEXGEN_JOBS";
/// Subjects of the jobs stream: `texgen.jobs.<class>.<player token>`.
pub const JOBS_SUBJECTS: &str = "texgen.jobs.>";
/// KV bucket of job states (key = content hash) and cancel marks (`<hash>.cancel`).
pub const STATE_BUCKET: &str = "texgen_jobs";
/// Object store of finished PNGs (object name = content hash).
pub const RESULTS_BUCKET: &str = "texgen_results";

/// The two priority classes: workers drain `interactive` before `batch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PriorityClass {
    /// A player waits on it (requests with `priority >= 0`).
    Interactive,
    /// Baking and prefetching (`priority < 0`).
    Batch,
}

impl PriorityClass {
    /// `priority >= 0` is interactive, below 0 batch.
    pub fn of(priority: i32) -> Self {
        if priority >= 0 {
            Self::Interactive
        } else {
            Self::Batch
        }
    }

    /// The subject token and consumer name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Interactive => "interactive",
            Self::Batch => "batch",
        }
    }
}

/// The broker-enforced limits of a farm. The first process that creates the stream fixes
/// them; later ones reuse what exists.
#[derive(Debug, Clone)]
pub struct FarmLimits {
    /// Jobs waiting or running over all players (the stream's `max_msgs`, discard new): the
    /// (bound+1)-th publish is refused by the broker.
    pub max_queued: i64,
    /// Jobs waiting or running per player and class (`max_msgs_per_subject` with
    /// `discard_new_per_subject` on the player's subject).
    pub max_per_player: i64,
    /// How long a worker may stay silent before its job is redelivered; workers send an
    /// in-progress ack every step and every `ack_wait / 3`.
    pub ack_wait: Duration,
    /// Runs a job gets before it ends `Failed` (a crash counts as a run). The consumers allow
    /// one delivery more, which only records the failure.
    pub max_deliveries: u32,
    /// Window in which a second publish of the same content hash is de-duplicated.
    pub duplicate_window: Duration,
    /// Largest job message (a request with an in-memory init image is the big one), bytes.
    pub max_message_bytes: i32,
}

impl Default for FarmLimits {
    fn default() -> Self {
        Self {
            max_queued: 10_000,
            max_per_player: 8,
            ack_wait: Duration::from_secs(30),
            max_deliveries: 3,
            duplicate_window: Duration::from_secs(120),
            max_message_bytes: 8 * 1024 * 1024,
        }
    }
}

/// Handles on the farm's stream, consumers and buckets.
#[derive(Clone)]
pub struct Farm {
    /// The core NATS connection (events, cancels).
    pub client: async_nats::Client,
    /// JetStream on it.
    pub js: jetstream::Context,
    /// The jobs stream [`JOBS_STREAM`].
    pub stream: stream::Stream,
    /// The KV bucket [`STATE_BUCKET`].
    pub state: kv::Store,
    /// The object store [`RESULTS_BUCKET`].
    pub results: object_store::ObjectStore,
    /// The limits the broker holds (read from the stream).
    pub limits: FarmLimits,
}

fn farm_err(what: &str, e: impl std::fmt::Display) -> DiffusionError {
    DiffusionError::Farm {
        reason: format!("{what}: {e}"),
    }
}

/// How long [`ensure`] waits for the first connection to the broker.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to `url` (waiting at most [`CONNECT_TIMEOUT`] for the first connection; later
/// disconnects are retried for ever) and creates whatever of the layout is missing.
///
/// Errors: [`DiffusionError::Farm`] naming the step that failed (connect, stream, bucket); an
/// unreachable broker is `cannot reach the NATS server at <url> within 5 s` (never a hang).
pub async fn ensure(url: &str, limits: FarmLimits) -> crate::Result<Farm> {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(CONNECT_TIMEOUT)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connect(url)
        .await
        .map_err(|e| farm_err(&format!("connecting to {url}"), e))?;
    // With retry_on_initial_connect the client answers at once and connects in the
    // background: wait (bounded) for the first connection, so that a wrong URL or a broker
    // that is down is one clear error, not a JetStream request timing out later.
    let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    while client.connection_state() != async_nats::connection::State::Connected {
        if tokio::time::Instant::now() >= deadline {
            return Err(DiffusionError::Farm {
                reason: format!(
                    "cannot reach the NATS server at {url} within {} s (is `nats-server -js` \
                     running there?)",
                    CONNECT_TIMEOUT.as_secs()
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let js = jetstream::new(client.clone());
    let stream = js
        .get_or_create_stream(stream::Config {
            name: JOBS_STREAM.into(),
            subjects: vec![JOBS_SUBJECTS.into()],
            retention: stream::RetentionPolicy::WorkQueue,
            max_messages: limits.max_queued,
            max_messages_per_subject: limits.max_per_player,
            discard: stream::DiscardPolicy::New,
            discard_new_per_subject: true,
            duplicate_window: limits.duplicate_window,
            max_message_size: limits.max_message_bytes,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| farm_err("creating stream TEXGEN_JOBS", e))?;
    for class in [PriorityClass::Interactive, PriorityClass::Batch] {
        stream
            .get_or_create_consumer(
                class.as_str(),
                consumer::pull::Config {
                    durable_name: Some(class.as_str().into()),
                    filter_subject: format!("texgen.jobs.{}.>", class.as_str()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: limits.ack_wait,
                    max_deliver: i64::from(limits.max_deliveries) + 1,
                    max_ack_pending: 10_000,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| farm_err(&format!("creating consumer {}", class.as_str()), e))?;
    }
    // The bucket's stream as async-nats' `create_key_value` builds it, created directly:
    // that call first queries the account, whose reply from nats-server 2.9 this client
    // version cannot parse.
    let state = match js.get_key_value(STATE_BUCKET).await {
        Ok(kv) => kv,
        Err(_) => {
            js.get_or_create_stream(stream::Config {
                name: format!("KV_{STATE_BUCKET}"),
                subjects: vec![format!("$KV.{STATE_BUCKET}.>")],
                max_messages_per_subject: 1,
                max_age: Duration::from_secs(24 * 3600),
                storage: stream::StorageType::File,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                discard: stream::DiscardPolicy::New,
                num_replicas: 1,
                ..Default::default()
            })
            .await
            .map_err(|e| farm_err("creating KV bucket texgen_jobs", e))?;
            js.get_key_value(STATE_BUCKET)
                .await
                .map_err(|e| farm_err("opening KV bucket texgen_jobs", e))?
        }
    };
    let results = match js.get_object_store(RESULTS_BUCKET).await {
        Ok(store) => store,
        Err(_) => js
            .create_object_store(object_store::Config {
                bucket: RESULTS_BUCKET.into(),
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| farm_err("creating object store texgen_results", e))?,
    };
    // The broker's limits are the ones that hold (the stream may predate these settings).
    let mut limits = limits;
    let config = &stream.cached_info().config;
    limits.max_queued = config.max_messages;
    limits.max_per_player = config.max_messages_per_subject;
    limits.duplicate_window = config.duplicate_window;
    Ok(Farm {
        client,
        js,
        stream,
        state,
        results,
        limits,
    })
}

impl Farm {
    /// The pull consumer of `class`.
    pub async fn consumer(
        &self,
        class: PriorityClass,
    ) -> crate::Result<consumer::Consumer<consumer::pull::Config>> {
        self.stream
            .get_consumer(class.as_str())
            .await
            .map_err(|e| farm_err(&format!("consumer {}", class.as_str()), e))
    }
}

/// `texgen.jobs.<class>.<token>`: one subject per player (token = `p` + 32 hex of blake3 of the
/// player name, so any name is a valid subject token), or per job for anonymous requests
/// (`a` + the hash), which then only count against the global bound.
pub fn job_subject(class: PriorityClass, player: Option<&str>, hash: &str) -> String {
    let token = match player {
        Some(p) => format!("p{}", &blake3::hash(p.as_bytes()).to_hex()[..32]),
        None => format!("a{hash}"),
    };
    format!("texgen.jobs.{}.{token}", class.as_str())
}

/// Core-NATS subject of a job's progress and terminal events.
pub fn events_subject(hash: &str) -> String {
    format!("texgen.events.{hash}")
}

/// Core-NATS subject a cancel of a running job goes to.
pub fn cancel_subject(hash: &str) -> String {
    format!("texgen.cancel.{hash}")
}

/// KV key of a job's cancel mark (read by a worker before it starts the job).
pub fn cancel_key(hash: &str) -> String {
    format!("{hash}.cancel")
}
