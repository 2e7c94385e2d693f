//! `kiln-api` is the REST surface: submit, poll, list and cancel jobs, list models, download
//! outputs. Handlers validate, write the ledger and ring the doorbell; they never call a
//! provider. Every job route is scoped by the caller's tenant, and every error is a problem
//! detail. `router` builds the whole axum app from an `ApiState`.

mod auth;
mod callbacks;
mod cog_uploads;
mod create;
mod docs;
mod duration;
mod files;
mod fresh;
mod idempotency;
mod jobs;
mod limits;
mod lists;
mod openai;
mod openapi;
mod pipelines;
mod problem;
mod replicate;
mod responses;
pub mod server;
mod ui;
mod uploads;
mod usage;
mod wait;
mod webhooks;
pub mod wire;

pub use pipelines::view_pipeline;
pub use replicate::webhook_prediction;

pub use auth::{KeyCache, KEY_CACHE_TTL};
pub use jobs::{FinishedJobs, FINISHED_JOB_TTL};
pub use problem::Problem;

use axum::extract::{DefaultBodyLimit, State};
use axum::handler::Handler;
use axum::http::{Request, StatusCode};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use kiln_core::catalog::Catalog;
use kiln_core::dispatch::Doorbell;
use kiln_core::Ledger;
use kiln_storage::{ObjectStore, SignedDownloads};
use kiln_webhooks::SsrfPolicy;
use std::sync::Arc;
use std::time::Duration;
use tower_http::trace::TraceLayer;

/// Renders the installed metrics recorder's state as Prometheus text.
pub type MetricsRender = Arc<dyn Fn() -> String + Send + Sync>;

pub struct ApiState {
    pub ledger: Arc<dyn Ledger>,
    pub doorbell: Arc<dyn Doorbell>,
    pub store: Arc<dyn ObjectStore>,
    /// The download URLs this api serves at `/v1/files` (every object of a local store; on S3,
    /// relayed for clients that send an `Authorization` header with every download).
    pub downloads: SignedDownloads,
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
    /// Seals webhook signing secrets before the ledger stores them.
    pub secret_seal: kiln_webhooks::SecretSeal,
    /// Live keys read in the last second (`auth::KEY_CACHE_TTL`).
    pub key_cache: KeyCache,
    /// Finished jobs' answers rendered in the last second (`jobs::FINISHED_JOB_TTL`).
    pub finished_jobs: FinishedJobs,
    /// Where clients reach this api: the base of the absolute links in Replicate-style answers.
    pub public_url: url::Url,
    /// The largest upload (`POST /v1/files`): what a worker fetches as an input at most.
    pub max_upload_bytes: u64,
    /// The largest file a generator may upload as an output (`outputs.max_output_bytes`).
    pub max_output_bytes: u64,
    /// How long an upload is kept: the outputs' time to live.
    pub upload_ttl: Duration,
}

