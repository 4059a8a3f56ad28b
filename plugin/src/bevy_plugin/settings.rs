//! [`DiffusionSettings`]: everything the plugin can be told, as plain data with defaults.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::runtime::worker::{Generator, JobSpawner, WorkerConfig};

/// Where the model comes from.
#[derive(Clone, Default)]
pub enum ModelSource {
    /// The model shipped with the project ([`crate::loading::embedded::default_model_dir`]; the
    /// `BEVY_DIFFUSION_DEFAULT_MODEL` environment variable overrides it).
    #[default]
    Embedded,
    /// A diffusers-layout folder (`model_index.json`, `unet/`, `vae/`, ...).
    Folder(PathBuf),
    /// Any [`Generator`] built by your own loader, which runs on the worker thread: another
    /// model runtime, a procedural fallback, a test double.
    Custom(GeneratorLoader),
    /// A generation farm on NATS JetStream (feature `farm`; docs/farm.md): requests go to
    /// `texgen serve` workers, with the same handles, previews, failures and cancel. The
    /// broker's limits replace `max_queued` / `max_per_player`.
    #[cfg(feature = "farm")]
    Farm(crate::farm::FarmSettings),
}

impl fmt::Debug for ModelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Embedded => f.write_str("Embedded"),
            Self::Folder(dir) => f.debug_tuple("Folder").field(dir).finish(),
            Self::Custom(_) => f.write_str("Custom(..)"),
            #[cfg(feature = "farm")]
            Self::Farm(farm) => f.debug_tuple("Farm").field(farm).finish(),
        }
    }
}

/// A boxed [`Generator`], as a [`GeneratorLoader`] returns it.
pub type BoxedGenerator = Box<dyn Generator>;

/// Builds a [`Generator`] on the worker thread (so a slow load never blocks a frame). Cheap to
/// clone; called once per plugin start.
#[derive(Clone)]
pub struct GeneratorLoader(Arc<dyn Fn() -> crate::Result<BoxedGenerator> + Send + Sync>);

impl GeneratorLoader {
    /// A loader from a closure returning any generator.
    pub fn new<G, F>(load: F) -> Self
    where
        G: Generator,
        F: Fn() -> crate::Result<G> + Send + Sync + 'static,
    {
        Self(Arc::new(move || {
            load().map(|g| Box::new(g) as BoxedGenerator)
        }))
    }

    /// Runs the loader.
    pub fn load(&self) -> crate::Result<BoxedGenerator> {
        (self.0)()
    }
}

/// Where the tensors live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ComputeDevice {
    /// The CPU (always available).
    #[default]
    Cpu,
    /// CUDA GPU `n` (needs the crate's `cuda` feature; otherwise loading fails with the reason).
    Cuda(usize),
    /// Metal GPU `n` (needs the crate's `metal` feature; otherwise loading fails with the reason).
    Metal(usize),
}

impl ComputeDevice {
    /// The candle device; fails with candle's reason when the backend is not compiled in or the
    /// device does not exist.
    pub fn to_candle(self) -> crate::Result<candle_core::Device> {
        Ok(match self {
            Self::Cpu => candle_core::Device::Cpu,
            Self::Cuda(n) => candle_core::Device::new_cuda(n)?,
            Self::Metal(n) => candle_core::Device::new_metal(n)?,
        })
    }
}

/// Where the plugin runs each generation job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum JobRunner {
    /// One task per job on Bevy's `AsyncComputeTaskPool` (the task enters the plugin's own
    /// compute pool for the tensor maths, so the game's task pools keep their threads free).
    #[default]
    AsyncComputeTaskPool,
    /// Every job on the plugin's dedicated worker thread (inside its compute pool); Bevy's task
    /// pools are not used at all.
    DedicatedThread,
}

/// Settings of [`super::DiffusionPlugin`]. Every field has a working default.
#[derive(Debug, Clone)]
pub struct DiffusionSettings {
    /// Which model to load (default: the embedded one).
    pub model: ModelSource,
    /// Where to run it (default: CPU).
    pub device: ComputeDevice,
    /// Load `*.fp16.safetensors` weights when a folder has them (smaller download, same maths).
    pub prefer_fp16_variant: bool,
    /// A TAESD folder (diffusers `AutoencoderTiny`, e.g. madebyollin/taesd) that decodes the
    /// images of an SD 1.x/2.x model instead of its own VAE (many times faster; previews then
    /// use it too). `None`: the model's own `vae/`. Ignored by [`ModelSource::Custom`].
    pub decoder: Option<PathBuf>,
    /// An x4 upscaler folder (`StableDiffusionUpscalePipeline` layout) run for requests with
    /// `upscale: Some(4)` ([`crate::LoadOptions::upscaler`]); without it every upscale is the
    /// wrap-aware Lanczos fallback. Ignored by [`ModelSource::Custom`].
    pub upscaler: Option<PathBuf>,

