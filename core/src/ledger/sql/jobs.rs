//! Jobs: submit (with the key's limits and the tenant's dispatch window checked in the
//! insert's own transaction), reads and listing pages, cancel and dispatch bookkeeping (rung,
//! admitted, queue position). The claim's statements are in `claims`.

use super::*;

/// One page of a tenant's jobs or pipelines (both tables have `tenant`, `status`, `created_at`
/// and time-ordered ids): `select` narrowed by the filter, newest first. `bind_page` binds its
/// parameters in the same order.
pub(super) fn page_sql(select: &str, filter: &JobFilter) -> String {
    let mut sql = format!("{select} WHERE tenant = ?");
    if !filter.statuses.is_empty() {
        let marks = vec!["?"; filter.statuses.len()].join(", ");
        sql.push_str(&format!(" AND status IN ({marks})"));
    }
    if filter.model.is_some() {
        sql.push_str(" AND model = ?");
    }
    if filter.created_after.is_some() {
        sql.push_str(" AND created_at >= ?");
    }
    if filter.created_before.is_some() {
        sql.push_str(" AND created_at < ?");
    }
    if filter.before.is_some() {
        sql.push_str(" AND id < ?");
    }
    sql.push_str(" ORDER BY id DESC LIMIT ?");
    sql
}

pub(super) fn bind_page<'q>(
    mut query: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>,
    tenant: &'q TenantId,
    filter: &'q JobFilter,
) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>> {
    query = query.bind(&tenant.0);
    for s in &filter.statuses {
        query = query.bind(s.as_str());
    }
    if let Some(m) = &filter.model {
        query = query.bind(m);
    }
    if let Some(t) = filter.created_after {
        query = query.bind(to_millis(t));
    }
    if let Some(t) = filter.created_before {
        query = query.bind(to_millis(t));
    }
    if let Some(b) = filter.before {
        query = query.bind(b.to_string());
    }
    query.bind(filter.limit as i64)
}

