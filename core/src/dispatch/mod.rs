//! The dispatch doorbell (invariant 1: the ledger is the truth, the queue is a doorbell). A ring
//! carries a job id and nothing else; a lost ring only delays a job, because the reconciler rings
//! every due `queued` job that has not been rung for a while, and a duplicated ring is harmless,
//! because a worker must win the ledger's compare-and-set claim before it runs anything.
//!
//! apalis is the worker runtime in every mode. Each doorbell hands its worker a stream of
//! `Ring`s, and a boxed stream is an apalis backend, so the worker code is the same whether the
//! rings come from a channel in the same process (`in_process`) or from Redis Streams consumer
//! groups shared by many processes (`redis`). A ring from Redis carries a receipt that the worker
//! acknowledges once the ledger has decided the ring (the claim won or lost); until then Redis
//! keeps it pending, and a dead consumer's pending rings are reclaimed by the others.

mod in_process;
pub mod redis;

pub use in_process::{in_process, InProcessDoorbell, LedgerPolling};

use crate::job::JobId;
use async_trait::async_trait;
use futures::stream::BoxStream;
use std::convert::Infallible;

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("the dispatch queue is unavailable: {0}")]
    Unavailable(String),
}

/// Which lane a ring travels in: a job's `priority`. Every read takes from every lane, highest
/// first, so a busy high lane slows the low one but never stops it.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
#[schema(as = Priority, description = "A job's dispatch lane: high, normal (the default) or low.")]
pub enum Lane {
    High,
    #[default]
    Normal,
    Low,
}

impl Lane {
    pub const ALL: [Lane; 3] = [Lane::High, Lane::Normal, Lane::Low];

    pub fn as_str(self) -> &'static str {
        match self {
            Lane::High => "high",
            Lane::Normal => "normal",
            Lane::Low => "low",
        }
    }
}

impl std::str::FromStr for Lane {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Lane::ALL
            .into_iter()
            .find(|l| l.as_str() == s)
            .ok_or_else(|| format!("'{s}' is not a priority (high, normal, low)"))
    }
}

/// Proof of delivery of a ring from a queue that wants an acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub lane: Lane,
    pub message_id: String,
}

/// One ring, as a worker receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ring {
    pub job: JobId,
    pub receipt: Option<Receipt>,
}

/// How many more rings a worker can start now: its concurrency less the rings it is handling.
/// A consumer that reads ahead reads no more than this (`redis::ConsumerSettings::free_slots`),
/// so no ring it takes waits in its buffer behind a long job while another worker idles, and a
/// worker with room takes what is waiting in one read instead of one read per ring.
#[derive(Debug)]
pub struct FreeSlots {
    limit: usize,
    busy: std::sync::atomic::AtomicUsize,
}

impl FreeSlots {
    pub fn new(limit: usize) -> std::sync::Arc<FreeSlots> {
        std::sync::Arc::new(FreeSlots {
            limit,
            busy: Default::default(),
        })
    }

    /// The slots not held now.
    pub fn free(&self) -> usize {
        self.limit
            .saturating_sub(self.busy.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Holds a slot for as long as the returned guard lives (a ring's handling).
    pub fn hold(self: &std::sync::Arc<Self>) -> SlotHeld {
        self.busy.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        SlotHeld(self.clone())
    }
}

/// One slot of `FreeSlots`, held until dropped.
pub struct SlotHeld(std::sync::Arc<FreeSlots>);

impl Drop for SlotHeld {
    fn drop(&mut self) {
        self.0
            .busy
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The rings a worker consumes; as a boxed stream it is an apalis backend. Delivery faults are
/// handled inside (logged, reconnected), so the stream itself never fails.
pub type RingStream = BoxStream<'static, Result<Ring, Infallible>>;

/// Rings `job`, or, where the ring fails, marks it unrung so the reconciler's next pass rings
/// it. The one policy for everyone who rings a committed job (a submit, a pipeline's next steps,
/// a claim's admission of a held job, a retry, the reconciler): the job is committed whatever
/// happens here, so neither failure is the caller's; both are logged, and a job whose mark
/// fails too is still rung by the reconciler once its ring is stale (`ring_stale_after`).
/// Returns whether it rang.
pub async fn ring_or_mark_unrung(
    doorbell: &dyn Doorbell,
    ledger: &dyn crate::Ledger,
    job: JobId,
    lane: Lane,
) -> bool {
    let Err(e) = doorbell.ring(job, lane).await else {
        return true;
    };
    tracing::warn!(job = %job, error = %e, "could not ring the doorbell; the reconciler will");
    if let Err(e) = ledger.mark_unrung(job).await {
        tracing::warn!(job = %job, error = %e, "could not mark the job unrung; it is rung once ring_stale_after passes");
    }
    false
}

#[async_trait]
pub trait Doorbell: Send + Sync + 'static {
    /// Rings for `job`: the api after committing it, a worker after scheduling a retry, the
    /// reconciler for what nobody took.
    async fn ring(&self, job: JobId, lane: Lane) -> Result<(), DispatchError>;

    /// Acknowledges a delivered ring; it will not be delivered again.
    async fn ack(&self, _receipt: &Receipt) -> Result<(), DispatchError> {
        Ok(())
    }

    /// Identifies the queue's current life. When it changes (a Redis restart without
    /// persistence, say), rings may have been lost, and the reconciler rings every due job.
    async fn epoch(&self) -> Option<String> {
        None
    }
}
