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
//! parameter count (sum of the header's tensor element counts) and dtypes, the scheduler's class
//! and settings, the tokenizer's pad token.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;

use crate::error::DiffusionError;
use crate::loading::folder::{self, ComponentKind, FolderOptions, ModelFamily};
use crate::loading::weights::{VarBuilder, WeightFiles};
use crate::models::autoencoders::{Vae, VaeConfig};
use crate::models::clip_text_model::{ClipTextConfig, ClipTextModel};
use crate::models::clip_text_model_with_projection::ClipTextModelWithProjection;
use crate::models::tokenizer::PromptTokenizer;
use crate::models::unet_2d_condition::{UNet2DConditionConfig, UNet2DConditionModel};
use crate::schedulers::SchedulerConfig;

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
    /// Sum of the tensors' element counts.
    pub parameters: u64,
    /// Parameters per stored dtype (`F32`, `F16`, `BF16`, ...).
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
    /// Why this is the project's embedded model, if it is (`assets/models/default`, or the
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
        | E::Tokenizer { path, .. }
        | E::Image { path, .. }
        | E::Io { path, .. } => Some(path),
        _ => None,
    }
}

fn read_json(path: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

/// Why `dir` is the project's embedded model, if it is.
fn embedded_reason(dir: &Path) -> Option<String> {
    let marked = read_json(&dir.join("model_index.json"))
        .and_then(|j| j.get(crate::loading::embedded::EMBEDDED_MARKER).cloned())
        .is_some_and(|v| v == serde_json::Value::Bool(true));
    if marked {
        return Some(format!(
            "model_index.json has \"{}\": true",
            crate::loading::embedded::EMBEDDED_MARKER
        ));
    }
    let bundled = crate::loading::embedded::bundled_model_dir()
        .canonicalize()
        .ok()?;
    (dir.canonicalize().ok()? == bundled).then(|| "the repository's assets/models/default".into())
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
        full_load: None,
        problems: Vec::new(),
    };
    let static_ok = folder.is_ok();
    report.problems = folder.problems;
    if report.refused.is_some() || !dir.is_dir() {
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

    let sdxl =
        report.family.is_some_and(ModelFamily::is_sdxl) || dir.join("text_encoder_2").is_dir();
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

fn inspect_component(
    dir: &Path,
    kind: ComponentKind,
    options: &FolderOptions,
    flagged: &HashSet<PathBuf>,
    report: &mut InspectReport,
) -> ComponentReport {
    let comp_dir = dir.join(kind.dir_name());
    let config_path = comp_dir.join("config.json");
    let mut out = ComponentReport {
        kind,
        // diffusers configs name the class in `_class_name`, transformers ones in `architectures`.
        class_name: read_json(&config_path).and_then(|j| {
            j.get("_class_name")
                .or_else(|| j.get("architectures").and_then(|a| a.get(0)))
                .and_then(|c| c.as_str())
                .map(String::from)
        }),
        weights: None,
        files: 0,
        bytes: 0,
        tensors: 0,
        parameters: 0,
        dtypes: BTreeMap::new(),
        fp16_variant: false,
        unused_tensors: Vec::new(),
        built: false,
    };
    // Problems with these files were reported by validate.
    let Ok(weights) = folder::component_weights(&comp_dir, kind, options) else {
        return out;
    };
    out.weights = Some(weights.path.clone());
    out.files = weights.shards.len();
    out.bytes = weights.total_bytes();
    out.tensors = weights.tensor_count();
    out.fp16_variant = weights.fp16_variant;
    for shard in &weights.shards {
        for meta in shard.tensors.values() {
            let n: u64 = meta.shape.iter().map(|&d| d as u64).product();
            out.parameters += n;
            *out.dtypes.entry(meta.dtype.clone()).or_default() += n;
        }
    }
    if flagged.contains(&config_path) {
        return out;
    }
    let problems = &mut report.problems;
    let built = match kind {
        ComponentKind::TextEncoder => ClipTextConfig::from_file(&config_path)
            .map(|cfg| dry_build(&weights, |vb| ClipTextModel::new(vb, &cfg).map(drop))),
        ComponentKind::TextEncoder2 => ClipTextConfig::from_file(&config_path).map(|cfg| {
            dry_build(&weights, |vb| {
                ClipTextModelWithProjection::new(vb, &cfg, cfg.eos_token_id).map(drop)
            })
        }),
        ComponentKind::Unet => UNet2DConditionConfig::from_file(&config_path)
            .map(|cfg| dry_build(&weights, |vb| UNet2DConditionModel::new(vb, &cfg).map(drop))),
        ComponentKind::Vae => VaeConfig::from_file(&config_path)
            .map(|cfg| dry_build(&weights, |vb| Vae::new(vb, &cfg).map(drop))),
    };
    match built {
        // The text encoder's config was parsed (and its error reported) already.
        Err(_) if kind == ComponentKind::TextEncoder => {}
        Err(e) => problems.push(e),
        Ok(DryBuild {
            problems: found,
            unused,
        }) => {
            out.built = found.is_empty();
            out.unused_tensors = unused;
            problems.extend(found);
        }
    }
    out
}

// ---------------------------------------------------------------- the dry build

/// What a dry build found.
struct DryBuild {
    /// Missing or mis-shaped tensors (or a construction error), in the order met.
    problems: Vec<DiffusionError>,
    /// Tensors in the file(s) the model never asked for, sorted.
    unused: Vec<String>,
}

#[derive(Default)]
struct DryLog {
    problems: Vec<DiffusionError>,
    requested: HashSet<String>,
}

/// A var-builder backend answering from the safetensors headers: presence and shape are
/// checked like [`crate::loading::weights::CheckedWeights`] does, but every request gets a broadcast zero
/// of the shape the model expects (no data read), and a failure is recorded rather than returned
/// so that construction goes on and every problem is found.
struct DryBackend {
    /// The file (or index) named by missing-tensor errors.
    path: PathBuf,
    /// name -> (file holding it, shape); the last shard holding a name wins, as in the real load.
    index: HashMap<String, (PathBuf, Vec<usize>)>,
    log: Mutex<DryLog>,
}

impl DryBackend {
    fn note(&self, name: &str, problem: Option<DiffusionError>) {
        if let Ok(mut log) = self.log.lock() {
            log.requested.insert(name.to_string());
            log.problems.extend(problem);
        }
    }
}

fn zeros(shape: &Shape, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
    Tensor::zeros((), dtype, dev)?.broadcast_as(shape)
}

impl SimpleBackend for DryBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let problem = match self.index.get(name) {
            None => Some(DiffusionError::MissingTensor {
                path: self.path.clone(),
                tensor: name.to_string(),
                expected: s.dims().to_vec(),
            }),
            Some((file, shape)) if shape.as_slice() != s.dims() => {
                Some(DiffusionError::ShapeMismatch {
                    path: file.clone(),
                    tensor: name.to_string(),
                    expected: s.dims().to_vec(),
                    found: shape.clone(),
                })
            }
            Some(_) => None,
        };
        self.note(name, problem);
        zeros(&s, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        match self.index.get(name) {
            Some((_, shape)) => {
                self.note(name, None);
                zeros(&Shape::from_dims(shape), dtype, dev)
            }
            None => {
                let error = DiffusionError::MissingTensor {
                    path: self.path.clone(),
                    tensor: name.to_string(),
                    expected: Vec::new(),
                };
                let message = error.to_string();
                self.note(name, Some(error));
                Err(candle_core::Error::Msg(message))
            }
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }
}

/// Constructs a model from `files`' headers alone (see [`DryBackend`]).
fn dry_build(
    files: &WeightFiles,
    construct: impl FnOnce(VarBuilder<'static>) -> candle_core::Result<()>,
) -> DryBuild {
    let mut index = HashMap::new();
    for header in &files.shards {
        for (name, meta) in &header.tensors {
            index.insert(name.clone(), (header.path.clone(), meta.shape.clone()));
        }
    }
    let backend = std::sync::Arc::new(DryBackend {
        path: files.path.clone(),
        index,
        log: Mutex::new(DryLog::default()),
    });
    struct Shared(std::sync::Arc<DryBackend>);
    impl SimpleBackend for Shared {
        fn get(
            &self,
            s: Shape,
            name: &str,
            h: candle_nn::Init,
            dtype: DType,
            dev: &Device,
        ) -> candle_core::Result<Tensor> {
            self.0.get(s, name, h, dtype, dev)
        }
        fn get_unchecked(
            &self,
            name: &str,
            dtype: DType,
            dev: &Device,
        ) -> candle_core::Result<Tensor> {
            self.0.get_unchecked(name, dtype, dev)
        }
        fn contains_tensor(&self, name: &str) -> bool {
            self.0.contains_tensor(name)
        }
    }
    let vb = VarBuilder::from_backend(Box::new(Shared(backend.clone())), DType::F32, Device::Cpu);
    let result = construct(vb);
    let mut log = backend
        .log
        .lock()
        .map(|mut l| std::mem::take(&mut *l))
        .unwrap_or_default();
    if let Err(e) = result
        && log.problems.is_empty()
    {
        log.problems.push(DiffusionError::Candle(e));
    }
    let mut unused: Vec<String> = backend
        .index
        .keys()
        .filter(|n| !log.requested.contains(*n))
        .cloned()
        .collect();
    unused.sort();
    DryBuild {
        problems: log.problems,
        unused,
    }
}

// ---------------------------------------------------------------- printing

/// `1234567` -> `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `1234567` -> `1.2 M`.
fn human(n: u64) -> String {
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.1} K", n as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} M", n as f64 / 1e6),
        _ => format!("{:.2} B", n as f64 / 1e9),
    }
}

