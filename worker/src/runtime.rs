//! Wiring of a worker process's parts onto apalis: the apalis worker pulls rung job ids from the
//! doorbell backend with a concurrency limit and hands each to the executor; beside it run the
//! reconciler and janitor loops. Shutdown is two-staged: the soft stop makes apalis stop pulling
//! and lets in-flight jobs finish; after the grace period the hard stop makes the executor release
//! what is still running, so no job waits for a lease to expire because its worker left politely.

use crate::deliverer::DelivererWake;
use crate::executor::{ExecResult, Executor, ExecutorConfig, Providers};
use crate::janitor::Janitor;
use crate::reconciler::Reconciler;
use apalis_core::task::data::Data;
use apalis_core::worker::builder::WorkerBuilder;
use kiln_core::catalog::Catalog;
use kiln_core::dispatch::{Doorbell, FreeSlots, Ring, RingStream};
use kiln_core::Ledger;
use kiln_storage::ObjectStore;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::limit::ConcurrencyLimitLayer;

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub concurrency: usize,
    pub shutdown_timeout: Duration,
    pub reconcile_interval: Duration,
    pub ring_stale_after: Duration,
    pub max_rescues: u32,
    pub janitor_interval: Duration,
    /// No other process rings this worker's doorbell, so every reconciler pass rings every due
    /// job from the ledger (the ledger doubles as the queue).
    pub poll_ledger: bool,
    /// Who holds this worker's identity slot in the ledger; renewed while the worker runs.
    pub slot_holder: String,
}

pub struct WorkerRuntime {
    pub ledger: Arc<dyn Ledger>,
    pub doorbell: Arc<dyn Doorbell>,
    pub store: Arc<dyn ObjectStore>,
    pub providers: Providers,
    pub catalog: Catalog,
    pub executor: ExecutorConfig,
    pub settings: WorkerSettings,
    /// Wakes this process's deliverer, if it runs one (`Executor::waking`).
    pub wake_deliverer: Option<DelivererWake>,
    /// The slots of `settings.concurrency`, each held while a ring is handled: what the
    /// doorbell's consumer reads ahead by (`ConsumerSettings::free_slots`).
    pub free_slots: Arc<FreeSlots>,
}

pub struct WorkerHandle {
    slot_stop: CancellationToken,
    ledger: Arc<dyn Ledger>,
    identity: String,
    slot_holder: String,
    soft_stop: CancellationToken,
    hard_stop: CancellationToken,
    worker: JoinHandle<()>,
    loops: Vec<JoinHandle<()>>,
    shutdown_timeout: Duration,
}

/// Handles one ring: claim, acknowledge, run. The ring is acknowledged once the ledger has
/// decided it (the claim won or lost): from then on the job's lease, not the queue, carries it.
/// If the ledger cannot be reached, the ring stays pending and is delivered again.
async fn on_ring(ring: Ring, executor: Data<Arc<Executor>>) -> ExecResult {
    // Every line logged while handling the ring carries the job's id (a field of this span, in
    // text and JSON logs alike).
    let span = tracing::info_span!("job", job_id = %ring.job);
    let result = tracing::Instrument::instrument(async {
        let claim = executor.claim(ring.job).await?;
        if let Some(receipt) = &ring.receipt {
            if let Err(e) = executor.doorbell.ack(receipt).await {
                tracing::warn!(job = %ring.job, error = %e, "could not acknowledge a ring; it may be delivered again");
            }
        }
        match claim {
            Some(claim) => executor.run(claim).await,
            None => Ok(()),
        }
    }, span)
    .await;
    if let Err(e) = &result {
        // The job stays as the ledger has it; lease expiry and re-ringing carry it on.
        tracing::error!(job = %ring.job, error = %e, "handling a ring failed on the ledger");
    }
    result
}

/// Holds one of the worker's slots (`FreeSlots`) from the moment a ring is handed to its
/// handling until that handling ends. Counted at the hand-over, not when the handling first
/// runs: apalis takes the next ring before it polls the last one's handling, and the
/// consumer's next read must already count every ring it handed out.
#[derive(Clone)]
struct SlotLayer(Arc<FreeSlots>);

impl<S> tower::Layer<S> for SlotLayer {
    type Service = HoldsSlot<S>;

    fn layer(&self, inner: S) -> HoldsSlot<S> {
        HoldsSlot {
            inner,
            slots: self.0.clone(),
        }
    }
}

#[derive(Clone)]
struct HoldsSlot<S> {
    inner: S,
    slots: Arc<FreeSlots>,
}

impl<S, R> tower::Service<R> for HoldsSlot<S>
where
    S: tower::Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, ring: R) -> Self::Future {
        let held = self.slots.hold();
        let handling = self.inner.call(ring);
        Box::pin(async move {
            let done = handling.await;
            drop(held);
            done
        })
    }
}

