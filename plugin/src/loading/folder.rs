//! The diffusers folder layout of a Stable Diffusion pipeline, checked without loading weights.
//!
//! ```text
//! model_index.json                      `_class_name` (e.g. "StableDiffusionPipeline") + components
//! text_encoder/config.json + model.safetensors                    (transformers CLIPTextModel)
//! unet/config.json + diffusion_pytorch_model.safetensors          (UNet2DConditionModel)
//! vae/config.json + diffusion_pytorch_model.safetensors           (AutoencoderKL)
//! tokenizer/tokenizer.json (or vocab.json + merges.txt), tokenizer_config.json
//! scheduler/scheduler_config.json
//! SDXL also: text_encoder_2/ (CLIPTextModelWithProjection) and tokenizer_2/
//! ```
//!
//! A folder is SDXL when model_index.json names a `StableDiffusionXL*` pipeline or lists a
//! `text_encoder_2`, when it has a `text_encoder_2/`, or when its UNet config has
//! `addition_embed_type: "text_time"`; it then needs `text_encoder_2/` and `tokenizer_2/`
//! (a missing one is [`DiffusionError::MissingFile`] naming it).
//!
//! Weight files are looked up the way diffusers' `from_pretrained` does: `<stem>.safetensors`,
//! or a sharded `<stem>.safetensors.index.json` (its `weight_map` maps tensor names to shard
//! files in the same folder); the `fp16` variant (`<stem>.fp16.safetensors`,
//! `<stem>.safetensors.index.fp16.json`) only when asked for, or when it is the only safetensors
//! file (it is converted to f32 on load). Pickled weights (`.bin`, `.ckpt`, `.pt`, `.pth`) are
//! refused with [`DiffusionError::PickleWeights`].
//!
//! [`validate`] collects every problem (for `texgen inspect`); [`ModelFolder::open`] returns the
//! first one as a typed error (for [`crate::StableDiffusion::load`]).

use std::fmt;
use std::path::{Path, PathBuf};

use crate::configuration_utils::JsonConfig;
use crate::error::{DiffusionError, Result};
use crate::loading::weights::{SafetensorsHeader, WeightFiles, read_header};

mod checks;
mod identity;
use checks::*;
use identity::identity;

mod pipeline_loading_utils;
pub use pipeline_loading_utils::*;

/// The default cap on the size of one weight file: 20 GiB (the largest SD 1.x/2.x f32 UNet is
/// 3.5 GB).
pub const DEFAULT_MAX_FILE_BYTES: u64 = 20 * 1024 * 1024 * 1024;

/// Extensions of pickled PyTorch checkpoints, which can run arbitrary code when loaded.
pub const PICKLE_EXTENSIONS: [&str; 4] = ["bin", "ckpt", "pt", "pth"];

/// The pipeline classes (model_index.json `_class_name`) we run: one CLIP text encoder (two for
/// SDXL), a `UNet2DConditionModel`, an `AutoencoderKL`.
pub const SUPPORTED_PIPELINES: [&str; 7] = [
    "StableDiffusionPipeline",
    "StableDiffusionImg2ImgPipeline",
    "StableDiffusionInpaintPipeline",
    "LatentConsistencyModelPipeline",
    "LatentConsistencyModelImg2ImgPipeline",
    "StableDiffusionXLPipeline",
    "StableDiffusionXLImg2ImgPipeline",
];

/// model_index.json `_class_name` of an x4 upscaler folder (diffusers'
/// `StableDiffusionUpscalePipeline`): loaded as an upscaler (`LoadOptions::upscaler`), never
/// as the text-to-image model.
pub const UPSCALER_PIPELINE: &str = "StableDiffusionUpscalePipeline";

/// How an x4 upscaler folder is used instead of as the text-to-image model (the refusals of
/// the folder loader and of the hub download both say it).
pub const UPSCALER_USE: &str = "give it as the upscaler of a text-to-image model (`texgen \
     generate --model MODEL --upscaler DIR --upscale 4`, `LoadOptions::upscaler`), or upscale an \
     image with it (`texgen upscale --model DIR --in PNG --out PNG`)";