/// Writes a new queued job (a step of `pipeline`, if given; its `queued` transition is implied
/// by its row). Returns whether its tenant's dispatch window admitted it to the queue (the
/// caller rings it) or it is held until a place frees. A job whose key is at its active-job
/// limit is refused.
pub(super) async fn insert_job_in(
    tx: &mut Tx,
    job: &NewJob,
    pipeline: Option<&str>,
    at: i64,
) -> Result<bool> {
    let id = job.id.to_string();
    if let (true, Some(key_id)) = (job.max_active.is_some() || job.spend.is_some(), &job.key_id) {
        // One submit per key at a time past this point (Postgres; SQLite writes one at a time),
        // so concurrent submits cannot both take the last place or the last of the budget.
        sqlx::query(&tx.d.sql(&format!(
            "SELECT id FROM api_keys WHERE id = ?{}",
            tx.d.lock_rows()
        )))
        .bind(key_id.as_str())
        .fetch_optional(&mut *tx.tx)
        .await?;
    }
    if let (Some(spend), Some(key_id)) = (&job.spend, &job.key_id) {
        let spent: Option<i64> = sqlx::query_scalar(&tx.d.sql(SPEND_SINCE))
            .bind(key_id.as_str())
            .bind(to_millis(spend.day_began) - 24 * 3600 * 1000)
            .bind(to_millis(spend.day_began))
            .fetch_one(&mut *tx.tx)
            .await?;
        let active = sqlx::query(&tx.d.sql(ACTIVE_BY_MODEL))
            .bind(key_id.as_str())
            .fetch_all(&mut *tx.tx)
            .await?;
        let mut committed = spent.unwrap_or(0);
        for row in &active {
            let model: String = row.try_get("model")?;
            committed += spend.least(&model) * row.try_get::<i64, _>("n")?.max(0);
        }
        if committed + spend.new_cost_micros > spend.cap_micros {
            return Err(LedgerError::SpendCap {
                cap: spend.cap_micros,
                committed,
                more: spend.new_cost_micros,
            });
        }
    }
    if let (Some(max), Some(key_id)) = (job.max_active, &job.key_id) {
        let active: i64 = sqlx::query_scalar(&tx.d.sql(
            "SELECT COUNT(*) FROM (SELECT 1 FROM jobs WHERE key_id = ? AND status IN ('queued', 'running') LIMIT ?) a",
        ))
        .bind(key_id.as_str())
        .bind(i64::from(max))
        .fetch_one(&mut *tx.tx)
        .await?;
        if active >= i64::from(max) {
            return Err(LedgerError::ActiveJobLimit(max));
        }
    }
    // Admitted (marked rung) if the tenant's window has room and none of its jobs are held:
    // held jobs are admitted in their own order (priority, then age), and a new one must not
    // jump that line. Decided within the INSERT, which returns what it decided. The held line
    // is looked at first (one index probe): while a backlog is held, that alone decides, and
    // the window's count (up to `window` rows) is taken only when it could admit.
    let insert = format!(
        concat!(
            "INSERT INTO jobs (id, tenant, model, input, status, created_at, run_after, rung_at, deadline_at, start_by, \
                 key_id, webhook_url, webhook_events, pipeline_id, priority, surface) \
             VALUES (?, ?, ?, ?, 'queued', ?, ?, \
                 CASE WHEN NOT {holding} AND ",
            window_has_room!(),
            " THEN ? ELSE -1 END, \
                 ?, ?, ?, ?, ?, ?, ?, ?) \
             RETURNING id, rung_at"
        ),
        holding = holding_probe(tx.d, "?"),
    );
    // Its `queued` transition is implied by the row (`Transition::is_implied`).
    let statement = tx.d.sql(&insert).into_owned();
    let window = i64::from(tx.window);
    // The row holds the input as it is shown; megabytes of inline data go once into
    // `job_inputs`, for the worker alone, so the hot row stays narrow and reads stay cheap.
    let shown = crate::job::elide_inline_data(&job.input);
    let wide = shown != job.input;
    let query = sqlx::query(&statement)
        .bind(&id)
        .bind(&job.tenant.0)
        .bind(&job.model)
        .bind(shown.to_string())
        .bind(at)
        .bind(at)
        .bind(&job.tenant.0)
        .bind(&job.tenant.0)
        .bind(window)
        .bind(window)
        .bind(at)
        .bind(job.deadline_at.map(to_millis))
        .bind(job.start_by.map(to_millis))
        .bind(job.key_id.as_ref().map(KeyId::as_str))
        .bind(job.webhook_url.as_deref())
        .bind(job.webhook_events.as_ref().map(|e| e.join(",")))
        .bind(pipeline)
        .bind(job.priority.as_str())
        .bind(job.surface.column());
    let rung_at: i64 = query.fetch_one(&mut *tx.tx).await?.try_get("rung_at")?;
    let admitted = rung_at >= 0;
    if wide {
        sqlx::query(
            &tx.d
                .sql("INSERT INTO job_inputs (job_id, input) VALUES (?, ?)"),
        )
        .bind(&id)
        .bind(job.input.to_string())
        .execute(&mut *tx.tx)
        .await?;
    }
    if let Some(key) = &job.idempotency {
        link_idempotent(tx, key, &id).await?;
    }
    // Counted for the metrics; its row is implied by the job's (`Transition::is_implied`), and
    // `queued` writes no delivery (`EventType::of_job_transition`).
    tx.transitions.push(Status::Queued.as_str());
    Ok(admitted)
}

/// Whether `job` can be written by `insert_batch_in`: nothing of its own to check or write
/// beyond its row (no key limit, no idempotency key, no input kept apart),
/// and Kiln's own surface (the column the batch statement leaves null).
pub(super) fn batchable(job: &NewJob) -> bool {
    job.surface == crate::job::Surface::Kiln
        && job.max_active.is_none()
        && job.spend.is_none()
        && job.idempotency.is_none()
        && crate::job::elide_inline_data(&job.input) == job.input
}

