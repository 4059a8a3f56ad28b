//! The default model shipped with the project in `assets/models/default` (diffusers layout),
//! used by the plugin, `texgen` and the demo when no model folder is given.

use std::path::PathBuf;

/// Environment variable that points the default model at another folder.
pub const DEFAULT_MODEL_ENV: &str = "BEVY_DIFFUSION_DEFAULT_MODEL";

/// A key of `model_index.json` that marks a folder as (a copy of) the project's own embedded
/// model, for `texgen inspect` (`"_bevy_diffusion_embedded": true`; diffusers ignores keys
/// starting with `_`). Without it, only the repository's `assets/models/default` itself is
/// recognised as the embedded model.
pub const EMBEDDED_MARKER: &str = "_bevy_diffusion_embedded";

/// The repository's `assets/models/default` (resolved at compile time from this crate's
/// location), whatever `$BEVY_DIFFUSION_DEFAULT_MODEL` says.
pub fn bundled_model_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("assets")
        .join("models")
        .join("default")
}

/// The default model folder, the first of:
/// 1. `$BEVY_DIFFUSION_DEFAULT_MODEL` when set (and not empty);
/// 2. `assets/models/default` beside the executable, then in the current folder (where a shipped
///    game keeps its Bevy `assets/`), when it exists;
/// 3. the repository's `assets/models/default` (resolved at compile time from this crate's
///    location; what `cargo run` in a checkout uses).
pub fn default_model_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(DEFAULT_MODEL_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let relative = std::path::Path::new("assets")
        .join("models")
        .join("default");
    let beside_exe = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join(&relative)));
    beside_exe
        .into_iter()
        .chain(std::env::current_dir().ok().map(|d| d.join(&relative)))
        .find(|d| d.join("model_index.json").is_file())
        .unwrap_or_else(bundled_model_dir)
}
