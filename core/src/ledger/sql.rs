//! The SQL ledger, one implementation for both engines through sqlx's `Any` driver: SQLite for
//! the embedded default, Postgres for production. The schemas match column for column (times are
//! Unix milliseconds, numbers are 64-bit), so rows decode alike and every statement is written
//! once, with `?` placeholders that `Dialect::sql` turns into `$n` for Postgres. The dialects
//! differ only where the engines do: SQLite write transactions start with `BEGIN IMMEDIATE` (take
//! the write lock up front and wait on `busy_timeout`, instead of failing on a read-to-write
//! upgrade); Postgres reads the rows it is about to change with `FOR UPDATE`, and the reconciler
//! skips rows another reconciler holds (`SKIP LOCKED`), so concurrent passes never collide.
//!
//! The writes every job makes are shaped for throughput (see BENCHMARKS.md): concurrent
//! inserts, claims and successes share transactions (`GroupCommit`), running jobs' lease
//! renewals go many to a statement (`LeaseRenewals`), and on Postgres each of a submit, a
//! claim, a success and a delivery try is one statement of data-modifying CTEs, where SQLite
//! (whose statements are calls within the process, not round trips) takes the same steps one
//! by one. The contract tests run every path on both engines.
//!
//! Times come from the application clock. Leases are tens of seconds and hosts run NTP, so the
//! clock skew between workers is far below what a lease tolerates.

use super::*;
use crate::job::{Attempt, Output};
use crate::time::{from_millis, now, to_millis};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, Executor, Row, Transaction};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    pub fn of_url(url: &str) -> Option<Dialect> {
        if url.starts_with("sqlite:") {
            Some(Dialect::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Some(Dialect::Postgres)
        } else {
            None
        }
    }

    /// Rewrites `?` placeholders as `$1, $2, …` for Postgres. A `?` inside a quoted string or
    /// identifier is text, not a placeholder, and stays as it is (an escaped quote, `''`, closes
    /// and reopens the literal, which leaves it inside).
    fn sql<'a>(self, statement: &'a str) -> Cow<'a, str> {
        match self {
            Dialect::Sqlite => Cow::Borrowed(statement),
            Dialect::Postgres => {
                let mut out = String::with_capacity(statement.len() + 16);
                let mut n = 0;
                let mut quoted: Option<char> = None;
                for c in statement.chars() {
                    match (quoted, c) {
                        (None, '\'' | '"') => quoted = Some(c),
                        (Some(q), c) if c == q => quoted = None,
                        _ => {}
                    }
                    if c == '?' && quoted.is_none() {
                        n += 1;
                        out.push('$');
                        out.push_str(&n.to_string());
                    } else {
                        out.push(c);
                    }
                }
                Cow::Owned(out)
            }
        }
    }

    /// Appended to a SELECT of rows the transaction will update.
    fn lock_rows(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE",
        }
    }

    /// Like `lock_rows`, but passing over rows another transaction holds.
    fn lock_rows_skip_locked(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
        }
    }
}

pub struct SqlLedger {
    pool: AnyPool,
    dialect: Dialect,
    /// `dispatch.tenant_window`: a tenant's queued jobs admitted to the shared queue at once.
    window: Arc<AtomicU32>,
    /// Where every job's insert, claim and success are written (see `GroupCommit`).
    group: GroupCommit,
    /// Where running jobs' leases are renewed (see `LeaseRenewals`).
    renewals: LeaseRenewals,
}

/// The deepest queue position counted (`Ledger::queue_position`): a job further back reads
/// as this many ahead. Every read of a queued job (its submit's answer and each poll) counts
/// the jobs ahead, one index entry and one row visit each, so the cap bounds that read's cost;
/// at 1,000 the count was half of all the Postgres buffer reads of a job's whole life.
pub const QUEUE_POSITION_CAP: u32 = 100;

/// The default of `dispatch.tenant_window`.
pub const DEFAULT_TENANT_WINDOW: u32 = 100;

const JOB_COLUMNS: &str = "id, tenant, model, input, status, error_code, error_message, created_at, \
    started_at, completed_at, run_after, lease_owner, lease_expires_at, attempt_count, rescue_count, \
    deadline_at, start_by, webhook_url, webhook_events, pipeline_id, priority, rung_at";

/// An attempt as its JSON array in `job_select`: the columns of `ATTEMPT_FIELDS`, in order.
type AttemptTuple = (
    i64,
    String,
    String,
    String,
    i64,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
);
const ATTEMPT_FIELDS: &str =
    "number, id, route, worker, started_at, finished_at, outcome, error_code, \
    error_message, error_class, upstream_id, cost_micros, progress";

/// An output as its JSON array in `job_select`: the columns of `OUTPUT_FIELDS`, in order.
type OutputTuple = (i64, String, String, i64, i64, Option<i64>);
const OUTPUT_FIELDS: &str = "idx, object_key, content_type, bytes, expires_at, deleted_at";

/// The whole-job `SELECT` per dialect (`SqlLedger::job_select`). The subqueries' unqualified
/// columns are the inner table's; `jobs.id` is the outer row.
static JOB_SELECT_POSTGRES: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT {JOB_COLUMNS}, \
           (SELECT COALESCE(json_agg(json_build_array({ATTEMPT_FIELDS})), '[]')::text \
              FROM attempts WHERE attempts.job_id = jobs.id) AS attempts_json, \
           (SELECT COALESCE(json_agg(json_build_array({OUTPUT_FIELDS})), '[]')::text \
              FROM outputs WHERE outputs.job_id = jobs.id) AS outputs_json"
    )
});
static JOB_SELECT_SQLITE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT {JOB_COLUMNS}, \
           (SELECT json_group_array(json_array({ATTEMPT_FIELDS})) \
              FROM attempts WHERE attempts.job_id = jobs.id) AS attempts_json, \
           (SELECT json_group_array(json_array({OUTPUT_FIELDS})) \
              FROM outputs WHERE outputs.job_id = jobs.id) AS outputs_json"
    )
});

fn json_column<T: serde::de::DeserializeOwned>(row: &AnyRow, column: &str) -> Result<T> {
    let text: String = row.try_get(column)?;
    serde_json::from_str(&text).map_err(|e| LedgerError::Corrupt(format!("{column}: {e}")))
}

fn attempt_from_tuple(t: AttemptTuple) -> Result<Attempt> {
    let (number, id, route, worker, started_at, finished_at, outcome) =
        (t.0, t.1, t.2, t.3, t.4, t.5, t.6);
    let (code, message, error_class, upstream_id, cost_micros, progress) =
        (t.7, t.8, t.9, t.10, t.11, t.12);
    Ok(Attempt {
        number: number as u32,
        id,
        route,
        worker,
        started_at: from_millis(started_at),
        finished_at: finished_at.map(from_millis),
        outcome: outcome
            .map(|o| o.parse())
            .transpose()
            .map_err(LedgerError::Corrupt)?,
        error: code.map(|c| ErrorInfo::new(c, message.unwrap_or_default())),
        error_class,
        upstream_id,
        cost_micros,
        progress_percent: progress.map(|p| p.clamp(0, 100) as u8),
    })
}

/// A transaction plus its dialect, so helpers can write statements once.
struct Tx {
    tx: Transaction<'static, Any>,
    d: Dialect,
    /// The tenant dispatch window, for the jobs this transaction inserts.
    window: u32,
    /// Transitions written, counted only once the transaction commits: a group of writes that
    /// fails and is written again write by write must not count its transitions twice.
    transitions: Vec<&'static str>,
}

impl Tx {
    /// Commits, then counts what was written.
    async fn commit(self) -> Result<()> {
        self.tx.commit().await?;
        for status in self.transitions {
            crate::metrics::transition(status);
        }
        Ok(())
    }
}

async fn begin_write(pool: &AnyPool, dialect: Dialect, window: &AtomicU32) -> Result<Tx> {
    let begin = match dialect {
        Dialect::Sqlite => "BEGIN IMMEDIATE",
        Dialect::Postgres => "BEGIN",
    };
    Ok(Tx {
        tx: pool.begin_with(begin).await?,
        d: dialect,
        window: window.load(Ordering::Relaxed),
        transitions: Vec::new(),
    })
}

impl SqlLedger {
    /// Opens the database at `url` (a SQLite file is created if missing) and runs the migrations.
    pub async fn open(url: &str) -> Result<Self> {
        let dialect =
            Dialect::of_url(url).ok_or_else(|| LedgerError::UnsupportedUrl(redact(url)))?;
        sqlx::any::install_default_drivers();
        let (url, max) = match dialect {
            Dialect::Sqlite => (sqlite_url_creating(url), 8),
            Dialect::Postgres => (url.to_owned(), 16),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if dialect == Dialect::Sqlite {
                        // WAL + NORMAL is durable across process crashes (only an OS crash can
                        // lose the last transactions): the fault model of the embedded default.
                        conn.execute(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                             PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;",
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        match dialect {
            Dialect::Sqlite => SQLITE_MIGRATIONS.run(&pool).await?,
            Dialect::Postgres => POSTGRES_MIGRATIONS.run(&pool).await?,
        }
        let window = Arc::new(AtomicU32::new(DEFAULT_TENANT_WINDOW));
        let slots = match dialect {
            Dialect::Sqlite => 1,
            Dialect::Postgres => 4,
        };
        Ok(SqlLedger {
            group: GroupCommit::start(pool.clone(), dialect, window.clone(), slots),
            renewals: LeaseRenewals::start(pool.clone(), dialect),
            pool,
            dialect,
            window,
        })
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    fn sql<'a>(&self, statement: &'a str) -> Cow<'a, str> {
        self.dialect.sql(statement)
    }

    async fn write_tx(&self) -> Result<Tx> {
        begin_write(&self.pool, self.dialect, &self.window).await
    }

    /// `SELECT` of whole jobs: the job's columns and, from correlated subqueries, its attempts
    /// and outputs as JSON arrays, so a job is read in one statement (one round trip and one
    /// server wakeup instead of three, on every read of a job). `FROM jobs` follows.
    fn job_select(&self) -> &'static str {
        self.dialect.job_select()
    }

    fn load_job(&self, row: &AnyRow) -> Result<Job> {
        load_job(row)
    }
}

impl Dialect {
    /// See `SqlLedger::job_select`.
    fn job_select(self) -> &'static str {
        match self {
            Dialect::Sqlite => &JOB_SELECT_SQLITE,
            Dialect::Postgres => &JOB_SELECT_POSTGRES,
        }
    }
}

/// A whole job from a row of `job_select`.
fn load_job(row: &AnyRow) -> Result<Job> {
    {
        let mut job = job_from_row(row)?;
        // Rows come unordered from the aggregates; their order is restored here.
        let attempts: Vec<AttemptTuple> = json_column(row, "attempts_json")?;
        job.attempts = attempts
            .into_iter()
            .map(attempt_from_tuple)
            .collect::<Result<_>>()?;
        job.attempts.sort_by_key(|a| a.number);
        let outputs: Vec<OutputTuple> = json_column(row, "outputs_json")?;
        job.outputs = outputs
            .into_iter()
            .map(
                |(index, object_key, content_type, bytes, expires_at, deleted_at)| Output {
                    index: index as u32,
                    object_key,
                    content_type,
                    bytes: bytes as u64,
                    expires_at: from_millis(expires_at),
                    deleted_at: deleted_at.map(from_millis),
                },
            )
            .collect();
        job.outputs.sort_by_key(|o| o.index);
        Ok(job)
    }
}

/// `sqlite://path` with the file created if missing (`mode=rwc`).
fn sqlite_url_creating(url: &str) -> String {
    if url.contains("mode=") || url.contains(":memory:") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    }
}

/// A database URL without its password, for error messages.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.split('?').next().unwrap_or_default().to_owned(),
    }
}

