//! Editor-time baking: a RON manifest of named [`GenerationRequest`]s becomes `NAME.png` files
//! plus `NAME.texgen.json` sidecars, regenerating only what changed (`texgen bake`).
//!
//! ```ron
//! // textures.ron
//! (
//!     model: None, // or Some("models/my-sd"): relative to this file; `texgen --model` wins
//!     items: {
//!         "wall": (prompt: "mossy stone wall", seed: 3, tiling: xy, width: 512, height: 512),
//!         "coin": (prompt: "gold coin", kind: sprite, num_inference_steps: 25, pixel_art: (cell: 4, colors: 16)),
//!     },
//! )
//! ```
//!
//! Each item is a [`GenerationRequest`] written in RON exactly as a single-request
//! `*.texgen.ron` file would be ([`parse_request_ron`]): every field optional (defaults of
//! [`GenerationRequest::default`]), unknown fields refused, `Option` fields written bare or as
//! `Some(...)` ([`ron_options`] enables `implicit_some`), enum values in the CLI spelling (`xy`,
//! `sprite`, `r#euler-a`) or the Rust one (`XY`, `Sprite`, `EulerAncestral`).
//!
//! How a bake runs ([`bake`]):
//!
//! 1. **Plan** ([`plan`]): the model folder is checked and hashed ([`ModelFolder::open`], no
//!    weights are read), and each item's content hash ([`content_hash`]: the [`CacheKey`] of the
//!    model identity and the request's pixel fields) is compared with its sidecar's. An item is
//!    up to date when the hashes match and the PNG on disk is the one the sidecar describes; an
//!    item with a bad name or an invalid field is marked failed here, before any model work.
//! 2. **Run**: the model is loaded lazily, on the first item that needs it: a rerun of an
//!    unchanged manifest loads nothing. Each item is generated ([`crate::pipeline::generate`] +
//!    [`crate::postprocess::finish`], the same bytes as everywhere else) and written atomically:
//!    the PNG to a temporary file renamed over `NAME.png`, then the sidecar the same way. A bake
//!    interrupted at any point (Ctrl-C) leaves no half-written PNG, and the next run redoes
//!    exactly the items whose sidecar does not match.
//! 3. **Report** ([`BakeReport`]): one [`ItemOutcome`] per item; a failed item never stops the
//!    others.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use image::RgbaImage;
use serde::de::{DeserializeOwned, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::cache::CacheKey;
use crate::error::DiffusionError;
use crate::model::{LoadOptions, StableDiffusion};
use crate::model_folder::{FolderOptions, ModelFolder};
use crate::models::autoencoder_kl::AutoencoderKLConfig;
use crate::pipeline::{self, DenoisingStep, GenerationHooks};
use crate::request::{GenerationRequest, InitImage};

/// The sidecar written next to each baked PNG: `NAME.texgen.json`. (JSON, not RON, so that a
/// Bevy asset loader registered for `*.texgen.ron` requests never mistakes a sidecar for one.)
pub const SIDECAR_SUFFIX: &str = ".texgen.json";

/// The extension of a single-request RON file (read by [`parse_request_ron`]).
pub const REQUEST_EXTENSION: &str = "texgen.ron";

/// The longest item name accepted (it becomes a file name, plus `.texgen.json`).
pub const MAX_NAME_LEN: usize = 100;

// ---------------------------------------------------------------- RON

/// A RON document that does not parse: where, in which field, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RonError {
    /// The file (only named in the message).
    pub path: PathBuf,
    /// 1-based line of the error.
    pub line: usize,
    /// 1-based column of the error.
    pub column: usize,
    /// The dotted path of the field being read, e.g. `items.wall.width` (None at the top level).
    pub field: Option<String>,
    /// RON's (or the field type's) message, e.g. `Expected integer`.
    pub message: String,
}

