//! Claims: `queued → running` for a batch of rung jobs at once, each under a lease of its own,
//! with their attempts opened on the routes chosen for them (each attempt implies its claim's
//! transition, `Transition::is_implied`), their `job.started` deliveries written, and as many of
//! their tenants' held jobs admitted as the claims freed places. A batch is what a group commit
//! holds (`GroupCommit`: the claims that arrived together) or what a caller hands over
//! (`Ledger::claim_batch`); a lone claim is a batch of one, so one path serves both and a lone
//! job waits for nothing.
//!
//! On Postgres a batch costs two statements (up to `CLAIM_BATCH_MAX` jobs; more take one more
//! claim statement per that many): the claim's `UPDATE … WHERE id IN (…)` returning the
//! claimed rows, then, once each attempt's route is chosen from its job,
//! one statement of data-modifying CTEs fed by `VALUES` rows (sqlx's `Any` driver binds no
//! arrays) that opens the attempts, writes the deliveries and admits held jobs.
//! SQLite's statements are calls within the process, not round trips: after the same claim
//! `UPDATE` it writes the rest job by job. Statement shapes are padded to powers of two (ids
//! repeated, `VALUES` rows of nulls that no join keeps), so each connection caches a few plans
//! instead of one per batch size.

use super::*;
use crate::dispatch::Lane;
use crate::ledger::RouteChooser;

/// What a claim wrote: the job as it left it (its new attempt included), and the lease.
pub(super) struct Claimed {
    pub(super) job: Job,
    pub(super) token: String,
    pub(super) attempt_id: String,
    pub(super) admitted: Option<(JobId, Lane)>,
}

impl Claimed {
    pub(super) fn into_claim(self) -> Claim {
        let Claimed {
            job,
            token,
            attempt_id,
            admitted,
        } = self;
        Claim {
            lease: Lease {
                job_id: job.id,
                token,
                attempt_id,
            },
            attempt_number: job.attempt_count,
            admitted,
            job,
        }
    }
}

/// Most jobs one claim statement takes; a larger batch is claimed in statements of this many.
/// The ids are probed in the primary key's index only while the planner finds that cheaper
/// than reading the table: at 64 ids a generic plan read all of a 5,000-job table, at 16 it
/// probes (the plan test in `sql::tests` holds it to that).
pub(super) const CLAIM_BATCH_MAX: usize = 16;

/// The claim's own `UPDATE` for `shape` ids: each job by its id, if it is queued, due and
/// admitted, with a lease token of its own drawn by the database.
///
/// The jobs are found by their primary key alone: the state test is a `CASE`, from which no
/// partial index's predicate can be proved, so no plan can walk a partial index of queued jobs
/// instead. Planned with statistics from before a burst, when every queued-only index looked
/// nearly empty, the plain test let the planner scan `jobs_due` or `jobs_admitted` for the id.
///
/// Binds: the time, the worker, the lease's end, the ids, the time.
pub(super) fn claim_update_sql(d: Dialect, shape: usize) -> String {
    let ids = vec!["?"; shape].join(", ");
    let token = match d {
        Dialect::Postgres => "replace(gen_random_uuid()::text, '-', '')",
        Dialect::Sqlite => "lower(hex(randomblob(16)))",
    };
    d.sql(&format!(
        "UPDATE jobs SET status = 'running', started_at = COALESCE(started_at, ?), \
             lease_owner = ?, lease_token = {token}, lease_expires_at = ?, attempt_count = attempt_count + 1 \
         WHERE id IN ({ids}) \
           AND CASE WHEN status = 'queued' AND run_after <= ? AND rung_at >= 0 THEN TRUE ELSE FALSE END \
         RETURNING {JOB_COLUMNS}, lease_token"
    ))
    .into_owned()
}

