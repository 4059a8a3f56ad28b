//! The plugin's two systems: start the worker ([`super::DiffusionSystems::Start`]) and turn its news
//! into image updates and messages every frame ([`super::DiffusionSystems::Poll`]).

use std::collections::HashMap;

use bevy::asset::{AssetId, Assets};
use bevy::ecs::prelude::{MessageWriter, ResMut};
use bevy::ecs::system::SystemParam;
use bevy::image::Image;
use image::RgbaImage;

use super::images::to_bevy_image;
use super::messages::*;
use super::runtime::DiffusionRuntime;
use crate::request::AssetKind;
use crate::runtime::worker::{RequestId, WorkerEvent};

/// Starts the worker thread, which begins loading the model in the background.
pub(crate) fn start_worker(mut runtime: ResMut<DiffusionRuntime>) {
    runtime.start();
}

/// Every message the poll system writes.
#[derive(SystemParam)]
pub(crate) struct DiffusionWriters<'w> {
    ready: MessageWriter<'w, ModelReady>,
    load_failed: MessageWriter<'w, ModelLoadFailed>,
    started: MessageWriter<'w, GenerationStarted>,
    progress: MessageWriter<'w, GenerationProgress>,
    finished: MessageWriter<'w, GenerationFinished>,
    failed: MessageWriter<'w, GenerationFailed>,
    cancelled: MessageWriter<'w, GenerationCancelled>,
}

/// Drains up to [`super::DiffusionSettings::max_events_per_frame`] worker events (never blocks),
/// updates [`DiffusionStatus`], fills the requests' images and writes the messages; then cancels
/// the requests whose image nobody holds any more ([`super::DiffusionSettings::cancel_unused`]).
///
/// Previews are coalesced: only the newest preview of each request that is still running at the
/// end of the drain is written to its image, so a burst of steps costs one image update.
pub(crate) fn poll_worker(
    mut runtime: ResMut<DiffusionRuntime>,
    mut images: ResMut<Assets<Image>>,
    mut status: ResMut<DiffusionStatus>,
    mut out: DiffusionWriters,
) {
    let Some(events) = runtime.worker().map(|w| w.events().clone()) else {
        return;
    };
    let budget = runtime.settings().max_events_per_frame.max(1);
    let mut previews: HashMap<RequestId, RgbaImage> = HashMap::new();
    for _ in 0..budget {
        let Ok(event) = events.try_recv() else { break };
        match event {
            WorkerEvent::ModelLoaded { identity } => {
                tracing::info!("bevy_diffusion: model ready ({identity})");
                *status = DiffusionStatus::Ready {
                    identity: identity.clone(),
                };
                out.ready.write(ModelReady { identity });
            }
            WorkerEvent::ModelFailed { error } => {
                let reason = error.to_string();
                tracing::error!("bevy_diffusion: the model failed to load: {reason}");
                *status = DiffusionStatus::Failed {
                    reason: reason.clone(),
                };
                out.load_failed.write(ModelLoadFailed { error, reason });
            }
            WorkerEvent::Started { id } => {
                out.started.write(GenerationStarted { id });
            }
            WorkerEvent::Progress {
                id,
                step,
                total,
                preview,
            } => {
                if let Some(preview) = preview {
                    previews.insert(id, preview);
                }
                out.progress.write(GenerationProgress { id, step, total });
            }
            WorkerEvent::Finished {
                id,
                image,
                seed,
                elapsed,
                cached,
                truncated,
            } => {
                previews.remove(&id);
                let Some(job) = runtime.pending.remove(&id) else {
                    continue;
                };
                if let Some(note) = truncated.note() {
                    tracing::warn!("bevy_diffusion: request {id}: {note}");
                }
                store(&mut images, job.image, image, job.kind, id);
                // The game's handle keeps the image alive; without one (dropped while
                // `cancel_unused` is off, or after the last poll) there is nothing to announce.
                let Some(handle) = job.keep.or_else(|| images.get_strong_handle(job.image)) else {
                    continue;
                };
                out.finished.write(GenerationFinished {
                    id,
                    handle,
                    seed,
                    elapsed,
                    cached,
                    truncated,
                });
            }
            WorkerEvent::Failed { id, error } => {
                previews.remove(&id);
                runtime.pending.remove(&id);
                let reason = error.to_string();
                tracing::warn!("bevy_diffusion: request {id} failed: {reason}");
                out.failed.write(GenerationFailed { id, error, reason });
            }
            WorkerEvent::Cancelled { id } => {
                previews.remove(&id);
                runtime.pending.remove(&id);
                out.cancelled.write(GenerationCancelled { id });
            }
        }
    }
    for (id, preview) in previews {
        if let Some(job) = runtime.pending.get(&id) {
            store(&mut images, job.image, preview, job.kind, id);
        }
    }
    // Requests whose image is gone: every strong handle was dropped (Bevy's asset tracking
    // removed it), so nobody can see the result.
    let unused: Vec<RequestId> = runtime
        .pending
        .iter()
        .filter(|(_, p)| p.keep.is_none() && p.placeholder && !images.contains(p.image))
        .map(|(id, _)| *id)
        .collect();
    for id in unused {
        if runtime.cancel(id) {
            tracing::debug!("bevy_diffusion: request {id} cancelled: its image was dropped");
        }
    }
}

/// Replaces the image `id` in place (same handle, new pixels); nothing when it was dropped.
fn store(
    images: &mut Assets<Image>,
    image: AssetId<Image>,
    pixels: RgbaImage,
    kind: AssetKind,
    id: RequestId,
) {
    if !images.contains(image) {
        return;
    }
    if let Err(e) = images.insert(image, to_bevy_image(pixels, kind)) {
        tracing::warn!("bevy_diffusion: could not store the image of request {id}: {e}");
    }
}
