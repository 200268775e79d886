//! The async runtime the daemon runs on, and how heavy synchronous steps
//! share it.
//!
//! The proxy's event loop runs on `--worker-threads` threads, one by
//! default: with a single worker no request wakes another thread, which is
//! most of the CPU a request costs beyond the bare relay (see the README's
//! forwarding-cost section). A step that computes for milliseconds on the
//! event loop (an offline list of thousands of objects, a whole-body filter
//! of a large list) would stall every other client meanwhile, so it runs in
//! [`heavy`], which hands the worker's other tasks to another thread first.

use std::io;

/// The daemon's runtime: multi-threaded even with one worker, because
/// `block_in_place` (what [`heavy`] uses) needs that flavour.
pub fn build(worker_threads: usize) -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads.max(1))
        .enable_all()
        .build()
}

/// Runs a CPU-heavy synchronous step without stalling the other tasks of
/// this worker: on the daemon's multi-threaded runtime they move to another
/// thread while `f` runs. Elsewhere (a current-thread runtime in tests, or
/// no runtime) `f` simply runs here.
pub fn heavy<R>(f: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heavy_step_does_not_stall_the_only_worker() {
        let rt = build(1).unwrap();
        rt.block_on(async {
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            // Both tasks on the only worker (block_on's own future runs on
            // another thread): the other task must keep running while the
            // heavy step blocks, since it is the one that ends it.
            let other = tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                tx.send(()).unwrap();
            });
            let step = tokio::spawn(async move {
                heavy(|| rx.recv_timeout(std::time::Duration::from_secs(2)))
            });
            assert!(
                step.await.unwrap().is_ok(),
                "the other task was stalled by the heavy step"
            );
            other.await.unwrap();
        });
    }

    #[tokio::test]
    async fn on_a_current_thread_runtime_it_runs_inline() {
        assert_eq!(heavy(|| 7), 7);
    }
}
