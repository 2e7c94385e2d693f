//! API keys: minted keys stored by hash, lookup, revocation, per-key limits, default webhook
//! and the webhook signing secrets (sealed at rest by the caller).

use super::*;

#[async_trait]
impl KeyLedger for SqlLedger {
    async fn insert_api_key(&self, tenant: &TenantId, key: &MintedKey) -> Result<ApiKeyRecord> {
        let record = ApiKeyRecord {
            id: KeyId(format!("key_{}", uuid::Uuid::now_v7().simple())),
            tenant: tenant.clone(),
            prefix: key.display_prefix.clone(),
            created_at: now(),
            revoked_at: None,
            default_webhook: None,
            limits: KeyLimits::default(),
        };
        sqlx::query(&self.sql("INSERT INTO api_keys (id, tenant, key_hash, prefix, created_at) VALUES (?, ?, ?, ?, ?)"))
            .bind(record.id.as_str())
            .bind(&tenant.0)
            .bind(&key.hash)
            .bind(&record.prefix)
            .bind(to_millis(record.created_at))
            .execute(&mut *self.writer.conn().await?)
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
        .execute(&mut *self.writer.conn().await?)
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
        .execute(&mut *self.writer.conn().await?)
        .await?
        .rows_affected())
    }

    async fn webhook_secrets(&self, key_id: &KeyId, candidate: &str) -> Result<WebhookSecrets> {
        let read = self.sql(
            "SELECT webhook_secret, previous_webhook_secret, previous_secret_until FROM api_keys WHERE id = ?",
        );
        let read = || async {
            sqlx::query(&read)
                .bind(key_id.as_str())
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
            .bind(key_id.as_str())
            .execute(&mut *self.writer.conn().await?)
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
        key_id: &KeyId,
        new: &str,
        previous_until: Timestamp,
    ) -> Result<()> {
        sqlx::query(&self.sql(
            "UPDATE api_keys SET previous_webhook_secret = webhook_secret, previous_secret_until = ?, \
                 webhook_secret = ? WHERE id = ?",
        ))
        .bind(to_millis(previous_until))
        .bind(new)
        .bind(key_id.as_str())
        .execute(&mut *self.writer.conn().await?)
        .await?;
        Ok(())
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
        .execute(&mut *self.writer.conn().await?)
        .await?
        .rows_affected())
    }

    async fn count_api_keys(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(&self.sql("SELECT COUNT(*) FROM api_keys"))
            .fetch_one(&self.pool)
            .await?;
        Ok(n as u64)
    }
}
