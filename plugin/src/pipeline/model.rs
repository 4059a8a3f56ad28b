//! A loaded Stable Diffusion pipeline: [`StableDiffusion::load`] turns a diffusers-layout folder
//! into ready models, or a typed error naming the file (and tensor or config field) at fault.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Device;

use crate::error::{DiffusionError, Result};
use crate::loading::folder::{Component, FolderOptions, ModelFamily, ModelFolder};
use crate::loading::lora::LoraSpec;
use crate::loading::lora_merge::{LoraDelta, LoraSet};
use crate::loading::lora_names::LoraComponent;
use crate::loading::weights::CheckedWeights;
use crate::models::autoencoder_tiny::{AutoencoderTiny, AutoencoderTinyConfig};
use crate::models::autoencoders::{Vae, VaeConfig};
use crate::models::clip_text_model::{ClipTextConfig, ClipTextModel};
use crate::models::tokenizer::PromptTokenizer;
use crate::models::unet_2d_condition::{UNet2DConditionConfig, UNet2DConditionModel};
use crate::pipeline::sdxl::{self, SdxlComponents};
use crate::precision::ComputeDtype;
use crate::schedulers::SchedulerConfig;

mod decoder_folder;
pub use decoder_folder::*;

/// How to load a model folder.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Where the weights live (CPU by default).
    pub device: Device,
    /// Load `*.fp16.safetensors` when present (converted to f32 on load). Without it the
    /// full-precision file is used, and the fp16 one only when it is the only one.
    pub prefer_fp16_variant: bool,
    /// A TAESD folder (diffusers `AutoencoderTiny`: `config.json` +
    /// `diffusion_pytorch_model.safetensors`, or a folder with those in `vae/`) whose decoder
    /// replaces the model's own VAE decoder: many times faster, slightly softer images. The
    /// model's VAE still encodes img2img init images. `None`: decode with the folder's `vae/`.
    pub decoder: Option<PathBuf>,
    /// An x4 upscaler folder (diffusers `StableDiffusionUpscalePipeline` layout, see
    /// [`crate::pipeline::upscale::Upscaler::load`]) that runs for requests with `upscale: 4`
    /// (the other factors, and every factor without it, use the wrap-aware Lanczos fallback).
    /// `None`: no diffusion upscaler.
    pub upscaler: Option<PathBuf>,

    /// LoRA files merged into the UNet and text encoder(s) at load, each with its own
    /// `lora_scale`, in order (see [`crate::loading::lora`]). Default: none.
    pub loras: Vec<LoraSpec>,
    /// The compute precision asked for (default f32). [`crate::precision::resolve`] decides
    /// what runs: on a CPU without bf16 multiply instructions (or without a bf16 kernel for
    /// them) a bf16 request runs in f32 and [`StableDiffusion::dtype_notice`] says why.
    pub dtype: ComputeDtype,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            prefer_fp16_variant: false,
            decoder: None,
            upscaler: None,
            loras: Vec::new(),
            dtype: ComputeDtype::F32,
        }
    }
}

