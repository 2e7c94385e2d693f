//! The reconciler keeps invariant 1: the ledger is the truth, the doorbell only a hint. Each pass
//! rescues `running` jobs whose lease expired (their worker died or hung) and rings `queued` jobs
//! that are due but have not been rung for a while (a ring lost with a dead process, a retry whose
//! timer died, a crash between commit and ring). Every worker process runs one; passes are
//! idempotent, so several at once only ring a job twice, and the claim's compare-and-set makes a
//! second ring harmless. It also fails queued jobs past their own limits (`cancel_after`,
//! `max_queue_wait`): a job that waits cannot notice that by itself.

use kiln_core::dispatch::Doorbell;
use kiln_core::ledger::Rescue;
use kiln_core::{Ledger, LedgerError};
use std::sync::Arc;
use std::time::Duration;

/// Rows handled per pass; a backlog larger than this is worked off over consecutive passes.
const BATCH: u32 = 500;

pub struct Reconciler {
    ledger: Arc<dyn Ledger>,
    doorbell: Arc<dyn Doorbell>,
    max_rescues: u32,
    /// A queued job that was rung longer ago than this is rung again.
    ring_stale_after: Duration,
    /// The doorbell's epoch at the last pass; a change means rings may have been lost.
    last_epoch: tokio::sync::Mutex<Option<String>>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    pub rescued: usize,
    pub gave_up: usize,
    pub rung: usize,
    pub overdue: usize,
}

impl Reconciler {
    pub fn new(
        ledger: Arc<dyn Ledger>,
        doorbell: Arc<dyn Doorbell>,
        max_rescues: u32,
        ring_stale_after: Duration,
    ) -> Self {
        Reconciler {
            ledger,
            doorbell,
            max_rescues,
            ring_stale_after,
            last_epoch: tokio::sync::Mutex::new(None),
        }
    }

    /// Whether the doorbell restarted (and may have lost rings) since the last pass.
    async fn queue_restarted(&self) -> bool {
        let epoch = self.doorbell.epoch().await;
        let mut last = self.last_epoch.lock().await;
        let restarted = matches!((&*last, &epoch), (Some(before), Some(now)) if before != now);
        if epoch.is_some() {
            *last = epoch;
        }
        if restarted {
            tracing::warn!("the dispatch queue restarted: ringing every due job again");
        }
        restarted
    }

    /// One pass. `ring_everything_due` is set on a process's first pass: rings held only in a
    /// previous process's memory are gone, so every due job is rung once.
    pub async fn pass(&self, ring_everything_due: bool) -> Result<PassReport, LedgerError> {
        let mut report = PassReport::default();
        for rescue in self
            .ledger
            .rescue_expired_leases(self.max_rescues, BATCH)
            .await?
        {
            match rescue {
                Rescue::Requeued(id, lane) => {
                    tracing::warn!(job = %id, "rescued a job whose worker was lost");
                    report.rescued += 1;
                    self.ring(id, lane).await?;
                }
                Rescue::GaveUp(id) => {
                    tracing::warn!(job = %id, "job failed: rescue limit reached");
                    report.gave_up += 1;
                }
            }
        }
        // Jobs past their own limits fail before anything rings them.
        for (id, code) in self
            .ledger
            .fail_overdue(kiln_core::time::now(), BATCH)
            .await?
        {
            tracing::info!(job = %id, code, "job failed: past its limit");
            report.overdue += 1;
        }
        // Pipelines whose step ended while no executor was there to move them on.
        for pipeline in self.ledger.active_pipelines(BATCH).await? {
            crate::executor::advance_pipeline(
                self.ledger.as_ref(),
                self.doorbell.as_ref(),
                pipeline,
            )
            .await?;
        }
        let ring_everything_due = self.queue_restarted().await || ring_everything_due;
        let rung_before = if ring_everything_due {
            kiln_core::time::now() + chrono::Duration::seconds(1)
        } else {
            kiln_core::time::now()
                - chrono::Duration::from_std(self.ring_stale_after).unwrap_or_default()
        };
        // Held jobs whose tenants' windows have room (a queued job ended without a claim),
        // fairly across tenants; then every admitted job that is due and was never rung, or
        // was rung long ago.
        for (id, lane) in self.ledger.admit_held(BATCH).await? {
            self.ring(id, lane).await?;
            report.rung += 1;
        }
        for (id, lane) in self.ledger.due_unrung(rung_before, BATCH).await? {
            self.ring(id, lane).await?;
            report.rung += 1;
        }
        Ok(report)
    }

    async fn ring(
        &self,
        id: kiln_core::JobId,
        lane: kiln_core::dispatch::Lane,
    ) -> Result<(), LedgerError> {
        // A ring that fails leaves the job due and unrung; the next pass tries again.
        if kiln_core::dispatch::ring_or_mark_unrung(
            self.doorbell.as_ref(),
            self.ledger.as_ref(),
            id,
            lane,
        )
        .await
        {
            self.ledger.mark_rung(id).await?;
        }
        Ok(())
    }
}
