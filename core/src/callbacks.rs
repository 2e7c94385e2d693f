//! Callback URLs for upstreams that push their result back (Cog's webhook). Such upstreams do
//! not sign what they send, so the URL itself carries the proof: an HMAC over the job and the
//! upstream handle, keyed with the deployment's signing secret. Only the worker that started
//! the call could have minted it; the api checks it before storing anything. Nothing is kept per
//! callback, so any api process verifies any worker's URL.

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

#[cfg(test)]
mod tests {
    use super::*;

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
