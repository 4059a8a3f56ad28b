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

    /// LoRA files merged into the model at load (folder or embedded model; not a
    /// [`ModelSource::Custom`] one), each with its `lora_scale`. Changing them means reloading
    /// the model; the cache keys change with them.
    pub loras: Vec<crate::loading::lora::LoraSpec>,
    /// Threads for the tensor maths, private to the worker (default: all cores but one, at least
    /// one, so the game's main thread keeps a core).
    pub compute_threads: usize,
    /// Run the worker and its compute threads at a lower OS priority than the game (nice 10 on
    /// Linux; elsewhere a no-op), so a frame's threads win a contended core at once. Only the
    /// plugin's own threads: rayon's global pool and Bevy's task pools keep their priority.
    pub background_priority: bool,
    /// Where jobs run: tasks on Bevy's `AsyncComputeTaskPool` (default) or the worker thread.
    /// The queue, priorities and quotas are the same either way.
    pub job_runner: JobRunner,
    /// Cancel a request once every strong handle of its image is dropped (nobody can see the
    /// result any more). Off: such requests run to their end (e.g. to fill a disk cache).
    pub cancel_unused: bool,
    /// Requests waiting or running at once, over all players; more are rejected at once.
    pub max_queued: usize,
    /// Requests waiting or running at once for one player ([`crate::GenerationRequest::player`]).
    pub max_per_player: usize,
    /// Finished images kept in memory for cache hits (0 = none).
    pub cache_memory_entries: usize,
    /// A directory of cached PNGs that survives restarts (`None` = no disk cache).
    pub cache_dir: Option<PathBuf>,
    /// Write a preview into the request's image during denoising (a cheap linear decode of the
    /// current estimate; sprite keying and pixel-art apply to the final image only).
    pub previews: bool,
    /// With previews on: one every this many steps (>= 1).
    pub preview_every: usize,
    /// At most this many worker events are handled per frame (the rest wait for the next frame),
    /// bounding the main thread's work.
    pub max_events_per_frame: usize,
    /// Size of the placeholder image for a request of size 0 ("native") before the model's native
    /// size is known.
    pub placeholder_size: (u32, u32),
}

impl Default for DiffusionSettings {
    fn default() -> Self {
        let worker = WorkerConfig::default();
        Self {
            model: ModelSource::default(),
            device: ComputeDevice::default(),
            prefer_fp16_variant: false,
            decoder: None,
            loras: Vec::new(),
            compute_threads: default_compute_threads(),
            background_priority: true,
            cancel_unused: true,
            job_runner: JobRunner::default(),
            max_queued: worker.max_queued,
            max_per_player: worker.max_per_player,
            cache_memory_entries: worker.cache_memory_entries,
            cache_dir: None,
            previews: true,
            preview_every: 1,
            max_events_per_frame: 256,
            placeholder_size: (64, 64),
        }
    }
}

impl DiffusionSettings {
    /// The worker configuration these settings describe.
    pub fn worker_config(&self) -> WorkerConfig {
        WorkerConfig {
            max_queued: self.max_queued,
            max_per_player: self.max_per_player,
            compute_threads: Some(self.compute_threads.max(1)),
            background_priority: self.background_priority,
            job_spawner: match self.job_runner {
                JobRunner::AsyncComputeTaskPool => Some(async_compute_spawner()),
                JobRunner::DedicatedThread => None,
            },
            preview_every: self.previews.then_some(self.preview_every.max(1)),
            cache_memory_entries: self.cache_memory_entries,
            cache_dir: self.cache_dir.clone(),
        }
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
        assert_eq!(s.compute_threads, (cores - 1).max(1));
        let w = s.worker_config();
        assert_eq!(w.compute_threads, Some(s.compute_threads));
        assert_eq!(w.preview_every, Some(1));
        assert!(
            w.background_priority,
            "the priority setting reaches the worker"
        );
        let w = DiffusionSettings {
            previews: false,
            ..s
        }
        .worker_config();
        assert_eq!(w.preview_every, None);
    }
}
