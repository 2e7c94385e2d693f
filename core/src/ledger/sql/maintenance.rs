//! Worker identities and the reconciler's repairs: identity slots leased by worker
//! processes, leases expired by a new holder, rescues of expired leases, and overdue jobs failed.

use super::*;

/// A worker identity's running jobs made expired at once, for the reconciler to rescue
/// (`expire_leases_of`). No index is kept on the owner: the statement runs when a worker
/// leaves or its slot is taken over, and walks `jobs_lease_expiry` (every running job, as many
/// as the workers' slots at most), where an owner's index took an entry on every claim.
pub(super) const EXPIRE_LEASES_OF: &str =
    "UPDATE jobs SET lease_expires_at = 0 WHERE status = 'running' AND lease_owner = ?";

#[async_trait]
impl MaintenanceLedger for SqlLedger {
    async fn acquire_worker_slot(&self, base: &str, holder: &str, ttl: Duration) -> Result<String> {
        for n in 0.. {
            let identity = format!("{base}-{n}");
            let at = to_millis(now());
            let taken = sqlx::query(&self.sql(
                "INSERT INTO worker_slots (identity, holder, expires_at) VALUES (?, ?, ?) \
                 ON CONFLICT (identity) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
                 WHERE worker_slots.expires_at < ?",
            ))
            .bind(&identity)
            .bind(holder)
            .bind(at + ttl.as_millis() as i64)
            .bind(at)
            .execute(&mut *self.writer.conn().await?)
            .await?
            .rows_affected();
            if taken == 1 {
                return Ok(identity);
            }
        }
        unreachable!("the slot numbers are unbounded")
    }

    async fn renew_worker_slot(&self, identity: &str, holder: &str, ttl: Duration) -> Result<bool> {
        let changed = sqlx::query(
            &self.sql("UPDATE worker_slots SET expires_at = ? WHERE identity = ? AND holder = ?"),
        )
        .bind(to_millis(now()) + ttl.as_millis() as i64)
        .bind(identity)
        .bind(holder)
        .execute(&mut *self.writer.conn().await?)
        .await?
        .rows_affected();
        Ok(changed == 1)
    }

    async fn release_worker_slot(&self, identity: &str, holder: &str) -> Result<()> {
        sqlx::query(&self.sql("DELETE FROM worker_slots WHERE identity = ? AND holder = ?"))
            .bind(identity)
            .bind(holder)
            .execute(&mut *self.writer.conn().await?)
            .await?;
        Ok(())
    }

    async fn expire_leases_of(&self, identity: &str) -> Result<u64> {
        Ok(sqlx::query(&self.sql(EXPIRE_LEASES_OF))
            .bind(identity)
            .execute(&mut *self.writer.conn().await?)
            .await?
            .rows_affected())
    }

