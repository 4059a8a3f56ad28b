//! STUB (owned by the loader helper): a loaded pipeline.
use std::path::{Path, PathBuf};

use candle_core::Device;

use crate::models::{autoencoder_kl::AutoencoderKL, clip_text_model::ClipTextModel, unet_2d_condition::UNet2DConditionModel};
use crate::schedulers::SchedulerConfig;
use crate::tokenizer::PromptTokenizer;

/// How to load a model folder.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Where the weights live (CPU by default).
    pub device: Device,
    /// Load `*.fp16.safetensors` when present (converted to f32 on load).
    pub prefer_fp16_variant: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { device: Device::Cpu, prefer_fp16_variant: false }
    }
}

/// A Stable Diffusion pipeline loaded from a diffusers-layout folder.
pub struct StableDiffusion {
    pub dir: PathBuf,
    pub tokenizer: PromptTokenizer,
    pub text_encoder: ClipTextModel,
    pub unet: UNet2DConditionModel,
    pub vae: AutoencoderKL,
    pub scheduler_config: SchedulerConfig,
    pub device: Device,
}

impl StableDiffusion {
    /// Validates and loads `dir`.
    pub fn load(dir: &Path, options: &LoadOptions) -> crate::Result<Self> {
        let _ = (dir, options);
        todo!()
    }
}
