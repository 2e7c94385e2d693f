//! A running attempt and what it ends with: notes and upstream callbacks, lease renewals,
//! success with its outputs, failure, retry, release, and the outputs' expiry. Every write is
//! fenced by the lease token (invariant 3), so a worker that lost its job commits nothing.

use super::*;
use crate::job::FailureClass;

pub(super) async fn finish_attempt(
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
pub(super) async fn leave_running(
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

/// `running → succeeded` with the outputs for each success whose lease still holds its job
/// (`Ledger::succeed_batch`), within `tx`: one answer per success, in order. Each success is
/// fenced by its own lease, so a stale one in the batch (its job canceled or taken over) is
/// refused alone, and its outputs are not recorded.
pub(super) async fn succeed_batch_in<T: WriteTx>(
    tx: &mut T,
    successes: &[(&Lease, &[NewOutput], i64)],
) -> Result<Vec<bool>> {
    succeed_batch_handing_in(
        tx,
        successes,
        &vec![false; successes.len()],
        &mut Vec::new(),
    )
    .await
}

/// `succeed_batch_in`, where each success named in `hand_over` may write its `job.succeeded`
/// delivery already claimed for this process's deliverer (`DeliveryLedger::
/// start_handing_deliveries`): on Postgres, when its job's webhook hears its end but not its
/// start. A job that hears its start may have its `job.started` delivery still pending, and
/// its receiver must hear that first; a pending delivery is claimed oldest first, so its end
/// goes through the claim too. Those written claimed are added to `handed`. SQLite writes none
/// claimed: its deliverer claims within the process, with no round trip to spare.
pub(super) async fn succeed_batch_handing_in<T: WriteTx>(
    tx: &mut T,
    successes: &[(&Lease, &[NewOutput], i64)],
    hand_over: &[bool],
    handed: &mut Vec<crate::ledger::DueDelivery>,
) -> Result<Vec<bool>> {
    match tx.dialect() {
        Dialect::Postgres if hand_over.contains(&true) => {
            succeed_merged(tx, successes, Some((hand_over, handed))).await
        }
        Dialect::Postgres => succeed_merged(tx, successes, None).await,
        Dialect::Sqlite => succeed_many_sqlite(tx, successes).await,
    }
}

/// The types of `succeed_merged`'s output `VALUES` columns: job_id, token, idx, object_key,
/// content_type, bytes, expires_at, media.
const OUTPUT_COLUMNS: [&str; 8] = [
    "text", "text", "bigint", "text", "text", "bigint", "bigint", "text",
];

/// `succeed_batch_in` on Postgres in one statement of data-modifying CTEs, whatever the batch's
/// size: the fenced job updates (the leases as `VALUES` rows joined by id; a row whose token no
/// longer matches joins nothing), then, fed by the rows they return, the attempts' ends, the
/// callbacks forgotten, the transitions, the `job.succeeded` deliveries and the outputs (joined
/// to the lease that won, so a stale lease's outputs are dropped). The leases are padded to a
/// power of two with repeats of the last, the outputs with null rows.
async fn succeed_merged<T: WriteTx>(
    tx: &mut T,
    successes: &[(&Lease, &[NewOutput], i64)],
    mut handing: Option<(&[bool], &mut Vec<crate::ledger::DueDelivery>)>,
) -> Result<Vec<bool>> {
    if successes.is_empty() {
        return Ok(vec![]);
    }
    let shape = successes.len().next_power_of_two();
    // Handing over, each lease carries whether its delivery may be written claimed (1 or 0).
    let lease_columns: &[&str] = if handing.is_some() {
        &["text", "text", "text", "bigint", "bigint"]
    } else {
        &["text", "text", "text", "bigint"]
    };
    let leases = padded_values(lease_columns, shape);
    let output_count: usize = successes.iter().map(|(_, o, _)| o.len()).sum();
    let outputs_cte = if output_count == 0 {
        String::new()
    } else {
        let rows = padded_values(&OUTPUT_COLUMNS, output_count.next_power_of_two());
        format!(
            ", stored AS (INSERT INTO outputs (job_id, idx, object_key, content_type, bytes, expires_at, media) \
                 SELECT o.job_id, o.idx, o.object_key, o.content_type, o.bytes, o.expires_at, o.media \
                 FROM (VALUES {rows}) AS o (job_id, token, idx, object_key, content_type, bytes, expires_at, media) \
                 JOIN ended ON ended.id = o.job_id AND ended.token = o.token)"
        )
    };
    static DELIVERY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        delivery_insert(
            EventType::JobSucceeded,
            &DeliverySource {
                id: "?::text || substr(md5(id || 'job.succeeded'), 1, 12)",
                ..DeliverySource::job_row("FROM ended WHERE TRUE")
            },
        )
    });
    // Handing over: the delivery is written claimed (held under the batch's token) where its
    // lease may hand it over and its job's webhook hears its end but not its start
    // (`succeed_batch_handing_in`); the statement then answers with those deliveries and their
    // keys' secrets beside the jobs that won.
    static HANDED_DELIVERY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        delivery_insert(
            EventType::JobSucceeded,
            &DeliverySource {
                id: "?::text || substr(md5(id || 'job.succeeded'), 1, 12)",
                tail: " RETURNING id, job_id, created_at, claim_token",
                handed_where: Some(
                    "hand_over = 1 AND webhook_events IS NOT NULL \
                     AND (',' || webhook_events || ',') NOT LIKE '%,job.started,%'",
                ),
                ..DeliverySource::job_row("FROM ended WHERE TRUE")
            },
        )
    });
    let (lease_names, ended_extra, delivery, answer) = if handing.is_some() {
        (
            "id, token, attempt_id, at, hand_over",
            ", jobs.key_id, leases.hand_over",
            HANDED_DELIVERY.as_str(),
            "SELECT e.id, e.token, d.id AS delivery_id, d.created_at AS delivery_at, \
                 d.claim_token AS delivery_token, e.webhook_url, e.key_id, \
                 k.webhook_secret, k.previous_webhook_secret, k.previous_secret_until \
             FROM ended e LEFT JOIN delivery d ON d.job_id = e.id AND d.claim_token IS NOT NULL \
             LEFT JOIN api_keys k ON k.id = e.key_id AND d.id IS NOT NULL",
        )
    } else {
        (
            "id, token, attempt_id, at",
            "",
            DELIVERY.as_str(),
            "SELECT id, token FROM ended",
        )
    };
    let statement = tx.dialect().sql(&format!(
        "WITH leases ({lease_names}) AS (VALUES {leases}), \
         ended AS (UPDATE jobs SET status = 'succeeded', error_code = NULL, error_message = NULL, \
                 completed_at = leases.at, lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL \
             FROM leases \
             WHERE jobs.id = leases.id \
               AND CASE WHEN jobs.status = 'running' AND jobs.lease_token = leases.token THEN TRUE ELSE FALSE END \
             RETURNING jobs.id, jobs.webhook_url, jobs.webhook_events, leases.token, leases.attempt_id, leases.at{ended_extra}), \
         attempt AS (UPDATE attempts SET finished_at = ended.at, outcome = 'succeeded', error_code = NULL, error_message = NULL \
             FROM ended WHERE attempts.id = ended.attempt_id AND attempts.finished_at IS NULL), \
         callbacks AS (DELETE FROM upstream_callbacks WHERE job_id IN (SELECT id FROM ended)), \
         transition AS (INSERT INTO job_transitions (job_id, from_status, to_status, reason, at) \
             SELECT id, 'running', 'succeeded', NULL, at FROM ended), \
         delivery AS ({delivery}){outputs_cte} \
         {answer}",
    ))
    .into_owned();
    let mut args = Args::new();
    for i in 0..shape {
        let last = i.min(successes.len() - 1);
        let (lease, _, at) = successes[last];
        args.text(lease.job_id.to_string())
            .text(lease.token.as_str())
            .text(lease.attempt_id.as_str())
            .int(at);
        if let Some((hand_over, _)) = &handing {
            args.int(i64::from(hand_over[last]));
        }
    }
    // The deliveries' time: the batch's latest (each job's own is on its transition).
    let at = successes
        .iter()
        .map(|(_, _, at)| *at)
        .max()
        .unwrap_or_default();
    args.text(&DeliveryId::new().0[..DELIVERY_PREFIX_LEN])
        .int(at);
    // One token for the batch's handed deliveries, as for a claim's batch.
    let token = uuid::Uuid::new_v4().simple().to_string();
    if handing.is_some() {
        let held_until = at + crate::ledger::DELIVERY_HOLD.as_millis() as i64;
        args.int(held_until).int(at).text(&token);
    } else {
        args.int(at);
    }
    if output_count > 0 {
        let mut bound = 0;
        for (lease, outputs, _) in successes {
            for o in *outputs {
                args.text(lease.job_id.to_string())
                    .text(lease.token.as_str());
                bind_output_fields(&mut args, o);
                bound += 1;
            }
        }
        for _ in bound..output_count.next_power_of_two() {
            args.null_row(&OUTPUT_COLUMNS);
        }
    }
    let mut held = std::collections::HashSet::new();
    let now = to_millis(now());
    for row in tx.rows(&statement, args).await? {
        held.insert((row.text("id")?, row.text("token")?));
        if let Some((_, handed)) = handing.as_mut() {
            if row.opt_text("delivery_token")?.is_some() {
                let secrets = shown_secrets(
                    row.opt_text("webhook_secret")?,
                    row.opt_text("previous_webhook_secret")?,
                    row.opt_int("previous_secret_until")?,
                    now,
                );
                let job_id = row.text("id")?;
                handed.push(crate::ledger::DueDelivery {
                    id: DeliveryId(row.text("delivery_id")?),
                    job_id: job_id
                        .parse()
                        .map_err(|_| LedgerError::Corrupt(format!("job id '{job_id}'")))?,
                    event_type: EventType::JobSucceeded,
                    url: row.text("webhook_url")?,
                    created_at: from_millis(row.int("delivery_at")?),
                    tries: 0,
                    schedule_base: 0,
                    key_id: row.opt_text("key_id")?.map(KeyId),
                    secrets,
                    claim_token: token.clone(),
                });
            }
        }
    }
    tx.note_transitions(Status::Succeeded, held.len());
    Ok(successes
        .iter()
        .map(|(lease, _, _)| held.contains(&(lease.job_id.to_string(), lease.token.clone())))
        .collect())
}

