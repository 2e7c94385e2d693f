//! The pipeline routes. A submit is checked whole before anything is written: the graph
//! (`kiln_core::pipeline::plan`: unknown steps, cycles), every step's model and input (with its
//! step references replaced by stand-ins of the shape they will have), the caller's own
//! `kiln://` references (tenant-checked) and the webhook URL. Then the pipeline, its steps and
//! its first jobs are written in one transaction and the first jobs rung. A pipeline shows its
//! steps with their jobs, the outputs of its final steps, and its cost (the sum of its steps').
//! Create and `GET` honour `Prefer: wait=N` as jobs do (`crate::wait`), so a workflow tool can
//! run a whole chain in one call of up to a minute.

use crate::auth::{Caller, Tenant};
use crate::problem::Problem;
use crate::wire::{Page, PipelineSubmission, PipelineView};
use crate::ApiState;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use kiln_core::events::EventType;
use kiln_core::ledger::{NewPipeline, Pipeline};
use kiln_core::pipeline::{plan, with_stand_ins, StepSpec};
use kiln_core::PipelineId;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::Arc;

fn not_found() -> Problem {
    <Pipeline as crate::wait::Watched>::not_found()
}

/// The fields of a pipeline submission.
const SUBMISSION_FIELDS: &[&str] = &["steps", "webhook", "webhook_events", "priority"];

fn parse_submit(
    request: &Map<String, Value>,
    caller: &Caller,
) -> Result<PipelineSubmission, Problem> {
    let priority = crate::create::priority(request, caller)?;
    let steps = request
        .get("steps")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            Problem::unprocessable("missing_field", "steps", "steps must be a list of steps")
        })?;
    let steps = steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let text = |field: &str| {
                s[field].as_str().map(str::to_owned).ok_or_else(|| {
                    Problem::unprocessable(
                        "missing_field",
                        format!("steps[{i}].{field}"),
                        format!("steps[{i}].{field} must be a string"),
                    )
                })
            };
            Ok(StepSpec {
                name: text("name")?,
                model: text("model")?,
                input: s.get("input").cloned().unwrap_or(json!({})),
            })
        })
        .collect::<Result<Vec<_>, Problem>>()?;
    Ok(PipelineSubmission {
        steps,
        priority,
        webhook: crate::create::webhook(request)?,
        webhook_events: crate::create::webhook_events(request, &EventType::PIPELINE)?,
    })
}

#[utoipa::path(
    post,
    path = "/v1/pipelines",
    operation_id = "submitPipeline",
    tag = "pipelines",
    request_body = PipelineSubmission,
    params(
        crate::responses::WaitPreference,
        crate::responses::IdempotencyKey,
    ),
    responses(
        crate::responses::Created<PipelineView>,
        crate::responses::CreateRefusals,
        (status = 422, description = "An invalid graph or step (the field at fault is named)", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn submit(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    idempotency: Option<axum::Extension<kiln_core::ledger::IdempotencyRef>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let request = crate::create::json_object(body, SUBMISSION_FIELDS, "a pipeline")?;
    let PipelineSubmission {
        steps,
        priority,
        webhook,
        webhook_events,
    } = parse_submit(&request, &caller)?;
    plan(&steps).map_err(|e| Problem::unprocessable(e.code, e.field, e.message))?;
    for (i, step) in steps.iter().enumerate() {
        let input = with_stand_ins(&step.input);
        crate::jobs::check_input(
            &state,
            &caller.tenant,
            &step.model,
            &input,
            &format!("steps[{i}]."),
            true,
        )
        .await?;
    }
    if let Some(url) = &webhook {
        crate::create::check_webhook_target(&state, url).await?;
    }
    let models: Vec<&str> = steps.iter().map(|s| s.model.as_str()).collect();
    crate::limits::check_spend(&state, &caller, &models).await?;
    let (pipeline, started) = state
        .ledger
        .insert_pipeline(NewPipeline {
            idempotency: idempotency.map(|e| e.0),
            priority,
            max_active: caller.limits.max_active_jobs,
            id: PipelineId::new(),
            tenant: caller.tenant,
            key_id: Some(caller.key_id),
            webhook_url: webhook.map(|u| u.to_string()),
            webhook_events: crate::create::event_names(webhook_events),
            steps,
        })
        .await
        .map_err(crate::limits::active_job_limit)?;
    for (job, lane) in started {
        kiln_core::dispatch::ring_or_mark_unrung(
            state.doorbell.as_ref(),
            state.ledger.as_ref(),
            job,
            lane,
        )
        .await;
    }
    let tenant = pipeline.tenant.clone();
    crate::wait::created(&state, &tenant, pipeline, &headers).await
}

#[utoipa::path(
    get,
    path = "/v1/pipelines/{id}",
    operation_id = "getPipeline",
    tag = "pipelines",
    params(("id" = String, Path), crate::responses::WaitPreference),
    responses(
        crate::responses::Polled<PipelineView>,
        crate::responses::KeyRefusals,
        crate::responses::NoSuchPipeline,
    ),
)]
pub async fn get(
    State(state): State<Arc<ApiState>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    crate::wait::get::<Pipeline>(&state, &tenant, &id, &headers).await
}

