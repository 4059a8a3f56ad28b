//! `texgen inspect`: describe a model folder and list **every** problem with it.
//!
//! [`inspect`] runs, in order:
//!
//! 1. [`folder::validate`]: the static checks that also run before every load
//!    ([`crate::StableDiffusion::load`] starts with [`crate::loading::folder::ModelFolder::open`],
//!    which is the same walk stopping at its first problem): layout, pipeline class (SD3, FLUX & co.
//!    refused by name), missing files, pickled weights, size cap, safetensors headers whose byte
//!    ranges lie or run past the end of the file, sharded indexes, the tokenizer, the
//!    text-encoder/UNet width agreement.
//! 2. Each config parsed by its model (`ClipTextConfig::from_file`, ...), as the load does.
//! 3. A **dry build** of each component: the model is constructed from its config through a var
//!    builder that answers from the safetensors *headers* (a shared zero per tensor, no weight data
//!    read, no memory), so every tensor the config implies is checked for presence and shape:
//!    [`DiffusionError::MissingTensor`] / [`DiffusionError::ShapeMismatch`], the same errors
//!    [`crate::StableDiffusion::load`] would give, but all of them rather than the first.
//! 4. The scheduler config, resolved for the scheduler it selects.
//! 5. Optionally ([`InspectOptions::full_load`]) a real [`crate::StableDiffusion::load`].
//!
//! Along the way it gathers what `texgen inspect` prints: the family, each component's
//! parameter count (sum of the header's tensor element counts, less the `_scale` of 8-bit
//! weights) and dtypes, the scheduler's class and settings, the tokenizer's pad token.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use crate::configuration_utils::JsonConfig;
use crate::error::DiffusionError;
use crate::loading::folder::{self, ComponentKind, FolderOptions, ModelFamily};
use crate::loading::model_loading_utils::CheckedWeights;
use crate::loading::weights::{VarBuilder, WeightFiles};
use crate::models::autoencoders::{Vae, VaeConfig};
use crate::models::clip_text_model::{ClipTextConfig, ClipTextModel};
use crate::models::clip_text_model_with_projection::ClipTextModelWithProjection;
use crate::models::tokenizer::PromptTokenizer;
use crate::models::unet_2d_condition::{UNet2DConditionConfig, UNet2DConditionModel};
use crate::schedulers::SchedulerConfig;

mod display;

mod components;
use components::*;

/// How to inspect.
#[derive(Debug, Clone)]
pub struct InspectOptions {
    /// Weight files larger than this are a problem ([`DiffusionError::FileTooLarge`]).
    pub max_file_bytes: u64,
    /// Describe the `fp16` variant when both it and the full-precision weights exist.
    pub prefer_fp16_variant: bool,
    /// After a clean inspection, also run [`crate::StableDiffusion::load`] (reads every weight
    /// into memory; slow for real models).
    pub full_load: bool,
}

impl Default for InspectOptions {
    fn default() -> Self {
        Self {
            max_file_bytes: folder::DEFAULT_MAX_FILE_BYTES,
            prefer_fp16_variant: false,
            full_load: false,
        }
    }
}

/// One component (text encoder, UNet, VAE) as found.
#[derive(Debug, Clone)]
pub struct ComponentReport {
    /// Which one.
    pub kind: ComponentKind,
    /// `_class_name` of its config.json, when readable.
    pub class_name: Option<String>,
    /// The weight file (or sharded index) used, when one was found and its headers are valid.
    pub weights: Option<PathBuf>,
    /// Number of weight files (shards).
    pub files: usize,
    /// Bytes over all weight files.
    pub bytes: u64,
    /// Number of tensors.
    pub tensors: usize,
    /// Sum of the tensors' element counts (an 8-bit weight's `_scale` sibling not counted).
    pub parameters: u64,
    /// Parameters per stored dtype (`F32`, `F16`, `BF16`, `I8`, ...).
    pub dtypes: BTreeMap<String, u64>,
    /// The `fp16` variant file is the one used.
    pub fp16_variant: bool,
    /// Tensors in the file that the config's model never asked for (dry build only).
    pub unused_tensors: Vec<String>,
    /// The dry build found every tensor with the right shape.
    pub built: bool,
}

/// The scheduler config as read.
#[derive(Debug, Clone)]
pub struct SchedulerReport {
    /// `_class_name`, e.g. `PNDMScheduler`.
    pub class_name: Option<String>,
    /// The scheduler a request without `scheduler` runs (CLI name, e.g. `ddim`).
    pub runs_as: String,
    /// True when `runs_as` is exactly the configured class (not a stand-in).
    pub exact: bool,
    /// Key settings after filling in the class defaults: `(name, value)`.
    pub settings: Vec<(String, String)>,
}

/// The tokenizer as read.
#[derive(Debug, Clone)]
pub struct TokenizerReport {
    /// The padding token, e.g. `<|endoftext|>` (SD 1.x) or `!` (SD 2.x).
    pub pad_token: String,
    /// Its id.
    pub pad_id: u32,
    /// Prompts are padded/truncated to this many tokens.
    pub max_length: usize,
    /// Vocabulary size, added tokens included.
    pub vocab_size: usize,
}

