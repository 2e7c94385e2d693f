//! Download URLs that Kiln's api answers itself: `/v1/files/{key}?expires=…&sig=…`, signed with
//! Kiln's secret, like an S3 presigned URL (the URL alone is the credential, names one object,
//! and stops working at its expiry). The local store's downloads are always these. On S3 they
//! relay the object through the api for the clients that cannot use a presigned URL: S3 refuses
//! a presigned request that also carries an `Authorization` header, and Replicate's client sends
//! its token with every download. Either store recognises these URLs as its own when a later
//! job takes one as input, and reads the object directly.

use crate::{validate_key, SignatureError, StorageError, UrlSigner, MAX_URL_LIFETIME};
use chrono::{DateTime, Utc};
use url::Url;

/// The path under which the api serves objects.
pub const FILES_PATH: &str = "/v1/files/";

#[derive(Debug, Clone)]
pub struct SignedDownloads {
    /// The api's externally reachable base URL.
    public_base: Url,
    signer: UrlSigner,
}

impl SignedDownloads {
    pub fn new(public_base: Url, signer: UrlSigner) -> Self {
        SignedDownloads {
            public_base,
            signer,
        }
    }

    /// A URL of the api that serves `key` until `until` (at most `MAX_URL_LIFETIME` from now).
    pub fn url(&self, key: &str, until: DateTime<Utc>) -> Result<Url, StorageError> {
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

    /// Checks a download request's signature; on success the object may be served.
    pub fn verify(&self, key: &str, expires: i64, signature: &str) -> Result<(), SignatureError> {
        validate_key(key).map_err(|_| SignatureError::Invalid)?;
        self.signer.verify(key, expires, signature, Utc::now())
    }

    /// The object key behind one of these URLs (whatever host it names), checked; `None` when
    /// the URL is not one of them.
    pub fn resolve(&self, url: &Url) -> Option<Result<String, SignatureError>> {
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