impl fmt::Display for RonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.path.display(), self.line, self.column)?;
        if let Some(field) = &self.field {
            write!(f, "field `{field}`: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for RonError {}

/// The RON options every bevy_diffusion RON file is read with: `implicit_some` (an `Option`
/// field may be written `seed: 3` as well as `Some(3)`). A Bevy asset loader for `*.texgen.ron`
/// should read with these too (or simply call [`parse_request_ron`]).
pub fn ron_options() -> ron::Options {
    ron::Options::default().with_default_extension(ron::extensions::Extensions::IMPLICIT_SOME)
}

/// Parses `text` as RON into `T`, naming the line, column and field of any error. `path` is
/// only used in the error.
pub fn parse_ron<T: DeserializeOwned>(text: &str, path: &Path) -> Result<T, RonError> {
    let options = ron_options();
    let error = |e: ron::error::SpannedError, field: Option<String>| RonError {
        path: path.to_path_buf(),
        line: e.position.line,
        column: e.position.col,
        field,
        message: e.code.to_string(),
    };
    let mut de =
        ron::Deserializer::from_str_with_options(text, &options).map_err(|e| error(e, None))?;
    let value = match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Ok(v) => v,
        Err(e) => {
            // serde_path_to_error writes `?` for a segment it could not name (e.g. the key
            // being read when the syntax broke): leave those out.
            let segments: Vec<String> = e
                .path()
                .iter()
                .filter(|s| !matches!(s, serde_path_to_error::Segment::Unknown))
                .map(|s| s.to_string())
                .collect();
            let field = (!segments.is_empty()).then(|| segments.join("."));
            let spanned = de.span_error(e.into_inner());
            return Err(error(spanned, field));
        }
    };
    de.end().map_err(|code| error(de.span_error(code), None))?;
    Ok(value)
}

/// Parses one [`GenerationRequest`] written in RON (the format of `*.texgen.ron` files and of
/// each item of a bake manifest), e.g. `(prompt: "mossy wall", seed: 3, tiling: xy)`. Missing
/// fields take their defaults; unknown fields are refused.
///
/// # Errors
/// [`RonError`] naming `path`, the line and column, and the field (e.g. `width`).
pub fn parse_request_ron(text: &str, path: &Path) -> Result<GenerationRequest, RonError> {
    parse_ron(text, path)
}

/// Writes `request` as pretty RON that [`parse_request_ron`] reads back to an equal request.
pub fn request_to_ron(request: &GenerationRequest) -> String {
    let pretty = ron::ser::PrettyConfig::default()
        .struct_names(false)
        .extensions(ron::extensions::Extensions::IMPLICIT_SOME);
    ron::Options::default()
        .to_string_pretty(request, pretty)
        .unwrap_or_else(|e| format!("/* cannot serialise the request: {e} */"))
}

// ---------------------------------------------------------------- the manifest

/// One named request of a manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct BakeItem {
    /// The output file stem: `NAME.png`, `NAME.texgen.json` (see [`check_item_name`]).
    pub name: String,
    /// What to generate.
    pub request: GenerationRequest,
}

/// A bake manifest: which model, and the items in the order they are written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BakeManifest {
    /// The model folder (relative to the manifest's folder) or, with the `hf-hub` feature, a
    /// Hugging Face repo id; `None` = the default model. `texgen bake --model` overrides it.
    #[serde(default)]
    pub model: Option<String>,
    /// LoRA files merged into the model, `[("loras/style.safetensors", 0.8), ...]` (path
    /// relative to the manifest's folder, `lora_scale`); `texgen bake --lora` /
    /// [`BakeOptions::load`]`.loras` replace the list. Default: none.
    #[serde(default)]
    pub loras: Vec<(String, f32)>,
    /// The items, in manifest order; names are unique.
    #[serde(deserialize_with = "ordered_items")]
    pub items: Vec<BakeItem>,
}

fn ordered_items<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<BakeItem>, D::Error> {
    struct ItemsVisitor;
    impl<'de> Visitor<'de> for ItemsVisitor {
        type Value = Vec<BakeItem>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a map of item names to requests, e.g. { \"wall\": (prompt: \"...\") }")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut items: Vec<BakeItem> = Vec::new();
            while let Some(name) = map.next_key::<String>()? {
                if items.iter().any(|i| i.name == name) {
                    return Err(serde::de::Error::custom(format!(
                        "item `{name}` appears twice"
                    )));
                }
                let request = map.next_value::<GenerationRequest>()?;
                items.push(BakeItem { name, request });
            }
            Ok(items)
        }
    }
    d.deserialize_map(ItemsVisitor)
}

impl BakeManifest {
    /// Parses a manifest; `path` is only named in errors.
    ///
    /// # Errors
    /// [`RonError`] with the line, column and field (e.g. `items.wall.width`) of the first error.
    /// The whole manifest is refused: a typo is fixed before any model work starts.
    pub fn parse(text: &str, path: &Path) -> Result<Self, RonError> {
        parse_ron(text, path)
    }