/// Everything [`inspect`] found.
#[derive(Debug)]
pub struct InspectReport {
    /// The folder.
    pub dir: PathBuf,
    /// model_index.json `_class_name`.
    pub class_name: Option<String>,
    /// The family detected from the configs.
    pub family: Option<ModelFamily>,
    /// The family name of a pipeline we recognise and refuse (`SD3`, `FLUX`, ...).
    pub refused: Option<String>,
    /// Why this is the project's embedded model, if it is (the compiled-in `<embedded>`, or the
    /// [`crate::loading::embedded::EMBEDDED_MARKER`] in model_index.json).
    pub embedded: Option<String>,
    /// The model identity ([`crate::loading::folder::ModelFolder::identity`]) when the folder is valid.
    pub identity: Option<String>,
    /// text_encoder, unet, vae.
    pub components: Vec<ComponentReport>,
    /// The scheduler, when its config parses.
    pub scheduler: Option<SchedulerReport>,
    /// The tokenizer, when it loads.
    pub tokenizer: Option<TokenizerReport>,
    /// The sampling settings the folder recommends (`bevy_diffusion.json`), when it parses.
    pub recommended: Option<crate::request::RecommendedSettings>,
    /// True when [`Self::recommended`] are the family's defaults
    /// ([`ModelFamily::default_settings`]) because the folder has no `bevy_diffusion.json`.
    pub recommended_from_family: bool,
    /// Whether [`InspectOptions::full_load`] ran and succeeded (None: not run).
    pub full_load: Option<bool>,
    /// Every problem, static checks first, then per component.
    pub problems: Vec<DiffusionError>,
}

impl InspectReport {
    /// True when no problem was found.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// The image decoder the folder's `vae/` provides: `TAESD (AutoencoderTiny)` or
    /// `AutoencoderKL`, from its config's `_class_name` (`None` when there is no readable VAE).
    pub fn decoder_label(&self) -> Option<String> {
        let vae = self
            .components
            .iter()
            .find(|c| c.kind == ComponentKind::Vae)?;
        Some(match vae.class_name.as_deref()? {
            "AutoencoderTiny" => "TAESD (AutoencoderTiny, vae/)".to_string(),
            other => format!("{other} (vae/)"),
        })
    }

    /// `SD1.x`, `SD2.x`, `SD-Turbo`, `SDXS/pruned`, `SDXL`, `SDXL-Turbo`, `SD3 (refused)`,
    /// `embedded (SD1.x architecture)`, or `unknown`.
    pub fn family_label(&self) -> String {
        if let Some(refused) = &self.refused {
            return format!("{refused} (refused)");
        }
        match (&self.embedded, self.family) {
            (Some(_), Some(f)) => format!("embedded ({f} architecture)"),
            (Some(_), None) => "embedded".into(),
            (None, Some(f)) => f.to_string(),
            (None, None) => "unknown".into(),
        }
    }
}

/// The path a problem is about, when it names one.
fn problem_path(e: &DiffusionError) -> Option<&Path> {
    use DiffusionError as E;
    match e {
        E::ModelFolderMissing { path }
        | E::MissingFile { path, .. }
        | E::PickleWeights { path }
        | E::BadSafetensors { path, .. }
        | E::FileTooLarge { path, .. }
        | E::MissingTensor { path, .. }
        | E::ShapeMismatch { path, .. }
        | E::InvalidConfig { path, .. }
        | E::UnsupportedConfig { path, .. }
        | E::UnsupportedModel { path, .. }
        | E::WrongPipeline { path, .. }
        | E::Tokenizer { path, .. }
        | E::Image { path, .. }
        | E::Io { path, .. } => Some(path),
        _ => None,
    }
}

fn read_json(path: &Path) -> Option<serde_json::Value> {
    JsonConfig::read(path).ok().map(|c| c.to_value())
}

/// Why `dir` is the project's embedded model, if it is.
fn embedded_reason(dir: &Path) -> Option<String> {
    if crate::loading::model_files::is_embedded(dir) {
        return Some("compiled into the binary (bevy_diffusion_default_model)".into());
    }
    let marked = read_json(&dir.join("model_index.json"))
        .and_then(|j| j.get(crate::loading::embedded::EMBEDDED_MARKER).cloned())
        .is_some_and(|v| v == serde_json::Value::Bool(true));
    if marked {
        return Some(format!(
            "model_index.json has \"{}\": true",
            crate::loading::embedded::EMBEDDED_MARKER
        ));
    }
    None
}

/// A name for a serialisable enum value as it is spelled in configs (`scaled_linear`), or Debug.
fn spelled<T: serde::Serialize + fmt::Debug>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{value:?}"),
    }
}

