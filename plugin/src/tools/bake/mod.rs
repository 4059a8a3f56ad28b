//! Editor-time baking: a RON manifest of named [`GenerationRequest`](crate::GenerationRequest)s becomes `NAME.png` files
//! plus `NAME.texgen.json` sidecars, regenerating only what changed (`texgen bake`).
//!
//! ```ron
//! // textures.ron
//! (
//!     model: None, // or Some("models/my-sd"): relative to this file; `texgen --model` wins
//!     items: {
//!         "wall": (prompt: "mossy stone wall", seed: 3, tiling: xy, width: 512, height: 512),
//!         "coin": (prompt: "gold coin", kind: sprite, num_inference_steps: 25, pixel_art: (cell: 4, colors: 16)),
//!     },
//! )
//! ```
//!
//! Each item is a [`GenerationRequest`](crate::GenerationRequest) written in RON exactly as a single-request
//! `*.texgen.ron` file would be ([`parse_request_ron`](crate::request::ron::parse_request_ron)): every field optional (defaults of
//! [`GenerationRequest::default`](crate::GenerationRequest::default)), unknown fields refused, `Option` fields written bare or as
//! `Some(...)` ([`ron_options`](crate::request::ron::ron_options) enables `implicit_some`), enum values in the CLI spelling (`xy`,
//! `sprite`, `r#euler-a`) or the Rust one (`XY`, `Sprite`, `EulerAncestral`).
//!
//! How a bake runs ([`bake`]):
//!
//! 1. **Plan** ([`plan`]): the model folder is checked and hashed ([`ModelFolder::open`], no
//!    weights are read), and each item's content hash ([`content_hash`]: the [`CacheKey`](crate::runtime::cache::CacheKey) of the
//!    model identity and the request's pixel fields) is compared with its sidecar's. An item is
//!    up to date when the hashes match and the PNG on disk is the one the sidecar describes; an
//!    item with a bad name or an invalid field is marked failed here, before any model work.
//! 2. **Run**: the model is loaded lazily, on the first item that needs it: a rerun of an
//!    unchanged manifest loads nothing. Each item is generated ([`crate::pipeline::generate`] +
//!    [`crate::pipeline::postprocess::finish`], the same bytes as everywhere else) and written atomically:
//!    the PNG to a temporary file renamed over `NAME.png`, then the sidecar the same way. A bake
//!    interrupted at any point (Ctrl-C) leaves no half-written PNG, and the next run redoes
//!    exactly the items whose sidecar does not match.
//! 3. **Report** ([`BakeReport`]): one [`ItemOutcome`] per item; a failed item never stops the
//!    others.

mod manifest;
mod plan;

pub use manifest::*;
pub use plan::*;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::error::DiffusionError;
use crate::loading::folder::{FolderOptions, ModelFolder};
use crate::models::autoencoders::VaeConfig;
use crate::pipeline::model::{DecoderFolder, LoadOptions, StableDiffusion};
use crate::pipeline::{self, DenoisingStep, GenerationHooks};
use crate::request::ron::RonError;
use crate::runtime::atomic_file::{encode_png, remove_stale_temp_files, write_atomic};

// ---------------------------------------------------------------- running

/// Everything [`bake`] needs besides the manifest.
#[derive(Debug, Clone)]
pub struct BakeOptions {
    /// Where `NAME.png` and `NAME.texgen.json` go (created if missing).
    pub out_dir: PathBuf,
    /// The model folder (already resolved: see [`crate::loading::hub::resolve_model`]).
    pub model_dir: PathBuf,
    /// Relative init-image paths are relative to this (the manifest's folder).
    pub base_dir: PathBuf,
    /// Regenerate every item, up to date or not.
    pub force: bool,
    /// How to load the model (device, fp16 variant).
    pub load: LoadOptions,
    /// Set to true to stop between two denoising steps; the item in progress is not written.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Compute threads (`None` = [`StableDiffusion::max_useful_threads`], else all cores).
    pub threads: Option<usize>,
}

