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

/// The default model folder: `$BEVY_DIFFUSION_DEFAULT_MODEL` if set, else the repository's
/// `assets/models/default` (resolved at compile time from this crate's location).
pub fn default_model_dir() -> PathBuf {
    match std::env::var_os(DEFAULT_MODEL_ENV) {
        Some(dir) => PathBuf::from(dir),
        None => bundled_model_dir(),
    }
}
