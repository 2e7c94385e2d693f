//! Webhook deliveries: the one writer of a delivery row (a transition's event, in the
//! transition's own transaction), and the deliverer's claim, try log and redelivery.

use super::*;

/// Where a delivery's fields come from: SQL expressions for the job it hangs off, the URL and
/// the event filter (a comma list, or NULL for every event), the `FROM … WHERE …` that yields
/// them, and, for a first start, the condition that the row is the job's first start.
pub(super) struct DeliverySource<'a> {
    /// The delivery's id: `?` (one bound id), or an expression that makes one per row.
    pub id: &'a str,
    pub job_id: &'a str,
    pub url: &'a str,
    pub events: &'a str,
    /// True on a row that starts the job for the first time: `job.started` is written for that
    /// row alone. Told by the attempt's number, never by the time: a retry claimed again
    /// within the first claim's millisecond would look like a first start.
    pub first_start: &'a str,
    pub from_where: &'a str,
    /// What follows the conditions (an `ORDER BY … LIMIT 1`, a `RETURNING`), or nothing.
    pub tail: &'a str,
    /// Where the delivery is written already claimed for this process's deliverer (a condition
    /// on the source's row; `DeliveryLedger::start_handing_deliveries`), or nowhere.
    pub handed_where: Option<&'a str>,
}

impl DeliverySource<'_> {
    /// A job row (or a CTE of job rows) under the usual column names.
    pub(super) const fn job_row(from_where: &str) -> DeliverySource<'_> {
        DeliverySource {
            id: "?",
            job_id: "id",
            url: "webhook_url",
            events: "webhook_events",
            first_start: "attempt_count = 1",
            from_where,
            tail: "",
            handed_where: None,
        }
    }
}

/// How much of a `DeliveryId` a batch shares (`msg_` and the time-ordered head of a UUIDv7);
/// each row of the batch completes it with 12 hex digits of its own, so a batch's ids sort by
/// time like single ones.
pub(super) const DELIVERY_PREFIX_LEN: usize = 24;

/// The one statement that writes a webhook delivery: `event` for the rows `source` yields that
/// have a webhook URL whose filter takes the event, and for `job.started` only on the job's
/// first start (`EventType::first_start_only`). Every writer of a delivery row builds its
/// statement here, as a statement of its own or as a CTE of a merged Postgres statement.
///
/// Binds: the delivery id (or what its expression binds) and the time twice (with
/// `handed_where`: the time, the hold's end, the time and the claim's token); then the source's
/// own binds.
pub(super) fn delivery_insert(event: EventType, source: &DeliverySource) -> String {
    let DeliverySource {
        id,
        job_id,
        url,
        events,
        first_start,
        from_where,
        tail,
        handed_where,
    } = source;
    let pending = DeliveryStatus::Pending.as_str();
    let first_start = if event.first_start_only() {
        format!(" AND {first_start}")
    } else {
        String::new()
    };
    // The event type is one of Kiln's own names, never client text, so it is written into the
    // statement (and the filter's LIKE pattern) rather than bound.
    // Written claimed where `handed_where` holds: held until the bound end, under the bound token.
    let (claim_column, due_and_claim) = match handed_where {
        Some(handed) => (
            ", claim_token",
            format!(
                "CASE WHEN {handed} THEN CAST(? AS BIGINT) ELSE CAST(? AS BIGINT) END, \
                 CASE WHEN {handed} THEN CAST(? AS TEXT) END"
            ),
        ),
        None => ("", "?".to_owned()),
    };
    format!(
        "INSERT INTO webhook_deliveries (id, job_id, event_type, url, created_at, status, next_try_at{claim_column}) \
         SELECT {id}, {job_id}, '{event}', {url}, ?, '{pending}', {due_and_claim} {from_where} \
         AND {url} IS NOT NULL AND ({events} IS NULL OR (',' || {events} || ',') LIKE '%,{event},%')\
         {first_start}{tail}"
    )
}

/// Writes the webhook delivery a job's transition to `to` causes (`EventType::of_job_transition`),
/// in the transition's own transaction, so a crash cannot separate them.
pub(super) async fn enqueue_webhook(tx: &mut Tx, job_id: &str, to: Status, at: i64) -> Result<()> {
    let Some(event) = EventType::of_job_transition(to) else {
        return Ok(());
    };
    let statement = delivery_insert(event, &DeliverySource::job_row("FROM jobs WHERE id = ?"));
    let statement = tx.d.sql(&statement).into_owned();
    sqlx::query(&statement)
        .bind(DeliveryId::new().0)
        .bind(at)
        .bind(at)
        .bind(job_id)
        .execute(&mut *tx.tx)
        .await?;
    Ok(())
}