/// The types of `insert_batch_in`'s `VALUES` columns: id, tenant, model, input, deadline_at,
/// start_by, key_id, webhook_url, webhook_events, priority, place, at.
const NEW_JOB_COLUMNS: [&str; 12] = [
    "text", "text", "text", "text", "bigint", "bigint", "text", "text", "text", "text", "bigint",
    "bigint",
];

/// Whether the tenant `tenant` (an expression: `t.tenant` in a batch's insert, a parameter in a
/// lone job's) holds any job, as an expression of the submit's statement.
/// On Postgres the probe walks `jobs_held` from its newest end: held jobs are admitted oldest
/// first, and each admitted job leaves its entry there, dead, at the oldest end until vacuum
/// removes it, so a walk from that end (as `EXISTS` takes it) read through every job a burst
/// had admitted so far, on every insert (32 buffers per job against 23 over a 20,000-job
/// burst, BENCHMARKS.md). While the tenant holds jobs, its newest held job is live, and the
/// walk stops there. SQLite removes an index entry with its row.
pub(super) fn holding_probe(d: Dialect, tenant: &str) -> String {
    match d {
        Dialect::Postgres => format!(
            "((SELECT id FROM jobs WHERE tenant = {tenant} AND status = 'queued' AND rung_at = -1 \
              ORDER BY tenant DESC, priority DESC, {order} DESC LIMIT 1) IS NOT NULL)",
            order = d.held_order(),
        ),
        Dialect::Sqlite => format!(
            "EXISTS (SELECT 1 FROM jobs WHERE tenant = {tenant} AND status = 'queued' AND rung_at = -1)"
        ),
    }
}

