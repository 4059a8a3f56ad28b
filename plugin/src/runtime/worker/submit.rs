//! What [`super::GenerationWorker::submit`] answers at once: the request's model-free checks
//! ([`validate_submission`]) and the reasons a submission is refused ([`SubmitError`]).

use super::*;

/// Why a submission was refused at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// The queue holds `limit` requests (waiting or running) already.
    #[error("queue full: {queued} requests waiting or running (limit {limit})")]
    QueueFull {
        /// Requests waiting or running now.
        queued: usize,
        /// The limit that was reached.
        limit: usize,
    },
    /// The player has `limit` requests waiting or running already.
    #[error("player `{player}` has {queued} requests waiting or running (limit {limit})")]
    PlayerQuota {
        /// The player (`GenerationRequest::player`).
        player: String,
        /// Requests waiting or running now.
        queued: usize,
        /// The limit that was reached.
        limit: usize,
    },
    /// A field of the request is out of range (sizes, counts, init image bytes); checked before
    /// anything is allocated for it.
    #[error("invalid request: `{field}` = {value}: {reason}")]
    InvalidRequest {
        /// The config key or request field.
        field: &'static str,
        /// The value found, as written.
        value: String,
        /// Why, in words.
        reason: String,
    },
    /// The worker thread is gone.
    #[error("the generation worker has stopped")]
    WorkerStopped,
}

impl SubmitError {
    /// The reason as a short machine-readable word (`queue_full`, `player_quota`,
    /// `invalid_request`, `worker_stopped`), for counters and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::QueueFull { .. } => "queue_full",
            Self::PlayerQuota { .. } => "player_quota",
            Self::InvalidRequest { .. } => "invalid_request",
            Self::WorkerStopped => "worker_stopped",
        }
    }
}

/// The checks [`GenerationWorker::submit`] makes before accepting a request: the model-free
/// fields ([`GenerationRequest::validate`] with factor 1: sizes at most 4096, steps in
/// 1..=1000, guidance and strength in range, pixel-art counts), prompt lengths (at most 64 KiB
/// each: the tokenizer only reads 77 tokens), the byte counts of an in-memory init image
/// and mask, and the upscaled size of a request whose size comes from its in-memory init image.
///
/// Errors: [`SubmitError::InvalidRequest`] naming the field and value.
pub fn validate_submission(job: &GenerationRequest) -> Result<(), SubmitError> {
    let invalid = |e: DiffusionError| match e {
        DiffusionError::InvalidRequest {
            field,
            value,
            reason,
        } => SubmitError::InvalidRequest {
            field,
            value,
            reason,
        },
        other => SubmitError::InvalidRequest {
            field: "request",
            value: String::new(),
            reason: other.to_string(),
        },
    };
    job.validate(1).map_err(invalid)?;
    const MAX_PROMPT_BYTES: usize = 64 * 1024;
    for (field, text) in [
        ("prompt", job.prompt.as_str()),
        (
            "negative_prompt",
            job.negative_prompt.as_deref().unwrap_or(""),
        ),
    ] {
        if text.len() > MAX_PROMPT_BYTES {
            return Err(SubmitError::InvalidRequest {
                field,
                value: format!("{} bytes", text.len()),
                reason: format!("must be at most {MAX_PROMPT_BYTES} bytes"),
            });
        }
    }
    for (field, image) in [("init_image", &job.init_image), ("mask", &job.mask)] {
        let Some(crate::request::InitImage::Rgba {
            width,
            height,
            pixels,
        }) = image
        else {
            continue;
        };
        if *width == 0 || *height == 0 || *width > 16384 || *height > 16384 {
            return Err(SubmitError::InvalidRequest {
                field,
                value: format!("{width}x{height}"),
                reason: "must be 1..=16384 pixels on each side".into(),
            });
        }
        let expected = (*width as u64) * (*height as u64) * 4;
        if pixels.len() as u64 != expected {
            return Err(SubmitError::InvalidRequest {
                field,
                value: format!("{width}x{height} with {} bytes", pixels.len()),
                reason: format!("RGBA8 pixels must have width * height * 4 = {expected} bytes"),
            });
        }
    }
    // A size of 0 takes the in-memory init image's: its upscaled size is known now too
    // (`validate` checked the request's own sizes).
    if let Some(crate::request::InitImage::Rgba { width, height, .. }) = &job.init_image {
        let w = if job.width == 0 { *width } else { job.width };
        let h = if job.height == 0 { *height } else { job.height };
        crate::pipeline::upscale::check_upscaled_side(job.upscale, (w, h)).map_err(invalid)?;
    }
    Ok(())
}
