//! OpenAI's images API over Kiln's jobs, so code written against OpenAI's SDKs points at Kiln
//! by changing only its base URL (`…/v1`) and key. `POST /v1/images/generations` is a blocking
//! call in OpenAI's API, so it creates one job per image asked (`n`), waits for them all, and
//! answers `{created, data: [{url | b64_json}]}`; each job is an ordinary job, visible under
//! `/v1/jobs`.
//!
//! The request maps onto the model's input: `prompt`; `size` (`WxH`) as `width` and `height`;
//! any other field the model's input schema has (`seed`, say, which OpenAI's SDKs send through
//! `extra_body`) as itself. OpenAI's own options that Kiln cannot apply (`quality`, `style`,
//! `user`, `background`, `moderation`, `output_format`, `output_compression`,
//! `safety_identifier`) are taken and ignored, as a provider ignores what its model lacks;
//! streaming is refused, and so is any other field.
//!
//! Errors on these routes are OpenAI's shape, `{"error": {message, type, param, code}}`
//! (`openai_errors`, a layer that rewrites Kiln's problem details, from whichever extractor or
//! handler they come), with 400 where Kiln says 422, and `x-should-retry: false` on every
//! refusal a retry cannot fix: OpenAI's SDKs retry timeouts, 409, 429 and 5xx on their own. A
//! retried create must not start its jobs twice: with an `Idempotency-Key` the retry is
//! answered from the first (the SDKs send one only when the caller adds it); without one, the
//! jobs of a request whose client went away (a timeout before its retry) are canceled, so the
//! retry's jobs are the only ones that run to the end.

pub(crate) mod edits;
mod schema;

pub use edits::edit;
pub(crate) use schema::{edit_request_body, request_schema};

use crate::auth::Caller;
use crate::problem::Problem;
use crate::wire::JobSubmission;
use crate::ApiState;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use futures::TryStreamExt;
use kiln_core::dispatch::Lane;
use kiln_core::ledger::IdempotencyRef;
use kiln_core::{Job, JobId, Status, TenantId};
use serde::Serialize;
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::Duration;
use utoipa::ToSchema;

/// A side of the size `auto` asks for, where the model has no default of its own (OpenAI's
/// default size is 1024x1024).
const DEFAULT_SIDE: u64 = 1024;
/// The most images one request may ask for (OpenAI's own limit).
const MAX_IMAGES: u64 = 10;
/// The longest a generation is waited for, whatever the client's timeout.
const MAX_GENERATION_WAIT: Duration = Duration::from_secs(600);
/// Answered this long before the client's own read timeout (`X-Stainless-Read-Timeout`), so it
/// gets an answer instead of timing out and retrying.
const TIMEOUT_MARGIN: Duration = Duration::from_secs(5);
/// The largest image answered inline as `b64_json` (a larger one is offered by `url`).
const MAX_INLINE_BYTES: u64 = 32 * 1024 * 1024;

/// OpenAI's options that Kiln takes and does not apply.
const IGNORED: &[&str] = &[
    "quality",
    "style",
    "user",
    "background",
    "moderation",
    "output_format",
    "output_compression",
    "safety_identifier",
];

/// One image of an answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImageData {
    /// A signed download URL (`response_format: url`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The image itself (`response_format: b64_json`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub b64_json: Option<String>,
}

/// `POST /v1/images/generations`'s answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImagesResponse {
    /// Unix seconds.
    pub created: i64,
    pub data: Vec<ImageData>,
    /// The ids of the jobs that made the images (`GET /v1/jobs/{id}`), in `data`'s order.
    pub kiln_jobs: Vec<String>,
}

fn refused(code: &str, param: &str, detail: impl Into<String>) -> Problem {
    Problem::unprocessable(code.to_owned(), param, detail)
}

/// How an answer is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Url,
    Base64,
}

/// What a generation asks for: the jobs' model and input, how many, and in what form.
struct Generation {
    model: String,
    input: Map<String, Value>,
    images: u64,
    format: Format,
    /// Whether the model takes a `seed` (several images of one prompt then differ by it).
    takes_seed: bool,
}