impl WorkerRuntime {
    pub fn start(self, rings: RingStream) -> WorkerHandle {
        let soft_stop = CancellationToken::new();
        let hard_stop = CancellationToken::new();
        let identity = self.executor.identity.clone();
        let executor_lease = self.executor.lease;
        let executor = Arc::new(
            Executor::new(
                self.ledger.clone(),
                self.doorbell.clone(),
                self.store.clone(),
                self.providers,
                self.catalog,
                self.executor,
                hard_stop.clone(),
            )
            .waking(self.wake_deliverer),
        );
        let stopper = executor.clone();
        let worker = WorkerBuilder::new(identity.as_str())
            .backend(rings)
            .data(executor)
            .layer(ConcurrencyLimitLayer::new(self.settings.concurrency.max(1)))
            .layer(SlotLayer(self.free_slots.clone()))
            .build(on_ring);
        let stop = soft_stop.clone();
        let worker = tokio::spawn(async move {
            let signal = async move {
                stop.cancelled().await;
                Ok::<(), std::io::Error>(())
            };
            if let Err(e) = worker.run_until(signal).await {
                tracing::error!(error = %e, "the worker stopped with an error");
            }
        });

        let reconciler = Reconciler::new(
            self.ledger.clone(),
            self.doorbell.clone(),
            self.settings.max_rescues,
            self.settings.ring_stale_after,
        );
        let janitor = Janitor {
            ledger: self.ledger.clone(),
            store: self.store.clone(),
        };
        let slot_stop = CancellationToken::new();
        let slot = (
            self.ledger.clone(),
            identity.clone(),
            self.settings.slot_holder.clone(),
            executor_lease,
        );
        let loops = vec![
            spawn_loop(
                "identity",
                executor_lease / 3,
                // The identity is held until the last job is done or released, not just until
                // claiming stops: another process must not take it while jobs still run under it.
                slot_stop.clone(),
                move || {
                    let (ledger, identity, holder, lease) = slot.clone();
                    async move {
                        if !ledger.renew_worker_slot(&identity, &holder, lease).await? {
                            tracing::error!(identity, "this worker's identity slot was taken over; another process now uses it");
                        }
                        Ok(())
                    }
                },
            ),
            spawn_loop(
                "reconciler",
                self.settings.reconcile_interval,
                soft_stop.clone(),
                {
                    let reconciler = Arc::new(reconciler);
                    let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
                    let poll_ledger = self.settings.poll_ledger;
                    move || {
                        let reconciler = reconciler.clone();
                        let first = first.swap(false, std::sync::atomic::Ordering::Relaxed);
                        async move { reconciler.pass(first || poll_ledger).await.map(|_| ()) }
                    }
                },
            ),
            spawn_loop(
                "upstream stops",
                self.settings.reconcile_interval,
                soft_stop.clone(),
                move || {
                    let stopper = stopper.clone();
                    async move { stopper.stop_abandoned_upstreams().await.map(|_| ()) }
                },
            ),
            spawn_loop(
                "janitor",
                self.settings.janitor_interval,
                soft_stop.clone(),
                {
                    let janitor = Arc::new(janitor);
                    move || {
                        let janitor = janitor.clone();
                        async move { janitor.pass().await.map(|_| ()) }
                    }
                },
            ),
        ];
        WorkerHandle {
            slot_stop,
            ledger: self.ledger.clone(),
            identity,
            slot_holder: self.settings.slot_holder.clone(),
            soft_stop,
            hard_stop,
            worker,
            loops,
            shutdown_timeout: self.settings.shutdown_timeout,
        }
    }
}

fn spawn_loop<F, Fut>(
    name: &'static str,
    every: Duration,
    stop: CancellationToken,
    mut pass: F,
) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), kiln_core::LedgerError>> + Send,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = pass().await {
                tracing::warn!(loop_name = name, error = %e, "pass failed; retrying next tick");
            }
        }
    })
}

impl WorkerHandle {
    /// Stops claiming, waits up to the grace period for in-flight jobs, then releases the rest.
    pub async fn shutdown(self) {
        self.soft_stop.cancel();
        let hard_stop = self.hard_stop.clone();
        let grace = self.shutdown_timeout;
        let timer = tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            tracing::warn!("shutdown grace period over: releasing running jobs");
            hard_stop.cancel();
        });
        // Released jobs return at once; past grace plus this margin something is wedged (a
        // stuck ledger call, say) and waiting longer helps nobody: leases expire by themselves.
        let margin = Duration::from_secs(10);
        let mut worker = self.worker;
        if tokio::time::timeout(grace + margin, &mut worker)
            .await
            .is_err()
        {
            tracing::error!(
                "the worker did not stop in time; abandoning its remaining jobs to lease expiry"
            );
            worker.abort();
        }
        timer.abort();
        self.slot_stop.cancel();
        for l in self.loops {
            let _ = l.await;
        }
        // Free the identity at once, so a restart gets the same one back.
        if let Err(e) = self
            .ledger
            .release_worker_slot(&self.identity, &self.slot_holder)
            .await
        {
            tracing::warn!(error = %e, "could not release the worker's identity slot; it expires by itself");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer, Service};

    /// A ring's slot is held from the call that hands it over, before its handling first runs
    /// (apalis takes the next ring first), until that handling ends.
    #[tokio::test]
    async fn a_slot_is_held_from_the_hand_over_until_the_handling_ends() {
        let slots = FreeSlots::new(2);
        let (finish, finished) = tokio::sync::oneshot::channel::<()>();
        let finished = std::sync::Mutex::new(Some(finished));
        let handling = tower::service_fn(move |_ring: u32| {
            let finished = finished.lock().unwrap().take();
            async move {
                if let Some(finished) = finished {
                    finished.await.ok();
                }
                Ok::<_, std::convert::Infallible>(())
            }
        });
        let mut service = SlotLayer(slots.clone()).layer(handling);
        std::future::poll_fn(|cx| service.poll_ready(cx))
            .await
            .unwrap();
        let handled = service.call(1);
        assert_eq!(slots.free(), 1, "held at the hand-over, not yet run");
        let handled = tokio::spawn(handled);
        finish.send(()).unwrap();
        handled.await.unwrap().unwrap();
        assert_eq!(slots.free(), 2, "given back when the handling ends");
    }
}
