//! [`DiffusionRuntime`]: the resource that owns the generation worker and the table of requests
//! in flight (request id -> the image handle their pixels go to).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use bevy::asset::Handle;
use bevy::ecs::resource::Resource;
use bevy::image::Image;
use image::RgbaImage;

use super::settings::{BoxedGenerator, DiffusionSettings, ModelSource};
use crate::pipeline::model::{LoadOptions, StableDiffusion};
use crate::pipeline::{DenoisingStep, GenerationHooks};
use crate::request::{AssetKind, GenerationRequest};
use crate::runtime::generator::SdGenerator;
use crate::runtime::worker::{GenerationWorker, Generator, RequestId, SubmitError};

/// A request in flight: where its pixels go.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub handle: Handle<Image>,
    pub kind: AssetKind,
    pub player: Option<String>,
}

/// Owns the [`GenerationWorker`] (started at `PreStartup`, or on first use) and the requests in
/// flight. Use it through the [`super::Diffusion`] system parameter; read-only access
/// (`Res<DiffusionRuntime>`) is fine for queries such as [`DiffusionRuntime::in_flight`].
///
/// Dropping it (app exit) cancels every request in flight and joins the worker, which takes at
/// most one denoising step.
#[derive(Resource)]
pub struct DiffusionRuntime {
    settings: DiffusionSettings,
    worker: Option<GenerationWorker>,
    /// The model's native output size, set by the loader on the worker thread.
    native_size: Arc<OnceLock<(u32, u32)>>,
    pub(crate) pending: HashMap<RequestId, Pending>,
}

impl DiffusionRuntime {
    /// A runtime for `settings`; nothing starts until [`DiffusionRuntime::start`].
    pub fn new(settings: DiffusionSettings) -> Self {
        Self {
            settings,
            worker: None,
            native_size: Arc::new(OnceLock::new()),
            pending: HashMap::new(),
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
    pub fn start(&mut self) -> &GenerationWorker {
        let settings = &self.settings;
        let native = &self.native_size;
        self.worker.get_or_insert_with(|| {
            let load = loader(settings, native.clone());
            GenerationWorker::spawn(settings.worker_config(), load)
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
        handle: Handle<Image>,
    ) -> Result<RequestId, SubmitError> {
        let (kind, player) = (request.kind, request.player.clone());
        let id = self.start().submit(request)?;
        self.pending.insert(
            id,
            Pending {
                handle,
                kind,
                player,
            },
        );
        Ok(id)
    }

    /// Cancels `id` if it is in flight; true when it was (its [`super::GenerationCancelled`]
    /// follows, unless it finishes first).
    pub(crate) fn cancel(&mut self, id: RequestId) -> bool {
        match (&self.worker, self.pending.contains_key(&id)) {
            (Some(worker), true) => {
                worker.cancel(id);
                true
            }
            _ => false,
        }
    }

    /// Cancels every request of `player` in flight; returns how many there were.
    pub(crate) fn cancel_player(&mut self, player: &str) -> usize {
        let Some(worker) = &self.worker else { return 0 };
        worker.cancel_player(player);
        self.pending
            .values()
            .filter(|p| p.player.as_deref() == Some(player))
            .count()
    }

    /// The image handle of request `id` while it is in flight.
    pub fn handle(&self, id: RequestId) -> Option<&Handle<Image>> {
        self.pending.get(&id).map(|p| &p.handle)
    }

    /// Requests submitted whose end (finished, failed or cancelled) the game has not seen yet.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// The worker, once started.
    pub(crate) fn worker(&self) -> Option<&GenerationWorker> {
        self.worker.as_ref()
    }
}

impl Drop for DiffusionRuntime {
    fn drop(&mut self) {
        // Cancel everything so joining the worker (GenerationWorker's Drop) waits one step at most.
        if let Some(worker) = &self.worker {
            for id in self.pending.keys() {
                worker.cancel(*id);
            }
        }
    }
}

/// The worker's load closure for `settings`: runs on the worker thread.
fn loader(
    settings: &DiffusionSettings,
    native: Arc<OnceLock<(u32, u32)>>,
) -> impl FnOnce() -> crate::Result<DynGenerator> + Send + 'static {
    let (model, device, fp16) = (
        settings.model.clone(),
        settings.device,
        settings.prefer_fp16_variant,
    );
    let background = settings.background_priority;
    let loras = settings.loras.clone();
    move || {
        if background {
            // The loader runs inside the worker's compute pool: lower every thread of it.
            rayon::broadcast(|_| lower_current_thread_priority());
        }
        let load_folder = |dir: &Path| -> crate::Result<BoxedGenerator> {
            let options = LoadOptions {
                device: device.to_candle()?,
                prefer_fp16_variant: fp16,
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
        };
        tracing::info!("bevy_diffusion: model `{}` loaded", generator.identity());
        Ok(DynGenerator(generator))
    }
}

/// A boxed generator as the worker's (generic) generator type.
struct DynGenerator(BoxedGenerator);

impl Generator for DynGenerator {
    fn identity(&self) -> String {
        self.0.identity()
    }
    fn generate(
        &self,
        request: &GenerationRequest,
        hooks: &mut dyn GenerationHooks,
    ) -> crate::Result<RgbaImage> {
        self.0.generate(request, hooks)
    }
    fn preview(&self, step: &DenoisingStep) -> Option<RgbaImage> {
        self.0.preview(step)
    }
}

/// Gives the calling thread (only) nice 10, so the game's threads preempt it on a busy core.
#[cfg(target_os = "linux")]
fn lower_current_thread_priority() {
    // SAFETY: plain syscalls on the calling thread's own id; no memory is shared.
    let result = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10)
    };
    if result != 0 {
        tracing::debug!(
            "bevy_diffusion: could not lower the worker's priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Elsewhere thread priorities are left alone (a per-process call would slow the game too).
#[cfg(not(target_os = "linux"))]
fn lower_current_thread_priority() {}
