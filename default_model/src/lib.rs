//! The default model of [bevy_diffusion](https://crates.io/crates/bevy_diffusion), compiled in.
//!
//! [`FILES`] holds every file of the model folder (`model/` beside this crate's `Cargo.toml`,
//! the diffusers layout: `model_index.json`, `text_encoder/`, `tokenizer/`, `unet/`, `vae/`,
//! `scheduler/`, plus `bevy_diffusion.json` with the sampling settings the model was tuned for)
//! as `&'static [u8]`, so a game that depends on bevy_diffusion from crates.io has the model
//! with no folder, no environment variable and no download. bevy_diffusion reads these bytes
//! through `bevy_diffusion::loading::embedded` and loads the weights from memory.
//!
//! The weights are safetensors in compressed-tensors' int8 channel-wise layout: every weight
//! matrix and conv kernel `w` of shape `[out, ...]` is stored as `I8` with an f16 sibling
//! `w_scale` of `out` values, every other tensor (norms, biases) as f16, so the `.crate` stays
//! under crates.io's 10 MiB limit; bevy_diffusion dequantizes them to f32 at load
//! (`w[c, ...] = q[c, ...] * scale[c]`). Measured against the f32 original on the 334 prompt x
//! seed rows of `training/prompts.txt`: mean difference 0.52/255 per RGBA channel (largest single
//! channel value 34/255); the same colour, class and alpha scores, the seam median within 0.004
//! (see `docs/embedded_model.md`).
#![no_std]
#![forbid(unsafe_code)]

macro_rules! model_files {
    ($($path:literal),* $(,)?) => {
        &[$(($path, include_bytes!(concat!("../model/", $path)) as &[u8])),*]
    };
}

/// Every file of the model folder: (path inside the folder, `/`-separated; contents).
/// Weight files (`*.safetensors`) hold I8 weights with f16 scales and f16 tensors; the rest are
/// UTF-8 JSON.
pub const FILES: &[(&str, &[u8])] = model_files![
    "model_index.json",
    "bevy_diffusion.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
];

/// The contents of `path` (`/`-separated, relative to the model folder), if it is one of
/// [`FILES`].
pub fn file(path: &str) -> Option<&'static [u8]> {
    FILES
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, bytes)| *bytes)
}
