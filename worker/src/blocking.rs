//! CPU-bound generator work that an attempt can stop. Dropping a future does not stop the
//! thread a `spawn_blocking` closure runs on, so a canceled or timed-out job would keep burning
//! CPU and memory past the worker's concurrency. Instead each attempt owns a `BlockingWork`:
//! its closures receive a `Stop` they check between frames or bands of rows, and the executor,
//! once the attempt has ended for any reason, raises the stop and waits until every closure
//! has returned before it frees the attempt's slot. So work counts against `concurrency` until
//! it has really stopped, and stopping takes one frame or band, well under a second.

use crate::provider::ProviderError;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The flag a blocking closure checks.
#[derive(Clone, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    /// Asks the work to stop at its next check.
    pub fn raise(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// `Err` once the attempt has ended: the closure returns it and its partial work is dropped.
    pub fn check(&self) -> Result<(), ProviderError> {
        if self.0.load(Ordering::Relaxed) {
            Err(ProviderError::fail(
                "canceled",
                "the attempt ended before its work finished",
            ))
        } else {
            Ok(())
        }
    }
}

/// The blocking work of one attempt.
pub struct BlockingWork {
    stop: Stop,
    running: watch::Sender<usize>,
}

impl Default for BlockingWork {
    fn default() -> Self {
        BlockingWork {
            stop: Stop::default(),
            running: watch::channel(0).0,
        }
    }
}

/// Counts a closure as running until it returns, even if it panics.
struct Running(watch::Sender<usize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

impl BlockingWork {
    /// Runs `work` on the blocking pool with this attempt's stop flag.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Stop) -> Result<T, ProviderError> + Send + 'static,
    ) -> Result<T, ProviderError> {
        let stop = self.stop.clone();
        stop.check()?;
        self.running.send_modify(|n| *n += 1);
        let running = Running(self.running.clone());
        tokio::task::spawn_blocking(move || {
            let _running = running;
            work(&stop)
        })
        .await
        .unwrap_or_else(|_| {
            Err(ProviderError::retry(
                "internal_error",
                "the generator panicked",
            ))
        })
    }

    /// Tells every closure to stop and waits until all have returned, up to `patience` (a
    /// closure that never checks its flag is logged rather than held for ever).
    pub async fn stop_and_wait(&self, patience: Duration) {
        self.stop.raise();
        let mut running = self.running.subscribe();
        let stopped = running.wait_for(|n| *n == 0);
        if tokio::time::timeout(patience, stopped).await.is_err() {
            tracing::warn!(
                "an attempt's blocking work did not stop within {:?}",
                patience
            );
        }
    }

    /// How many closures are running.
    pub fn running(&self) -> usize {
        *self.running.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stop_and_wait_returns_once_the_closure_has_seen_the_stop() {
        let work = Arc::new(BlockingWork::default());
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let runner = work.clone();
        let handle = tokio::spawn(async move {
            runner
                .run(move |stop| -> Result<(), ProviderError> {
                    started_tx.send(()).unwrap();
                    loop {
                        stop.check()?;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                })
                .await
        });
        started_rx.await.unwrap();
        assert_eq!(work.running(), 1);
        // The caller gave up on the future: the closure runs on until it is told to stop.
        handle.abort();
        work.stop_and_wait(Duration::from_secs(10)).await;
        assert_eq!(work.running(), 0, "stopped, not abandoned");
        // Work asked for after the stop does not start.
        assert!(work.run(|_| Ok(())).await.is_err());
    }
}
