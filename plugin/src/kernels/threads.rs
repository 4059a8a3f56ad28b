//! The one owner of the compute threads: rayon pools built once per size and shared by
//! `StableDiffusion::run_with_threads` (texgen, bake) and the plugin's worker, with the size
//! capped at the machine's cores.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// The number of CPU cores this process may use (`std::thread::available_parallelism`, 1 when
/// unknown).
pub fn available_cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// A requested thread count after capping: `threads` in `1..=cores`, and the notice to show the
/// user when the request was changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadCount {
    pub threads: usize,
    pub notice: Option<String>,
}

/// Caps `requested` compute threads at `cores` (and raises 0 to 1), saying so.
pub fn cap_threads_at(requested: usize, cores: usize) -> ThreadCount {
    let cores = cores.max(1);
    if requested == 0 {
        ThreadCount {
            threads: 1,
            notice: Some("--threads 0 is not a thread count; using 1 thread".into()),
        }
    } else if requested > cores {
        ThreadCount {
            threads: cores,
            notice: Some(format!(
                "--threads {requested} is more than the {cores} CPU cores of this machine; \
                 using {cores} threads"
            )),
        }
    } else {
        ThreadCount {
            threads: requested,
            notice: None,
        }
    }
}

/// [`cap_threads_at`] this machine's [`available_cores`].
pub fn cap_threads(requested: usize) -> ThreadCount {
    cap_threads_at(requested, available_cores())
}

static POOLS: OnceLock<Mutex<HashMap<usize, Arc<rayon::ThreadPool>>>> = OnceLock::new();

/// The shared pool of `threads` threads (capped at the cores; a notice is logged when capped),
/// built on first use and reused afterwards. `None` only if the OS refused to start threads.
pub fn shared_pool(threads: usize) -> Option<Arc<rayon::ThreadPool>> {
    let count = cap_threads(threads);
    if let Some(notice) = &count.notice {
        tracing::warn!("{notice}");
    }
    let pools = POOLS.get_or_init(|| Mutex::new(HashMap::new()));
    let mut pools = pools.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(pool) = pools.get(&count.threads) {
        return Some(pool.clone());
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(count.threads)
        .thread_name(|i| format!("bevy_diffusion-compute-{i}"))
        .build()
        .ok()
        .map(Arc::new)?;
    pools.insert(count.threads, pool.clone());
    Some(pool)
}

/// Runs `f` on the shared pool of `threads` threads, or on rayon's global pool (all cores) when
/// `threads` is `None` or no pool could be built.
pub fn install<T: Send>(threads: Option<usize>, f: impl FnOnce() -> T + Send) -> T {
    match threads.and_then(shared_pool) {
        Some(pool) => pool.install(f),
        None => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_are_built_once_per_size() {
        let a = shared_pool(1).expect("pool");
        let b = shared_pool(1).expect("pool");
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(install(Some(1), rayon::current_num_threads), 1);
    }
}
