//! Row decoding: the column lists every read selects and the functions that turn rows into
//! jobs, attempts, outputs and keys. A job is read whole in one statement (its attempts and
//! outputs as JSON arrays from correlated subqueries), so these decoders are the one place a
//! column's type is interpreted.

use super::*;

pub(super) const JOB_COLUMNS: &str = "id, tenant, model, input, status, error_code, error_message, created_at, \
    started_at, completed_at, run_after, lease_owner, lease_expires_at, attempt_count, rescue_count, \
    deadline_at, start_by, webhook_url, webhook_events, pipeline_id, priority, rung_at, surface";

/// An attempt as its JSON array in `job_select`: the columns of `ATTEMPT_FIELDS`, in order.
pub(super) type AttemptTuple = (
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

pub(super) const ATTEMPT_FIELDS: &str =
    "number, id, route, worker, started_at, finished_at, outcome, error_code, \
    error_message, error_class, upstream_id, cost_micros, progress";

/// An output as its JSON array in `job_select`: the columns of `OUTPUT_FIELDS`, in order.
pub(super) type OutputTuple = (i64, String, String, i64, i64, Option<i64>, Option<String>);

pub(super) const OUTPUT_FIELDS: &str =
    "idx, object_key, content_type, bytes, expires_at, deleted_at, media";

/// The whole-job `SELECT` per dialect (`SqlLedger::job_select`). The subqueries' unqualified
/// columns are the inner table's; `jobs.id` is the outer row.
pub(super) static JOB_SELECT_POSTGRES: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| {
        format!(
            "SELECT {JOB_COLUMNS}, \
           (SELECT COALESCE(json_agg(json_build_array({ATTEMPT_FIELDS})), '[]')::text \
              FROM attempts WHERE attempts.job_id = jobs.id) AS attempts_json, \
           (SELECT COALESCE(json_agg(json_build_array({OUTPUT_FIELDS})), '[]')::text \
              FROM outputs WHERE outputs.job_id = jobs.id) AS outputs_json"
        )
    });

pub(super) static JOB_SELECT_SQLITE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT {JOB_COLUMNS}, \
           (SELECT json_group_array(json_array({ATTEMPT_FIELDS})) \
              FROM attempts WHERE attempts.job_id = jobs.id) AS attempts_json, \
           (SELECT json_group_array(json_array({OUTPUT_FIELDS})) \
              FROM outputs WHERE outputs.job_id = jobs.id) AS outputs_json"
    )
});

/// A text column holding one of Kiln's names (a status, an event type), parsed.
pub(super) fn text_column<T: std::str::FromStr<Err = String>>(
    row: &impl Columns,
    column: &str,
) -> Result<T> {
    row.text(column)?.parse().map_err(LedgerError::Corrupt)
}

pub(super) fn json_column<T: serde::de::DeserializeOwned>(
    row: &impl Columns,
    column: &str,
) -> Result<T> {
    let text = row.text(column)?;
    serde_json::from_str(&text).map_err(|e| LedgerError::Corrupt(format!("{column}: {e}")))
}

pub(super) fn attempt_from_tuple(t: AttemptTuple) -> Result<Attempt> {
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
        error_class: error_class
            .map(|c| c.parse())
            .transpose()
            .map_err(LedgerError::Corrupt)?,
        upstream_id,
        cost_micros,
        progress_percent: progress.map(|p| p.clamp(0, 100) as u8),
    })
}

impl Dialect {
    /// See `SqlLedger::job_select`.
    pub(super) fn job_select(self) -> &'static str {
        match self {
            Dialect::Sqlite => &JOB_SELECT_SQLITE,
            Dialect::Postgres => &JOB_SELECT_POSTGRES,
        }
    }
}

/// A whole job from a row of `job_select`.
pub(super) fn load_job(row: &impl Columns) -> Result<Job> {
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
                |(index, object_key, content_type, bytes, expires_at, deleted_at, media)| Output {
                    index: index as u32,
                    object_key,
                    content_type,
                    bytes: bytes as u64,
                    expires_at: from_millis(expires_at),
                    deleted_at: deleted_at.map(from_millis),
                    // A row from before metadata was kept (or one that no longer parses) knows
                    // nothing of its file.
                    media: media
                        .and_then(|m| serde_json::from_str(&m).ok())
                        .unwrap_or_default(),
                },
            )
            .collect();
        job.outputs.sort_by_key(|o| o.index);
        Ok(job)
    }
}

pub(super) fn job_from_row(row: &impl Columns) -> Result<Job> {
    let id = row.text("id")?;
    let status = row.text("status")?;
    let input = row.text("input")?;
    let error_code = row.opt_text("error_code")?;
    let error_message = row.opt_text("error_message")?;
    Ok(Job {
        id: id
            .parse()
            .map_err(|_| LedgerError::Corrupt(format!("job id '{id}'")))?,
        tenant: TenantId(row.text("tenant")?),
        model: row.text("model")?,
        input: serde_json::from_str(&input)
            .map_err(|e| LedgerError::Corrupt(format!("job {id} input: {e}")))?,
        status: status.parse().map_err(LedgerError::Corrupt)?,
        error: error_code.map(|code| ErrorInfo::new(code, error_message.unwrap_or_default())),
        created_at: from_millis(row.int("created_at")?),
        started_at: row.opt_int("started_at")?.map(from_millis),
        completed_at: row.opt_int("completed_at")?.map(from_millis),
        run_after: from_millis(row.int("run_after")?),
        lease_owner: row.opt_text("lease_owner")?,
        lease_expires_at: row.opt_int("lease_expires_at")?.map(from_millis),
        attempt_count: row.int("attempt_count")? as u32,
        rescue_count: row.int("rescue_count")? as u32,
        deadline_at: row.opt_int("deadline_at")?.map(from_millis),
        start_by: row.opt_int("start_by")?.map(from_millis),
        webhook_url: row.opt_text("webhook_url")?,
        webhook_events: row
            .opt_text("webhook_events")?
            .map(|list| list.split(',').map(str::to_owned).collect()),
        pipeline_id: row
            .opt_text("pipeline_id")?
            .map(|p| {
                p.parse()
                    .map_err(|_| LedgerError::Corrupt(format!("pipeline id '{p}'")))
            })
            .transpose()?,
        priority: row
            .text("priority")?
            .parse()
            .map_err(LedgerError::Corrupt)?,
        held: row.int("rung_at")? < 0,
        surface: crate::job::Surface::from_column(row.opt_text("surface")?.as_deref())
            .map_err(LedgerError::Corrupt)?,
        attempts: vec![],
        outputs: vec![],
    })
}

pub(super) fn id_and_lane(row: &impl Columns) -> Result<(JobId, crate::dispatch::Lane)> {
    let id = row.text("id")?;
    let lane = row
        .text("priority")?
        .parse()
        .map_err(LedgerError::Corrupt)?;
    Ok((id.parse().map_err(|_| LedgerError::Corrupt(id))?, lane))
}

pub(super) fn key_from_row(r: &AnyRow) -> Result<ApiKeyRecord> {
    Ok(ApiKeyRecord {
        id: KeyId(r.try_get("id")?),
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

pub(super) const KEY_COLUMNS: &str =
    "id, tenant, prefix, created_at, revoked_at, default_webhook, \
    rate_per_second, max_active_jobs, daily_spend_micros, max_priority";
