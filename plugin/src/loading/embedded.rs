//! The default model, used by the plugin, `texgen` and the demo when no model folder is given:
//! a folder on disk when there is one, else the model compiled into the binary.
//!
//! The compiled-in model is the `bevy_diffusion_default_model` crate (feature `default_model`,
//! on by default): its files are `&'static [u8]` in the executable, so a game that depends on
//! the published crates needs no model folder, environment variable or download. It appears to
//! the loader as the folder [`EMBEDDED_DIR`] (`<embedded>`), whose files
//! [`crate::loading::model_files`] answers from memory: the weights (8-bit safetensors with
//! per-output-channel f16 scales, dequantized to f32 at load) are read straight from the binary,
//! never written to or mapped from disk.
//!
//! Precedence ([`default_model_dir`]): `$BEVY_DIFFUSION_DEFAULT_MODEL`, then an
//! `assets/models/default` folder beside the executable or in the current folder, then the
//! compiled-in model.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

pub use super::model_files::{EMBEDDED_DIR, write_embedded_model};

/// Environment variable that points the default model at another folder.
pub const DEFAULT_MODEL_ENV: &str = "BEVY_DIFFUSION_DEFAULT_MODEL";

/// A key of `model_index.json` that marks a folder as (a copy of) the project's own embedded
/// model, for `texgen inspect` (`"_bevy_diffusion_embedded": true`; diffusers ignores keys
/// starting with `_`). The compiled-in model carries it; a copy written by
/// [`write_embedded_model`] too.
pub const EMBEDDED_MARKER: &str = "_bevy_diffusion_embedded";

/// The compiled-in default model as a folder path, `<embedded>` ([`EMBEDDED_DIR`]): pass it to
/// [`crate::StableDiffusion::load`] like any folder. Without the `default_model` feature it has
/// no files (loading it is [`crate::DiffusionError::ModelFolderMissing`]).
pub fn embedded_model_dir() -> PathBuf {
    PathBuf::from(EMBEDDED_DIR)
}

/// The model shipped with the crate: the compiled-in one, [`embedded_model_dir`] (kept under
/// its old name; it was the repository's `assets/models/default`, which now lives compiled in).
pub fn bundled_model_dir() -> PathBuf {
    embedded_model_dir()
}

/// True when the compiled-in model is there (the `default_model` feature).
pub fn has_embedded_model() -> bool {
    !super::model_files::embedded_files().is_empty()
}

/// The default model folder, the first of:
/// 1. `$BEVY_DIFFUSION_DEFAULT_MODEL` when set (and not empty);
/// 2. `assets/models/default` beside the executable, then in the current folder (where a shipped
///    game keeps its Bevy `assets/`), when it holds a `model_index.json`;
/// 3. the compiled-in model, [`embedded_model_dir`] (loaded from memory).
///
/// ([`resolve_default_model_dir`] with this process's environment, executable and folder.)
pub fn default_model_dir() -> PathBuf {
    let search: Vec<PathBuf> = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
        .into_iter()
        .chain(std::env::current_dir().ok())
        .collect();
    resolve_default_model_dir(std::env::var_os(DEFAULT_MODEL_ENV), &search)
}

/// [`default_model_dir`]'s rule for a given `$BEVY_DIFFUSION_DEFAULT_MODEL` value (`env`) and
/// folders to look in for `assets/models/default` (`search`, in order): `env` when set and not
/// empty, else the first `<search>/assets/models/default` holding a `model_index.json`, else
/// [`embedded_model_dir`]. Only checks that files exist; reads nothing.
pub fn resolve_default_model_dir(env: Option<OsString>, search: &[PathBuf]) -> PathBuf {
    if let Some(dir) = env.filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let relative = Path::new("assets").join("models").join("default");
    search
        .iter()
        .map(|d| d.join(&relative))
        .find(|d| d.join("model_index.json").is_file())
        .unwrap_or_else(embedded_model_dir)
}
