//! [`Diffusion`]: the system parameter through which any system asks for an image.

use bevy::asset::{AssetId, Assets, Handle};
use bevy::ecs::prelude::{Commands, Res, ResMut, World};
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
    /// Valid at once (a placeholder of the request's size is in `Assets<Image>` once the
    /// submitting system's commands are applied), then filled in place with previews and the
    /// final pixels. Dropping every clone of it cancels the request.
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
/// It does not borrow `Assets<Image>`, so a system may hold its own `ResMut<Assets<Image>>`
/// beside it; the placeholder image is inserted through `Commands` when the system's commands
/// are applied.
#[derive(SystemParam)]
pub struct Diffusion<'w, 's> {
    runtime: ResMut<'w, DiffusionRuntime>,
    status: Res<'w, DiffusionStatus>,
    commands: Commands<'w, 's>,
}

impl Diffusion<'_, '_> {
    /// Queues `request` and answers at once: its id and an image handle that is valid from this
    /// frame (a placeholder of the request's size; size 0 = the model's native size, or
    /// [`super::DiffusionSettings::placeholder_size`] before it is known). The same handle later
    /// holds previews and the final pixels; [`super::GenerationFinished`] says when. Dropping
    /// every clone of the handle cancels the request
    /// ([`super::DiffusionSettings::cancel_unused`]).
    ///
    /// Refused at once, with the reason, when a size or count is out of range
    /// ([`SubmitError::InvalidRequest`]: checked before anything is allocated, so
    /// `u32::MAX x u32::MAX` costs nothing), or the queue or the player's quota is full. A
    /// request the model cannot run (a size that is not a multiple of the model's VAE factor
    /// `f`, a missing init image, the model failed to load) is accepted and then ends in
    /// [`super::GenerationFailed`] with the reason.
    pub fn submit(&mut self, request: GenerationRequest) -> Result<Submitted, SubmitError> {
        crate::runtime::worker::validate_submission(&request)?;
        let (width, height) = self.runtime.placeholder_size(&request);
        let kind = request.kind;
        let handle = self.runtime.reserve_image()?;
        let id = self.runtime.submit(request, &handle, false)?;
        let image = handle.id();
        self.commands.queue(move |world: &mut World| {
            let placeholder = placeholder(width, height, kind);
            if let Some(mut images) = world.get_resource_mut::<Assets<Image>>()
                && let Err(e) = images.insert(image, placeholder)
            {
                tracing::warn!(
                    "bevy_diffusion: could not store the placeholder of request {id}: {e}"
                );
            }
            if let Some(mut runtime) = world.get_resource_mut::<DiffusionRuntime>() {
                runtime.placeholder_stored(id);
            }
        });
        Ok(Submitted { id, handle })
    }

    /// Cancels request `id` (waiting: at once; running: at its next model block). True the
    /// first time for a request in flight; false when it is not in flight or was already
    /// cancelled. Its [`super::GenerationCancelled`] follows (or its finished message, if it
    /// ended first).
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

    /// The image of request `id` while it is in flight.
    pub fn image(&self, id: RequestId) -> Option<AssetId<Image>> {
        self.runtime.image(id)
    }

    /// True while request `id` is in flight (its final message not yet written).
    pub fn is_in_flight(&self, id: RequestId) -> bool {
        self.runtime.image(id).is_some()
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.runtime.in_flight()
    }

    /// The model's native output size once known.
    pub fn native_size(&self) -> Option<(u32, u32)> {
        self.runtime.native_size()
    }
}
