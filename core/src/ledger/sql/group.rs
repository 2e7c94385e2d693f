//! Group commit: concurrent inserts, claims and successes of different jobs share one
//! transaction, and the plain inserts, the claims and the successes of a group share their
//! statements (`insert_batch_in`, `claim_batch_in`, `succeed_batch_in`), so a busy ledger pays
//! one commit and a few statements for many jobs. A group that fails is written again write by
//! write, so one bad write cannot fail its neighbours; transitions are counted only after a
//! commit (`Tx::commit`), so a group written twice counts once.
//!
//! On a SQLite file a group is written by the embedded writer (`native`) on its own thread,
//! in one hand-off, while it holds the write turn; only the inserts that are not `batchable`
//! (rare: a key's limits, an idempotency key) go through sqlx beside it.

use super::*;

/// Most writes one grouped transaction carries.
pub(super) const GROUP_MAX: usize = 64;

/// A per-job write that may share its transaction with other jobs' writes (`GroupCommit`).
/// An insert and a success carry the time they were asked at (an insert's answer shows it);
/// a claim is timed as it is written.
pub(super) enum GroupWrite {
    Insert {
        job: Box<NewJob>,
        at: i64,
    },
    /// Timed when it is written (its lease runs from then, not from when it was queued).
    Claim {
        id: JobId,
        worker: String,
        route: RouteChooser,
        lease_for: Duration,
    },
    Succeed {
        lease: Lease,
        outputs: Vec<NewOutput>,
        at: i64,
        /// Whether its delivery may be written claimed for this process's deliverer.
        hand_over: bool,
    },
}

impl GroupWrite {
    /// The row each write locks first: a group's writes are applied in this order, so two
    /// groups in flight lock shared rows (an API key's, for the active-job limit) in the same
    /// order and cannot deadlock on them.
    pub(super) fn lock_order(&self) -> (u8, String) {
        match self {
            GroupWrite::Insert { job, .. } => {
                (0, job.key_id.clone().map(|k| k.0).unwrap_or_default())
            }
            GroupWrite::Claim { id, .. } => (1, id.to_string()),
            GroupWrite::Succeed { lease, .. } => (1, lease.job_id.to_string()),
        }
    }
}

pub(super) enum GroupWritten {
    /// Admitted to the queue (or held); `Err` with the key's limit that refused it.
    Inserted(std::result::Result<bool, LedgerError>),
    Claimed(Option<Box<Claimed>>),
    /// Whether its lease won, and its delivery if it was written claimed for this process.
    Succeeded(bool, Vec<crate::ledger::DueDelivery>),
}

pub(super) type Pending = (GroupWrite, Reply);

/// Group commit for the writes every job makes (insert, claim, success): concurrent callers'
/// writes go into one transaction, so a busy ledger pays one `BEGIN`/`COMMIT` (and one WAL
/// flush) per group instead of per write. A group is whatever is waiting when a transaction
/// slot frees, so a lone write waits for nothing, and under load groups grow by themselves.
/// If a group fails (one write's statement errs, or the database picks it as a deadlock's
/// victim), nothing of it was written, and each of its writes is written again alone, so one
/// write's error is its own.
pub(super) struct GroupCommit {
    queue: tokio::sync::mpsc::UnboundedSender<Pending>,
}

impl GroupCommit {
    /// `slots`: groups in flight at once (SQLite writes one at a time anyway).
    pub(super) fn start(
        writer: Writer,
        dialect: Dialect,
        window: Arc<AtomicU32>,
        slots: usize,
        native: Option<super::native::NativeWriter>,
    ) -> Self {
        let (queue, mut waiting) = tokio::sync::mpsc::unbounded_channel::<Pending>();
        tokio::spawn(async move {
            let slots = Arc::new(tokio::sync::Semaphore::new(slots));
            while let Some(first) = waiting.recv().await {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let group = crate::batch::take_waiting(first, &mut waiting, GROUP_MAX);
                let (writer, window, native) = (writer.clone(), window.clone(), native.clone());
                tokio::spawn(async move {
                    let mut through_sqlx = SqlxGroups {
                        writer: &writer,
                        dialect,
                        window: &window,
                    };
                    match native {
                        Some(native) => {
                            let (alone, together): (Vec<_>, Vec<_>) =
                                group.into_iter().partition(|(write, _)| {
                                    matches!(write, GroupWrite::Insert { job, .. } if !batchable(job))
                                });
                            if !alone.is_empty() {
                                write_group(&mut through_sqlx, alone).await;
                            }
                            if !together.is_empty() {
                                match writer.take_turn().await {
                                    Ok(turn) => native.write(together, turn, window.clone()).await,
                                    Err(e) => {
                                        tracing::warn!(error = %e, "a group of ledger writes waited too long for its turn");
                                        // Each writer hears that the ledger is unavailable.
                                        for (_, reply) in together {
                                            let _ =
                                                reply.send(Err(sqlx::Error::PoolTimedOut.into()));
                                        }
                                    }
                                }
                            }
                        }
                        None => write_group(&mut through_sqlx, group).await,
                    }
                    drop(slot);
                });
            }
        });
        GroupCommit { queue }
    }

