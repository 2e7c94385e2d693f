//! The S3 store (aws-sdk-s3), for AWS S3 and the S3-compatible stores (MinIO, Garage, R2,
//! s3s): it uses only what all of them support: single and multipart PUT, GET, DELETE, presigned
//! GET, and (where the store has it) a bucket lifecycle rule. Uploads stream in parts of
//! `PART_SIZE`, so memory stays bounded by one part whatever the output's size (invariant 4); an
//! object smaller than one part goes up in a single PUT. A failed multipart upload is aborted so
//! no orphaned parts are billed.

use crate::{
    validate_key, ByteStream, ObjectInfo, ObjectStore, SignatureError, SignedDownloads,
    StorageError, MAX_URL_LIFETIME,
};
use async_trait::async_trait;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream as S3Body;
use aws_sdk_s3::types::{
    BucketLifecycleConfiguration, CompletedMultipartUpload, CompletedPart, ExpirationStatus,
    LifecycleExpiration, LifecycleRule, LifecycleRuleFilter,
};
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use std::collections::HashMap;
use std::time::Duration;
use url::Url;

/// S3's minimum part size is 5 MiB (except the last); 8 MiB keeps part counts low for large
/// videos (10,000 parts × 8 MiB = 80 GB) while bounding memory.
pub const PART_SIZE: usize = 8 * 1024 * 1024;

/// The id of the lifecycle rule Kiln owns on its bucket.
pub const LIFECYCLE_RULE_ID: &str = "kiln-outputs-expiry";

#[derive(Debug, Clone, Default)]
pub struct S3Settings {
    pub bucket: String,
    /// Prepended to every key (`outputs/`, say); empty for the bucket's root.
    pub prefix: String,
    /// A custom endpoint for S3-compatible stores.
    pub endpoint: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which most self-hosted stores need.
    pub force_path_style: bool,
    /// The endpoint clients download from, when it differs from the one Kiln's processes use
    /// (a private network address inside, a public name outside). Presigned URLs name it.
    pub public_endpoint: Option<String>,
    /// Region; absent, the AWS environment and profile chain decide (then `us-east-1`).
    pub region: Option<String>,
    /// Static credentials; absent, the AWS environment and profile chain provide them.
    pub credentials: Option<(String, String)>,
}

pub struct S3Store {
    client: aws_sdk_s3::Client,
    /// Signs download URLs; the same client unless a public endpoint is configured.
    presigner: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
    /// Download URLs already signed, by key and end of validity (see `presign_get`).
    signed: std::sync::Mutex<HashMap<(String, i64), Url>>,
    /// The api's own download URLs, which relay this store's objects; recognised as this
    /// store's URLs when a job takes one as input.
    relay: Option<SignedDownloads>,
}

/// Signed URLs kept for reuse; past this many the cache starts again empty.
const SIGNED_URLS_KEPT: usize = 10_000;

fn backend(e: impl std::fmt::Display) -> StorageError {
    StorageError::Backend(e.to_string())
}