    /// Reads and parses the manifest file `path`.
    pub fn load(path: &Path) -> Result<Self, BakeError> {
        let text = std::fs::read_to_string(path).map_err(|error| BakeError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        Ok(Self::parse(&text, path)?)
    }
}

/// Checks that `name` makes a portable file stem: 1 to [`MAX_NAME_LEN`] ASCII letters, digits,
/// `_`, `-` and `.`, not starting with `.` or `-`, not ending with `.`, and not a Windows device
/// name (`con`, `nul`, `com1`, ...).
///
/// # Errors
/// Why not, as a sentence naming the offending character or rule.
pub fn check_item_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the name is empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "the name is {} characters long; at most {MAX_NAME_LEN}",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(format!(
            "{c:?} is not allowed in a name (names become file names: use ASCII letters, digits, \
             `_`, `-` and `.`)"
        ));
    }
    if name.starts_with('.') || name.starts_with('-') {
        return Err("a name must not start with `.` or `-`".into());
    }
    if name.ends_with('.') {
        return Err("a name must not end with `.`".into());
    }
    let stem = name.split('.').next().unwrap_or(name).to_ascii_lowercase();
    let reserved = matches!(stem.as_str(), "con" | "prn" | "aux" | "nul")
        || ((stem.starts_with("com") || stem.starts_with("lpt"))
            && stem.len() == 4
            && stem.as_bytes()[3].is_ascii_digit());
    if reserved {
        return Err(format!(
            "`{stem}` is a reserved device name on Windows and cannot be a file name"
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------- sidecars and hashes

/// What `NAME.texgen.json` records about a baked PNG.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sidecar {
    /// The item name.
    pub name: String,
    /// [`content_hash`] of the request on the model: equal = the PNG is up to date.
    pub content_hash: String,
    /// The model's identity ([`ModelFolder::identity`]).
    pub model_identity: String,
    /// The model folder it was baked with (informational).
    pub model_dir: PathBuf,
    /// The seed of the noise stream (also in `request`).
    pub seed: u64,
    /// Size of the PNG in pixels.
    pub width: u32,
    /// Size of the PNG in pixels.
    pub height: u32,
    /// blake3 (hex) of the PNG file's bytes: a PNG replaced or edited since is rebaked.
    pub png_blake3: String,
    /// The version of bevy_diffusion that baked it.
    pub bevy_diffusion_version: String,
    /// The full request, defaults filled in, as written in the manifest.
    pub request: GenerationRequest,
}

/// `<out_dir>/<name>.png`.
pub fn png_path(out_dir: &Path, name: &str) -> PathBuf {
    out_dir.join(format!("{name}.png"))
}

/// `<out_dir>/<name>.texgen.json`.
pub fn sidecar_path(out_dir: &Path, name: &str) -> PathBuf {
    out_dir.join(format!("{name}{SIDECAR_SUFFIX}"))
}

/// `request` with a relative init-image path made relative to `base_dir` (the manifest's folder).
pub fn resolve_paths(request: &GenerationRequest, base_dir: &Path) -> GenerationRequest {
    let mut resolved = request.clone();
    if let Some(InitImage::Path(p)) = &mut resolved.init_image
        && p.is_relative()
    {
        *p = base_dir.join(&*p);
    }
    resolved
}

/// The content hash (hex) a sidecar records: the [`CacheKey`] of `model_identity` and the
/// request's pixel fields, exactly. An img2img request naming its init image by path also hashes
/// the image file's bytes (resolved against `base_dir`), so that editing the image rebakes the
/// item although the request text did not change.
///
/// # Errors
/// [`DiffusionError::Image`] if the init image file cannot be read.
pub fn content_hash(
    model_identity: &str,
    request: &GenerationRequest,
    base_dir: &Path,
) -> Result<String, DiffusionError> {
    let key = CacheKey::new(model_identity, request);
    let Some(InitImage::Path(p)) = &resolve_paths(request, base_dir).init_image else {
        return Ok(key.hex());
    };
    let bytes = std::fs::read(p).map_err(|e| DiffusionError::Image {
        path: p.clone(),
        reason: e.to_string(),
    })?;
    let mut h = blake3::Hasher::new();
    h.update(b"bevy_diffusion bake v1 init image\0");
    h.update(&key.0);
    h.update(blake3::hash(&bytes).as_bytes());
    Ok(h.finalize().to_hex().to_string())
}

/// The temporary file `path` is written to before being renamed over it: `.<file name>.tmp-<pid>`
/// in the same folder (hidden, and never mistaken for a PNG).
fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(
        ".{}.tmp-{}",
        name.unwrap_or_default(),
        std::process::id()
    ))
}