    pub(super) async fn write(&self, write: GroupWrite) -> Result<GroupWritten> {
        let (reply, written) = tokio::sync::oneshot::channel();
        self.queue
            .send((write, reply))
            .map_err(|_| LedgerError::WriterStopped)?;
        written.await.map_err(|_| LedgerError::WriterStopped)?
    }
}

/// Where a group's transactions are written: sqlx (`SqlxGroups`) or the embedded writer.
pub(super) trait GroupTarget {
    /// Writes `writes` in one transaction (`write_in`), answering in their order.
    fn write_in_one(
        &mut self,
        writes: &[&GroupWrite],
    ) -> impl std::future::Future<Output = Result<Vec<GroupWritten>>> + Send;
}

/// A group written through sqlx, each transaction begun on the writer.
pub(super) struct SqlxGroups<'a> {
    pub(super) writer: &'a Writer,
    pub(super) dialect: Dialect,
    pub(super) window: &'a AtomicU32,
}

impl GroupTarget for SqlxGroups<'_> {
    async fn write_in_one(&mut self, writes: &[&GroupWrite]) -> Result<Vec<GroupWritten>> {
        let mut tx = begin_write(self.writer, self.dialect, self.window).await?;
        match write_in(&mut tx, writes).await {
            Ok(written) => {
                tx.commit().await?;
                Ok(written)
            }
            Err(e) => {
                // Rolled back before the turn is given up, so the next writer finds the file
                // free (a group that fails is written again at once, write by write).
                let _ = tx.rollback().await;
                Err(e)
            }
        }
    }
}

/// Writes a group: all of it in one transaction, or, if that fails, each write alone.
pub(super) async fn write_group(target: &mut impl GroupTarget, group: Vec<Pending>) {
    for (reply, written) in written_group(target, group).await {
        let _ = reply.send(written);
    }
}

/// A write's answer and where it goes.
pub(super) type Answer = (Reply, Result<GroupWritten>);

pub(super) type Reply = tokio::sync::oneshot::Sender<Result<GroupWritten>>;

/// `write_group` without the answering: each write's answer, for the caller to send.
pub(super) async fn written_group(
    target: &mut impl GroupTarget,
    mut group: Vec<Pending>,
) -> Vec<Answer> {
    // A write whose caller has gone (a worker stopped, a client hung up) is not made: before
    // grouping, dropping the caller dropped its transaction, and a claim nobody holds would
    // leave its job running until the lease ran out.
    group.retain(|(_, reply)| !reply.is_closed());
    if group.len() > 1 {
        group.sort_by_cached_key(|(write, _)| write.lock_order());
        let writes: Vec<&GroupWrite> = group.iter().map(|(w, _)| w).collect();
        match target.write_in_one(&writes).await {
            Ok(written) => {
                return group
                    .into_iter()
                    .zip(written)
                    .map(|((_, reply), written)| (reply, Ok(written)))
                    .collect();
            }
            Err(e) => {
                tracing::debug!(error = %e, writes = group.len(), "a grouped write failed; writing each alone");
            }
        }
    }
    let mut answers = Vec::with_capacity(group.len());
    for (write, reply) in group {
        let written = target.write_in_one(&[&write]).await;
        answers.push((reply, written.map(|mut w| w.remove(0))));
    }
    answers
}

