//! A loaded Stable Diffusion pipeline: [`StableDiffusion::load`] turns a diffusers-layout folder
//! into ready models, or a typed error naming the file (and tensor or config field) at fault.

use std::path::{Path, PathBuf};

use candle_core::Device;

use crate::error::Result;
use crate::model_folder::{Component, FolderOptions, ModelFamily, ModelFolder};
use crate::models::autoencoder_kl::{AutoencoderKL, AutoencoderKLConfig};
use crate::models::clip_text_model::{ClipTextConfig, ClipTextModel};
use crate::models::unet_2d_condition::{UNet2DConditionConfig, UNet2DConditionModel};
use crate::schedulers::SchedulerConfig;
use crate::tokenizer::PromptTokenizer;
use crate::weights::CheckedWeights;

/// How to load a model folder.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Where the weights live (CPU by default).
    pub device: Device,
    /// Load `*.fp16.safetensors` when present (converted to f32 on load). Without it the
    /// full-precision file is used, and the fp16 one only when it is the only one.
    pub prefer_fp16_variant: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            prefer_fp16_variant: false,
        }
    }
}

/// A Stable Diffusion pipeline loaded from a diffusers-layout folder (all weights f32, on
/// [`StableDiffusion::device`]).
pub struct StableDiffusion {
    /// The folder it was loaded from.
    pub dir: PathBuf,
    /// The prompt tokenizer, padding to the text encoder's `max_position_embeddings`.
    pub tokenizer: PromptTokenizer,
    /// `text_encoder/`.
    pub text_encoder: ClipTextModel,
    /// `unet/`.
    pub unet: UNet2DConditionModel,
    /// `vae/`.
    pub vae: AutoencoderKL,
    /// `scheduler/scheduler_config.json`, from which every scheduler kind is configured.
    pub scheduler_config: SchedulerConfig,
    /// Where the weights live.
    pub device: Device,
    /// `text_encoder/config.json`.
    pub text_encoder_config: ClipTextConfig,
    /// `unet/config.json`.
    pub unet_config: UNet2DConditionConfig,
    /// `vae/config.json`.
    pub vae_config: AutoencoderKLConfig,
    /// SD1.x, SD2.x or SD-Turbo (see [`ModelFamily`]).
    pub family: ModelFamily,
    /// model_index.json `_class_name`.
    pub class_name: String,
    /// A content hash of the configs and the weight files' sizes and headers (hex blake3, see
    /// [`ModelFolder::identity`]); caches of encoded prompts or generated images key on it.
    pub identity: String,
    /// Number of UNet parameters (from the weight files' headers).
    pub unet_parameters: usize,
}

impl StableDiffusion {
    /// UNets below this many parameters run fastest on one CPU thread: per-operation overhead
    /// dominates (measured: the embedded 3.8 M-parameter model, 12 guided steps, 0.17 s on one
    /// thread vs 1.1-2.7 s on two threads of a loaded 2-core machine).
    pub const SMALL_MODEL_PARAMETERS: usize = 20_000_000;

    /// The most CPU threads worth using: 1 for small models on the CPU, else no limit.
    pub fn max_useful_threads(&self) -> Option<usize> {
        (self.device.is_cpu() && self.unet_parameters < Self::SMALL_MODEL_PARAMETERS).then_some(1)
    }

    /// Runs `f` (this model's maths) on the shared pool of `threads` threads (capped at the
    /// machine's cores, see [`crate::kernels::threads`]), else of [`Self::max_useful_threads`],
    /// else on rayon's global pool (all cores). Pools are built once and reused.
    pub fn run_with_threads<T: Send>(
        &self,
        threads: Option<usize>,
        f: impl FnOnce() -> T + Send,
    ) -> T {
        crate::kernels::threads::install(threads.or(self.max_useful_threads()), f)
    }
}

