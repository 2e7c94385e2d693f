//! Delivery results: the outcome of each webhook try, written a batch at a time. A pass of the
//! deliverer tries up to 32 deliveries at once and their results come back together; whatever
//! results are waiting when the previous batch is written go together, so a busy deliverer
//! pays one statement (Postgres) or one transaction (SQLite) per batch instead of one per try.
//! Each result is still fenced by its delivery's claim token, and gets its own answer. If a
//! batch fails, each of its results is written alone, so one result's error is its own.

use super::*;

/// Most results one batch carries.
const RESULTS_MAX: usize = 64;

pub(super) struct PendingResult {
    id: DeliveryId,
    claim_token: String,
    tried: DeliveryTry,
    next: DeliveryNext,
    reply: tokio::sync::oneshot::Sender<Result<bool>>,
}

pub(super) struct DeliveryResults {
    queue: tokio::sync::mpsc::UnboundedSender<PendingResult>,
}

impl DeliveryResults {
    pub(super) fn start(pool: Writer, dialect: Dialect, window: Arc<AtomicU32>) -> Self {
        let (queue, mut waiting) = tokio::sync::mpsc::unbounded_channel::<PendingResult>();
        tokio::spawn(async move {
            while let Some(first) = waiting.recv().await {
                let batch = crate::batch::take_waiting(first, &mut waiting, RESULTS_MAX);
                write_results(&pool, dialect, &window, batch).await;
            }
        });
        DeliveryResults { queue }
    }

    pub(super) async fn finish(
        &self,
        id: &DeliveryId,
        claim_token: &str,
        tried: &DeliveryTry,
        next: DeliveryNext,
    ) -> Result<bool> {
        let (reply, written) = tokio::sync::oneshot::channel();
        self.queue
            .send(PendingResult {
                id: id.clone(),
                claim_token: claim_token.to_owned(),
                tried: tried.clone(),
                next,
                reply,
            })
            .map_err(|_| LedgerError::WriterStopped)?;
        written.await.map_err(|_| LedgerError::WriterStopped)?
    }
}

async fn write_results(
    pool: &Writer,
    dialect: Dialect,
    window: &AtomicU32,
    batch: Vec<PendingResult>,
) {
    let results: Vec<&PendingResult> = batch.iter().collect();
    match write_batch(pool, dialect, window, &results).await {
        Ok(won) => {
            for (result, won) in batch.into_iter().zip(won) {
                let _ = result.reply.send(Ok(won));
            }
        }
        Err(e) if batch.len() > 1 => {
            tracing::debug!(error = %e, results = batch.len(), "a batch of delivery results failed; writing each alone");
            for result in batch {
                let won = write_batch(pool, dialect, window, &[&result]).await;
                let _ = result.reply.send(won.map(|mut w| w.remove(0)));
            }
        }
        Err(e) => {
            if let Some(result) = batch.into_iter().next() {
                let _ = result.reply.send(Err(e));
            }
        }
    }
}

/// Writes `results`, answering each in order. When none is a 410's (which stops other
/// deliveries too), on Postgres as one statement outside a transaction, on SQLite as two in
/// one (each delivery named once); otherwise one by one in one transaction.
async fn write_batch(
    pool: &Writer,
    dialect: Dialect,
    window: &AtomicU32,
    results: &[&PendingResult],
) -> Result<Vec<bool>> {
    let merged = |r: &&PendingResult| r.next != DeliveryNext::Gone;
    if dialect == Dialect::Postgres && results.iter().all(merged) {
        let held = finish_merged(pool, results).await?;
        return Ok(results
            .iter()
            .map(|r| held.contains(r.id.as_str()))
            .collect());
    }
    let mut ids = std::collections::HashSet::new();
    if dialect == Dialect::Sqlite
        && results.len() > 1
        && results
            .iter()
            .all(|r| merged(r) && ids.insert(r.id.as_str()))
    {
        let mut tx = begin_write(pool, dialect, window).await?;
        let held = finish_many_sqlite(&mut tx, results).await?;
        tx.commit().await?;
        return Ok(results
            .iter()
            .map(|r| held.contains(r.id.as_str()))
            .collect());
    }
    let mut tx = begin_write(pool, dialect, window).await?;
    let mut won = Vec::with_capacity(results.len());
    for r in results {
        won.push(finish_in(&mut tx, &r.id, &r.claim_token, &r.tried, r.next).await?);
    }
    tx.commit().await?;
    Ok(won)
}

