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

use crate::error::{DiffusionError, Result};
use crate::loading::weights::{SafetensorsHeader, WeightFiles, read_header};

/// The default cap on the size of one weight file: 20 GiB (the largest SD 1.x/2.x f32 UNet is
/// 3.5 GB).
pub const DEFAULT_MAX_FILE_BYTES: u64 = 20 * 1024 * 1024 * 1024;

/// Extensions of pickled PyTorch checkpoints, which can run arbitrary code when loaded.
pub const PICKLE_EXTENSIONS: [&str; 4] = ["bin", "ckpt", "pt", "pth"];

/// JSON config files larger than this are refused rather than read.
const MAX_JSON_BYTES: u64 = 256 * 1024 * 1024;

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
/// [`crate::loading::weights::read_header`]: invalid, truncated or overlapping byte ranges, size cap), a
/// sharded checkpoint's index (every shard present, every tensor where the index says), the
/// tokenizer(s) (parsed), and scheduler/scheduler_config.json. Also checks that the UNet's
/// `cross_attention_dim` equals the text encoder's `hidden_size` (SDXL: the sum of both). The semantic checks of each
/// config's values happen when the config is parsed by its model (at load).
pub fn validate(dir: &Path, options: &FolderOptions) -> FolderReport {
    inspect(dir, options, true)
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let len = std::fs::metadata(path)
        .map_err(|e| DiffusionError::io(path, e))?
        .len();
    if len > MAX_JSON_BYTES {
        return Err(DiffusionError::config(
            path,
            "",
            format!("file is {len} bytes, too large for a config"),
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| DiffusionError::io(path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| DiffusionError::config(path, "", format!("not valid JSON: {e}")))
}

/// Reads a required JSON file: MissingFile if absent.
fn required_json(path: &Path, what: &str) -> Result<serde_json::Value> {
    if !path.is_file() {
        return Err(DiffusionError::MissingFile {
            path: path.to_path_buf(),
            what: what.to_string(),
        });
    }
    read_json(path)
}

/// The family name and reason for a pipeline class we refuse, `None` for supported ones.
fn refused_pipeline(class: &str) -> Option<(String, String)> {
    if SUPPORTED_PIPELINES.contains(&class) {
        return None;
    }
    let (family, reason) = if class.starts_with("StableDiffusionXL") {
        (
            "SDXL",
            "only StableDiffusionXLPipeline and StableDiffusionXLImg2ImgPipeline are supported \
             (inpainting, instruct-pix2pix and ControlNet variants are not)",
        )
    } else if class.starts_with("StableDiffusion3") {
        (
            "SD3",
            "the MMDiT transformer and its CLIP-L + CLIP-G + T5 text encoders are not implemented",
        )
    } else if class.starts_with("Flux") {
        (
            "FLUX",
            "the rectified-flow transformer and its CLIP + T5 text encoders are not implemented",
        )
    } else if class.contains("Upscale") {
        (
            "Stable Diffusion upscaler",
            "an x4 upscaler folder (its unet takes 7 input channels: 4 latents + 3 low-res image \
             channels, with a low_res_scheduler) is not a text-to-image model; use it to upscale \
             (`texgen upscale --model DIR`, `pipeline::upscale::Upscaler::load`)",
        )
    } else if class.contains("Depth2Img") {
        (
            "Stable Diffusion depth-to-image",
            "depth conditioning is not implemented",
        )
    } else {
        (
            class,
            "only Stable Diffusion 1.x/2.x-style pipelines (StableDiffusionPipeline: one CLIP text \
             encoder, UNet2DConditionModel, AutoencoderKL) are supported",
        )
    };
    Some((family.to_string(), reason.to_string()))
}

/// Why `dir` is an SDXL folder (see the module docs), or `None`.
fn sdxl_marks(
    dir: &Path,
    class: Option<&str>,
    index: Option<&serde_json::Value>,
) -> Option<String> {
    if let Some(class) = class
        && class.starts_with("StableDiffusionXL")
    {
        return Some(format!("model_index.json names {class}"));
    }
    let has_second_encoder = index
        .and_then(|i| i.get("text_encoder_2"))
        .and_then(|v| v.as_array())
        .is_some_and(|a| a.iter().any(|x| !x.is_null()));
    if has_second_encoder {
        return Some("model_index.json lists a text_encoder_2".into());
    }
    if dir.join("text_encoder_2").is_dir() {
        return Some("the folder has a text_encoder_2/".into());
    }
    let unet_config = dir.join("unet").join("config.json");
    if unet_config.is_file()
        && let Ok(cfg) = read_json(&unet_config)
        && cfg.get("addition_embed_type").and_then(|v| v.as_str()) == Some("text_time")
    {
        return Some("the UNet config has addition_embed_type \"text_time\"".into());
    }
    None
}

/// Names of the files a sharded index is allowed to reference: plain file names in its folder.
fn shard_name_ok(name: &str) -> bool {
    !name.is_empty()
        && !name.contains(['/', '\\'])
        && name != "."
        && name != ".."
        && name.ends_with(".safetensors")
}

/// Checks a sharded checkpoint's index and its shards.
fn sharded(
    index_path: &Path,
    fp16_variant: bool,
    options: &FolderOptions,
) -> Result<WeightFiles, Vec<DiffusionError>> {
    let bad = |reason: String| DiffusionError::BadSafetensors {
        path: index_path.to_path_buf(),
        reason,
    };
    let index = read_json(index_path).map_err(|e| vec![e])?;
    let Some(map) = index.get("weight_map").and_then(|m| m.as_object()) else {
        return Err(vec![bad("the index has no `weight_map` object".into())]);
    };
    let dir = index_path.parent().unwrap_or(Path::new("."));
    let mut shard_names: Vec<&str> = Vec::new();
    let mut problems = Vec::new();
    for (tensor, file) in map {
        match file.as_str() {
            Some(name) if shard_name_ok(name) => {
                if !shard_names.contains(&name) {
                    shard_names.push(name);
                }
            }
            _ => problems.push(bad(format!(
                "tensor `{tensor}` maps to {file}, which is not a .safetensors file name in this folder"
            ))),
        }
    }
    shard_names.sort_unstable();
    let mut shards: Vec<SafetensorsHeader> = Vec::new();
    for name in &shard_names {
        let path = dir.join(name);
        if !path.is_file() {
            problems.push(DiffusionError::MissingFile {
                path,
                what: format!("a weight shard listed in {}", index_path.display()),
            });
            continue;
        }
        match read_header(&path, options.max_file_bytes) {
            Ok(h) => shards.push(h),
            Err(e) => problems.push(e),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    for (tensor, file) in map {
        let name = file.as_str().unwrap_or_default();
        let holders: Vec<&SafetensorsHeader> = shards
            .iter()
            .filter(|h| h.tensors.contains_key(tensor))
            .collect();
        match holders.as_slice() {
            [h] if h.path.file_name().and_then(|n| n.to_str()) == Some(name) => {}
            [] => problems.push(bad(format!(
                "tensor `{tensor}` should be in {name} but no shard holds it"
            ))),
            [h] => problems.push(bad(format!(
                "tensor `{tensor}` should be in {name} but is in {}",
                h.path.display()
            ))),
            _ => problems.push(bad(format!("tensor `{tensor}` is in more than one shard"))),
        }
    }
    if problems.is_empty() {
        Ok(WeightFiles {
            path: index_path.to_path_buf(),
            shards,
            fp16_variant,
        })
    } else {
        Err(problems)
    }
}

/// Finds and checks one component's weights in its folder `dir` (see the module docs for the
/// search order): the chosen file(s) with validated headers, or every problem with them (a
/// pickle instead of safetensors, a missing file, a bad header or shard index). Used by
/// [`validate`] and by `texgen inspect` to describe the components of a folder with problems.
pub fn component_weights(
    dir: &Path,
    kind: ComponentKind,
    options: &FolderOptions,
) -> Result<WeightFiles, Vec<DiffusionError>> {
    let stem = kind.weights_stem();
    let plain = [
        (format!("{stem}.safetensors"), false),
        (format!("{stem}.safetensors.index.json"), true),
    ];
    let fp16 = [
        (format!("{stem}.fp16.safetensors"), false),
        (format!("{stem}.safetensors.index.fp16.json"), true),
        (format!("{stem}.fp16.safetensors.index.json"), true),
    ];
    let order: Vec<(&(String, bool), bool)> = if options.prefer_fp16_variant {
        fp16.iter()
            .map(|c| (c, true))
            .chain(plain.iter().map(|c| (c, false)))
            .collect()
    } else {
        plain
            .iter()
            .map(|c| (c, false))
            .chain(fp16.iter().map(|c| (c, true)))
            .collect()
    };
    for ((name, is_index), is_fp16) in order {
        let path = dir.join(name);
        if !path.is_file() {
            continue;
        }
        if is_fp16 && !options.prefer_fp16_variant {
            tracing::info!(
                "{}: only the fp16 variant exists; converting it to f32",
                path.display()
            );
        }
        return if *is_index {
            sharded(&path, is_fp16, options)
        } else {
            read_header(&path, options.max_file_bytes)
                .map(|h| WeightFiles {
                    path: path.clone(),
                    shards: vec![h],
                    fp16_variant: is_fp16,
                })
                .map_err(|e| vec![e])
        };
    }
    // No safetensors: name a pickle if there is one, else the file we expected.
    let mut pickles: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| PICKLE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        })
        .collect();
    pickles.sort();
    if let Some(path) = pickles.into_iter().next() {
        return Err(vec![DiffusionError::PickleWeights { path }]);
    }
    Err(vec![DiffusionError::MissingFile {
        path: dir.join(format!("{stem}.safetensors")),
        what: format!("the {kind} weights (safetensors)"),
    }])
}

/// Is `path` (or one of its two parents) named like an SD-Turbo folder?
fn turbo_named(path: &Path) -> bool {
    path.components().rev().take(3).any(|c| {
        c.as_os_str()
            .to_string_lossy()
            .to_ascii_lowercase()
            .contains("turbo")
    })
}

fn usize_field(json: &serde_json::Value, field: &str) -> Option<u64> {
    json.get(field).and_then(|v| v.as_u64())
}

fn inspect(dir: &Path, options: &FolderOptions, check_tokenizer: bool) -> FolderReport {
    let mut report = FolderReport {
        dir: dir.to_path_buf(),
        class_name: None,
        family: None,
        problems: Vec::new(),
        folder: None,
    };
    if !dir.is_dir() {
        report.problems.push(DiffusionError::ModelFolderMissing {
            path: dir.to_path_buf(),
        });
        return report;
    }
    let problems = &mut report.problems;

    // model_index.json
    let index_path = dir.join("model_index.json");
    let index = if index_path.is_file() {
        match read_json(&index_path) {
            Ok(v) => Some(v),
            Err(e) => {
                problems.push(e);
                None
            }
        }
    } else {
        let single_file = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                let p = e.path();
                p.is_file()
                    && p.extension().and_then(|x| x.to_str()).is_some_and(|x| {
                        let x = x.to_ascii_lowercase();
                        x == "safetensors" || PICKLE_EXTENSIONS.contains(&x.as_str())
                    })
            });
        let what = if single_file {
            "the diffusers pipeline index; this looks like a single-file checkpoint: convert it with \
             diffusers' `StableDiffusionPipeline.from_single_file(...).save_pretrained(..., \
             safe_serialization=True)`"
        } else {
            "the diffusers pipeline index (written by `save_pretrained`)"
        };
        problems.push(DiffusionError::MissingFile {
            path: index_path.clone(),
            what: what.into(),
        });
        None
    };
    let class_name = index.as_ref().and_then(|i| {
        let class = i
            .get("_class_name")
            .and_then(|c| c.as_str())
            .map(str::to_string);
        if class.is_none() {
            problems.push(DiffusionError::config(
                &index_path,
                "_class_name",
                "missing; expected e.g. \"StableDiffusionPipeline\"",
            ));
        }
        class
    });
    report.class_name = class_name.clone();

    // Families we refuse: stop here, nothing else matters.
    let sdxl = sdxl_marks(dir, class_name.as_deref(), index.as_ref());
    if let Some(class) = &class_name
        && let Some((family, reason)) = refused_pipeline(class)
    {
        problems.push(DiffusionError::UnsupportedModel {
            path: index_path,
            family,
            reason,
        });
        return report;
    }

    // Components.
    let mut components = Vec::new();
    let mut configs = Vec::new();
    for &kind in ComponentKind::for_folder(sdxl.is_some()) {
        if kind == ComponentKind::TextEncoder2
            && let Some(why) = &sdxl
            && !dir.join(kind.dir_name()).is_dir()
        {
            problems.push(DiffusionError::MissingFile {
                path: dir.join(kind.dir_name()),
                what: format!(
                    "the text_encoder_2 component (SDXL's second text encoder, \
                     CLIPTextModelWithProjection, with config.json and model.safetensors); this is \
                     an SDXL folder because {why}"
                ),
            });
            configs.push(None);
            components.push(None);
            continue;
        }
        if let Some(entry) = index.as_ref().and_then(|i| i.get(kind.dir_name())) {
            let class = entry
                .as_array()
                .and_then(|a| a.get(1))
                .and_then(|c| c.as_str());
            match class {
                Some(c) if kind.accepted_classes().contains(&c) => {}
                Some(c) => problems.push(DiffusionError::UnsupportedConfig {
                    path: index_path.clone(),
                    field: kind.dir_name().into(),
                    value: c.to_string(),
                }),
                None => problems.push(DiffusionError::MissingFile {
                    path: dir.join(kind.dir_name()),
                    what: format!("the {kind} component (model_index.json lists none)"),
                }),
            }
        }
        let comp_dir = dir.join(kind.dir_name());
        let config = comp_dir.join("config.json");
        let parsed = required_json(&config, &format!("the {kind} config"));
        let weights = if comp_dir.is_dir() {
            component_weights(&comp_dir, kind, options)
        } else {
            Err(vec![DiffusionError::MissingFile {
                path: comp_dir.join(format!("{}.safetensors", kind.weights_stem())),
                what: format!("the {kind} weights (safetensors)"),
            }])
        };
        match parsed {
            Ok(json) => configs.push(Some(json)),
            Err(e) => {
                problems.push(e);
                configs.push(None);
            }
        }
        match weights {
            Ok(w) => components.push(Some(Component {
                kind,
                dir: comp_dir,
                config,
                weights: w,
            })),
            Err(es) => {
                problems.extend(es);
                components.push(None);
            }
        }
    }

    // Tokenizer.
    let tokenizer_dir = dir.join("tokenizer");
    if check_tokenizer {
        let max_length = configs[0]
            .as_ref()
            .and_then(|c| usize_field(c, "max_position_embeddings"))
            .map_or(77, |n| n as usize);
        match crate::models::tokenizer::PromptTokenizer::from_dir(&tokenizer_dir, max_length) {
            Ok(tokenizer) => {
                let vocab = configs[0]
                    .as_ref()
                    .and_then(|c| usize_field(c, "vocab_size"));
                if let Some(e) = vocab.and_then(|v| {
                    vocab_mismatch(&tokenizer, v, &dir.join("text_encoder/config.json"))
                }) {
                    problems.push(e);
                }
            }
            Err(e) => problems.push(e),
        }
    } else {
        let has_json = tokenizer_dir.join("tokenizer.json").is_file();
        let has_slow = tokenizer_dir.join("vocab.json").is_file()
            && tokenizer_dir.join("merges.txt").is_file();
        if !has_json && !has_slow {
            problems.push(DiffusionError::MissingFile {
                path: tokenizer_dir.join("tokenizer.json"),
                what: "the prompt tokenizer (tokenizer.json, or CLIP's vocab.json + merges.txt)"
                    .into(),
            });
        }
    }

    let tokenizer_2_dir = dir.join("tokenizer_2");
    if sdxl.is_some() {
        if !tokenizer_2_dir.is_dir() {
            problems.push(DiffusionError::MissingFile {
                path: tokenizer_2_dir.clone(),
                what: "SDXL's second prompt tokenizer (tokenizer_2/ with tokenizer.json, or \
                       vocab.json + merges.txt)"
                    .into(),
            });
        } else if check_tokenizer {
            let te2 = configs.get(3).and_then(Option::as_ref);
            let max_length = te2
                .and_then(|c| usize_field(c, "max_position_embeddings"))
                .map_or(77, |n| n as usize);
            match crate::models::tokenizer::PromptTokenizer::from_dir(&tokenizer_2_dir, max_length)
            {
                Ok(tokenizer) => {
                    if let Some(e) = te2
                        .and_then(|c| usize_field(c, "vocab_size"))
                        .and_then(|v| {
                            vocab_mismatch(&tokenizer, v, &dir.join("text_encoder_2/config.json"))
                        })
                    {
                        problems.push(e);
                    }
                }
                Err(e) => problems.push(e),
            }
        }
    }

    // Scheduler.
    let scheduler_config = dir.join("scheduler").join("scheduler_config.json");
    let scheduler = match required_json(&scheduler_config, "the scheduler config") {
        Ok(json) => Some(json),
        Err(e) => {
            problems.push(e);
            None
        }
    };

    // Family: the text encoder's width and the UNet's cross-attention width must agree.
    let hidden = configs[0]
        .as_ref()
        .and_then(|c| usize_field(c, "hidden_size"));
    let cross = configs[1]
        .as_ref()
        .and_then(|c| usize_field(c, "cross_attention_dim"));
    if configs[0].is_some() && hidden.is_none() {
        problems.push(DiffusionError::config(
            dir.join("text_encoder").join("config.json"),
            "hidden_size",
            "missing or not a positive integer",
        ));
    }
    // SDXL: the UNet attends to both encoders' hidden states, concatenated.
    let hidden_2 = configs
        .get(3)
        .and_then(Option::as_ref)
        .and_then(|c| usize_field(c, "hidden_size"));
    let (expected, what) = match hidden_2 {
        Some(h2) => (
            hidden.map(|h| h + h2),
            "text_encoder + text_encoder_2 hidden_size",
        ),
        None => (hidden, "text_encoder/config.json hidden_size"),
    };
    if let (Some(h), Some(c)) = (expected, cross)
        && h != c
        && (sdxl.is_none() || hidden_2.is_some())
    {
        problems.push(DiffusionError::config(
            dir.join("unet").join("config.json"),
            "cross_attention_dim",
            format!(
                "is {c} but {what} is {h}; the UNet attends to the text encoder's hidden \
                 states, so they must be equal"
            ),
        ));
    }
    let turbo = {
        let spacing = scheduler
            .as_ref()
            .and_then(|s| s.get("timestep_spacing"))
            .and_then(|v| v.as_str());
        let prediction = scheduler
            .as_ref()
            .and_then(|s| s.get("prediction_type"))
            .and_then(|v| v.as_str())
            .unwrap_or("epsilon");
        (spacing == Some("trailing") && prediction == "epsilon") || turbo_named(dir)
    };
    let family = match hidden.or(cross) {
        _ if sdxl.is_some() && turbo => Some(ModelFamily::SdxlTurbo),
        _ if sdxl.is_some() => Some(ModelFamily::Sdxl),
        Some(1024) if turbo => Some(ModelFamily::SdTurbo),
        Some(1024) => Some(ModelFamily::Sd2),
        Some(_) => Some(ModelFamily::Sd1),
        None => None,
    };
    let family = family.map(|f| {
        if is_pruned(configs[1].as_ref(), configs[2].as_ref()) {
            ModelFamily::SdxsPruned
        } else {
            f
        }
    });
    report.family = family;

    let force_zeros_for_empty_prompt = index
        .as_ref()
        .and_then(|i| i.get("force_zeros_for_empty_prompt"))
        .and_then(|v| v.as_bool())
        .unwrap_or(true);
    if report.problems.is_empty()
        && let (Some(family), [Some(te), Some(unet), Some(vae), rest @ ..]) =
            (family, components.as_slice())
    {
        let text_encoder_2 = rest.first().cloned().flatten();
        let folder = ModelFolder {
            dir: dir.to_path_buf(),
            class_name: class_name.unwrap_or_default(),
            family,
            text_encoder: te.clone(),
            unet: unet.clone(),
            vae: vae.clone(),
            tokenizer_dir,
            tokenizer_2_dir: text_encoder_2.as_ref().map(|_| tokenizer_2_dir),
            text_encoder_2,
            force_zeros_for_empty_prompt,
            scheduler_config,
            identity: String::new(),
        };
        match identity(&folder) {
            Ok(id) => {
                report.folder = Some(ModelFolder {
                    identity: id,
                    ..folder
                })
            }
            Err(e) => report.problems.push(e),
        }
    }
    report
}

/// The marks of a pruned / distilled model (see [`ModelFamily::SdxsPruned`]) in the UNet and VAE
/// configs: `mid_block_type` present and `null`, `layers_per_block` a list, or an
/// `AutoencoderTiny` VAE.
fn is_pruned(unet: Option<&serde_json::Value>, vae: Option<&serde_json::Value>) -> bool {
    let no_mid = unet
        .and_then(|u| u.get("mid_block_type"))
        .is_some_and(serde_json::Value::is_null);
    let listed = unet
        .and_then(|u| u.get("layers_per_block"))
        .is_some_and(serde_json::Value::is_array);
    let tiny = vae
        .and_then(|v| v.get("_class_name"))
        .and_then(|c| c.as_str())
        == Some("AutoencoderTiny");
    no_mid || listed || tiny
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

/// The content hash described at [`ModelFolder::identity`].
fn identity(folder: &ModelFolder) -> Result<String> {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"bevy_diffusion model identity v1\0");
    let mut add_file = |relative: &str| -> Result<()> {
        let path = folder.dir.join(relative);
        if path.is_file() {
            let bytes = std::fs::read(&path).map_err(|e| DiffusionError::io(&path, e))?;
            hasher.update(relative.as_bytes());
            hasher.update(&(bytes.len() as u64).to_le_bytes());
            hasher.update(&bytes);
        }
        Ok(())
    };
    for relative in [
        "model_index.json",
        "text_encoder/config.json",
        "unet/config.json",
        "vae/config.json",
        "scheduler/scheduler_config.json",
        "tokenizer/tokenizer.json",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
        "tokenizer/tokenizer_config.json",
        "tokenizer/special_tokens_map.json",
        "text_encoder_2/config.json",
        "tokenizer_2/tokenizer.json",
        "tokenizer_2/vocab.json",
        "tokenizer_2/merges.txt",
        "tokenizer_2/tokenizer_config.json",
        "tokenizer_2/special_tokens_map.json",
    ] {
        add_file(relative)?;
    }
    for component in folder.components() {
        for shard in &component.weights.shards {
            let name = shard
                .path
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default();
            hasher.update(format!("{}/{name}\0", component.kind).as_bytes());
            hasher.update(&shard.file_len.to_le_bytes());
            hasher.update(&shard.header_digest);
        }
    }
    Ok(hasher.finalize().to_hex().to_string())
}