/// Which Stable Diffusion generation a folder holds (for defaults and messages; the configs
/// drive the actual computation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelFamily {
    /// SD 1.x: CLIP ViT-L/14 text encoder (hidden 768), cross_attention_dim 768; also the tiny
    /// random test pipelines of the same layout (any width other than 1024).
    Sd1,
    /// SD 2.x: OpenCLIP ViT-H text encoder (hidden 1024), cross_attention_dim 1024; 768-px models
    /// predict `v_prediction`.
    Sd2,
    /// SD-Turbo (adversarially distilled SD 2.1: 1-4 steps, no guidance): the SD 2.x architecture
    /// with a `trailing`, epsilon-predicting scheduler config, or "turbo" in the folder path.
    SdTurbo,
    /// A pruned / distilled SD 1.x/2.x (SDXS-512, BK-SDM, segmind small-sd / tiny-sd): a UNet
    /// without a mid block (`mid_block_type: null`) or with per-block `layers_per_block` lists,
    /// or an `AutoencoderTiny` (TAESD) as the `vae`.
    SdxsPruned,
    /// SDXL: two text encoders (CLIP ViT-L + OpenCLIP bigG), `text_time` added conditioning,
    /// 1024 px (see [`crate::pipeline::sdxl`]).
    Sdxl,
    /// SDXL-Turbo (adversarially distilled SDXL: 1-4 steps, no guidance, 512 px): the SDXL
    /// architecture with a `trailing`, epsilon-predicting scheduler config, or "turbo" in the
    /// folder path.
    SdxlTurbo,
}

impl ModelFamily {
    /// "SD1.x", "SD2.x", "SD-Turbo", "SDXS/pruned", "SDXL" or "SDXL-Turbo".
    pub fn name(self) -> &'static str {
        match self {
            Self::Sd1 => "SD1.x",
            Self::Sd2 => "SD2.x",
            Self::SdTurbo => "SD-Turbo",
            Self::SdxsPruned => "SDXS/pruned",
            Self::Sdxl => "SDXL",
            Self::SdxlTurbo => "SDXL-Turbo",
        }
    }

    /// SDXL or SDXL-Turbo (two text encoders, `text_time` conditioning).
    pub fn is_sdxl(self) -> bool {
        matches!(self, Self::Sdxl | Self::SdxlTurbo)
    }

    /// The sampling settings the family is distilled for, used when a folder has no
    /// `bevy_diffusion.json`: SD-Turbo and SDXL-Turbo 1 step, guidance 0, 512x512 (their model
    /// cards); SDXS with its `AutoencoderTiny` vae (`tiny_vae`) 1 step, guidance 0. Other
    /// families have none (the request defaults apply: 20 steps, guidance 7.5).
    pub fn default_settings(self, tiny_vae: bool) -> crate::request::RecommendedSettings {
        let one_step = crate::request::RecommendedSettings {
            num_inference_steps: Some(1),
            guidance_scale: Some(0.0),
            ..Default::default()
        };
        match self {
            Self::SdTurbo | Self::SdxlTurbo => crate::request::RecommendedSettings {
                width: Some(512),
                height: Some(512),
                ..one_step
            },
            Self::SdxsPruned if tiny_vae => one_step,
            _ => Default::default(),
        }
    }
}

impl fmt::Display for ModelFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A model component with a config and weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ComponentKind {
    /// `text_encoder/` (transformers `CLIPTextModel`, weights `model.safetensors`).
    TextEncoder,
    /// `unet/` (diffusers `UNet2DConditionModel`, weights `diffusion_pytorch_model.safetensors`).
    Unet,
    /// `vae/` (diffusers `AutoencoderKL` or `AutoencoderTiny`, weights
    /// `diffusion_pytorch_model.safetensors`).
    Vae,
    /// `text_encoder_2/` of SDXL (transformers `CLIPTextModelWithProjection`, weights
    /// `model.safetensors`).
    TextEncoder2,
}

