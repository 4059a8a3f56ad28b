//! Loading an x4 upscaler folder (diffusers' `StableDiffusionUpscalePipeline.save_pretrained`
//! layout) into an [`Upscaler`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Device;
use serde_json::Value;

use crate::error::{DiffusionError, Result};
use crate::loading::folder::{Component, ComponentKind, FolderOptions, component_weights};
use crate::models::autoencoder_kl::{AutoencoderKL, AutoencoderKLConfig};
use crate::models::clip_text_model::{ClipTextConfig, ClipTextModel};
use crate::models::tokenizer::PromptTokenizer;
use crate::models::unet_2d_condition::{UNet2DConditionConfig, UNet2DConditionModel};
use crate::pipeline::model::{LoadOptions, build_component};
use crate::schedulers::SchedulerConfig;
use crate::schedulers::schedule::{cumprod, torch_linspace_f32};

/// model_index.json `_class_name` of an x4 upscaler folder.
pub const UPSCALER_CLASS: &str = crate::loading::folder::UPSCALER_PIPELINE;
/// UNet input channels of the x4 upscaler: 4 latents + 3 low-res image channels.
pub const UPSCALER_UNET_CHANNELS: usize = 7;
/// The VAE scaling factor diffusers' upscale pipeline always uses.
pub const UPSCALER_VAE_SCALING_FACTOR: f64 = 0.08333;

/// A loaded x4 upscaler folder (all weights f32 on [`Upscaler::device`]).
pub struct Upscaler {
    /// The folder.
    pub dir: PathBuf,
    /// `tokenizer/`, padding to the text encoder's context.
    pub tokenizer: PromptTokenizer,
    /// `text_encoder/` (CLIP).
    pub text_encoder: ClipTextModel,
    /// `unet/`: 7 input channels (4 latents + 3 low-res image), `num_class_embeds` (noise level).
    pub unet: UNet2DConditionModel,
    /// `vae/`: 3 levels (4x), decoded with [`UPSCALER_VAE_SCALING_FACTOR`].
    pub vae: AutoencoderKL,
    /// `scheduler/scheduler_config.json` (DDIM, v-prediction for the real model).
    pub scheduler_config: SchedulerConfig,
    /// `low_res_scheduler`'s cumulative alphas (float32, `num_train_timesteps` entries).
    pub low_res_alphas_cumprod: Vec<f32>,
    /// model_index.json `max_noise_level` (350 by default).
    pub max_noise_level: u32,
    /// `unet/config.json`.
    pub unet_config: UNet2DConditionConfig,
    /// `vae/config.json`.
    pub vae_config: AutoencoderKLConfig,
    /// Where the weights live.
    pub device: Device,
    /// A content hash (hex blake3) of model_index.json, every component's config and the weight
    /// files' sizes.
    pub identity: String,
}