/// The whole error chain of an SDK error (its `Display` alone says only "service error").
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl S3Store {
    pub async fn connect(settings: &S3Settings) -> Result<S3Store, StorageError> {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(region) = &settings.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some((id, secret)) = &settings.credentials {
            loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
                id.clone(),
                secret.clone(),
                None,
                None,
                "kiln-config",
            ));
        }
        let shared = loader.load().await;
        let mut config = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(settings.force_path_style)
            // Checksums only where S3 requires them: the SDK's default CRC32 trailers on
            // every upload are not understood by every S3-compatible store.
            .request_checksum_calculation(
                aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
            )
            .response_checksum_validation(
                aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
            );
        if shared.region().is_none() {
            config = config.region(aws_config::Region::new("us-east-1"));
        }
        let mut presign_config = config.clone();
        if let Some(endpoint) = &settings.endpoint {
            config = config.endpoint_url(endpoint);
        }
        if let Some(endpoint) = settings
            .public_endpoint
            .as_ref()
            .or(settings.endpoint.as_ref())
        {
            presign_config = presign_config.endpoint_url(endpoint);
        }
        let mut prefix = settings.prefix.trim_matches('/').to_owned();
        if !prefix.is_empty() {
            prefix.push('/');
        }
        Ok(S3Store {
            client: aws_sdk_s3::Client::from_conf(config.build()),
            presigner: aws_sdk_s3::Client::from_conf(presign_config.build()),
            bucket: settings.bucket.clone(),
            prefix,
            signed: Default::default(),
            relay: None,
        })
    }

    /// Recognises the api's relaying download URLs (`SignedDownloads`) as this store's own.
    pub fn relayed_by(mut self, downloads: SignedDownloads) -> Self {
        self.relay = Some(downloads);
        self
    }

    fn object_key(&self, key: &str) -> Result<String, StorageError> {
        validate_key(key)?;
        Ok(format!("{}{key}", self.prefix))
    }

    /// Checks that the bucket is reachable with these credentials.
    pub async fn check(&self) -> Result<(), StorageError> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(|e| backend(format!("bucket '{}': {}", self.bucket, describe(&e))))?;
        Ok(())
    }

    /// Puts Kiln's lifecycle rule on the bucket: objects under `{prefix}jobs/` expire after
    /// `ttl` (rounded up to whole days, S3's unit), and multipart uploads left incomplete (an
    /// upload dropped by a cancel or a crash) are aborted after a day. Rules of others on the
    /// bucket are kept: the existing configuration is read and only Kiln's rule, named after
    /// the prefix, is replaced. Stores without lifecycle support answer with an error, which the
    /// caller reports as a warning: the janitor deletes expired objects either way.
    pub async fn ensure_lifecycle(&self, ttl: Duration) -> Result<(), StorageError> {
        let days = ttl.as_secs().div_ceil(86_400).max(1) as i32;
        let rule_id = format!("{LIFECYCLE_RULE_ID}:{}", self.prefix);
        let ours = LifecycleRule::builder()
            .id(&rule_id)
            .status(ExpirationStatus::Enabled)
            .filter(
                LifecycleRuleFilter::builder()
                    .prefix(format!("{}jobs/", self.prefix))
                    .build(),
            )
            .expiration(LifecycleExpiration::builder().days(days).build())
            .abort_incomplete_multipart_upload(
                aws_sdk_s3::types::AbortIncompleteMultipartUpload::builder()
                    .days_after_initiation(1)
                    .build(),
            )
            .build()
            .map_err(backend)?;
        let existing = match self
            .client
            .get_bucket_lifecycle_configuration()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(current) => current.rules().to_vec(),
            // No configuration yet is the usual first start.
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => vec![],
            Err(e) => return Err(backend(describe(&e))),
        };
        let mut rules: Vec<LifecycleRule> = existing
            .into_iter()
            .filter(|r| r.id() != Some(rule_id.as_str()))
            .collect();
        rules.push(ours);
        let config = BucketLifecycleConfiguration::builder()
            .set_rules(Some(rules))
            .build()
            .map_err(backend)?;
        self.client
            .put_bucket_lifecycle_configuration()
            .bucket(&self.bucket)
            .lifecycle_configuration(config)
            .send()
            .await
            .map_err(|e| backend(describe(&e)))?;
        Ok(())
    }

    async fn put_multipart(
        &self,
        key: &str,
        content_type: &str,
        first: Bytes,
        mut body: ByteStream,
    ) -> Result<u64, StorageError> {
        let upload = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .send()
            .await
            .map_err(|e| backend(describe(&e)))?;
        let upload_id = upload
            .upload_id()
            .ok_or_else(|| backend("the store returned no upload id"))?
            .to_owned();
        let result = async {
            let mut parts = Vec::new();
            let mut written = 0u64;
            let mut pending = Some(first);
            let mut buffer = BytesMut::with_capacity(PART_SIZE);
            loop {
                let part = match pending.take() {
                    Some(p) => Some(p),
                    None => fill(&mut body, &mut buffer).await?,
                };
                let Some(part) = part else { break };
                let number = parts.len() as i32 + 1;
                written += part.len() as u64;
                let uploaded = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .body(S3Body::from(part))
                    .send()
                    .await
                    .map_err(|e| backend(describe(&e)))?;
                parts.push(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(uploaded.e_tag().map(str::to_owned))
                        .build(),
                );
            }
            self.client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| backend(describe(&e)))?;
            Ok::<_, StorageError>(written)
        }
        .await;
        if result.is_err() {
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result
    }
}