/// A Stable Diffusion pipeline loaded from a diffusers-layout folder (weights f32, on
/// [`StableDiffusion::device`]; under a bf16 [`StableDiffusion::dtype`] the UNet's
/// transformer linear weights are bf16, and its convolution weights with
/// [`crate::precision::bf16_convolutions`]).
pub struct StableDiffusion {
    /// The folder it was loaded from.
    pub dir: PathBuf,
    /// The prompt tokenizer, padding to the text encoder's `max_position_embeddings`.
    pub tokenizer: PromptTokenizer,
    /// `text_encoder/`.
    pub text_encoder: ClipTextModel,
    /// `unet/`.
    pub unet: UNet2DConditionModel,
    /// `vae/`: an `AutoencoderKL`, or an `AutoencoderTiny` (TAESD, as SDXS ships).
    pub vae: Vae,
    /// The fast decoder of [`LoadOptions::decoder`]; when set, images are decoded with it
    /// (its own `scaling_factor`) instead of `vae`.
    pub decoder: Option<AutoencoderTiny>,
    /// The x4 upscaler of [`LoadOptions::upscaler`], run for requests with `upscale: 4`.
    pub upscaler: Option<crate::pipeline::upscale::Upscaler>,
    /// `scheduler/scheduler_config.json`, from which every scheduler kind is configured.
    pub scheduler_config: SchedulerConfig,
    /// Where the weights live.
    pub device: Device,
    /// `text_encoder/config.json`.
    pub text_encoder_config: ClipTextConfig,
    /// `unet/config.json`.
    pub unet_config: UNet2DConditionConfig,
    /// `vae/config.json`.
    pub vae_config: VaeConfig,
    /// SD1.x, SD2.x or SD-Turbo (see [`ModelFamily`]).
    pub family: ModelFamily,
    /// model_index.json `_class_name`.
    pub class_name: String,
    /// A content hash of the configs and the weight files' sizes and headers (hex blake3, see
    /// [`ModelFolder::identity`]), mixed with the decoder folder's when
    /// [`LoadOptions::decoder`] is set; caches of encoded prompts or generated images key on it.
    pub identity: String,
    /// Number of UNet parameters (from the weight files' headers).
    pub unet_parameters: usize,
    /// The sampling settings the folder recommends (`bevy_diffusion.json`; empty without one),
    /// used for the fields a request leaves unset.
    pub recommended: crate::request::RecommendedSettings,
    /// SDXL's `tokenizer_2` and `text_encoder_2` (`None` for SD 1.x/2.x).
    pub sdxl: Option<SdxlComponents>,
    /// The precision the model computes in ([`LoadOptions::dtype`] as
    /// [`crate::precision::resolve`] resolved it on this machine).
    pub dtype: ComputeDtype,
    /// Why [`Self::dtype`] differs from the requested [`LoadOptions::dtype`] (e.g. "this CPU
    /// lacks `avx512bf16`"), `None` when it does not; also logged at warn level at load.
    pub dtype_notice: Option<String>,
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

    /// The TAESD at hand for fast decodes (previews): [`Self::decoder`], else the folder's `vae`
    /// when it is an `AutoencoderTiny`.
    pub fn taesd(&self) -> Option<&AutoencoderTiny> {
        self.decoder.as_ref().or(match &self.vae {
            Vae::Tiny(taesd) => Some(taesd),
            Vae::Kl(_) => None,
        })
    }

    /// Runs `f` (this model's maths) on the shared compute pool ([`crate::compute_pool`]) of
    /// `threads` threads, else of [`Self::max_useful_threads`], else on rayon's global pool (all
    /// cores). The pool is built once per thread count and reused (a bake of many items builds
    /// one); a count above the machine's cores is capped to them (logged at warn level; use
    /// [`crate::compute_pool::cap_threads`] to tell a user first).
    pub fn run_with_threads<T: Send>(
        &self,
        threads: Option<usize>,
        f: impl FnOnce() -> T + Send,
    ) -> T {
        let pool = threads
            .or(self.max_useful_threads())
            .and_then(|n| crate::compute_pool::shared_pool(n, false).ok());
        match pool {
            Some(pool) => pool.install(f),
            None => f(),
        }
    }
}

