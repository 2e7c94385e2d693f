//! Where Cog servers upload their file outputs, so that a large output never travels inside the
//! result callback (which carries a file inline as a data URI and is capped at 64 MiB). A Cog
//! server started with `--upload-url {public_url}/v1/uploads/cog/` PUTs each file to
//! `{upload_url}{basename}` with its exact `Content-Length` and the prediction's id in
//! `X-Prediction-Id`, then reports the `Location` this route answers as the output.
//!
//! The route needs no API key; what admits an upload is checked before a byte of its body is
//! read. The prediction id must be one Kiln minted (`kiln_core::callbacks::UploadHandle`, an
//! HMAC over the attempt), a declared length must be within `outputs.max_output_bytes`, and the
//! ledger must show the attempt still open and waiting on that prediction: a forged upload, or
//! one replayed after its attempt ended, is refused and stores nothing. The body then streams
//! into the output store under the attempt's own prefix (`jobs/{job}/uploads/{n}/`), a buffer
//! at a time on the local store and in 8 MiB parts on S3, so memory stays bounded whatever the
//! file's size; a body that runs past the limit is cut off and leaves no object.

use crate::problem::Problem;
use crate::ApiState;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::{StreamExt, TryStreamExt};
use kiln_core::callbacks::UploadHandle;
use std::sync::Arc;

#[utoipa::path(
    put,
    path = "/v1/uploads/cog/{name}",
    operation_id = "receiveCogUpload",
    tag = "callbacks",
    security(()),
    params(
        ("name" = String, Path, description = "The file's name, as Cog sends it"),
        ("X-Prediction-Id" = String, Header, description = "The prediction's id, which Kiln minted for the attempt"),
    ),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The file"),
    responses(
        (status = 201, description = "Stored; `Location` names the output for the prediction's result"),
        (status = 403, description = "The prediction id is not one Kiln minted", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The attempt is no longer waiting on this prediction", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Larger than `outputs.max_output_bytes`", body = crate::problem::Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn receive(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let handle = headers
        .get("x-prediction-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(refused)?;
    let upload = UploadHandle::verify(&state.callback_secret, &handle).ok_or_else(refused)?;
    let limit = state.max_output_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    if !state
        .ledger
        .awaits_upstream(upload.job_id, &handle)
        .await
        .map_err(|e| Problem::internal(&e))?
    {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "attempt_not_waiting",
            "no open attempt is waiting on this prediction: it ended, or was never started",
        ));
    }
    let key = format!(
        "{}{}",
        upload.key_prefix(),
        crate::uploads::safe_name(&name)
    );
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_owned();
    // Counted as it streams: a body without a length, or longer than it said, is cut off at the
    // limit, and the store then discards what it had (a temporary file, an aborted multipart).
    let mut seen = 0u64;
    let stream = body
        .into_data_stream()
        .map_err(std::io::Error::other)
        .map(move |chunk| {
            let chunk = chunk?;
            seen += chunk.len() as u64;
            if seen > limit {
                return Err(std::io::Error::other(OVER_LIMIT));
            }
            Ok(chunk)
        })
        .boxed();
    let stored = state.store.put(&key, &content_type, stream).await;
    let bytes = match stored {
        Ok(bytes) => bytes,
        Err(e) if e.to_string().contains(OVER_LIMIT) => return Err(too_large(limit)),
        Err(e) => return Err(e.into()),
    };
    tracing::info!(job = %upload.job_id, key, bytes, "stored a generator's upload");
    let location = state
        .public_url
        .join(&format!(
            "{}{key}",
            kiln_storage::FILES_PATH.trim_start_matches('/')
        ))
        .map_err(|e| Problem::internal(&e))?;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location.to_string())],
    )
        .into_response())
}

const OVER_LIMIT: &str = "the upload is larger than outputs.max_output_bytes";

fn refused() -> Problem {
    Problem::new(
        StatusCode::FORBIDDEN,
        "invalid_upload_token",
        "X-Prediction-Id is missing or is not a prediction Kiln started",
    )
    .with_field("X-Prediction-Id")
}

fn too_large(limit: u64) -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "upload_too_large",
        format!("an output upload may be at most {limit} bytes (outputs.max_output_bytes)"),
    )
}
