//! `Idempotency-Key` on the create routes, with Stripe's semantics. The key is scoped to the API
//! key that sent it and kept 24 h (`idempotency_keep`). The first request with it runs and its answer is stored; the
//! same key with the same request gets that answer again, marked `Idempotent-Replayed: true`;
//! with a different body (or route) it is `422`; while the first is still being answered it is
//! `409`. An answer that is not a success (a refusal, a limit, a server failure) is not kept,
//! so a retry runs again.
//!
//! It is a middleware around the two create routes, not code in each handler: it needs the raw
//! body (to fingerprint the request) and the whole response (to store it), and the handlers
//! stay unaware of it except for one thing: the job or pipeline they create is linked to the key
//! in the creating transaction (`IdempotencyRef` on `NewJob`/`NewPipeline`). So if the process
//! dies between committing and answering, a retry is answered with what was created instead of
//! creating it twice.

use crate::auth::live_key;
use crate::problem::Problem;
use crate::ApiState;
use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use kiln_core::ledger::{IdempotencyBegin, IdempotencyRef, StoredResponse};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

pub const HEADER: &str = "idempotency-key";
/// How long a request may hold its key before a retry may take over: longer than the longest
/// `Prefer: wait`, so only a request whose process died is overtaken.
const LOCK_FOR: Duration = Duration::from_secs(120);
/// The headers of an answer worth replaying.
const KEPT_HEADERS: [&str; 4] = [
    "location",
    "retry-after",
    "preference-applied",
    "content-type",
];

fn invalid(detail: &str) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, "invalid_idempotency_key", detail)
        .with_field("Idempotency-Key")
}

/// The middleware: a request without the header passes straight through.
pub async fn idempotent(
    State(state): State<Arc<ApiState>>,
    request: Request,
    next: Next,
) -> Response {
    match run(state, request, next).await {
        Ok(response) => response,
        Err(problem) => problem.into_response(),
    }
}

async fn run(state: Arc<ApiState>, request: Request, next: Next) -> Result<Response, Problem> {
    let Some(raw) = request.headers().get(HEADER) else {
        return Ok(next.run(request).await);
    };
    let key = raw
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= 255)
        .ok_or_else(|| invalid("Idempotency-Key must be 1 to 255 visible ASCII characters"))?
        .to_owned();
    let (mut parts, body) = request.into_parts();
    let caller = live_key(&mut parts, &state).await?;
    let body = to_bytes(body, state.max_body_bytes).await.map_err(|_| {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "the request body is larger than this server accepts",
        )
    })?;
    let fingerprint = {
        let mut hash = Sha256::new();
        hash.update(parts.method.as_str());
        hash.update([0]);
        hash.update(parts.uri.path());
        hash.update([0]);
        // A header that changes what is created is part of the request.
        if let Some(value) = parts.headers.get("cancel-after") {
            hash.update(b"cancel-after");
            hash.update(value.as_bytes());
        }
        hash.update([0]);
        hash.update(&body);
        hex::encode(hash.finalize())
    };
    let reference = IdempotencyRef {
        key_id: caller.id,
        key,
    };
    let begin = state
        .ledger
        .begin_idempotent(&reference, &fingerprint, LOCK_FOR, state.idempotency_keep)
        .await?;
    match begin {
        IdempotencyBegin::Started => {}
        IdempotencyBegin::Replay(stored) => return Ok(replay(stored)),
        IdempotencyBegin::Mismatch => {
            return Err(Problem::unprocessable(
                "idempotency_key_reused",
                "Idempotency-Key",
                "this Idempotency-Key was used with a different request; use a new key for a new request",
            ))
        }
        IdempotencyBegin::InFlight => {
            return Err(Problem::new(
                StatusCode::CONFLICT,
                "idempotency_key_in_flight",
                "a request with this Idempotency-Key is still being answered; retry shortly",
            )
            .with_field("Idempotency-Key")
            .with_retry_after(1));
        }
        IdempotencyBegin::Created(id) => return created_earlier(&state, &caller.tenant, id).await,
    }
    parts.extensions.insert(reference.clone());
    let response = next.run(Request::from_parts(parts, Body::from(body))).await;
    // Only an answer that did what was asked is kept (Stripe keeps none for a request that failed
    // validation or was refused): a refusal (400, 403, 422, a 429 limit) or a server-side
    // failure lets the key go, so a retry runs again and may succeed once the cause is gone.
    // What was created before a failure stays linked to the key, and a retry gets it.
    if !response.status().is_success() {
        if let Err(e) = state.ledger.abandon_idempotent(&reference).await {
            tracing::warn!(error = %e, "could not release an idempotency key; it is freed when its lock lapses");
        }
        return Ok(response);
    }
    let (parts, body) = response.into_parts();
    let body = to_bytes(body, usize::MAX)
        .await
        .map_err(|e| Problem::internal(&format!("could not read the response: {e}")))?;
    let stored = StoredResponse {
        status: parts.status.as_u16(),
        headers: KEPT_HEADERS
            .iter()
            .filter_map(|name| {
                let value = parts.headers.get(*name)?.to_str().ok()?;
                Some(((*name).to_owned(), value.to_owned()))
            })
            .collect(),
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    if let Err(e) = state.ledger.complete_idempotent(&reference, &stored).await {
        // The resource is linked to the key already, so a retry still finds it.
        tracing::warn!(error = %e, "could not store an idempotent answer");
    }
    Ok(Response::from_parts(parts, Body::from(body)))
}

fn replay(stored: StoredResponse) -> Response {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    let mut response = (status, stored.body).into_response();
    for (name, value) in &stored.headers {
        if let (Ok(name), Ok(value)) = (
            axum::http::HeaderName::try_from(name.as_str()),
            HeaderValue::from_str(value),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    response
        .headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    response
}

/// The first request created `id` and died before answering: answer with it as it is now.
async fn created_earlier(
    state: &ApiState,
    tenant: &kiln_core::TenantId,
    id: kiln_core::JobId,
) -> Result<Response, Problem> {
    let (body, location) = if let Some(job) = state.ledger.get_job(tenant, id).await? {
        (
            serde_json::to_string(&crate::jobs::render(state, &job).await?),
            format!("/v1/jobs/{id}"),
        )
    } else if let Some(p) = state
        .ledger
        .get_pipeline(tenant, kiln_core::PipelineId(id.0))
        .await?
    {
        (
            serde_json::to_string(&crate::pipelines::render(state, &p).await?),
            format!("/v1/pipelines/{id}"),
        )
    } else {
        return Err(Problem::internal(
            &"the idempotent request's resource is gone",
        ));
    };
    Ok(replay(StoredResponse {
        status: StatusCode::ACCEPTED.as_u16(),
        headers: vec![
            ("location".into(), location),
            ("content-type".into(), "application/json".into()),
        ],
        body: body.map_err(|e| Problem::internal(&e))?,
    }))
}
