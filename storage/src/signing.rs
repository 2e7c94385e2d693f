//! Signed download URLs for stores that Kiln serves itself (the local directory). They work like
//! S3 presigned URLs: the URL alone is the credential, it names one object, and it stops working
//! at its expiry. The signature is HMAC-SHA256 over the key and the expiry, checked in constant
//! time.

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the download URL's signature is not valid")]
    Invalid,
    #[error("the download URL has expired")]
    Expired,
}

#[derive(Clone)]
pub struct UrlSigner {
    secret: Vec<u8>,
}

impl std::fmt::Debug for UrlSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UrlSigner(<redacted>)")
    }
}

impl UrlSigner {
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        UrlSigner {
            secret: secret.into(),
        }
    }

    fn mac(&self, key: &str, expires: i64) -> HmacSha256 {
        let mut mac =
            HmacSha256::new_from_slice(&self.secret).expect("HMAC accepts keys of any length");
        mac.update(b"GET\n");
        mac.update(key.as_bytes());
        mac.update(b"\n");
        mac.update(expires.to_string().as_bytes());
        mac
    }

    /// The hex signature of `key` valid until `expires` (Unix seconds).
    pub fn sign(&self, key: &str, expires: i64) -> String {
        hex::encode(self.mac(key, expires).finalize().into_bytes())
    }

    pub fn verify(
        &self,
        key: &str,
        expires: i64,
        signature: &str,
        now: DateTime<Utc>,
    ) -> Result<(), SignatureError> {
        let raw = hex::decode(signature).map_err(|_| SignatureError::Invalid)?;
        self.mac(key, expires)
            .verify_slice(&raw)
            .map_err(|_| SignatureError::Invalid)?;
        if now.timestamp() >= expires {
            return Err(SignatureError::Expired);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_bind_key_and_expiry() {
        let signer = UrlSigner::new(b"secret".to_vec());
        let now = Utc::now();
        let exp = now.timestamp() + 60;
        let sig = signer.sign("jobs/a/0.png", exp);
        assert_eq!(signer.verify("jobs/a/0.png", exp, &sig, now), Ok(()));
        assert_eq!(
            signer.verify("jobs/b/0.png", exp, &sig, now),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            signer.verify("jobs/a/0.png", exp + 1, &sig, now),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            signer.verify("jobs/a/0.png", exp, "zz", now),
            Err(SignatureError::Invalid)
        );
        let other = UrlSigner::new(b"other".to_vec());
        assert_eq!(
            other.verify("jobs/a/0.png", exp, &sig, now),
            Err(SignatureError::Invalid)
        );
        let later = now + chrono::Duration::seconds(61);
        assert_eq!(
            signer.verify("jobs/a/0.png", exp, &sig, later),
            Err(SignatureError::Expired)
        );
    }
}