fn read_json(path: &Path) -> Result<Value> {
    if !path.is_file() {
        return Err(DiffusionError::MissingFile {
            path: path.to_path_buf(),
            what: "part of an x4 upscaler folder".into(),
        });
    }
    let meta = std::fs::metadata(path).map_err(|e| DiffusionError::io(path, e))?;
    if meta.len() > 16 * 1024 * 1024 {
        return Err(DiffusionError::config(
            path,
            "(file)",
            "too large for a config",
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| DiffusionError::io(path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| DiffusionError::config(path, "(file)", format!("not valid JSON: {e}")))
}

/// The error for a text-to-image (or other) folder given where an upscaler is expected.
fn not_an_upscaler(dir: &Path, class: &str) -> DiffusionError {
    let unet_channels = read_json(&dir.join("unet/config.json"))
        .ok()
        .and_then(|c| c.get("in_channels").and_then(Value::as_u64));
    DiffusionError::WrongPipeline {
        path: dir.join("model_index.json"),
        class: class.to_string(),
        what: format!(
            "a {class} folder (its unet takes {} input channels)",
            unet_channels.map_or("?".to_string(), |c| c.to_string())
        ),
        expected: format!(
            "an x4 upscaler folder (model_index.json `_class_name` {UPSCALER_CLASS}: a unet \
             taking {UPSCALER_UNET_CHANNELS} input channels, 4 latents + 3 low-res image \
             channels, and a low_res_scheduler)"
        ),
        instead: "load it as the text-to-image model instead (`--model DIR`, \
                  `StableDiffusion::load`)"
            .into(),
    }
}

/// DDPM `alphas_cumprod` from a `low_res_scheduler/scheduler_config.json` (linear or
/// scaled_linear betas, as diffusers' `DDPMScheduler.__init__`, float32).
fn low_res_alphas_cumprod(path: &Path) -> Result<Vec<f32>> {
    let json = read_json(path)?;
    let f = |key: &str, default: f64| json.get(key).and_then(Value::as_f64).unwrap_or(default);
    let n = json
        .get("num_train_timesteps")
        .and_then(Value::as_u64)
        .unwrap_or(1000);
    if !(1..=10_000).contains(&n) {
        return Err(DiffusionError::config(
            path,
            "num_train_timesteps",
            format!("{n} is out of range (1..=10000)"),
        ));
    }
    let (start, end) = (f("beta_start", 0.0001), f("beta_end", 0.02));
    let schedule = json
        .get("beta_schedule")
        .and_then(Value::as_str)
        .unwrap_or("linear");
    let betas: Vec<f32> = match schedule {
        "linear" => torch_linspace_f32(start, end, n as usize),
        "scaled_linear" => torch_linspace_f32(start.sqrt(), end.sqrt(), n as usize)
            .into_iter()
            .map(|b| b * b)
            .collect(),
        other => {
            return Err(DiffusionError::UnsupportedConfig {
                path: path.to_path_buf(),
                field: "beta_schedule".into(),
                value: other.into(),
            });
        }
    };
    let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
    Ok(cumprod(&alphas))
}

/// The identity of a text-to-image model (`model_identity`) that upscales with the upscaler of
/// identity `upscaler_identity` ([`Upscaler::identity`]).
pub fn combined_identity(model_identity: &str, upscaler_identity: &str) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"bevy_diffusion model + x4 upscaler v1\0");
    h.update(model_identity.as_bytes());
    h.update(b"\0");
    h.update(upscaler_identity.as_bytes());
    h.finalize().to_hex().to_string()
}

/// The checked files of an upscaler folder: model_index.json and the text encoder, UNet and VAE
/// components (weight headers validated).
struct UpscalerFiles {
    index_path: PathBuf,
    index: Value,
    te: Component,
    unet: Component,
    vae: Component,
}

impl UpscalerFiles {
    fn open(dir: &Path, options: &LoadOptions) -> Result<Self> {
        if !dir.is_dir() {
            return Err(DiffusionError::ModelFolderMissing {
                path: dir.to_path_buf(),
            });
        }
        let index_path = dir.join("model_index.json");
        let index = read_json(&index_path)?;
        let class = index
            .get("_class_name")
            .and_then(Value::as_str)
            .unwrap_or("(no _class_name)");
        if class != UPSCALER_CLASS {
            return Err(not_an_upscaler(dir, class));
        }
        let folder_options = FolderOptions {
            prefer_fp16_variant: options.prefer_fp16_variant,
            ..FolderOptions::default()
        };
        let component = |kind: ComponentKind| -> Result<Component> {
            let comp_dir = dir.join(kind.dir_name());
            let weights = component_weights(&comp_dir, kind, &folder_options).map_err(|es| {
                es.into_iter()
                    .next()
                    .unwrap_or_else(|| DiffusionError::MissingFile {
                        path: comp_dir.clone(),
                        what: format!("the {kind} weights of an x4 upscaler folder"),
                    })
            })?;
            Ok(Component {
                kind,
                config: comp_dir.join("config.json"),
                dir: comp_dir,
                weights,
            })
        };
        Ok(Self {
            te: component(ComponentKind::TextEncoder)?,
            unet: component(ComponentKind::Unet)?,
            vae: component(ComponentKind::Vae)?,
            index_path,
            index,
        })
    }

    /// A content hash (hex blake3) of model_index.json, the components' configs and the weight
    /// files' sizes.
    fn identity(&self) -> Result<String> {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"bevy_diffusion x4 upscaler v1\0");
        for path in [
            &self.index_path,
            &self.te.config,
            &self.unet.config,
            &self.vae.config,
        ] {
            let bytes = std::fs::read(path).map_err(|e| DiffusionError::io(path, e))?;
            hasher.update(blake3::hash(&bytes).as_bytes());
        }
        for c in [&self.te, &self.unet, &self.vae] {
            hasher.update(&c.weights.total_bytes().to_le_bytes());
        }
        Ok(hasher.finalize().to_hex().to_string())
    }
}

impl Upscaler {
    /// [`Upscaler::identity`] of the folder at `dir` without loading its weights (bake plans
    /// with it).
    ///
    /// Errors: those of [`Upscaler::load`] about the folder's files.
    pub fn folder_identity(dir: &Path, options: &LoadOptions) -> Result<String> {
        UpscalerFiles::open(dir, options)?.identity()
    }