/// Writes `writes` within `tx`: the inserts that check a key's limits or write more than
/// their row one by one (in lock order), the other inserts as one batch (`insert_batch_in`),
/// then the claims a batch per claimer (`claim_batch_in`), then the successes as one batch
/// (`succeed_batch_in`), so a group of any size costs a few statements. Answers in the order
/// of `writes`; the caller commits.
pub(super) async fn write_in<T: WriteTx>(
    tx: &mut T,
    writes: &[&GroupWrite],
) -> Result<Vec<GroupWritten>> {
    let mut written: Vec<Option<GroupWritten>> = writes.iter().map(|_| None).collect();
    // Claims batch by claimer: the same worker, route chooser and lease (one per process).
    type Claimer<'a> = (&'a str, usize, Duration);
    let mut claims: BTreeMap<Claimer, Vec<usize>> = BTreeMap::new();
    let mut successes = Vec::new();
    // Inserts with nothing of their own to check go together, as one statement.
    let mut inserts = Vec::new();
    for (i, write) in writes.iter().enumerate() {
        match write {
            GroupWrite::Insert { job, .. } if batchable(job) => inserts.push(i),
            // A key's limits (active jobs, spend) are answers, not failures: nothing was
            // written when one refuses, so the rest of the group goes on.
            GroupWrite::Insert { job, at } => {
                let inserted = match tx.insert_alone(job, *at).await {
                    Err(e @ (LedgerError::ActiveJobLimit(_) | LedgerError::SpendCap { .. })) => {
                        Err(e)
                    }
                    inserted => Ok(inserted?),
                };
                written[i] = Some(GroupWritten::Inserted(inserted));
            }
            GroupWrite::Claim {
                worker,
                route,
                lease_for,
                ..
            } => {
                let chooser = std::sync::Arc::as_ptr(route) as *const () as usize;
                claims
                    .entry((worker.as_str(), chooser, *lease_for))
                    .or_default()
                    .push(i);
            }
            GroupWrite::Succeed { .. } => successes.push(i),
        }
    }
    if !inserts.is_empty() {
        let batch: Vec<(&NewJob, i64)> = inserts
            .iter()
            .map(|&i| match writes[i] {
                GroupWrite::Insert { job, at } => (job.as_ref(), *at),
                _ => unreachable!("batched by kind"),
            })
            .collect();
        let admitted = insert_batch_in(tx, &batch).await?;
        for (&i, admitted) in inserts.iter().zip(admitted) {
            written[i] = Some(GroupWritten::Inserted(Ok(admitted)));
        }
    }
    let at = to_millis(now());
    for ((worker, _, lease_for), batch) in claims {
        let GroupWrite::Claim { route, .. } = writes[batch[0]] else {
            unreachable!("batched by kind")
        };
        let ids: Vec<JobId> = batch
            .iter()
            .map(|&i| match writes[i] {
                GroupWrite::Claim { id, .. } => *id,
                _ => unreachable!("batched by kind"),
            })
            .collect();
        let mut claimed = claim_batch_in(tx, &ids, worker, route, lease_for, at).await?;
        // Each claimed job answers the first write that asked for it; a second ring of the
        // same job in the group lost.
        for (&i, id) in batch.iter().zip(&ids) {
            let won = claimed
                .iter()
                .position(|c| c.job.id == *id)
                .map(|at| Box::new(claimed.swap_remove(at)));
            written[i] = Some(GroupWritten::Claimed(won));
        }
    }
    if !successes.is_empty() {
        let mut batch: Vec<(&Lease, &[NewOutput], i64)> = Vec::with_capacity(successes.len());
        let mut hand_over = Vec::with_capacity(successes.len());
        for &i in &successes {
            let GroupWrite::Succeed {
                lease,
                outputs,
                at,
                hand_over: hands,
            } = writes[i]
            else {
                unreachable!("batched by kind")
            };
            batch.push((lease, outputs.as_slice(), *at));
            hand_over.push(*hands);
        }
        let mut handed = Vec::new();
        let won = succeed_batch_handing_in(tx, &batch, &hand_over, &mut handed).await?;
        for ((&i, won), (lease, _, _)) in successes.iter().zip(won).zip(&batch) {
            let own = handed
                .iter()
                .filter(|d| d.job_id == lease.job_id)
                .cloned()
                .collect();
            written[i] = Some(GroupWritten::Succeeded(won, own));
        }
    }
    Ok(written
        .into_iter()
        .map(|w| w.expect("every write answered"))
        .collect())
}