/// `succeed_batch_in` on SQLite for a batch: seven statements whatever its size, where job by
/// job it took six per job. On SQLite a statement is no round trip, but it is a hand-off to the
/// connection's own thread and back (two thread wake-ups), and those hand-offs were a quarter
/// of the embedded default's CPU in a burst (BENCHMARKS.md).
///
/// The running jobs' tokens are read first and matched against the batch's leases, so that a
/// job named twice (a stale lease and the live one after it) is won by the live one alone; the
/// update is still fenced by each token and returns the jobs it moved, and everything after is
/// written for those jobs alone, so a stale lease is refused alone and its outputs dropped.
async fn succeed_many_sqlite<T: WriteTx>(
    tx: &mut T,
    successes: &[(&Lease, &[NewOutput], i64)],
) -> Result<Vec<bool>> {
    if successes.is_empty() {
        return Ok(vec![]);
    }
    let running_sql = format!(
        "SELECT id, lease_token FROM jobs WHERE status = 'running' AND id IN ({})",
        vec!["?"; successes.len()].join(", ")
    );
    let mut args = Args::new();
    for (lease, _, _) in successes {
        args.text(lease.job_id.to_string());
    }
    let mut held = std::collections::HashSet::new();
    for row in tx.rows(&running_sql, args).await? {
        held.insert((row.text("id")?, row.opt_text("lease_token")?));
    }
    let holds: Vec<bool> = successes
        .iter()
        .map(|(lease, _, _)| held.contains(&(lease.job_id.to_string(), Some(lease.token.clone()))))
        .collect();
    let holding: Vec<_> = successes
        .iter()
        .zip(&holds)
        .filter_map(|(success, holds)| holds.then_some(success))
        .collect();
    if holding.is_empty() {
        return Ok(vec![false; successes.len()]);
    }
    let ended_sql = format!(
        "WITH leases (id, token, at) AS (VALUES {}) \
         UPDATE jobs SET status = 'succeeded', error_code = NULL, error_message = NULL, \
             completed_at = leases.at, lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL \
         FROM leases \
         WHERE jobs.id = leases.id AND jobs.status = 'running' AND jobs.lease_token = leases.token \
         RETURNING jobs.id",
        value_rows("(?, ?, ?)", holding.len())
    );
    let mut args = Args::new();
    for (lease, _, at) in &holding {
        args.text(lease.job_id.to_string())
            .text(lease.token.as_str())
            .int(*at);
    }
    let mut ended = std::collections::HashSet::new();
    for row in tx.rows(&ended_sql, args).await? {
        ended.insert(row.text("id")?);
    }
    let won: Vec<bool> = successes
        .iter()
        .zip(holds)
        .map(|((lease, _, _), holds)| holds && ended.contains(&lease.job_id.to_string()))
        .collect();
    let winners: Vec<_> = successes
        .iter()
        .zip(&won)
        .filter_map(|(success, won)| won.then_some(success))
        .collect();
    if winners.is_empty() {
        return Ok(won);
    }
    let n = winners.len();
    let marks = vec!["?"; n].join(", ");

    let attempts_sql = format!(
        "WITH ended (id, at) AS (VALUES {}) \
         UPDATE attempts SET finished_at = ended.at, outcome = 'succeeded', error_code = NULL, error_message = NULL \
         FROM ended WHERE attempts.id = ended.id AND attempts.finished_at IS NULL",
        value_rows("(?, ?)", n)
    );
    let mut args = Args::new();
    for (lease, _, at) in &winners {
        args.text(lease.attempt_id.as_str()).int(*at);
    }
    tx.run(&attempts_sql, args).await?;

    let forget_sql = format!("DELETE FROM upstream_callbacks WHERE job_id IN ({marks})");
    let mut args = Args::new();
    for (lease, _, _) in &winners {
        args.text(lease.job_id.to_string());
    }
    tx.run(&forget_sql, args).await?;

    let transitions_sql = format!(
        "INSERT INTO job_transitions (job_id, from_status, to_status, reason, at) VALUES {}",
        value_rows("(?, 'running', 'succeeded', NULL, ?)", n)
    );
    let mut args = Args::new();
    for (lease, _, at) in &winners {
        args.text(lease.job_id.to_string()).int(*at);
    }
    tx.run(&transitions_sql, args).await?;
    tx.note_transitions(Status::Succeeded, n);

    // Each delivery's id: the batch's shared time-ordered head and 12 random hex digits.
    let from_where = format!("FROM jobs WHERE id IN ({marks})");
    let delivery_sql = delivery_insert(
        EventType::JobSucceeded,
        &DeliverySource {
            id: "? || lower(hex(randomblob(6)))",
            ..DeliverySource::job_row(&from_where)
        },
    );
    let at = winners
        .iter()
        .map(|(_, _, at)| *at)
        .max()
        .unwrap_or_default();
    let mut args = Args::new();
    args.text(&DeliveryId::new().0[..DELIVERY_PREFIX_LEN])
        .int(at)
        .int(at);
    for (lease, _, _) in &winners {
        args.text(lease.job_id.to_string());
    }
    tx.run(&delivery_sql, args).await?;

    let output_count: usize = winners.iter().map(|(_, o, _)| o.len()).sum();
    if output_count > 0 {
        let outputs_sql = format!(
            "INSERT INTO outputs (job_id, idx, object_key, content_type, bytes, expires_at, media) VALUES {}",
            value_rows("(?, ?, ?, ?, ?, ?, ?)", output_count)
        );
        let mut args = Args::new();
        for (lease, outputs, _) in &winners {
            for o in *outputs {
                args.text(lease.job_id.to_string());
                bind_output_fields(&mut args, o);
            }
        }
        tx.run(&outputs_sql, args).await?;
    }
    Ok(won)
}

