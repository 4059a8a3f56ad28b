//! The bake manifest ([`BakeManifest`]: which model, and named items), item names, the sidecar
//! written next to each PNG, and the content hash that decides whether an item is up to date.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use super::BakeError;
use crate::error::DiffusionError;
use crate::request::ron::{RonError, parse_ron};
use crate::request::{GenerationRequest, InitImage};
use crate::runtime::cache::CacheKey;

/// The sidecar written next to each baked PNG: `NAME.texgen.json`. (JSON, not RON, so that a
/// Bevy asset loader registered for `*.texgen.ron` requests never mistakes a sidecar for one.)
pub const SIDECAR_SUFFIX: &str = ".texgen.json";

/// The longest item name accepted (it becomes a file name, plus `.texgen.json`).
pub const MAX_NAME_LEN: usize = 100;

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
    /// [`super::BakeOptions::load`]`.loras` replace the list. Default: none.
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
    /// The model's identity ([`ModelFolder::identity`](crate::loading::folder::ModelFolder::identity)).
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
    for image in [&mut resolved.init_image, &mut resolved.mask] {
        if let Some(InitImage::Path(p)) = image
            && p.is_relative()
        {
            *p = base_dir.join(&*p);
        }
    }
    resolved
}

/// The content hash (hex) a sidecar records: the [`CacheKey`] of `model_identity` and the
/// request's pixel fields, exactly. An img2img request naming its init image by path also hashes
/// the image file's bytes (resolved against `base_dir`), so that editing the image rebakes the
/// item although the request text did not change; an inpainting mask named by path is hashed the
/// same way after it.
///
/// # Errors
/// [`DiffusionError::Image`] if the init image or mask file cannot be read.
pub fn content_hash(
    model_identity: &str,
    request: &GenerationRequest,
    base_dir: &Path,
) -> Result<String, DiffusionError> {
    let key = CacheKey::new(model_identity, request);
    let resolved = resolve_paths(request, base_dir);
    let read = |p: &std::path::PathBuf| {
        std::fs::read(p).map_err(|e| DiffusionError::Image {
            path: p.clone(),
            reason: e.to_string(),
        })
    };
    let mut hex = key.hex();
    if let Some(InitImage::Path(p)) = &resolved.init_image {
        let bytes = read(p)?;
        let mut h = blake3::Hasher::new();
        h.update(b"bevy_diffusion bake v1 init image\0");
        h.update(&key.0);
        h.update(blake3::hash(&bytes).as_bytes());
        hex = h.finalize().to_hex().to_string();
    }
    if let Some(InitImage::Path(p)) = &resolved.mask {
        let bytes = read(p)?;
        let mut h = blake3::Hasher::new();
        h.update(b"bevy_diffusion bake v1 mask\0");
        h.update(hex.as_bytes());
        h.update(blake3::hash(&bytes).as_bytes());
        hex = h.finalize().to_hex().to_string();
    }
    Ok(hex)
}
