//! Uploads in the ledger: the record of a file stored with `POST /v1/files` and the trait its
//! engines implement. Kept apart from the job aggregates: a file is not part of any job's
//! lifecycle, only referenced by URL from jobs' inputs.

use super::Result;
use crate::job::TenantId;
use crate::time::Timestamp;
use async_trait::async_trait;

/// An upload (`POST /v1/files`), kept in the object store with the outputs' expiry.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredFile {
    /// A UUIDv7, so ids sort by creation (the list's cursor).
    pub id: String,
    pub tenant: TenantId,
    pub object_key: String,
    pub name: String,
    pub content_type: String,
    pub size: u64,
    /// Hex SHA-256 of the bytes.
    pub sha256: String,
    /// The client's own JSON, kept as given.
    pub metadata: serde_json::Value,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

/// Uploads: recorded when stored, read and listed by their tenant, deleted by it or by the
/// janitor once expired.
#[async_trait]
pub trait FileLedger: Send + Sync {
    async fn insert_file(&self, file: &StoredFile) -> Result<()>;
    /// The tenant's file, unless it was deleted or has expired.
    async fn get_file(&self, tenant: &TenantId, id: &str) -> Result<Option<StoredFile>>;
    /// The tenant's live files, newest first, older than `before` (a file id) when given.
    async fn list_files(
        &self,
        tenant: &TenantId,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Vec<StoredFile>>;
    /// Files past their expiry and not yet deleted, oldest first: `(id, object_key)`.
    async fn expired_files(&self, now: Timestamp, limit: u32) -> Result<Vec<(String, String)>>;
    /// Marks the file deleted (its object is gone); false if it already was, or is not the
    /// tenant's (`None`: any tenant's, for the janitor).
    async fn mark_file_deleted(&self, tenant: Option<&TenantId>, id: &str) -> Result<bool>;
}
