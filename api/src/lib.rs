//! `kiln-api` is the REST surface: submit, poll, list and cancel jobs, list models, download
//! outputs. Handlers validate, write the ledger and ring the doorbell; they never call a
//! provider. Every job route is scoped by the caller's tenant, and every error is a problem
//! detail. `router` builds the whole axum app from an `ApiState`.

mod auth;
mod callbacks;
mod files;
mod idempotency;
mod jobs;
mod limits;
mod pipelines;
mod problem;
mod usage;
mod wait;
mod webhooks;

pub use jobs::view_job;
pub use pipelines::view_pipeline;

pub use problem::Problem;

use axum::extract::{DefaultBodyLimit, State};
use axum::handler::Handler;
use axum::http::{Request, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use kiln_core::catalog::Catalog;
use kiln_core::dispatch::Doorbell;
use kiln_core::Ledger;
use kiln_storage::{LocalStore, ObjectStore};
use kiln_webhooks::SsrfPolicy;
use std::sync::Arc;
use std::time::Duration;
use tower_http::trace::TraceLayer;

pub struct ApiState {
    pub ledger: Arc<dyn Ledger>,
    pub doorbell: Arc<dyn Doorbell>,
    pub store: Arc<dyn ObjectStore>,
    /// Present when outputs live in a local directory that this api serves at `/v1/files`.
    pub local: Option<Arc<LocalStore>>,
    pub catalog: Catalog,
    pub ssrf: SsrfPolicy,
    /// Where webhooks may go: `ssrf`, plus loopback on the embedded default.
    pub webhook_ssrf: SsrfPolicy,
    pub max_body_bytes: usize,
    /// The `Retry-After` hint on a job that is not finished yet.
    pub poll_hint: Duration,
    /// How long an `Idempotency-Key`'s answer is kept (24 h by default).
    pub idempotency_keep: Duration,
    /// Every key's limits where the key sets none of its own.
    pub limits: kiln_core::ledger::KeyLimits,
    /// Counts each key's requests against its rate, across api processes when shared (Redis).
    pub permits: kiln_core::permits::SharedPermits,
    /// Key of the tokens in upstream callback URLs (`kiln_core::callbacks`).
    pub callback_secret: Arc<[u8]>,
}

pub fn router(state: Arc<ApiState>) -> Router {
    let limit = state.max_body_bytes;
    let idempotent = axum::middleware::from_fn_with_state(state.clone(), idempotency::idempotent);
    Router::new()
        .route(
            "/v1/jobs",
            post(jobs::submit.layer(idempotent.clone())).get(jobs::list),
        )
        .route("/v1/jobs/{id}", get(jobs::get))
        .route("/v1/jobs/{id}/cancel", post(jobs::cancel))
        .route("/v1/jobs/{id}/outputs/{index}", get(jobs::output))
        .route("/v1/jobs/{id}/events", get(wait::job_events))
        .route(
            "/v1/pipelines",
            post(pipelines::submit.layer(idempotent)).get(pipelines::list),
        )
        .route("/v1/pipelines/{id}", get(pipelines::get))
        .route("/v1/pipelines/{id}/events", get(wait::pipeline_events))
        .route("/v1/pipelines/{id}/cancel", post(pipelines::cancel))
        .route("/v1/jobs/{id}/deliveries", get(webhooks::deliveries))
        .route(
            "/v1/jobs/{id}/deliveries/{delivery}/redeliver",
            post(webhooks::redeliver),
        )
        .route("/v1/webhooks/default/secret", get(webhooks::secret))
        .route("/v1/webhooks/default/secret/rotate", post(webhooks::rotate))
        .route("/v1/models", get(models))
        .route("/v1/usage", get(usage::usage))
        .route("/v1/files/{*key}", get(files::download))
        .route(
            "/v1/callbacks/{job_id}/{upstream_id}",
            post(callbacks::receive).layer(DefaultBodyLimit::max(callbacks::MAX_CALLBACK_BYTES)),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .fallback(|| async { Problem::not_found("not_found", "there is no such route") })
        .layer(DefaultBodyLimit::max(limit))
        // Log method and path only: query strings carry download signatures.
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
            tracing::info_span!("request", method = %req.method(), path = %req.uri().path())
        }))
        .with_state(state)
}

async fn models(State(state): State<Arc<ApiState>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "object": "list", "data": state.catalog.models() }))
}

async fn ready(State(state): State<Arc<ApiState>>) -> Result<&'static str, Problem> {
    state.ledger.ping().await.map_err(|e| {
        tracing::warn!(error = %e, "not ready: ledger unreachable");
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the ledger is unreachable",
        )
    })?;
    Ok("ready")
}
