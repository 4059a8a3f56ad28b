//! STUB (owned by the models helper): UNet2DConditionModel.
use std::path::Path;

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use crate::tiling::Tiling;

/// `unet/config.json`.
#[derive(Debug, Clone)]
pub struct UNet2DConditionConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub cross_attention_dim: usize,
}

impl UNet2DConditionConfig {
    /// Parses and validates `unet/config.json`.
    pub fn from_file(path: &Path) -> crate::Result<Self> {
        let _ = path;
        todo!()
    }
}

/// diffusers' `UNet2DConditionModel`.
#[derive(Debug, Clone)]
pub struct UNet2DConditionModel {}

impl UNet2DConditionModel {
    /// Loads from the `unet/` var builder.
    pub fn new(vb: VarBuilder, cfg: &UNet2DConditionConfig) -> Result<Self> {
        let _ = (vb, cfg);
        todo!()
    }
    /// `sample` `[batch, in_channels, h, w]`, `timestep` (same for the batch),
    /// `encoder_hidden_states` `[batch, seq, cross_attention_dim]` -> `[batch, out_channels, h, w]`.
    pub fn forward(&self, sample: &Tensor, timestep: f64, encoder_hidden_states: &Tensor, tiling: Tiling) -> Result<Tensor> {
        let _ = (sample, timestep, encoder_hidden_states, tiling);
        todo!()
    }
}
