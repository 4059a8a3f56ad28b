//! [`WorkerConfig`]: the queue limits, threading, previews, cache and job placement of a
//! [`super::GenerationWorker`]; [`JobSpawner`], the hook that runs jobs as tasks elsewhere.

use super::*;

/// Queue limits and threading of a [`GenerationWorker`].
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Requests waiting or running at once, over all players.
    pub max_queued: usize,
    /// Requests waiting or running at once for one player.
    pub max_per_player: usize,
    /// Upper bound on threads for tensor maths (a rayon pool private to the worker, capped at
    /// the machine's cores); `None` = all cores. Lowered further to
    /// [`Generator::max_useful_threads`] once the model has loaded.
    pub compute_threads: Option<usize>,
    /// Run the worker thread and its compute threads at a lower OS priority (nice 10 on Linux,
    /// a no-op elsewhere); rayon's global pool and the game's threads are left alone.
    pub background_priority: bool,
    /// Send a preview every this many steps (`None` = no previews).
    pub preview_every: Option<usize>,
    /// Finished images kept in memory for cache hits (0 = no memory cache).
    pub cache_memory_entries: usize,
    /// Directory of the on-disk cache (`None` = no disk cache).
    pub cache_dir: Option<std::path::PathBuf>,
    /// Where each job runs: `None` = on the worker thread itself (inside the compute pool);
    /// `Some` = handed to this spawner as one task per job (the Bevy plugin passes
    /// `AsyncComputeTaskPool`), which enters the worker's compute pool for the tensor maths.
    /// The worker thread then only keeps the queue (priorities, quotas, cancels).
    pub job_spawner: Option<JobSpawner>,
}

/// Runs one job somewhere else than the worker thread (see [`WorkerConfig::job_spawner`]): the
/// closure must be run exactly once, to its end (it sends the job's result back itself).
#[derive(Clone)]
pub struct JobSpawner(Arc<SpawnFn>);

/// A job: run once, to its end.
type Job = Box<dyn FnOnce() + Send>;
/// What [`JobSpawner`] calls with each job.
type SpawnFn = dyn Fn(Job) + Send + Sync;

impl JobSpawner {
    /// A spawner from a function that starts a task running its argument.
    pub fn new(spawn: impl Fn(Box<dyn FnOnce() + Send>) + Send + Sync + 'static) -> Self {
        Self(Arc::new(spawn))
    }

    /// Starts `job` as a task.
    pub fn spawn(&self, job: Box<dyn FnOnce() + Send>) {
        (self.0)(job)
    }
}

impl std::fmt::Debug for JobSpawner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobSpawner(..)")
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            max_queued: 64,
            max_per_player: 8,
            compute_threads: None,
            background_priority: false,
            preview_every: Some(1),
            cache_memory_entries: 64,
            cache_dir: None,
            job_spawner: None,
        }
    }
}