    /// LoRA files merged into the model at load (folder or embedded model; not a
    /// [`ModelSource::Custom`] one), each with its `lora_scale`. Changing them means reloading
    /// the model; the cache keys change with them.
    pub loras: Vec<crate::loading::lora::LoraSpec>,
    /// The worker's queue limits, compute threads, priority, previews and cache, as the
    /// bevy-free [`GenerationWorker`](crate::runtime::worker::GenerationWorker) takes them. The
    /// plugin's defaults differ from [`WorkerConfig::default`] in two places:
    /// `compute_threads: Some(all cores but one)` (the game's main thread keeps a core) and
    /// `background_priority: true`. `job_spawner` is set by the plugin from [`Self::job_runner`]
    /// unless you set one. `preview_every: None` turns previews off.
    pub worker: WorkerConfig,
    /// Where jobs run: tasks on Bevy's `AsyncComputeTaskPool` (default) or the worker thread.
    /// The queue, priorities and quotas are the same either way.
    pub job_runner: JobRunner,
    /// Cancel a request once every strong handle of its image is dropped (nobody can see the
    /// result any more). Off: such requests run to their end (e.g. to fill a disk cache).
    pub cancel_unused: bool,
    /// At most this many worker events are handled per frame (the rest wait for the next frame),
    /// bounding the main thread's work.
    pub max_events_per_frame: usize,
    /// Size of the placeholder image for a request of size 0 ("native") before the model's native
    /// size is known.
    pub placeholder_size: (u32, u32),
}

impl Default for DiffusionSettings {
    fn default() -> Self {
        Self {
            model: ModelSource::default(),
            device: ComputeDevice::default(),
            prefer_fp16_variant: false,
            decoder: None,
            upscaler: None,
            loras: Vec::new(),
            worker: WorkerConfig {
                compute_threads: Some(default_compute_threads()),
                background_priority: true,
                ..WorkerConfig::default()
            },
            cancel_unused: true,
            job_runner: JobRunner::default(),
            max_events_per_frame: 256,
            placeholder_size: (64, 64),
        }
    }
}

impl DiffusionSettings {
    /// The worker configuration these settings describe: [`Self::worker`] with its counts
    /// clamped to at least 1 and, unless one is set, the job spawner [`Self::job_runner`] asks for.
    pub fn worker_config(&self) -> WorkerConfig {
        let mut worker = self.worker.clone();
        worker.compute_threads = worker.compute_threads.map(|n| n.max(1));
        worker.preview_every = worker.preview_every.map(|n| n.max(1));
        if worker.job_spawner.is_none() && self.job_runner == JobRunner::AsyncComputeTaskPool {
            worker.job_spawner = Some(async_compute_spawner());
        }
        worker
    }

    /// These settings with `model`.
    pub fn with_model(mut self, model: ModelSource) -> Self {
        self.model = model;
        self
    }

    /// These settings with `n` compute threads (at least 1; `WorkerConfig::compute_threads`).
    pub fn with_compute_threads(mut self, n: usize) -> Self {
        self.worker.compute_threads = Some(n.max(1));
        self
    }

    /// These settings with the queue limits: `max_queued` requests over all players,
    /// `max_per_player` for one player ([`crate::GenerationRequest::player`]).
    pub fn with_queue_limits(mut self, max_queued: usize, max_per_player: usize) -> Self {
        self.worker.max_queued = max_queued;
        self.worker.max_per_player = max_per_player;
        self
    }

    /// These settings with a preview every `every` steps (`None`: no previews).
    pub fn with_previews(mut self, every: Option<usize>) -> Self {
        self.worker.preview_every = every;
        self
    }

    /// These settings with an on-disk PNG cache in `dir` (survives restarts).
    pub fn with_cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.worker.cache_dir = Some(dir.into());
        self
    }
}

/// Spawns each job as a task on Bevy's `AsyncComputeTaskPool` (initialised with Bevy's
/// defaults if no `TaskPoolPlugin` did it first).
fn async_compute_spawner() -> JobSpawner {
    JobSpawner::new(|job| {
        bevy::tasks::AsyncComputeTaskPool::get_or_init(bevy::tasks::TaskPool::default)
            .spawn(async move { job() })
            .detach();
    })
}

/// All cores but one, at least one.
pub fn default_compute_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get().saturating_sub(1))
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_keep_a_core_and_map_to_the_worker() {
        let s = DiffusionSettings::default();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(s.worker.compute_threads, Some((cores - 1).max(1)));
        let w = s.worker_config();
        assert_eq!(w.compute_threads, s.worker.compute_threads);
        assert_eq!(w.preview_every, Some(1));
        assert!(
            w.job_spawner.is_some(),
            "jobs go to the task pool by default"
        );
        assert!(
            w.background_priority,
            "the priority setting reaches the worker"
        );
        let w = s.clone().with_previews(None).worker_config();
        assert_eq!(w.preview_every, None);
        let w = s.with_compute_threads(0).worker_config();
        assert_eq!(w.compute_threads, Some(1), "at least one thread");
    }
}