/// A try's result for one delivery, within `tx`, if `claim_token` still holds it: the delivery
/// moved on and the try logged (kept on the delivery's row if it delivered). A 410 also stops
/// the tenant's other pending deliveries to that endpoint and drops it as any of the tenant's
/// keys' default webhook.
pub(super) async fn finish_in(
    tx: &mut Tx,
    id: &DeliveryId,
    claim_token: &str,
    tried: &DeliveryTry,
    next: DeliveryNext,
) -> Result<bool> {
    let f = finished_columns(tried, next);
    // Fenced by the claim: a try whose hold ran out, or that a redelivery overtook, records
    // nothing.
    let changed = sqlx::query(&tx.d.sql(
        "UPDATE webhook_deliveries SET status = ?, tries = ?, next_try_at = ?, delivered_at = ?, \
             delivered_status = ?, delivered_latency_ms = ?, claim_token = NULL \
         WHERE id = ? AND claim_token = ?",
    ))
    .bind(f.status)
    .bind(tried.number as i64)
    .bind(f.next_try_at)
    .bind(f.delivered_at)
    .bind(f.delivered_status)
    .bind(f.delivered_latency_ms)
    .bind(id.as_str())
    .bind(claim_token)
    .execute(&mut *tx.tx)
    .await?
    .rows_affected();
    if changed == 0 {
        return Ok(false);
    }
    // A try that delivers is kept on the delivery's row (`finished_columns`).
    if next != DeliveryNext::Delivered {
        sqlx::query(&tx.d.sql(
            "INSERT INTO webhook_tries (delivery_id, number, at, status_code, latency_ms, error) VALUES (?, ?, ?, ?, ?, ?)",
        ))
        .bind(id.as_str())
        .bind(tried.number as i64)
        .bind(to_millis(tried.at))
        .bind(tried.status_code.map(i64::from))
        .bind(tried.latency_ms as i64)
        .bind(tried.error.as_deref())
        .execute(&mut *tx.tx)
        .await?;
    }
    if next == DeliveryNext::Gone {
        // 410: the endpoint wants nothing more from this tenant. The tenant's other pending
        // deliveries to it stop too, and none of its keys keeps it as the default webhook.
        let row = sqlx::query(&tx.d.sql(
            "SELECT d.url, j.tenant FROM webhook_deliveries d JOIN jobs j ON j.id = d.job_id WHERE d.id = ?",
        ))
        .bind(id.as_str())
        .fetch_one(&mut *tx.tx)
        .await?;
        let (url, tenant): (String, String) = (row.try_get("url")?, row.try_get("tenant")?);
        sqlx::query(&tx.d.sql(
            "UPDATE webhook_deliveries SET status = 'gone', next_try_at = NULL \
             WHERE url = ? AND status = 'pending' AND claim_token IS NULL \
               AND job_id IN (SELECT id FROM jobs WHERE tenant = ?)",
        ))
        .bind(&url)
        .bind(&tenant)
        .execute(&mut *tx.tx)
        .await?;
        sqlx::query(&tx.d.sql(
            "UPDATE api_keys SET default_webhook = NULL WHERE default_webhook = ? AND tenant = ?",
        ))
        .bind(&url)
        .bind(&tenant)
        .execute(&mut *tx.tx)
        .await?;
    }
    Ok(true)
}