/// `queued → running` for those of `ids` that are queued and due (`Ledger::claim_batch`),
/// within `tx`. A job named twice is claimed once.
pub(super) async fn claim_batch_in<T: WriteTx>(
    tx: &mut T,
    ids: &[JobId],
    worker: &str,
    route: &RouteChooser,
    lease_for: Duration,
    at: i64,
) -> Result<Vec<Claimed>> {
    let mut rows = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(CLAIM_BATCH_MAX) {
        let shape = chunk.len().next_power_of_two();
        let sql = claim_update_sql(tx.dialect(), shape);
        let mut args = Args::new();
        args.int(at)
            .text(worker)
            .int(at + lease_for.as_millis() as i64);
        for i in 0..shape {
            args.text(chunk[i.min(chunk.len() - 1)].to_string());
        }
        args.int(at);
        rows.extend(tx.rows(&sql, args).await?);
    }
    let mut claimed = Vec::with_capacity(rows.len());
    for row in &rows {
        let mut job = job_from_row(row)?;
        let token = row.text("lease_token")?;
        let number = job.attempt_count;
        let sid = job.id.to_string();
        // A first attempt has none before it; a later attempt's route depends on the ones
        // before (fallback), so they are read, in this transaction.
        if number > 1 {
            let d = tx.dialect();
            let sql = d
                .sql(&format!("{} FROM jobs WHERE id = ?", d.job_select()))
                .into_owned();
            let mut args = Args::new();
            args.text(sid.as_str());
            let read = tx.rows(&sql, args).await?;
            let row = read
                .first()
                .ok_or_else(|| LedgerError::Corrupt(format!("claimed job {sid} is gone")))?;
            job.attempts = load_job(row)?.attempts;
        }
        // Attempt ids are stable (`{job}-{n}`): upstream calls carry them for idempotency.
        let attempt_id = format!("{sid}-{number}");
        job.attempts.push(Attempt {
            number,
            id: attempt_id.clone(),
            route: route(&job),
            worker: worker.to_owned(),
            started_at: from_millis(at),
            finished_at: None,
            outcome: None,
            error: None,
            error_class: None,
            upstream_id: None,
            cost_micros: None,
            progress_percent: None,
        });
        claimed.push(Claimed {
            job,
            token,
            attempt_id,
            admitted: None,
        });
    }
    match tx.dialect() {
        Dialect::Postgres => open_attempts_merged(tx, &mut claimed, worker, at).await?,
        Dialect::Sqlite => open_attempts_sqlite(tx, &mut claimed, worker, at).await?,
    }
    Ok(claimed)
}

