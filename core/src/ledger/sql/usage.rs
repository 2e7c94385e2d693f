//! Usage and spend: the rows usage is summed from, a key's spend since an instant and its
//! active jobs per model (for the spend cap), and the queue gauges.

use super::*;

/// A key's jobs queued or running, counted by model (`model`, `n`).
pub(super) const ACTIVE_BY_MODEL: &str = "SELECT model, COUNT(*) AS n FROM jobs WHERE key_id = ? AND status IN ('queued', 'running') GROUP BY model";

/// What a key's attempts have cost since a time (key, the time less a day, the time): a job
/// created before the day began may still spend in it, and a day's jobs are bounded below by
/// the day before, which keeps the scan to two days of the key's jobs.
pub(super) const SPEND_SINCE: &str =
    "SELECT CAST(SUM(a.cost_micros) AS BIGINT) FROM jobs j JOIN attempts a ON a.job_id = j.id \
     WHERE j.key_id = ? AND j.created_at >= ? AND a.started_at >= ?";

#[async_trait]
impl UsageLedger for SqlLedger {
    async fn usage_rows(
        &self,
        tenant: &TenantId,
        from: Timestamp,
        to: Timestamp,
        after: Option<JobId>,
        jobs: u32,
    ) -> Result<Vec<UsageRow>> {
        // Ids are time-ordered UUIDv7 text: "" sorts before every one of them.
        let rows = sqlx::query(&self.sql(
            "SELECT j.id, j.model, j.status, j.created_at, a.route, a.number, a.outcome, a.cost_micros \
             FROM jobs j LEFT JOIN attempts a ON a.job_id = j.id \
             WHERE j.id IN (SELECT id FROM jobs WHERE tenant = ? AND created_at >= ? AND created_at < ? \
                 AND id > ? ORDER BY id LIMIT ?) \
             ORDER BY j.id, a.number",
        ))
        .bind(&tenant.0)
        .bind(to_millis(from))
        .bind(to_millis(to))
        .bind(after.map(|id| id.to_string()).unwrap_or_default())
        .bind(i64::from(jobs))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let id: String = r.try_get("id")?;
                Ok(UsageRow {
                    job_id: id.parse().map_err(|_| LedgerError::Corrupt(id.clone()))?,
                    model: r.try_get("model")?,
                    status: r
                        .try_get::<String, _>("status")?
                        .parse()
                        .map_err(LedgerError::Corrupt)?,
                    created_at: from_millis(r.try_get("created_at")?),
                    route: r.try_get("route")?,
                    number: r.try_get::<Option<i64>, _>("number")?.map(|n| n as u32),
                    outcome: r
                        .try_get::<Option<String>, _>("outcome")?
                        .map(|o| o.parse().map_err(LedgerError::Corrupt))
                        .transpose()?,
                    cost_micros: r.try_get("cost_micros")?,
                })
            })
            .collect()
    }

    async fn queue_snapshot(&self) -> Result<QueueSnapshot> {
        let at = to_millis(now());
        let mut snapshot = QueueSnapshot::default();
        for status in [Status::Queued, Status::Running] {
            // The status is written into the statement, not bound: a literal lets the planner
            // use the partial indexes kept for the queued and the running jobs.
            let count = format!(
                "SELECT COUNT(*) FROM jobs WHERE status = '{}'",
                status.as_str()
            );
            let n: i64 = sqlx::query_scalar(&count).fetch_one(&self.pool).await?;
            snapshot.jobs.push((status, n.max(0) as u64));
        }
        for lane in crate::dispatch::Lane::ALL {
            let row = sqlx::query(&self.sql(
                "SELECT COUNT(*) AS depth, MIN(run_after) AS oldest FROM jobs \
                 WHERE status = 'queued' AND rung_at >= 0 AND priority = ? AND run_after <= ?",
            ))
            .bind(lane.as_str())
            .bind(at)
            .fetch_one(&self.pool)
            .await?;
            let depth: i64 = row.try_get("depth")?;
            let oldest: Option<i64> = row.try_get("oldest")?;
            snapshot.lanes.push(LaneSnapshot {
                lane,
                depth: depth.max(0) as u64,
                oldest_age_seconds: oldest.map_or(0.0, |o| (at - o).max(0) as f64 / 1000.0),
            });
        }
        let held: i64 = sqlx::query_scalar(
            &self.sql("SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND rung_at = -1"),
        )
        .fetch_one(&self.pool)
        .await?;
        snapshot.held = held.max(0) as u64;
        Ok(snapshot)
    }

    async fn tenant_queue(&self, tenant: &TenantId) -> Result<Vec<TenantLaneCount>> {
        let mut lanes: Vec<TenantLaneCount> = crate::dispatch::Lane::ALL
            .iter()
            .map(|&lane| TenantLaneCount {
                lane,
                queued: 0,
                running: 0,
            })
            .collect();
        for status in [Status::Queued, Status::Running] {
            // The status is a literal, as in `queue_snapshot`, so the partial indexes of the
            // queued and the running jobs bound the count by what is active, not by the
            // tenant's whole history. SQLite, which keeps no statistics here, would rather take
            // the tenant's index for its equality and read every job the tenant ever had
            // (52 ms over 100,000): `+tenant` takes that index out of its choice.
            let tenant_column = match self.dialect {
                Dialect::Sqlite => "+tenant",
                Dialect::Postgres => "tenant",
            };
            let count = format!(
                "SELECT priority, COUNT(*) AS n FROM jobs WHERE status = '{}' AND {tenant_column} = ? \
                 GROUP BY priority",
                status.as_str()
            );
            let count = self.sql(&count);
            let rows = sqlx::query(&count)
                .bind(&tenant.0)
                .fetch_all(&self.pool)
                .await?;
            for row in rows {
                let priority: String = row.try_get("priority")?;
                let n: i64 = row.try_get("n")?;
                let Some(entry) = lanes.iter_mut().find(|l| l.lane.as_str() == priority) else {
                    continue;
                };
                let n = n.max(0) as u64;
                match status {
                    Status::Queued => entry.queued = n,
                    _ => entry.running = n,
                }
            }
        }
        Ok(lanes)
    }

    async fn active_jobs_by_model(&self, key_id: &KeyId) -> Result<Vec<(String, u64)>> {
        let rows = sqlx::query(&self.sql(ACTIVE_BY_MODEL))
            .bind(key_id.as_str())
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("model")?, r.try_get::<i64, _>("n")?.max(0) as u64)))
            .collect()
    }

    async fn spend_since(&self, key_id: &KeyId, since: Timestamp) -> Result<i64> {
        let spent: Option<i64> = sqlx::query_scalar(&self.sql(SPEND_SINCE))
            .bind(key_id.as_str())
            // A job created before the day began may still spend today; a day's jobs are bounded
            // below by the day before, which keeps the scan to two days of the key's jobs.
            .bind(to_millis(since) - 24 * 3600 * 1000)
            .bind(to_millis(since))
            .fetch_one(&self.pool)
            .await?;
        Ok(spent.unwrap_or(0))
    }
}