/// Builds one component through a checking var builder, logging what it read.
fn build_component<T>(
    component: &Component,
    device: &Device,
    construct: impl FnOnce(candle_nn::VarBuilder<'static>) -> candle_core::Result<T>,
) -> Result<T> {
    let weights = CheckedWeights::open(&component.weights, device)?;
    let model = weights.build(construct)?;
    let unused = weights.unused_tensors();
    let files = &component.weights;
    tracing::info!(
        "{}: {} tensors from {} ({:.1} MB{}){}",
        component.kind,
        files.tensor_count(),
        files.path.display(),
        files.total_bytes() as f64 / 1e6,
        if files.fp16_variant {
            ", fp16 variant converted to f32"
        } else {
            ""
        },
        if unused.is_empty() {
            String::new()
        } else {
            format!(", {} unused", unused.len())
        },
    );
    if !unused.is_empty() {
        tracing::debug!("{}: tensors no module used: {:?}", component.kind, unused);
    }
    Ok(model)
}

impl StableDiffusion {
    /// Validates and loads the diffusers-layout folder `dir` onto `options.device`.
    ///
    /// Steps, each failing fast with a typed error:
    /// 1. [`ModelFolder::open`]: the layout, the pipeline class (SDXL, SD3, FLUX, ... refused with
    ///    [`crate::DiffusionError::UnsupportedModel`]), every file present, weights safetensors
    ///    only ([`crate::DiffusionError::PickleWeights`]), headers valid
    ///    ([`crate::DiffusionError::BadSafetensors`]).
    /// 2. The configs, parsed by their models' `from_file`
    ///    ([`crate::DiffusionError::InvalidConfig`] / [`crate::DiffusionError::UnsupportedConfig`]).
    /// 3. The tokenizer (`tokenizer/`), padding to the text encoder's `max_position_embeddings`;
    ///    its ids must fit the text encoder's `vocab_size` ([`crate::DiffusionError::InvalidConfig`]).
    /// 4. Text encoder, UNet and VAE, each built through a [`CheckedWeights`] var builder: a
    ///    tensor the config implies but the file lacks is
    ///    [`crate::DiffusionError::MissingTensor`], one of another shape
    ///    [`crate::DiffusionError::ShapeMismatch`] (naming the file, the tensor and both shapes).
    ///    Weights of any float dtype are converted to f32.
    /// 5. `scheduler/scheduler_config.json`.
    pub fn load(dir: &Path, options: &LoadOptions) -> Result<Self> {
        let folder_options = FolderOptions {
            prefer_fp16_variant: options.prefer_fp16_variant,
            ..FolderOptions::default()
        };
        let folder = ModelFolder::open(dir, &folder_options)?;
        tracing::info!(
            "loading {} ({}, {}) from {} onto {:?}",
            folder.class_name,
            folder.family,
            &folder.identity[..16],
            dir.display(),
            options.device
        );

        let text_encoder_config = ClipTextConfig::from_file(&folder.text_encoder.config)?;
        let unet_config = UNet2DConditionConfig::from_file(&folder.unet.config)?;
        let vae_config = AutoencoderKLConfig::from_file(&folder.vae.config)?;
        let scheduler_config = SchedulerConfig::from_file(&folder.scheduler_config)?;
        let tokenizer = PromptTokenizer::from_dir(
            &folder.tokenizer_dir,
            text_encoder_config.max_position_embeddings,
        )?;
        let vocab_size = text_encoder_config.vocab_size as u64;
        if let Some(e) =
            crate::model_folder::vocab_mismatch(&tokenizer, vocab_size, &folder.text_encoder.config)
        {
            return Err(e);
        }

        let unet_parameters = folder
            .unet
            .weights
            .shards
            .iter()
            .flat_map(|h| h.tensors.values())
            .map(|t| t.shape.iter().product::<usize>())
            .sum();
        let device = &options.device;
        let text_encoder = build_component(&folder.text_encoder, device, |vb| {
            ClipTextModel::new(vb, &text_encoder_config)
        })?;
        let unet = build_component(&folder.unet, device, |vb| {
            UNet2DConditionModel::new(vb, &unet_config)
        })?;
        let vae = build_component(&folder.vae, device, |vb| {
            AutoencoderKL::new(vb, &vae_config)
        })?;

        Ok(Self {
            dir: dir.to_path_buf(),
            tokenizer,
            text_encoder,
            unet,
            vae,
            scheduler_config,
            device: device.clone(),
            text_encoder_config,
            unet_config,
            vae_config,
            family: folder.family,
            class_name: folder.class_name,
            identity: folder.identity,
            unet_parameters,
        })
    }
}