/// Binds an output's own columns of `outputs` (index, key, type, bytes, expiry, media).
fn bind_output_fields(args: &mut Args, o: &NewOutput) {
    args.int(o.index as i64)
        .text(o.object_key.as_str())
        .text(o.content_type.as_str())
        .int(o.bytes as i64)
        .int(to_millis(o.expires_at))
        .text(media_json(&o.media));
}

/// An output's media column: its `OutputMedia` as JSON.
fn media_json(media: &crate::OutputMedia) -> String {
    serde_json::to_string(media).expect("plain fields serialize")
}

/// `queued|running → canceled` for a job the caller has locked and found in state `from`.
/// A queued job that ends (canceled, past its deadline) may have left an upstream call running:
/// its last attempt was lost or released after the upstream had accepted the work, and no
/// attempt re-attached to it. That call is written down to be stopped, in the same transaction.
pub(super) async fn abandon_upstream_in(tx: &mut Tx, sid: &str, at: i64) -> Result<()> {
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

/// Upstream callbacks matter only while the job runs; a finished job drops them.
pub(super) async fn forget_callbacks(tx: &mut Tx, job_id: &str) -> Result<()> {
    sqlx::query(&tx.d.sql("DELETE FROM upstream_callbacks WHERE job_id = ?"))
        .bind(job_id)
        .execute(&mut *tx.tx)
        .await?;
    Ok(())
}

/// How a running job leaves `running` (see `leave_running`).
pub(super) struct Leaving<'a> {
    pub to: Status,
    pub error: Option<&'a ErrorInfo>,
    pub run_after: Option<i64>,
    pub outcome: AttemptOutcome,
}

