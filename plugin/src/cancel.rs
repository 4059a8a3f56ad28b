//! Cancel checks finer than a denoising step: the pipeline installs the request's cancel check
//! for the calling thread ([`with_cancel_check`]), and the models poll it between their blocks
//! ([`checkpoint`]: between UNet down/mid/up blocks, VAE encoder/decoder blocks and text-encoder
//! layers), so a cancel or an app exit stops a running request within one block, not one whole
//! UNet call or VAE decode.
//!
//! A leaf module: models import it, it imports nothing of the crate but the error type.
//! The check is per thread: the forward passes run their blocks one after the other on the
//! thread that called the pipeline (the tensor maths inside a block may fan out to rayon, but the
//! checks sit between blocks, on the calling thread).

use std::cell::RefCell;
use std::sync::Arc;

/// A cheap, thread-safe "should this request stop now?" (e.g. reading an atomic flag).
pub type CancelCheck = Arc<dyn Fn() -> bool + Send + Sync>;

thread_local! {
    static CURRENT: RefCell<Option<CancelCheck>> = const { RefCell::new(None) };
}

/// The message of the candle error [`checkpoint`] returns; [`crate::pipeline`] turns any error
/// raised while the check answers true into [`crate::DiffusionError::Cancelled`].
pub const CANCELLED_MESSAGE: &str = "bevy_diffusion: cancelled";

/// Runs `f` with `check` installed as this thread's cancel check (`None` = none), restoring the
/// previous one afterwards (also when `f` panics).
pub fn with_cancel_check<T>(check: Option<CancelCheck>, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<CancelCheck>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            CURRENT.with(|c| *c.borrow_mut() = previous);
        }
    }
    let previous = CURRENT.with(|c| std::mem::replace(&mut *c.borrow_mut(), check));
    let _restore = Restore(previous);
    f()
}

/// True when this thread's cancel check (if any) says stop.
pub fn is_cancelled() -> bool {
    CURRENT.with(|c| c.borrow().as_ref().is_some_and(|check| check()))
}

/// Returns an error (message [`CANCELLED_MESSAGE`]) when this thread's request was cancelled;
/// models call it between blocks. Costs one thread-local read and one call of the check.
pub fn checkpoint() -> candle_core::Result<()> {
    if is_cancelled() {
        Err(candle_core::Error::Msg(CANCELLED_MESSAGE.into()))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn the_check_is_scoped_to_the_thread_and_the_call() {
        assert!(checkpoint().is_ok(), "no check installed: never cancelled");
        let flag = Arc::new(AtomicBool::new(false));
        let f = flag.clone();
        let check: CancelCheck = Arc::new(move || f.load(Ordering::Relaxed));
        with_cancel_check(Some(check), || {
            assert!(checkpoint().is_ok());
            flag.store(true, Ordering::Relaxed);
            let e = checkpoint().unwrap_err().to_string();
            assert!(e.contains(CANCELLED_MESSAGE), "{e}");
            // Another thread does not see this thread's check.
            std::thread::spawn(|| assert!(!is_cancelled()))
                .join()
                .unwrap();
        });
        assert!(!is_cancelled(), "restored after the call");
    }
}
