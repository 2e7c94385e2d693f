//! The in-process doorbell of the embedded default: a tokio channel from the api (and the
//! worker's retry timers) to the worker in the same process. Rings still in the channel when the
//! process dies are lost with it; the next process's reconciler rings those jobs from the ledger.

use super::{DispatchError, Doorbell, Ring, RingStream};
use crate::job::JobId;
use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::mpsc;

#[derive(Clone)]
pub struct InProcessDoorbell {
    tx: mpsc::UnboundedSender<JobId>,
}

pub fn in_process() -> (InProcessDoorbell, RingStream) {
    let (tx, mut rx) = mpsc::unbounded_channel::<JobId>();
    let rings = futures::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|job| job.map(|job| Ok(Ring { job, receipt: None })))
    })
    .boxed();
    (InProcessDoorbell { tx }, rings)
}

#[async_trait]
impl Doorbell for InProcessDoorbell {
    async fn ring(&self, job: JobId) -> Result<(), DispatchError> {
        self.tx
            .send(job)
            .map_err(|_| DispatchError::Unavailable("the in-process worker has stopped".into()))
    }
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
