//! `kiln-storage` owns where outputs live: the `ObjectStore` trait, the local-directory store of
//! the embedded default, and signed download URLs. Bodies move as byte streams so that an output
//! of any size passes through with bounded memory (invariant 4). Object keys are chosen by the
//! caller and are deterministic (`jobs/{job_id}/{index}.{ext}`), so a retried write overwrites the
//! same object instead of leaving a second copy.

mod downloads;
mod local;
pub mod s3;
mod signing;

pub use downloads::{SignedDownloads, FILES_PATH};
pub use local::LocalStore;
pub use s3::{S3Settings, S3Store};
pub use signing::{SignatureError, UrlSigner};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;

/// The longest any download URL may live, whatever the object's expiry says (S3's own cap on
/// presigned URLs is the same).
pub const MAX_URL_LIFETIME: chrono::Duration = chrono::Duration::days(7);

pub type ByteStream = BoxStream<'static, std::io::Result<Bytes>>;

/// An object as a download describes it before sending a byte: its `Content-Length`, `ETag`
/// and `Last-Modified`, and the length a byte range is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub bytes: u64,
    /// A quoted entity tag (RFC 9110 §8.8.3) that changes whenever the object's bytes do.
    pub etag: String,
    pub last_modified: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("object '{0}' not found")]
    NotFound(String),
    #[error("invalid object key '{0}'")]
    InvalidKey(String),
    #[error("storage I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("object store error: {0}")]
    Backend(String),
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
    /// Describes the object without reading it.
    async fn head(&self, key: &str) -> Result<ObjectInfo, StorageError>;
    /// Streams the bytes `range` of the object; the caller has checked the range against the
    /// object's length (`head`), so `range.end` is at most that length.
    async fn get_range(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> Result<ByteStream, StorageError>;
    /// Deletes the object; deleting a missing object is not an error.
    async fn delete(&self, key: &str) -> Result<(), StorageError>;
    /// A URL that downloads the object without other credentials until `min(until, now + 7 days)`.
    async fn presign_get(&self, key: &str, until: DateTime<Utc>) -> Result<url::Url, StorageError>;

    /// Recognises a download URL this store issued: `None` when the URL is not one of ours,
    /// else the object key if the URL is still valid (its signature checks and it has not
    /// expired). A later job that takes an earlier output as input is then read straight from
    /// the store, whatever the network between worker and store looks like, and with exactly
    /// the authority the URL itself grants.
    async fn resolve_own_url(&self, url: &url::Url) -> Option<Result<String, SignatureError>>;
}

/// The media type a key's extension names: what a download says of an object the local store
/// keeps no type for, and what an output no sniffing recognises is recorded as.
pub fn media_type_of(key: &str) -> &'static str {
    let ext = key
        .rsplit_once('.')
        .map(|(_, ext)| ext.to_ascii_lowercase());
    match ext.as_deref() {
        Some("png") => "image/png",
        Some("gif") => "image/gif",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("webp") => "image/webp",
        Some("mp4" | "m4v") => "video/mp4",
        Some("webm") => "video/webm",
        Some("mov") => "video/quicktime",
        Some("wav") => "audio/wav",
        Some("mp3") => "audio/mpeg",
        Some("json") => "application/json",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
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

/// Where outputs live, as configured by `storage_url`: `file:///dir` or `s3://bucket/prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageUrl {
    Local(std::path::PathBuf),
    S3 { bucket: String, prefix: String },
}

impl std::str::FromStr for StorageUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let url = url::Url::parse(s).map_err(|e| format!("'{s}' is not a URL: {e}"))?;
        match url.scheme() {
            "file" => url
                .to_file_path()
                .map(StorageUrl::Local)
                .map_err(|_| format!("'{s}' is not an absolute file:/// path")),
            "s3" => {
                let bucket = url
                    .host_str()
                    .filter(|b| !b.is_empty())
                    .ok_or("an s3:// URL names its bucket: s3://bucket/prefix")?;
                Ok(StorageUrl::S3 {
                    bucket: bucket.to_owned(),
                    prefix: url.path().trim_matches('/').to_owned(),
                })
            }
            other => Err(format!(
                "storage_url must be file:///dir or s3://bucket/prefix, not {other}://"
            )),
        }
    }
}

#[cfg(test)]
mod url_tests {
    use super::*;

    #[test]
    fn storage_urls_parse() {
        assert_eq!(
            "s3://media/kiln/outputs".parse(),
            Ok(StorageUrl::S3 {
                bucket: "media".into(),
                prefix: "kiln/outputs".into()
            })
        );
        assert_eq!(
            "s3://media".parse(),
            Ok(StorageUrl::S3 {
                bucket: "media".into(),
                prefix: String::new()
            })
        );
        assert_eq!(
            "file:///var/kiln".parse(),
            Ok(StorageUrl::Local("/var/kiln".into()))
        );
        assert!("http://x/y".parse::<StorageUrl>().is_err());
        assert!("s3:///nobucket".parse::<StorageUrl>().is_err());
    }
}
