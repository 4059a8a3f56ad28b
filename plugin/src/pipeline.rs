//! STUB (owned by the lead): prompt -> pixels.
use crate::{GenerationRequest, Result, StableDiffusion};

/// The result of one generation.
pub struct GeneratedImage {
    /// RGBA8 pixels.
    pub image: image::RgbaImage,
}

/// Callbacks during generation.
pub trait GenerationHooks {}
/// No callbacks.
pub struct NoHooks;
impl GenerationHooks for NoHooks {}

/// Runs one request.
pub fn generate(model: &StableDiffusion, request: &GenerationRequest, hooks: &mut dyn GenerationHooks) -> Result<GeneratedImage> {
    let _ = (model, request, hooks);
    todo!()
}