/// The request as jobs to run. `image`: for an edit, the URL of the uploaded image, which
/// goes into the model's image field (a model without one cannot edit); an edit's prompt goes
/// to the model only if it takes one.
fn parse(
    state: &ApiState,
    request: &Map<String, Value>,
    image: Option<&str>,
) -> Result<Generation, Problem> {
    let text = |name: &str| match request.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(refused(
            "invalid_type",
            name,
            format!("{name} must be a string"),
        )),
    };
    let prompt =
        text("prompt")?.ok_or_else(|| refused("missing_field", "prompt", "prompt is required"))?;
    let model = text("model")?.ok_or_else(|| {
        refused(
            "missing_field",
            "model",
            "model is required: a Kiln model name (GET /v1/models)",
        )
    })?;
    let info = state.catalog.model(&model).ok_or_else(|| {
        Problem::new(
            StatusCode::NOT_FOUND,
            "model_not_found",
            format!("there is no model named '{model}'; GET /v1/models lists them"),
        )
        .with_field("model")
    })?;
    let takes = |field: &str| info.input_schema["properties"].get(field).is_some();
    let mut input = Map::new();
    match image {
        None if !takes("prompt") => {
            return Err(refused(
                "unsupported_model",
                "model",
                format!("model '{model}' takes no prompt; run it through POST /v1/jobs"),
            ))
        }
        None => {
            input.insert("prompt".into(), Value::String(prompt));
        }
        Some(url) => {
            let field = image_field(&info).ok_or_else(|| {
                refused(
                    "unsupported_model",
                    "model",
                    format!("model '{model}' takes no image to edit"),
                )
            })?;
            input.insert(field, Value::String(url.to_owned()));
            if takes("prompt") {
                input.insert("prompt".into(), Value::String(prompt));
            }
        }
    }
    match text("size")?.as_deref() {
        None | Some("auto") => {
            // OpenAI's default size, within the model's own ranges, where the model needs one.
            for side in ["width", "height"] {
                if let Some(rule) = info.input_schema["properties"].get(side) {
                    let low = rule["minimum"].as_u64().unwrap_or(1);
                    let high = rule["maximum"].as_u64().unwrap_or(u64::MAX);
                    let value = rule["default"]
                        .as_u64()
                        .unwrap_or(DEFAULT_SIDE.clamp(low, high));
                    input.insert(side.into(), value.into());
                }
            }
        }
        Some(size) => {
            let parsed = size
                .split_once('x')
                .and_then(|(w, h)| Some((whole_number(w)?, whole_number(h)?)));
            let Some((width, height)) = parsed else {
                return Err(refused(
                    "invalid_size",
                    "size",
                    "size must be WIDTHxHEIGHT (for example 1024x1024) or auto",
                ));
            };
            if !(takes("width") && takes("height")) {
                return Err(refused(
                    "unsupported_parameter",
                    "size",
                    format!("model '{model}' takes no size"),
                ));
            }
            input.insert("width".into(), width.into());
            input.insert("height".into(), height.into());
        }
    }
    let images = match request.get("n") {
        None | Some(Value::Null) => 1,
        // JSON Schema's integers include `2.0`.
        Some(n) => n
            .as_u64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                    .map(|f| f as u64)
            })
            .filter(|n| (1..=MAX_IMAGES).contains(n))
            .ok_or_else(|| {
                refused(
                    "invalid_value",
                    "n",
                    format!("n must be a whole number from 1 to {MAX_IMAGES}"),
                )
            })?,
    };
    let format = match text("response_format")?.as_deref() {
        None | Some("url") => Format::Url,
        Some("b64_json") => Format::Base64,
        Some(_) => {
            return Err(refused(
                "invalid_value",
                "response_format",
                "response_format must be url or b64_json",
            ))
        }
    };
    for (name, value) in request {
        match name.as_str() {
            "prompt" | "model" | "size" | "n" | "response_format" => {}
            "stream" | "partial_images" => {
                if !matches!(value, Value::Null | Value::Bool(false)) {
                    return Err(refused(
                        "unsupported_parameter",
                        name,
                        "Kiln does not stream images: leave out stream and partial_images",
                    ));
                }
            }
            ignored if IGNORED.contains(&ignored) => {}
            field if takes(field) => {
                input.insert(field.to_owned(), value.clone());
            }
            unknown => {
                return Err(refused(
                    "unknown_parameter",
                    unknown,
                    format!(
                    "'{unknown}' is neither an option of this API nor an input of model '{model}'"
                ),
                ))
            }
        }
    }
    Ok(Generation {
        takes_seed: takes("seed"),
        model,
        input,
        images,
        format,
    })
}

/// The model's input field that takes an image (the first, where it takes several).
fn image_field(model: &kiln_core::catalog::ModelInfo) -> Option<String> {
    model.input_schema["properties"]
        .as_object()?
        .iter()
        .find(|(_, rule)| rule["pattern"] == kiln_core::catalog::IMAGE_SOURCE_PATTERN)
        .map(|(name, _)| name.clone())
}

/// A size's side: digits only, without a leading zero (what the document's pattern says).
fn whole_number(text: &str) -> Option<u32> {
    let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    (digits && !text.starts_with('0'))
        .then(|| text.parse().ok())
        .flatten()
}