/// Reads from `body` until `buffer` holds a whole part or the body ends; `None` at the end.
async fn fill(body: &mut ByteStream, buffer: &mut BytesMut) -> Result<Option<Bytes>, StorageError> {
    while buffer.len() < PART_SIZE {
        match body.next().await {
            Some(chunk) => buffer.extend_from_slice(&chunk?),
            None => break,
        }
    }
    if buffer.is_empty() {
        return Ok(None);
    }
    let take = buffer.len().min(PART_SIZE);
    Ok(Some(buffer.split_to(take).freeze()))
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn put(
        &self,
        key: &str,
        content_type: &str,
        mut body: ByteStream,
    ) -> Result<u64, StorageError> {
        let key = self.object_key(key)?;
        let mut buffer = BytesMut::with_capacity(PART_SIZE);
        let first = fill(&mut body, &mut buffer).await?.unwrap_or_default();
        if first.len() < PART_SIZE {
            // The whole object fits in one part: one PUT.
            let size = first.len() as u64;
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(&key)
                .content_type(content_type)
                .body(S3Body::from(first))
                .send()
                .await
                .map_err(|e| backend(describe(&e)))?;
            return Ok(size);
        }
        // Whatever `fill` read past the first part stays in `buffer` and goes up next.
        let rest = futures::stream::iter([Ok(buffer.freeze())])
            .chain(body)
            .boxed();
        self.put_multipart(&key, content_type, first, rest).await
    }

    async fn get(&self, key: &str) -> Result<ByteStream, StorageError> {
        self.read(key, None).await
    }

    async fn head(&self, key: &str) -> Result<ObjectInfo, StorageError> {
        let object_key = self.object_key(key)?;
        let head = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&object_key)
            .send()
            .await
            .map_err(|e| {
                if e.as_service_error().is_some_and(|s| s.is_not_found()) {
                    StorageError::NotFound(key.to_owned())
                } else {
                    backend(describe(&e))
                }
            })?;
        let bytes = head.content_length().unwrap_or(0).max(0) as u64;
        let last_modified = head
            .last_modified()
            .and_then(|t| DateTime::from_timestamp(t.secs(), t.subsec_nanos()))
            .unwrap_or(DateTime::UNIX_EPOCH);
        Ok(ObjectInfo {
            bytes,
            // S3 always answers an ETag (already quoted); a server that did not gets one made
            // of what it did answer.
            etag: head
                .e_tag()
                .map(str::to_owned)
                .unwrap_or_else(|| format!("\"{bytes:x}-{:x}\"", last_modified.timestamp())),
            last_modified,
        })
    }

    async fn get_range(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> Result<ByteStream, StorageError> {
        if range.is_empty() {
            // `bytes=a-b` cannot name no bytes.
            return Ok(futures::stream::empty().boxed());
        }
        self.read(
            key,
            Some(format!("bytes={}-{}", range.start, range.end - 1)),
        )
        .await
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let key = self.object_key(key)?;
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| backend(describe(&e)))?;
        Ok(())
    }

    async fn presign_get(&self, key: &str, until: DateTime<Utc>) -> Result<Url, StorageError> {
        // An output is read many times and its URL is asked to last until the output expires:
        // a URL signed once for that instant is exactly as good later, so it is reused rather
        // than signed again on every read (signing through the SDK is most of a read's work).
        // Only a URL that ends at `until` itself is kept: one capped at the longest lifetime
        // S3 allows would end sooner than a fresh one.
        let now = Utc::now();
        let cache_key = (key.to_owned(), until.timestamp_millis());
        if until > now {
            if let Some(url) = self.signed.lock().unwrap().get(&cache_key) {
                return Ok(url.clone());
            }
        }
        let capped = until > now + MAX_URL_LIFETIME;
        let until = until.min(now + MAX_URL_LIFETIME);
        let lifetime = (until - now)
            .to_std()
            .unwrap_or_default()
            .max(Duration::from_secs(1));
        let url = self.presign_at(key, now.into(), lifetime).await?;
        if !capped && lifetime > Duration::from_secs(1) {
            let mut signed = self.signed.lock().unwrap();
            if signed.len() >= SIGNED_URLS_KEPT {
                signed.clear();
            }
            signed.insert(cache_key, url.clone());
        }
        Ok(url)
    }

    async fn resolve_own_url(&self, url: &Url) -> Option<Result<String, SignatureError>> {
        if let Some(relayed) = self.relay.as_ref().and_then(|r| r.resolve(url)) {
            return Some(relayed);
        }
        let param = |name: &str| {
            url.query_pairs()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
        };
        let (date, expires, signature) = (
            param("X-Amz-Date")?,
            param("X-Amz-Expires")?,
            param("X-Amz-Signature")?,
        );
        let signed_at = chrono::NaiveDateTime::parse_from_str(&date, "%Y%m%dT%H%M%SZ")
            .ok()?
            .and_utc();
        let lifetime = Duration::from_secs(expires.parse().ok()?);
        let path = percent_decode(url.path());
        // Path-style (`/bucket/prefix/key`) or virtual-hosted (`/prefix/key`) addressing.
        let candidates = [
            path.strip_prefix(&format!("/{}/{}", self.bucket, self.prefix)),
            path.strip_prefix(&format!("/{}", self.prefix)),
        ];
        for key in candidates.into_iter().flatten() {
            if validate_key(key).is_err() {
                continue;
            }
            // Sign the same request again: if it names the same place, the URL is ours, and
            // the signature must match ours exactly.
            let again = self
                .presign_at(key, signed_at.into(), lifetime)
                .await
                .ok()?;
            if again.host_str() != url.host_str()
                || again.port_or_known_default() != url.port_or_known_default()
                || again.path() != url.path()
            {
                continue;
            }
            let ours = again
                .query_pairs()
                .find(|(k, _)| k == "X-Amz-Signature")
                .map(|(_, v)| v.into_owned());
            if ours.as_deref() != Some(signature.as_str()) {
                // Not signed by these credentials: tampered, or issued before a credential
                // rotation. Either way it is not ours to vouch for; fetched like any other URL,
                // S3 itself decides.
                return None;
            }
            if Utc::now() >= signed_at + chrono::Duration::from_std(lifetime).unwrap_or_default() {
                return Some(Err(SignatureError::Expired));
            }
            return Some(Ok(key.to_owned()));
        }
        None
    }
}