/// Inspects the model folder `dir` (see the module docs). Never fails: everything wrong is in
/// [`InspectReport::problems`].
pub fn inspect(dir: &Path, options: &InspectOptions) -> InspectReport {
    let folder_options = FolderOptions {
        prefer_fp16_variant: options.prefer_fp16_variant,
        max_file_bytes: options.max_file_bytes,
    };
    let folder = folder::validate(dir, &folder_options);
    let refused = folder.problems.iter().find_map(|p| match p {
        DiffusionError::UnsupportedModel { family, .. } => Some(family.clone()),
        DiffusionError::WrongPipeline { class, .. } => Some(class.clone()),
        _ => None,
    });
    let mut report = InspectReport {
        dir: dir.to_path_buf(),
        class_name: folder.class_name.clone(),
        family: folder.family,
        refused,
        embedded: embedded_reason(dir),
        identity: folder.folder.as_ref().map(|f| f.identity.clone()),
        components: Vec::new(),
        scheduler: None,
        tokenizer: None,
        recommended: None,
        recommended_from_family: false,
        full_load: None,
        problems: Vec::new(),
    };
    let static_ok = folder.is_ok();
    report.problems = folder.problems;
    if report.refused.is_some() || !crate::loading::model_files::is_dir(dir) {
        return report;
    }
    // Files the static checks already complained about: not checked again below.
    let flagged: HashSet<PathBuf> = report
        .problems
        .iter()
        .filter_map(problem_path)
        .map(Path::to_path_buf)
        .collect();

    let te_config_path = dir.join("text_encoder").join("config.json");
    let te_config = (!flagged.contains(&te_config_path))
        .then(|| ClipTextConfig::from_file(&te_config_path))
        .and_then(|r| r.map_err(|e| report.problems.push(e)).ok());

    let sdxl = report.family.is_some_and(ModelFamily::is_sdxl)
        || crate::loading::model_files::is_dir(&dir.join("text_encoder_2"));
    for &kind in ComponentKind::for_folder(sdxl) {
        let component = inspect_component(dir, kind, &folder_options, &flagged, &mut report);
        report.components.push(component);
    }

    // Tokenizer (validate has parsed it and reported its problems).
    let max_length = te_config.as_ref().map_or(77, |c| c.max_position_embeddings);
    if let Ok(tokenizer) = PromptTokenizer::from_dir(&dir.join("tokenizer"), max_length) {
        let pad_id = tokenizer.pad_id();
        report.tokenizer = Some(TokenizerReport {
            pad_token: tokenizer
                .inner()
                .id_to_token(pad_id)
                .unwrap_or_else(|| format!("<id {pad_id}>")),
            pad_id,
            max_length: tokenizer.max_length(),
            vocab_size: tokenizer.inner().get_vocab_size(true),
        });
    }

    // Scheduler.
    let scheduler_path = dir.join("scheduler").join("scheduler_config.json");
    if !flagged.contains(&scheduler_path) {
        match SchedulerConfig::from_file(&scheduler_path) {
            Ok(config) => report.scheduler = Some(scheduler_report(&config, &mut report.problems)),
            Err(e) => report.problems.push(e),
        }
    }

    match crate::request::RecommendedSettings::read(dir) {
        Ok(r) if r.is_empty() && report.family.is_some() => {
            // As `StableDiffusion::load`: the family's distilled settings stand in.
            let tiny = report
                .decoder_label()
                .is_some_and(|d| d.starts_with("TAESD"));
            let family = report
                .family
                .unwrap_or(ModelFamily::Sd1)
                .default_settings(tiny);
            report.recommended_from_family = !family.is_empty();
            report.recommended = Some(family);
        }
        Ok(r) => report.recommended = Some(r),
        Err(e) => report.problems.push(e),
    }

    if options.full_load && static_ok && report.problems.is_empty() {
        let load_options = crate::LoadOptions {
            prefer_fp16_variant: options.prefer_fp16_variant,
            ..Default::default()
        };
        match crate::StableDiffusion::load(dir, &load_options) {
            Ok(_) => report.full_load = Some(true),
            Err(e) => {
                report.full_load = Some(false);
                report.problems.push(e);
            }
        }
    }
    report
}

fn scheduler_report(
    config: &SchedulerConfig,
    problems: &mut Vec<DiffusionError>,
) -> SchedulerReport {
    let kind = config.default_kind();
    let mut settings = Vec::new();
    match config.resolve(kind) {
        Ok(p) => {
            let mut set = |k: &str, v: String| settings.push((k.to_string(), v));
            set("num_train_timesteps", p.num_train_timesteps.to_string());
            set("beta_schedule", spelled(&p.beta_schedule));
            set("beta_start", p.beta_start.to_string());
            set("beta_end", p.beta_end.to_string());
            set("prediction_type", spelled(&p.prediction_type));
            set("timestep_spacing", spelled(&p.timestep_spacing));
            set("steps_offset", p.steps_offset.to_string());
            if p.trained_betas.is_some() {
                set("trained_betas", "yes".into());
            }
            if p.rescale_betas_zero_snr {
                set("rescale_betas_zero_snr", "true".into());
            }
            if p.use_karras_sigmas {
                set("use_karras_sigmas", "true".into());
            }
        }
        Err(e) => problems.push(e),
    }
    SchedulerReport {
        class_name: config.class_name.clone(),
        runs_as: spelled(&kind),
        exact: config.native_kind() == Some(kind),
        settings,
    }
}

#[cfg(test)]
mod tests;
