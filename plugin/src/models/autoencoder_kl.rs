//! STUB (owned by the VAE helper): AutoencoderKL.
use std::path::Path;

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use crate::tiling::Tiling;

/// `vae/config.json`.
#[derive(Debug, Clone)]
pub struct AutoencoderKLConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub latent_channels: usize,
    pub scaling_factor: f64,
    /// Number of 2x down-samplings = `len(block_out_channels) - 1` (8x for SD).
    pub downscale_factor: usize,
}

impl AutoencoderKLConfig {
    /// Parses and validates `vae/config.json`.
    pub fn from_file(path: &Path) -> crate::Result<Self> {
        let _ = path;
        todo!()
    }
}

/// The posterior `N(mean, std^2)` the encoder predicts, `[batch, latent_channels, h/8, w/8]` each.
#[derive(Debug, Clone)]
pub struct DiagonalGaussian {
    pub mean: Tensor,
    /// Clamped to [-30, 20] as diffusers does.
    pub logvar: Tensor,
    pub std: Tensor,
}

impl DiagonalGaussian {
    /// `mean + std * eps` (diffusers' `latent_dist.sample()` with the draw `eps` given).
    pub fn sample(&self, eps: &Tensor) -> Result<Tensor> {
        self.mean.add(&self.std.mul(eps)?)
    }
}

/// diffusers' `AutoencoderKL`.
#[derive(Debug, Clone)]
pub struct AutoencoderKL {}

impl AutoencoderKL {
    /// Loads from the `vae/` var builder.
    pub fn new(vb: VarBuilder, cfg: &AutoencoderKLConfig) -> Result<Self> {
        let _ = (vb, cfg);
        todo!()
    }
    /// `x` `[batch, in_channels, H, W]` in [-1, 1] -> posterior over latents `[batch, latent, H/8, W/8]`.
    pub fn encode(&self, x: &Tensor) -> Result<DiagonalGaussian> {
        let _ = x;
        todo!()
    }
    /// `z` `[batch, latent, h, w]` (already divided by scaling_factor) -> `[batch, out, 8h, 8w]`,
    /// roughly [-1, 1], not clamped.
    pub fn decode(&self, z: &Tensor, tiling: Tiling) -> Result<Tensor> {
        let _ = (z, tiling);
        todo!()
    }
}
