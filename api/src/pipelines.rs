//! The pipeline routes. A submit is checked whole before anything is written: the graph
//! (`kiln_core::pipeline::plan`: unknown steps, cycles), every step's model and input (with its
//! step references replaced by stand-ins of the shape they will have), the caller's own
//! `kiln://` references (tenant-checked) and the webhook URL. Then the pipeline, its steps and
//! its first jobs are written in one transaction and the first jobs rung. A pipeline shows its
//! steps with their jobs, the outputs of its final steps, and its cost (the sum of its steps').
//! Create and `GET` honour `Prefer: wait=N` as jobs do (`crate::wait`), so a workflow tool can
//! run a whole chain in one call of up to a minute.

use crate::auth::{Caller, Tenant};
use crate::jobs::view_job;
use crate::problem::Problem;
use crate::ApiState;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use kiln_core::events::{parse_event_filter, EventType};
use kiln_core::ledger::{NewPipeline, Pipeline};
use kiln_core::pipeline::{plan, with_stand_ins, StepSpec};
use kiln_core::PipelineId;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

fn unprocessable(code: &str, field: impl Into<String>, detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail).with_field(field)
}

fn not_found() -> Problem {
    Problem::not_found("pipeline_not_found", "there is no pipeline with this id")
}

fn parse_steps(body: &Value) -> Result<Vec<StepSpec>, Problem> {
    let steps = body["steps"]
        .as_array()
        .ok_or_else(|| unprocessable("missing_field", "steps", "steps must be a list of steps"))?;
    steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let text = |field: &str| {
                s[field].as_str().map(str::to_owned).ok_or_else(|| {
                    unprocessable(
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
        .collect()
}

#[utoipa::path(
    post,
    path = "/v1/pipelines",
    operation_id = "submitPipeline",
    tag = "pipelines",
    request_body = crate::openapi::PipelineSubmission,
    params(
        ("Prefer" = Option<String>, Header, description = "`wait=N` (N ≤ 60): answer once the pipeline has ended, or after N seconds"),
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, description = "Makes a retry safe: the same key and body replay the first answer"),
    ),
    responses(
        (status = 202, description = "Committed; its first steps are queued", body = crate::openapi::Pipeline, headers(
            ("Location" = String, description = "The created resource"),
            ("Retry-After" = u32, description = "A poll hint while unfinished"),
            ("Preference-Applied" = String, description = "`wait=N` when `Prefer: wait` was honoured"),
            ("Idempotent-Replayed" = String, description = "`true` on a replayed answer"),
        )),
        (status = 201, description = "Created and finished (under `Prefer: wait`)", body = crate::openapi::Pipeline, headers(
            ("Location" = String, description = "The created resource"),
            ("Retry-After" = u32, description = "A poll hint while unfinished"),
            ("Preference-Applied" = String, description = "`wait=N` when `Prefer: wait` was honoured"),
            ("Idempotent-Replayed" = String, description = "`true` on a replayed answer"),
        )),
        (status = 400, description = "The body is not JSON, or a malformed Idempotency-Key", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid API key", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Above the key's highest priority", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The Idempotency-Key's first request is still being answered", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is too large", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 422, description = "An invalid graph or step (the field at fault is named)", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Past the key's request rate, active-job limit or daily spend cap (Retry-After)", body = crate::openapi::Problem, content_type = "application/problem+json", headers(("Retry-After" = u32, description = "Seconds until a retry may succeed"))),
    ),
)]
pub async fn submit(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    idempotency: Option<axum::Extension<kiln_core::ledger::IdempotencyRef>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let body: Value = serde_json::from_slice(&body).map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body is not valid JSON: {e}"),
        )
    })?;
    if let Some(extra) = body.as_object().and_then(|o| {
        o.keys().find(|k| {
            !matches!(
                k.as_str(),
                "steps" | "webhook" | "webhook_events" | "priority"
            )
        })
    }) {
        return Err(unprocessable(
            "unknown_field",
            extra.clone(),
            format!("'{extra}' is not a field of a pipeline"),
        ));
    }
    let priority = crate::jobs::parse_priority(body.get("priority"))?;
    crate::jobs::check_priority(&caller, priority)?;
    let steps = parse_steps(&body)?;
    plan(&steps).map_err(|e| unprocessable(e.code, e.field, e.message))?;
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
    let webhook = match body.get("webhook") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            let url = kiln_core::catalog::parse_http_url(s).ok_or_else(|| {
                unprocessable("invalid_url", "webhook", crate::jobs::WEBHOOK_URL_RULE)
            })?;
            state
                .webhook_ssrf
                .check_url_resolving(&url)
                .await
                .map_err(|e| {
                    unprocessable("webhook_url_forbidden", "webhook", format!("webhook: {e}"))
                })?;
            Some(url.to_string())
        }
        Some(_) => {
            return Err(unprocessable(
                "invalid_type",
                "webhook",
                "webhook must be a URL",
            ))
        }
    };
    let events = match body.get("webhook_events") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => Some(
            parse_event_filter(items.iter().map(Value::as_str), &EventType::PIPELINE)
                .map_err(|message| unprocessable("unknown_event", "webhook_events", message))?
                .into_iter()
                .map(|e| e.as_str().to_owned())
                .collect(),
        ),
        Some(_) => {
            return Err(unprocessable(
                "invalid_type",
                "webhook_events",
                "webhook_events must be a list of event types",
            ))
        }
    };
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
            webhook_url: webhook,
            webhook_events: events,
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
    let mut response =
        respond_after_wait(&state, pipeline.clone(), &headers, StatusCode::ACCEPTED).await?;
    let location = HeaderValue::from_str(&format!("/v1/pipelines/{}", pipeline.id))
        .expect("ids are valid header text");
    response.headers_mut().insert(header::LOCATION, location);
    Ok(response)
}

