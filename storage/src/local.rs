//! The local-directory store of the embedded default. Writes go to a temporary file beside the
//! target and are renamed into place, so a reader never sees half an object and a crash leaves at
//! most a stray temporary file. Downloads are served by Kiln's api at `/v1/files/{key}` behind a
//! signed URL; `resolve_own_url` lets Kiln recognise its own URLs when a later job takes an
//! earlier output as input, and read the object directly instead of fetching it over HTTP.

use crate::{
    validate_key, ByteStream, ObjectStore, SignatureError, StorageError, UrlSigner,
    MAX_URL_LIFETIME,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;
use url::Url;

/// The path under which the api serves local objects.
pub const FILES_PATH: &str = "/v1/files/";

pub struct LocalStore {
    root: PathBuf,
    public_base: Url,
    signer: UrlSigner,
}

impl LocalStore {
    /// `public_base` is the api's externally reachable base URL, used to build download URLs.
    pub fn new(root: impl Into<PathBuf>, public_base: Url, signer: UrlSigner) -> Self {
        LocalStore {
            root: root.into(),
            public_base,
            signer,
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
        validate_key(key).map_err(|_| SignatureError::Invalid)?;
        self.signer.verify(key, expires, signature, Utc::now())
    }

    /// The object key behind one of this store's own valid download URLs, whatever host it names.
    fn resolve_signed_url(&self, url: &Url) -> Option<Result<String, SignatureError>> {
        let key = url.path().strip_prefix(FILES_PATH)?;
        let mut expires = None;
        let mut signature = None;
        for (name, value) in url.query_pairs() {
            match name.as_ref() {
                "expires" => expires = value.parse::<i64>().ok(),
                "sig" => signature = Some(value.into_owned()),
                _ => {}
            }
        }
        let (Some(expires), Some(signature)) = (expires, signature) else {
            return Some(Err(SignatureError::Invalid));
        };
        Some(
            self.verify(key, expires, &signature)
                .map(|()| key.to_owned()),
        )
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
        let dir = path
            .parent()
            .expect("a validated key has a parent directory");
        tokio::fs::create_dir_all(dir).await?;
        let tmp = dir.join(format!(".tmp-{}", rand::random::<u64>()));
        let result = async {
            let mut file = tokio::fs::File::create(&tmp).await?;
            let mut written = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk?;
                file.write_all(&chunk).await?;
                written += chunk.len() as u64;
            }
            file.sync_all().await?;
            tokio::fs::rename(&tmp, &path).await?;
            Ok::<_, std::io::Error>(written)
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        Ok(result?)
    }

    async fn get(&self, key: &str) -> Result<ByteStream, StorageError> {
        let path = self.path_of(key)?;
        match tokio::fs::File::open(&path).await {
            Ok(file) => Ok(tokio_util::io::ReaderStream::new(file).boxed()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(StorageError::NotFound(key.to_owned()))
            }
            Err(e) => Err(e.into()),
        }
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
        self.resolve_signed_url(url)
    }

    async fn presign_get(&self, key: &str, until: DateTime<Utc>) -> Result<Url, StorageError> {
        validate_key(key)?;
        let expires = until.min(Utc::now() + MAX_URL_LIFETIME).timestamp();
        let mut url = self
            .public_base
            .join(&format!("{}{key}", FILES_PATH.trim_start_matches('/')))
            .map_err(|_| StorageError::InvalidKey(key.to_owned()))?;
        url.query_pairs_mut()
            .append_pair("expires", &expires.to_string())
            .append_pair("sig", &self.signer.sign(key, expires));
        Ok(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
            s.resolve_signed_url(&url),
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
            s.resolve_signed_url(&tampered),
            Some(Err(SignatureError::Invalid))
        );
        assert_eq!(
            s.resolve_signed_url(&Url::parse("http://x/elsewhere").unwrap()),
            None
        );
    }
}
