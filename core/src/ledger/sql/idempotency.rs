//! Idempotency keys: a request takes a key with its fingerprint, then answers it or lets it
//! go; a retry replays the answer, waits, or runs again. Expired keys are purged.

use super::*;

/// Marks what the request holding `key` created, in the transaction that creates it.
pub(super) async fn link_idempotent(
    tx: &mut Tx,
    key: &IdempotencyRef,
    resource: &str,
) -> Result<()> {
    sqlx::query(
        &tx.d
            .sql("UPDATE idempotency_keys SET resource_id = ? WHERE key_id = ? AND idem_key = ?"),
    )
    .bind(resource)
    .bind(key.key_id.as_str())
    .bind(&key.key)
    .execute(&mut *tx.tx)
    .await?;
    Ok(())
}

#[async_trait]
impl IdempotencyLedger for SqlLedger {
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
        .bind(key.key_id.as_str())
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
                    .bind(key.key_id.as_str())
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
                    .bind(key.key_id.as_str())
                    .bind(&key.key)
                    .execute(&mut *tx.tx)
                    .await?;
                }
                // Two first uses at once: one inserts, the other finds the key taken.
                let inserted = sqlx::query(&self.sql(
                    "INSERT INTO idempotency_keys (key_id, idem_key, fingerprint, locked_until, created_at, expires_at) \
                     VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key_id, idem_key) DO NOTHING",
                ))
                .bind(key.key_id.as_str())
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
        .bind(key.key_id.as_str())
        .bind(&key.key)
        .execute(&mut *self.writer.conn().await?)
        .await?;
        Ok(())
    }

    async fn abandon_idempotent(&self, key: &IdempotencyRef) -> Result<()> {
        sqlx::query(&self.sql(
            "DELETE FROM idempotency_keys WHERE key_id = ? AND idem_key = ? AND status_code IS NULL AND resource_id IS NULL",
        ))
        .bind(key.key_id.as_str())
        .bind(&key.key)
        .execute(&mut *self.writer.conn().await?)
        .await?;
        // Something was created before the failure: unlock, so a retry is answered with it.
        sqlx::query(&self.sql(
            "UPDATE idempotency_keys SET locked_until = NULL \
             WHERE key_id = ? AND idem_key = ? AND status_code IS NULL AND resource_id IS NOT NULL",
        ))
        .bind(key.key_id.as_str())
        .bind(&key.key)
        .execute(&mut *self.writer.conn().await?)
        .await?;
        Ok(())
    }

    async fn purge_idempotency(&self, now: Timestamp, limit: u32) -> Result<u64> {
        let done = sqlx::query(&self.sql(&format!(
            "DELETE FROM idempotency_keys WHERE (key_id, idem_key) IN \
             (SELECT key_id, idem_key FROM idempotency_keys WHERE expires_at <= ? LIMIT {limit})"
        )))
        .bind(to_millis(now))
        .execute(&mut *self.writer.conn().await?)
        .await?;
        Ok(done.rows_affected())
    }
}
