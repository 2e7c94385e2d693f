//! Where upstreams that push their results (Cog's webhook) post them. The URL carries a token
//! bound to the job and the upstream handle (`kiln_core::callbacks`), because such upstreams sign
//! nothing. The token is checked before a byte of the body is read, and a declared length over
//! the cap is refused before reading too: this route needs no API key, so nothing an anonymous
//! client sends may cost memory until it has proved it was invited. A refused request's body is
//! never read, so the server closes its connection instead of draining it. A terminal result is stored in
//! the ledger for the worker waiting on it (or the one that re-attaches after a rescue); a
//! progress event (Cog's `logs`) leaves only the progress its logs show on the open attempt. Every accepted callback answers 200, a
//! duplicate or a stale one included, so the upstream stops retrying.

use crate::problem::Problem;
use crate::ApiState;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use kiln_core::JobId;
use serde::Deserialize;
use std::sync::Arc;

/// A callback body carries the outputs inline (data URIs), so it may be large.
pub const MAX_CALLBACK_BYTES: usize = 64 * 1024 * 1024;

#[derive(Deserialize)]
pub struct TokenQuery {
    token: Option<String>,
}

#[utoipa::path(
    post,
    path = "/v1/callbacks/{job}/{handle}",
    operation_id = "receiveCallback",
    tag = "callbacks",
    security(()),
    params(("job" = String, Path), ("handle" = String, Path), ("token" = Option<String>, Query)),
    request_body(content = Object, description = "An upstream's prediction (Cog's webhook body)"),
    responses(
        (status = 200, description = "Accepted (a duplicate or stale one too)"),
        (status = 400, description = "The body is not JSON", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token is missing or wrong", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is too large", body = crate::problem::Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn receive(
    State(state): State<Arc<ApiState>>,
    Path((job_id, upstream_id)): Path<(String, String)>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, Problem> {
    let refused = || {
        Problem::new(
            StatusCode::FORBIDDEN,
            "invalid_callback_token",
            "this callback URL's token is missing or wrong",
        )
    };
    let job_id: JobId = job_id.parse().map_err(|_| refused())?;
    let token = query.token.ok_or_else(refused)?;
    if !kiln_core::callbacks::verify(&state.callback_secret, job_id, &upstream_id, &token) {
        return Err(refused());
    }
    let too_large = || {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("a callback body may be at most {MAX_CALLBACK_BYTES} bytes"),
        )
    };
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_CALLBACK_BYTES as u64) {
        return Err(too_large());
    }
    // A body without a declared length (chunked) is still cut off at the cap while it streams.
    let body = axum::body::to_bytes(body, MAX_CALLBACK_BYTES)
        .await
        .map_err(|_| too_large())?;
    let parsed: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the callback body is not JSON: {e}"),
        )
    })?;
    let terminal = matches!(
        parsed["status"].as_str(),
        Some("succeeded" | "failed" | "canceled")
    );
    if !terminal {
        let progress = parsed["logs"]
            .as_str()
            .and_then(kiln_core::progress::from_logs);
        if let Some(fraction) = progress {
            let percent = (fraction * 100.0).floor() as u8;
            state
                .ledger
                .record_progress(job_id, &upstream_id, percent)
                .await?;
        }
        return Ok(StatusCode::OK);
    }
    let text = String::from_utf8(body.to_vec()).map_err(|_| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "the callback body is not UTF-8",
        )
    })?;
    let stored = state
        .ledger
        .record_callback(job_id, &upstream_id, &text)
        .await?;
    tracing::info!(job = %job_id, upstream = %upstream_id, stored, "upstream callback");
    Ok(StatusCode::OK)
}