/// Removes temporary files left by an interrupted write of `path` (any process id).
fn remove_stale_temp_files(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let prefix = format!(".{}.tmp-", name.to_string_lossy());
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, flushed to disk,
/// then renamed over `path`. A crash leaves the old file or the new one, never half of one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = temp_path(path);
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Encodes `image` as PNG (the bytes `texgen bake` writes).
pub fn encode_png(image: &RgbaImage) -> Result<Vec<u8>, image::ImageError> {
    let mut bytes = Vec::new();
    image.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )?;
    Ok(bytes)
}

// ---------------------------------------------------------------- planning

/// What a bake has to do for one item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemState {
    /// The PNG and sidecar match the request and model: nothing to do.
    UpToDate,
    /// To (re)generate, and why (`new`, `request or model changed`, `PNG missing`, ...).
    Needed(String),
    /// Cannot be baked (bad name, invalid field, unreadable init image): fails without model work.
    Invalid(String),
}

/// One item of a [`plan`].
#[derive(Debug, Clone)]
pub struct PlannedItem {
    /// The item as written.
    pub item: BakeItem,
    /// `<out>/<name>.png`.
    pub png: PathBuf,
    /// `<out>/<name>.texgen.json`.
    pub sidecar: PathBuf,
    /// [`content_hash`] on the planned model (None for invalid items).
    pub content_hash: Option<String>,
    /// What to do.
    pub state: ItemState,
}

/// Decides, without loading the model, which items of `items` are up to date in `out_dir` for
/// the model with `model_identity` (see the module docs). `vae_scale` is the model's pixels per
/// latent (8 for SD), for checking sizes; `force` marks every valid item as needed.
pub fn plan(
    items: &[BakeItem],
    base_dir: &Path,
    out_dir: &Path,
    model_identity: &str,
    vae_scale: usize,
    force: bool,
) -> Vec<PlannedItem> {
    let mut planned: Vec<PlannedItem> = Vec::with_capacity(items.len());
    for item in items {
        let name = &item.name;
        let png = png_path(out_dir, name);
        let sidecar = sidecar_path(out_dir, name);
        let mut entry = PlannedItem {
            item: item.clone(),
            png,
            sidecar,
            content_hash: None,
            state: ItemState::Needed("new".into()),
        };
        let clash = planned
            .iter()
            .find(|p| p.item.name.eq_ignore_ascii_case(name))
            .map(|p| p.item.name.clone());
        let valid = check_item_name(name)
            .map_err(|reason| format!("invalid item name {name:?}: {reason}"))
            .and_then(|()| match clash {
                Some(other) => Err(format!(
                    "item name {name:?} differs from {other:?} only in case; the files would \
                     collide on case-insensitive file systems"
                )),
                None => Ok(()),
            })
            .and_then(|()| item.request.validate(vae_scale).map_err(|e| e.to_string()))
            .and_then(|()| {
                content_hash(model_identity, &item.request, base_dir).map_err(|e| e.to_string())
            });
        match valid {
            Err(reason) => entry.state = ItemState::Invalid(reason),
            Ok(hash) => {
                entry.state = if force {
                    ItemState::Needed("forced".into())
                } else {
                    up_to_date(&entry.png, &entry.sidecar, &hash)
                };
                entry.content_hash = Some(hash);
            }
        }
        planned.push(entry);
    }
    planned
}

/// UpToDate, or Needed with the reason.
fn up_to_date(png: &Path, sidecar: &Path, hash: &str) -> ItemState {
    let needed = |why: &str| ItemState::Needed(why.to_string());
    if !sidecar.is_file() {
        return needed(if png.is_file() {
            "no sidecar next to the PNG"
        } else {
            "new"
        });
    }
    let Some(recorded) = std::fs::read_to_string(sidecar)
        .ok()
        .and_then(|t| serde_json::from_str::<Sidecar>(&t).ok())
    else {
        return needed("sidecar unreadable");
    };
    if recorded.content_hash != hash {
        return needed("request or model changed");
    }
    match std::fs::read(png) {
        Err(_) => needed("PNG missing"),
        Ok(bytes) if blake3::hash(&bytes).to_hex().as_str() != recorded.png_blake3 => {
            needed("PNG differs from the one baked")
        }
        Ok(_) => ItemState::UpToDate,
    }
}