#[utoipa::path(
    get,
    path = "/v1/pipelines/{id}",
    operation_id = "getPipeline",
    tag = "pipelines",
    params(
        ("id" = String, Path),
        ("Prefer" = Option<String>, Header, description = "`wait=N` (N ≤ 60): answer once the pipeline has ended, or after N seconds"),
    ),
    responses(
        (status = 200, description = "The pipeline", body = crate::openapi::Pipeline, headers(
            ("Retry-After" = u32, description = "A poll hint while unfinished"),
            ("Preference-Applied" = String, description = "`wait=N` when `Prefer: wait` was honoured"),
        )),
        (status = 401, description = "No valid API key", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such pipeline (or another tenant's)", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Past the key's request rate (Retry-After)", body = crate::openapi::Problem, content_type = "application/problem+json", headers(("Retry-After" = u32, description = "Seconds until a retry may succeed"))),
    ),
)]
pub async fn get(
    State(state): State<Arc<ApiState>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let id: PipelineId = id.parse().map_err(|_| not_found())?;
    let pipeline = state
        .ledger
        .get_pipeline(&tenant, id)
        .await?
        .ok_or_else(not_found)?;
    respond_after_wait(&state, pipeline, &headers, StatusCode::OK).await
}

/// Answers with the pipeline, first waiting for it to end if the client asked (`Prefer:
/// wait=N`); a create that waited for its pipeline to end answers 201. Unfinished, it carries
/// a poll hint.
async fn respond_after_wait(
    state: &ApiState,
    pipeline: Pipeline,
    headers: &HeaderMap,
    status: StatusCode,
) -> Result<Response, Problem> {
    let wait = crate::wait::requested_wait(headers);
    let pipeline = match wait {
        Some(wait) => {
            let tenant = pipeline.tenant.clone();
            crate::wait::until_terminal(state, &tenant, pipeline, wait).await?
        }
        None => pipeline,
    };
    let status =
        if status == StatusCode::ACCEPTED && wait.is_some() && pipeline.status.is_terminal() {
            StatusCode::CREATED
        } else {
            status
        };
    let mut response = (status, Json(render(state, &pipeline).await?)).into_response();
    if !pipeline.status.is_terminal() {
        let secs = state.poll_hint.as_secs().max(1).to_string();
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from_str(&secs).expect("digits are a valid header"),
        );
    }
    if let Some(wait) = wait {
        crate::wait::mark_applied(&mut response, wait);
    }
    Ok(response)
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
        (status = 200, description = "The tenant's pipelines, newest first", body = crate::openapi::PipelineList),
        (status = 400, description = "A bad filter (named in `field`)", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid API key", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Past the key's request rate (Retry-After)", body = crate::openapi::Problem, content_type = "application/problem+json", headers(("Retry-After" = u32, description = "Seconds until a retry may succeed"))),
    ),
)]
pub async fn list(
    State(state): State<Arc<ApiState>>,
    Tenant(tenant): Tenant,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, Problem> {
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
        (status = 200, description = "Canceled, with its unfinished steps", body = crate::openapi::Pipeline),
        (status = 401, description = "No valid API key", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such pipeline (or another tenant's)", body = crate::openapi::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Past the key's request rate (Retry-After)", body = crate::openapi::Problem, content_type = "application/problem+json", headers(("Retry-After" = u32, description = "Seconds until a retry may succeed"))),
    ),
)]
pub async fn cancel(
    State(state): State<Arc<ApiState>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
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
) -> Result<Option<Value>, Problem> {
    match ledger.get_pipeline(tenant, id).await? {
        Some(p) => Ok(Some(render_with(ledger, store, &p).await?)),
        None => Ok(None),
    }
}

pub(crate) async fn render(state: &ApiState, pipeline: &Pipeline) -> Result<Value, Problem> {
    render_with(state.ledger.as_ref(), state.store.as_ref(), pipeline).await
}

/// The pipeline as clients see it: steps with their jobs, the final steps' outputs, the cost.
async fn render_with(
    ledger: &dyn kiln_core::Ledger,
    store: &dyn kiln_storage::ObjectStore,
    pipeline: &Pipeline,
) -> Result<Value, Problem> {
    let mut steps = Vec::with_capacity(pipeline.steps.len());
    let mut outputs = vec![];
    let mut cost = 0i64;
    for step in &pipeline.steps {
        let job = match step.job_id {
            Some(id) => ledger.get_job(&pipeline.tenant, id).await?,
            None => None,
        };
        if let Some(job) = &job {
            cost += job
                .attempts
                .iter()
                .filter_map(|a| a.cost_micros)
                .sum::<i64>();
        }
        // Final steps: no other step depends on them.
        let is_final = !pipeline
            .steps
            .iter()
            .any(|s| s.depends_on.contains(&step.name));
        if is_final {
            if let Some(job) = &job {
                let view = view_job(store, job).await?;
                for o in view["outputs"].as_array().into_iter().flatten() {
                    let mut o = o.clone();
                    o["step"] = json!(step.name);
                    outputs.push(o);
                }
            }
        }
        steps.push(json!({
            "name": step.name,
            "model": step.model,
            "depends_on": step.depends_on,
            "job_id": step.job_id,
            "status": step_status(step.job_status, pipeline.status),
        }));
    }
    let self_url = format!("/v1/pipelines/{}", pipeline.id);
    Ok(json!({
        "object": "pipeline",
        "id": pipeline.id,
        "status": pipeline.status,
        "steps": steps,
        "outputs": outputs,
        "cost": cost as f64 / 1e6,
        "error": pipeline.error,
        "webhook": pipeline.webhook_url,
        "created_at": pipeline.created_at,
        "completed_at": pipeline.completed_at,
        "urls": {
            "self": self_url,
            "cancel": format!("{self_url}/cancel"),
            "events": format!("{self_url}/events"),
        },
    }))
}

/// A step's status: its job's, once it has one. A step that never started is `pending` while
/// its pipeline runs; once the pipeline has ended (failed or canceled) it never will start, and
/// reads `canceled`, so no step of an ended pipeline waits for ever.
fn step_status(job: Option<kiln_core::Status>, pipeline: kiln_core::Status) -> &'static str {
    match job {
        Some(status) => status.as_str(),
        None if pipeline.is_terminal() => kiln_core::Status::Canceled.as_str(),
        None => "pending",
    }
}

#[cfg(test)]
mod tests {
    use super::step_status;
    use kiln_core::Status;

    #[test]
    fn an_unstarted_step_of_an_ended_pipeline_is_canceled() {
        assert_eq!(step_status(None, Status::Running), "pending");
        assert_eq!(step_status(None, Status::Canceled), "canceled");
        assert_eq!(step_status(None, Status::Failed), "canceled");
        assert_eq!(step_status(Some(Status::Failed), Status::Failed), "failed");
    }
}