/// The claimed jobs' attempts and `job.started` deliveries on SQLite (each claim's transition
/// is implied by its attempt: `Transition::is_implied`), one
/// multi-row statement each for the whole batch (a statement is a hand-off to the connection's
/// thread and back, see `attempts::succeed_many_sqlite`), then the admission of held jobs: one
/// statement per tenant for the places first claims freed, one per later attempt's claim.
async fn open_attempts_sqlite<T: WriteTx>(
    tx: &mut T,
    claimed: &mut [Claimed],
    worker: &str,
    at: i64,
) -> Result<()> {
    if claimed.is_empty() {
        return Ok(());
    }
    let n = claimed.len();
    let attempts_sql = format!(
        "INSERT INTO attempts (job_id, number, id, route, worker, started_at) VALUES {}",
        value_rows("(?, ?, ?, ?, ?, ?)", n)
    );
    let mut args = Args::new();
    for c in claimed.iter() {
        let attempt = c.job.attempts.last().expect("a claim opens an attempt");
        args.text(c.job.id.to_string())
            .int(i64::from(attempt.number))
            .text(attempt.id.as_str())
            .text(attempt.route.as_str())
            .text(worker)
            .int(at);
    }
    tx.run(&attempts_sql, args).await?;
    tx.note_transitions(Status::Running, n);

    // Each delivery's id: the batch's shared time-ordered head and 12 random hex digits.
    let from_where = format!("FROM jobs WHERE id IN ({})", vec!["?"; n].join(", "));
    let delivery_sql = delivery_insert(
        EventType::JobStarted,
        &DeliverySource {
            id: "? || lower(hex(randomblob(6)))",
            ..DeliverySource::job_row(&from_where)
        },
    );
    let mut args = Args::new();
    args.text(&DeliveryId::new().0[..DELIVERY_PREFIX_LEN])
        .int(at)
        .int(at);
    for c in claimed.iter() {
        args.text(c.job.id.to_string());
    }
    tx.run(&delivery_sql, args).await?;

    // A first claim frees its place in its tenant's window (see `admit_next_in`): each tenant's
    // held jobs are admitted into the places its first claims freed, one statement per tenant.
    let mut places: BTreeMap<String, i64> = BTreeMap::new();
    for c in claimed.iter().filter(|c| c.job.attempt_count == 1) {
        *places.entry(c.job.tenant.0.clone()).or_default() += 1;
    }
    let admission = admission_places_sqlite_sql();
    for (tenant, places) in places {
        let mut args = Args::new();
        args.int(at);
        for _ in Lane::ALL {
            args.text(tenant.as_str()).int(places);
        }
        args.int(places);
        for row in tx.rows(&admission, args).await? {
            let admitted = id_and_lane(&row)?;
            if let Some(c) = claimed.iter_mut().find(|c| {
                c.job.attempt_count == 1 && c.admitted.is_none() && c.job.tenant.0 == tenant
            }) {
                c.admitted = Some(admitted);
            }
        }
    }
    // A later attempt's claim admits only where the window has room, which takes a count.
    for c in claimed.iter_mut().filter(|c| c.job.attempt_count > 1) {
        c.admitted = admit_next_in(tx, &c.job.tenant.0, at, true).await?;
    }
    Ok(())
}