/// The due deliveries' claim, oldest first, up to `limit`. The batch is chosen first, walking the
/// due index in its order (next_try_at, id) and stopping at the limit; only the chosen deliveries
/// are joined to their jobs and keys. Joined first, every due delivery was read, joined and
/// sorted on each claim (the plan test holds this shape).
///
/// On Postgres the same statement marks the batch claimed (held until the time bound third,
/// fenced by the token bound fourth), as a data-modifying CTE over the chosen rows: the mark was
/// a statement of its own, a second round trip and a second plan per claim, and it found each
/// row again by its key. SQLite marks them with `delivery_mark_sql`, a call within the process.
/// Binds: the time, the first tries' due time, the most it takes, then on Postgres the hold's
/// end and the token. The limit is bound, not written in: a pass asks for what its hand-offs
/// left of its batch, and each limit written in was a statement of its own, prepared and
/// planned apart on every connection (a sixth to a quarter of the claims were planned, which
/// took longer than running them).
pub(super) fn delivery_claim_sql(dialect: Dialect) -> String {
    let due = "SELECT id, job_id, event_type, url, created_at, tries, schedule_base, next_try_at \
         FROM webhook_deliveries \
         WHERE status = 'pending' AND next_try_at <= ? AND (tries > 0 OR next_try_at <= ?) \
         ORDER BY next_try_at, id LIMIT ?";
    // The mark finds its rows by key alone (`= ANY (ARRAY(…))`): as a join with the batch
    // (`UPDATE … FROM`), its plan hashed the whole table against it.
    let (with, batch) = match dialect {
        Dialect::Sqlite => (String::new(), format!("({due}) d")),
        Dialect::Postgres => (
            format!(
                "WITH d AS ({due} FOR UPDATE SKIP LOCKED), \
                 marked AS (UPDATE webhook_deliveries SET next_try_at = ?, claim_token = ? \
                       WHERE id = ANY (ARRAY(SELECT id FROM d)) RETURNING id) "
            ),
            "d JOIN marked ON marked.id = d.id".to_owned(),
        ),
    };
    dialect
        .sql(&format!(
            "{with}SELECT d.id, d.job_id, d.event_type, d.url, d.created_at, d.tries, d.schedule_base, j.key_id, \
                    k.webhook_secret, k.previous_webhook_secret, k.previous_secret_until \
             FROM {batch} \
             JOIN jobs j ON j.id = d.job_id \
             LEFT JOIN api_keys k ON k.id = j.key_id \
             ORDER BY d.next_try_at, d.id"
        ))
        .into_owned()
}

/// A key's secrets as `webhook_secrets` shows them at `at`: the previous one only while its
/// rotation lasts (`previous_until`); `None` when the key has none yet (the deliverer then asks
/// for one to be made).
pub(super) fn shown_secrets(
    current: Option<String>,
    previous: Option<String>,
    previous_until: Option<i64>,
    at: i64,
) -> Option<WebhookSecrets> {
    current.map(|current| WebhookSecrets {
        current,
        previous: previous.filter(|_| previous_until.is_some_and(|until| until > at)),
    })
}

/// Deliveries this process's successes wrote already claimed, for its deliverer: whether it
/// takes them (`on`, while it runs) and those it has not taken yet.
#[derive(Default)]
pub(super) struct Handoff {
    pub(super) on: bool,
    pub(super) held: Vec<DueDelivery>,
}

/// The most deliveries handed over and not yet taken: past it, successes write theirs pending,
/// for any deliverer's claim, so a deliverer held up by slow receivers does not gather a backlog
/// in memory (four passes' worth).
pub(crate) const HANDOFF_CAP: usize = 128;

impl Handoff {
    /// Whether a success written now may hand its delivery over.
    pub(super) fn takes_more(&self) -> bool {
        self.on && self.held.len() < HANDOFF_CAP
    }
}

/// `handed` split into those handed over within `fresh_for` of `now` and those before.
pub(super) fn split_stale(
    handed: Vec<DueDelivery>,
    now: crate::time::Timestamp,
    fresh_for: Duration,
) -> (Vec<DueDelivery>, Vec<DueDelivery>) {
    let fresh_for = chrono::Duration::from_std(fresh_for).unwrap_or(chrono::Duration::MAX);
    handed
        .into_iter()
        .partition(|d| now.signed_duration_since(d.created_at) <= fresh_for)
}

impl SqlLedger {
    /// Keeps `handed`, the deliveries a success just wrote claimed, for this process's
    /// deliverer; if it has stopped meanwhile, makes them due again for any deliverer.
    pub(super) async fn hand_over(&self, handed: Vec<DueDelivery>) -> Result<()> {
        let refused = {
            let mut handoff = self.handoff.lock().expect("the hand-off is never poisoned");
            if handoff.on {
                handoff.held.extend(handed);
                return Ok(());
            }
            handed
        };
        self.release_handed(&refused).await
    }