/// The fenced updates of many deliveries and their tries' log rows, as one Postgres statement:
/// the results as `VALUES` rows (padded to a power of two with repeats of the last) joined to
/// their deliveries by id and claim token, each log row fed by the update that won. A try that
/// delivers is kept on the delivery's row instead (`finished_columns`). Returns the ids whose
/// claim still held.
async fn finish_merged(
    pool: &Writer,
    results: &[&PendingResult],
) -> Result<std::collections::HashSet<String>> {
    let shape = results.len().next_power_of_two();
    let rows = padded_values(
        &[
            "text", "text", "text", "bigint", "bigint", "bigint", "bigint", "bigint", "bigint",
            "bigint", "bigint", "text",
        ],
        shape,
    );
    let statement = Dialect::Postgres
        .sql(&format!(
            "WITH results (id, token, status, tries, next_try_at, delivered_at, delivered_status, \
                     delivered_latency_ms, at, status_code, latency_ms, error) \
                 AS (VALUES {rows}), \
             finished AS (UPDATE webhook_deliveries d SET status = r.status, tries = r.tries, \
                     next_try_at = r.next_try_at, delivered_at = r.delivered_at, \
                     delivered_status = r.delivered_status, delivered_latency_ms = r.delivered_latency_ms, \
                     claim_token = NULL \
                 FROM results r WHERE d.id = r.id AND d.claim_token = r.token \
                 RETURNING d.id, r.tries, r.at, r.status_code, r.latency_ms, r.error, r.delivered_status AS kept), \
             tried AS (INSERT INTO webhook_tries (delivery_id, number, at, status_code, latency_ms, error) \
                 SELECT id, tries, at, status_code, latency_ms, error FROM finished WHERE kept IS NULL) \
             SELECT id FROM finished"
        ))
        .into_owned();
    let mut query = sqlx::query(&statement);
    for i in 0..shape {
        let r = results[i.min(results.len() - 1)];
        query = bind_finished(query, r)
            .bind(to_millis(r.tried.at))
            .bind(r.tried.status_code.map(i64::from))
            .bind(r.tried.latency_ms as i64)
            .bind(r.tried.error.as_deref());
    }
    query
        .fetch_all(&mut *pool.conn().await?)
        .await?
        .iter()
        .map(|row| Ok(row.try_get("id")?))
        .collect()
}

/// The fenced updates of many deliveries (each named once) and their tries' log rows on SQLite,
/// in two statements within `tx` instead of two per result: the results as a CTE joined to
/// their deliveries by id and claim token (`UPDATE … FROM`), returning the deliveries whose
/// claim held, then the log rows of those alone. Returns the ids whose claim still held.
async fn finish_many_sqlite(
    tx: &mut Tx,
    results: &[&PendingResult],
) -> Result<std::collections::HashSet<String>> {
    let rows = value_rows("(?, ?, ?, ?, ?, ?, ?, ?)", results.len());
    let update = format!(
        "WITH results (id, token, status, tries, next_try_at, delivered_at, delivered_status, delivered_latency_ms) \
             AS (VALUES {rows}) \
         UPDATE webhook_deliveries SET status = results.status, tries = results.tries, \
             next_try_at = results.next_try_at, delivered_at = results.delivered_at, \
             delivered_status = results.delivered_status, delivered_latency_ms = results.delivered_latency_ms, \
             claim_token = NULL \
         FROM results \
         WHERE webhook_deliveries.id = results.id AND webhook_deliveries.claim_token = results.token \
         RETURNING webhook_deliveries.id"
    );
    let mut query = sqlx::query(&update);
    for r in results {
        query = bind_finished(query, r);
    }
    let mut held = std::collections::HashSet::new();
    for row in query.fetch_all(&mut *tx.tx).await? {
        held.insert(row.try_get::<String, _>("id")?);
    }
    // A try that delivers is kept on the delivery's row (`finished_columns`).
    let tried: Vec<_> = results
        .iter()
        .filter(|r| held.contains(r.id.as_str()) && r.next != DeliveryNext::Delivered)
        .collect();
    if !tried.is_empty() {
        let insert = format!(
            "INSERT INTO webhook_tries (delivery_id, number, at, status_code, latency_ms, error) VALUES {}",
            value_rows("(?, ?, ?, ?, ?, ?)", tried.len())
        );
        let mut query = sqlx::query(&insert);
        for r in tried {
            query = query
                .bind(r.id.as_str())
                .bind(r.tried.number as i64)
                .bind(to_millis(r.tried.at))
                .bind(r.tried.status_code.map(i64::from))
                .bind(r.tried.latency_ms as i64)
                .bind(r.tried.error.as_deref());
        }
        query.execute(&mut *tx.tx).await?;
    }
    Ok(held)
}

/// Binds a result's row as both batch statements start it: id, claim token, status, tries,
/// next try, delivered at, the delivering try's status and latency.
fn bind_finished<'q>(
    query: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>,
    r: &'q PendingResult,
) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>> {
    let f = finished_columns(&r.tried, r.next);
    query
        .bind(r.id.as_str())
        .bind(r.claim_token.as_str())
        .bind(f.status)
        .bind(r.tried.number as i64)
        .bind(f.next_try_at)
        .bind(f.delivered_at)
        .bind(f.delivered_status)
        .bind(f.delivered_latency_ms)
}

/// A delivery's columns after a try.
pub(super) struct Finished {
    pub(super) status: &'static str,
    /// When it is next due.
    pub(super) next_try_at: Option<i64>,
    /// When it was delivered, and the delivering try's answer and latency: a try that
    /// delivers is kept on the delivery's row, not as a row of `webhook_tries`, since the row
    /// already holds its time and number (`tries`).
    pub(super) delivered_at: Option<i64>,
    pub(super) delivered_status: Option<i64>,
    pub(super) delivered_latency_ms: Option<i64>,
}

/// A delivery's state after a try.
pub(super) fn finished_columns(tried: &DeliveryTry, next: DeliveryNext) -> Finished {
    let status = next.status().as_str();
    let mut finished = Finished {
        status,
        next_try_at: None,
        delivered_at: None,
        delivered_status: None,
        delivered_latency_ms: None,
    };
    match next {
        DeliveryNext::Delivered => {
            finished.delivered_at = Some(to_millis(tried.at));
            // A delivering try always has the receiver's (2xx) answer.
            finished.delivered_status = Some(i64::from(tried.status_code.unwrap_or(200)));
            finished.delivered_latency_ms = Some(tried.latency_ms as i64);
        }
        DeliveryNext::RetryAt(at) => finished.next_try_at = Some(to_millis(at)),
        DeliveryNext::Failed | DeliveryNext::Gone => {}
    }
    finished
}