/// A refusal of the jobs' input, named as the request named it: the input's `width` and
/// `height` came from `size`, its other fields from the request's fields of the same name.
fn as_request_field(mut problem: Problem) -> Problem {
    if let Some(field) = problem.field.take() {
        let field = match field.strip_prefix("input.") {
            Some("width" | "height") => "size".to_owned(),
            Some(other) => other.to_owned(),
            None => field,
        };
        problem.field = Some(field);
    }
    problem
}

/// Cancels the jobs of a generation whose client went away before the answer (the handler's
/// future is dropped): its retry makes new ones, and these must not run on and cost too.
struct CancelUnlessAnswered {
    state: Arc<ApiState>,
    tenant: TenantId,
    jobs: Vec<JobId>,
    answered: bool,
}

impl Drop for CancelUnlessAnswered {
    fn drop(&mut self) {
        if self.answered || self.jobs.is_empty() {
            return;
        }
        let (state, tenant, jobs) = (
            self.state.clone(),
            self.tenant.clone(),
            std::mem::take(&mut self.jobs),
        );
        tokio::spawn(async move {
            for job in jobs {
                if let Err(e) = state.ledger.cancel_job(&tenant, job).await {
                    tracing::warn!(job = %job, error = %e, "cannot cancel the job of an abandoned image request");
                }
            }
        });
    }
}

/// How long this request may wait for its images: just inside the client's own read timeout
/// where it says it, at most `MAX_GENERATION_WAIT`.
fn generation_wait(headers: &HeaderMap) -> Duration {
    headers
        .get("x-stainless-read-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(|s| Duration::from_secs_f64(s.min(MAX_GENERATION_WAIT.as_secs_f64())))
        .map(|d| d.saturating_sub(TIMEOUT_MARGIN).max(Duration::from_secs(1)))
        .unwrap_or(MAX_GENERATION_WAIT)
}

#[utoipa::path(
    post,
    path = "/v1/images/generations",
    operation_id = "createImage",
    tag = "openai",
    request_body(content = Object, description = "`{prompt, model, n?, size?, response_format?}` and any input field of the model"),
    params(
        crate::responses::IdempotencyKey,
    ),
    responses(
        (status = 200, description = "The images, once every job succeeded", body = ImagesResponse),
        (status = 400, description = "Refused (OpenAI's error shape; `param` names the field)", body = Object),
        (status = 401, description = "No valid API key (OpenAI's error shape)", body = Object),
        (status = 404, description = "No such model (OpenAI's error shape)", body = Object),
        (status = 409, description = "A request with this Idempotency-Key is still being answered (OpenAI's error shape; retry)", body = Object),
        (status = 413, description = "The body is larger than this route takes (OpenAI's error shape)", body = Object),
        (status = 429, description = "The key's request rate is spent (OpenAI's error shape; `Retry-After`)", body = Object),
        (status = 500, description = "A job failed; `code` is its error code (OpenAI's error shape, not to be retried)", body = Object),
        (status = 504, description = "Not finished within the wait; the jobs go on (OpenAI's error shape)", body = Object),
    ),
)]
pub async fn generate(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    idempotency: Option<axum::Extension<IdempotencyRef>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let request = crate::create::any_json_object(body)?;
    let generation = parse(&state, &request, None)?;
    run(
        state,
        caller,
        idempotency.map(|e| e.0),
        &headers,
        generation,
    )
    .await
}

/// Runs a generation's jobs and answers once they have all ended (or the wait ran out),
/// canceling them if the client goes away before the answer.
async fn run(
    state: Arc<ApiState>,
    caller: Caller,
    mut idempotency: Option<IdempotencyRef>,
    headers: &HeaderMap,
    generation: Generation,
) -> Result<Response, Problem> {
    let mut guard = CancelUnlessAnswered {
        state: state.clone(),
        tenant: caller.tenant.clone(),
        jobs: Vec::new(),
        answered: false,
    };
    for index in 0..generation.images {
        let mut input = generation.input.clone();
        // Several images of one prompt differ by seed, where the model takes one and the
        // request set none.
        if generation.images > 1 && !input.contains_key("seed") && generation.takes_seed {
            input.insert("seed".into(), index.into());
        }
        let submission = JobSubmission {
            model: generation.model.clone(),
            input: Value::Object(input),
            priority: Lane::Normal,
            cancel_after: None,
            max_queue_wait: None,
            webhook: None,
            webhook_events: None,
        };
        // The idempotency key is linked to the first job, in its inserting transaction.
        let job = crate::jobs::create(
            &state,
            caller.clone(),
            idempotency.take(),
            submission,
            kiln_core::Surface::Kiln,
        )
        .await
        .map_err(as_request_field)?;
        guard.jobs.push(job.id);
    }
    let wait = generation_wait(headers);
    let deadline = tokio::time::Instant::now() + wait;
    let mut finished = Vec::with_capacity(guard.jobs.len());
    for id in guard.jobs.clone() {
        let job = state
            .ledger
            .get_job(&caller.tenant, id)
            .await?
            .ok_or_else(|| Problem::internal(&"a job just created is missing"))?;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        finished.push(crate::wait::until_terminal(&state, &caller.tenant, job, left).await?);
    }
    let answer = answer(&state, &finished, generation.format).await;
    guard.answered = true;
    answer
}

