//! STUB (owned by the models helper): CLIP text encoder.
use std::path::Path;

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

/// `text_encoder/config.json` of a `CLIPTextModel`.
#[derive(Debug, Clone)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub max_position_embeddings: usize,
}

impl ClipTextConfig {
    /// Parses `text_encoder/config.json`.
    pub fn from_file(path: &Path) -> crate::Result<Self> {
        let _ = path;
        todo!()
    }
}

/// transformers' `CLIPTextModel`.
#[derive(Debug, Clone)]
pub struct ClipTextModel {}

impl ClipTextModel {
    /// Loads from the folder's root var builder (tensor names start with `text_model.`).
    pub fn new(vb: VarBuilder, cfg: &ClipTextConfig) -> Result<Self> {
        let _ = (vb, cfg);
        todo!()
    }
    /// `input_ids` `[batch, seq]` (u32) -> `last_hidden_state` `[batch, seq, hidden_size]`.
    pub fn forward(&self, input_ids: &Tensor) -> Result<Tensor> {
        let _ = input_ids;
        todo!()
    }
}
