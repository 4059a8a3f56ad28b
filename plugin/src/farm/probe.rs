//! [`FarmProbe`]: a blocking look at a farm for operators, tests and benchmarks: the stream's
//! message and ack counts, the stored objects, and a feed of every job event on the wire.

use std::sync::Arc;

use crossbeam_channel::Receiver;
use futures_util::StreamExt;

use super::schema::{FarmEvent, JobState};
use super::topology::{self, Farm, FarmLimits, PriorityClass};
use crate::error::DiffusionError;

/// Counts of the jobs stream and its consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueState {
    /// Messages in the stream (waiting or running: a work queue drops a message once acked).
    pub messages: u64,
    /// Messages delivered to a worker and not yet acknowledged, over both consumers.
    pub ack_pending: u64,
    /// Messages not yet delivered, over both consumers.
    pub pending: u64,
}

/// A connection for looking at a farm (it creates the layout if missing).
pub struct FarmProbe {
    rt: tokio::runtime::Runtime,
    farm: Farm,
}

fn err(what: &str, e: impl std::fmt::Display) -> DiffusionError {
    DiffusionError::Farm {
        reason: format!("{what}: {e}"),
    }
}

impl FarmProbe {
    /// Connects to `url`.
    ///
    /// Errors: [`DiffusionError::Farm`] when the broker is unreachable.
    pub fn connect(url: &str, limits: FarmLimits) -> crate::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| err("tokio runtime", e))?;
        let farm = rt.block_on(async {
            tokio::time::timeout(
                std::time::Duration::from_secs(10),
                topology::ensure(url, limits),
            )
            .await
            .map_err(|e| err("connect", e))?
        })?;
        Ok(Self { rt, farm })
    }

    /// The stream's and consumers' counts now.
    pub fn queue(&self) -> crate::Result<QueueState> {
        let farm = self.farm.clone();
        self.rt.block_on(async move {
            let mut stream = farm.stream.clone();
            let messages = stream
                .info()
                .await
                .map_err(|e| err("stream info", e))?
                .state
                .messages;
            let mut q = QueueState {
                messages,
                ..Default::default()
            };
            for class in [PriorityClass::Interactive, PriorityClass::Batch] {
                let mut c = farm.consumer(class).await?;
                let info = c.info().await.map_err(|e| err("consumer info", e))?;
                q.ack_pending += info.num_ack_pending as u64;
                q.pending += info.num_pending;
            }
            Ok(q)
        })
    }

    /// Names (content hashes) of the objects in the results store.
    pub fn objects(&self) -> crate::Result<Vec<String>> {
        let farm = self.farm.clone();
        self.rt.block_on(async move {
            let mut list = farm
                .results
                .list()
                .await
                .map_err(|e| err("object list", e))?;
            let mut names = Vec::new();
            while let Some(info) = list.next().await {
                let info = info.map_err(|e| err("object list", e))?;
                if !info.deleted {
                    names.push(info.name);
                }
            }
            Ok(names)
        })
    }

    /// The KV state of job `hash`, if any.
    pub fn state(&self, hash: &str) -> crate::Result<Option<JobState>> {
        let farm = self.farm.clone();
        let hash = hash.to_string();
        self.rt.block_on(async move {
            match farm.state.get(hash).await.map_err(|e| err("kv get", e))? {
                Some(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
                None => Ok(None),
            }
        })
    }

    /// Every job event published from now on, as (hash, event), in arrival order. The feed
    /// lives as long as the probe.
    pub fn watch_events(&self) -> crate::Result<Receiver<(String, FarmEvent)>> {
        let client = self.farm.client.clone();
        let (tx, rx) = crossbeam_channel::unbounded();
        let tx = Arc::new(tx);
        let mut sub = self.rt.block_on(async move {
            let sub = client
                .subscribe("texgen.events.>")
                .await
                .map_err(|e| err("subscribe", e))?;
            client.flush().await.map_err(|e| err("flush", e))?;
            Ok::<_, DiffusionError>(sub)
        })?;
        self.rt.spawn(async move {
            while let Some(msg) = sub.next().await {
                let hash = msg.subject.as_str().trim_start_matches("texgen.events.");
                if let Ok(ev) = serde_json::from_slice::<FarmEvent>(&msg.payload)
                    && tx.send((hash.to_string(), ev)).is_err()
                {
                    return;
                }
            }
        });
        Ok(rx)
    }
}