/// The answer once the jobs have ended (or the wait ran out): the images, or why there are none.
async fn answer(state: &ApiState, jobs: &[Job], format: Format) -> Result<Response, Problem> {
    let ids = || {
        jobs.iter()
            .map(|j| j.id.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(job) = jobs.iter().find(|j| !j.status.is_terminal()) {
        return Err(Problem::new(
            StatusCode::GATEWAY_TIMEOUT,
            "generation_timeout",
            format!(
                "the images are not ready yet; the jobs go on: GET /v1/jobs/{} (jobs {})",
                job.id,
                ids()
            ),
        ));
    }
    if let Some(job) = jobs.iter().find(|j| j.status != Status::Succeeded) {
        let (code, message) = match &job.error {
            Some(e) => (e.code.clone(), e.message.clone()),
            None => (
                job.status.as_str().to_owned(),
                format!("the job was {}", job.status),
            ),
        };
        // A failure that is the input's fault (an image that is none, a refused prompt) is
        // the request's, as OpenAI answers it; any other is the server's.
        let input_fault = code.starts_with("input_") || code == "content_policy_violation";
        let status = if input_fault {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        let problem = Problem::new(status, code.clone(), format!("job {}: {message}", job.id));
        return Err(if code.starts_with("input_") {
            problem.with_field("image")
        } else {
            problem
        });
    }
    let mut data = Vec::new();
    for job in jobs {
        for output in &job.outputs {
            let image = match format {
                Format::Url => ImageData {
                    url: Some(
                        state
                            .downloads
                            .url(&output.object_key, output.expires_at)?
                            .to_string(),
                    ),
                    b64_json: None,
                },
                Format::Base64 => ImageData {
                    url: None,
                    b64_json: Some(inline(state, output).await?),
                },
            };
            data.push(image);
        }
    }
    Ok(Json(ImagesResponse {
        created: chrono::Utc::now().timestamp(),
        data,
        kiln_jobs: jobs.iter().map(|j| j.id.to_string()).collect(),
    })
    .into_response())
}

/// An output as base64, read from the store; its recorded size is checked before a byte is read.
async fn inline(state: &ApiState, output: &kiln_core::Output) -> Result<String, Problem> {
    if output.bytes > MAX_INLINE_BYTES {
        return Err(Problem::unprocessable(
            "image_too_large_to_inline",
            "response_format",
            format!("the image has {} bytes, more than b64_json carries ({MAX_INLINE_BYTES}); ask for url", output.bytes),
        ));
    }
    let mut bytes = Vec::with_capacity(output.bytes as usize);
    let mut stream = state.store.get(&output.object_key).await?;
    while let Some(chunk) = stream.try_next().await.map_err(|e| Problem::internal(&e))? {
        if (bytes.len() + chunk.len()) as u64 > MAX_INLINE_BYTES {
            return Err(Problem::internal(
                &"the stored image is larger than its record says",
            ));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// Rewrites a problem-details answer into OpenAI's error shape, for the routes of this API:
/// `{"error": {message, type, param, code}}`, 400 for Kiln's 422, and `x-should-retry: false`
/// on refusals a retry cannot fix (and on a failed job: running it again costs again).
pub async fn openai_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if !is_problem {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 64 * 1024).await else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "unreadable error").into_response();
    };
    let problem: Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let status = match parts.status {
        StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
        other => other,
    };
    let kind = match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        500..=599 => "server_error",
        _ => "invalid_request_error",
    };
    let error = serde_json::json!({"error": {
        "message": problem["detail"],
        "type": kind,
        "param": problem["field"],
        "code": problem["code"],
    }});
    // A job that failed ran and cost; a timeout's jobs go on. Neither is retried by the SDK.
    let retry_fixes_it = matches!(status.as_u16(), 408 | 409 | 429)
        || (status.is_server_error() && problem["code"] == "internal_error");
    parts.status = status;
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if !retry_fixes_it {
        parts
            .headers
            .insert("x-should-retry", HeaderValue::from_static("false"));
    }
    let body = serde_json::to_vec(&error).expect("JSON values serialize");
    Response::from_parts(parts, Body::from(body))
}