impl BakeOptions {
    /// Options writing to `out_dir` with the model folder `model_dir`, paths relative to the
    /// current folder, on the CPU.
    pub fn new(out_dir: impl Into<PathBuf>, model_dir: impl Into<PathBuf>) -> Self {
        Self {
            out_dir: out_dir.into(),
            model_dir: model_dir.into(),
            base_dir: PathBuf::from("."),
            force: false,
            load: LoadOptions::default(),
            cancel: None,
            threads: None,
        }
    }
}

/// How one item ended.
#[derive(Debug, Clone, PartialEq)]
pub enum ItemOutcome {
    /// Generated and written.
    Baked {
        /// The PNG written.
        png: PathBuf,
        /// Its size in pixels.
        width: u32,
        /// Its size in pixels.
        height: u32,
        /// Generation time (the model load not included).
        seconds: f64,
        /// Which of the item's prompts were longer than 77 tokens and were cut.
        truncated: crate::pipeline::PromptTruncation,
    },
    /// Up to date; nothing done.
    Skipped,
    /// Not written, and why.
    Failed(String),
}

/// Progress of a [`bake`], in order: `Planned`, then per item `ItemStarted`, `Step`s and
/// `ItemFinished` (skipped and invalid items only get `ItemFinished`); `LoadingModel` and
/// `ModelLoaded` before the first item that needs the model.
#[derive(Debug)]
pub enum BakeEvent<'a> {
    /// The plan: every item and what will be done with it.
    Planned {
        /// Every item of the manifest, in order.
        items: &'a [PlannedItem],
    },
    /// The model is about to be loaded (lazily, for the first item to generate).
    LoadingModel {
        /// The model folder.
        dir: &'a Path,
    },
    /// The model is loaded.
    ModelLoaded {
        /// The model folder.
        dir: &'a Path,
        /// Load time in seconds.
        seconds: f64,
    },
    /// Item `index` starts generating.
    ItemStarted {
        /// The item's position in the manifest (0-based).
        index: usize,
        /// The item's name.
        name: &'a str,
        /// Why, in words.
        reason: &'a str,
    },
    /// A denoising step of item `index` finished (`step` is 1-based).
    Step {
        /// The item's position in the manifest (0-based).
        index: usize,
        /// The item's name.
        name: &'a str,
        /// Denoising steps done so far (1-based).
        step: usize,
        /// Denoising steps in all.
        total: usize,
    },
    /// Item `index` is done, skipped or failed.
    ItemFinished {
        /// The item's position in the manifest (0-based).
        index: usize,
        /// The item's name.
        name: &'a str,
        /// What happened to it.
        outcome: &'a ItemOutcome,
    },
}

/// The result of a [`bake`].
#[derive(Debug, Clone, PartialEq)]
pub struct BakeReport {
    /// `(name, outcome)` in manifest order.
    pub items: Vec<(String, ItemOutcome)>,
    /// Whether the model was loaded (false when every item was skipped or invalid).
    pub model_loaded: bool,
    /// The identity of the model the bake planned with.
    pub model_identity: String,
    /// True when [`BakeOptions::cancel`] stopped the bake (the remaining items are absent).
    pub cancelled: bool,
}

impl BakeReport {
    fn count(&self, f: impl Fn(&ItemOutcome) -> bool) -> usize {
        self.items.iter().filter(|(_, o)| f(o)).count()
    }
    /// Items generated and written.
    pub fn baked(&self) -> usize {
        self.count(|o| matches!(o, ItemOutcome::Baked { .. }))
    }
    /// Items up to date.
    pub fn skipped(&self) -> usize {
        self.count(|o| matches!(o, ItemOutcome::Skipped))
    }
    /// Items that failed.
    pub fn failed(&self) -> usize {
        self.count(|o| matches!(o, ItemOutcome::Failed(_)))
    }
    /// `baked N, skipped M, failed K`.
    pub fn summary(&self) -> String {
        format!(
            "baked {}, skipped {}, failed {}",
            self.baked(),
            self.skipped(),
            self.failed()
        )
    }
}