/// Writes many new queued jobs as one statement (`insert_job_in` one at a time, for jobs that
/// are `batchable`), with the jobs as `VALUES` rows (on Postgres padded with null rows that no
/// join keeps). Their `queued` transitions are implied by their rows
/// (`Transition::is_implied`). Returns, in order, whether each was admitted to the queue. A
/// group of submits on SQLite used to take a statement per job, each a hand-off to the
/// connection's thread and back on the one writer every write waits for (BENCHMARKS.md).
///
/// The tenant's dispatch window decides as it does for one insert, counting the batch: a job is
/// admitted if its tenant holds no job back and the tenant's admitted jobs, with the batch's
/// jobs of that tenant up to and including this one (`place`, numbered in the batch's order),
/// still fit the window. The tenant's held line and its window are each read once per tenant,
/// before any of the batch is written (SQLite materialises a `SELECT` that reads the table it
/// inserts into before inserting), so one by one and together decide alike.
pub(super) async fn insert_batch_in<T: WriteTx>(
    tx: &mut T,
    jobs: &[(&NewJob, i64)],
) -> Result<Vec<bool>> {
    if jobs.is_empty() {
        return Ok(vec![]);
    }
    let d = tx.dialect();
    let (shape, rows) = match d {
        Dialect::Postgres => {
            let shape = jobs.len().next_power_of_two();
            (shape, padded_values(&NEW_JOB_COLUMNS, shape))
        }
        Dialect::Sqlite => {
            let row = format!("({})", vec!["?"; NEW_JOB_COLUMNS.len()].join(", "));
            (jobs.len(), value_rows(&row, jobs.len()))
        }
    };
    let holding = holding_probe(d, "t.tenant");
    let head = format!(
        "WITH incoming (id, tenant, model, input, deadline_at, start_by, key_id, webhook_url, webhook_events, priority, place, at) \
             AS (VALUES {rows}), \
         tenants AS (SELECT t.tenant, \
                 {holding} AS holding, \
                 (SELECT COUNT(*) FROM (SELECT 1 FROM jobs WHERE tenant = t.tenant AND status = 'queued' AND rung_at >= 0 LIMIT ?) w) AS admitted \
             FROM (SELECT DISTINCT tenant FROM incoming WHERE id IS NOT NULL) t)"
    );
    let insert = "INSERT INTO jobs (id, tenant, model, input, status, created_at, run_after, rung_at, deadline_at, start_by, \
             key_id, webhook_url, webhook_events, pipeline_id, priority) \
         SELECT n.id, n.tenant, n.model, n.input, 'queued', n.at, n.at, \
             CASE WHEN NOT t.holding AND t.admitted + n.place <= ? THEN n.at ELSE -1 END, \
             n.deadline_at, n.start_by, n.key_id, n.webhook_url, n.webhook_events, NULL, n.priority \
         FROM incoming n JOIN tenants t ON t.tenant = n.tenant";
    let statement = d
        .sql(&format!("{head} {insert} RETURNING id, rung_at"))
        .into_owned();
    let mut places: std::collections::HashMap<&str, i64> = std::collections::HashMap::new();
    let mut args = Args::new();
    for i in 0..shape {
        match jobs.get(i) {
            Some((job, at)) => {
                let place = places.entry(job.tenant.0.as_str()).or_default();
                *place += 1;
                args.text(job.id.to_string())
                    .text(job.tenant.0.as_str())
                    .text(job.model.as_str())
                    .text(job.input.to_string())
                    .opt_int(job.deadline_at.map(to_millis))
                    .opt_int(job.start_by.map(to_millis))
                    .opt_text(job.key_id.as_ref().map(KeyId::as_str))
                    .opt_text(job.webhook_url.as_deref())
                    .opt_text(job.webhook_events.as_ref().map(|e| e.join(",")))
                    .text(job.priority.as_str())
                    .int(*place)
                    .int(*at);
            }
            None => {
                args.null_row(&NEW_JOB_COLUMNS);
            }
        }
    }
    let window = i64::from(tx.window());
    args.int(window).int(window);
    let rows = tx.rows(&statement, args).await?;
    let mut admitted = std::collections::HashMap::with_capacity(rows.len());
    for row in &rows {
        admitted.insert(row.text("id")?, row.int("rung_at")? >= 0);
    }
    let admitted = jobs
        .iter()
        .map(|(job, _)| {
            admitted
                .get(&job.id.to_string())
                .copied()
                .ok_or_else(|| LedgerError::Corrupt(format!("job {} was not inserted", job.id)))
        })
        .collect::<Result<Vec<bool>>>()?;
    // Counted for the metrics; `queued` writes no delivery (`EventType::of_job_transition`).
    tx.note_transitions(Status::Queued, rows.len());
    Ok(admitted)
}

pub(super) async fn cancel_in(tx: &mut Tx, sid: &str, from: &str, at: i64) -> Result<()> {
    sqlx::query(&tx.d.sql(
        "UPDATE jobs SET status = 'canceled', completed_at = ?, error_code = 'canceled', \
             error_message = 'the job was canceled', lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL \
         WHERE id = ? AND status = ?",
    ))
    .bind(at)
    .bind(sid)
    .bind(from)
    .execute(&mut *tx.tx)
    .await?;
    // The running attempt ends with the job, even if its worker is gone and never says so.
    sqlx::query(&tx.d.sql(
        "UPDATE attempts SET finished_at = ?, outcome = 'canceled', error_code = 'canceled', \
             error_message = 'the job was canceled while this attempt ran' \
         WHERE job_id = ? AND finished_at IS NULL",
    ))
    .bind(at)
    .bind(sid)
    .execute(&mut *tx.tx)
    .await?;
    forget_callbacks(tx, sid).await?;
    let from: Status = from.parse().map_err(LedgerError::Corrupt)?;
    // A running job's own worker stops its upstream call when it sees the cancel; a queued
    // one has no worker, only perhaps a call an earlier, lost attempt left behind.
    if from == Status::Queued {
        abandon_upstream_in(tx, sid, at).await?;
    }
    record_transition(tx, sid, Some(from), Status::Canceled, Some("canceled"), at).await
}