    async fn rescue_expired_leases(&self, max_rescues: u32, limit: u32) -> Result<Vec<Rescue>> {
        let at = to_millis(now());
        let mut tx = self.write_tx().await?;
        let expired = sqlx::query(&self.sql(
            &format!(
                "SELECT id, lease_token, rescue_count, priority FROM jobs \
                 WHERE status = 'running' AND lease_expires_at < ? ORDER BY lease_expires_at LIMIT ?{}",
                self.dialect.lock_rows_skip_locked()
            ),
        ))
        .bind(at)
        .bind(limit as i64)
        .fetch_all(&mut *tx.tx)
        .await?;
        let mut rescues = Vec::with_capacity(expired.len());
        for row in expired {
            let sid: String = row.try_get("id")?;
            let token: String = row.try_get("lease_token")?;
            let rescued: i64 = row.try_get("rescue_count")?;
            let lane: crate::dispatch::Lane = row
                .try_get::<String, _>("priority")?
                .parse()
                .map_err(LedgerError::Corrupt)?;
            let job_id: JobId = sid.parse().map_err(|_| LedgerError::Corrupt(sid.clone()))?;
            let lost = ErrorInfo::new(
                "worker_lost",
                "the worker running this attempt stopped renewing its lease",
            );
            sqlx::query(&self.sql(
                "UPDATE attempts SET finished_at = ?, outcome = 'lost', error_code = ?, error_message = ? \
                 WHERE job_id = ? AND finished_at IS NULL",
            ))
            .bind(at)
            .bind(&lost.code)
            .bind(&lost.message)
            .bind(&sid)
            .execute(&mut *tx.tx)
            .await?;
            // Back to the queue, or failed once the job has been rescued `max_rescues` times.
            let gave_up = rescued as u32 >= max_rescues;
            let (to, reason, set) = if gave_up {
                (
                    Status::Failed,
                    "rescue_limit_exceeded",
                    "status = 'failed', error_code = 'rescue_limit_exceeded', error_message = ?, completed_at = ?",
                )
            } else {
                (
                    Status::Queued,
                    "rescued",
                    "status = 'queued', rescue_count = rescue_count + 1, run_after = ?, rung_at = ?",
                )
            };
            let statement = self
                .sql(&format!(
                    "UPDATE jobs SET {set}, lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL \
                     WHERE id = ? AND status = 'running' AND lease_token = ?"
                ))
                .into_owned();
            let query = sqlx::query(&statement);
            let query = if gave_up {
                query.bind(format!(
                    "the job's worker was lost {} times (the rescue limit is {max_rescues}); it was not run again",
                    rescued + 1
                ))
            } else {
                query.bind(at)
            };
            query
                .bind(at)
                .bind(&sid)
                .bind(&token)
                .execute(&mut *tx.tx)
                .await?;
            record_transition(&mut tx, &sid, Some(Status::Running), to, Some(reason), at).await?;
            rescues.push(if gave_up {
                Rescue::GaveUp(job_id)
            } else {
                Rescue::Requeued(job_id, lane)
            });
        }
        tx.commit().await?;
        Ok(rescues)
    }

    async fn fail_overdue(&self, now: Timestamp, limit: u32) -> Result<Vec<(JobId, String)>> {
        let at = to_millis(now);
        let mut tx = self.write_tx().await?;
        // Two indexed reads (one per limit) rather than one OR that would scan the queue.
        let mut overdue: Vec<(String, &str)> = vec![];
        for (sql, code) in [
            (
                "SELECT id FROM jobs WHERE deadline_at <= ? AND status = 'queued'",
                "deadline_exceeded",
            ),
            (
                "SELECT id FROM jobs WHERE start_by <= ? AND status = 'queued' AND started_at IS NULL",
                "queue_timeout",
            ),
        ] {
            let ids: Vec<String> = sqlx::query_scalar(&self.sql(&format!(
                "{sql} LIMIT {limit}{}",
                self.dialect.lock_rows_skip_locked()
            )))
            .bind(at)
            .fetch_all(&mut *tx.tx)
            .await?;
            for id in ids {
                if !overdue.iter().any(|(o, _)| *o == id) {
                    overdue.push((id, code));
                }
            }
        }
        let mut failed = Vec::with_capacity(overdue.len());
        for (id, code) in overdue {
            let message = match code {
                "deadline_exceeded" => "the job did not finish before its deadline (cancel_after)",
                _ => "the job did not start within its max_queue_wait",
            };
            let changed = sqlx::query(&self.sql(
                "UPDATE jobs SET status = 'failed', error_code = ?, error_message = ?, completed_at = ? \
                 WHERE id = ? AND status = 'queued'",
            ))
            .bind(code)
            .bind(message)
            .bind(at)
            .bind(&id)
            .execute(&mut *tx.tx)
            .await?
            .rows_affected();
            if changed == 1 {
                forget_callbacks(&mut tx, &id).await?;
                abandon_upstream_in(&mut tx, &id, at).await?;
                record_transition(
                    &mut tx,
                    &id,
                    Some(Status::Queued),
                    Status::Failed,
                    Some(code),
                    at,
                )
                .await?;
                let job_id = id
                    .parse()
                    .map_err(|_| LedgerError::Corrupt(format!("job id '{id}'")))?;
                failed.push((job_id, code.to_owned()));
            }
        }
        tx.commit().await?;
        Ok(failed)
    }
}