/// Builds one component through a checking var builder (adding `lora`: weight name → LoRA
/// deltas, from [`LoraSet::take`]), logging what it read.
///
/// # Errors
/// Those of [`CheckedWeights::build`]; [`DiffusionError::InvalidLora`] when a LoRA patches a
/// weight the model did not load.
pub fn build_component<T>(
    component: &Component,
    device: &Device,
    lora: HashMap<String, Vec<LoraDelta>>,
    construct: impl FnOnce(candle_nn::VarBuilder<'static>) -> candle_core::Result<T>,
) -> Result<T> {
    build_part_of_component(component, device, lora, &[], construct)
}

/// [`build_component`] for a model built from part of its files: tensors under
/// `unused_prefixes` (e.g. a TAESD folder's `encoder.` when only its decoder is built) may go
/// unused without [`DiffusionError::UnexpectedTensors`].
pub fn build_part_of_component<T>(
    component: &Component,
    device: &Device,
    lora: HashMap<String, Vec<LoraDelta>>,
    unused_prefixes: &[&str],
    construct: impl FnOnce(candle_nn::VarBuilder<'static>) -> candle_core::Result<T>,
) -> Result<T> {
    build_with(component, device, lora, unused_prefixes, None, construct)
}

/// [`build_component`] in the compute precision `dtype`: for [`ComputeDtype::Bf16`] the
/// weights `bf16_weight(name, shape)` picks are kept in bf16 (the rest f32). Used for the UNet,
/// whose transformer blocks' linear layers (and, opt-in, convolutions) run the bf16 GEMM.
pub fn build_component_in<T>(
    component: &Component,
    device: &Device,
    lora: HashMap<String, Vec<LoraDelta>>,
    dtype: ComputeDtype,
    bf16_weight: fn(&str, &[usize]) -> bool,
    construct: impl FnOnce(candle_nn::VarBuilder<'static>) -> candle_core::Result<T>,
) -> Result<T> {
    let bf16 = (dtype == ComputeDtype::Bf16).then_some(bf16_weight);
    build_with(component, device, lora, &[], bf16, construct)
}

fn build_with<T>(
    component: &Component,
    device: &Device,
    lora: HashMap<String, Vec<LoraDelta>>,
    unused_prefixes: &[&str],
    bf16: Option<fn(&str, &[usize]) -> bool>,
    construct: impl FnOnce(candle_nn::VarBuilder<'static>) -> candle_core::Result<T>,
) -> Result<T> {
    let patched = lora.len();
    let started = std::time::Instant::now();
    let mut weights = CheckedWeights::open_with_lora(&component.weights, device, lora)?;
    if let Some(keep) = bf16 {
        weights = weights.with_bf16(keep);
    }
    let model = weights.build(construct)?;
    if let Some((weight, source)) = weights.unused_lora().into_iter().next() {
        return Err(DiffusionError::InvalidLora {
            path: component.weights.path.clone(),
            key: source,
            reason: format!("patches `{weight}`, which this model's config does not use"),
        });
    }
    if let Some(e) = weights.unexpected_tensors(unused_prefixes) {
        return Err(e);
    }
    if patched > 0 {
        tracing::info!(
            "{}: {patched} weights LoRA-merged, load took {:.1} ms",
            component.kind,
            started.elapsed().as_secs_f64() * 1e3
        );
    }
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
    /// 1. [`ModelFolder::open`]: the layout, the pipeline class (SD3, FLUX, ... refused with
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
    ///    Weights of any float dtype are converted to f32 (for a resolved bf16
    ///    [`LoadOptions::dtype`], the UNet's transformer linear weights, and opt-in its
    ///    convolution weights, to bf16, see [`crate::precision`]).
    /// 5. `scheduler/scheduler_config.json`.
    pub fn load(dir: &Path, options: &LoadOptions) -> Result<Self> {
        let folder_options = FolderOptions {
            prefer_fp16_variant: options.prefer_fp16_variant,
            ..FolderOptions::default()
        };
        let folder = ModelFolder::open(dir, &folder_options)?;
        let (dtype, dtype_notice) = crate::precision::resolve(options.dtype, &options.device);
        if let Some(note) = &dtype_notice {
            tracing::warn!("{note}");
        }
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
        let vae_config = VaeConfig::from_file(&folder.vae.config)?;
        let scheduler_config = SchedulerConfig::from_file(&folder.scheduler_config)?;
        let recommended = crate::request::RecommendedSettings::read(dir)?;
        let recommended = if recommended.is_empty() {
            let tiny = matches!(
                vae_config.class,
                crate::models::autoencoders::VaeClass::Tiny(_)
            );
            folder.family.default_settings(tiny)
        } else {
            recommended
        };
        match scheduler_config.stand_in() {
            Some((note, true)) => tracing::warn!("{note}"),
            Some((note, false)) => tracing::info!("{note}"),
            None => {}
        }
        let tokenizer = PromptTokenizer::from_dir(
            &folder.tokenizer_dir,
            text_encoder_config.max_position_embeddings,
        )?;
        let vocab_size = text_encoder_config.vocab_size as u64;
        if let Some(e) = crate::loading::folder::vocab_mismatch(
            &tokenizer,
            vocab_size,
            &folder.text_encoder.config,
        ) {
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
        let mut lora = LoraSet::load(&options.loras, &crate::loading::lora::lora_targets(&folder))?;
        let text_encoder = build_component(
            &folder.text_encoder,
            device,
            lora.take(LoraComponent::TextEncoder),
            |vb| ClipTextModel::new(vb, &text_encoder_config),
        )?;
        let unet = build_component_in(
            &folder.unet,
            device,
            lora.take(LoraComponent::Unet),
            dtype,
            crate::models::unet_2d_condition::is_bf16_weight,
            |vb| UNet2DConditionModel::new(vb, &unet_config),
        )?;
        let vae = build_component(&folder.vae, device, HashMap::new(), |vb| {
            Vae::new(vb, &vae_config)
        })?;
        let (decoder, base_identity) = match &options.decoder {
            None => (None, folder.identity.clone()),
            Some(dir) => {
                let decoder = DecoderFolder::open(dir, &folder_options)?;
                if folder.family.is_sdxl() {
                    // taesd and taesdxl share one config: only the user knows which this is.
                    tracing::warn!(
                        "--decoder {} on an SDXL model: it must be an SDXL TAESD \
                         (madebyollin/taesdxl); the SD 1.x/2.x taesd decodes SDXL latents wrongly",
                        dir.display()
                    );
                }
                let identity = decoder.model_identity(&folder.identity);
                (Some(decoder.load(&vae_config, device)?), identity)
            }
        };
        let (upscaler, base_identity) = match &options.upscaler {
            None => (None, base_identity),
            Some(dir) => {
                let upscaler = crate::pipeline::upscale::Upscaler::load(dir, options)?;
                let identity = upscaler.model_identity(&base_identity);
                (Some(upscaler), identity)
            }
        };
        // LoRAs mix into the identity: folder (+ decoder) (+ upscaler) + LoRAs, then a bf16
        // precision (its images differ slightly from f32's).
        let identity = crate::loading::lora_merge::identity(&base_identity, &options.loras)?;
        let identity = crate::precision::identity(&identity, dtype);
        let text_time = unet_config.addition_embed.map(|tt| {
            (
                tt.addition_time_embed_dim,
                tt.projection_class_embeddings_input_dim,
                folder.unet.config.as_path(),
            )
        });
        let sdxl = sdxl::load_components(
            &folder,
            text_time,
            device,
            lora.take(LoraComponent::TextEncoder2),
        )?;
        if sdxl.is_some() != text_time.is_some() {
            return Err(crate::DiffusionError::config(
                &folder.unet.config,
                "addition_embed_type",
                if sdxl.is_some() {
                    "is not \"text_time\", but this SDXL pipeline's text_encoder_2 gives the UNet \
                     pooled text_embeds and time_ids"
                } else {
                    "is \"text_time\" (SDXL) but the folder has no text_encoder_2"
                },
            ));
        }

        Ok(Self {
            dir: dir.to_path_buf(),
            tokenizer,
            text_encoder,
            unet,
            vae,
            decoder,
            upscaler,
            scheduler_config,
            device: device.clone(),
            text_encoder_config,
            unet_config,
            vae_config,
            family: folder.family,
            class_name: folder.class_name,
            identity,
            unet_parameters,
            recommended,
            sdxl,
            dtype,
            dtype_notice,
        })
    }
}