fn job_from_row(row: &AnyRow) -> Result<Job> {
    let id: String = row.try_get("id")?;
    let status: String = row.try_get("status")?;
    let input: String = row.try_get("input")?;
    let error_code: Option<String> = row.try_get("error_code")?;
    let error_message: Option<String> = row.try_get("error_message")?;
    Ok(Job {
        id: id
            .parse()
            .map_err(|_| LedgerError::Corrupt(format!("job id '{id}'")))?,
        tenant: TenantId(row.try_get("tenant")?),
        model: row.try_get("model")?,
        input: serde_json::from_str(&input)
            .map_err(|e| LedgerError::Corrupt(format!("job {id} input: {e}")))?,
        status: status.parse().map_err(LedgerError::Corrupt)?,
        error: error_code.map(|code| ErrorInfo::new(code, error_message.unwrap_or_default())),
        created_at: from_millis(row.try_get("created_at")?),
        started_at: row
            .try_get::<Option<i64>, _>("started_at")?
            .map(from_millis),
        completed_at: row
            .try_get::<Option<i64>, _>("completed_at")?
            .map(from_millis),
        run_after: from_millis(row.try_get("run_after")?),
        lease_owner: row.try_get("lease_owner")?,
        lease_expires_at: row
            .try_get::<Option<i64>, _>("lease_expires_at")?
            .map(from_millis),
        attempt_count: row.try_get::<i64, _>("attempt_count")? as u32,
        rescue_count: row.try_get::<i64, _>("rescue_count")? as u32,
        deadline_at: row
            .try_get::<Option<i64>, _>("deadline_at")?
            .map(from_millis),
        start_by: row.try_get::<Option<i64>, _>("start_by")?.map(from_millis),
        webhook_url: row.try_get("webhook_url")?,
        webhook_events: row
            .try_get::<Option<String>, _>("webhook_events")?
            .map(|list| list.split(',').map(str::to_owned).collect()),
        pipeline_id: row
            .try_get::<Option<String>, _>("pipeline_id")?
            .map(|p| {
                p.parse()
                    .map_err(|_| LedgerError::Corrupt(format!("pipeline id '{p}'")))
            })
            .transpose()?,
        priority: row
            .try_get::<String, _>("priority")?
            .parse()
            .map_err(LedgerError::Corrupt)?,
        held: row.try_get::<i64, _>("rung_at")? < 0,
        attempts: vec![],
        outputs: vec![],
    })
}

fn id_and_lane(row: &AnyRow) -> Result<(JobId, crate::dispatch::Lane)> {
    let id: String = row.try_get("id")?;
    let lane = row
        .try_get::<String, _>("priority")?
        .parse()
        .map_err(LedgerError::Corrupt)?;
    Ok((id.parse().map_err(|_| LedgerError::Corrupt(id))?, lane))
}

fn key_from_row(r: &AnyRow) -> Result<ApiKeyRecord> {
    Ok(ApiKeyRecord {
        id: r.try_get("id")?,
        tenant: TenantId(r.try_get("tenant")?),
        prefix: r.try_get("prefix")?,
        created_at: from_millis(r.try_get("created_at")?),
        revoked_at: r.try_get::<Option<i64>, _>("revoked_at")?.map(from_millis),
        default_webhook: r.try_get("default_webhook")?,
        limits: KeyLimits {
            rate_per_second: r
                .try_get::<Option<i64>, _>("rate_per_second")?
                .map(|n| n.clamp(0, u32::MAX as i64) as u32),
            max_active_jobs: r
                .try_get::<Option<i64>, _>("max_active_jobs")?
                .map(|n| n.clamp(0, u32::MAX as i64) as u32),
            daily_spend_micros: r.try_get("daily_spend_micros")?,
            max_priority: r
                .try_get::<Option<String>, _>("max_priority")?
                .map(|p| p.parse().map_err(LedgerError::Corrupt))
                .transpose()?,
        },
    })
}

const KEY_COLUMNS: &str = "id, tenant, prefix, created_at, revoked_at, default_webhook, \
    rate_per_second, max_active_jobs, daily_spend_micros, max_priority";

async fn record_transition(
    tx: &mut Tx,
    job_id: &str,
    from: Option<Status>,
    to: Status,
    reason: Option<&str>,
    at: i64,
) -> Result<()> {
    tx.transitions.push(to.as_str());
    sqlx::query(&tx.d.sql(
        "INSERT INTO job_transitions (job_id, from_status, to_status, reason, at) VALUES (?, ?, ?, ?, ?)",
    ))
    .bind(job_id)
    .bind(from.map(Status::as_str))
    .bind(to.as_str())
    .bind(reason)
    .bind(at)
    .execute(&mut *tx.tx)
    .await?;
    enqueue_webhook(tx, job_id, to, at).await
}

/// Writes the webhook delivery a transition causes, in the transition's own transaction (so a
/// crash cannot separate them): `job.started` for a job's first start (its `started_at` is
/// this instant), `job.{status}` for a terminal one; only for a job with a webhook URL whose
/// event filter (a comma list, or none for all) takes the type.
async fn enqueue_webhook(tx: &mut Tx, job_id: &str, to: Status, at: i64) -> Result<()> {
    // (`started_delivery_cte` and `succeed_merged` write the same rows within merged Postgres
    // statements; a change here belongs there too.)
    let (event, first_start_only) = match to {
        Status::Running => ("job.started", true),
        Status::Succeeded => ("job.succeeded", false),
        Status::Failed => ("job.failed", false),
        Status::Canceled => ("job.canceled", false),
        Status::Queued => return Ok(()),
    };
    let id = format!("msg_{}", uuid::Uuid::now_v7().simple());
    let statement = tx.d.sql(&format!(
        "INSERT INTO webhook_deliveries (id, job_id, event_type, url, created_at, status, next_try_at) \
         SELECT ?, id, ?, webhook_url, ?, 'pending', ? FROM jobs \
         WHERE id = ? AND webhook_url IS NOT NULL \
           AND (webhook_events IS NULL OR (',' || webhook_events || ',') LIKE ?){}",
        if first_start_only { " AND started_at = ?" } else { "" }
    ))
    .into_owned();
    let mut query = sqlx::query(&statement)
        .bind(&id)
        .bind(event)
        .bind(at)
        .bind(at)
        .bind(job_id)
        .bind(format!("%,{event},%"));
    if first_start_only {
        query = query.bind(at);
    }
    query.execute(&mut *tx.tx).await?;
    Ok(())
}

/// Whether a tenant's dispatch window has room: its admitted queued jobs, counted up to the
/// window, are fewer than the window. Binds the tenant, then the window twice. A macro so that
/// the submit's literal statement and the claim's formatted one share the one text.
macro_rules! window_has_room {
    () => {
        "(SELECT COUNT(*) FROM (SELECT 1 FROM jobs WHERE tenant = ? AND status = 'queued' AND rung_at >= 0 LIMIT ?) w) < ?"
    };
}

/// `enqueue_webhook`'s `job.started` delivery as a CTE of a merged Postgres claim, fed by the
/// `claimed` row. Binds: the delivery id, then the time three times.
fn started_delivery_cte() -> &'static str {
    "delivery AS (INSERT INTO webhook_deliveries (id, job_id, event_type, url, created_at, status, next_try_at) \
         SELECT ?, id, 'job.started', webhook_url, ?, 'pending', ? FROM claimed \
         WHERE webhook_url IS NOT NULL AND started_at = ? \
           AND (webhook_events IS NULL OR (',' || webhook_events || ',') LIKE '%,job.started,%'))"
}

async fn finish_attempt(
    tx: &mut Tx,
    attempt_id: &str,
    outcome: AttemptOutcome,
    error: Option<&ErrorInfo>,
    at: i64,
) -> Result<()> {
    sqlx::query(&tx.d.sql(
        "UPDATE attempts SET finished_at = ?, outcome = ?, error_code = ?, error_message = ? \
         WHERE id = ? AND finished_at IS NULL",
    ))
    .bind(at)
    .bind(outcome.as_str())
    .bind(error.map(|e| e.code.as_str()))
    .bind(error.map(|e| e.message.as_str()))
    .bind(attempt_id)
    .execute(&mut *tx.tx)
    .await?;
    Ok(())
}

/// The fenced `running → to` transition shared by succeed, fail, retry and release. Returns
/// whether the compare-and-set won; on a loss nothing is written.
#[allow(clippy::too_many_arguments)]
async fn leave_running(
    tx: &mut Tx,
    lease: &Lease,
    to: Status,
    error: Option<&ErrorInfo>,
    run_after: Option<i64>,
    outcome: AttemptOutcome,
    at: i64,
) -> Result<bool> {
    debug_assert!(Status::Running.can_become(to));
    let id = lease.job_id.to_string();
    let completed_at = to.is_terminal().then_some(at);
    let changed = sqlx::query(&tx.d.sql(
        "UPDATE jobs SET status = ?, error_code = ?, error_message = ?, completed_at = ?, \
             run_after = COALESCE(?, run_after), lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL \
         WHERE id = ? AND status = 'running' AND lease_token = ?",
    ))
    .bind(to.as_str())
    .bind(error.filter(|_| to.is_terminal()).map(|e| e.code.as_str()))
    .bind(error.filter(|_| to.is_terminal()).map(|e| e.message.as_str()))
    .bind(completed_at)
    .bind(run_after)
    .bind(&id)
    .bind(&lease.token)
    .execute(&mut *tx.tx)
    .await?
    .rows_affected();
    if changed == 0 {
        return Ok(false);
    }
    finish_attempt(tx, &lease.attempt_id, outcome, error, at).await?;
    if to.is_terminal() {
        forget_callbacks(tx, &id).await?;
    }
    let reason = error.map(|e| e.code.as_str()).or(match outcome {
        AttemptOutcome::Released => Some("released"),
        _ => None,
    });
    record_transition(tx, &id, Some(Status::Running), to, reason, at).await?;
    Ok(true)
}

