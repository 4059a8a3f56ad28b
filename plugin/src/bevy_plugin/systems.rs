//! The plugin's two systems: start the worker ([`super::DiffusionSet::Start`]) and turn its news
//! into image updates and messages every frame ([`super::DiffusionSet::Poll`]).

use std::collections::HashMap;

use bevy::asset::{Assets, Handle};
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
/// updates [`DiffusionStatus`], fills the requests' images and writes the messages.
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
            WorkerEvent::ModelFailed { reason } => {
                tracing::error!("bevy_diffusion: the model failed to load: {reason}");
                *status = DiffusionStatus::Failed {
                    reason: reason.clone(),
                };
                out.load_failed.write(ModelLoadFailed { reason });
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
            } => {
                previews.remove(&id);
                let Some(job) = runtime.pending.remove(&id) else {
                    continue;
                };
                store(&mut images, &job.handle, image, job.kind, id);
                out.finished.write(GenerationFinished {
                    id,
                    handle: job.handle,
                    seed,
                    elapsed,
                    cached,
                });
            }
            WorkerEvent::Failed { id, reason } => {
                previews.remove(&id);
                runtime.pending.remove(&id);
                tracing::warn!("bevy_diffusion: request {id} failed: {reason}");
                out.failed.write(GenerationFailed { id, reason });
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
            store(&mut images, &job.handle, preview, job.kind, id);
        }
    }
}

/// Replaces the image behind `handle` in place (same handle, new pixels).
fn store(
    images: &mut Assets<Image>,
    handle: &Handle<Image>,
    pixels: RgbaImage,
    kind: AssetKind,
    id: RequestId,
) {
    if let Err(e) = images.insert(handle.id(), to_bevy_image(pixels, kind)) {
        tracing::warn!("bevy_diffusion: could not store the image of request {id}: {e}");
    }
}