    /// Makes handed deliveries due now, each only while its own claim still holds it: one
    /// statement for all of them.
    async fn release_handed(&self, handed: &[DueDelivery]) -> Result<()> {
        if handed.is_empty() {
            return Ok(());
        }
        let statement = format!(
            "UPDATE webhook_deliveries SET next_try_at = ?, claim_token = NULL \
             WHERE (id, claim_token) IN (VALUES {}) AND status = 'pending'",
            value_rows("(?, ?)", handed.len())
        );
        let statement = self.sql(&statement);
        let mut query = sqlx::query(&statement).bind(to_millis(crate::time::now()));
        for delivery in handed {
            query = query
                .bind(delivery.id.as_str())
                .bind(delivery.claim_token.as_str());
        }
        query.execute(&self.pool).await?;
        Ok(())
    }
}

/// SQLite's mark of a claimed batch (`delivery_claim_sql` marks it within the claim on
/// Postgres): `shape` ids, padded to a power of two with repeats (see `renew_leases`). Binds:
/// the hold's end, the token, then the ids.
fn delivery_mark_sql(shape: usize) -> String {
    format!(
        "UPDATE webhook_deliveries SET next_try_at = ?, claim_token = ? WHERE id IN ({})",
        vec!["?"; shape].join(", ")
    )
}

#[async_trait]
impl DeliveryLedger for SqlLedger {
    fn start_handing_deliveries(&self) {
        // SQLite's successes write no delivery claimed: its one process claims its own
        // deliveries within the process, with no round trip to spare.
        if self.dialect == Dialect::Postgres {
            self.handoff
                .lock()
                .expect("the hand-off is never poisoned")
                .on = true;
        }
    }

    async fn stop_handing_deliveries(&self) -> Result<()> {
        let left = {
            let mut handoff = self.handoff.lock().expect("the hand-off is never poisoned");
            handoff.on = false;
            std::mem::take(&mut handoff.held)
        };
        self.release_handed(&left).await
    }

    async fn take_handed_deliveries(&self, limit: usize) -> Result<Vec<DueDelivery>> {
        let taken: Vec<DueDelivery> = {
            let mut handoff = self.handoff.lock().expect("the hand-off is never poisoned");
            let n = limit.min(handoff.held.len());
            handoff.held.drain(..n).collect()
        };
        let (fresh, stale) = split_stale(taken, crate::time::now(), DELIVERY_HOLD / 2);
        self.release_handed(&stale).await?;
        Ok(fresh)
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
        // One token for the whole claim, written in one statement: each delivery's row is
        // fenced by it alone, and a redelivery or a later claim writes a new one.
        let claim_token = uuid::Uuid::new_v4().simple().to_string();
        let held_until = at + hold.as_millis() as i64;
        let claim = delivery_claim_sql(self.dialect);
        let query = sqlx::query(&claim)
            .bind(at)
            .bind(first_due)
            .bind(i64::from(limit));
        // On Postgres the claim and its mark are one statement, atomic without a transaction
        // around it: a transaction added two round trips (`BEGIN`, `COMMIT`) to every claim,
        // and under load most claims only fill a pass's batch and find nothing.
        let rows = match self.dialect {
            Dialect::Postgres => {
                query
                    .bind(held_until)
                    .bind(&claim_token)
                    .fetch_all(&mut *self.hot.conn().await?)
                    .await?
            }
            Dialect::Sqlite => {
                let mut tx = self.hot_tx().await?;
                let rows = query.fetch_all(&mut *tx.tx).await?;
                if !rows.is_empty() {
                    let shape = rows.len().next_power_of_two();
                    let mark = delivery_mark_sql(shape);
                    let mut query = sqlx::query(&mark).bind(held_until).bind(&claim_token);
                    for i in 0..shape {
                        query = query.bind(rows[i.min(rows.len() - 1)].try_get::<String, _>("id")?);
                    }
                    query.execute(&mut *tx.tx).await?;
                }
                tx.commit().await?;
                rows
            }
        };
        let mut due = Vec::with_capacity(rows.len());
        for r in &rows {
            let id: String = r.try_get("id")?;
            let claim_token = claim_token.clone();
            let job_id: String = r.try_get("job_id")?;
            let secrets = shown_secrets(
                r.try_get("webhook_secret")?,
                r.try_get("previous_webhook_secret")?,
                r.try_get("previous_secret_until")?,
                at,
            );
            due.push(DueDelivery {
                id: DeliveryId(id),
                job_id: job_id
                    .parse()
                    .map_err(|_| LedgerError::Corrupt(format!("job id '{job_id}'")))?,
                event_type: text_column(r, "event_type")?,
                url: r.try_get("url")?,
                created_at: from_millis(r.try_get("created_at")?),
                tries: r.try_get::<i64, _>("tries")? as u32,
                schedule_base: r.try_get::<i64, _>("schedule_base")? as u32,
                key_id: r.try_get::<Option<String>, _>("key_id")?.map(KeyId),
                secrets,
                claim_token,
            });
        }
        Ok(due)
    }

