//! [`DiffusionRuntime`]: the resource that owns the generation worker and the table of requests
//! in flight (request id -> the image handle their pixels go to).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use bevy::asset::{AssetHandleProvider, AssetId, Handle};
use bevy::ecs::resource::Resource;
use bevy::image::Image;

use super::backend::DiffusionBackend;
use super::settings::{BoxedGenerator, DiffusionSettings, ModelSource};
use crate::pipeline::model::{LoadOptions, StableDiffusion};
use crate::request::{AssetKind, GenerationRequest};
use crate::runtime::generator::SdGenerator;
use crate::runtime::worker::{GenerationWorker, RequestId, SubmitError};

/// A request in flight: where its pixels go.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    /// The image the pixels go to. Only an id: the game's handles keep the image alive, and
    /// when the last of them is dropped the request is cancelled (unless
    /// [`DiffusionSettings::cancel_unused`] is off).
    pub image: AssetId<Image>,
    /// A strong handle kept by the plugin when unused requests keep running.
    pub keep: Option<Handle<Image>>,
    /// The placeholder is in `Assets<Image>` (before that, a missing image is not a drop).
    pub placeholder: bool,
    /// Texture or sprite: what the result is post-processed as.
    pub kind: AssetKind,
}

/// Owns the [`GenerationWorker`] (started at `PreStartup`, or on first use) and the requests in
/// flight. Use it through the [`super::Diffusion`] system parameter; read-only access
/// (`Res<DiffusionRuntime>`) is fine for queries such as [`DiffusionRuntime::in_flight`].
///
/// Dropping it (app exit) cancels every request in flight and joins the worker, which takes at
/// most one model block of the running request (a UNet or VAE resnet/attention block).
#[derive(Resource)]
pub struct DiffusionRuntime {
    settings: DiffusionSettings,
    worker: Option<DiffusionBackend>,
    /// The model's native output size, set by the loader on the worker thread.
    native_size: Arc<OnceLock<(u32, u32)>>,
    pub(crate) pending: HashMap<RequestId, Pending>,
    /// Reserves image handles without borrowing `Assets<Image>` (set in `Plugin::finish`).
    pub(crate) image_handles: Option<AssetHandleProvider>,
}

impl DiffusionRuntime {
    /// A runtime for `settings`; nothing starts until [`DiffusionRuntime::start`].
    pub fn new(settings: DiffusionSettings) -> Self {
        Self {
            settings,
            worker: None,
            native_size: Arc::new(OnceLock::new()),
            pending: HashMap::new(),
            image_handles: None,
        }
    }

    /// The settings the plugin was built with.
    pub fn settings(&self) -> &DiffusionSettings {
        &self.settings
    }

    /// True once the worker thread runs (it loads the model first).
    pub fn is_started(&self) -> bool {
        self.worker.is_some()
    }

    /// Starts the worker thread, which loads the model in the background. Idempotent.
    pub fn start(&mut self) -> &DiffusionBackend {
        let settings = &self.settings;
        let native = &self.native_size;
        self.worker.get_or_insert_with(|| {
            #[cfg(feature = "farm")]
            if let ModelSource::Farm(farm) = &settings.model {
                match crate::farm::FarmClient::spawn(farm.clone()) {
                    Ok(client) => return DiffusionBackend::Farm(client),
                    Err(e) => {
                        // A worker whose model failed: ModelLoadFailed, and every job names why.
                        let e = std::sync::Mutex::new(Some(e));
                        let fail = move || -> crate::Result<BoxedGenerator> {
                            Err(e.lock().ok().and_then(|mut e| e.take()).unwrap_or(
                                crate::DiffusionError::Farm {
                                    reason: "no farm client".into(),
                                },
                            ))
                        };
                        return DiffusionBackend::Local(GenerationWorker::spawn(
                            settings.worker_config(),
                            fail,
                        ));
                    }
                }
            }
            let load = loader(settings, native.clone());
            DiffusionBackend::Local(GenerationWorker::spawn(settings.worker_config(), load))
        })
    }

    /// The model's native output size, once a diffusers-folder model has loaded (`None` before,
    /// and for custom generators).
    pub fn native_size(&self) -> Option<(u32, u32)> {
        self.native_size.get().copied()
    }

    /// The size the placeholder of `request` gets: the request's size, else the native size,
    /// else [`DiffusionSettings::placeholder_size`].
    pub fn placeholder_size(&self, request: &GenerationRequest) -> (u32, u32) {
        let (nw, nh) = self.native_size().unwrap_or(self.settings.placeholder_size);
        let pick = |v: u32, native: u32| if v == 0 { native } else { v };
        (pick(request.width, nw), pick(request.height, nh))
    }