fn bytes(n: u64) -> String {
    match n {
        0..1_000_000 => format!("{:.1} kB", n as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MB", n as f64 / 1e6),
        _ => format!("{:.2} GB", n as f64 / 1e9),
    }
}

/// Tensor-level problems shown per component before "... and N more".
const SHOWN_TENSOR_PROBLEMS: usize = 10;

impl fmt::Display for InspectReport {
    /// The text `texgen inspect` prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "model folder  {}", self.dir.display())?;
        writeln!(f, "family        {}", self.family_label())?;
        if let Some(decoder) = self.decoder_label() {
            writeln!(f, "decoder       {decoder}")?;
        }
        if let Some(why) = &self.embedded {
            writeln!(f, "embedded      {why}")?;
        }
        if let Some(class) = &self.class_name {
            writeln!(f, "pipeline      {class}")?;
        }
        if let Some(id) = &self.identity {
            writeln!(f, "identity      {id}")?;
        }
        for c in &self.components {
            let name = c.kind.dir_name();
            let class = c.class_name.as_deref().unwrap_or("?");
            match &c.weights {
                None => writeln!(f, "{name:<13} {class}: no usable weights (see problems)")?,
                Some(path) => {
                    let dtypes = c
                        .dtypes
                        .iter()
                        .map(|(d, n)| {
                            if c.dtypes.len() == 1 {
                                d.clone()
                            } else {
                                format!("{d} ({})", human(*n))
                            }
                        })
                        .collect::<Vec<_>>()
                        .join(", ");
                    let file = path
                        .strip_prefix(&self.dir)
                        .unwrap_or(path)
                        .display()
                        .to_string();
                    writeln!(
                        f,
                        "{name:<13} {class}: {} parameters ({}), {dtypes}, {} tensors in {file}{} \
                         ({}){}",
                        thousands(c.parameters),
                        human(c.parameters),
                        c.tensors,
                        if c.files > 1 {
                            format!(" + {} shards", c.files)
                        } else {
                            String::new()
                        },
                        bytes(c.bytes),
                        if c.fp16_variant { ", fp16 variant" } else { "" },
                    )?;
                    if !c.unused_tensors.is_empty() {
                        let shown: Vec<&str> = c
                            .unused_tensors
                            .iter()
                            .take(3)
                            .map(String::as_str)
                            .collect();
                        writeln!(
                            f,
                            "{:<13} note: {} tensor(s) the config does not use: {}{}",
                            "",
                            c.unused_tensors.len(),
                            shown.join(", "),
                            if c.unused_tensors.len() > 3 {
                                ", ..."
                            } else {
                                ""
                            }
                        )?;
                    }
                }
            }
        }
        if let Some(s) = &self.scheduler {
            let settings = s
                .settings
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ");
            writeln!(
                f,
                "scheduler     {} -> runs as {}{}: {settings}",
                s.class_name.as_deref().unwrap_or("(no _class_name)"),
                s.runs_as,
                if s.exact { "" } else { " (stand-in)" },
            )?;
        }
        if let Some(r) = &self.recommended {
            let show = |v: Option<String>, default: &str| v.unwrap_or_else(|| default.to_string());
            writeln!(
                f,
                "recommended   {}: {} steps, guidance {}, scheduler {}, size {}x{}",
                if r.is_empty() {
                    "none (no bevy_diffusion.json)"
                } else {
                    "bevy_diffusion.json"
                },
                show(r.num_inference_steps.map(|v| v.to_string()), "20"),
                show(r.guidance_scale.map(|v| v.to_string()), "7.5"),
                show(
                    r.scheduler.map(|k| format!("{k:?}")),
                    "the scheduler's class"
                ),
                show(r.width.map(|v| v.to_string()), "native"),
                show(r.height.map(|v| v.to_string()), "native"),
            )?;
        }
        if let Some(t) = &self.tokenizer {
            writeln!(
                f,
                "tokenizer     pad token {:?} (id {}), {} tokens per prompt, vocabulary {}",
                t.pad_token, t.pad_id, t.max_length, t.vocab_size
            )?;
        }
        match self.full_load {
            Some(true) => writeln!(f, "full load     ok")?,
            Some(false) => writeln!(f, "full load     FAILED (see problems)")?,
            None => {}
        }
        if self.problems.is_empty() {
            return writeln!(f, "problems      none");
        }
        writeln!(f, "problems      {}", self.problems.len())?;
        // Cap the tensor-level problems per file (a wrong config can mismatch hundreds).
        let mut shown_per_file: HashMap<&Path, usize> = HashMap::new();
        let mut hidden_per_file: BTreeMap<&Path, usize> = BTreeMap::new();
        for p in &self.problems {
            if let DiffusionError::MissingTensor { path, .. }
            | DiffusionError::ShapeMismatch { path, .. } = p
            {
                let shown = shown_per_file.entry(path).or_default();
                if *shown >= SHOWN_TENSOR_PROBLEMS {
                    *hidden_per_file.entry(path).or_default() += 1;
                    continue;
                }
                *shown += 1;
            }
            writeln!(f, "  - {p}")?;
        }
        for (path, n) in hidden_per_file {
            writeln!(
                f,
                "  - {}: ... and {n} more tensor problems",
                path.display()
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_formatting() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(human(859_520_964), "859.5 M");
        assert_eq!(human(1_500), "1.5 K");
    }

    #[test]
    fn missing_folder_is_one_problem() {
        let r = inspect(Path::new("/nonexistent/model"), &InspectOptions::default());
        assert!(matches!(
            r.problems.as_slice(),
            [DiffusionError::ModelFolderMissing { .. }]
        ));
        assert_eq!(r.family_label(), "unknown");
    }
}