    async fn finish_delivery_try(
        &self,
        id: &DeliveryId,
        claim_token: &str,
        tried: &DeliveryTry,
        next: DeliveryNext,
    ) -> Result<bool> {
        self.delivery_results
            .finish(id, claim_token, tried, next)
            .await
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
            "SELECT id, event_type, url, created_at, status, next_try_at, delivered_at, tries, \
                 delivered_status, delivered_latency_ms \
             FROM webhook_deliveries WHERE job_id = ? \
             ORDER BY created_at, \
                 CASE WHEN event_type = 'job.started' THEN 0 WHEN event_type LIKE 'job.%' THEN 1 ELSE 2 END, id",
        ))
        .bind(&sid)
        .fetch_all(&self.pool)
        .await?;
        // Events of one millisecond (a job claimed and ended within it, on a fast path) are in
        // the order they happen: the start, the job's end, its pipeline's end. Their ids alone
        // would not say: a batch's ids share a head and end in digits of their own.
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let id: String = r.try_get("id")?;
            let mut tries = sqlx::query(&self.sql(
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
            // The try that delivered it, kept on its row (`finished_columns`).
            let delivered_at = r.try_get::<Option<i64>, _>("delivered_at")?;
            let kept = r.try_get::<Option<i64>, _>("delivered_status")?;
            if let (Some(at), Some(status_code)) = (delivered_at, kept) {
                tries.push(DeliveryTry {
                    number: r.try_get::<i64, _>("tries")? as u32,
                    at: from_millis(at),
                    status_code: Some(status_code as u16),
                    latency_ms: r
                        .try_get::<Option<i64>, _>("delivered_latency_ms")?
                        .unwrap_or_default() as u64,
                    error: None,
                });
            }
            out.push(Delivery {
                id: DeliveryId(id),
                event_type: text_column(r, "event_type")?,
                url: r.try_get("url")?,
                created_at: from_millis(r.try_get("created_at")?),
                status: text_column(r, "status")?,
                next_try_at: r.try_get::<Option<i64>, _>("next_try_at")?.map(from_millis),
                delivered_at: r
                    .try_get::<Option<i64>, _>("delivered_at")?
                    .map(from_millis),
                tries,
            });
        }
        Ok(Some(out))
    }

    async fn redeliver(
        &self,
        tenant: &TenantId,
        job_id: JobId,
        delivery_id: &DeliveryId,
    ) -> Result<bool> {
        // Not while a worker holds it (it is being tried now); the schedule starts over.
        let at = to_millis(now());
        let mut tx = self.write_tx().await?;
        // The try that delivered it, kept on its row, becomes a row of the tries' log first, so
        // the log keeps it once the delivery is pending again.
        sqlx::query(&self.sql(
            "INSERT INTO webhook_tries (delivery_id, number, at, status_code, latency_ms, error) \
             SELECT id, tries, delivered_at, delivered_status, COALESCE(delivered_latency_ms, 0), NULL \
             FROM webhook_deliveries \
             WHERE id = ? AND job_id = ? AND job_id IN (SELECT id FROM jobs WHERE id = ? AND tenant = ?) \
               AND delivered_at IS NOT NULL AND delivered_status IS NOT NULL \
             ON CONFLICT DO NOTHING",
        ))
        .bind(delivery_id.as_str())
        .bind(job_id.to_string())
        .bind(job_id.to_string())
        .bind(&tenant.0)
        .execute(&mut *tx.tx)
        .await?;
        let changed = sqlx::query(&self.sql(
            "UPDATE webhook_deliveries SET status = 'pending', next_try_at = ?, schedule_base = tries, \
                 delivered_at = NULL, delivered_status = NULL, delivered_latency_ms = NULL \
             WHERE id = ? AND job_id = ? AND job_id IN (SELECT id FROM jobs WHERE id = ? AND tenant = ?) \
               AND NOT (status = 'pending' AND claim_token IS NOT NULL AND next_try_at > ?)",
        ))
        .bind(at)
        .bind(delivery_id.as_str())
        .bind(job_id.to_string())
        .bind(job_id.to_string())
        .bind(&tenant.0)
        .bind(at)
        .execute(&mut *tx.tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(changed == 1)
    }
}
