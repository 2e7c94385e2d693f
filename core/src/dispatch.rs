//! The dispatch doorbell (invariant 1: the ledger is the truth, the queue is a doorbell). A ring
//! carries a job id and nothing else; a lost ring only delays a job, because the reconciler rings
//! every due `queued` job that has not been rung for a while, and a duplicated ring is harmless,
//! because a worker must win the ledger's compare-and-set claim before it runs anything.
//!
//! apalis is the worker runtime in every mode, so each doorbell is also an apalis `Backend`. The
//! in-process doorbell of the embedded default is a tokio channel: rings made before the process
//! dies are lost with it, and the next process's reconciler rings those jobs again from the ledger.

use crate::job::JobId;
use apalis_core::backend::finalize::Ephemeral;
use apalis_core::backend::{Backend, BackendConfig};
use apalis_core::layers::Identity;
use apalis_core::task::task_id::RandomId;
use apalis_core::task::Task;
use apalis_core::worker::context::WorkerContext;
use async_trait::async_trait;
use std::convert::Infallible;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("the dispatch queue is unavailable: {0}")]
    Unavailable(String),
}

/// The producer side: the api rings after committing a job; workers ring after scheduling a
/// retry; the reconciler rings what nobody took.
#[async_trait]
pub trait Doorbell: Send + Sync + 'static {
    async fn ring(&self, job: JobId) -> Result<(), DispatchError>;
}

/// The doorbell of an api process that shares no queue with its workers (the embedded default
/// split into `kiln api` and `kiln worker`): ringing does nothing, because such workers find due
/// jobs by polling the ledger on every reconciler pass.
pub struct LedgerPolling;

#[async_trait]
impl Doorbell for LedgerPolling {
    async fn ring(&self, _job: JobId) -> Result<(), DispatchError> {
        Ok(())
    }
}

/// Rings within one process.
#[derive(Clone)]
pub struct InProcessDoorbell {
    tx: mpsc::UnboundedSender<JobId>,
}

/// The consumer side of the in-process doorbell, as an apalis backend.
pub struct InProcessBackend {
    rx: mpsc::UnboundedReceiver<JobId>,
}

pub fn in_process() -> (InProcessDoorbell, InProcessBackend) {
    let (tx, rx) = mpsc::unbounded_channel();
    (InProcessDoorbell { tx }, InProcessBackend { rx })
}

#[async_trait]
impl Doorbell for InProcessDoorbell {
    async fn ring(&self, job: JobId) -> Result<(), DispatchError> {
        self.tx
            .send(job)
            .map_err(|_| DispatchError::Unavailable("the in-process worker has stopped".into()))
    }
}

impl Backend for InProcessBackend {
    type Task = Task<JobId>;
    type Error = Infallible;

    fn poll_ready(
        &mut self,
        _: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Option<Result<Task<JobId>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|id| id.map(|id| Ok(Task::new(id))))
    }

    fn poll_close(
        &mut self,
        _: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Result<(), Infallible>> {
        // Rings still buffered are dropped on purpose: those jobs are `queued` in the ledger and
        // the next reconciler pass rings them again.
        self.rx.close();
        Poll::Ready(Ok(()))
    }
}

impl BackendConfig for InProcessBackend {
    type Args = JobId;
    type Id = RandomId;
    type Kind = Ephemeral;
    type Config = ();
    type Layer = Identity;

    fn config(&self) -> &() {
        &()
    }

    fn middleware(&mut self, _: &mut WorkerContext) -> Identity {
        Identity::new()
    }
}
