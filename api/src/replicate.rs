//! Replicate's HTTP API over Kiln's jobs, so code written against Replicate's clients points at
//! Kiln by changing only its base URL and token. A prediction is a job: each route here parses
//! Replicate's request, then goes through the same create, read, wait and cancel as `/v1/jobs`
//! (`crate::jobs::create`, `crate::wait`), and answers with the job in Replicate's shape
//! (`crate::wire::PredictionView`). Nothing here writes the ledger by itself.
//!
//! Models are reached by their Kiln name, which must have Replicate's `owner/name` form to be
//! reachable here. Each model publishes one version, whose id is a digest of its name and
//! input schema (`wire::predictions::version_id`); a create by version accepts that id, with or
//! without the `owner/name:` before it.

use crate::auth::{Caller, Tenant};
use crate::jobs::{Answer, Polled};
use crate::lists::{list_body, page, parse_filter, probe};
use crate::problem::Problem;
use crate::wire::predictions::{
    retired_version_id, version_id, ModelView, PredictionStatus, PredictionView, ReplicatePage,
    VersionView,
};
use crate::wire::JobSubmission;
use crate::ApiState;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use kiln_core::catalog::ModelInfo;
use kiln_core::dispatch::Lane;
use kiln_core::events::EventType;
use kiln_core::ledger::{CancelOutcome, IdempotencyRef};
use kiln_core::{Job, JobId, TenantId};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// The fields of a create by model (`POST /v1/models/{owner}/{name}/predictions`).
const MODEL_CREATE_FIELDS: &[&str] = &["input", "webhook", "webhook_events_filter", "stream"];
/// The fields of a create by version (`POST /v1/predictions`).
const VERSION_CREATE_FIELDS: &[&str] = &[
    "version",
    "input",
    "webhook",
    "webhook_events_filter",
    "stream",
];

fn model_not_found(name: &str) -> Problem {
    Problem::not_found(
        "model_not_found",
        format!("there is no model named '{name}'; GET /v1/models lists them"),
    )
}

/// The catalog's model named `name`.
fn find_model(state: &ApiState, name: &str) -> Option<ModelInfo> {
    state.catalog.model(name)
}

/// The version a prediction of `model` shows.
fn version_of(state: &ApiState, model: &str) -> String {
    version_in(&state.catalog, model)
}

fn version_in(catalog: &kiln_core::catalog::Catalog, model: &str) -> String {
    catalog
        .model(model)
        .map(|m| version_id(&m))
        .unwrap_or_else(|| retired_version_id(model))
}

/// A prediction's webhook body: the prediction as `GET /v1/predictions/{id}` shows it, which
/// is what Replicate's clients' webhook handlers parse (not Kiln's event envelope).
pub fn webhook_prediction(
    catalog: &kiln_core::catalog::Catalog,
    downloads: &kiln_storage::SignedDownloads,
    public_url: &url::Url,
    job: &Job,
) -> Option<Value> {
    let version = version_in(catalog, &job.model);
    let status = PredictionStatus::of(job.status);
    let view = PredictionView::of(downloads, public_url, version, job, status).ok()?;
    serde_json::to_value(view).ok()
}

/// `webhook_events_filter`: Replicate's events as Kiln's. `start` is `job.started`;
/// `completed` is every end; `output` is a success (a job's outputs arrive with it); `logs`
/// is the start (Kiln sends no webhook per progress report).
fn events_filter(request: &Map<String, Value>) -> Result<Option<Vec<EventType>>, Problem> {
    const FIELD: &str = "webhook_events_filter";
    let items =
        match request.get(FIELD) {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Array(items)) if !items.is_empty() => items,
            Some(_) => return Err(Problem::unprocessable(
                "invalid_type",
                FIELD,
                "webhook_events_filter must be a non-empty list of start, output, logs, completed",
            )),
        };
    let mut events = Vec::new();
    for item in items {
        let mapped: &[EventType] = match item.as_str() {
            Some("start" | "logs") => &[EventType::JobStarted],
            Some("output") => &[EventType::JobSucceeded],
            Some("completed") => &[
                EventType::JobSucceeded,
                EventType::JobFailed,
                EventType::JobCanceled,
            ],
            _ => {
                return Err(Problem::unprocessable(
                    "unknown_event",
                    FIELD,
                    format!("{item} is not one of start, output, logs, completed"),
                ))
            }
        };
        for event in mapped {
            if !events.contains(event) {
                events.push(*event);
            }
        }
    }
    Ok(Some(events))
}

