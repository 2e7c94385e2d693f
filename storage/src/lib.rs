//! `kiln-storage` owns where outputs live: the `ObjectStore` trait, the local-directory store of
//! the embedded default, and signed download URLs. Bodies move as byte streams so that an output
//! of any size passes through with bounded memory (invariant 4). Object keys are chosen by the
//! caller and are deterministic (`jobs/{job_id}/{index}.{ext}`), so a retried write overwrites the
//! same object instead of leaving a second copy.

mod local;
mod signing;

pub use local::LocalStore;
pub use signing::{SignatureError, UrlSigner};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;

/// The longest any download URL may live, whatever the object's expiry says (S3's own cap on
/// presigned URLs is the same).
pub const MAX_URL_LIFETIME: chrono::Duration = chrono::Duration::days(7);

pub type ByteStream = BoxStream<'static, std::io::Result<Bytes>>;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("object '{0}' not found")]
    NotFound(String),
    #[error("invalid object key '{0}'")]
    InvalidKey(String),
    #[error("storage I/O error: {0}")]
    Io(#[from] std::io::Error),
}

#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    /// Streams `body` into the object at `key`, replacing any object already there; returns the
    /// number of bytes stored. The object appears whole or not at all.
    async fn put(
        &self,
        key: &str,
        content_type: &str,
        body: ByteStream,
    ) -> Result<u64, StorageError>;
    /// Streams the object's bytes.
    async fn get(&self, key: &str) -> Result<ByteStream, StorageError>;
    /// Deletes the object; deleting a missing object is not an error.
    async fn delete(&self, key: &str) -> Result<(), StorageError>;
    /// A URL that downloads the object without other credentials until `min(until, now + 7 days)`.
    async fn presign_get(&self, key: &str, until: DateTime<Utc>) -> Result<url::Url, StorageError>;
}

/// Object keys are relative paths of plain segments: no `..`, no empty segment, no backslash, so
/// a key can never name a file outside the store.
pub fn validate_key(key: &str) -> Result<(), StorageError> {
    let ok = !key.is_empty()
        && key.len() <= 512
        && key.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        });
    if ok {
        Ok(())
    } else {
        Err(StorageError::InvalidKey(key.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_escape_the_store() {
        assert!(validate_key("jobs/0190/0.png").is_ok());
        for bad in [
            "",
            "/etc/passwd",
            "jobs/../../x",
            "jobs//x",
            "a\\b",
            "jobs/./x",
            "a b",
        ] {
            assert!(validate_key(bad).is_err(), "{bad}");
        }
    }
}