pub fn router(state: Arc<ApiState>) -> Router {
    let limit = state.max_body_bytes;
    // An upload streams into the store: its own, larger bound (the file plus the form's framing).
    let upload_limit = usize::try_from(state.max_upload_bytes)
        .unwrap_or(usize::MAX)
        .saturating_add(128 * 1024);
    let idempotent = axum::middleware::from_fn_with_state(state.clone(), idempotency::idempotent);
    let docs_page: Arc<str> = docs::page(&openapi::document(&state.catalog)).into();
    Router::new()
        .route(
            "/v1/jobs",
            post(jobs::submit.layer(idempotent.clone())).get(jobs::list),
        )
        .route("/v1/jobs/{id}", get(jobs::get))
        .route("/v1/jobs/{id}/cancel", post(jobs::cancel))
        .route("/v1/jobs/{id}/transitions", get(jobs::transitions))
        .route("/v1/jobs/{id}/outputs/{index}", get(jobs::output))
        .route("/v1/jobs/{id}/events", get(wait::job_events))
        .route(
            "/v1/pipelines",
            post(pipelines::submit.layer(idempotent.clone())).get(pipelines::list),
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
        .route(
            "/v1/models/{owner}/{name}/predictions",
            post(replicate::create_for_model.layer(idempotent.clone())),
        )
        .route("/v1/models/{owner}/{name}", get(replicate::model))
        .route("/v1/models/{owner}/{name}/versions", get(replicate::versions))
        .route(
            "/v1/models/{owner}/{name}/versions/{id}",
            get(replicate::version),
        )
        .route(
            "/v1/predictions",
            post(replicate::create_for_version.layer(idempotent.clone())).get(replicate::list),
        )
        .route("/v1/predictions/{id}", get(replicate::get))
        .route("/v1/predictions/{id}/cancel", post(replicate::cancel))
        .route(
            "/v1/images/edits",
            post(
                openai::edit
                    .layer(idempotent.clone())
                    .layer(DefaultBodyLimit::max(upload_limit))
                    .layer(axum::middleware::from_fn(openai::openai_errors)),
            ),
        )
        .route(
            "/v1/images/generations",
            post(
                openai::generate
                    .layer(idempotent.clone())
                    .layer(axum::middleware::from_fn(openai::openai_errors)),
            ),
        )
        .route("/v1/usage", get(usage::usage))
        .route("/v1/queue", get(usage::queue))
        .route(
            "/v1/files",
            post(uploads::create.layer(DefaultBodyLimit::max(upload_limit))).get(uploads::list),
        )
        .route(
            "/v1/files/{*key}",
            get(files::download).delete(uploads::delete),
        )
        .route(
            "/v1/callbacks/{job_id}/{upstream_id}",
            post(callbacks::receive),
        )
        // Bounded by `max_output_bytes` as the body streams, not by the default body limit.
        .route(
            "/v1/uploads/cog/{name}",
            put(cog_uploads::receive.layer(DefaultBodyLimit::disable())),
        )
        .route("/healthz", get(healthz))
        .route("/openapi.json", get(openapi::spec))
        .route(
            "/docs",
            get(move || {
                let page = docs_page.clone();
                async move { docs::serve_page(&page) }
            }),
        )
        .route(docs::SCALAR_PATH, get(docs::script))
        .route("/", get(ui::index))
        .route("/ui", get(ui::shell))
        .route("/ui/{*path}", get(ui::page))
        .route("/readyz", get(ready))
        .fallback(|| async { Problem::not_found("not_found", "there is no such route") })
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn(count_request))
        // Log method and path only: query strings carry download signatures. Each request's
        // span carries its id: the client's `x-request-id`, or a fresh one, echoed back.
        .layer(
            tower::ServiceBuilder::new()
                .layer(tower_http::request_id::SetRequestIdLayer::x_request_id(
                    tower_http::request_id::MakeRequestUuid,
                ))
                .layer(TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                    let id = req
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path())
                }))
                .layer(tower_http::request_id::PropagateRequestIdLayer::x_request_id()),
        )
        .with_state(state)
}

#[utoipa::path(
    get,
    path = "/v1/models",
    operation_id = "listModels",
    tag = "models",
    security(()),
    responses(
        (status = 200, description = "The models and their input schemas", body = wire::List<kiln_core::catalog::ModelInfo>),
    ),
)]
async fn models(
    State(state): State<Arc<ApiState>>,
) -> Json<wire::List<kiln_core::catalog::ModelInfo>> {
    Json(wire::List::of(state.catalog.models()))
}

/// The private metrics listener's app: `GET /metrics`, Prometheus text. It is never part of
/// the public router: its gauges count every tenant's jobs, and it takes no API key, so it is
/// served on an address of its own (`metrics_listen`) that can stay on a private network.
/// With a ledger, the ledger-wide gauges (jobs by status, queue depth and age per lane) are
/// read fresh at each scrape; counters and histograms are this process's.
pub fn metrics_router(ledger: Option<Arc<dyn Ledger>>, render: MetricsRender) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let (ledger, render) = (ledger.clone(), render.clone());
            async move {
                use axum::response::IntoResponse;
                if let Some(ledger) = ledger {
                    let snapshot = ledger.queue_snapshot().await?;
                    kiln_core::metrics::ledger_snapshot(&snapshot);
                }
                Ok::<_, Problem>(
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        render(),
                    )
                        .into_response(),
                )
            }
        }),
    )
}

/// Counts each answered request by method, route pattern (never the raw path, which holds ids)
/// and status.
async fn count_request(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let response = next.run(request).await;
    kiln_core::metrics::request(method.as_str(), &route, response.status().as_u16());
    response
}

#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "operations",
    security(()),
    responses((status = 200, description = "The process is alive", content_type = "text/plain", body = String)),
)]
async fn healthz() -> &'static str {
    "ok"
}

#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "operations",
    security(()),
    responses(
        (status = 200, description = "Ready: the ledger answers", content_type = "text/plain", body = String),
        (status = 503, description = "The ledger is unreachable", body = Problem, content_type = "application/problem+json"),
    ),
)]
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
