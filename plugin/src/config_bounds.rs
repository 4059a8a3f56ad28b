//! Upper bounds on the sizes a model's `config.json` may ask for, checked when the config is
//! parsed, before any module or tensor is built (so `texgen inspect` and `load` refuse
//! `layers_per_block: 1000000` by name instead of allocating until the process aborts).
//!
//! The bounds are far above every published Stable Diffusion family model (SD 1.x/2.x: 2 layers
//! per block, 1280 channels, 12-23 text-encoder layers; SDXL: 10 transformer layers, 32 text
//! layers) and far below what would exhaust memory.

use std::path::Path;

use crate::error::{DiffusionError, Result};

/// Resnets per block (`layers_per_block`) and transformer blocks per attention
/// (`transformer_layers_per_block`).
pub const MAX_LAYERS_PER_BLOCK: usize = 64;
/// Text-encoder layers (`num_hidden_layers`).
pub const MAX_HIDDEN_LAYERS: usize = 128;
/// Channels of one block, hidden sizes, cross-attention and embedding widths.
pub const MAX_CHANNELS: usize = 16_384;
/// MLP widths (`intermediate_size`, `time_embedding_dim`).
pub const MAX_WIDTH: usize = 65_536;
/// Attention heads, group-norm groups.
pub const MAX_HEADS: usize = 1024;
/// Image/latent channels (`in_channels`, `out_channels`, `latent_channels`).
pub const MAX_IMAGE_CHANNELS: usize = 64;
/// Text-encoder positions (`max_position_embeddings`).
pub const MAX_POSITIONS: usize = 4096;
/// Tokenizer vocabulary (`vocab_size`).
pub const MAX_VOCAB: usize = 1_000_000;

/// `Ok` when every `(field, value, max)` has `value <= max`; else
/// [`DiffusionError::InvalidConfig`] naming the file, the first field over its bound, its value
/// and the bound.
pub fn check_bounds(path: &Path, fields: &[(&str, usize, usize)]) -> Result<()> {
    for &(field, value, max) in fields {
        if value > max {
            return Err(DiffusionError::config(
                path,
                field,
                format!(
                    "{value} is out of range (at most {max}): refused before building an absurd model"
                ),
            ));
        }
    }
    Ok(())
}

/// [`check_bounds`] for every entry of a per-block list.
pub fn check_each(path: &Path, field: &str, values: &[usize], max: usize) -> Result<()> {
    match values.iter().find(|&&v| v > max) {
        Some(&v) => check_bounds(path, &[(field, v, max)]),
        None => Ok(()),
    }
}
