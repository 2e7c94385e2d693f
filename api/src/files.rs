//! Downloads behind the api's own signed URLs (`kiln_storage::SignedDownloads`): every object of
//! the local store, and on S3 the objects relayed for clients that cannot use a presigned URL.
//! The URL is the credential: no API key is needed (an `Authorization` header beside it is
//! ignored), and a tampered or expired URL is refused with 403 before the store is touched.

use crate::problem::Problem;
use crate::ApiState;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use kiln_storage::{SignatureError, StorageError};
use serde::Deserialize;
use std::sync::Arc;

#[derive(Deserialize)]
pub struct Signature {
    // Text, parsed below: a malformed value is an unsigned URL (403), not a rejected query.
    expires: Option<String>,
    sig: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/files/{key}",
    operation_id = "downloadFile",
    tag = "outputs",
    security(()),
    params(
        ("key" = String, Path, description = "An object key (it contains `/`; the URL's signature is the credential), or a file's id (one segment; read with an API key)"),
        ("expires" = Option<String>, Query),
        ("sig" = Option<String>, Query),
        ("Range" = Option<String>, Header, description = "One byte range, `bytes=first-last`, `bytes=first-` or `bytes=-suffix`; anything else is ignored and the whole object sent"),
        ("If-None-Match" = Option<String>, Header, description = "Entity tags the client holds: a match answers 304"),
        ("If-Range" = Option<String>, Header, description = "The entity tag or date the range belongs to; otherwise the whole object is sent"),
    ),
    responses(
        (status = 200, description = "The object's bytes; for a file's id, the file", content(
            (Vec<u8> = "application/octet-stream"),
            (crate::uploads::FileView = "application/json"),
        )),
        (status = 206, description = "The byte range asked for (`Content-Range` says which)", content(
            (Vec<u8> = "application/octet-stream"),
        )),
        (status = 304, description = "The client's copy (`If-None-Match`) is current"),
        (status = 416, description = "The range starts past the object's end (`Content-Range: bytes */length`)", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 401, description = "A file's id without a valid API key", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such file (or another tenant's)", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not signed, tampered or expired", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 410, description = "The object expired and was deleted", body = crate::problem::Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn download(
    State(state): State<Arc<ApiState>>,
    tenant: Result<crate::auth::Tenant, Problem>,
    Path(key): Path<String>,
    Query(q): Query<Signature>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    // One segment is a file's id (`crate::uploads`), read with the caller's key; an object key
    // always has more than one.
    if !key.contains('/') {
        let crate::auth::Tenant(tenant) = tenant?;
        return crate::uploads::get(&state, &tenant, &key).await;
    }
    let expires = q.expires.and_then(|e| e.parse::<i64>().ok());
    let (Some(expires), Some(sig)) = (expires, q.sig) else {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "signature_invalid",
            "the download URL is not signed",
        ));
    };
    state
        .downloads
        .verify(&key, expires, &sig)
        .map_err(|e| match e {
            SignatureError::Invalid => {
                Problem::new(StatusCode::FORBIDDEN, "signature_invalid", e.to_string())
            }
            SignatureError::Expired => {
                Problem::new(StatusCode::FORBIDDEN, "url_expired", e.to_string())
            }
        })?;
    let url_expires = DateTime::from_timestamp(expires, 0).unwrap_or_else(Utc::now);
    serve(&state, &key, url_expires, &headers).await
}

/// Sends a stored object as a download: whole, or the one byte range a `Range` header asks
/// for (RFC 9110 §14), so a `<video>` element can seek and a broken download can resume. The
/// response carries what caches and players need: `Content-Length`, `Accept-Ranges`, a strong
/// `ETag` from the store, `Last-Modified`, a `Content-Disposition` filename, and a
/// `Cache-Control` lifetime that ends no later than the URL does.
async fn serve(
    state: &ApiState,
    key: &str,
    url_expires: DateTime<Utc>,
    headers: &HeaderMap,
) -> Result<Response, Problem> {
    let gone = || {
        Problem::new(
            StatusCode::GONE,
            "output_expired",
            "the output has expired and was deleted",
        )
    };
    let info = match state.store.head(key).await {
        Ok(info) => info,
        Err(StorageError::NotFound(_)) => return Err(gone()),
        Err(e) => return Err(e.into()),
    };
    let last_modified = info
        .last_modified
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    let max_age = (url_expires - Utc::now()).num_seconds().clamp(0, 3600);
    let mut response = Response::builder()
        .header(header::ETAG, &info.etag)
        .header(header::LAST_MODIFIED, &last_modified)
        .header(header::CACHE_CONTROL, format!("private, max-age={max_age}"))
        .header(header::ACCEPT_RANGES, "bytes");
    if etag_matches(headers.get(header::IF_NONE_MATCH), &info.etag) {
        return Ok(response
            .status(StatusCode::NOT_MODIFIED)
            .body(Body::empty())
            .expect("static headers are valid"));
    }
    // `If-Range`: the range holds only for the version the client already has part of.
    let range_applies = match headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(v) => v == info.etag || v == last_modified,
    };
    let range = match headers.get(header::RANGE) {
        Some(value) if range_applies => match single_range(value, info.bytes) {
            RangeAsked::Bytes(range) => Some(range),
            RangeAsked::Ignored => None,
            RangeAsked::Unsatisfiable => {
                let problem = Problem::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "range_not_satisfiable",
                    format!("the object has {} bytes", info.bytes),
                )
                .with_field("Range");
                let mut refused = problem.into_response();
                refused.headers_mut().insert(
                    header::CONTENT_RANGE,
                    format!("bytes */{}", info.bytes)
                        .parse()
                        .expect("digits are a valid header"),
                );
                return Ok(refused);
            }
        },
        _ => None,
    };
    response = response
        .header(header::CONTENT_TYPE, kiln_storage::media_type_of(key))
        .header(
            header::CONTENT_DISPOSITION,
            format!("inline; filename=\"{}\"", download_name(key)),
        );
    let (status, range) = match range {
        Some(range) => {
            response = response.header(
                header::CONTENT_RANGE,
                format!("bytes {}-{}/{}", range.start, range.end - 1, info.bytes),
            );
            (StatusCode::PARTIAL_CONTENT, range)
        }
        None => (StatusCode::OK, 0..info.bytes),
    };
    let body = match state.store.get_range(key, range.clone()).await {
        Ok(stream) => stream,
        Err(StorageError::NotFound(_)) => return Err(gone()),
        Err(e) => return Err(e.into()),
    };
    Ok(response
        .status(status)
        .header(header::CONTENT_LENGTH, range.end - range.start)
        .body(Body::from_stream(body))
        .expect("the headers are valid"))
}