/// The admission of up to a number of a tenant's held jobs on SQLite, highest lane first and
/// oldest first within a lane: each lane one probe of `jobs_held` (tenant, lane, id) that
/// stops at the number, so its cost follows the places, not the backlog. Binds: the time, then
/// (tenant, places) for each lane, then the places.
fn admission_places_sqlite_sql() -> String {
    let lanes = Lane::ALL
        .iter()
        .enumerate()
        .map(|(rank, lane)| {
            format!(
                "SELECT {rank} AS rank, id FROM (SELECT id FROM jobs \
                     WHERE tenant = ? AND priority = '{}' AND status = 'queued' AND rung_at = -1 \
                     ORDER BY {} LIMIT ?)",
                lane.as_str(),
                Dialect::Sqlite.held_order()
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    format!(
        "UPDATE jobs SET rung_at = ? \
         WHERE id IN (SELECT id FROM ({lanes}) ORDER BY rank, id LIMIT ?) \
           AND status = 'queued' AND rung_at = -1 \
         RETURNING id, priority"
    )
}

/// The types of `open_attempts_merged`'s `VALUES` columns: job_id, number, route, webhook_url,
/// webhook_events.
const OPENED_COLUMNS: [&str; 5] = ["text", "bigint", "text", "text", "text"];

/// The second of a Postgres batch's two statements: the claimed jobs' attempts (each implying
/// its claim's transition: `Transition::is_implied`) and
/// `job.started` deliveries, and the admission of a held job for each place a first claim freed
/// (`admit_next_in` says why a first claim needs no count of the window), all as one statement
/// of data-modifying CTEs. A later attempt's claim admits only where the window has room, which
/// takes a count: `admit_next_in` for each of those, after (they are rare: retries, releases,
/// rescues).
async fn open_attempts_merged<T: WriteTx>(
    tx: &mut T,
    claimed: &mut [Claimed],
    worker: &str,
    at: i64,
) -> Result<()> {
    if claimed.is_empty() {
        return Ok(());
    }
    let shape = claimed.len().next_power_of_two();
    let opened = padded_values(&OPENED_COLUMNS, shape);
    // Places freed per tenant by first claims, in a stable order.
    let mut places: BTreeMap<&str, i64> = BTreeMap::new();
    for c in claimed.iter().filter(|c| c.job.attempt_count == 1) {
        *places.entry(c.job.tenant.0.as_str()).or_default() += 1;
    }
    let tenant_shape = places.len().max(1).next_power_of_two();
    static DELIVERY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        delivery_insert(
            EventType::JobStarted,
            &DeliverySource {
                id: "?::text || substr(md5(job_id || 'job.started'), 1, 12)",
                job_id: "job_id",
                url: "webhook_url",
                events: "webhook_events",
                first_start: "number = 1",
                from_where: "FROM opened WHERE job_id IS NOT NULL",
                tail: "",
                handed_where: None,
            },
        )
    });
    let statement = tx.dialect().sql(&format!(
        "WITH opened (job_id, number, route, webhook_url, webhook_events) AS (VALUES {opened}), \
         attempt AS (INSERT INTO attempts (job_id, number, id, route, worker, started_at) \
             SELECT job_id, number, job_id || '-' || number, route, ?, ? FROM opened WHERE job_id IS NOT NULL), \
         delivery AS ({delivery}), \
         admitted AS ({admission}) \
         SELECT id, tenant, priority FROM admitted",
        delivery = DELIVERY.as_str(),
        admission = admission_batch_sql(tenant_shape),
    ))
    .into_owned();
    let mut args = Args::new();
    for i in 0..shape {
        match claimed.get(i) {
            Some(c) => {
                let attempt = c.job.attempts.last().expect("a claim opens an attempt");
                args.text(c.job.id.to_string())
                    .int(i64::from(attempt.number))
                    .text(attempt.route.as_str())
                    .opt_text(c.job.webhook_url.as_deref())
                    .opt_text(c.job.webhook_events.as_ref().map(|e| e.join(",")));
            }
            None => {
                args.null_row(&OPENED_COLUMNS);
            }
        }
    }
    args.text(worker)
        .int(at)
        .text(&DeliveryId::new().0[..DELIVERY_PREFIX_LEN])
        .int(at)
        .int(at)
        .int(at);
    let mut freed = places.iter();
    for _ in 0..tenant_shape {
        match freed.next() {
            Some((tenant, places)) => args.text(*tenant).int(*places),
            None => args.opt_text(None::<String>).int(0),
        };
    }
    let rows = tx.rows(&statement, args).await?;
    tx.note_transitions(Status::Running, claimed.len());
    // Each admitted job goes to one first claim of its tenant, whose claimer rings it.
    for row in &rows {
        let (id, lane) = id_and_lane(row)?;
        let tenant = row.text("tenant")?;
        if let Some(c) = claimed
            .iter_mut()
            .find(|c| c.job.attempt_count == 1 && c.admitted.is_none() && c.job.tenant.0 == tenant)
        {
            c.admitted = Some((id, lane));
        }
    }
    for c in claimed.iter_mut().filter(|c| c.job.attempt_count > 1) {
        c.admitted = admit_next_in(tx, &c.job.tenant.0, at, true).await?;
    }
    Ok(())
}

/// The admission of held jobs into the places first claims freed (Postgres): for each of
/// `tenant_shape` (tenant, places) rows, the tenant's next held jobs, up to its places, highest
/// lane first and oldest first within a lane (each lane one probe of `jobs_held`, whose key
/// leads with the tenant and the lane), skipping jobs another transaction is admitting. The
/// `UPDATE` then finds each by primary key alone (its state test is a `CASE`, as the claim's
/// is). Binds: the time, then the (tenant, places) rows.
pub(super) fn admission_batch_sql(tenant_shape: usize) -> String {
    let freed = padded_values(&["text", "bigint"], tenant_shape);
    let lanes = Lane::ALL
        .iter()
        .enumerate()
        .map(|(rank, lane)| format!("({rank}, '{}')", lane.as_str()))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "UPDATE jobs SET rung_at = ? WHERE id = ANY (ARRAY( \
             SELECT h.id FROM (VALUES {freed}) AS freed (tenant, places) \
             CROSS JOIN LATERAL ( \
                 SELECT l.id FROM (VALUES {lanes}) AS lanes (rank, lane) \
                 CROSS JOIN LATERAL ( \
                     SELECT id FROM jobs WHERE tenant = freed.tenant AND priority = lanes.lane \
                         AND status = 'queued' AND rung_at = -1 \
                     ORDER BY {order} LIMIT freed.places FOR UPDATE SKIP LOCKED) AS l \
                 ORDER BY lanes.rank, l.id LIMIT freed.places) AS h)) \
           AND CASE WHEN status = 'queued' AND rung_at = -1 THEN TRUE ELSE FALSE END \
         RETURNING id, tenant, priority",
        order = Dialect::Postgres.held_order(),
    )
}