/// A create's body as a job submission of `model`.
fn submission(
    request: &Map<String, Value>,
    model: String,
    headers: &HeaderMap,
) -> Result<JobSubmission, Problem> {
    match request.get("stream") {
        None | Some(Value::Null | Value::Bool(false)) => {}
        Some(Value::Bool(true)) => {
            return Err(Problem::unprocessable(
                "stream_not_supported",
                "stream",
                "Kiln does not stream predictions' output; follow urls.events, or wait with Prefer: wait",
            ))
        }
        Some(_) => {
            return Err(Problem::unprocessable(
                "invalid_type",
                "stream",
                "stream must be a boolean",
            ))
        }
    }
    let input = match request.get("input") {
        Some(input) => input.clone(),
        None => {
            return Err(Problem::unprocessable(
                "missing_field",
                "input",
                "input is required",
            ))
        }
    };
    let cancel_after = headers
        .get("cancel-after")
        .map(|v| {
            let text = Value::String(v.to_str().unwrap_or_default().to_owned());
            crate::duration::parse("Cancel-After", &text)
        })
        .transpose()?;
    Ok(JobSubmission {
        model,
        input,
        priority: Lane::Normal,
        cancel_after,
        max_queue_wait: None,
        webhook: crate::create::webhook(request)?,
        webhook_events: events_filter(request)?,
    })
}

/// Creates the prediction and answers it, waiting first if the client asked.
async fn create_and_answer(
    state: &ApiState,
    caller: Caller,
    idempotency: Option<IdempotencyRef>,
    submission: JobSubmission,
    version: String,
    headers: &HeaderMap,
) -> Result<Response, Problem> {
    let surface = kiln_core::Surface::Replicate;
    let job = crate::jobs::create(state, caller, idempotency, submission, surface).await?;
    let tenant = job.tenant.clone();
    answer(state, &tenant, job, version, headers, StatusCode::CREATED).await
}

/// Answers with the job as a prediction, after the wait the client asked for (`Prefer: wait`
/// or `wait=N`). A create's answer (201) shows an unfinished prediction as `starting`.
async fn answer(
    state: &ApiState,
    tenant: &TenantId,
    job: Job,
    version: String,
    headers: &HeaderMap,
    status: StatusCode,
) -> Result<Response, Problem> {
    let wait = crate::wait::requested_wait(headers);
    let job = match wait {
        Some(wait) => crate::wait::until_terminal(state, tenant, job, wait).await?,
        None => job,
    };
    let shown = if status == StatusCode::CREATED {
        PredictionStatus::in_create_answer(job.status)
    } else {
        PredictionStatus::of(job.status)
    };
    let view = PredictionView::of(&state.downloads, &state.public_url, version, &job, shown)?;
    let mut response = (status, Json(view)).into_response();
    if status == StatusCode::CREATED {
        let location = format!("/v1/predictions/{}", job.id);
        response.headers_mut().insert(
            header::LOCATION,
            HeaderValue::from_str(&location).expect("ids are valid header text"),
        );
    }
    if let Some(wait) = wait {
        crate::wait::mark_applied(&mut response, wait);
    }
    Ok(response)
}