// ---------------------------------------------------------------- running

/// Everything [`bake`] needs besides the manifest.
#[derive(Debug, Clone)]
pub struct BakeOptions {
    /// Where `NAME.png` and `NAME.texgen.json` go (created if missing).
    pub out_dir: PathBuf,
    /// The model folder (already resolved: see [`crate::hub::resolve_model`]).
    pub model_dir: PathBuf,
    /// Relative init-image paths are relative to this (the manifest's folder).
    pub base_dir: PathBuf,
    /// Regenerate every item, up to date or not.
    pub force: bool,
    /// How to load the model (device, fp16 variant).
    pub load: LoadOptions,
    /// Set to true to stop between two denoising steps; the item in progress is not written.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Compute threads (`None` = [`StableDiffusion::max_useful_threads`], else all cores).
    pub threads: Option<usize>,
}

impl BakeOptions {
    /// Options writing to `out_dir` with the model folder `model_dir`, paths relative to the
    /// current folder, on the CPU.
    pub fn new(out_dir: impl Into<PathBuf>, model_dir: impl Into<PathBuf>) -> Self {
        Self {
            out_dir: out_dir.into(),
            model_dir: model_dir.into(),
            base_dir: PathBuf::from("."),
            force: false,
            load: LoadOptions::default(),
            cancel: None,
            threads: None,
        }
    }
}

/// How one item ended.
#[derive(Debug, Clone, PartialEq)]
pub enum ItemOutcome {
    /// Generated and written.
    Baked {
        /// The PNG written.
        png: PathBuf,
        /// Its size in pixels.
        width: u32,
        /// Its size in pixels.
        height: u32,
        /// Generation time (the model load not included).
        seconds: f64,
    },
    /// Up to date; nothing done.
    Skipped,
    /// Not written, and why.
    Failed(String),
}