    /// Loads an x4 upscaler folder (diffusers' `StableDiffusionUpscalePipeline.save_pretrained`
    /// layout: text_encoder/, tokenizer/, unet/, vae/, scheduler/, low_res_scheduler/).
    ///
    /// Errors: [`DiffusionError::WrongPipeline`] when model_index.json names another pipeline
    /// (a text-to-image folder: the message names its unet's input channels);
    /// [`DiffusionError::InvalidConfig`] naming `unet/config.json` `in_channels` (not 7) or
    /// `num_class_embeds` (missing: the noise-level embedding); the loading errors of
    /// [`crate::StableDiffusion::load`] for each component.
    pub fn load(dir: &Path, options: &LoadOptions) -> Result<Self> {
        let files = UpscalerFiles::open(dir, options)?;
        let identity = files.identity()?;
        let UpscalerFiles {
            index_path,
            index,
            te,
            unet,
            vae,
        } = files;
        let max_noise_level = match index.get("max_noise_level") {
            None | Some(Value::Null) => 350,
            Some(v) => match v.as_u64() {
                Some(n) if n < 1000 => n as u32,
                _ => {
                    return Err(DiffusionError::config(
                        &index_path,
                        "max_noise_level",
                        format!("{v} must be an integer below 1000"),
                    ));
                }
            },
        };
        let text_encoder_config = ClipTextConfig::from_file(&te.config)?;
        let unet_config = UNet2DConditionConfig::from_file(&unet.config)?;
        let vae_config = AutoencoderKLConfig::from_file(&vae.config)?;
        if unet_config.in_channels != UPSCALER_UNET_CHANNELS
            || unet_config.out_channels + 3 != unet_config.in_channels
        {
            return Err(DiffusionError::config(
                &unet.config,
                "in_channels",
                format!(
                    "is {} (out_channels {}); an x4 upscaler's unet takes {UPSCALER_UNET_CHANNELS}: \
                     4 latents + 3 low-res image channels",
                    unet_config.in_channels, unet_config.out_channels
                ),
            ));
        }
        if unet_config.num_class_embeds.is_none() {
            return Err(DiffusionError::config(
                &unet.config,
                "num_class_embeds",
                "is missing: the upscaler's unet embeds the noise level as a class label",
            ));
        }
        if vae_config.latent_channels != unet_config.out_channels {
            return Err(DiffusionError::config(
                &vae.config,
                "latent_channels",
                format!(
                    "is {} but the unet predicts {} channels",
                    vae_config.latent_channels, unet_config.out_channels
                ),
            ));
        }
        let scheduler_config =
            SchedulerConfig::from_file(&dir.join("scheduler/scheduler_config.json"))?;
        let low_res_alphas_cumprod =
            low_res_alphas_cumprod(&dir.join("low_res_scheduler/scheduler_config.json"))?;
        if (max_noise_level as usize) >= low_res_alphas_cumprod.len() {
            return Err(DiffusionError::config(
                &index_path,
                "max_noise_level",
                "is past the low_res_scheduler's num_train_timesteps",
            ));
        }
        let tokenizer = PromptTokenizer::from_dir(
            &dir.join("tokenizer"),
            text_encoder_config.max_position_embeddings,
        )?;
        let device = &options.device;
        let text_encoder = build_component(&te, device, HashMap::new(), |vb| {
            ClipTextModel::new(vb, &text_encoder_config)
        })?;
        let unet_model = build_component(&unet, device, HashMap::new(), |vb| {
            UNet2DConditionModel::new(vb, &unet_config)
        })?;
        let vae_model = build_component(&vae, device, HashMap::new(), |vb| {
            AutoencoderKL::new(vb, &vae_config)
        })?;
        Ok(Self {
            dir: dir.to_path_buf(),
            tokenizer,
            text_encoder,
            unet: unet_model,
            vae: vae_model,
            scheduler_config,
            low_res_alphas_cumprod,
            max_noise_level,
            unet_config,
            vae_config,
            device: device.clone(),
            identity,
        })
    }

    /// The identity of a text-to-image model (`model_identity`) that upscales with this one.
    pub fn model_identity(&self, model_identity: &str) -> String {
        combined_identity(model_identity, &self.identity)
    }

    /// The upscale factor (`2^(len(vae.block_out_channels) - 1)`: 4 for the x4 upscaler).
    pub fn factor(&self) -> usize {
        self.vae_config.downscale_factor
    }
}
