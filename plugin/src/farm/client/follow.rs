//! Following one submitted job: the farm's events (and, after a quiet while, its KV state)
//! turned into the [`WorkerEvent`]s of one request, ending in exactly one terminal event, with
//! the finished image fetched from the object store.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use super::{Shared, farm_error};
use crate::farm::schema::{self, FarmEvent, JobState};
use crate::farm::topology::Farm;
use crate::pipeline::PromptTruncation;
use crate::runtime::worker::{RequestId, WorkerEvent};

/// Follows job `hash` for request `id` until its terminal event.
pub(super) async fn follow(
    shared: Arc<Shared>,
    id: RequestId,
    hash: String,
    mut sub: async_nats::Subscriber,
    duplicate: bool,
    seed: u64,
    submitted: Instant,
) {
    let submitted_ms = schema::now_ms().saturating_sub(submitted.elapsed().as_millis() as u64);
    let Ok(farm) = shared.farm().await else {
        return shared.finish(
            id,
            WorkerEvent::Failed {
                id,
                error: farm_error("not connected"),
            },
        );
    };
    if duplicate {
        // A duplicate of a job that may have ended already: its state says so.
        if let Ok(Some(bytes)) = farm.state.get(hash.as_str()).await
            && let Ok(state) = serde_json::from_slice::<JobState>(&bytes)
            && let Some(terminal) = state.terminal
        {
            return deliver(&shared, farm, id, &hash, terminal, seed, submitted).await;
        }
    }
    loop {
        // Events are core NATS: one published while this client was reconnecting is gone, so
        // the KV state (written before every terminal event) is read after a quiet while.
        let msg = match tokio::time::timeout(Duration::from_secs(2), sub.next()).await {
            Ok(Some(msg)) => msg,
            Ok(None) => return,
            Err(_) => {
                if let Ok(Some(bytes)) = farm.state.get(hash.as_str()).await
                    && let Ok(state) = serde_json::from_slice::<JobState>(&bytes)
                    && let Some(terminal) = state.terminal
                    && (state.updated_ms + 500 >= submitted_ms)
                {
                    return deliver(&shared, farm, id, &hash, terminal, seed, submitted).await;
                }
                continue;
            }
        };
        let Ok(event) = serde_json::from_slice::<FarmEvent>(&msg.payload) else {
            continue;
        };
        if event.is_terminal() {
            return deliver(&shared, farm, id, &hash, event, seed, submitted).await;
        }
        let forward = match event {
            FarmEvent::Started { .. } => {
                let mut jobs = shared.jobs();
                match jobs.get_mut(&id) {
                    Some(t) if !t.started => {
                        t.started = true;
                        Some(WorkerEvent::Started { id })
                    }
                    _ => None,
                }
            }
            FarmEvent::Progress {
                step,
                total,
                preview_png,
                ..
            } => Some(WorkerEvent::Progress {
                id,
                step,
                total,
                preview: preview_png
                    .and_then(|png| image::load_from_memory(&png).ok())
                    .map(|img| img.to_rgba8()),
            }),
            _ => None,
        };
        if let Some(ev) = forward
            && shared.jobs().contains_key(&id)
        {
            let _ = shared.events.send(ev);
        }
    }
}

async fn deliver(
    shared: &Shared,
    farm: &Farm,
    id: RequestId,
    hash: &str,
    event: FarmEvent,
    seed: u64,
    submitted: Instant,
) {
    let out = match event {
        FarmEvent::Finished { cached, .. } => match fetch(farm, hash).await {
            Ok(image) => WorkerEvent::Finished {
                id,
                image,
                seed,
                elapsed: submitted.elapsed(),
                cached,
                truncated: PromptTruncation::default(),
            },
            Err(reason) => WorkerEvent::Failed {
                id,
                error: farm_error(reason),
            },
        },
        FarmEvent::Failed { reason, .. } => WorkerEvent::Failed {
            id,
            error: farm_error(reason),
        },
        _ => WorkerEvent::Cancelled { id },
    };
    shared.finish(id, out);
}

/// The finished image of `hash` from the object store.
async fn fetch(farm: &Farm, hash: &str) -> Result<image::RgbaImage, String> {
    use tokio::io::AsyncReadExt;
    let mut object = farm
        .results
        .get(hash)
        .await
        .map_err(|e| format!("result {hash} not in the object store: {e}"))?;
    let mut png = Vec::new();
    object
        .read_to_end(&mut png)
        .await
        .map_err(|e| format!("reading result {hash}: {e}"))?;
    image::load_from_memory(&png)
        .map(|i| i.to_rgba8())
        .map_err(|e| format!("result {hash} is not a PNG: {e}"))
}