#[utoipa::path(
    post,
    path = "/v1/models/{owner}/{name}/predictions",
    operation_id = "createModelPrediction",
    tag = "replicate",
    request_body(content = Object, description = "`{input, webhook?, webhook_events_filter?}`"),
    params(
        ("owner" = String, Path), ("name" = String, Path),
        crate::responses::WaitPreference,
        crate::responses::IdempotencyKey,
    ),
    responses(
        (status = 201, description = "Created (`starting` until it ends within the wait)", body = PredictionView),
        crate::responses::CreateRefusals,
        (status = 404, description = "No such model", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid input (the field at fault is named)", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn create_for_model(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    idempotency: Option<axum::Extension<IdempotencyRef>>,
    Path((owner, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let request = crate::create::json_object(body, MODEL_CREATE_FIELDS, "a prediction")?;
    let name = format!("{owner}/{name}");
    let model = find_model(&state, &name).ok_or_else(|| model_not_found(&name))?;
    let submission = submission(&request, model.name.clone(), &headers)?;
    let idempotency = idempotency.map(|e| e.0);
    let version = version_id(&model);
    create_and_answer(&state, caller, idempotency, submission, version, &headers).await
}

/// The model a create's `version` names: a version id, `owner/name:id`, or `owner/name`.
fn model_of_version(state: &ApiState, version: &str) -> Result<ModelInfo, Problem> {
    let unknown = || {
        Problem::unprocessable(
            "unknown_version",
            "version",
            format!("there is no model version '{version}'; GET /v1/models/{{owner}}/{{name}} shows a model's latest_version"),
        )
    };
    let (name, id) = match version.split_once(':') {
        Some((name, id)) => (Some(name), Some(id)),
        None if version.contains('/') => (Some(version), None),
        None => (None, Some(version)),
    };
    state
        .catalog
        .models()
        .into_iter()
        .find(|m| name.is_none_or(|n| n == m.name) && id.is_none_or(|id| id == version_id(m)))
        .ok_or_else(unknown)
}

#[utoipa::path(
    post,
    path = "/v1/predictions",
    operation_id = "createPrediction",
    tag = "replicate",
    request_body(content = Object, description = "`{version, input, webhook?, webhook_events_filter?}`"),
    params(
        crate::responses::WaitPreference,
        crate::responses::IdempotencyKey,
    ),
    responses(
        (status = 201, description = "Created (`starting` until it ends within the wait)", body = PredictionView),
        crate::responses::CreateRefusals,
        (status = 422, description = "Invalid input or unknown version (the field at fault is named)", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn create_for_version(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    idempotency: Option<axum::Extension<IdempotencyRef>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let request = crate::create::json_object(body, VERSION_CREATE_FIELDS, "a prediction")?;
    let version = match request.get("version") {
        Some(Value::String(v)) => v.clone(),
        Some(_) => {
            return Err(Problem::unprocessable(
                "invalid_type",
                "version",
                "version must be a string",
            ))
        }
        None => {
            return Err(Problem::unprocessable(
                "missing_field",
                "version",
                "version is required",
            ))
        }
    };
    let model = model_of_version(&state, &version)?;
    let submission = submission(&request, model.name.clone(), &headers)?;
    let idempotency = idempotency.map(|e| e.0);
    let version = version_id(&model);
    create_and_answer(&state, caller, idempotency, submission, version, &headers).await
}

fn prediction_not_found() -> Problem {
    Problem::not_found(
        "prediction_not_found",
        "there is no prediction with this id",
    )
}

/// The caller's prediction by the id in the path; a malformed id is one that does not exist.
async fn read(state: &ApiState, tenant: &TenantId, id: &str) -> Result<Job, Problem> {
    let id: JobId = id.parse().map_err(|_| prediction_not_found())?;
    state
        .ledger
        .get_job(tenant, id)
        .await?
        .ok_or_else(prediction_not_found)
}

#[utoipa::path(
    get,
    path = "/v1/predictions/{id}",
    operation_id = "getPrediction",
    tag = "replicate",
    params(("id" = String, Path), crate::responses::WaitPreference),
    responses(
        (status = 200, description = "The prediction", body = PredictionView),
        crate::responses::KeyRefusals,
        (status = 404, description = "No such prediction (or another tenant's)", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn get(
    State(state): State<Arc<ApiState>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    // A finished prediction is answered as `GET /v1/jobs/{id}` answers a finished job: from
    // what this api rendered in the last second, if it did (`FinishedJobs`). Replicate's
    // clients poll a prediction until it ends, often several of them at once.
    let id: JobId = id.parse().map_err(|_| prediction_not_found())?;
    let polled = state
        .finished_jobs
        .kept_or_read(
            &state,
            &tenant,
            id,
            Answer::Prediction,
            &headers,
            prediction_not_found,
        )
        .await?;
    let (job, read_at) = match polled {
        Polled::Kept(answer) => return Ok(answer),
        Polled::Read(job, read_at) => (*job, read_at),
    };
    let version = version_of(&state, &job.model);
    if !job.status.is_terminal() {
        return answer(&state, &tenant, job, version, &headers, StatusCode::OK).await;
    }
    let shown = PredictionStatus::of(job.status);
    let view = PredictionView::of(&state.downloads, &state.public_url, version, &job, shown)?;
    state
        .finished_jobs
        .keep_answer(Answer::Prediction, &job, &view, read_at, &headers)
}

#[utoipa::path(
    post,
    path = "/v1/predictions/{id}/cancel",
    operation_id = "cancelPrediction",
    tag = "replicate",
    params(("id" = String, Path)),
    responses(
        (status = 200, description = "Canceled, or as it ended if it already had (as Replicate answers)", body = PredictionView),
        crate::responses::KeyRefusals,
        (status = 404, description = "No such prediction (or another tenant's)", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn cancel(
    State(state): State<Arc<ApiState>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let job = read(&state, &tenant, &id).await?;
    let job = match state.ledger.cancel_job(&tenant, job.id).await? {
        CancelOutcome::Canceled(job) | CancelOutcome::AlreadyTerminal(job) => job,
        CancelOutcome::NotFound => return Err(prediction_not_found()),
    };
    let version = version_of(&state, &job.model);
    answer(
        &state,
        &tenant,
        job,
        version,
        &HeaderMap::new(),
        StatusCode::OK,
    )
    .await
}

#[utoipa::path(
    get,
    path = "/v1/predictions",
    operation_id = "listPredictions",
    tag = "replicate",
    params(("cursor" = Option<String>, Query, description = "From the previous page's `next`")),
    responses(
        (status = 200, description = "The tenant's predictions (every job), newest first", body = ReplicatePage<PredictionView>),
        crate::responses::BadFilter,
        crate::responses::KeyRefusals,
    ),
)]
pub async fn list(
    State(state): State<Arc<ApiState>>,
    Tenant(tenant): Tenant,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, Problem> {
    let filter = parse_filter(&params)?;
    let fetched = state.ledger.list_jobs(&tenant, &probe(&filter)).await?;
    let (jobs, has_more) = page(fetched, &filter);
    let mut results = Vec::with_capacity(jobs.len());
    for job in &jobs {
        let version = version_of(&state, &job.model);
        let status = PredictionStatus::of(job.status);
        let view = PredictionView::of(&state.downloads, &state.public_url, version, job, status);
        results.push(view?);
    }
    let last = jobs.last().map(|j| j.id.0);
    let cursor = list_body(Vec::<PredictionView>::new(), has_more, last, &filter).next_cursor;
    let next = cursor.and_then(|c| {
        let mut url = state.public_url.join("v1/predictions").ok()?;
        url.query_pairs_mut().append_pair("cursor", &c);
        Some(url.to_string())
    });
    Ok(Json(ReplicatePage {
        next,
        previous: None,
        results,
    })
    .into_response())
}

#[utoipa::path(
    get,
    path = "/v1/models/{owner}/{name}",
    operation_id = "getReplicateModel",
    tag = "replicate",
    security(()),
    params(("owner" = String, Path), ("name" = String, Path)),
    responses(
        (status = 200, description = "The model and its latest version", body = ModelView),
        (status = 404, description = "No such model", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn model(
    State(state): State<Arc<ApiState>>,
    Path((owner, name)): Path<(String, String)>,
) -> Result<Json<ModelView>, Problem> {
    let name = format!("{owner}/{name}");
    find_model(&state, &name)
        .and_then(|m| ModelView::of(&state.public_url, &m))
        .map(Json)
        .ok_or_else(|| model_not_found(&name))
}

#[utoipa::path(
    get,
    path = "/v1/models/{owner}/{name}/versions",
    operation_id = "listModelVersions",
    tag = "replicate",
    security(()),
    params(("owner" = String, Path), ("name" = String, Path)),
    responses(
        (status = 200, description = "The model's one version", body = ReplicatePage<VersionView>),
        (status = 404, description = "No such model", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn versions(
    State(state): State<Arc<ApiState>>,
    Path((owner, name)): Path<(String, String)>,
) -> Result<Json<ReplicatePage<VersionView>>, Problem> {
    let name = format!("{owner}/{name}");
    let model = find_model(&state, &name).ok_or_else(|| model_not_found(&name))?;
    Ok(Json(ReplicatePage {
        next: None,
        previous: None,
        results: vec![VersionView::of(&model)],
    }))
}

#[utoipa::path(
    get,
    path = "/v1/models/{owner}/{name}/versions/{id}",
    operation_id = "getModelVersion",
    tag = "replicate",
    security(()),
    params(("owner" = String, Path), ("name" = String, Path), ("id" = String, Path)),
    responses(
        (status = 200, description = "The version", body = VersionView),
        (status = 404, description = "No such model or version", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn version(
    State(state): State<Arc<ApiState>>,
    Path((owner, name, id)): Path<(String, String, String)>,
) -> Result<Json<VersionView>, Problem> {
    let name = format!("{owner}/{name}");
    let model = find_model(&state, &name).ok_or_else(|| model_not_found(&name))?;
    if version_id(&model) != id {
        return Err(Problem::not_found(
            "version_not_found",
            format!("model '{name}' has no version '{id}'; its latest_version is the one it has"),
        ));
    }
    Ok(Json(VersionView::of(&model)))
}

/// Replicate's event names, as `webhook_events_filter` takes them.
const REPLICATE_EVENTS: [&str; 4] = ["start", "output", "logs", "completed"];

/// The fields both creates take besides `input` (and `version`), as the document states them.
fn create_properties() -> Map<String, Value> {
    let properties = serde_json::json!({
        "webhook": {
            "type": ["string", "null"],
            "pattern": kiln_core::catalog::HTTP_URL_PATTERN,
            "description": "Where the prediction is posted when an event of `webhook_events_filter` happens (Standard Webhooks signatures).",
        },
        "webhook_events_filter": {
            "type": ["array", "null"],
            "minItems": 1,
            "items": {"type": "string", "enum": REPLICATE_EVENTS},
            "description": "`start` and `logs`: the job started; `output`: it succeeded; `completed`: it ended. All when absent.",
        },
        "stream": {
            "type": ["boolean", "null"],
            "enum": [false, null],
            "description": "Streaming output is not offered: `true` is refused (follow `urls.events` instead).",
        },
    });
    match properties {
        Value::Object(map) => map,
        _ => unreachable!("an object literal"),
    }
}

/// Completes the document for this deployment's models: the templated model routes
/// (`/v1/models/{owner}/{name}…`) become one concrete path per model whose name has the
/// `owner/name` form, each create with that model's own input schema (a generated client, or a
/// fuzzer, then sends each model an input it takes), and `POST /v1/predictions` takes one of the
/// published versions with its model's input.
pub(crate) fn document_models(doc: &mut Value, models: &[ModelInfo]) {
    let templates = [
        "/v1/models/{owner}/{name}",
        "/v1/models/{owner}/{name}/versions",
        "/v1/models/{owner}/{name}/versions/{id}",
        "/v1/models/{owner}/{name}/predictions",
    ];
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    let taken: Vec<(&str, Value)> = templates
        .iter()
        .filter_map(|t| paths.remove(*t).map(|item| (*t, item)))
        .collect();
    for model in models.iter().filter(|m| m.name.contains('/')) {
        let version = version_id(model);
        let suffix: String = model
            .name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        for (template, item) in &taken {
            let mut item = item.clone();
            let Some(operations) = item.as_object_mut() else {
                continue;
            };
            for operation in operations.values_mut() {
                if let Some(id) = operation["operationId"].as_str() {
                    operation["operationId"] = Value::from(format!("{id}_{suffix}"));
                }
                if let Some(params) = operation["parameters"].as_array_mut() {
                    params.retain(|p| p["in"] != "path" || p["name"] == "id");
                    for param in params.iter_mut().filter(|p| p["in"] == "path") {
                        param["schema"] = serde_json::json!({"type": "string", "enum": [version]});
                    }
                }
                if template.ends_with("/predictions") {
                    let mut properties = create_properties();
                    properties.insert("input".into(), model.input_schema.clone());
                    operation["requestBody"]["content"]["application/json"]["schema"] = serde_json::json!({
                        "type": "object",
                        "required": ["input"],
                        "additionalProperties": false,
                        "properties": properties,
                    });
                }
            }
            paths.insert(template.replace("{owner}/{name}", &model.name), item);
        }
    }
    // A create by version: one of the published versions (its id, `owner/name`, or both),
    // with that model's input.
    let variants: Vec<Value> = models
        .iter()
        .filter(|m| m.name.contains('/'))
        .map(|m| {
            let id = version_id(m);
            let names = [id.clone(), m.name.clone(), format!("{}:{id}", m.name)];
            serde_json::json!({
                "properties": {"version": {"enum": names}, "input": m.input_schema},
                "required": ["version", "input"],
            })
        })
        .collect();
    let mut properties = create_properties();
    properties.insert(
        "version".into(),
        serde_json::json!({"type": "string", "description": "A model's `latest_version.id`, `owner/name`, or `owner/name:id`"}),
    );
    properties.insert(
        "input".into(),
        serde_json::json!({"type": "object", "description": "The model's input, as its version's `openapi_schema` describes"}),
    );
    doc["paths"]["/v1/predictions"]["post"]["requestBody"]["content"]["application/json"]
        ["schema"] = serde_json::json!({
        "type": "object",
        "required": ["version", "input"],
        "additionalProperties": false,
        "properties": properties,
        "oneOf": variants,
    });
}
