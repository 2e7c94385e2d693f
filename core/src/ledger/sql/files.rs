//! Uploads: one row per file, written once when its object is stored, and marked deleted when
//! its owner deletes it or the janitor finds it expired. Reads are by tenant, so another
//! tenant's file is one that does not exist.

use super::*;

const FILE_COLUMNS: &str =
    "id, tenant, object_key, name, content_type, size, sha256, metadata, created_at, expires_at";

fn file_from_row(row: &AnyRow) -> Result<StoredFile> {
    let id: String = row.try_get("id")?;
    let metadata: String = row.try_get("metadata")?;
    Ok(StoredFile {
        metadata: serde_json::from_str(&metadata)
            .map_err(|e| LedgerError::Corrupt(format!("file {id} metadata: {e}")))?,
        tenant: TenantId(row.try_get("tenant")?),
        object_key: row.try_get("object_key")?,
        name: row.try_get("name")?,
        content_type: row.try_get("content_type")?,
        size: row.try_get::<i64, _>("size")? as u64,
        sha256: row.try_get("sha256")?,
        created_at: from_millis(row.try_get("created_at")?),
        expires_at: from_millis(row.try_get("expires_at")?),
        id,
    })
}

#[async_trait]
impl FileLedger for SqlLedger {
    async fn insert_file(&self, file: &StoredFile) -> Result<()> {
        sqlx::query(&self.sql(&format!(
            "INSERT INTO files ({FILE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        )))
        .bind(&file.id)
        .bind(&file.tenant.0)
        .bind(&file.object_key)
        .bind(&file.name)
        .bind(&file.content_type)
        .bind(i64::try_from(file.size).unwrap_or(i64::MAX))
        .bind(&file.sha256)
        .bind(file.metadata.to_string())
        .bind(to_millis(file.created_at))
        .bind(to_millis(file.expires_at))
        .execute(&mut *self.writer.conn().await?)
        .await?;
        Ok(())
    }

    async fn get_file(&self, tenant: &TenantId, id: &str) -> Result<Option<StoredFile>> {
        let row = sqlx::query(&self.sql(&format!(
            "SELECT {FILE_COLUMNS} FROM files \
             WHERE id = ? AND tenant = ? AND deleted_at IS NULL AND expires_at > ?"
        )))
        .bind(id)
        .bind(&tenant.0)
        .bind(to_millis(now()))
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(file_from_row).transpose()
    }

    async fn list_files(
        &self,
        tenant: &TenantId,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Vec<StoredFile>> {
        // Ids are UUIDv7 text: every one sorts before "~".
        let rows = sqlx::query(&self.sql(&format!(
            "SELECT {FILE_COLUMNS} FROM files \
             WHERE tenant = ? AND id < ? AND deleted_at IS NULL AND expires_at > ? \
             ORDER BY id DESC LIMIT ?"
        )))
        .bind(&tenant.0)
        .bind(before.unwrap_or("~"))
        .bind(to_millis(now()))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(file_from_row).collect()
    }

    async fn expired_files(&self, now: Timestamp, limit: u32) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query(&self.sql(
            "SELECT id, object_key FROM files WHERE deleted_at IS NULL AND expires_at <= ? \
             ORDER BY expires_at LIMIT ?",
        ))
        .bind(to_millis(now))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("object_key")?)))
            .collect()
    }

    async fn mark_file_deleted(&self, tenant: Option<&TenantId>, id: &str) -> Result<bool> {
        let marked = sqlx::query(&self.sql(
            "UPDATE files SET deleted_at = ? \
             WHERE id = ? AND deleted_at IS NULL AND (CAST(? AS TEXT) IS NULL OR tenant = ?)",
        ))
        .bind(to_millis(now()))
        .bind(id)
        .bind(tenant.map(|t| t.0.as_str()))
        .bind(tenant.map(|t| t.0.as_str()))
        .execute(&mut *self.writer.conn().await?)
        .await?
        .rows_affected();
        Ok(marked == 1)
    }
}
