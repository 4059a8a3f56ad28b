//! The one owner of the compute threads: rayon pools for the tensor maths, built once per
//! (thread count, priority) and shared by the plugin's worker, `texgen` and bake
//! ([`crate::pipeline::model::StableDiffusion::run_with_threads`]).
//!
//! - Thread counts are capped at the machine's cores ([`cap_threads`]): more threads than cores
//!   only add switching (`--threads 100000` used to spawn 100,000 threads).
//! - A background pool's threads lower their own OS priority as they start (rayon's
//!   `start_handler`; nice 10 on Linux, a no-op elsewhere), so the game's threads win a
//!   contended core. Rayon's global pool is left alone.

use std::sync::{Arc, Mutex};

/// The machine's logical cores (at least 1).
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `requested` threads capped to `1..=available_cores()`, with a sentence saying so when it was
/// changed (for a CLI message or a log line).
pub fn cap_threads(requested: usize) -> (usize, Option<String>) {
    let cores = available_cores();
    if requested == 0 {
        (1, Some("0 compute threads asked for; using 1".into()))
    } else if requested > cores {
        (
            cores,
            Some(format!(
                "{requested} compute threads asked for, but this machine has {cores} cores; using {cores}"
            )),
        )
    } else {
        (requested, None)
    }
}

/// A shared compute pool of `threads` threads (capped by [`cap_threads`]; a cap is logged at
/// warn level), at lowered priority when `background`. Built on the first call for a given
/// (count, priority) and reused afterwards, so a bake of 1,000 items builds one pool, not 1,000.
///
/// Errors: rayon's, when the OS refuses to spawn the threads.
pub fn shared_pool(
    threads: usize,
    background: bool,
) -> Result<Arc<rayon::ThreadPool>, rayon::ThreadPoolBuildError> {
    /// One pool per (threads, background priority).
    type Pools = Vec<((usize, bool), Arc<rayon::ThreadPool>)>;
    static POOLS: Mutex<Pools> = Mutex::new(Vec::new());
    let (threads, capped) = cap_threads(threads);
    let key = (threads, background);
    let mut pools = POOLS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((_, pool)) = pools.iter().find(|(k, _)| *k == key) {
        return Ok(pool.clone());
    }
    if let Some(why) = capped {
        tracing::warn!("bevy_diffusion: {why}");
    }
    let pool = Arc::new(build_pool(threads, background)?);
    pools.push((key, pool.clone()));
    Ok(pool)
}

/// A new pool of `threads` threads named `bevy_diffusion-compute-{i}`; each lowers its own
/// priority first when `background`.
pub fn build_pool(
    threads: usize,
    background: bool,
) -> Result<rayon::ThreadPool, rayon::ThreadPoolBuildError> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .thread_name(|i| format!("bevy_diffusion-compute-{i}"))
        .start_handler(move |_| {
            if background {
                lower_current_thread_priority();
            }
        })
        .build()
}

/// Gives the calling thread (only) nice 10, so the game's threads preempt it on a busy core.
#[cfg(target_os = "linux")]
pub fn lower_current_thread_priority() {
    // SAFETY: plain syscalls on the calling thread's own id; no memory is shared.
    let result = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10)
    };
    if result != 0 {
        tracing::debug!(
            "bevy_diffusion: could not lower a compute thread's priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Elsewhere thread priorities are left alone (a per-process call would slow the game too).
#[cfg(not(target_os = "linux"))]
pub fn lower_current_thread_priority() {}

/// The calling thread's nice value (Linux; `None` elsewhere or on error). Tests use it to check
/// which threads run at the lowered priority.
#[cfg(target_os = "linux")]
pub fn current_thread_nice() -> Option<i32> {
    // SAFETY: plain syscalls on the calling thread's own id; errno is reset before the call
    // because getpriority may legitimately return -1.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        *libc::__errno_location() = 0;
        let nice = libc::getpriority(libc::PRIO_PROCESS, tid);
        (*libc::__errno_location() == 0).then_some(nice)
    }
}

/// Thread priorities are not read off Linux.
#[cfg(not(target_os = "linux"))]
pub fn current_thread_nice() -> Option<i32> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_counts_are_capped_at_the_cores_with_a_message() {
        let cores = available_cores();
        assert_eq!(cap_threads(1), (1, None));
        let (n, why) = cap_threads(100_000);
        assert_eq!(n, cores);
        let why = why.unwrap();
        assert!(
            why.contains("100000") && why.contains(&format!("{cores} cores")),
            "{why}"
        );
        assert_eq!(cap_threads(0).0, 1);
    }

    #[test]
    fn a_pool_is_built_once_per_size() {
        let a = shared_pool(1, false).unwrap();
        let b = shared_pool(1, false).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.current_num_threads(), 1);
        let c = shared_pool(100_000, false).unwrap();
        assert_eq!(c.current_num_threads(), available_cores());
    }
}
