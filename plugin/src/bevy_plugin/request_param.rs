//! [`Diffusion`]: the system parameter through which any system asks for an image.

use bevy::asset::{Assets, Handle};
use bevy::ecs::prelude::{Res, ResMut};
use bevy::ecs::system::SystemParam;
use bevy::image::Image;

use super::images::placeholder;
use super::messages::DiffusionStatus;
use super::runtime::DiffusionRuntime;
use crate::request::GenerationRequest;
use crate::runtime::worker::{RequestId, SubmitError};

/// A submitted request: its id (for messages and cancel) and the image its pixels go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    /// The request's id, as in [`super::GenerationFinished::id`] and the other messages.
    pub id: RequestId,
    /// Valid at once (a placeholder of the request's size), then filled in place with previews
    /// and the final pixels.
    pub handle: Handle<Image>,
}

/// Ask for textures and sprites from any system:
///
/// ```no_run
/// # use bevy::prelude::*;
/// # use bevy_diffusion::{Diffusion, GenerationRequest};
/// fn request_wall(mut diffusion: Diffusion) {
///     match diffusion.submit(GenerationRequest::texture("mossy stone wall")) {
///         Ok(job) => info!("request {} -> {:?}", job.id, job.handle),
///         Err(reason) => warn!("refused: {reason}"),
///     }
/// }
/// ```
///
/// It borrows `Assets<Image>` mutably: a system that also needs the images reaches them through
/// [`Diffusion::images`] instead of a second `ResMut<Assets<Image>>`.
#[derive(SystemParam)]
pub struct Diffusion<'w> {
    runtime: ResMut<'w, DiffusionRuntime>,
    images: ResMut<'w, Assets<Image>>,
    status: Res<'w, DiffusionStatus>,
}

impl Diffusion<'_> {
    /// Queues `request` and answers at once: its id and an image handle that is valid from this
    /// frame (a placeholder of the request's size; size 0 = the model's native size, or
    /// [`super::DiffusionSettings::placeholder_size`] before it is known). The same handle later
    /// holds previews and the final pixels; [`super::GenerationFinished`] says when.
    ///
    /// Refused at once, with the reason, when the queue or the player's quota is full. A request
    /// the model cannot run (bad field, missing init image, model failed to load) is accepted and
    /// then ends in [`super::GenerationFailed`] with the reason.
    pub fn submit(&mut self, request: GenerationRequest) -> Result<Submitted, SubmitError> {
        let (width, height) = self.runtime.placeholder_size(&request);
        let kind = request.kind;
        let handle = self.images.reserve_handle();
        let id = self.runtime.submit(request, handle.clone())?;
        if let Err(e) = self
            .images
            .insert(handle.id(), placeholder(width, height, kind))
        {
            tracing::warn!("bevy_diffusion: could not store the placeholder of request {id}: {e}");
        }
        Ok(Submitted { id, handle })
    }

    /// Cancels request `id` (waiting: at once; running: before its next step). Returns false
    /// when it is not in flight. Its [`super::GenerationCancelled`] follows (or its finished
    /// message, if it ended first).
    pub fn cancel(&mut self, id: RequestId) -> bool {
        self.runtime.cancel(id)
    }

    /// Cancels every waiting or running request of `player`; returns how many were in flight.
    pub fn cancel_player(&mut self, player: &str) -> usize {
        self.runtime.cancel_player(player)
    }

    /// Where the model is: loading, ready, or failed with a reason.
    pub fn status(&self) -> &DiffusionStatus {
        &self.status
    }

    /// True once the model is loaded.
    pub fn is_ready(&self) -> bool {
        self.status.is_ready()
    }

    /// The image handle of request `id` while it is in flight.
    pub fn handle(&self, id: RequestId) -> Option<&Handle<Image>> {
        self.runtime.handle(id)
    }

    /// True while request `id` is in flight (its final message not yet written).
    pub fn is_in_flight(&self, id: RequestId) -> bool {
        self.runtime.handle(id).is_some()
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.runtime.in_flight()
    }

    /// The model's native output size once known.
    pub fn native_size(&self) -> Option<(u32, u32)> {
        self.runtime.native_size()
    }

    /// The image assets (this parameter holds them mutably).
    pub fn images(&mut self) -> &mut Assets<Image> {
        &mut self.images
    }
}