impl S3Store {
    /// Streams the object, or the byte range `range` (an HTTP `Range` value) of it.
    async fn read(&self, key: &str, range: Option<String>) -> Result<ByteStream, StorageError> {
        let object_key = self.object_key(key)?;
        let object = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&object_key)
            .set_range(range)
            .send()
            .await
            .map_err(|e| {
                if e.as_service_error().is_some_and(|s| s.is_no_such_key()) {
                    StorageError::NotFound(key.to_owned())
                } else {
                    backend(describe(&e))
                }
            })?;
        let reader = object.body.into_async_read();
        Ok(tokio_util::io::ReaderStream::new(reader).boxed())
    }

    async fn presign_at(
        &self,
        key: &str,
        start: std::time::SystemTime,
        lifetime: Duration,
    ) -> Result<Url, StorageError> {
        let object_key = self.object_key(key)?;
        let config = PresigningConfig::builder()
            .start_time(start)
            .expires_in(lifetime)
            .build()
            .map_err(backend)?;
        let presigned = self
            .presigner
            .get_object()
            .bucket(&self.bucket)
            .key(&object_key)
            .presigned(config)
            .await
            .map_err(|e| backend(describe(&e)))?;
        Url::parse(presigned.uri()).map_err(backend)
    }
}

/// `%XX` escapes in a URL path, decoded (object keys are plain, but clients may escape them).
fn percent_decode(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&path[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_core::testing::S3Server;

    async fn store(server: &S3Server, prefix: &str) -> S3Store {
        S3Store::connect(&S3Settings {
            bucket: S3Server::BUCKET.into(),
            prefix: prefix.into(),
            endpoint: Some(server.endpoint()),
            force_path_style: true,
            public_endpoint: None,
            region: Some("us-east-1".into()),
            credentials: Some((S3Server::ACCESS_KEY.into(), S3Server::SECRET_KEY.into())),
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn own_presigned_urls_are_recognised_and_checked() {
        let server = S3Server::start();
        let s3 = store(&server, "outputs").await;
        let url = s3
            .presign_get("jobs/a/0.png", Utc::now() + chrono::Duration::hours(1))
            .await
            .unwrap();
        assert_eq!(
            s3.resolve_own_url(&url).await,
            Some(Ok("jobs/a/0.png".to_owned()))
        );
        let mut tampered = url.clone();
        tampered.set_path(&url.path().replace("jobs/a/", "jobs/b/"));
        // Not vouched for (S3 judges it when it is fetched like any other URL).
        assert_eq!(s3.resolve_own_url(&tampered).await, None);
        let short = s3
            .presign_at(
                "jobs/a/0.png",
                std::time::SystemTime::now() - Duration::from_secs(120),
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        assert_eq!(
            s3.resolve_own_url(&short).await,
            Some(Err(SignatureError::Expired))
        );
        let elsewhere = Url::parse("https://example.com/kiln/outputs/jobs/a/0.png?X-Amz-Date=20260101T000000Z&X-Amz-Expires=60&X-Amz-Signature=00").unwrap();
        assert_eq!(s3.resolve_own_url(&elsewhere).await, None);
        assert_eq!(
            s3.resolve_own_url(&Url::parse("https://example.com/x.png").unwrap())
                .await,
            None
        );
    }

    async fn read_all(mut s: ByteStream) -> Vec<u8> {
        let mut out = vec![];
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c.unwrap());
        }
        out
    }

    /// A body of `len` deterministic bytes, in uneven chunks.
    fn body(len: usize) -> (Vec<u8>, ByteStream) {
        let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        let chunks: Vec<std::io::Result<Bytes>> = data
            .chunks(1_000_003)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        (data, futures::stream::iter(chunks).boxed())
    }

    #[tokio::test]
    async fn a_url_asked_for_the_same_end_is_signed_once_and_still_works() {
        let server = S3Server::start();
        let s3 = store(&server, "outputs").await;
        let (_, stream) = body(100);
        s3.put("jobs/c/0.png", "image/png", stream).await.unwrap();
        let until = Utc::now() + chrono::Duration::hours(1);
        let first = s3.presign_get("jobs/c/0.png", until).await.unwrap();
        let again = s3.presign_get("jobs/c/0.png", until).await.unwrap();
        assert_eq!(first, again, "the same end, the same URL");
        let later = s3
            .presign_get("jobs/c/0.png", until + chrono::Duration::minutes(1))
            .await
            .unwrap();
        assert_ne!(first, later, "another end is signed anew");
        let other = s3.presign_get("jobs/d/0.png", until).await.unwrap();
        assert_ne!(first, other, "another key is signed anew");
        let downloaded = reqwest::get(again.as_str()).await.unwrap();
        assert_eq!(downloaded.status(), 200);
        assert_eq!(
            s3.resolve_own_url(&again).await,
            Some(Ok("jobs/c/0.png".to_owned()))
        );
    }

    #[tokio::test]
    async fn small_and_multipart_objects_round_trip_and_presign() {
        let server = S3Server::start();
        let s3 = store(&server, "outputs").await;
        s3.check().await.unwrap();
        for (key, len) in [
            ("jobs/a/0.png", 10_000),
            ("jobs/b/0.mp4", PART_SIZE * 2 + 12_345),
        ] {
            let (data, stream) = body(len);
            assert_eq!(
                s3.put(key, "application/octet-stream", stream)
                    .await
                    .unwrap(),
                len as u64
            );
            assert_eq!(read_all(s3.get(key).await.unwrap()).await, data, "{key}");
            let url = s3
                .presign_get(key, Utc::now() + chrono::Duration::days(30))
                .await
                .unwrap();
            let expires: u64 = url
                .query_pairs()
                .find(|(k, _)| k == "X-Amz-Expires")
                .unwrap()
                .1
                .parse()
                .unwrap();
            assert!(
                expires <= 7 * 24 * 3600,
                "presigned URLs never outlive 7 days"
            );
            let downloaded = reqwest::get(url.as_str()).await.unwrap();
            assert_eq!(downloaded.status(), 200);
            assert_eq!(downloaded.bytes().await.unwrap().len(), len);
        }
        assert!(
            server.root.join("kiln/outputs/jobs/b/0.mp4").exists(),
            "keys live under the prefix"
        );
        s3.delete("jobs/a/0.png").await.unwrap();
        assert!(matches!(
            s3.get("jobs/a/0.png").await,
            Err(StorageError::NotFound(_))
        ));
        // Lifecycle rules are not implemented by s3s-fs: the error is reported, not hidden.
        assert!(s3
            .ensure_lifecycle(Duration::from_secs(7 * 86_400))
            .await
            .is_err());
    }

    #[tokio::test]
    async fn a_failed_multipart_upload_leaves_no_object() {
        let server = S3Server::start();
        let s3 = store(&server, "").await;
        let (data, _) = body(PART_SIZE + 10);
        let chunks = vec![
            Ok(Bytes::from(data)),
            Err(std::io::Error::other("upstream reset")),
        ];
        assert!(s3
            .put(
                "jobs/c/0.mp4",
                "video/mp4",
                futures::stream::iter(chunks).boxed()
            )
            .await
            .is_err());
        assert!(matches!(
            s3.get("jobs/c/0.mp4").await,
            Err(StorageError::NotFound(_))
        ));
    }
}