impl ComponentKind {
    /// The three every pipeline has, in loading order.
    pub const ALL: [Self; 3] = [Self::TextEncoder, Self::Unet, Self::Vae];
    /// SDXL's four, in folder order (`text_encoder_2` last).
    pub const SDXL: [Self; 4] = [Self::TextEncoder, Self::Unet, Self::Vae, Self::TextEncoder2];

    /// [`Self::SDXL`] for SDXL folders, else [`Self::ALL`].
    pub fn for_folder(sdxl: bool) -> &'static [Self] {
        if sdxl { &Self::SDXL } else { &Self::ALL }
    }

    /// The subfolder name (and model_index.json key).
    pub fn dir_name(self) -> &'static str {
        match self {
            Self::TextEncoder => "text_encoder",
            Self::TextEncoder2 => "text_encoder_2",
            Self::Unet => "unet",
            Self::Vae => "vae",
        }
    }

    /// The weight file name without extension (`model` for transformers, else diffusers').
    pub fn weights_stem(self) -> &'static str {
        match self {
            Self::TextEncoder | Self::TextEncoder2 => "model",
            Self::Unet | Self::Vae => "diffusion_pytorch_model",
        }
    }

    /// The class names model_index.json may give this component.
    fn accepted_classes(self) -> &'static [&'static str] {
        match self {
            Self::TextEncoder => &["CLIPTextModel", "CLIPTextModelWithProjection"],
            Self::TextEncoder2 => &["CLIPTextModelWithProjection"],
            Self::Unet => &["UNet2DConditionModel"],
            Self::Vae => &["AutoencoderKL", "AutoencoderTiny"],
        }
    }
}

impl fmt::Display for ComponentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.dir_name())
    }
}

/// One component's files.
#[derive(Debug, Clone)]
pub struct Component {
    /// Which one.
    pub kind: ComponentKind,
    /// `<folder>/<dir_name>`.
    pub dir: PathBuf,
    /// `<dir>/config.json`.
    pub config: PathBuf,
    /// The weight file(s), headers validated.
    pub weights: WeightFiles,
}

/// How to look at a folder.
#[derive(Debug, Clone)]
pub struct FolderOptions {
    /// Use the `fp16` variant when both it and the full-precision file exist.
    pub prefer_fp16_variant: bool,
    /// Refuse weight files larger than this ([`DiffusionError::FileTooLarge`]).
    pub max_file_bytes: u64,
}

impl Default for FolderOptions {
    fn default() -> Self {
        Self {
            prefer_fp16_variant: false,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
        }
    }
}

/// A checked diffusers-layout Stable Diffusion folder: every file present, weight headers valid.
#[derive(Debug, Clone)]
pub struct ModelFolder {
    /// The folder.
    pub dir: PathBuf,
    /// model_index.json `_class_name`.
    pub class_name: String,
    /// The detected family.
    pub family: ModelFamily,
    /// `text_encoder/`.
    pub text_encoder: Component,
    /// `unet/`.
    pub unet: Component,
    /// `vae/`.
    pub vae: Component,
    /// `tokenizer/`.
    pub tokenizer_dir: PathBuf,
    /// SDXL: `text_encoder_2/` (`None` for SD 1.x/2.x).
    pub text_encoder_2: Option<Component>,
    /// SDXL: `tokenizer_2/`.
    pub tokenizer_2_dir: Option<PathBuf>,
    /// model_index.json `force_zeros_for_empty_prompt` (SDXL; diffusers' default true).
    pub force_zeros_for_empty_prompt: bool,
    /// `scheduler/scheduler_config.json`.
    pub scheduler_config: PathBuf,
    /// blake3 (hex) of the model_index, component, scheduler and tokenizer files and of each
    /// weight file's size and header (names, dtypes, shapes, offsets), with folder-relative names:
    /// equal for copies of the same model wherever they are, different when a config or a weight
    /// file's layout differs. Caches key on it.
    pub identity: String,
}

