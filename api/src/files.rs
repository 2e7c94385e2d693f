//! Downloads behind the api's own signed URLs (`kiln_storage::SignedDownloads`): every object of
//! the local store, and on S3 the objects relayed for clients that cannot use a presigned URL.
//! The URL is the credential: no API key is needed (an `Authorization` header beside it is
//! ignored), and a tampered or expired URL is refused with 403 before the store is touched.

use crate::problem::Problem;
use crate::ApiState;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
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
    ),
    responses(
        (status = 200, description = "The object's bytes; for a file's id, the file", content(
            (Vec<u8> = "application/octet-stream"),
            (crate::uploads::FileView = "application/json"),
        )),
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
    let body = match state.store.get(&key).await {
        Ok(stream) => stream,
        Err(StorageError::NotFound(_)) => {
            return Err(Problem::new(
                StatusCode::GONE,
                "output_expired",
                "the output has expired and was deleted",
            ))
        }
        Err(e) => return Err(e.into()),
    };
    let content_type = match key.rsplit('.').next() {
        Some("png") => "image/png",
        Some("gif") => "image/gif",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("mp4") => "video/mp4",
        _ => "application/octet-stream",
    };
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "private, max-age=3600"),
        ],
        Body::from_stream(body),
    )
        .into_response())
}
