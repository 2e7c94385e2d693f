//! The local-directory store of the embedded default. Writes go to a temporary file beside the
//! target and are renamed into place, so a reader never sees half an object and a crash leaves at
//! most a stray temporary file. Downloads are served by Kiln's api at `/v1/files/{key}` behind a
//! signed URL; `resolve_own_url` lets Kiln recognise its own URLs when a later job takes an
//! earlier output as input, and read the object directly instead of fetching it over HTTP.

use crate::{
    validate_key, ByteStream, ObjectInfo, ObjectStore, SignatureError, SignedDownloads,
    StorageError, UrlSigner,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use std::io::Write;
use std::path::{Path, PathBuf};
use url::Url;

pub struct LocalStore {
    root: PathBuf,
    downloads: SignedDownloads,
}

impl LocalStore {
    /// `public_base` is the api's externally reachable base URL, used to build download URLs.
    pub fn new(root: impl Into<PathBuf>, public_base: Url, signer: UrlSigner) -> Self {
        LocalStore {
            root: root.into(),
            downloads: SignedDownloads::new(public_base, signer),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, key: &str) -> Result<PathBuf, StorageError> {
        validate_key(key)?;
        Ok(self.root.join(key))
    }

    /// Checks a download request's signature; on success the object may be served.
    pub fn verify(&self, key: &str, expires: i64, signature: &str) -> Result<(), SignatureError> {
        self.downloads.verify(key, expires, signature)
    }
}

/// How much of a body is gathered before it is handed to the blocking pool in one write.
const WRITE_BUFFER: usize = 256 * 1024;

/// A file written from async code a buffer at a time, each write one hop to the blocking pool.
struct BlockingWriter {
    /// `None` only while a hop holds it.
    file: Option<std::fs::File>,
    pending: Vec<u8>,
    written: u64,
}

impl BlockingWriter {
    async fn push(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.pending.extend_from_slice(chunk);
        self.written += chunk.len() as u64;
        if self.pending.len() >= WRITE_BUFFER {
            let bytes = std::mem::take(&mut self.pending);
            self.hop(move |file| file.write_all(&bytes)).await?;
        }
        Ok(())
    }

    /// Writes what is left, makes it durable and renames it into place: one hop.
    async fn finish(mut self, tmp: PathBuf, path: PathBuf) -> std::io::Result<u64> {
        let bytes = std::mem::take(&mut self.pending);
        self.hop(move |file| {
            file.write_all(&bytes)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)
        })
        .await?;
        Ok(self.written)
    }

    async fn hop(
        &mut self,
        work: impl FnOnce(&mut std::fs::File) -> std::io::Result<()> + Send + 'static,
    ) -> std::io::Result<()> {
        let mut file = self.file.take().expect("one hop at a time");
        let (file, result) = tokio::task::spawn_blocking(move || {
            let result = work(&mut file);
            (file, result)
        })
        .await
        .map_err(std::io::Error::other)?;
        self.file = Some(file);
        result
    }
}

fn missing_or(e: std::io::Error, key: &str) -> StorageError {
    if e.kind() == std::io::ErrorKind::NotFound {
        StorageError::NotFound(key.to_owned())
    } else {
        e.into()
    }
}

/// A file as a download describes it. An object is replaced only by renaming a new file over
/// it, so its length and modification time together change whenever its bytes do: they are
/// the entity tag.
fn describe(meta: &std::fs::Metadata) -> ObjectInfo {
    let modified: DateTime<Utc> = meta.modified().map(DateTime::from).unwrap_or_else(|_| {
        // Every filesystem Kiln runs on keeps modification times; without one the tag still
        // changes with the length.
        DateTime::UNIX_EPOCH
    });
    ObjectInfo {
        bytes: meta.len(),
        etag: format!(
            "\"{:x}-{:x}\"",
            meta.len(),
            modified.timestamp_nanos_opt().unwrap_or_default()
        ),
        last_modified: modified,
    }
}

#[async_trait]
impl ObjectStore for LocalStore {
    async fn put(
        &self,
        key: &str,
        _content_type: &str,
        mut body: ByteStream,
    ) -> Result<u64, StorageError> {
        let path = self.path_of(key)?;
        // Each filesystem call is a hop to tokio's blocking pool and back (a thread wake-up
        // each way); one object used to take five or more. Now the directory and the temporary
        // file are made in one hop, the body is written a buffer at a time (bounded), and the
        // last write, the fsync and the rename share the final hop: a small output, the usual
        // case, takes two.
        let (file, tmp_path, final_path) = tokio::task::spawn_blocking(move || {
            let dir = path
                .parent()
                .expect("a validated key has a parent directory")
                .to_owned();
            std::fs::create_dir_all(&dir)?;
            let tmp = dir.join(format!(".tmp-{}", rand::random::<u64>()));
            let file = std::fs::File::create(&tmp)?;
            Ok::<_, std::io::Error>((file, tmp, path))
        })
        .await
        .map_err(std::io::Error::other)??;
        let mut writer = BlockingWriter {
            file: Some(file),
            pending: Vec::new(),
            written: 0,
        };
        let result = async {
            while let Some(chunk) = body.next().await {
                writer.push(&chunk?).await?;
            }
            writer.finish(tmp_path.clone(), final_path).await
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp_path).await;
        }
        Ok(result?)
    }

    async fn get(&self, key: &str) -> Result<ByteStream, StorageError> {
        let path = self.path_of(key)?;
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| missing_or(e, key))?;
        Ok(tokio_util::io::ReaderStream::new(file).boxed())
    }

    async fn head(&self, key: &str) -> Result<ObjectInfo, StorageError> {
        let path = self.path_of(key)?;
        let meta = tokio::fs::metadata(&path)
            .await
            .map_err(|e| missing_or(e, key))?;
        Ok(describe(&meta))
    }

    async fn get_range(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> Result<ByteStream, StorageError> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let path = self.path_of(key)?;
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| missing_or(e, key))?;
        file.seek(std::io::SeekFrom::Start(range.start)).await?;
        let len = range.end.saturating_sub(range.start);
        Ok(tokio_util::io::ReaderStream::new(file.take(len)).boxed())
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let path = self.path_of(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn resolve_own_url(&self, url: &Url) -> Option<Result<String, SignatureError>> {
        self.downloads.resolve(url)
    }

    async fn presign_get(&self, key: &str, until: DateTime<Utc>) -> Result<Url, StorageError> {
        self.downloads.url(key, until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MAX_URL_LIFETIME;
    use bytes::Bytes;

    fn store(dir: &Path) -> LocalStore {
        LocalStore::new(
            dir,
            Url::parse("http://127.0.0.1:9/").unwrap(),
            UrlSigner::new(b"k".to_vec()),
        )
    }

    async fn read_all(mut s: ByteStream) -> Vec<u8> {
        let mut out = vec![];
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn put_get_delete_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let chunks = vec![
            Ok(Bytes::from_static(b"hello ")),
            Ok(Bytes::from_static(b"world")),
        ];
        let n = s
            .put(
                "jobs/j/0.png",
                "image/png",
                futures::stream::iter(chunks).boxed(),
            )
            .await
            .unwrap();
        assert_eq!(n, 11);
        assert_eq!(
            read_all(s.get("jobs/j/0.png").await.unwrap()).await,
            b"hello world"
        );
        s.delete("jobs/j/0.png").await.unwrap();
        s.delete("jobs/j/0.png").await.unwrap();
        assert!(matches!(
            s.get("jobs/j/0.png").await,
            Err(StorageError::NotFound(_))
        ));
        // No temporary files are left behind.
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("jobs/j"))
            .unwrap()
            .collect();
        assert!(leftovers.is_empty());
    }

    #[tokio::test]
    async fn a_failed_body_leaves_no_object() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let chunks = vec![
            Ok(Bytes::from_static(b"part")),
            Err(std::io::Error::other("upstream reset")),
        ];
        assert!(s
            .put(
                "jobs/j/0.png",
                "image/png",
                futures::stream::iter(chunks).boxed()
            )
            .await
            .is_err());
        assert!(matches!(
            s.get("jobs/j/0.png").await,
            Err(StorageError::NotFound(_))
        ));
        assert_eq!(
            std::fs::read_dir(dir.path().join("jobs/j"))
                .unwrap()
                .count(),
            0
        );
    }

    #[tokio::test]
    async fn presigned_urls_resolve_and_are_capped() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let far = Utc::now() + chrono::Duration::days(30);
        let url = s.presign_get("jobs/j/0.png", far).await.unwrap();
        assert!(url
            .as_str()
            .starts_with("http://127.0.0.1:9/v1/files/jobs/j/0.png?expires="));
        assert_eq!(
            s.resolve_own_url(&url).await,
            Some(Ok("jobs/j/0.png".to_owned()))
        );
        let expires: i64 = url
            .query_pairs()
            .find(|(k, _)| k == "expires")
            .unwrap()
            .1
            .parse()
            .unwrap();
        assert!(expires <= (Utc::now() + MAX_URL_LIFETIME).timestamp());
        let mut tampered = url.clone();
        tampered.set_path("/v1/files/jobs/k/0.png");
        assert_eq!(
            s.resolve_own_url(&tampered).await,
            Some(Err(SignatureError::Invalid))
        );
        assert_eq!(
            s.resolve_own_url(&Url::parse("http://x/elsewhere").unwrap())
                .await,
            None
        );
    }
}