/// `GET /v1/pipelines`: the caller's pipelines, newest first, paged by cursor as jobs are;
/// filters `status`, `created_after`, `created_before`.
#[utoipa::path(
    get,
    path = "/v1/pipelines",
    operation_id = "listPipelines",
    tag = "pipelines",
    params(
        ("status" = Option<String>, Query, description = "Comma-separated statuses"),
        ("created_after" = Option<chrono::DateTime<chrono::Utc>>, Query, description = "RFC 3339"),
        ("created_before" = Option<chrono::DateTime<chrono::Utc>>, Query, description = "RFC 3339"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "1 to 100 (default 20)"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "The tenant's pipelines, newest first", body = Page<PipelineView>),
        crate::responses::BadFilter,
        crate::responses::KeyRefusals,
    ),
)]
pub async fn list(
    State(state): State<Arc<ApiState>>,
    Tenant(tenant): Tenant,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Page<PipelineView>>, Problem> {
    if params.contains_key("model") {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "unknown_parameter",
            "'model' is not a filter of this list: a pipeline's steps each have their own",
        )
        .with_field("model"));
    }
    let filter = crate::lists::parse_filter(&params)?;
    let fetched = state
        .ledger
        .list_pipelines(&tenant, &crate::lists::probe(&filter))
        .await?;
    let (pipelines, has_more) = crate::lists::page(fetched, &filter);
    let mut data = Vec::with_capacity(pipelines.len());
    for pipeline in &pipelines {
        data.push(render(&state, pipeline).await?);
    }
    let last = pipelines.last().map(|p| p.id.0);
    Ok(Json(crate::lists::list_body(data, has_more, last, &filter)))
}

#[utoipa::path(
    post,
    path = "/v1/pipelines/{id}/cancel",
    operation_id = "cancelPipeline",
    tag = "pipelines",
    params(("id" = String, Path)),
    responses(
        (status = 200, description = "Canceled, with its unfinished steps", body = PipelineView),
        crate::responses::KeyRefusals,
        crate::responses::NoSuchPipeline,
    ),
)]
pub async fn cancel(
    State(state): State<Arc<ApiState>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Json<PipelineView>, Problem> {
    let id: PipelineId = id.parse().map_err(|_| not_found())?;
    let pipeline = state
        .ledger
        .cancel_pipeline(&tenant, id)
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(render(&state, &pipeline).await?))
}

/// A pipeline as `GET /v1/pipelines/{id}` shows it, by id; webhook payloads carry the same.
pub async fn view_pipeline(
    ledger: &dyn kiln_core::Ledger,
    store: &dyn kiln_storage::ObjectStore,
    tenant: &kiln_core::TenantId,
    id: PipelineId,
) -> Result<Option<PipelineView>, Problem> {
    match ledger.get_pipeline(tenant, id).await? {
        Some(p) => Ok(Some(PipelineView::of(ledger, store, &p).await?)),
        None => Ok(None),
    }
}

pub(crate) async fn render(state: &ApiState, pipeline: &Pipeline) -> Result<PipelineView, Problem> {
    PipelineView::of(state.ledger.as_ref(), state.store.as_ref(), pipeline).await
}
