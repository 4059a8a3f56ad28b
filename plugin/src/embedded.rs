//! The default model shipped with the project in `assets/models/default` (diffusers layout),
//! used by the plugin, `texgen` and the demo when no model folder is given.

use std::path::PathBuf;

/// Environment variable that points the default model at another folder.
pub const DEFAULT_MODEL_ENV: &str = "BEVY_DIFFUSION_DEFAULT_MODEL";

/// The default model folder: `$BEVY_DIFFUSION_DEFAULT_MODEL` if set, else the repository's
/// `assets/models/default` (resolved at compile time from this crate's location).
pub fn default_model_dir() -> PathBuf {
    match std::env::var_os(DEFAULT_MODEL_ENV) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("assets")
            .join("models")
            .join("default"),
    }
}
