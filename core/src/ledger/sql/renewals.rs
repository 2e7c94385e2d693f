//! Lease renewals: running jobs' lease renewals, many to one statement. Every running job
//! renews every few seconds; batching them keeps renewals from crowding the ledger.

use super::*;

/// Most leases one renewal statement carries.
pub(super) const RENEWALS_MAX: usize = 256;

pub(super) type PendingRenewal = (Lease, Duration, tokio::sync::oneshot::Sender<Result<bool>>);

/// Lease renewals of many running jobs in one statement. Every running job renews its lease
/// every few seconds (a worker holding 10,000 long upstream calls renews 2,000 a second); each
/// renewal is fenced by its token and changes one column, so whatever renewals are waiting
/// when the previous statement ends go together as one `UPDATE … RETURNING id`, and each
/// learns from the returned ids whether it still holds its job. If the statement fails, each
/// renewal is tried alone, so each gets its own answer.
pub(super) struct LeaseRenewals {
    queue: tokio::sync::mpsc::UnboundedSender<PendingRenewal>,
}

impl LeaseRenewals {
    pub(super) fn start(pool: Writer, dialect: Dialect) -> Self {
        let (queue, mut waiting) = tokio::sync::mpsc::unbounded_channel::<PendingRenewal>();
        tokio::spawn(async move {
            while let Some(first) = waiting.recv().await {
                let mut batch = crate::batch::take_waiting(first, &mut waiting, RENEWALS_MAX);
                // Callers gone (their job ended meanwhile) need no renewal.
                batch.retain(|(_, _, reply)| !reply.is_closed());
                renew_batch(&pool, dialect, batch).await;
            }
        });
        LeaseRenewals { queue }
    }

    pub(super) async fn renew(&self, lease: &Lease, lease_for: Duration) -> Result<bool> {
        let (reply, renewed) = tokio::sync::oneshot::channel();
        self.queue
            .send((lease.clone(), lease_for, reply))
            .map_err(|_| LedgerError::WriterStopped)?;
        renewed.await.map_err(|_| LedgerError::WriterStopped)?
    }
}

pub(super) async fn renew_batch(pool: &Writer, dialect: Dialect, batch: Vec<PendingRenewal>) {
    // One statement per lease length (a process renews with one length; this keeps the rule
    // exact if two differ).
    let mut by_length: BTreeMap<Duration, Vec<PendingRenewal>> = BTreeMap::new();
    for renewal in batch {
        by_length.entry(renewal.1).or_default().push(renewal);
    }
    for (lease_for, renewals) in by_length {
        let leases: Vec<&Lease> = renewals.iter().map(|(lease, _, _)| lease).collect();
        match renew_leases(pool, dialect, &leases, lease_for).await {
            Ok(held) => {
                for (lease, _, reply) in renewals {
                    let _ = reply.send(Ok(
                        held.contains(&(lease.job_id.to_string(), lease.token.clone()))
                    ));
                }
            }
            Err(e) if renewals.len() > 1 => {
                tracing::debug!(error = %e, leases = renewals.len(), "a grouped renewal failed; renewing each alone");
                for (lease, _, reply) in renewals {
                    let held = renew_leases(pool, dialect, &[&lease], lease_for).await;
                    let _ = reply.send(held.map(|held| !held.is_empty()));
                }
            }
            Err(e) => {
                if let Some((_, _, reply)) = renewals.into_iter().next() {
                    let _ = reply.send(Err(e));
                }
            }
        }
    }
}

/// Renews the leases still held (the job running under that token) for `lease_for` from now;
/// returns them as (job id, token).
pub(super) async fn renew_leases(
    pool: &Writer,
    dialect: Dialect,
    leases: &[&Lease],
    lease_for: Duration,
) -> Result<std::collections::HashSet<(String, String)>> {
    let until = to_millis(now()) + lease_for.as_millis() as i64;
    // Padded with repeats of the last lease to a power of two: a few statement shapes for the
    // per-connection statement caches instead of one per batch size.
    let shape = leases.len().next_power_of_two();
    let held = vec!["(id = ? AND lease_token = ?)"; shape].join(" OR ");
    // The rows are locked in id order first, as a group commit locks them, so the two cannot
    // deadlock; each returns with its token, so two renewals of one job (an old attempt's and
    // a new one's in the same batch) are told apart.
    let statement = dialect
        .sql(&format!(
            "UPDATE jobs SET lease_expires_at = ? WHERE id IN ( \
                 SELECT id FROM jobs WHERE status = 'running' AND ({held}) ORDER BY id{}) \
             RETURNING id, lease_token",
            dialect.lock_rows()
        ))
        .into_owned();
    let mut query = sqlx::query(&statement).bind(until);
    for i in 0..shape {
        let lease = leases[i.min(leases.len() - 1)];
        query = query.bind(lease.job_id.to_string()).bind(&lease.token);
    }
    query
        .fetch_all(&mut *pool.conn().await?)
        .await?
        .iter()
        .map(|row| Ok((row.try_get("id")?, row.try_get("lease_token")?)))
        .collect()
}
