//! Callback URLs for upstreams that push their result back (Cog's webhook). Such upstreams do
//! not sign what they send, so the URL itself carries the proof: an HMAC over the job and the
//! upstream handle, keyed with the deployment's signing secret. Only the worker that started
//! the call could have minted it; the api checks it before storing anything. Nothing is kept per
//! callback, so any api process verifies any worker's URL.
//!
//! Cog's file uploads carry no URL of the prediction's own: a Cog server is started with one
//! `--upload-url` for all its predictions and names the prediction only in its
//! `X-Prediction-Id` header. So the prediction id Kiln gives Cog is itself the credential
//! (`UploadHandle`): the attempt's id and an HMAC over it. A forged id fails the MAC; a
//! replayed upload names an attempt that has ended (the api checks the ledger too).

use crate::job::JobId;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use url::Url;

fn mac(secret: &[u8], job_id: JobId, upstream_id: &str) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any size");
    mac.update(b"kiln-callback\0");
    mac.update(job_id.to_string().as_bytes());
    mac.update(b"\0");
    mac.update(upstream_id.as_bytes());
    mac
}

/// The token for one upstream handle of one job.
pub fn token(secret: &[u8], job_id: JobId, upstream_id: &str) -> String {
    hex::encode(mac(secret, job_id, upstream_id).finalize().into_bytes())
}

/// Checks a token in constant time.
pub fn verify(secret: &[u8], job_id: JobId, upstream_id: &str, token: &str) -> bool {
    let Ok(given) = hex::decode(token) else {
        return false;
    };
    mac(secret, job_id, upstream_id)
        .verify_slice(&given)
        .is_ok()
}

/// `{base}v1/callbacks/{job_id}/{upstream_id}?token=…`, the URL an upstream posts its result to.
pub fn url(base: &Url, secret: &[u8], job_id: JobId, upstream_id: &str) -> Url {
    let mut url = base
        .join(&format!("v1/callbacks/{job_id}/"))
        .expect("a base URL takes a relative path");
    url.path_segments_mut()
        .expect("an http(s) URL has a path")
        .pop_if_empty()
        .push(upstream_id);
    url.query_pairs_mut()
        .append_pair("token", &token(secret, job_id, upstream_id));
    url
}

/// A Cog prediction's id: `{attempt_id}.{mac}`, where the attempt id is `{job_id}-{n}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadHandle {
    pub job_id: JobId,
    /// The attempt's number within the job (the `n` of its id).
    pub attempt: u32,
}

/// Hex digits of the MAC kept in a handle: 128 bits, and an id short enough for logs.
const HANDLE_MAC_CHARS: usize = 32;

fn handle_mac(secret: &[u8], attempt_id: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any size");
    mac.update(b"kiln-upload\0");
    mac.update(attempt_id.as_bytes());
    let mut hex = hex::encode(mac.finalize().into_bytes());
    hex.truncate(HANDLE_MAC_CHARS);
    hex
}

impl UploadHandle {
    /// The prediction id for the attempt `attempt_id` (`{job_id}-{n}`).
    pub fn mint(secret: &[u8], attempt_id: &str) -> String {
        format!("{attempt_id}.{}", handle_mac(secret, attempt_id))
    }

    /// Reads and checks a prediction id (in constant time); `None` unless this deployment
    /// minted it.
    pub fn verify(secret: &[u8], handle: &str) -> Option<UploadHandle> {
        let (attempt_id, mac) = handle.rsplit_once('.')?;
        let expected = handle_mac(secret, attempt_id);
        let same = mac.len() == expected.len()
            && mac
                .bytes()
                .zip(expected.bytes())
                .fold(0u8, |diff, (a, b)| diff | (a ^ b))
                == 0;
        if !same {
            return None;
        }
        let (job, n) = attempt_id.rsplit_once('-')?;
        Some(UploadHandle {
            job_id: job.parse().ok()?,
            attempt: n.parse().ok()?,
        })
    }

    /// Where this attempt's uploads are stored: under the job's own prefix, so they expire
    /// with its outputs (the S3 lifecycle rule and the janitor both go by `jobs/`).
    pub fn key_prefix(&self) -> String {
        format!("jobs/{}/uploads/{}/", self.job_id, self.attempt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_handles_are_minted_here_only() {
        let job = JobId::new();
        let handle = UploadHandle::mint(b"secret", &format!("{job}-2"));
        let read = UploadHandle::verify(b"secret", &handle).unwrap();
        assert_eq!((read.job_id, read.attempt), (job, 2));
        assert_eq!(read.key_prefix(), format!("jobs/{job}/uploads/2/"));
        assert_eq!(UploadHandle::verify(b"other", &handle), None);
        let forged = handle.replace(&format!("{job}-2"), &format!("{job}-3"));
        assert_eq!(UploadHandle::verify(b"secret", &forged), None);
        assert_eq!(UploadHandle::verify(b"secret", &format!("{job}-2")), None);
    }

    #[test]
    fn tokens_bind_the_job_and_the_handle() {
        let job = JobId::new();
        let t = token(b"secret", job, "p-1");
        assert!(verify(b"secret", job, "p-1", &t));
        assert!(!verify(b"secret", job, "p-2", &t));
        assert!(!verify(b"secret", JobId::new(), "p-1", &t));
        assert!(!verify(b"other", job, "p-1", &t));
        assert!(!verify(b"secret", job, "p-1", "zz"));
    }

    #[test]
    fn urls_escape_the_handle() {
        let base = Url::parse("http://kiln.internal:8080/").unwrap();
        let job = JobId::new();
        let url = url(&base, b"s", job, "a/b");
        assert!(url.as_str().starts_with(&format!(
            "http://kiln.internal:8080/v1/callbacks/{job}/a%2Fb?token="
        )));
    }
}