impl ModelFolder {
    /// Checks the folder at `dir` (see [`validate`]; the tokenizer is not parsed here) and returns
    /// its layout.
    ///
    /// # Errors
    /// The first problem [`validate`] would list: [`DiffusionError::ModelFolderMissing`],
    /// [`DiffusionError::MissingFile`] naming the absent file, [`DiffusionError::UnsupportedModel`]
    /// (SD3, FLUX, SDXL inpainting, ...), [`DiffusionError::PickleWeights`],
    /// [`DiffusionError::BadSafetensors`], [`DiffusionError::FileTooLarge`],
    /// [`DiffusionError::InvalidConfig`] (a config that is not JSON, inconsistent widths), ...
    pub fn open(dir: &Path, options: &FolderOptions) -> Result<Self> {
        let mut report = inspect(dir, options, false);
        match report.folder {
            Some(folder) if report.problems.is_empty() => Ok(folder),
            _ if !report.problems.is_empty() => Err(report.problems.remove(0)),
            _ => Err(DiffusionError::ModelFolderMissing {
                path: dir.to_path_buf(),
            }),
        }
    }

    /// The components, in loading order (`text_encoder_2` last, for SDXL).
    pub fn components(&self) -> Vec<&Component> {
        let mut all = vec![&self.text_encoder, &self.unet, &self.vae];
        all.extend(self.text_encoder_2.as_ref());
        all
    }
}

/// What [`validate`] found.
#[derive(Debug)]
pub struct FolderReport {
    /// The folder looked at.
    pub dir: PathBuf,
    /// model_index.json `_class_name`, when readable.
    pub class_name: Option<String>,
    /// The detected family, when the configs allowed detecting it.
    pub family: Option<ModelFamily>,
    /// Every problem found, in folder order (model_index, text_encoder, unet, vae, tokenizer,
    /// scheduler); empty if the folder is loadable as far as files go.
    pub problems: Vec<DiffusionError>,
    /// The layout, when there are no problems.
    pub folder: Option<ModelFolder>,
}

impl FolderReport {
    /// True when no problem was found.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks a diffusers-layout folder and lists **all** problems, without loading any weights.
///
/// Reads model_index.json (the pipeline class: SD3, FLUX, SDXL variants other than
/// text-to-image/img2img and other pipelines are refused by name with
/// [`DiffusionError::UnsupportedModel`] and nothing further is checked), each component's
/// config.json (SDXL folders: text_encoder_2 too) (must be JSON) and weight file headers (see
/// `loading/weights.rs` `read_header`: invalid, truncated or overlapping byte ranges, size cap), a
/// sharded checkpoint's index (every shard present, every tensor where the index says), the
/// tokenizer(s) (parsed), and scheduler/scheduler_config.json. Also checks that the UNet's
/// `cross_attention_dim` equals the text encoder's `hidden_size` (SDXL: the sum of both). The semantic checks of each
/// config's values happen when the config is parsed by its model (at load).
pub fn validate(dir: &Path, options: &FolderOptions) -> FolderReport {
    inspect(dir, options, true)
}

/// A JSON file through the one config reader ([`JsonConfig::read`]).
fn read_json(path: &Path) -> Result<serde_json::Value> {
    JsonConfig::read(path).map(|c| c.to_value())
}

/// A required JSON file ([`JsonConfig::read_required`]): MissingFile if absent.
fn required_json(path: &Path, what: &str) -> Result<serde_json::Value> {
    JsonConfig::read_required(path, what).map(|c| c.to_value())
}

/// An error if `tokenizer` can produce ids that a text encoder with `vocab_size` embeddings has
/// no row for.
pub(crate) fn vocab_mismatch(
    tokenizer: &crate::models::tokenizer::PromptTokenizer,
    vocab_size: u64,
    config: &Path,
) -> Option<DiffusionError> {
    let max_id = tokenizer.max_id();
    (u64::from(max_id) >= vocab_size).then(|| {
        DiffusionError::config(
            config,
            "vocab_size",
            format!(
                "is {vocab_size} but the tokenizer ({}) produces ids up to {max_id}; the tokenizer does \
                 not belong to this text encoder",
                tokenizer.path().display()
            ),
        )
    })
}