#[async_trait]
impl JobLedger for SqlLedger {
    async fn insert_job(&self, job: NewJob) -> Result<Job> {
        let at = to_millis(now());
        let GroupWritten::Inserted(inserted) = self
            .group
            .write(GroupWrite::Insert {
                job: Box::new(job.clone()),
                at,
            })
            .await?
        else {
            unreachable!("an insert is answered with an insert")
        };
        let admitted = inserted?;
        // The row is exactly what was written: built here rather than read back (three
        // queries saved on the submit path).
        let at = from_millis(at);
        Ok(Job {
            id: job.id,
            tenant: job.tenant,
            model: job.model,
            input: crate::job::elide_inline_data(&job.input),
            status: Status::Queued,
            error: None,
            created_at: at,
            started_at: None,
            completed_at: None,
            run_after: at,
            lease_owner: None,
            lease_expires_at: None,
            attempt_count: 0,
            rescue_count: 0,
            deadline_at: job.deadline_at.map(|t| from_millis(to_millis(t))),
            start_by: job.start_by.map(|t| from_millis(to_millis(t))),
            webhook_url: job.webhook_url,
            webhook_events: job.webhook_events,
            pipeline_id: None,
            priority: job.priority,
            held: !admitted,
            surface: job.surface,
            attempts: vec![],
            outputs: vec![],
        })
    }

    async fn get_job(&self, tenant: &TenantId, id: JobId) -> Result<Option<Job>> {
        let sql = format!(
            "{} FROM jobs WHERE id = ? AND tenant = ?",
            self.job_select()
        );
        let mut args = Args::new();
        args.text(id.to_string()).text(tenant.0.as_str());
        let rows = self.point_rows(&sql, args).await?;
        rows.first().map(|row| self.load_job(row)).transpose()
    }