/// Why a bake could not run at all (a failing item is not one: see [`ItemOutcome::Failed`]).
#[derive(Debug, thiserror::Error)]
pub enum BakeError {
    /// The manifest does not parse.
    #[error(transparent)]
    Manifest(#[from] RonError),
    /// The model folder is broken or cannot be loaded.
    #[error(transparent)]
    Model(#[from] DiffusionError),
    /// The manifest cannot be read or the output folder cannot be created.
    #[error("{path}: {error}")]
    Io {
        /// The file that could not be written or read.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
}

/// Forwards denoising steps as [`BakeEvent::Step`] and polls the cancel flag.
struct BakeHooks<'a, 'b> {
    on_event: &'a mut (dyn FnMut(&BakeEvent<'_>) + Send),
    index: usize,
    name: &'b str,
    cancel: Option<&'b AtomicBool>,
}

impl GenerationHooks for BakeHooks<'_, '_> {
    fn on_step(&mut self, step: &DenoisingStep) {
        (self.on_event)(&BakeEvent::Step {
            index: self.index,
            name: self.name,
            step: step.step + 1,
            total: step.total,
        });
    }
    fn should_cancel(&mut self) -> bool {
        self.cancel.is_some_and(|c| c.load(Ordering::Relaxed))
    }
}

/// Bakes `manifest` (see the module docs), reporting progress through `on_event`.
///
/// # Errors
/// [`BakeError::Model`] when the model folder fails its checks (nothing is written) or fails to
/// load when the first item needs it; [`BakeError::Io`] when `out_dir` cannot be created. Every
/// per-item problem is an [`ItemOutcome::Failed`] in the report instead.
pub fn bake(
    manifest: &BakeManifest,
    options: &BakeOptions,
    on_event: &mut (dyn FnMut(&BakeEvent<'_>) + Send),
) -> Result<BakeReport, BakeError> {
    let folder_options = FolderOptions {
        prefer_fp16_variant: options.load.prefer_fp16_variant,
        ..FolderOptions::default()
    };
    let folder = ModelFolder::open(&options.model_dir, &folder_options)?;
    let vae_scale = VaeConfig::from_file(&folder.vae.config)?.downscale_factor;
    // The manifest's LoRAs unless the options name some; they are part of the model identity.
    let mut load = options.load.clone();
    if load.loras.is_empty() {
        load.loras = (manifest.loras.iter())
            .map(|(path, scale)| crate::loading::lora::LoraSpec {
                path: options.base_dir.join(path),
                scale: *scale,
            })
            .collect();
    }
    // The identity the loaded model will have: a --decoder, then the LoRAs, change it.
    let base_identity = match &load.decoder {
        Some(dir) => DecoderFolder::open(dir, &folder_options)?.model_identity(&folder.identity),
        None => folder.identity.clone(),
    };
    let base_identity = match &load.upscaler {
        Some(dir) => {
            use crate::pipeline::upscale::upscaler::{Upscaler, combined_identity};
            combined_identity(&base_identity, &Upscaler::folder_identity(dir, &load)?)
        }
        None => base_identity,
    };
    let identity = crate::loading::lora_merge::identity(&base_identity, &load.loras)?;
    let planned = plan(
        &manifest.items,
        &options.base_dir,
        &options.out_dir,
        &identity,
        vae_scale,
        options.force,
    );
    on_event(&BakeEvent::Planned { items: &planned });
    if planned
        .iter()
        .any(|p| matches!(p.state, ItemState::Needed(_)))
    {
        std::fs::create_dir_all(&options.out_dir).map_err(|error| BakeError::Io {
            path: options.out_dir.clone(),
            error,
        })?;
    }

    let mut report = BakeReport {
        items: Vec::with_capacity(planned.len()),
        model_loaded: false,
        model_identity: identity.clone(),
        cancelled: false,
    };
    let mut model: Option<StableDiffusion> = None;
    for (index, entry) in planned.iter().enumerate() {
        let name = entry.item.name.as_str();
        let outcome = match &entry.state {
            ItemState::UpToDate => ItemOutcome::Skipped,
            ItemState::Invalid(reason) => ItemOutcome::Failed(reason.clone()),
            ItemState::Needed(reason) => {
                if model.is_none() {
                    on_event(&BakeEvent::LoadingModel {
                        dir: &options.model_dir,
                    });
                    let started = Instant::now();
                    model = Some(StableDiffusion::load(&options.model_dir, &load)?);
                    report.model_loaded = true;
                    on_event(&BakeEvent::ModelLoaded {
                        dir: &options.model_dir,
                        seconds: started.elapsed().as_secs_f64(),
                    });
                }
                let Some(model) = model.as_ref() else {
                    unreachable!("loaded just above")
                };
                on_event(&BakeEvent::ItemStarted {
                    index,
                    name,
                    reason,
                });
                let mut hooks = BakeHooks {
                    on_event: &mut *on_event,
                    index,
                    name,
                    cancel: options.cancel.as_deref(),
                };
                match model.run_with_threads(options.threads, || {
                    bake_one(model, entry, options, &mut hooks)
                }) {
                    Ok(outcome) => outcome,
                    Err(DiffusionError::Cancelled) => {
                        report.cancelled = true;
                        ItemOutcome::Failed("cancelled".into())
                    }
                    Err(e) => ItemOutcome::Failed(e.to_string()),
                }
            }
        };
        on_event(&BakeEvent::ItemFinished {
            index,
            name,
            outcome: &outcome,
        });
        report.items.push((name.to_string(), outcome));
        if report.cancelled {
            break;
        }
    }
    Ok(report)
}

/// Generates one item and writes its PNG, then its sidecar.
fn bake_one(
    model: &StableDiffusion,
    entry: &PlannedItem,
    options: &BakeOptions,
    hooks: &mut dyn GenerationHooks,
) -> Result<ItemOutcome, DiffusionError> {
    let started = Instant::now();
    let request = &entry.item.request;
    let resolved = resolve_paths(request, &options.base_dir);
    let out = pipeline::generate(model, &resolved, hooks)?;
    let image = crate::pipeline::postprocess::finish(out.image, &resolved);
    let png = encode_png(&image).map_err(|e| DiffusionError::Image {
        path: entry.png.clone(),
        reason: format!("cannot encode the PNG: {e}"),
    })?;
    // The identity of the model actually loaded (equal to the planned one unless the folder
    // changed in between).
    let hash = content_hash(&model.identity, request, &options.base_dir)?;
    let sidecar = Sidecar {
        name: entry.item.name.clone(),
        content_hash: hash,
        model_identity: model.identity.clone(),
        model_dir: model.dir.clone(),
        seed: out.seed,
        width: image.width(),
        height: image.height(),
        png_blake3: blake3::hash(&png).to_hex().to_string(),
        bevy_diffusion_version: env!("CARGO_PKG_VERSION").to_string(),
        request: request.clone(),
    };
    let sidecar_json = serde_json::to_vec_pretty(&sidecar).map_err(|e| DiffusionError::Io {
        path: entry.sidecar.clone(),
        source: std::io::Error::other(e),
    })?;
    remove_stale_temp_files(&entry.png);
    remove_stale_temp_files(&entry.sidecar);
    // PNG first: a sidecar never describes a PNG that is not there yet.
    write_atomic(&entry.png, &png).map_err(|e| DiffusionError::io(&entry.png, e))?;
    write_atomic(&entry.sidecar, &sidecar_json)
        .map_err(|e| DiffusionError::io(&entry.sidecar, e))?;
    if request.pbr {
        // NAME_normal.png, NAME_height.png, NAME_roughness.png, NAME_ao.png beside NAME.png.
        let maps = crate::pipeline::pbr::pbr_maps(&image, &Default::default())?;
        let dir = entry.png.parent().unwrap_or(Path::new("."));
        crate::pipeline::pbr::PbrImages::from(&maps).save(dir, &entry.item.name)?;
    }
    Ok(ItemOutcome::Baked {
        png: entry.png.clone(),
        width: image.width(),
        height: image.height(),
        seconds: started.elapsed().as_secs_f64(),
        truncated: crate::pipeline::PromptTruncation {
            prompt: out.prompt_truncated,
            negative_prompt: out.negative_prompt_truncated,
        },
    })
}

#[cfg(test)]
mod tests;