impl SqlLedger {
    /// `leave_running` in a transaction of its own. A job that goes back to the queue to wait
    /// (a retry) is left unrung: once due, the reconciler rings it unless the retry timer does
    /// first. A released job is due at once and keeps its ring.
    async fn leave(&self, lease: &Lease, at: i64, leaving: Leaving<'_>) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let won = leave_running(
            &mut tx,
            lease,
            leaving.to,
            leaving.error,
            leaving.run_after,
            leaving.outcome,
            at,
        )
        .await?;
        let waits = leaving.to == Status::Queued && leaving.outcome == AttemptOutcome::Failed;
        if won && waits {
            sqlx::query(&self.sql("UPDATE jobs SET rung_at = 0 WHERE id = ?"))
                .bind(lease.job_id.to_string())
                .execute(&mut *tx.tx)
                .await?;
        }
        tx.commit().await?;
        Ok(won)
    }
}

#[async_trait]
impl AttemptLedger for SqlLedger {
    async fn annotate_attempt(&self, lease: &Lease, note: AttemptNote<'_>) -> Result<()> {
        sqlx::query(&self.sql(
            "UPDATE attempts SET route = COALESCE(?, route), error_class = COALESCE(?, error_class), \
                 upstream_id = COALESCE(?, upstream_id), cost_micros = COALESCE(?, cost_micros), \
                 progress = CASE WHEN finished_at IS NULL THEN COALESCE(?, progress) ELSE progress END \
             WHERE id = ?",
        ))
        .bind(note.route)
        .bind(note.error_class.map(FailureClass::as_str))
        .bind(note.upstream_id)
        .bind(note.cost_micros)
        .bind(note.progress_percent.map(i64::from))
        .bind(&lease.attempt_id)
        .execute(&mut *self.writer.conn().await?)
        .await?;
        Ok(())
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
        .execute(&mut *self.writer.conn().await?)
        .await?
        .rows_affected();
        Ok(stored == 1)
    }

