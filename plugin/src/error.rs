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
    ModelFolderMissing {
        /// The file or folder concerned.
        path: PathBuf,
    },

    /// A file the diffusers layout requires is absent.
    #[error("{path}: missing ({what})")]
    MissingFile {
        /// The file or folder concerned.
        path: PathBuf,
        /// What the file is for (e.g. "the UNet config").
        what: String,
    },

    /// Weights stored as a Python pickle (`.bin`, `.ckpt`, `.pt`, `.pth`), which we never load.
    #[error(
        "{path}: pickled weights are refused (they can run arbitrary code); convert the model to \
         safetensors, e.g. with diffusers' `save_pretrained(..., safe_serialization=True)`"
    )]
    PickleWeights {
        /// The file or folder concerned.
        path: PathBuf,
    },

    /// LoRA tensors that match no module of the model (or follow neither the kohya nor the
    /// diffusers/PEFT naming): all of them, sorted; the message lists the first 20.
    #[error("{path}: {} LoRA tensor(s) match nothing in the model: {}", .keys.len(), list_keys(.keys))]
    LoraUnmatched {
        /// The file or folder concerned.
        path: PathBuf,
        /// Every unmatched LoRA tensor name, sorted.
        keys: Vec<String>,
    },

    /// A LoRA module whose `up @ down` cannot patch the model's weight (a LoRA for another base
    /// model, e.g. SDXL on SD 1.5).
    #[error(
        "{path}: LoRA module `{key}` (down {down:?}, up {up:?}) does not fit the model's \
         `{weight}` of shape {expected:?}: {reason} (a LoRA for another base model?)"
    )]
    LoraShapeMismatch {
        /// The file or folder concerned.
        path: PathBuf,
        /// The LoRA module or key.
        key: String,
        /// Shape of the `lora_down` (A) tensor.
        down: Vec<usize>,
        /// Shape of the `lora_up` (B) tensor.
        up: Vec<usize>,
        /// The model weight it would patch.
        weight: String,
        /// The shape the model expects.
        expected: Vec<usize>,
        /// Why, in words.
        reason: String,
    },

    /// A LoRA file, key or scale that cannot be used (missing up/down half, bad alpha,
    /// non-finite scale, unsupported kind such as DoRA).
    #[error("{path}: LoRA `{key}`: {reason}")]
    InvalidLora {
        /// The file or folder concerned.
        path: PathBuf,
        /// The LoRA module or key.
        key: String,
        /// Why, in words.
        reason: String,
    },

    /// A safetensors file that cannot be read: truncated, bad header, byte ranges that lie.
    #[error("{path}: invalid safetensors file: {reason}")]
    BadSafetensors {
        /// The file or folder concerned.
        path: PathBuf,
        /// Why, in words.
        reason: String,
    },

    /// A weight file larger than the configured size cap (a safeguard against mapping a wrong
    /// or corrupted multi-gigabyte file).
    #[error(
        "{path}: file is {size} bytes, over the {limit}-byte size cap (raise the cap if this \
         model really is that large)"
    )]
    FileTooLarge {
        /// The file or folder concerned.
        path: PathBuf,
        /// The file's size in bytes.
        size: u64,
        /// The size cap in bytes.
        limit: u64,
    },

    /// A tensor the config implies is absent from the weight file.
    #[error("{path}: tensor `{tensor}` is missing (expected shape {expected:?})")]
    MissingTensor {
        /// The file or folder concerned.
        path: PathBuf,
        /// The full dotted tensor name.
        tensor: String,
        /// The shape the model expects.
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
        /// The weight file (or shard index).
        path: PathBuf,
        /// How many stored tensors the model never asked for.
        count: usize,
        /// The first three of them, comma-separated (`, ...` when there are more).
        first: String,
    },

    /// A tensor whose shape disagrees with the one implied by config.json.
    #[error("{path}: tensor `{tensor}` has shape {found:?} but config.json implies {expected:?}")]
    ShapeMismatch {
        /// The file or folder concerned.
        path: PathBuf,
        /// The full dotted tensor name.
        tensor: String,
        /// The shape the model expects.
        expected: Vec<usize>,
        /// The shape stored in the file.
        found: Vec<usize>,
    },

    /// A config file that cannot be parsed or has an invalid value.
    #[error("{path}: field `{field}`: {reason}")]
    InvalidConfig {
        /// The file or folder concerned.
        path: PathBuf,
        /// The config key or request field.
        field: String,
        /// Why, in words.
        reason: String,
    },

    /// A config key whose feature we do not implement; refused rather than silently ignored.
    #[error("{path}: `{field}` = {value} is not supported by bevy_diffusion")]
    UnsupportedConfig {
        /// The file or folder concerned.
        path: PathBuf,
        /// The config key or request field.
        field: String,
        /// The value found, as written.
        value: String,
    },

    /// A model family we recognise but cannot run yet (e.g. SDXL).
    #[error("{path}: {family} pipelines are not supported yet ({reason})")]
    UnsupportedModel {
        /// The file or folder concerned.
        path: PathBuf,
        /// The model family (e.g. "SD3").
        family: String,
        /// Why, in words.
        reason: String,
    },

    /// A folder of another pipeline than the one asked for, which we do run in its own role: an
    /// x4 upscaler (`StableDiffusionUpscalePipeline`) where a text-to-image model is expected, or
    /// a text-to-image folder where an upscaler is.
    #[error("{path}: this is {what}, not {expected}; {instead}")]
    WrongPipeline {
        /// The folder's model_index.json.
        path: PathBuf,
        /// Its `_class_name` (e.g. "StableDiffusionUpscalePipeline").
        class: String,
        /// What the folder is, in words (naming `class`).
        what: String,
        /// What was expected, in words.
        expected: String,
        /// How to use the folder instead, in words.
        instead: String,
    },

    /// The tokenizer files could not be loaded or a prompt could not be tokenized.
    #[error("{path}: tokenizer error: {reason}")]
    Tokenizer {
        /// The file or folder concerned.
        path: PathBuf,
        /// Why, in words.
        reason: String,
    },

    /// A generation request with an invalid field.
    #[error("invalid request: `{field}` = {value}: {reason}")]
    InvalidRequest {
        /// The config key or request field.
        field: &'static str,
        /// The value found, as written.
        value: String,
        /// Why, in words.
        reason: String,
    },

    /// A scheduler name that is not one of ours.
    #[error(
        "unknown scheduler `{0}`; expected one of: ddim, euler, euler-a, dpmpp-2m, dpmpp-2m-karras, lcm"
    )]
    UnknownScheduler(String),

    /// An image file (e.g. the img2img init image) that cannot be read or has the wrong size.
    #[error("image {path}: {reason}")]
    Image {
        /// The file or folder concerned.
        path: PathBuf,
        /// Why, in words.
        reason: String,
    },

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
        /// The 1-based denoising step after which it was found.
        step: usize,
        /// Denoising steps of the request.
        total: usize,
        /// The scheduler that ran.
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
    Panicked {
        /// What panicked (e.g. "the generator", "the model loader").
        what: &'static str,
        /// The panic message.
        message: String,
    },

    /// The generation farm (feature `farm`) failed a request: the broker is unreachable, a
    /// worker reported an error (its message is `reason`), or the job ran out of deliveries.
    #[error("farm: {reason}")]
    Farm {
        /// What failed, as the broker or the worker reported it.
        reason: String,
    },

    /// A file-system error while reading or writing `path`.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder concerned.
        path: PathBuf,
        /// The underlying error.
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