    async fn list_jobs(&self, tenant: &TenantId, filter: &JobFilter) -> Result<Vec<Job>> {
        let sql = self
            .sql(&page_sql(
                &format!("{} FROM jobs", self.job_select()),
                filter,
            ))
            .into_owned();
        let rows = bind_page(sqlx::query(&sql), tenant, filter)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|row| self.load_job(row)).collect()
    }

    async fn cancel_job(&self, tenant: &TenantId, id: JobId) -> Result<CancelOutcome> {
        let at = to_millis(now());
        let sid = id.to_string();
        let mut tx = self.write_tx().await?;
        let current: Option<String> = sqlx::query_scalar(&self.sql(&format!(
            "SELECT status FROM jobs WHERE id = ? AND tenant = ?{}",
            self.dialect.lock_rows()
        )))
        .bind(&sid)
        .bind(&tenant.0)
        .fetch_optional(&mut *tx.tx)
        .await?;
        let open = current.filter(|s| s == "queued" || s == "running");
        if let Some(from) = &open {
            cancel_in(&mut tx, &sid, from, at).await?;
        }
        tx.commit().await?;
        // Only the call that made the transition canceled the job; a job that had already
        // ended (canceled before included) is reported as ended.
        Ok(match self.get_job(tenant, id).await? {
            None => CancelOutcome::NotFound,
            Some(job) if open.is_some() => CancelOutcome::Canceled(job),
            Some(job) => CancelOutcome::AlreadyTerminal(job),
        })
    }

    async fn queue_position(&self, id: JobId) -> Result<Option<u64>> {
        let sid = id.to_string();
        // One statement, so the job's status and the count are read at the same moment.
        // Counted up to QUEUE_POSITION_CAP: past that a client learns only "at least", and a
        // deep queue does not make every read of a queued job scan it. Counted backwards from
        // the job: the index's oldest end holds the entries of jobs claimed since the last
        // vacuum, each a row visit to learn it is gone, while the jobs just ahead are live.
        let sql = format!(
            "SELECT (SELECT COUNT(*) FROM (SELECT 1 FROM jobs q WHERE q.status = 'queued' AND q.id < j.id \
                     ORDER BY q.id DESC LIMIT {QUEUE_POSITION_CAP}) a) AS ahead \
             FROM jobs j WHERE j.id = ? AND j.status = 'queued'"
        );
        let mut args = Args::new();
        args.text(sid);
        let rows = self.point_rows(&sql, args).await?;
        let ahead = rows.first().map(|row| row.int("ahead")).transpose()?;
        Ok(ahead.map(|n| n.max(0) as u64))
    }

    async fn mark_rung(&self, id: JobId) -> Result<()> {
        sqlx::query(&self.sql("UPDATE jobs SET rung_at = ? WHERE id = ?"))
            .bind(to_millis(now()))
            .bind(id.to_string())
            .execute(&mut *self.writer.conn().await?)
            .await?;
        Ok(())
    }

    async fn mark_unrung(&self, id: JobId) -> Result<()> {
        sqlx::query(&self.sql("UPDATE jobs SET rung_at = 0 WHERE id = ?"))
            .bind(id.to_string())
            .execute(&mut *self.writer.conn().await?)
            .await?;
        Ok(())
    }

    async fn due_unrung(
        &self,
        rung_before: Timestamp,
        limit: u32,
    ) -> Result<Vec<(JobId, crate::dispatch::Lane)>> {
        let rows = sqlx::query(&self.sql(
            "SELECT id, priority FROM jobs WHERE status = 'queued' AND run_after <= ? AND rung_at >= 0 AND rung_at < ? \
             ORDER BY run_after LIMIT ?",
        ))
        .bind(to_millis(now()))
        .bind(to_millis(rung_before))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(id_and_lane).collect()
    }

    async fn admit_held(&self, limit: u32) -> Result<Vec<(JobId, crate::dispatch::Lane)>> {
        let window = self.window.load(std::sync::atomic::Ordering::Relaxed);
        let mut tx = self.write_tx().await?;
        // Each tenant's held jobs numbered in its own order (priority, then age); a tenant gets
        // as many as its window has room for, and the numbering interleaves tenants, so the
        // admitted batch is round-robin across them.
        let rows = sqlx::query(&self.sql(
            "SELECT h.id, h.priority FROM ( \
                 SELECT id, tenant, priority, ROW_NUMBER() OVER ( \
                     PARTITION BY tenant \
                     ORDER BY CASE priority WHEN 'high' THEN 0 WHEN 'normal' THEN 1 ELSE 2 END, id) AS k \
                 FROM jobs WHERE status = 'queued' AND rung_at = -1) h \
             LEFT JOIN (SELECT tenant, COUNT(*) AS n FROM jobs WHERE status = 'queued' AND rung_at >= 0 GROUP BY tenant) a \
                 ON a.tenant = h.tenant \
             WHERE h.k <= ? - COALESCE(a.n, 0) \
             ORDER BY h.k, h.id LIMIT ?",
        ))
        .bind(i64::from(window))
        .bind(limit as i64)
        .fetch_all(&mut *tx.tx)
        .await?;
        let mut admitted = Vec::with_capacity(rows.len());
        for row in &rows {
            let (id, lane) = id_and_lane(row)?;
            let done =
                sqlx::query(&self.sql("UPDATE jobs SET rung_at = 0 WHERE id = ? AND rung_at = -1"))
                    .bind(id.to_string())
                    .execute(&mut *tx.tx)
                    .await?
                    .rows_affected();
            if done == 1 {
                admitted.push((id, lane));
            }
        }
        tx.commit().await?;
        Ok(admitted)
    }

    fn set_dispatch_window(&self, window: u32) {
        self.window
            .store(window.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    async fn claim_routed(
        &self,
        id: JobId,
        worker: &str,
        route: &RouteChooser,
        lease_for: Duration,
    ) -> Result<Option<Claim>> {
        let written = self
            .group
            .write(GroupWrite::Claim {
                id,
                worker: worker.to_owned(),
                route: route.clone(),
                lease_for,
            })
            .await?;
        let GroupWritten::Claimed(claimed) = written else {
            unreachable!("a claim is answered with a claim")
        };
        Ok(claimed.map(|claimed| claimed.into_claim()))
    }

    async fn claim_batch(
        &self,
        ids: &[JobId],
        worker: &str,
        route: &RouteChooser,
        lease_for: Duration,
    ) -> Result<Vec<Claim>> {
        let mut tx = self.hot_tx().await?;
        let claimed =
            claim_batch_in(&mut tx, ids, worker, route, lease_for, to_millis(now())).await?;
        tx.commit().await?;
        Ok(claimed.into_iter().map(Claimed::into_claim).collect())
    }

    async fn job_by_id(&self, id: JobId) -> Result<Option<Job>> {
        let sql = format!("{} FROM jobs WHERE id = ?", self.job_select());
        let mut args = Args::new();
        args.text(id.to_string());
        let rows = self.point_rows(&sql, args).await?;
        rows.first().map(|row| self.load_job(row)).transpose()
    }

    async fn job_input(&self, id: JobId) -> Result<Option<serde_json::Value>> {
        let text: Option<String> = sqlx::query_scalar(&self.sql(
            "SELECT COALESCE((SELECT input FROM job_inputs WHERE job_id = j.id), j.input) \
             FROM jobs j WHERE j.id = ?",
        ))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        text.map(|t| {
            serde_json::from_str(&t)
                .map_err(|e| LedgerError::Corrupt(format!("the input of job {id}: {e}")))
        })
        .transpose()
    }

    async fn jobs_by_ids(&self, ids: &[JobId]) -> Result<Vec<Job>> {
        if ids.is_empty() {
            return Ok(vec![]);
        }
        // Padded to a power of two with repeats (see `renew_leases`); each row comes once.
        let shape = ids.len().next_power_of_two();
        let marks = vec!["?"; shape].join(", ");
        let sql = format!("{} FROM jobs WHERE id IN ({marks})", self.job_select());
        let mut args = Args::new();
        for i in 0..shape {
            args.text(ids[i.min(ids.len() - 1)].to_string());
        }
        self.hot_point_rows(&sql, args)
            .await?
            .iter()
            .map(|row| self.load_job(row))
            .collect()
    }

    /// The written transitions with those the job's rows imply (`Transition::history`), read
    /// as one statement so that the job, its attempts and its written transitions are seen at
    /// one moment: the job's row (part 0), its attempts in order (part 1), its written
    /// transitions in order (part 2).
    async fn transitions(&self, id: JobId) -> Result<Vec<Transition>> {
        let sql = "SELECT CAST(0 AS BIGINT) AS part, CAST(0 AS BIGINT) AS n, NULL AS from_status, \
                 NULL AS to_status, NULL AS reason, created_at AS at FROM jobs WHERE id = ? \
             UNION ALL SELECT 1, CAST(number AS BIGINT), NULL, NULL, NULL, started_at \
                 FROM attempts WHERE job_id = ? \
             UNION ALL SELECT 2, CAST(seq AS BIGINT), from_status, to_status, reason, at \
                 FROM job_transitions WHERE job_id = ? \
             ORDER BY part, n";
        let mut args = Args::new();
        let id = id.to_string();
        args.text(id.as_str()).text(id.as_str()).text(id.as_str());
        let rows = self.point_rows(sql, args).await?;
        let Some(job) = rows.first().filter(|row| matches!(row.int("part"), Ok(0))) else {
            return Ok(vec![]);
        };
        let (mut claims, mut written) = (vec![], vec![]);
        for row in &rows[1..] {
            match row.int("part")? {
                1 => claims.push(from_millis(row.int("at")?)),
                _ => written.push(Transition {
                    from: row
                        .opt_text("from_status")?
                        .map(|s| s.parse())
                        .transpose()
                        .map_err(LedgerError::Corrupt)?,
                    to: text_column(row, "to_status")?,
                    reason: row.opt_text("reason")?,
                    at: from_millis(row.int("at")?),
                }),
            }
        }
        Ok(Transition::history(
            from_millis(job.int("at")?),
            claims,
            written,
        ))
    }
}