    async fn record_progress(&self, job_id: JobId, upstream_id: &str, percent: u8) -> Result<()> {
        sqlx::query(&self.sql(
            "UPDATE attempts SET progress = ? \
             WHERE job_id = ? AND upstream_id = ? AND finished_at IS NULL",
        ))
        .bind(i64::from(percent.min(100)))
        .bind(job_id.to_string())
        .bind(upstream_id)
        .execute(&mut *self.writer.conn().await?)
        .await?;
        Ok(())
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

    async fn awaits_upstream(&self, job_id: JobId, upstream_id: &str) -> Result<bool> {
        let open: Option<i64> = sqlx::query_scalar(&self.sql(
            "SELECT 1 FROM attempts \
             WHERE job_id = ? AND upstream_id = ? AND finished_at IS NULL",
        ))
        .bind(job_id.to_string())
        .bind(upstream_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(open.is_some())
    }

    async fn renew_lease(&self, lease: &Lease, lease_for: Duration) -> Result<bool> {
        self.renewals.renew(lease, lease_for).await
    }

    async fn succeed(&self, lease: &Lease, outputs: &[NewOutput]) -> Result<bool> {
        let hand_over = self
            .handoff
            .lock()
            .expect("the hand-off is never poisoned")
            .takes_more();
        let written = self
            .group
            .write(GroupWrite::Succeed {
                lease: lease.clone(),
                outputs: outputs.to_vec(),
                at: to_millis(now()),
                hand_over,
            })
            .await?;
        let GroupWritten::Succeeded(won, handed) = written else {
            unreachable!("a success is answered with a success")
        };
        if !handed.is_empty() {
            self.hand_over(handed).await?;
        }
        Ok(won)
    }

    async fn succeed_batch(&self, successes: &[(Lease, Vec<NewOutput>)]) -> Result<Vec<bool>> {
        let at = to_millis(now());
        let batch: Vec<(&Lease, &[NewOutput], i64)> = successes
            .iter()
            .map(|(lease, outputs)| (lease, outputs.as_slice(), at))
            .collect();
        let mut tx = self.hot_tx().await?;
        let won = succeed_batch_in(&mut tx, &batch).await?;
        tx.commit().await?;
        Ok(won)
    }

    async fn fail(&self, lease: &Lease, error: &ErrorInfo) -> Result<bool> {
        let leaving = Leaving {
            to: Status::Failed,
            error: Some(error),
            run_after: None,
            outcome: AttemptOutcome::Failed,
        };
        self.leave(lease, to_millis(now()), leaving).await
    }

    async fn retry_later(
        &self,
        lease: &Lease,
        error: &ErrorInfo,
        run_after: Timestamp,
    ) -> Result<bool> {
        let leaving = Leaving {
            to: Status::Queued,
            error: Some(error),
            run_after: Some(to_millis(run_after)),
            outcome: AttemptOutcome::Failed,
        };
        self.leave(lease, to_millis(now()), leaving).await
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        let at = to_millis(now());
        let leaving = Leaving {
            to: Status::Queued,
            error: None,
            run_after: Some(at),
            outcome: AttemptOutcome::Released,
        };
        self.leave(lease, at, leaving).await
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
        .fetch_all(&mut *self.writer.conn().await?)
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
            .execute(&mut *self.writer.conn().await?)
            .await?;
        Ok(())
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
        .execute(&mut *self.writer.conn().await?)
        .await?;
        Ok(())
    }
}