/// `n` copies of one `VALUES` row, `row` (its parameters and literals), for SQLite's multi-row
/// statements, which take each batch at its own size (no padding: SQLite plans in-process).
pub(super) fn value_rows(row: &str, n: usize) -> String {
    vec![row; n].join(", ")
}

/// `shape` rows of `VALUES` with one parameter per column of `types`: the first row typed
/// (`?::text`; Postgres infers the columns' types from it), the rest plain. Rows past the data
/// are bound as nulls and left out by `IS NOT NULL` or a join.
pub(super) fn padded_values(types: &[&str], shape: usize) -> String {
    let typed: Vec<String> = types.iter().map(|t| format!("?::{t}")).collect();
    let first = format!("({})", typed.join(", "));
    let rest = format!("({})", vec!["?"; types.len()].join(", "));
    let mut rows = vec![first];
    rows.extend(std::iter::repeat_n(rest, shape.saturating_sub(1)));
    rows.join(", ")
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
/// subquery of the `UPDATE`, which then finds that job by its primary key alone (its state test
/// is a `CASE`, as the claim's is).
/// `admit_next_in`'s statement: its parameters are the time, then (`count_window`) the tenant
/// and the window twice, then the tenant and a lane for each lane, highest first.
pub(super) fn admission_sql(d: Dialect, count_window: bool) -> String {
    let next_in_lane = format!(
        "(SELECT id FROM jobs WHERE tenant = ? AND priority = ? AND status = 'queued' AND rung_at = -1 \
          ORDER BY {} LIMIT 1{})",
        d.held_order(),
        d.lock_rows_skip_locked()
    );
    let lanes = vec![next_in_lane.as_str(); crate::dispatch::Lane::ALL.len()].join(", ");
    let room = if count_window {
        concat!(window_has_room!(), " AND ")
    } else {
        ""
    };
    d.sql(&format!(
        "UPDATE jobs SET rung_at = ? \
         WHERE {room}id = COALESCE({lanes}) \
           AND CASE WHEN status = 'queued' AND rung_at = -1 THEN TRUE ELSE FALSE END \
         RETURNING id, priority"
    ))
    .into_owned()
}

pub(super) async fn admit_next_in<T: WriteTx>(
    tx: &mut T,
    tenant: &str,
    at: i64,
    count_window: bool,
) -> Result<Option<(JobId, crate::dispatch::Lane)>> {
    let sql = admission_sql(tx.dialect(), count_window);
    let mut args = Args::new();
    args.int(at);
    if count_window {
        let window = i64::from(tx.window());
        args.text(tenant).int(window).int(window);
    }
    for lane in crate::dispatch::Lane::ALL {
        args.text(tenant).text(lane.as_str());
    }
    match tx.rows(&sql, args).await?.first() {
        Some(row) => Ok(Some(id_and_lane(row)?)),
        None => Ok(None),
    }
}