/// Progress of a [`bake`], in order: `Planned`, then per item `ItemStarted`, `Step`s and
/// `ItemFinished` (skipped and invalid items only get `ItemFinished`); `LoadingModel` and
/// `ModelLoaded` before the first item that needs the model.
#[derive(Debug)]
pub enum BakeEvent<'a> {
    /// The plan: every item and what will be done with it.
    Planned { items: &'a [PlannedItem] },
    /// The model is about to be loaded (lazily, for the first item to generate).
    LoadingModel { dir: &'a Path },
    /// The model is loaded.
    ModelLoaded { dir: &'a Path, seconds: f64 },
    /// Item `index` starts generating.
    ItemStarted {
        index: usize,
        name: &'a str,
        reason: &'a str,
    },
    /// A denoising step of item `index` finished (`step` is 1-based).
    Step {
        index: usize,
        name: &'a str,
        step: usize,
        total: usize,
    },
    /// Item `index` is done, skipped or failed.
    ItemFinished {
        index: usize,
        name: &'a str,
        outcome: &'a ItemOutcome,
    },
}

/// The result of a [`bake`].
#[derive(Debug, Clone, PartialEq)]
pub struct BakeReport {
    /// `(name, outcome)` in manifest order.
    pub items: Vec<(String, ItemOutcome)>,
    /// Whether the model was loaded (false when every item was skipped or invalid).
    pub model_loaded: bool,
    /// The identity of the model the bake planned with.
    pub model_identity: String,
    /// True when [`BakeOptions::cancel`] stopped the bake (the remaining items are absent).
    pub cancelled: bool,
}

impl BakeReport {
    fn count(&self, f: impl Fn(&ItemOutcome) -> bool) -> usize {
        self.items.iter().filter(|(_, o)| f(o)).count()
    }
    /// Items generated and written.
    pub fn baked(&self) -> usize {
        self.count(|o| matches!(o, ItemOutcome::Baked { .. }))
    }
    /// Items up to date.
    pub fn skipped(&self) -> usize {
        self.count(|o| matches!(o, ItemOutcome::Skipped))
    }
    /// Items that failed.
    pub fn failed(&self) -> usize {
        self.count(|o| matches!(o, ItemOutcome::Failed(_)))
    }
    /// `baked N, skipped M, failed K`.
    pub fn summary(&self) -> String {
        format!(
            "baked {}, skipped {}, failed {}",
            self.baked(),
            self.skipped(),
            self.failed()
        )
    }
}

/// Why a bake could not run at all (a failing item is not one: see [`ItemOutcome::Failed`]).
#[derive(Debug, thiserror::Error)]
pub enum BakeError {
    /// The manifest does not parse.
    #[error(transparent)]
    Manifest(#[from] RonError),
    /// The model folder is broken or cannot be loaded.
    #[error(transparent)]
    Model(#[from] DiffusionError),
    /// The manifest cannot be read or the output folder cannot be created.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// Forwards denoising steps as [`BakeEvent::Step`] and polls the cancel flag.
struct BakeHooks<'a, 'b> {
    on_event: &'a mut (dyn FnMut(&BakeEvent<'_>) + Send),
    index: usize,
    name: &'b str,
    cancel: Option<&'b AtomicBool>,
}

impl GenerationHooks for BakeHooks<'_, '_> {
    fn on_step(&mut self, step: &DenoisingStep) {
        (self.on_event)(&BakeEvent::Step {
            index: self.index,
            name: self.name,
            step: step.step + 1,
            total: step.total,
        });
    }
    fn should_cancel(&mut self) -> bool {
        self.cancel.is_some_and(|c| c.load(Ordering::Relaxed))
    }
}

/// Bakes `manifest` (see the module docs), reporting progress through `on_event`.
///
/// # Errors
/// [`BakeError::Model`] when the model folder fails its checks (nothing is written) or fails to
/// load when the first item needs it; [`BakeError::Io`] when `out_dir` cannot be created. Every
/// per-item problem is an [`ItemOutcome::Failed`] in the report instead.
pub fn bake(
    manifest: &BakeManifest,
    options: &BakeOptions,
    on_event: &mut (dyn FnMut(&BakeEvent<'_>) + Send),
) -> Result<BakeReport, BakeError> {
    let folder_options = FolderOptions {
        prefer_fp16_variant: options.load.prefer_fp16_variant,
        ..FolderOptions::default()
    };
    let folder = ModelFolder::open(&options.model_dir, &folder_options)?;
    let vae_scale = AutoencoderKLConfig::from_file(&folder.vae.config)?.downscale_factor;
    // The manifest's LoRAs unless the options name some; they are part of the model identity.
    let mut load = options.load.clone();
    if load.loras.is_empty() {
        load.loras = (manifest.loras.iter())
            .map(|(path, scale)| crate::loading::lora::LoraSpec {
                path: options.base_dir.join(path),
                scale: *scale,
            })
            .collect();
    }
    let identity = crate::loading::lora_merge::identity(&folder.identity, &load.loras)?;
    let planned = plan(
        &manifest.items,
        &options.base_dir,
        &options.out_dir,
        &identity,
        vae_scale,
        options.force,
    );
    on_event(&BakeEvent::Planned { items: &planned });
    if planned
        .iter()
        .any(|p| matches!(p.state, ItemState::Needed(_)))
    {
        std::fs::create_dir_all(&options.out_dir).map_err(|error| BakeError::Io {
            path: options.out_dir.clone(),
            error,
        })?;
    }

    let mut report = BakeReport {
        items: Vec::with_capacity(planned.len()),
        model_loaded: false,
        model_identity: identity.clone(),
        cancelled: false,
    };
    let mut model: Option<StableDiffusion> = None;
    for (index, entry) in planned.iter().enumerate() {
        let name = entry.item.name.as_str();
        let outcome = match &entry.state {
            ItemState::UpToDate => ItemOutcome::Skipped,
            ItemState::Invalid(reason) => ItemOutcome::Failed(reason.clone()),
            ItemState::Needed(reason) => {
                if model.is_none() {
                    on_event(&BakeEvent::LoadingModel {
                        dir: &options.model_dir,
                    });
                    let started = Instant::now();
                    model = Some(StableDiffusion::load(&options.model_dir, &load)?);
                    report.model_loaded = true;
                    on_event(&BakeEvent::ModelLoaded {
                        dir: &options.model_dir,
                        seconds: started.elapsed().as_secs_f64(),
                    });
                }
                let Some(model) = model.as_ref() else {
                    unreachable!("loaded just above")
                };
                on_event(&BakeEvent::ItemStarted {
                    index,
                    name,
                    reason,
                });
                let mut hooks = BakeHooks {
                    on_event: &mut *on_event,
                    index,
                    name,
                    cancel: options.cancel.as_deref(),
                };
                match model.run_with_threads(options.threads, || {
                    bake_one(model, entry, options, &mut hooks)
                }) {
                    Ok(outcome) => outcome,
                    Err(DiffusionError::Cancelled) => {
                        report.cancelled = true;
                        ItemOutcome::Failed("cancelled".into())
                    }
                    Err(e) => ItemOutcome::Failed(e.to_string()),
                }
            }
        };
        on_event(&BakeEvent::ItemFinished {
            index,
            name,
            outcome: &outcome,
        });
        report.items.push((name.to_string(), outcome));
        if report.cancelled {
            break;
        }
    }
    Ok(report)
}

/// Generates one item and writes its PNG, then its sidecar.
fn bake_one(
    model: &StableDiffusion,
    entry: &PlannedItem,
    options: &BakeOptions,
    hooks: &mut dyn GenerationHooks,
) -> Result<ItemOutcome, DiffusionError> {
    let started = Instant::now();
    let request = &entry.item.request;
    let resolved = resolve_paths(request, &options.base_dir);
    let out = pipeline::generate(model, &resolved, hooks)?;
    let image = crate::postprocess::finish(out.image, &resolved);
    let png = encode_png(&image).map_err(|e| DiffusionError::Image {
        path: entry.png.clone(),
        reason: format!("cannot encode the PNG: {e}"),
    })?;
    // The identity of the model actually loaded (equal to the planned one unless the folder
    // changed in between).
    let hash = content_hash(&model.identity, request, &options.base_dir)?;
    let sidecar = Sidecar {
        name: entry.item.name.clone(),
        content_hash: hash,
        model_identity: model.identity.clone(),
        model_dir: model.dir.clone(),
        seed: out.seed,
        width: image.width(),
        height: image.height(),
        png_blake3: blake3::hash(&png).to_hex().to_string(),
        bevy_diffusion_version: env!("CARGO_PKG_VERSION").to_string(),
        request: request.clone(),
    };
    let sidecar_json = serde_json::to_vec_pretty(&sidecar).map_err(|e| DiffusionError::Io {
        path: entry.sidecar.clone(),
        source: std::io::Error::other(e),
    })?;
    remove_stale_temp_files(&entry.png);
    remove_stale_temp_files(&entry.sidecar);
    // PNG first: a sidecar never describes a PNG that is not there yet.
    write_atomic(&entry.png, &png).map_err(|e| DiffusionError::io(&entry.png, e))?;
    write_atomic(&entry.sidecar, &sidecar_json)
        .map_err(|e| DiffusionError::io(&entry.sidecar, e))?;
    Ok(ItemOutcome::Baked {
        png: entry.png.clone(),
        width: image.width(),
        height: image.height(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Tiling;
    use crate::request::AssetKind;
    use crate::schedulers::SchedulerKind;

    fn p() -> &'static Path {
        Path::new("test.ron")
    }

    #[test]
    fn request_ron_defaults_aliases_and_implicit_some() {
        let r = parse_request_ron(
            "(prompt: \"mossy wall\", seed: 3, tiling: XY, kind: sprite, scheduler: r#euler-a, \
             pixel_art: (cell: 2, colors: 16))",
            p(),
        )
        .unwrap();
        assert_eq!(r.prompt, "mossy wall");
        assert_eq!(r.seed, 3);
        assert_eq!(r.tiling, Tiling::XY);
        assert_eq!(r.kind, AssetKind::Sprite);
        assert_eq!(r.scheduler, Some(SchedulerKind::EulerAncestral));
        assert_eq!(r.num_inference_steps, 20, "defaults fill the rest");
        let r2 = parse_request_ron(
            "(tiling: xy, kind: Sprite, scheduler: Some(EulerAncestral))",
            p(),
        )
        .unwrap();
        assert_eq!(
            (r2.tiling, r2.kind, r2.scheduler),
            (
                Tiling::XY,
                AssetKind::Sprite,
                Some(SchedulerKind::EulerAncestral)
            )
        );
        assert_eq!(
            parse_request_ron("()", p()).unwrap(),
            GenerationRequest::default()
        );
    }

    #[test]
    fn request_ron_round_trips() {
        let r = GenerationRequest {
            prompt: "a \"quoted\" prompt".into(),
            seed: 7,
            scheduler: Some(SchedulerKind::DpmSolverMultistepKarras),
            tiling: Tiling::X,
            init_image: Some(InitImage::Path("rock.png".into())),
            pixel_art: Some(crate::request::PixelArt { cell: 3, colors: 8 }),
            player: Some("ann".into()),
            ..Default::default()
        };
        let text = request_to_ron(&r);
        assert_eq!(parse_request_ron(&text, p()).unwrap(), r, "{text}");
    }

    #[test]
    fn request_ron_errors_name_line_and_field() {
        let e = parse_request_ron("(\n  prompt: \"x\",\n  width: \"big\",\n)", p()).unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        assert_eq!(e.field.as_deref(), Some("width"), "{e}");
        assert!(e.to_string().starts_with("test.ron:3:"), "{e}");
        let e = parse_request_ron("(\n  prompt: \"x\",\n  widht: 64,\n)", p()).unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        assert!(e.message.contains("widht"), "{e}");
        let e = parse_request_ron("(prompt: \"x\") trailing", p()).unwrap_err();
        assert_eq!(e.line, 1, "{e}");
    }

    #[test]
    fn manifest_keeps_order_and_names_the_item_field() {
        let m = BakeManifest::parse(
            "(items: { \"b\": (seed: 1), \"a\": (), \"c\": (prompt: \"z\") })",
            p(),
        )
        .unwrap();
        let names: Vec<_> = m.items.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["b", "a", "c"]);
        assert_eq!(m.model, None);
        let m = BakeManifest::parse("(model: \"models/x\", items: {})", p()).unwrap();
        assert_eq!(m.model.as_deref(), Some("models/x"));

        let e = BakeManifest::parse(
            "(\n  items: {\n    \"wall\": (seed: 1),\n    \"floor\": (tiling: diagonal),\n  },\n)",
            p(),
        )
        .unwrap_err();
        assert_eq!(e.line, 4, "{e}");
        assert_eq!(e.field.as_deref(), Some("items.floor.tiling"), "{e}");
        let e = BakeManifest::parse("(items: { \"a\": (), \"a\": () })", p()).unwrap_err();
        assert!(e.message.contains("`a` appears twice"), "{e}");
        let e = BakeManifest::parse("(itemz: {})", p()).unwrap_err();
        assert!(e.message.contains("itemz"), "{e}");
    }

    #[test]
    fn item_names_are_portable_file_stems() {
        for ok in ["wall", "wall_02", "Wall-mossy.v2", "a"] {
            assert!(check_item_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "../up", "a/b", "a\\b", ".hidden", "-x", "dot.", "con", "NUL.txt", "com1",
            "sp ace", "grün", "a:b",
        ] {
            assert!(check_item_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_item_name(&"x".repeat(MAX_NAME_LEN + 1)).is_err());
        assert!(
            check_item_name("combat").is_ok(),
            "only com1..com9 are reserved"
        );
    }

    #[test]
    fn content_hash_is_the_cache_key_unless_an_init_image_file_is_named() {
        let r = GenerationRequest::texture("wall");
        assert_eq!(
            content_hash("m", &r, Path::new(".")).unwrap(),
            CacheKey::new("m", &r).hex()
        );
        let dir = std::env::temp_dir().join(format!("bd_bake_hash_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("init.png"), b"one").unwrap();
        let img2img = GenerationRequest {
            init_image: Some(InitImage::Path("init.png".into())),
            ..r
        };
        let h1 = content_hash("m", &img2img, &dir).unwrap();
        std::fs::write(dir.join("init.png"), b"two").unwrap();
        let h2 = content_hash("m", &img2img, &dir).unwrap();
        assert_ne!(h1, h2, "editing the init image changes the hash");
        assert!(content_hash("m", &img2img, Path::new("/nonexistent")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn atomic_writes_leave_no_temporary_files() {
        let dir = std::env::temp_dir().join(format!("bd_bake_atomic_{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let file = dir.join("x.png");
        write_atomic(&file, b"first").unwrap();
        // A stale temporary file of an interrupted write by another process.
        std::fs::write(dir.join(".x.png.tmp-99999"), b"half").unwrap();
        remove_stale_temp_files(&file);
        write_atomic(&file, b"second").unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["x.png"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