/// One page of a tenant's jobs or pipelines (both tables have `tenant`, `status`, `created_at`
/// and time-ordered ids): `select` narrowed by the filter, newest first. `bind_page` binds its
/// parameters in the same order.
fn page_sql(select: &str, filter: &JobFilter) -> String {
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

fn bind_page<'q>(
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

/// A key's jobs queued or running, counted by model (`model`, `n`).
const ACTIVE_BY_MODEL: &str = "SELECT model, COUNT(*) AS n FROM jobs WHERE key_id = ? AND status IN ('queued', 'running') GROUP BY model";

/// What a key's attempts have cost since a time (key, the time less a day, the time): a job
/// created before the day began may still spend in it, and a day's jobs are bounded below by
/// the day before, which keeps the scan to two days of the key's jobs.
const SPEND_SINCE: &str =
    "SELECT CAST(SUM(a.cost_micros) AS BIGINT) FROM jobs j JOIN attempts a ON a.job_id = j.id \
     WHERE j.key_id = ? AND j.created_at >= ? AND a.started_at >= ?";

/// Writes a new queued job (a step of `pipeline`, if given) with its first transition. Returns
/// whether its tenant's dispatch window admitted it to the queue (the caller rings it) or it is
/// held until a place frees. A job whose key is at its active-job limit is refused.
async fn insert_job_in(tx: &mut Tx, job: &NewJob, pipeline: Option<&str>, at: i64) -> Result<bool> {
    let id = job.id.to_string();
    if let (true, Some(key_id)) = (job.max_active.is_some() || job.spend.is_some(), &job.key_id) {
        // One submit per key at a time past this point (Postgres; SQLite writes one at a time),
        // so concurrent submits cannot both take the last place or the last of the budget.
        sqlx::query(&tx.d.sql(&format!(
            "SELECT id FROM api_keys WHERE id = ?{}",
            tx.d.lock_rows()
        )))
        .bind(key_id)
        .fetch_optional(&mut *tx.tx)
        .await?;
    }
    if let (Some(spend), Some(key_id)) = (&job.spend, &job.key_id) {
        let spent: Option<i64> = sqlx::query_scalar(&tx.d.sql(SPEND_SINCE))
            .bind(key_id)
            .bind(to_millis(spend.day_began) - 24 * 3600 * 1000)
            .bind(to_millis(spend.day_began))
            .fetch_one(&mut *tx.tx)
            .await?;
        let active = sqlx::query(&tx.d.sql(ACTIVE_BY_MODEL))
            .bind(key_id)
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
        .bind(key_id)
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
    let insert = concat!(
        "INSERT INTO jobs (id, tenant, model, input, status, created_at, run_after, rung_at, deadline_at, start_by, \
             key_id, webhook_url, webhook_events, pipeline_id, priority) \
         VALUES (?, ?, ?, ?, 'queued', ?, ?, \
             CASE WHEN NOT EXISTS (SELECT 1 FROM jobs WHERE tenant = ? AND status = 'queued' AND rung_at = -1) \
                   AND ",
        window_has_room!(),
        " THEN ? ELSE -1 END, \
             ?, ?, ?, ?, ?, ?, ?) \
         RETURNING id, rung_at"
    );
    let statement = match tx.d {
        // Postgres writes the transition in the same statement (one round trip); SQLite's
        // statements are calls within the process, taken one by one.
        Dialect::Postgres => tx.d.sql(&format!(
            "WITH inserted AS ({insert}), \
             transition AS (INSERT INTO job_transitions (job_id, from_status, to_status, reason, at) \
                 SELECT id, NULL, 'queued', NULL, ? FROM inserted) \
             SELECT rung_at FROM inserted"
        ))
        .into_owned(),
        Dialect::Sqlite => tx.d.sql(insert).into_owned(),
    };
    let window = i64::from(tx.window);
    // The row holds the input as it is shown; megabytes of inline data go once into
    // `job_inputs`, for the worker alone, so the hot row stays narrow and reads stay cheap.
    let shown = crate::job::elide_inline_data(&job.input);
    let wide = shown != job.input;
    let mut query = sqlx::query(&statement)
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
        .bind(job.key_id.as_deref())
        .bind(job.webhook_url.as_deref())
        .bind(job.webhook_events.as_ref().map(|e| e.join(",")))
        .bind(pipeline)
        .bind(job.priority.as_str());
    if tx.d == Dialect::Postgres {
        query = query.bind(at);
    }
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
    if tx.d == Dialect::Postgres {
        tx.transitions.push(Status::Queued.as_str());
    } else {
        record_transition(tx, &id, None, Status::Queued, None, at).await?;
    }
    Ok(admitted)
}

/// What a claim wrote: the job as it left it, and the lease.
struct Claimed {
    job: Job,
    token: String,
    attempt_id: String,
    admitted: Option<(JobId, crate::dispatch::Lane)>,
}

/// `queued → running` for `id` if it is queued and due (`Ledger::claim`), within `tx`.
async fn claim_in(
    tx: &mut Tx,
    id: JobId,
    worker: &str,
    route: &str,
    lease_for: Duration,
    at: i64,
) -> Result<Option<Box<Claimed>>> {
    let sid = id.to_string();
    let token = uuid::Uuid::new_v4().simple().to_string();
    let lease_expires_at = at + lease_for.as_millis() as i64;
    let claim_sql = format!(
        "UPDATE jobs SET status = 'running', started_at = COALESCE(started_at, ?), \
             lease_owner = ?, lease_token = ?, lease_expires_at = ?, attempt_count = attempt_count + 1 \
         WHERE id = ? AND status = 'queued' AND run_after <= ? AND rung_at >= 0 \
         RETURNING {JOB_COLUMNS}"
    );
    // The claim's own parameters, first in both statements below.
    let claim_params = (
        at,
        worker.to_owned(),
        token.clone(),
        lease_expires_at,
        sid.clone(),
    );
    fn bind_claim<'q>(
        statement: &'q str,
        (at, worker, token, until, id): (i64, String, String, i64, String),
    ) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>> {
        sqlx::query(statement)
            .bind(at)
            .bind(worker)
            .bind(token)
            .bind(until)
            .bind(id)
            .bind(at)
    }
    let mut job = if tx.d == Dialect::Postgres {
        // One round trip: the claim, its attempt, its transition and its `job.started`
        // delivery as one statement (data-modifying CTEs), each insert fed by the claimed row
        // (none when the claim lost). SQLite has no such CTEs, and its statements are calls
        // within the process, not round trips: it takes them one by one below.
        let merged = format!(
            "WITH claimed AS ({claim_sql}), \
             attempt AS (INSERT INTO attempts (job_id, number, id, route, worker, started_at) \
                 SELECT id, attempt_count, id || '-' || attempt_count, ?, lease_owner, ? FROM claimed), \
             transition AS (INSERT INTO job_transitions (job_id, from_status, to_status, reason, at) \
                 SELECT id, 'queued', 'running', NULL, ? FROM claimed), \
             {} \
             SELECT * FROM claimed",
            started_delivery_cte()
        );
        let merged = tx.d.sql(&merged);
        let row = bind_claim(&merged, claim_params)
            .bind(route)
            .bind(at)
            .bind(at)
            .bind(format!("msg_{}", uuid::Uuid::now_v7().simple()))
            .bind(at)
            .bind(at)
            .bind(at)
            .fetch_optional(&mut *tx.tx)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        tx.transitions.push(Status::Running.as_str());
        job_from_row(&row)?
    } else {
        let claim_sql = tx.d.sql(&claim_sql);
        let row = bind_claim(&claim_sql, claim_params)
            .fetch_optional(&mut *tx.tx)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let job = job_from_row(&row)?;
        sqlx::query(&tx.d.sql(
            "INSERT INTO attempts (job_id, number, id, route, worker, started_at) VALUES (?, ?, ?, ?, ?, ?)",
        ))
        .bind(&sid)
        .bind(i64::from(job.attempt_count))
        .bind(format!("{sid}-{}", job.attempt_count))
        .bind(route)
        .bind(worker)
        .bind(at)
        .execute(&mut *tx.tx)
        .await?;
        record_transition(tx, &sid, Some(Status::Queued), Status::Running, None, at).await?;
        job
    };
    let number = job.attempt_count;
    // Attempt ids are stable (`{job}-{n}`): upstream calls carry them for idempotency.
    let attempt_id = format!("{sid}-{number}");
    // The claim freed a place in the tenant's window: the next held job takes it. A first
    // claim's job was admitted once and counted once, so its place is surely free; a later
    // attempt's job came back into the window admitted (retried, released or rescued), perhaps
    // past its size, so then the window is counted.
    let admitted = admit_next_in(tx, &job.tenant.0, at, number > 1).await?;
    // A queued job has no outputs (they come with success), and on a first attempt its one
    // attempt is the row just inserted; a later attempt's route depends on the ones before, so
    // then the whole job is read back, in this transaction.
    if number > 1 {
        let row = sqlx::query(
            &tx.d
                .sql(&format!("{} FROM jobs WHERE id = ?", tx.d.job_select())),
        )
        .bind(&sid)
        .fetch_one(&mut *tx.tx)
        .await?;
        job = load_job(&row)?;
    } else {
        job.attempts = vec![Attempt {
            number,
            id: attempt_id.clone(),
            route: route.to_owned(),
            worker: worker.to_owned(),
            started_at: from_millis(at),
            finished_at: None,
            outcome: None,
            error: None,
            error_class: None,
            upstream_id: None,
            cost_micros: None,
            progress_percent: None,
        }];
    }
    Ok(Some(Box::new(Claimed {
        job,
        token,
        attempt_id,
        admitted,
    })))
}

/// `succeed_in` on Postgres in one round trip: `leave_running` for a success (the fenced job
/// update, the attempt's end, the callbacks forgotten, the transition, the `job.succeeded`
/// delivery) and the outputs, as one statement of data-modifying CTEs, each fed by the row
/// the fenced update returned (none when the lease was lost: then nothing is written).
async fn succeed_merged(
    tx: &mut Tx,
    lease: &Lease,
    outputs: &[NewOutput],
    at: i64,
) -> Result<bool> {
    let values =
        vec!["(?::bigint, ?::text, ?::text, ?::bigint, ?::bigint)"; outputs.len()].join(", ");
    let outputs_cte = if outputs.is_empty() {
        String::new()
    } else {
        format!(
            ", stored AS (INSERT INTO outputs (job_id, idx, object_key, content_type, bytes, expires_at) \
                 SELECT ended.id, o.idx, o.object_key, o.content_type, o.bytes, o.expires_at \
                 FROM ended CROSS JOIN (VALUES {values}) AS o (idx, object_key, content_type, bytes, expires_at))"
        )
    };
    let statement = tx.d.sql(&format!(
        "WITH ended AS (UPDATE jobs SET status = 'succeeded', error_code = NULL, error_message = NULL, \
                 completed_at = ?, lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL \
             WHERE id = ? AND status = 'running' AND lease_token = ? \
             RETURNING id, webhook_url, webhook_events), \
         attempt AS (UPDATE attempts SET finished_at = ?, outcome = ?, error_code = NULL, error_message = NULL \
             WHERE id = ? AND finished_at IS NULL AND EXISTS (SELECT 1 FROM ended)), \
         callbacks AS (DELETE FROM upstream_callbacks WHERE job_id IN (SELECT id FROM ended)), \
         transition AS (INSERT INTO job_transitions (job_id, from_status, to_status, reason, at) \
             SELECT id, 'running', 'succeeded', NULL, ? FROM ended), \
         delivery AS (INSERT INTO webhook_deliveries (id, job_id, event_type, url, created_at, status, next_try_at) \
             SELECT ?, id, 'job.succeeded', webhook_url, ?, 'pending', ? FROM ended \
             WHERE webhook_url IS NOT NULL \
               AND (webhook_events IS NULL OR (',' || webhook_events || ',') LIKE '%,job.succeeded,%')){outputs_cte} \
         SELECT COUNT(*) AS won FROM ended"
    ))
    .into_owned();
    let mut query = sqlx::query(&statement)
        .bind(at)
        .bind(lease.job_id.to_string())
        .bind(&lease.token)
        .bind(at)
        .bind(AttemptOutcome::Succeeded.as_str())
        .bind(&lease.attempt_id)
        .bind(at)
        .bind(format!("msg_{}", uuid::Uuid::now_v7().simple()))
        .bind(at)
        .bind(at);
    for o in outputs {
        query = query
            .bind(o.index as i64)
            .bind(&o.object_key)
            .bind(&o.content_type)
            .bind(o.bytes as i64)
            .bind(to_millis(o.expires_at));
    }
    let won: i64 = query.fetch_one(&mut *tx.tx).await?.try_get("won")?;
    if won > 0 {
        tx.transitions.push(Status::Succeeded.as_str());
    }
    Ok(won > 0)
}

/// `running → succeeded` with the outputs, if `lease` still holds the job (`Ledger::succeed`).
async fn succeed_in(tx: &mut Tx, lease: &Lease, outputs: &[NewOutput], at: i64) -> Result<bool> {
    if tx.d == Dialect::Postgres {
        return succeed_merged(tx, lease, outputs, at).await;
    }
    if !leave_running(
        tx,
        lease,
        Status::Succeeded,
        None,
        None,
        AttemptOutcome::Succeeded,
        at,
    )
    .await?
    {
        return Ok(false);
    }
    for o in outputs {
        sqlx::query(&tx.d.sql(
            "INSERT INTO outputs (job_id, idx, object_key, content_type, bytes, expires_at) VALUES (?, ?, ?, ?, ?, ?)",
        ))
        .bind(lease.job_id.to_string())
        .bind(o.index as i64)
        .bind(&o.object_key)
        .bind(&o.content_type)
        .bind(o.bytes as i64)
        .bind(to_millis(o.expires_at))
        .execute(&mut *tx.tx)
        .await?;
    }
    Ok(true)
}

/// Admits `tenant`'s next held job (highest priority, oldest first), if it has one, into the
/// place the claim just freed.
///
/// A claim only takes an admitted job, so it frees exactly one place in its tenant's window.
/// On a job's first claim, filling that place keeps the window as full as it was, so the window
/// is not counted (the count reads up to `window` rows, and it was on every claim). A job that
/// comes back to the queue (retried, released, rescued) comes back admitted without a place of
/// its own, so the window may then hold more than its size; its next claim (`count_window`)
/// admits only if the count has room, which brings the window back to its size.
///
/// It is marked rung as it is admitted, as a submitted job is as it is inserted: the caller
/// rings it just after the commit and marks it unrung if that fails; if the caller dies in
/// between, the reconciler rings it once the mark is stale. One write fewer per admission
/// than marking it after the ring.
///
/// One statement: the next held job per lane (each an index probe of `jobs_held`, whose key
/// leads with the tenant and the lane; `COALESCE` stops at the first lane that has one) is a
/// subquery of the `UPDATE`.
async fn admit_next_in(
    tx: &mut Tx,
    tenant: &str,
    at: i64,
    count_window: bool,
) -> Result<Option<(JobId, crate::dispatch::Lane)>> {
    let next_in_lane = format!(
        "(SELECT id FROM jobs WHERE tenant = ? AND priority = ? AND status = 'queued' AND rung_at = -1 \
          ORDER BY id LIMIT 1{})",
        tx.d.lock_rows_skip_locked()
    );
    let lanes = vec![next_in_lane.as_str(); crate::dispatch::Lane::ALL.len()].join(", ");
    let room = if count_window {
        concat!(window_has_room!(), " AND ")
    } else {
        ""
    };
    let sql =
        tx.d.sql(&format!(
            "UPDATE jobs SET rung_at = ? \
         WHERE {room}status = 'queued' AND rung_at = -1 AND id = COALESCE({lanes}) \
         RETURNING id, priority"
        ))
        .into_owned();
    let mut query = sqlx::query(&sql).bind(at);
    if count_window {
        let window = i64::from(tx.window);
        query = query.bind(tenant).bind(window).bind(window);
    }
    for lane in crate::dispatch::Lane::ALL {
        query = query.bind(tenant).bind(lane.as_str());
    }
    let Some(row) = query.fetch_optional(&mut *tx.tx).await? else {
        return Ok(None);
    };
    let id: String = row.try_get("id")?;
    let lane: String = row.try_get("priority")?;
    let lane = lane
        .parse()
        .map_err(|_| LedgerError::Corrupt(format!("priority '{lane}'")))?;
    let job = id.parse().map_err(|_| LedgerError::Corrupt(id))?;
    Ok(Some((job, lane)))
}

/// Marks what the request holding `key` created, in the transaction that creates it.
async fn link_idempotent(tx: &mut Tx, key: &IdempotencyRef, resource: &str) -> Result<()> {
    sqlx::query(
        &tx.d
            .sql("UPDATE idempotency_keys SET resource_id = ? WHERE key_id = ? AND idem_key = ?"),
    )
    .bind(resource)
    .bind(&key.key_id)
    .bind(&key.key)
    .execute(&mut *tx.tx)
    .await?;
    Ok(())
}

/// `queued|running → canceled` for a job the caller has locked and found in state `from`.
/// A queued job that ends (canceled, past its deadline) may have left an upstream call running:
/// its last attempt was lost or released after the upstream had accepted the work, and no
/// attempt re-attached to it. That call is written down to be stopped, in the same transaction.
async fn abandon_upstream_in(tx: &mut Tx, sid: &str, at: i64) -> Result<()> {
    sqlx::query(&tx.d.sql(
        "INSERT INTO upstream_stops (job_id, model, route, upstream_id, created_at) \
         SELECT a.job_id, j.model, a.route, a.upstream_id, ? \
         FROM attempts a JOIN jobs j ON j.id = a.job_id \
         WHERE a.job_id = ? AND a.upstream_id IS NOT NULL AND a.outcome IN ('lost', 'released') \
           AND a.number = (SELECT MAX(number) FROM attempts WHERE job_id = ?) \
         ON CONFLICT (job_id) DO NOTHING",
    ))
    .bind(at)
    .bind(sid)
    .bind(sid)
    .execute(&mut *tx.tx)
    .await?;
    Ok(())
}

async fn cancel_in(tx: &mut Tx, sid: &str, from: &str, at: i64) -> Result<()> {
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

/// Ends a running pipeline with `status` and cancels its steps that have not ended.
async fn end_pipeline(
    tx: &mut Tx,
    pid: &str,
    status: Status,
    code: &str,
    message: &str,
    at: i64,
) -> Result<()> {
    let (code, message) = match status {
        Status::Succeeded => (None, None),
        _ => (Some(code), Some(message)),
    };
    sqlx::query(&tx.d.sql(
        "UPDATE pipelines SET status = ?, error_code = ?, error_message = ?, completed_at = ? \
         WHERE id = ? AND status = 'running'",
    ))
    .bind(status.as_str())
    .bind(code)
    .bind(message)
    .bind(at)
    .bind(pid)
    .execute(&mut *tx.tx)
    .await?;
    // The pipeline's webhook hears `pipeline.{status}` once, in this transaction. A delivery
    // belongs to a job, so it hangs off the pipeline's most recently started step.
    let event = format!("pipeline.{}", status.as_str());
    sqlx::query(&tx.d.sql(
        "INSERT INTO webhook_deliveries (id, job_id, event_type, url, created_at, status, next_try_at) \
         SELECT ?, s.job_id, ?, p.webhook_url, ?, 'pending', ? \
         FROM pipelines p JOIN pipeline_steps s ON s.pipeline_id = p.id \
         WHERE p.id = ? AND p.webhook_url IS NOT NULL AND s.job_id IS NOT NULL \
           AND (p.webhook_events IS NULL OR (',' || p.webhook_events || ',') LIKE ?) \
         ORDER BY s.job_id DESC LIMIT 1",
    ))
    .bind(format!("msg_{}", uuid::Uuid::now_v7().simple()))
    .bind(&event)
    .bind(at)
    .bind(at)
    .bind(pid)
    .bind(format!("%,{event},%"))
    .execute(&mut *tx.tx)
    .await?;
    let open: Vec<(String, String)> = sqlx::query(&tx.d.sql(&format!(
        "SELECT j.id, j.status FROM pipeline_steps s JOIN jobs j ON j.id = s.job_id \
         WHERE s.pipeline_id = ? AND j.status IN ('queued', 'running') ORDER BY j.id{}",
        tx.d.lock_rows()
    )))
    .bind(pid)
    .fetch_all(&mut *tx.tx)
    .await?
    .iter()
    .map(|r| Ok((r.try_get("id")?, r.try_get("status")?)))
    .collect::<Result<_>>()?;
    for (job, from) in open {
        cancel_in(tx, &job, &from, at).await?;
    }
    Ok(())
}

/// The pipeline's next move, inside the caller's transaction (see `Ledger::advance_pipeline`).
/// `max_active`: the key's active-job limit, checked for the steps started now (a new
/// pipeline's first steps); steps that start later belong to a pipeline already admitted.
async fn advance_in(
    tx: &mut Tx,
    pid: &str,
    at: i64,
    max_active: Option<u32>,
) -> Result<Vec<(JobId, crate::dispatch::Lane)>> {
    let Some(row) = sqlx::query(&tx.d.sql(&format!(
        "SELECT tenant, key_id, status, priority FROM pipelines WHERE id = ?{}",
        tx.d.lock_rows()
    )))
    .bind(pid)
    .fetch_optional(&mut *tx.tx)
    .await?
    else {
        return Ok(vec![]);
    };
    let status: String = row.try_get("status")?;
    if status != "running" {
        return Ok(vec![]);
    }
    let tenant = TenantId(row.try_get("tenant")?);
    let key_id: Option<String> = row.try_get("key_id")?;
    let priority: crate::dispatch::Lane = row
        .try_get::<String, _>("priority")?
        .parse()
        .map_err(LedgerError::Corrupt)?;
    struct StepRow {
        name: String,
        model: String,
        input: String,
        depends_on: Vec<String>,
        job_id: Option<String>,
        job_status: Option<String>,
        job_error: Option<String>,
    }
    let steps: Vec<StepRow> = sqlx::query(&tx.d.sql(
        "SELECT s.name, s.model, s.input, s.depends_on, s.job_id, j.status AS job_status, j.error_message AS job_error \
         FROM pipeline_steps s LEFT JOIN jobs j ON j.id = s.job_id \
         WHERE s.pipeline_id = ? ORDER BY s.position",
    ))
    .bind(pid)
    .fetch_all(&mut *tx.tx)
    .await?
    .iter()
    .map(|r| {
        let depends_on: String = r.try_get("depends_on")?;
        Ok(StepRow {
            name: r.try_get("name")?,
            model: r.try_get("model")?,
            input: r.try_get("input")?,
            depends_on: depends_on
                .split(',')
                .filter(|d| !d.is_empty())
                .map(str::to_owned)
                .collect(),
            job_id: r.try_get("job_id")?,
            job_status: r.try_get("job_status")?,
            job_error: r.try_get("job_error")?,
        })
    })
    .collect::<Result<_>>()?;
    // A step that failed or was canceled ends the pipeline; its dependents never start.
    if let Some(broken) = steps
        .iter()
        .find(|s| matches!(s.job_status.as_deref(), Some("failed" | "canceled")))
    {
        let state = broken.job_status.as_deref().unwrap_or_default();
        let (status, code) = match state {
            "canceled" => (Status::Canceled, "step_canceled"),
            _ => (Status::Failed, "step_failed"),
        };
        let message = format!(
            "step '{}' {state}: {}",
            broken.name,
            broken.job_error.as_deref().unwrap_or("no reason given")
        );
        end_pipeline(tx, pid, status, code, &message, at).await?;
        return Ok(vec![]);
    }
    if steps
        .iter()
        .all(|s| s.job_status.as_deref() == Some("succeeded"))
    {
        end_pipeline(tx, pid, Status::Succeeded, "", "", at).await?;
        return Ok(vec![]);
    }
    let succeeded: BTreeMap<&str, &str> = steps
        .iter()
        .filter(|s| s.job_status.as_deref() == Some("succeeded"))
        .filter_map(|s| Some((s.name.as_str(), s.job_id.as_deref()?)))
        .collect();
    let mut started = vec![];
    for step in steps.iter().filter(|s| s.job_id.is_none()) {
        if !step
            .depends_on
            .iter()
            .all(|d| succeeded.contains_key(d.as_str()))
        {
            continue;
        }
        let template: serde_json::Value = serde_json::from_str(&step.input)
            .map_err(|e| LedgerError::Corrupt(format!("pipeline {pid} step input: {e}")))?;
        let input = crate::pipeline::substitute(&template, &|dep, index| {
            format!("kiln://jobs/{}/outputs/{index}", succeeded[dep])
        });
        let job = NewJob {
            idempotency: None,
            id: JobId::new(),
            tenant: tenant.clone(),
            model: step.model.clone(),
            input,
            deadline_at: None,
            start_by: None,
            key_id: key_id.clone(),
            webhook_url: None,
            webhook_events: None,
            priority,
            max_active,
            spend: None,
        };
        let admitted = insert_job_in(tx, &job, Some(pid), at).await?;
        sqlx::query(&tx.d.sql(
            "UPDATE pipeline_steps SET job_id = ? WHERE pipeline_id = ? AND name = ? AND job_id IS NULL",
        ))
        .bind(job.id.to_string())
        .bind(pid)
        .bind(&step.name)
        .execute(&mut *tx.tx)
        .await?;
        if admitted {
            started.push((job.id, priority));
        }
    }
    Ok(started)
}

/// Upstream callbacks matter only while the job runs; a finished job drops them.
async fn forget_callbacks(tx: &mut Tx, job_id: &str) -> Result<()> {
    sqlx::query(&tx.d.sql("DELETE FROM upstream_callbacks WHERE job_id = ?"))
        .bind(job_id)
        .execute(&mut *tx.tx)
        .await?;
    Ok(())
}

#[async_trait]
impl Ledger for SqlLedger {
    async fn ping(&self) -> Result<()> {
        sqlx::query(&self.sql("SELECT 1"))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn insert_api_key(&self, tenant: &TenantId, key: &MintedKey) -> Result<ApiKeyRecord> {
        let record = ApiKeyRecord {
            id: format!("key_{}", uuid::Uuid::now_v7().simple()),
            tenant: tenant.clone(),
            prefix: key.display_prefix.clone(),
            created_at: now(),
            revoked_at: None,
            default_webhook: None,
            limits: KeyLimits::default(),
        };
        sqlx::query(&self.sql("INSERT INTO api_keys (id, tenant, key_hash, prefix, created_at) VALUES (?, ?, ?, ?, ?)"))
            .bind(&record.id)
            .bind(&tenant.0)
            .bind(&key.hash)
            .bind(&record.prefix)
            .bind(to_millis(record.created_at))
            .execute(&self.pool)
            .await?;
        Ok(record)
    }

    async fn key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>> {
        sqlx::query(&self.sql(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL"
        )))
        .bind(key_hash)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(key_from_row)
        .transpose()
    }

    async fn set_default_webhook(&self, id_or_prefix: &str, url: Option<&str>) -> Result<u64> {
        Ok(sqlx::query(&self.sql(
            "UPDATE api_keys SET default_webhook = ? WHERE (id = ? OR prefix = ?) AND revoked_at IS NULL",
        ))
        .bind(url)
        .bind(id_or_prefix)
        .bind(id_or_prefix)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    async fn set_key_limits(&self, id_or_prefix: &str, limits: &KeyLimits) -> Result<u64> {
        Ok(sqlx::query(&self.sql(
            "UPDATE api_keys SET rate_per_second = ?, max_active_jobs = ?, daily_spend_micros = ?, max_priority = ? \
             WHERE (id = ? OR prefix = ?) AND revoked_at IS NULL",
        ))
        .bind(limits.rate_per_second.map(i64::from))
        .bind(limits.max_active_jobs.map(i64::from))
        .bind(limits.daily_spend_micros)
        .bind(limits.max_priority.map(|p| p.as_str()))
        .bind(id_or_prefix)
        .bind(id_or_prefix)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    async fn usage_rows(
        &self,
        tenant: &TenantId,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<UsageRow>> {
        let rows = sqlx::query(&self.sql(
            "SELECT j.id, j.model, j.status, j.created_at, a.route, a.number, a.outcome, a.cost_micros \
             FROM jobs j LEFT JOIN attempts a ON a.job_id = j.id \
             WHERE j.tenant = ? AND j.created_at >= ? AND j.created_at < ? \
             ORDER BY j.id, a.number",
        ))
        .bind(&tenant.0)
        .bind(to_millis(from))
        .bind(to_millis(to))
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

    async fn active_jobs_by_model(&self, key_id: &str) -> Result<Vec<(String, u64)>> {
        let rows = sqlx::query(&self.sql(ACTIVE_BY_MODEL))
            .bind(key_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("model")?, r.try_get::<i64, _>("n")?.max(0) as u64)))
            .collect()
    }

    async fn spend_since(&self, key_id: &str, since: Timestamp) -> Result<i64> {
        let spent: Option<i64> = sqlx::query_scalar(&self.sql(SPEND_SINCE))
            .bind(key_id)
            // A job created before the day began may still spend today; a day's jobs are bounded
            // below by the day before, which keeps the scan to two days of the key's jobs.
            .bind(to_millis(since) - 24 * 3600 * 1000)
            .bind(to_millis(since))
            .fetch_one(&self.pool)
            .await?;
        Ok(spent.unwrap_or(0))
    }

    async fn webhook_secrets(&self, key_id: &str, candidate: &str) -> Result<WebhookSecrets> {
        let read = self.sql(
            "SELECT webhook_secret, previous_webhook_secret, previous_secret_until FROM api_keys WHERE id = ?",
        );
        let read = || async {
            sqlx::query(&read)
                .bind(key_id)
                .fetch_optional(&self.pool)
                .await?
                .ok_or_else(|| LedgerError::Corrupt(format!("api key {key_id} vanished")))
        };
        // Read first: a key has its secret after its first delivery, so the write (which a
        // concurrent first delivery may win; the read after it sees the winner) is rare.
        let mut row = read().await?;
        if row
            .try_get::<Option<String>, _>("webhook_secret")?
            .is_none()
        {
            sqlx::query(&self.sql(
                "UPDATE api_keys SET webhook_secret = ? WHERE id = ? AND webhook_secret IS NULL",
            ))
            .bind(candidate)
            .bind(key_id)
            .execute(&self.pool)
            .await?;
            row = read().await?;
        }
        let until: Option<i64> = row.try_get("previous_secret_until")?;
        let live = until.is_some_and(|u| u > to_millis(now()));
        Ok(WebhookSecrets {
            current: row.try_get("webhook_secret")?,
            previous: if live {
                row.try_get("previous_webhook_secret")?
            } else {
                None
            },
        })
    }

    async fn rotate_webhook_secret(
        &self,
        key_id: &str,
        new: &str,
        previous_until: Timestamp,
    ) -> Result<()> {
        sqlx::query(&self.sql(
            "UPDATE api_keys SET previous_webhook_secret = webhook_secret, previous_secret_until = ?, \
                 webhook_secret = ? WHERE id = ?",
        ))
        .bind(to_millis(previous_until))
        .bind(new)
        .bind(key_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn claim_deliveries(
        &self,
        now: Timestamp,
        first_delay: Duration,
        hold: Duration,
        limit: u32,
    ) -> Result<Vec<DueDelivery>> {
        let at = to_millis(now);
        let first_due = at - first_delay.as_millis() as i64;
        let mut tx = self.write_tx().await?;
        let rows = sqlx::query(&self.sql(&format!(
            "SELECT d.id, d.job_id, d.event_type, d.url, d.created_at, d.tries, d.schedule_base, j.key_id, \
                    k.webhook_secret, k.previous_webhook_secret, k.previous_secret_until \
             FROM webhook_deliveries d JOIN jobs j ON j.id = d.job_id \
             LEFT JOIN api_keys k ON k.id = j.key_id \
             WHERE d.status = 'pending' AND d.next_try_at <= ? \
               AND (d.tries > 0 OR d.next_try_at <= ?) \
             ORDER BY d.next_try_at, d.id LIMIT {limit}{}",
            match self.dialect {
                Dialect::Sqlite => "",
                Dialect::Postgres => " FOR UPDATE OF d SKIP LOCKED",
            }
        )))
        .bind(at)
        .bind(first_due)
        .fetch_all(&mut *tx.tx)
        .await?;
        // One token for the whole claim, written in one statement: each delivery's row is
        // fenced by it alone, and a redelivery or a later claim writes a new one.
        let claim_token = uuid::Uuid::new_v4().simple().to_string();
        if !rows.is_empty() {
            // Padded to a power of two with repeats (see `renew_leases`).
            let shape = rows.len().next_power_of_two();
            let marks = vec!["?"; shape].join(", ");
            let update = self
                .sql(&format!(
                    "UPDATE webhook_deliveries SET next_try_at = ?, claim_token = ? WHERE id IN ({marks})"
                ))
                .into_owned();
            let mut query = sqlx::query(&update)
                .bind(at + hold.as_millis() as i64)
                .bind(&claim_token);
            for i in 0..shape {
                query = query.bind(rows[i.min(rows.len() - 1)].try_get::<String, _>("id")?);
            }
            query.execute(&mut *tx.tx).await?;
        }
        let mut due = Vec::with_capacity(rows.len());
        for r in &rows {
            let id: String = r.try_get("id")?;
            let claim_token = claim_token.clone();
            let job_id: String = r.try_get("job_id")?;
            // The key's secrets as `webhook_secrets` shows them (the previous one only while
            // its rotation lasts); none yet, and the deliverer asks for one to be made.
            let previous_until: Option<i64> = r.try_get("previous_secret_until")?;
            let previous: Option<String> = r.try_get("previous_webhook_secret")?;
            let secrets = r
                .try_get::<Option<String>, _>("webhook_secret")?
                .map(|current| WebhookSecrets {
                    current,
                    previous: previous.filter(|_| previous_until.is_some_and(|u| u > at)),
                });
            due.push(DueDelivery {
                id,
                job_id: job_id
                    .parse()
                    .map_err(|_| LedgerError::Corrupt(format!("job id '{job_id}'")))?,
                event_type: r.try_get("event_type")?,
                url: r.try_get("url")?,
                created_at: from_millis(r.try_get("created_at")?),
                tries: r.try_get::<i64, _>("tries")? as u32,
                schedule_base: r.try_get::<i64, _>("schedule_base")? as u32,
                key_id: r.try_get("key_id")?,
                secrets,
                claim_token,
            });
        }
        tx.commit().await?;
        Ok(due)
    }

    async fn finish_delivery_try(
        &self,
        id: &str,
        claim_token: &str,
        tried: &DeliveryTry,
        next: DeliveryNext,
    ) -> Result<bool> {
        let (status, next_try_at, delivered_at) = match next {
            DeliveryNext::Delivered => ("delivered", None, Some(to_millis(tried.at))),
            DeliveryNext::RetryAt(at) => ("pending", Some(to_millis(at)), None),
            DeliveryNext::Failed => ("failed", None, None),
            DeliveryNext::Gone => ("gone", None, None),
        };
        // The fenced update's parameters, first in both statements below.
        let finished = (
            status,
            tried.number as i64,
            next_try_at,
            delivered_at,
            id.to_owned(),
            claim_token.to_owned(),
        );
        type Finished = (&'static str, i64, Option<i64>, Option<i64>, String, String);
        fn bind_finished<'q>(
            statement: &'q str,
            (status, tries, next_try_at, delivered_at, id, token): Finished,
        ) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>> {
            sqlx::query(statement)
                .bind(status)
                .bind(tries)
                .bind(next_try_at)
                .bind(delivered_at)
                .bind(id)
                .bind(token)
        }
        if self.dialect == Dialect::Postgres && next != DeliveryNext::Gone {
            // One statement, so one round trip and no explicit transaction: the fenced
            // update and the try's log row, the row fed by the update (none when the claim
            // was lost). A 410 takes the transaction below: it stops the tenant's other
            // deliveries too.
            let statement = self.sql(
                "WITH finished AS (UPDATE webhook_deliveries SET status = ?, tries = ?, next_try_at = ?, \
                         delivered_at = ?, claim_token = NULL \
                     WHERE id = ? AND claim_token = ? RETURNING id), \
                 tried AS (INSERT INTO webhook_tries (delivery_id, number, at, status_code, latency_ms, error) \
                     SELECT id, ?, ?, ?, ?, ? FROM finished) \
                 SELECT COUNT(*) AS won FROM finished",
            );
            let won: i64 = bind_finished(&statement, finished)
                .bind(tried.number as i64)
                .bind(to_millis(tried.at))
                .bind(tried.status_code.map(i64::from))
                .bind(tried.latency_ms as i64)
                .bind(tried.error.as_deref())
                .fetch_one(&self.pool)
                .await?
                .try_get("won")?;
            return Ok(won > 0);
        }
        let mut tx = self.write_tx().await?;
        // Fenced by the claim: a try whose hold ran out, or that a redelivery overtook, records
        // nothing.
        let statement = self.sql(
            "UPDATE webhook_deliveries SET status = ?, tries = ?, next_try_at = ?, delivered_at = ?, claim_token = NULL \
             WHERE id = ? AND claim_token = ?",
        );
        let changed = bind_finished(&statement, finished)
            .execute(&mut *tx.tx)
            .await?
            .rows_affected();
        if changed == 0 {
            return Ok(false);
        }
        sqlx::query(&self.sql(
            "INSERT INTO webhook_tries (delivery_id, number, at, status_code, latency_ms, error) VALUES (?, ?, ?, ?, ?, ?)",
        ))
        .bind(id)
        .bind(tried.number as i64)
        .bind(to_millis(tried.at))
        .bind(tried.status_code.map(i64::from))
        .bind(tried.latency_ms as i64)
        .bind(tried.error.as_deref())
        .execute(&mut *tx.tx)
        .await?;
        if next == DeliveryNext::Gone {
            // 410: the endpoint wants nothing more from this tenant. The tenant's other pending
            // deliveries to it stop too, and none of its keys keeps it as the default webhook.
            let row = sqlx::query(&self.sql(
                "SELECT d.url, j.tenant FROM webhook_deliveries d JOIN jobs j ON j.id = d.job_id WHERE d.id = ?",
            ))
            .bind(id)
            .fetch_one(&mut *tx.tx)
            .await?;
            let (url, tenant): (String, String) = (row.try_get("url")?, row.try_get("tenant")?);
            sqlx::query(&self.sql(
                "UPDATE webhook_deliveries SET status = 'gone', next_try_at = NULL \
                 WHERE url = ? AND status = 'pending' AND claim_token IS NULL \
                   AND job_id IN (SELECT id FROM jobs WHERE tenant = ?)",
            ))
            .bind(&url)
            .bind(&tenant)
            .execute(&mut *tx.tx)
            .await?;
            sqlx::query(&self.sql(
                "UPDATE api_keys SET default_webhook = NULL WHERE default_webhook = ? AND tenant = ?",
            ))
            .bind(&url)
            .bind(&tenant)
            .execute(&mut *tx.tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn deliveries(&self, tenant: &TenantId, job_id: JobId) -> Result<Option<Vec<Delivery>>> {
        let sid = job_id.to_string();
        let owned: Option<String> =
            sqlx::query_scalar(&self.sql("SELECT id FROM jobs WHERE id = ? AND tenant = ?"))
                .bind(&sid)
                .bind(&tenant.0)
                .fetch_optional(&self.pool)
                .await?;
        if owned.is_none() {
            return Ok(None);
        }
        let rows = sqlx::query(&self.sql(
            "SELECT id, event_type, url, created_at, status, next_try_at, delivered_at \
             FROM webhook_deliveries WHERE job_id = ? ORDER BY created_at, id",
        ))
        .bind(&sid)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let id: String = r.try_get("id")?;
            let tries = sqlx::query(&self.sql(
                "SELECT number, at, status_code, latency_ms, error FROM webhook_tries WHERE delivery_id = ? ORDER BY number",
            ))
            .bind(&id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|t| {
                Ok(DeliveryTry {
                    number: t.try_get::<i64, _>("number")? as u32,
                    at: from_millis(t.try_get("at")?),
                    status_code: t.try_get::<Option<i64>, _>("status_code")?.map(|c| c as u16),
                    latency_ms: t.try_get::<i64, _>("latency_ms")? as u64,
                    error: t.try_get("error")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
            out.push(Delivery {
                id,
                event_type: r.try_get("event_type")?,
                url: r.try_get("url")?,
                created_at: from_millis(r.try_get("created_at")?),
                status: r.try_get("status")?,
                next_try_at: r.try_get::<Option<i64>, _>("next_try_at")?.map(from_millis),
                delivered_at: r
                    .try_get::<Option<i64>, _>("delivered_at")?
                    .map(from_millis),
                tries,
            });
        }
        Ok(Some(out))
    }

    async fn redeliver(&self, tenant: &TenantId, job_id: JobId, delivery_id: &str) -> Result<bool> {
        // Not while a worker holds it (it is being tried now); the schedule starts over.
        let at = to_millis(now());
        let changed = sqlx::query(&self.sql(
            "UPDATE webhook_deliveries SET status = 'pending', next_try_at = ?, schedule_base = tries, \
                 delivered_at = NULL \
             WHERE id = ? AND job_id = ? AND job_id IN (SELECT id FROM jobs WHERE id = ? AND tenant = ?) \
               AND NOT (status = 'pending' AND claim_token IS NOT NULL AND next_try_at > ?)",
        ))
        .bind(at)
        .bind(delivery_id)
        .bind(job_id.to_string())
        .bind(job_id.to_string())
        .bind(&tenant.0)
        .bind(at)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(changed == 1)
    }

    async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>> {
        sqlx::query(&self.sql(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at, id"
        )))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(key_from_row)
        .collect()
    }

    async fn revoke_api_key(&self, id_or_prefix: &str) -> Result<u64> {
        Ok(sqlx::query(&self.sql(
            "UPDATE api_keys SET revoked_at = ? WHERE (id = ? OR prefix = ?) AND revoked_at IS NULL",
        ))
        .bind(to_millis(now()))
        .bind(id_or_prefix)
        .bind(id_or_prefix)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    async fn count_api_keys(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(&self.sql("SELECT COUNT(*) FROM api_keys"))
            .fetch_one(&self.pool)
            .await?;
        Ok(n as u64)
    }

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
            attempts: vec![],
            outputs: vec![],
        })
    }

    async fn get_job(&self, tenant: &TenantId, id: JobId) -> Result<Option<Job>> {
        let row = sqlx::query(&self.sql(&format!(
            "{} FROM jobs WHERE id = ? AND tenant = ?",
            self.job_select()
        )))
        .bind(id.to_string())
        .bind(&tenant.0)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(|row| self.load_job(row)).transpose()
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

    async fn begin_idempotent(
        &self,
        key: &IdempotencyRef,
        fingerprint: &str,
        lock_for: Duration,
        keep_for: Duration,
    ) -> Result<IdempotencyBegin> {
        let at = to_millis(now());
        let locked_until = at + lock_for.as_millis() as i64;
        let mut tx = self.write_tx().await?;
        let row = sqlx::query(&self.sql(&format!(
            "SELECT fingerprint, locked_until, resource_id, status_code, response_headers, response_body, expires_at \
             FROM idempotency_keys WHERE key_id = ? AND idem_key = ?{}",
            self.dialect.lock_rows()
        )))
        .bind(&key.key_id)
        .bind(&key.key)
        .fetch_optional(&mut *tx.tx)
        .await?;
        let begin = match row {
            Some(row) if row.try_get::<i64, _>("expires_at")? > at => {
                let status: Option<i64> = row.try_get("status_code")?;
                let locked: Option<i64> = row.try_get("locked_until")?;
                let resource: Option<String> = row.try_get("resource_id")?;
                if row.try_get::<String, _>("fingerprint")? != fingerprint {
                    IdempotencyBegin::Mismatch
                } else if let Some(status) = status {
                    let headers: String = row.try_get("response_headers")?;
                    IdempotencyBegin::Replay(StoredResponse {
                        status: status as u16,
                        headers: serde_json::from_str(&headers).map_err(|e| {
                            LedgerError::Corrupt(format!("idempotent response headers: {e}"))
                        })?,
                        body: row.try_get("response_body")?,
                    })
                } else if locked.is_some_and(|l| l > at) {
                    IdempotencyBegin::InFlight
                } else if let Some(resource) = resource {
                    IdempotencyBegin::Created(resource.parse().map_err(|_| {
                        LedgerError::Corrupt(format!("idempotent resource '{resource}'"))
                    })?)
                } else {
                    // Its request died before creating anything: this one takes the key over.
                    sqlx::query(&self.sql(
                        "UPDATE idempotency_keys SET locked_until = ? WHERE key_id = ? AND idem_key = ?",
                    ))
                    .bind(locked_until)
                    .bind(&key.key_id)
                    .bind(&key.key)
                    .execute(&mut *tx.tx)
                    .await?;
                    IdempotencyBegin::Started
                }
            }
            expired => {
                if expired.is_some() {
                    sqlx::query(
                        &self.sql("DELETE FROM idempotency_keys WHERE key_id = ? AND idem_key = ?"),
                    )
                    .bind(&key.key_id)
                    .bind(&key.key)
                    .execute(&mut *tx.tx)
                    .await?;
                }
                // Two first uses at once: one inserts, the other finds the key taken.
                let inserted = sqlx::query(&self.sql(
                    "INSERT INTO idempotency_keys (key_id, idem_key, fingerprint, locked_until, created_at, expires_at) \
                     VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key_id, idem_key) DO NOTHING",
                ))
                .bind(&key.key_id)
                .bind(&key.key)
                .bind(fingerprint)
                .bind(locked_until)
                .bind(at)
                .bind(at + keep_for.as_millis() as i64)
                .execute(&mut *tx.tx)
                .await?
                .rows_affected();
                if inserted == 1 {
                    IdempotencyBegin::Started
                } else {
                    IdempotencyBegin::InFlight
                }
            }
        };
        tx.commit().await?;
        Ok(begin)
    }

    async fn complete_idempotent(
        &self,
        key: &IdempotencyRef,
        response: &StoredResponse,
    ) -> Result<()> {
        let headers = serde_json::to_string(&response.headers)
            .map_err(|e| LedgerError::Corrupt(format!("idempotent response headers: {e}")))?;
        sqlx::query(&self.sql(
            "UPDATE idempotency_keys SET status_code = ?, response_headers = ?, response_body = ?, locked_until = NULL \
             WHERE key_id = ? AND idem_key = ?",
        ))
        .bind(i64::from(response.status))
        .bind(headers)
        .bind(&response.body)
        .bind(&key.key_id)
        .bind(&key.key)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn abandon_idempotent(&self, key: &IdempotencyRef) -> Result<()> {
        sqlx::query(&self.sql(
            "DELETE FROM idempotency_keys WHERE key_id = ? AND idem_key = ? AND status_code IS NULL AND resource_id IS NULL",
        ))
        .bind(&key.key_id)
        .bind(&key.key)
        .execute(&self.pool)
        .await?;
        // Something was created before the failure: unlock, so a retry is answered with it.
        sqlx::query(&self.sql(
            "UPDATE idempotency_keys SET locked_until = NULL \
             WHERE key_id = ? AND idem_key = ? AND status_code IS NULL AND resource_id IS NOT NULL",
        ))
        .bind(&key.key_id)
        .bind(&key.key)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn purge_idempotency(&self, now: Timestamp, limit: u32) -> Result<u64> {
        let done = sqlx::query(&self.sql(&format!(
            "DELETE FROM idempotency_keys WHERE (key_id, idem_key) IN \
             (SELECT key_id, idem_key FROM idempotency_keys WHERE expires_at <= ? LIMIT {limit})"
        )))
        .bind(to_millis(now))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn queue_position(&self, id: JobId) -> Result<Option<u64>> {
        let sid = id.to_string();
        // One statement, so the job's status and the count are read at the same moment.
        // Counted up to QUEUE_POSITION_CAP: past that a client learns only "at least", and a
        // deep queue does not make every read of a queued job scan it. Counted backwards from
        // the job: the index's oldest end holds the entries of jobs claimed since the last
        // vacuum, each a row visit to learn it is gone, while the jobs just ahead are live.
        let ahead: Option<i64> = sqlx::query_scalar(&self.sql(&format!(
            "SELECT (SELECT COUNT(*) FROM (SELECT 1 FROM jobs q WHERE q.status = 'queued' AND q.id < j.id \
                     ORDER BY q.id DESC LIMIT {QUEUE_POSITION_CAP}) a) \
             FROM jobs j WHERE j.id = ? AND j.status = 'queued'"
        )))
        .bind(&sid)
        .fetch_optional(&self.pool)
        .await?;
        Ok(ahead.map(|n| n.max(0) as u64))
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

    async fn mark_unrung(&self, id: JobId) -> Result<()> {
        sqlx::query(&self.sql("UPDATE jobs SET rung_at = 0 WHERE id = ?"))
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn mark_rung(&self, id: JobId) -> Result<()> {
        sqlx::query(&self.sql("UPDATE jobs SET rung_at = ? WHERE id = ?"))
            .bind(to_millis(now()))
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn claim(
        &self,
        id: JobId,
        worker: &str,
        route: &str,
        lease_for: Duration,
    ) -> Result<Option<Claim>> {
        let written = self
            .group
            .write(GroupWrite::Claim {
                id,
                worker: worker.to_owned(),
                route: route.to_owned(),
                lease_for,
            })
            .await?;
        let GroupWritten::Claimed(claimed) = written else {
            unreachable!("a claim is answered with a claim")
        };
        let Some(claimed) = claimed else {
            return Ok(None);
        };
        let Claimed {
            job,
            token,
            attempt_id,
            admitted,
        } = *claimed;
        let number = job.attempt_count;
        Ok(Some(Claim {
            job,
            lease: Lease {
                job_id: id,
                token,
                attempt_id,
            },
            attempt_number: number,
            admitted,
        }))
    }

    async fn record_progress(&self, job_id: JobId, upstream_id: &str, percent: u8) -> Result<()> {
        sqlx::query(&self.sql(
            "UPDATE attempts SET progress = ? \
             WHERE job_id = ? AND upstream_id = ? AND finished_at IS NULL",
        ))
        .bind(i64::from(percent.min(100)))
        .bind(job_id.to_string())
        .bind(upstream_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn annotate_attempt(&self, lease: &Lease, note: AttemptNote<'_>) -> Result<()> {
        sqlx::query(&self.sql(
            "UPDATE attempts SET route = COALESCE(?, route), error_class = COALESCE(?, error_class), \
                 upstream_id = COALESCE(?, upstream_id), cost_micros = COALESCE(?, cost_micros), \
                 progress = CASE WHEN finished_at IS NULL THEN COALESCE(?, progress) ELSE progress END \
             WHERE id = ?",
        ))
        .bind(note.route)
        .bind(note.error_class)
        .bind(note.upstream_id)
        .bind(note.cost_micros)
        .bind(note.progress_percent.map(i64::from))
        .bind(&lease.attempt_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn insert_pipeline(
        &self,
        pipeline: NewPipeline,
    ) -> Result<(Pipeline, Vec<(JobId, crate::dispatch::Lane)>)> {
        let deps = crate::pipeline::plan(&pipeline.steps).map_err(|e| {
            LedgerError::Corrupt(format!(
                "an unchecked pipeline reached the ledger: {}",
                e.message
            ))
        })?;
        let at = to_millis(now());
        let pid = pipeline.id.to_string();
        let mut tx = self.write_tx().await?;
        sqlx::query(&self.sql(
            "INSERT INTO pipelines (id, tenant, key_id, status, webhook_url, webhook_events, created_at, priority) \
             VALUES (?, ?, ?, 'running', ?, ?, ?, ?)",
        ))
        .bind(&pid)
        .bind(&pipeline.tenant.0)
        .bind(pipeline.key_id.as_deref())
        .bind(pipeline.webhook_url.as_deref())
        .bind(pipeline.webhook_events.as_ref().map(|e| e.join(",")))
        .bind(at)
        .bind(pipeline.priority.as_str())
        .execute(&mut *tx.tx)
        .await?;
        if let Some(key) = &pipeline.idempotency {
            link_idempotent(&mut tx, key, &pid).await?;
        }
        for (position, (step, depends_on)) in pipeline.steps.iter().zip(&deps).enumerate() {
            sqlx::query(&self.sql(
                "INSERT INTO pipeline_steps (pipeline_id, name, position, model, input, depends_on) VALUES (?, ?, ?, ?, ?, ?)",
            ))
            .bind(&pid)
            .bind(&step.name)
            .bind(position as i64)
            .bind(&step.model)
            .bind(step.input.to_string())
            .bind(depends_on.iter().cloned().collect::<Vec<_>>().join(","))
            .execute(&mut *tx.tx)
            .await?;
        }
        let started = advance_in(&mut tx, &pid, at, pipeline.max_active).await?;
        tx.commit().await?;
        let created = self
            .get_pipeline(&pipeline.tenant, pipeline.id)
            .await?
            .ok_or_else(|| LedgerError::Corrupt(format!("pipeline {pid} vanished after insert")))?;
        Ok((created, started))
    }

    async fn advance_pipeline(&self, id: JobId) -> Result<Vec<(JobId, crate::dispatch::Lane)>> {
        let mut tx = self.write_tx().await?;
        let started = advance_in(&mut tx, &id.to_string(), to_millis(now()), None).await?;
        tx.commit().await?;
        Ok(started)
    }

    async fn list_pipelines(&self, tenant: &TenantId, filter: &JobFilter) -> Result<Vec<Pipeline>> {
        let filter = JobFilter {
            model: None,
            ..filter.clone()
        };
        let sql = self
            .sql(&page_sql("SELECT id FROM pipelines", &filter))
            .into_owned();
        let ids: Vec<String> = bind_page(sqlx::query(&sql), tenant, &filter)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.try_get("id"))
            .collect::<std::result::Result<_, _>>()?;
        let mut pipelines = Vec::with_capacity(ids.len());
        for id in ids {
            let id = id
                .parse()
                .map_err(|_| LedgerError::Corrupt(format!("pipeline id '{id}'")))?;
            // A pipeline is never deleted, so one listed a moment ago is still there.
            if let Some(p) = self.get_pipeline(tenant, id).await? {
                pipelines.push(p);
            }
        }
        Ok(pipelines)
    }

    async fn get_pipeline(&self, tenant: &TenantId, id: JobId) -> Result<Option<Pipeline>> {
        let pid = id.to_string();
        let Some(row) = sqlx::query(&self.sql(
            "SELECT id, tenant, status, error_code, error_message, created_at, completed_at, webhook_url, webhook_events \
             FROM pipelines WHERE id = ? AND tenant = ?",
        ))
        .bind(&pid)
        .bind(&tenant.0)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let steps = sqlx::query(&self.sql(
            "SELECT s.name, s.model, s.depends_on, s.job_id, j.status AS job_status \
             FROM pipeline_steps s LEFT JOIN jobs j ON j.id = s.job_id \
             WHERE s.pipeline_id = ? ORDER BY s.position",
        ))
        .bind(&pid)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            let depends_on: String = r.try_get("depends_on")?;
            Ok(PipelineStep {
                name: r.try_get("name")?,
                model: r.try_get("model")?,
                depends_on: depends_on
                    .split(',')
                    .filter(|d| !d.is_empty())
                    .map(str::to_owned)
                    .collect(),
                job_id: r
                    .try_get::<Option<String>, _>("job_id")?
                    .map(|j| {
                        j.parse()
                            .map_err(|_| LedgerError::Corrupt(format!("job id '{j}'")))
                    })
                    .transpose()?,
                job_status: r
                    .try_get::<Option<String>, _>("job_status")?
                    .map(|s| s.parse().map_err(LedgerError::Corrupt))
                    .transpose()?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
        let code: Option<String> = row.try_get("error_code")?;
        let message: Option<String> = row.try_get("error_message")?;
        let status: String = row.try_get("status")?;
        Ok(Some(Pipeline {
            id,
            tenant: TenantId(row.try_get("tenant")?),
            status: status.parse().map_err(LedgerError::Corrupt)?,
            error: code.map(|c| ErrorInfo::new(c, message.unwrap_or_default())),
            created_at: from_millis(row.try_get("created_at")?),
            completed_at: row
                .try_get::<Option<i64>, _>("completed_at")?
                .map(from_millis),
            webhook_url: row.try_get("webhook_url")?,
            webhook_events: row
                .try_get::<Option<String>, _>("webhook_events")?
                .map(|l| l.split(',').map(str::to_owned).collect()),
            steps,
        }))
    }

    async fn cancel_pipeline(&self, tenant: &TenantId, id: JobId) -> Result<Option<Pipeline>> {
        let pid = id.to_string();
        let at = to_millis(now());
        let mut tx = self.write_tx().await?;
        let status: Option<String> = sqlx::query_scalar(&self.sql(&format!(
            "SELECT status FROM pipelines WHERE id = ? AND tenant = ?{}",
            self.dialect.lock_rows()
        )))
        .bind(&pid)
        .bind(&tenant.0)
        .fetch_optional(&mut *tx.tx)
        .await?;
        let Some(status) = status else {
            return Ok(None);
        };
        if status == "running" {
            end_pipeline(
                &mut tx,
                &pid,
                Status::Canceled,
                "canceled",
                "the pipeline was canceled",
                at,
            )
            .await?;
        }
        tx.commit().await?;
        self.get_pipeline(tenant, id).await
    }

    async fn active_pipelines(&self, limit: u32) -> Result<Vec<JobId>> {
        let ids: Vec<String> = sqlx::query_scalar(&self.sql(&format!(
            "SELECT id FROM pipelines WHERE status = 'running' ORDER BY id LIMIT {limit}"
        )))
        .fetch_all(&self.pool)
        .await?;
        ids.iter()
            .map(|i| {
                i.parse()
                    .map_err(|_| LedgerError::Corrupt(format!("pipeline id '{i}'")))
            })
            .collect()
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

    async fn record_callback(&self, job_id: JobId, upstream_id: &str, body: &str) -> Result<bool> {
        // Only a job still in flight takes a callback: one for a finished job is stale.
        let stored = sqlx::query(&self.sql(
            "INSERT INTO upstream_callbacks (job_id, upstream_id, body, received_at) \
             SELECT id, ?, ?, ? FROM jobs WHERE id = ? AND status IN ('queued', 'running') \
             ON CONFLICT (job_id, upstream_id) DO NOTHING",
        ))
        .bind(upstream_id)
        .bind(body)
        .bind(to_millis(now()))
        .bind(job_id.to_string())
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(stored == 1)
    }

    async fn callback(&self, job_id: JobId, upstream_id: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar(
            &self.sql("SELECT body FROM upstream_callbacks WHERE job_id = ? AND upstream_id = ?"),
        )
        .bind(job_id.to_string())
        .bind(upstream_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn renew_lease(&self, lease: &Lease, lease_for: Duration) -> Result<bool> {
        self.renewals.renew(lease, lease_for).await
    }

    async fn succeed(&self, lease: &Lease, outputs: &[NewOutput]) -> Result<bool> {
        let written = self
            .group
            .write(GroupWrite::Succeed {
                lease: lease.clone(),
                outputs: outputs.to_vec(),
                at: to_millis(now()),
            })
            .await?;
        let GroupWritten::Succeeded(won) = written else {
            unreachable!("a success is answered with a success")
        };
        Ok(won)
    }

    async fn fail(&self, lease: &Lease, error: &ErrorInfo) -> Result<bool> {
        let at = to_millis(now());
        let mut tx = self.write_tx().await?;
        let won = leave_running(
            &mut tx,
            lease,
            Status::Failed,
            Some(error),
            None,
            AttemptOutcome::Failed,
            at,
        )
        .await?;
        tx.commit().await?;
        Ok(won)
    }

    async fn retry_later(
        &self,
        lease: &Lease,
        error: &ErrorInfo,
        run_after: Timestamp,
    ) -> Result<bool> {
        let at = to_millis(now());
        let mut tx = self.write_tx().await?;
        let won = leave_running(
            &mut tx,
            lease,
            Status::Queued,
            Some(error),
            Some(to_millis(run_after)),
            AttemptOutcome::Failed,
            at,
        )
        .await?;
        if won {
            // Unrung: once due, the reconciler rings it unless the retry timer does first.
            sqlx::query(&self.sql("UPDATE jobs SET rung_at = 0 WHERE id = ?"))
                .bind(lease.job_id.to_string())
                .execute(&mut *tx.tx)
                .await?;
        }
        tx.commit().await?;
        Ok(won)
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        let at = to_millis(now());
        let mut tx = self.write_tx().await?;
        let won = leave_running(
            &mut tx,
            lease,
            Status::Queued,
            None,
            Some(at),
            AttemptOutcome::Released,
            at,
        )
        .await?;
        tx.commit().await?;
        Ok(won)
    }

    async fn close_attempt(
        &self,
        lease: &Lease,
        outcome: AttemptOutcome,
        error: Option<&ErrorInfo>,
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        finish_attempt(&mut tx, &lease.attempt_id, outcome, error, to_millis(now())).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn job_by_id(&self, id: JobId) -> Result<Option<Job>> {
        let row = sqlx::query(&self.sql(&format!("{} FROM jobs WHERE id = ?", self.job_select())))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(|row| self.load_job(row)).transpose()
    }

    async fn claim_upstream_stops(
        &self,
        limit: u32,
        hold: Duration,
    ) -> Result<Vec<crate::ledger::UpstreamStop>> {
        let at = to_millis(now());
        let until = at + hold.as_millis() as i64;
        // The outer condition is checked again on the row a concurrent claim may have just
        // taken (Postgres re-reads it), so two workers do not both take one stop.
        let rows = sqlx::query(&self.sql(&format!(
            "UPDATE upstream_stops SET claimed_until = ?, tries = tries + 1 \
             WHERE claimed_until <= ? AND job_id IN \
                 (SELECT job_id FROM upstream_stops WHERE claimed_until <= ? ORDER BY created_at LIMIT {limit}) \
             RETURNING job_id, model, route, upstream_id, tries"
        )))
        .bind(until)
        .bind(at)
        .bind(at)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let id: String = r.try_get("job_id")?;
                Ok(crate::ledger::UpstreamStop {
                    job_id: id
                        .parse()
                        .map_err(|_| LedgerError::Corrupt(format!("job id '{id}'")))?,
                    model: r.try_get("model")?,
                    route: r.try_get("route")?,
                    upstream_id: r.try_get("upstream_id")?,
                    tries: r.try_get::<i64, _>("tries")? as u32,
                })
            })
            .collect()
    }

    async fn finish_upstream_stop(&self, job_id: JobId) -> Result<()> {
        sqlx::query(&self.sql("DELETE FROM upstream_stops WHERE job_id = ?"))
            .bind(job_id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
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
        let sql = self
            .sql(&format!(
                "{} FROM jobs WHERE id IN ({marks})",
                self.job_select()
            ))
            .into_owned();
        let mut query = sqlx::query(&sql);
        for i in 0..shape {
            query = query.bind(ids[i.min(ids.len() - 1)].to_string());
        }
        query
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| self.load_job(row))
            .collect()
    }

    async fn transitions(&self, id: JobId) -> Result<Vec<Transition>> {
        sqlx::query(&self.sql("SELECT from_status, to_status, reason, at FROM job_transitions WHERE job_id = ? ORDER BY seq"))
            .bind(id.to_string())
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| {
                Ok(Transition {
                    from: r
                        .try_get::<Option<String>, _>("from_status")?
                        .map(|s| s.parse())
                        .transpose()
                        .map_err(LedgerError::Corrupt)?,
                    to: r.try_get::<String, _>("to_status")?.parse().map_err(LedgerError::Corrupt)?,
                    reason: r.try_get("reason")?,
                    at: from_millis(r.try_get("at")?),
                })
            })
            .collect()
    }

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
            .execute(&self.pool)
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
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(changed == 1)
    }

    async fn release_worker_slot(&self, identity: &str, holder: &str) -> Result<()> {
        sqlx::query(&self.sql("DELETE FROM worker_slots WHERE identity = ? AND holder = ?"))
            .bind(identity)
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn expire_leases_of(&self, identity: &str) -> Result<u64> {
        Ok(sqlx::query(&self.sql(
            "UPDATE jobs SET lease_expires_at = 0 WHERE status = 'running' AND lease_owner = ?",
        ))
        .bind(identity)
        .execute(&self.pool)
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
            if rescued as u32 >= max_rescues {
                let message = format!(
                    "the job's worker was lost {} times (the rescue limit is {max_rescues}); it was not run again",
                    rescued + 1
                );
                sqlx::query(&self.sql(
                    "UPDATE jobs SET status = 'failed', error_code = 'rescue_limit_exceeded', error_message = ?, \
                         completed_at = ?, lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL \
                     WHERE id = ? AND status = 'running' AND lease_token = ?",
                ))
                .bind(&message)
                .bind(at)
                .bind(&sid)
                .bind(&token)
                .execute(&mut *tx.tx)
                .await?;
                record_transition(
                    &mut tx,
                    &sid,
                    Some(Status::Running),
                    Status::Failed,
                    Some("rescue_limit_exceeded"),
                    at,
                )
                .await?;
                rescues.push(Rescue::GaveUp(job_id));
            } else {
                sqlx::query(&self.sql(
                    "UPDATE jobs SET status = 'queued', rescue_count = rescue_count + 1, run_after = ?, rung_at = ?, \
                         lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL \
                     WHERE id = ? AND status = 'running' AND lease_token = ?",
                ))
                .bind(at)
                .bind(at)
                .bind(&sid)
                .bind(&token)
                .execute(&mut *tx.tx)
                .await?;
                record_transition(
                    &mut tx,
                    &sid,
                    Some(Status::Running),
                    Status::Queued,
                    Some("rescued"),
                    at,
                )
                .await?;
                rescues.push(Rescue::Requeued(job_id, lane));
            }
        }
        tx.commit().await?;
        Ok(rescues)
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

    async fn expired_outputs(&self, now: Timestamp, limit: u32) -> Result<Vec<ExpiredOutput>> {
        sqlx::query(&self.sql(
            "SELECT job_id, idx, object_key FROM outputs WHERE deleted_at IS NULL AND expires_at <= ? \
             ORDER BY expires_at LIMIT ?",
        ))
        .bind(to_millis(now))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            let sid: String = r.try_get("job_id")?;
            Ok(ExpiredOutput {
                job_id: sid.parse().map_err(|_| LedgerError::Corrupt(sid.clone()))?,
                index: r.try_get::<i64, _>("idx")? as u32,
                object_key: r.try_get("object_key")?,
            })
        })
        .collect()
    }

    async fn mark_output_deleted(&self, job_id: JobId, index: u32) -> Result<()> {
        sqlx::query(&self.sql(
            "UPDATE outputs SET deleted_at = ? WHERE job_id = ? AND idx = ? AND deleted_at IS NULL",
        ))
        .bind(to_millis(now()))
        .bind(job_id.to_string())
        .bind(index as i64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

// --- Group commit ------------------------------------------------------------------------------

/// Most writes one grouped transaction carries.
const GROUP_MAX: usize = 64;

/// A per-job write that may share its transaction with other jobs' writes (`GroupCommit`).
/// An insert and a success carry the time they were asked at (an insert's answer shows it);
/// a claim is timed as it is written.
enum GroupWrite {
    Insert {
        job: Box<NewJob>,
        at: i64,
    },
    /// Timed when it is written (its lease runs from then, not from when it was queued).
    Claim {
        id: JobId,
        worker: String,
        route: String,
        lease_for: Duration,
    },
    Succeed {
        lease: Lease,
        outputs: Vec<NewOutput>,
        at: i64,
    },
}

impl GroupWrite {
    /// The row each write locks first: a group's writes are applied in this order, so two
    /// groups in flight lock shared rows (an API key's, for the active-job limit) in the same
    /// order and cannot deadlock on them.
    fn lock_order(&self) -> (u8, String) {
        match self {
            GroupWrite::Insert { job, .. } => (0, job.key_id.clone().unwrap_or_default()),
            GroupWrite::Claim { id, .. } => (1, id.to_string()),
            GroupWrite::Succeed { lease, .. } => (1, lease.job_id.to_string()),
        }
    }

    async fn apply(&self, tx: &mut Tx) -> Result<GroupWritten> {
        Ok(match self {
            // A key's limits (active jobs, spend) are answers, not failures: nothing was
            // written when one refuses, so the rest of the group goes on.
            GroupWrite::Insert { job, at } => match insert_job_in(tx, job, None, *at).await {
                Err(e @ (LedgerError::ActiveJobLimit(_) | LedgerError::SpendCap { .. })) => {
                    GroupWritten::Inserted(Err(e))
                }
                inserted => GroupWritten::Inserted(Ok(inserted?)),
            },
            GroupWrite::Claim {
                id,
                worker,
                route,
                lease_for,
            } => GroupWritten::Claimed(
                claim_in(tx, *id, worker, route, *lease_for, to_millis(now())).await?,
            ),
            GroupWrite::Succeed { lease, outputs, at } => {
                GroupWritten::Succeeded(succeed_in(tx, lease, outputs, *at).await?)
            }
        })
    }
}

enum GroupWritten {
    /// Admitted to the queue (or held); `Err` with the key's limit that refused it.
    Inserted(std::result::Result<bool, LedgerError>),
    Claimed(Option<Box<Claimed>>),
    Succeeded(bool),
}

type Pending = (
    GroupWrite,
    tokio::sync::oneshot::Sender<Result<GroupWritten>>,
);

/// Group commit for the writes every job makes (insert, claim, success): concurrent callers'
/// writes go into one transaction, so a busy ledger pays one `BEGIN`/`COMMIT` (and one WAL
/// flush) per group instead of per write. A group is whatever is waiting when a transaction
/// slot frees, so a lone write waits for nothing, and under load groups grow by themselves.
/// If a group fails (one write's statement errs, or the database picks it as a deadlock's
/// victim), nothing of it was written, and each of its writes is written again alone, so one
/// write's error is its own.
struct GroupCommit {
    queue: tokio::sync::mpsc::UnboundedSender<Pending>,
}

impl GroupCommit {
    /// `slots`: groups in flight at once (SQLite writes one at a time anyway).
    fn start(pool: AnyPool, dialect: Dialect, window: Arc<AtomicU32>, slots: usize) -> Self {
        let (queue, mut waiting) = tokio::sync::mpsc::unbounded_channel::<Pending>();
        tokio::spawn(async move {
            let slots = Arc::new(tokio::sync::Semaphore::new(slots));
            while let Some(first) = waiting.recv().await {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let mut group = vec![first];
                while group.len() < GROUP_MAX {
                    match waiting.try_recv() {
                        Ok(next) => group.push(next),
                        Err(_) => break,
                    }
                }
                let (pool, window) = (pool.clone(), window.clone());
                tokio::spawn(async move {
                    write_group(&pool, dialect, &window, group).await;
                    drop(slot);
                });
            }
        });
        GroupCommit { queue }
    }

    async fn write(&self, write: GroupWrite) -> Result<GroupWritten> {
        let (reply, written) = tokio::sync::oneshot::channel();
        self.queue
            .send((write, reply))
            .map_err(|_| LedgerError::WriterStopped)?;
        written.await.map_err(|_| LedgerError::WriterStopped)?
    }
}

async fn write_group(
    pool: &AnyPool,
    dialect: Dialect,
    window: &AtomicU32,
    mut group: Vec<Pending>,
) {
    // A write whose caller has gone (a worker stopped, a client hung up) is not made: before
    // grouping, dropping the caller dropped its transaction, and a claim nobody holds would
    // leave its job running until the lease ran out.
    group.retain(|(_, reply)| !reply.is_closed());
    if group.len() > 1 {
        group.sort_by_cached_key(|(write, _)| write.lock_order());
        let writes: Vec<&GroupWrite> = group.iter().map(|(w, _)| w).collect();
        match write_in_one(pool, dialect, window, &writes).await {
            Ok(written) => {
                for ((_, reply), written) in group.into_iter().zip(written) {
                    let _ = reply.send(Ok(written));
                }
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, writes = group.len(), "a grouped write failed; writing each alone");
            }
        }
    }
    for (write, reply) in group {
        let written = write_in_one(pool, dialect, window, &[&write]).await;
        let _ = reply.send(written.map(|mut w| w.remove(0)));
    }
}

async fn write_in_one(
    pool: &AnyPool,
    dialect: Dialect,
    window: &AtomicU32,
    writes: &[&GroupWrite],
) -> Result<Vec<GroupWritten>> {
    let mut tx = begin_write(pool, dialect, window).await?;
    let mut written = Vec::with_capacity(writes.len());
    for write in writes {
        written.push(write.apply(&mut tx).await?);
    }
    tx.commit().await?;
    Ok(written)
}

// --- Lease renewals --------------------------------------------------------------------------

/// Most leases one renewal statement carries.
const RENEWALS_MAX: usize = 256;

type PendingRenewal = (Lease, Duration, tokio::sync::oneshot::Sender<Result<bool>>);

/// Lease renewals of many running jobs in one statement. Every running job renews its lease
/// every few seconds (a worker holding 10,000 long upstream calls renews 2,000 a second); each
/// renewal is fenced by its token and changes one column, so whatever renewals are waiting
/// when the previous statement ends go together as one `UPDATE … RETURNING id`, and each
/// learns from the returned ids whether it still holds its job. If the statement fails, each
/// renewal is tried alone, so each gets its own answer.
struct LeaseRenewals {
    queue: tokio::sync::mpsc::UnboundedSender<PendingRenewal>,
}

impl LeaseRenewals {
    fn start(pool: AnyPool, dialect: Dialect) -> Self {
        let (queue, mut waiting) = tokio::sync::mpsc::unbounded_channel::<PendingRenewal>();
        tokio::spawn(async move {
            while let Some(first) = waiting.recv().await {
                let mut batch = vec![first];
                while batch.len() < RENEWALS_MAX {
                    match waiting.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                // Callers gone (their job ended meanwhile) need no renewal.
                batch.retain(|(_, _, reply)| !reply.is_closed());
                renew_batch(&pool, dialect, batch).await;
            }
        });
        LeaseRenewals { queue }
    }

    async fn renew(&self, lease: &Lease, lease_for: Duration) -> Result<bool> {
        let (reply, renewed) = tokio::sync::oneshot::channel();
        self.queue
            .send((lease.clone(), lease_for, reply))
            .map_err(|_| LedgerError::WriterStopped)?;
        renewed.await.map_err(|_| LedgerError::WriterStopped)?
    }
}

async fn renew_batch(pool: &AnyPool, dialect: Dialect, batch: Vec<PendingRenewal>) {
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
async fn renew_leases(
    pool: &AnyPool,
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
        .fetch_all(pool)
        .await?
        .iter()
        .map(|row| Ok((row.try_get("id")?, row.try_get("lease_token")?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    async fn fresh() -> (Arc<dyn Ledger>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
        (Arc::new(SqlLedger::open(&url).await.unwrap()), dir)
    }

    #[test]
    fn placeholders_become_numbered_for_postgres() {
        let q = "UPDATE jobs SET a = ? WHERE id = ? AND b IN (?, ?)";
        assert_eq!(Dialect::Sqlite.sql(q), q);
        assert_eq!(
            Dialect::Postgres.sql(q),
            "UPDATE jobs SET a = $1 WHERE id = $2 AND b IN ($3, $4)"
        );
        // A question mark in quoted text is text.
        let q = "SELECT 'a?', ? FROM \"odd?\" WHERE m = 'it''s ?' AND n = ?";
        assert_eq!(
            Dialect::Postgres.sql(q),
            "SELECT 'a?', $1 FROM \"odd?\" WHERE m = 'it''s ?' AND n = $2"
        );
    }

    #[test]
    fn passwords_stay_out_of_errors() {
        assert_eq!(
            redact("postgres://kiln:hunter2@db:5432/kiln"),
            "postgres://kiln:***@db:5432/kiln"
        );
        assert!(!redact("mysql://u:hunter2@h/db").contains("hunter2"));
    }

    /// A group of writes that fails (one of them breaks a key) is written again write by write;
    /// its transitions are counted once, when a transaction that holds them commits. Returns
    /// how many `queued` transitions were counted for 21 committed jobs, on a ledger of `fresh`.
    fn queued_transitions_counted<F, G>(fresh: impl FnOnce() -> F) -> u64
    where
        F: std::future::Future<Output = (Arc<dyn Ledger>, G)>,
    {
        use crate::ledger::contract::job_of;
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};
        let recorder = DebuggingRecorder::new();
        let snapshots = recorder.snapshotter();
        // A thread-local recorder and a runtime on this thread: only this test's counts.
        metrics::with_local_recorder(&recorder, || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    let (ledger, _guard) = fresh().await;
                    let job = |id: JobId| NewJob { id, ..job_of("a") };
                    let taken = JobId::new();
                    ledger.insert_job(job(taken)).await.unwrap();
                    // Twenty good inserts and one whose id is taken, all at once: they share a
                    // group, which the taken id fails.
                    let writes = (0..20)
                        .map(|_| job(JobId::new()))
                        .chain(std::iter::once(job(taken)))
                        .map(|j| ledger.insert_job(j));
                    let results = futures::future::join_all(writes).await;
                    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 20);
                    assert!(results.last().unwrap().is_err());
                });
        });
        snapshots
            .snapshot()
            .into_vec()
            .into_iter()
            .filter(|(key, _, _, _)| {
                key.key().name() == "kiln_job_transitions_total"
                    && key.key().labels().any(|l| l.value() == "queued")
            })
            .map(|(_, _, _, value)| match value {
                DebugValue::Counter(n) => n,
                _ => 0,
            })
            .sum()
    }

    #[test]
    fn a_group_written_again_counts_its_transitions_once() {
        assert_eq!(
            queued_transitions_counted(fresh),
            21,
            "each committed job counted once"
        );
    }

    crate::ledger_contract_tests!(fresh());

    mod postgres {
        use super::*;
        use crate::testing::PostgresDatabase;

        async fn fresh() -> (Arc<dyn Ledger>, PostgresDatabase) {
            let db = PostgresDatabase::create().await;
            (Arc::new(SqlLedger::open(&db.url).await.unwrap()), db)
        }

        #[test]
        fn a_group_written_again_counts_its_transitions_once() {
            assert_eq!(super::queued_transitions_counted(fresh), 21);
        }

        crate::ledger_contract_tests!(fresh());
    }
}
