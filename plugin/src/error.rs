//! The one error type of the core: every failure a user can cause names the file, field or
//! tensor, the value found, and what would be valid.

use std::path::PathBuf;

/// Everything that can go wrong while loading a model folder or generating an image.
///
/// Loading errors name the file (and tensor or config field); request errors name the
/// request field and its value. Nothing in the core panics on user input: a malformed
/// file or request always ends in one of these variants.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiffusionError {
    /// The model folder does not exist or is not a directory.
    #[error("model folder {path} does not exist or is not a directory")]
    ModelFolderMissing { path: PathBuf },

    /// A file the diffusers layout requires is absent.
    #[error("{path}: missing ({what})")]
    MissingFile { path: PathBuf, what: String },

    /// Weights stored as a Python pickle (`.bin`, `.ckpt`, `.pt`, `.pth`), which we never load.
    #[error(
        "{path}: pickled weights are refused (they can run arbitrary code); convert the model to \
         safetensors, e.g. with diffusers' `save_pretrained(..., safe_serialization=True)`"
    )]
    PickleWeights { path: PathBuf },

    /// LoRA tensors that match no module of the model (or follow neither the kohya nor the
    /// diffusers/PEFT naming): all of them, sorted; the message lists the first 20.
    #[error("{path}: {} LoRA tensor(s) match nothing in the model: {}", .keys.len(), list_keys(.keys))]
    LoraUnmatched { path: PathBuf, keys: Vec<String> },

    /// A LoRA module whose `up @ down` cannot patch the model's weight (a LoRA for another base
    /// model, e.g. SDXL on SD 1.5).
    #[error(
        "{path}: LoRA module `{key}` (down {down:?}, up {up:?}) does not fit the model's \
         `{weight}` of shape {expected:?}: {reason} (a LoRA for another base model?)"
    )]
    LoraShapeMismatch {
        path: PathBuf,
        key: String,
        down: Vec<usize>,
        up: Vec<usize>,
        weight: String,
        expected: Vec<usize>,
        reason: String,
    },

    /// A LoRA file, key or scale that cannot be used (missing up/down half, bad alpha,
    /// non-finite scale, unsupported kind such as DoRA).
    #[error("{path}: LoRA `{key}`: {reason}")]
    InvalidLora {
        path: PathBuf,
        key: String,
        reason: String,
    },

    /// A safetensors file that cannot be read: truncated, bad header, byte ranges that lie.
    #[error("{path}: invalid safetensors file: {reason}")]
    BadSafetensors { path: PathBuf, reason: String },

    /// A weight file larger than the configured size cap (a safeguard against mapping a wrong
    /// or corrupted multi-gigabyte file).
    #[error(
        "{path}: file is {size} bytes, over the {limit}-byte size cap (raise the cap if this \
         model really is that large)"
    )]
    FileTooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },

    /// A tensor the config implies is absent from the weight file.
    #[error("{path}: tensor `{tensor}` is missing (expected shape {expected:?})")]
    MissingTensor {
        path: PathBuf,
        tensor: String,
        expected: Vec<usize>,
    },

    /// Weight tensors no module of the configured model uses (CLIP's `position_ids` buffer and
    /// other known buffers excepted): the config does not describe these weights, e.g.
    /// `mid_block_type: null` or fewer `layers_per_block` than the checkpoint has. diffusers
    /// warns and runs a different network; we refuse, naming the first tensors.
    #[error(
        "{path}: {count} tensor(s) are not used by the model its config.json describes (first: \
         {first}); the config does not match these weights (check mid_block_type, \
         layers_per_block, transformer_layers_per_block and the block types)"
    )]
    UnexpectedTensors {
        path: PathBuf,
        count: usize,
        first: String,
    },

    /// A tensor whose shape disagrees with the one implied by config.json.
    #[error("{path}: tensor `{tensor}` has shape {found:?} but config.json implies {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    /// A config file that cannot be parsed or has an invalid value.
    #[error("{path}: field `{field}`: {reason}")]
    InvalidConfig {
        path: PathBuf,
        field: String,
        reason: String,
    },

    /// A config key whose feature we do not implement; refused rather than silently ignored.
    #[error("{path}: `{field}` = {value} is not supported by bevy_diffusion")]
    UnsupportedConfig {
        path: PathBuf,
        field: String,
        value: String,
    },

    /// A model family we recognise but cannot run yet (e.g. SDXL).
    #[error("{path}: {family} pipelines are not supported yet ({reason})")]
    UnsupportedModel {
        path: PathBuf,
        family: String,
        reason: String,
    },

    /// The tokenizer files could not be loaded or a prompt could not be tokenized.
    #[error("{path}: tokenizer error: {reason}")]
    Tokenizer { path: PathBuf, reason: String },

    /// A generation request with an invalid field.
    #[error("invalid request: `{field}` = {value}: {reason}")]
    InvalidRequest {
        field: &'static str,
        value: String,
        reason: String,
    },

    /// A scheduler name that is not one of ours.
    #[error(
        "unknown scheduler `{0}`; expected one of: ddim, euler, euler-a, dpmpp-2m, dpmpp-2m-karras, lcm"
    )]
    UnknownScheduler(String),

    /// An image file (e.g. the img2img init image) that cannot be read or has the wrong size.
    #[error("image {path}: {reason}")]
    Image { path: PathBuf, reason: String },

    /// The request was cancelled (between two model blocks, or before it started).
    #[error("cancelled")]
    Cancelled,

    /// Denoising produced NaN or infinite latents: the schedule, the guidance or explicit noise
    /// is out of range for this model, or the model itself is broken (`step` is the 1-based
    /// denoising step after which it was found, `scheduler` the scheduler that ran).
    #[error(
        "denoising produced non-finite latents (NaN/inf) after step {step} of {total} with the \
         {scheduler} scheduler: the schedule, guidance_scale or explicit noise is out of range \
         for this model, or its weights (or a LoRA merged into them) are broken; try another \
         scheduler, fewer steps or a lower guidance_scale"
    )]
    NonFiniteLatents {
        step: usize,
        total: usize,
        scheduler: String,
    },

    /// A stage other than denoising produced NaN or infinite values (`stage`: "prompt
    /// encoding", ...), with what to check.
    #[error("{stage} produced non-finite values (NaN/inf): {hint}")]
    NonFiniteOutput {
        /// The pipeline stage.
        stage: &'static str,
        /// What is likely broken and how to check it.
        hint: String,
    },

    /// The model a request needed failed to load (the load error is the source).
    #[error("the model failed to load: {0}")]
    ModelUnavailable(#[source] std::sync::Arc<DiffusionError>),

    /// A generator panicked while running a request (or while loading); the message is the
    /// panic's. Only that request fails; the worker keeps serving.
    #[error("{what} panicked: {message}")]
    Panicked { what: &'static str, message: String },

    /// A file-system error while reading or writing `path`.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A tensor operation failed (a shape bug or out of memory); not caused by user input.
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Shorthand for results of the core.
pub type Result<T, E = DiffusionError> = std::result::Result<T, E>;

impl DiffusionError {
    /// An [`DiffusionError::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// An [`DiffusionError::InvalidConfig`] for `path` and `field`.
    pub fn config(
        path: impl Into<PathBuf>,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self::InvalidConfig {
            path: path.into(),
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// The first 20 of `keys`, comma-separated, with a count of the rest.
fn list_keys(keys: &[String]) -> String {
    let shown: Vec<&str> = keys.iter().take(20).map(String::as_str).collect();
    match keys.len().saturating_sub(shown.len()) {
        0 => shown.join(", "),
        more => format!("{}, ... and {more} more", shown.join(", ")),
    }
}
