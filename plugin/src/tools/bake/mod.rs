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

#[cfg(feature = "farm")]
pub mod farm;
mod manifest;
mod plan;
mod report;
mod write;

pub use manifest::*;
pub use plan::*;
pub use report::*;
pub(crate) use write::{Written, write_item};

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::error::DiffusionError;
use crate::loading::folder::{FolderOptions, ModelFolder};
use crate::models::autoencoders::VaeConfig;
use crate::pipeline::model::{DecoderFolder, LoadOptions, StableDiffusion};
use crate::pipeline::{self, DenoisingStep, GenerationHooks};

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

/// What planning found: every item, the model identity planned with, the load options.
pub(crate) struct Prepared {
    pub(crate) planned: Vec<PlannedItem>,
    pub(crate) identity: String,
    pub(crate) load: LoadOptions,
}

/// Checks and hashes the model folder, plans the items (sending [`BakeEvent::Planned`]) and
/// creates `out_dir` when something is to be written.
pub(crate) fn prepare(
    manifest: &BakeManifest,
    options: &BakeOptions,
    on_event: &mut (dyn FnMut(&BakeEvent<'_>) + Send),
) -> Result<Prepared, BakeError> {
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
    let dtype = crate::precision::resolve(load.dtype, &load.device).0;
    let identity = crate::precision::identity(&identity, dtype);
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
    Ok(Prepared {
        planned,
        identity,
        load,
    })
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
    let Prepared {
        planned,
        identity,
        load,
    } = prepare(manifest, options, on_event)?;

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
    // The identity of the model actually loaded (equal to the planned one unless the folder
    // changed in between).
    let hash = content_hash(&model.identity, request, &options.base_dir)?;
    let truncated = crate::pipeline::PromptTruncation {
        prompt: out.prompt_truncated,
        negative_prompt: out.negative_prompt_truncated,
    };
    let written = Written {
        content_hash: hash,
        model_identity: model.identity.clone(),
        model_dir: model.dir.clone(),
        seed: out.seed,
    };
    write_item(entry, &image, written, started, truncated)
}

#[cfg(test)]
mod tests;
