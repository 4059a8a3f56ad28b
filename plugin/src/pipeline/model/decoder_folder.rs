//! A TAESD decoder folder given with [`super::LoadOptions::decoder`] (`texgen --decoder`): found,
//! checked and loaded as the model's VAE decoder (diffusers' `AutoencoderTiny.from_pretrained`).

use super::*;

/// A checked TAESD decoder folder ([`LoadOptions::decoder`]), weights not yet loaded.
#[derive(Debug, Clone)]
pub struct DecoderFolder {
    /// The folder holding `config.json` (the given folder, or its `vae/`).
    pub dir: PathBuf,
    /// `config.json`, parsed.
    pub config: AutoencoderTinyConfig,
    /// The weights, headers validated.
    pub component: Component,
    /// blake3 (hex) of the config and the weight files' sizes and headers.
    pub identity: String,
}

impl DecoderFolder {
    /// Checks the TAESD folder `dir`: `config.json` + `diffusion_pytorch_model.safetensors`, or
    /// the same in `dir/vae/` (a whole SDXS-style pipeline folder).
    ///
    /// Errors: [`crate::DiffusionError::ModelFolderMissing`] when `dir` is not a folder,
    /// [`crate::DiffusionError::MissingFile`] without a config or weights,
    /// [`crate::DiffusionError::PickleWeights`] for `.bin` weights,
    /// [`crate::DiffusionError::InvalidConfig`] naming `_class_name` when the config is not an
    /// `AutoencoderTiny`'s, and the errors of [`AutoencoderTinyConfig::from_file`].
    pub fn open(dir: &Path, options: &FolderOptions) -> Result<Self> {
        use crate::error::DiffusionError;
        if !dir.is_dir() {
            return Err(DiffusionError::ModelFolderMissing {
                path: dir.to_path_buf(),
            });
        }
        let dir = if !dir.join("config.json").is_file() && dir.join("vae/config.json").is_file() {
            dir.join("vae")
        } else {
            dir.to_path_buf()
        };
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            return Err(DiffusionError::MissingFile {
                path: config_path,
                what: "the decoder's config (a diffusers AutoencoderTiny / TAESD config.json)"
                    .into(),
            });
        }
        let class = crate::models::autoencoders::class_name(&config_path)?;
        if class.as_deref() != Some("AutoencoderTiny") {
            return Err(DiffusionError::config(
                &config_path,
                "_class_name",
                format!(
                    "is {}; a decoder folder must hold a diffusers AutoencoderTiny (TAESD, e.g. \
                     madebyollin/taesd)",
                    class.map_or("absent".to_string(), |c| format!("{c:?}"))
                ),
            ));
        }
        let config = AutoencoderTinyConfig::from_file(&config_path)?;
        let kind = crate::loading::folder::ComponentKind::Vae;
        let weights =
            crate::loading::folder::component_weights(&dir, kind, options).map_err(|problems| {
                problems
                    .into_iter()
                    .next()
                    .unwrap_or_else(|| DiffusionError::MissingFile {
                        path: dir.join("diffusion_pytorch_model.safetensors"),
                        what: "the decoder weights (safetensors)".into(),
                    })
            })?;
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"bevy_diffusion decoder identity v1\0");
        let text = std::fs::read(&config_path).map_err(|e| DiffusionError::io(&config_path, e))?;
        hasher.update(&text);
        for shard in &weights.shards {
            hasher.update(&shard.file_len.to_le_bytes());
            hasher.update(&shard.header_digest);
        }
        Ok(Self {
            dir: dir.clone(),
            config,
            component: Component {
                kind,
                dir,
                config: config_path,
                weights,
            },
            identity: hasher.finalize().to_hex().to_string(),
        })
    }

    /// The identity of a model folder decoded by this decoder (what
    /// [`StableDiffusion::identity`] is then): caches and bake sidecars key on it.
    pub fn model_identity(&self, folder_identity: &str) -> String {
        let mixed = format!("{folder_identity}+decoder:{}", self.identity);
        blake3::hash(mixed.as_bytes()).to_hex().to_string()
    }

    /// Loads the decoder (only `decoder.layers.*`) for a model whose VAE is `vae`.
    ///
    /// Errors: [`crate::DiffusionError::InvalidConfig`] when its latent channels or downscale
    /// factor differ from `vae`'s, [`crate::DiffusionError::MissingTensor`] /
    /// [`crate::DiffusionError::ShapeMismatch`] for weights that do not fit the config.
    pub fn load(&self, vae: &VaeConfig, device: &Device) -> Result<AutoencoderTiny> {
        let config = &self.config;
        for (field, ours, theirs, what) in [
            (
                "latent_channels",
                config.latent_channels,
                vae.latent_channels,
                "latent channels",
            ),
            (
                "decoder_block_out_channels",
                config.downscale_factor,
                vae.downscale_factor,
                "pixels per latent",
            ),
        ] {
            if ours != theirs {
                return Err(crate::DiffusionError::config(
                    &self.component.config,
                    field,
                    format!(
                        "the decoder has {ours} {what} but the model's VAE has {theirs}; it does \
                         not fit this model"
                    ),
                ));
            }
        }
        super::build_part_of_component(
            &self.component,
            device,
            HashMap::new(),
            &["encoder."],
            |vb| AutoencoderTiny::new_decoder_only(vb, config),
        )
    }
}