/// Whether an `If-None-Match` list names this entity tag (weak comparison, RFC 9110 §13.1.2).
fn etag_matches(if_none_match: Option<&HeaderValue>, etag: &str) -> bool {
    let Some(Ok(list)) = if_none_match.map(|v| v.to_str()) else {
        return false;
    };
    let bare = etag.trim_start_matches("W/");
    list.split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.trim_start_matches("W/") == bare)
}

#[derive(Debug, PartialEq)]
enum RangeAsked {
    Bytes(std::ops::Range<u64>),
    /// Not a single byte range Kiln serves (another unit, several ranges, bad syntax): the whole
    /// object is sent, as RFC 9110 §14.2 lets a server do.
    Ignored,
    Unsatisfiable,
}

/// Reads a `Range` header of one byte range against an object of `len` bytes. Written out
/// rather than taken from a range crate because RFC 9110 §14.1.2 wants a suffix longer than
/// the object to mean all of it, which the crates at hand refuse.
fn single_range(value: &HeaderValue, len: u64) -> RangeAsked {
    let Some(spec) = value.to_str().ok().and_then(|v| v.strip_prefix("bytes=")) else {
        return RangeAsked::Ignored;
    };
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeAsked::Ignored;
    };
    if spec.contains(',') {
        return RangeAsked::Ignored;
    }
    let number = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (first, last) {
        ("", suffix) => match number(suffix) {
            Some(0) => RangeAsked::Unsatisfiable,
            Some(n) if len > 0 => RangeAsked::Bytes(len.saturating_sub(n)..len),
            Some(_) => RangeAsked::Unsatisfiable,
            None => RangeAsked::Ignored,
        },
        (start, end) => {
            let Some(start) = number(start) else {
                return RangeAsked::Ignored;
            };
            let end = match end {
                "" => len,
                end => match number(end) {
                    Some(end) if end >= start => end.saturating_add(1).min(len),
                    _ => return RangeAsked::Ignored,
                },
            };
            if start >= len {
                RangeAsked::Unsatisfiable
            } else {
                RangeAsked::Bytes(start..end)
            }
        }
    }
}

/// The filename a download is saved under: an output's key `jobs/{job}/{index}.{ext}` becomes
/// `{job}-{index}.{ext}`, any other key its last segment. Keys hold only `[A-Za-z0-9._-]`, so
/// the name needs no quoting beyond the quotes around it.
fn download_name(key: &str) -> String {
    let mut segments = key.rsplit('/');
    let last = segments.next().unwrap_or(key);
    match (segments.next(), segments.next()) {
        (Some(job), Some("jobs")) => format!("{job}-{last}"),
        _ => last.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked(value: &str, len: u64) -> RangeAsked {
        single_range(&HeaderValue::from_str(value).unwrap(), len)
    }

    #[test]
    fn single_byte_ranges_read_as_rfc_9110_says() {
        use RangeAsked::*;
        assert_eq!(asked("bytes=1000-1999", 5000), Bytes(1000..2000));
        assert_eq!(asked("bytes=1000-", 5000), Bytes(1000..5000));
        assert_eq!(asked("bytes=4000-9999", 5000), Bytes(4000..5000));
        assert_eq!(asked("bytes=-500", 5000), Bytes(4500..5000));
        // A suffix longer than the object is all of it.
        assert_eq!(asked("bytes=-9000", 5000), Bytes(0..5000));
        assert_eq!(asked("bytes=5000-", 5000), Unsatisfiable);
        assert_eq!(asked("bytes=-0", 5000), Unsatisfiable);
        assert_eq!(asked("bytes=0-", 0), Unsatisfiable);
        assert_eq!(asked("bytes=2-1", 5000), Ignored);
        assert_eq!(asked("bytes=0-1,4-5", 5000), Ignored);
        assert_eq!(asked("items=0-1", 5000), Ignored);
        assert_eq!(asked("bytes=a-b", 5000), Ignored);
        assert_eq!(asked("bytes=+1-2", 5000), Ignored);
    }

    #[test]
    fn downloads_are_named_after_the_job() {
        assert_eq!(download_name("jobs/j1/0.mp4"), "j1-0.mp4");
        assert_eq!(download_name("uploads/acme/f1.png"), "f1.png");
    }

    #[test]
    fn if_none_match_compares_weakly() {
        let v = |s: &str| HeaderValue::from_str(s).unwrap();
        assert!(etag_matches(Some(&v("\"a\"")), "\"a\""));
        assert!(etag_matches(Some(&v("W/\"a\", \"b\"")), "\"a\""));
        assert!(etag_matches(Some(&v("*")), "\"a\""));
        assert!(!etag_matches(Some(&v("\"b\"")), "\"a\""));
        assert!(!etag_matches(None, "\"a\""));
    }
}