    /// Queues `request` whose pixels go to `handle`.
    pub(crate) fn submit(
        &mut self,
        request: GenerationRequest,
        handle: &Handle<Image>,
        placeholder: bool,
    ) -> Result<RequestId, SubmitError> {
        let kind = request.kind;
        let id = self.start().submit(request)?;
        let keep = (!self.settings.cancel_unused).then(|| handle.clone());
        self.pending.insert(
            id,
            Pending {
                image: handle.id(),
                keep,
                placeholder,
                kind,
            },
        );
        Ok(id)
    }

    /// A new strong image handle (no image behind it yet), from `Assets<Image>`'s handle
    /// provider taken when the plugin was finished.
    pub(crate) fn reserve_image(&self) -> Result<Handle<Image>, SubmitError> {
        let provider = self
            .image_handles
            .as_ref()
            .ok_or(SubmitError::WorkerStopped)?;
        Ok(provider.reserve_handle().typed::<Image>())
    }

    /// Marks the placeholder of `id` as stored.
    pub(crate) fn placeholder_stored(&mut self, id: RequestId) {
        if let Some(p) = self.pending.get_mut(&id) {
            p.placeholder = true;
        }
    }

    /// Cancels `id` if it is in flight; true the first time for a request in flight (its
    /// [`super::GenerationCancelled`] follows, unless it finishes first), false after.
    pub(crate) fn cancel(&mut self, id: RequestId) -> bool {
        match (&self.worker, self.pending.contains_key(&id)) {
            (Some(worker), true) => worker.cancel(id),
            _ => false,
        }
    }

    /// Cancels every request of `player` in flight; returns how many were newly cancelled.
    pub(crate) fn cancel_player(&mut self, player: &str) -> usize {
        let Some(worker) = &self.worker else { return 0 };
        worker.cancel_player(player)
    }

    /// The image of request `id` while it is in flight.
    pub fn image(&self, id: RequestId) -> Option<AssetId<Image>> {
        self.pending.get(&id).map(|p| p.image)
    }

    /// Requests submitted whose end (finished, failed or cancelled) the game has not seen yet.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// The worker, once started.
    pub(crate) fn worker(&self) -> Option<&DiffusionBackend> {
        self.worker.as_ref()
    }
}

impl Drop for DiffusionRuntime {
    fn drop(&mut self) {
        // Dropping the worker (app exit) cancels everything: the running job stops at its next
        // model block and the thread is joined.
        if let Some(worker) = self.worker.take() {
            let started = std::time::Instant::now();
            drop(worker);
            tracing::debug!(
                "bevy_diffusion: worker stopped in {:.0} ms",
                started.elapsed().as_secs_f64() * 1e3
            );
        }
    }
}

/// The worker's load closure for `settings`: runs on the worker thread, inside its compute pool.
fn loader(
    settings: &DiffusionSettings,
    native: Arc<OnceLock<(u32, u32)>>,
) -> impl FnOnce() -> crate::Result<BoxedGenerator> + Send + 'static {
    let (model, device, fp16, decoder) = (
        settings.model.clone(),
        settings.device,
        settings.prefer_fp16_variant,
        settings.decoder.clone(),
    );
    let loras = settings.loras.clone();
    let upscaler = settings.upscaler.clone();
    move || {
        let load_folder = |dir: &Path| -> crate::Result<BoxedGenerator> {
            let options = LoadOptions {
                device: device.to_candle()?,
                prefer_fp16_variant: fp16,
                decoder: decoder.clone(),
                upscaler: upscaler.clone(),
                loras: loras.clone(),
            };
            let model = StableDiffusion::load(dir, &options)?;
            let side = (model.unet_config.sample_size * model.vae_config.downscale_factor) as u32;
            let _ = native.set((side, side));
            Ok(Box::new(SdGenerator::new(model)))
        };
        let generator = match &model {
            ModelSource::Embedded => load_folder(&crate::loading::embedded::default_model_dir())?,
            ModelSource::Folder(dir) => load_folder(dir)?,
            ModelSource::Custom(loader) => loader.load()?,
            #[cfg(feature = "farm")]
            ModelSource::Farm(farm) => {
                return Err(crate::DiffusionError::Farm {
                    reason: format!("{} is served by the farm client, not loaded", farm.url),
                });
            }
        };
        tracing::info!("bevy_diffusion: model `{}` loaded", generator.identity());
        Ok(generator)
    }
}
