//! The job routes. Submit validates everything before writing anything, so bad input changes
//! nothing; it commits the job, then rings the doorbell (a failed ring is logged and left to the
//! reconciler: the ledger already holds the job). Reads are scoped by tenant: another tenant's job
//! is a 404, exactly like a job that does not exist. A finished job's answer to `GET` is kept for
//! a second (`FinishedJobs`): read again, it costs neither a ledger read nor a rendering. Its
//! answer as a Replicate prediction is kept the same way (`Answer::Prediction`).

use crate::auth::{Caller, Tenant};
use crate::fresh::FreshCache;
use crate::lists::{list_body, page, parse_filter, probe};
use crate::problem::Problem;
use crate::wire::{JobSubmission, JobView};
use crate::ApiState;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;
use chrono::Utc;
use kiln_core::events::EventType;
use kiln_core::ledger::{CancelOutcome, NewJob};
use kiln_core::TenantId;
use kiln_core::{Job, JobId, Status};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn job_not_found() -> Problem {
    <Job as crate::wait::Watched>::not_found()
}

/// Job ids are opaque to clients: a malformed one is simply a job that does not exist.
fn parse_id(raw: &str) -> Result<JobId, Problem> {
    raw.parse().map_err(|_| job_not_found())
}

/// One job as clients see it, with its place in the queue while it waits.
pub(crate) async fn render(state: &ApiState, job: &Job) -> Result<JobView, Problem> {
    let mut view = JobView::of(state.store.as_ref(), job).await?;
    if job.status == Status::Queued {
        view.queue_position = state.ledger.queue_position(job.id).await?;
    }
    Ok(view)
}

#[utoipa::path(
    post,
    path = "/v1/jobs",
    operation_id = "submitJob",
    tag = "jobs",
    request_body = JobSubmission,
    params(
        crate::responses::WaitPreference,
        crate::responses::IdempotencyKey,
        ("Cancel-After" = Option<String>, Header, description = "Like `cancel_after` (a whole number of seconds, minutes or hours, 1 s to 24 h); the sooner of the two holds"),
    ),
    responses(
        crate::responses::Created<JobView>,
        crate::responses::CreateRefusals,
        (status = 422, description = "Invalid input (the field at fault is named), or an Idempotency-Key reused with another body", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn submit(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    idempotency: Option<axum::Extension<kiln_core::ledger::IdempotencyRef>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let request = crate::create::json_object(body, SUBMISSION_FIELDS, "a job submission")?;
    let submission = parse_submit(&request, &headers, &caller)?;
    let surface = kiln_core::Surface::Kiln;
    let job = create(
        &state,
        caller,
        idempotency.map(|e| e.0),
        submission,
        surface,
    )
    .await?;
    let tenant = job.tenant.clone();
    crate::wait::created(&state, &tenant, job, &headers).await
}

/// Creates the job a submission asks for, whichever surface it came through (`/v1/jobs`, a
/// Replicate-style prediction): the checks every job passes (its webhook target, its input,
/// the key's spend), the ledger's insert, and the doorbell's ring. Nothing is written until
/// every check has passed.
pub(crate) async fn create(
    state: &ApiState,
    caller: Caller,
    idempotency: Option<kiln_core::ledger::IdempotencyRef>,
    submission: JobSubmission,
    surface: kiln_core::Surface,
) -> Result<Job, Problem> {
    let JobSubmission {
        model,
        input,
        cancel_after,
        max_queue_wait,
        webhook,
        webhook_events,
        priority,
    } = submission;
    // A job that names no webhook uses its key's default, if the key has one.
    let webhook = match (webhook, &caller.default_webhook) {
        (None, Some(default)) => url::Url::parse(default).ok(),
        (given, _) => given,
    };
    if let Some(url) = &webhook {
        crate::create::check_webhook_target(state, url).await?;
    }
    check_input(state, &caller.tenant, &model, &input, "", false).await?;
    crate::limits::check_spend(state, &caller, &[model.as_str()]).await?;
    let spend = crate::limits::spend_check(state, &caller, &model);
    let job = state
        .ledger
        .insert_job(NewJob {
            idempotency,
            priority,
            surface,
            max_active: caller.limits.max_active_jobs,
            spend,
            id: JobId::new(),
            tenant: caller.tenant,
            model,
            input,
            deadline_at: cancel_after.map(after),
            start_by: max_queue_wait.map(after),
            key_id: Some(caller.key_id),
            webhook_url: webhook.map(|u| u.to_string()),
            webhook_events: crate::create::event_names(webhook_events),
        })
        .await
        .map_err(crate::limits::active_job_limit)?;
    // A job its tenant's dispatch window holds back is rung when a place frees.
    if !job.held {
        kiln_core::dispatch::ring_or_mark_unrung(
            state.doorbell.as_ref(),
            state.ledger.as_ref(),
            job.id,
            job.priority,
        )
        .await;
    }
    Ok(job)
}

/// The fields of a job submission.
const SUBMISSION_FIELDS: &[&str] = &[
    "model",
    "input",
    "cancel_after",
    "max_queue_wait",
    "webhook",
    "webhook_events",
    "priority",
];

fn after(d: std::time::Duration) -> kiln_core::time::Timestamp {
    kiln_core::time::now() + chrono::Duration::from_std(d).unwrap_or_default()
}

fn parse_submit(
    request: &Map<String, Value>,
    headers: &HeaderMap,
    caller: &Caller,
) -> Result<JobSubmission, Problem> {
    let model = match request.get("model") {
        Some(Value::String(m)) => m.clone(),
        Some(_) => {
            return Err(Problem::unprocessable(
                "invalid_type",
                "model",
                "model must be a string",
            ))
        }
        None => {
            return Err(Problem::unprocessable(
                "missing_field",
                "model",
                "model is required",
            ))
        }
    };
    let input = match request.get("input") {
        Some(v) => v.clone(),
        None => {
            return Err(Problem::unprocessable(
                "missing_field",
                "input",
                "input is required",
            ))
        }
    };
    // `Cancel-After` is Replicate's header for the same limit; where both are given, the
    // sooner one holds.
    let header = match headers.get("cancel-after") {
        Some(v) => {
            let text = v.to_str().unwrap_or_default();
            Some(crate::duration::parse(
                "Cancel-After",
                &Value::String(text.to_owned()),
            )?)
        }
        None => None,
    };
    let body = request
        .get("cancel_after")
        .map(|v| crate::duration::parse("cancel_after", v))
        .transpose()?;
    let cancel_after = match (header, body) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let max_queue_wait = request
        .get("max_queue_wait")
        .map(|v| crate::duration::parse("max_queue_wait", v))
        .transpose()?;
    Ok(JobSubmission {
        model,
        input,
        cancel_after,
        max_queue_wait,
        webhook: crate::create::webhook(request)?,
        webhook_events: crate::create::webhook_events(request, &EventType::JOB)?,
        priority: crate::create::priority(request, caller)?,
    })
}

/// The one submit-time check of a model's input, for a job and for each step of a pipeline
/// alike: the model's schema, every URL the worker will fetch (the SSRF policy, or Kiln's own
/// signed URLs), and every `kiln://` reference (the caller's own, still-kept outputs). `field`s
/// at fault are named under `prefix` (`steps[2].` for a pipeline's third step). A pipeline's
/// references to its own steps are checked as stand-ins that point at the nil job
/// (`stand_ins`), since those outputs do not exist yet.
pub(crate) async fn check_input(
    state: &ApiState,
    tenant: &kiln_core::TenantId,
    model: &str,
    input: &Value,
    prefix: &str,
    stand_ins: bool,
) -> Result<kiln_core::catalog::ModelInput, Problem> {
    let parsed = state
        .catalog
        .validate(model, input)
        .map_err(|e| Problem::unprocessable(e.code, format!("{prefix}{}", e.field), e.message))?;
    for (field, url) in parsed.fetched_urls() {
        check_input_url(state, &format!("{prefix}{field}"), url).await?;
    }
    for (field, job, index) in parsed.output_references() {
        if stand_ins && job.0.is_nil() {
            continue;
        }
        check_output_reference(state, tenant, &format!("{prefix}{field}"), job, index).await?;
    }
    Ok(parsed)
}

/// A `kiln://` reference must name an output of the caller's own that is still kept; another
/// tenant's job is "no such output", exactly like a job that does not exist.
async fn check_output_reference(
    state: &ApiState,
    tenant: &kiln_core::TenantId,
    field: &str,
    job: JobId,
    index: u32,
) -> Result<(), Problem> {
    let invalid = |detail: String| Problem::unprocessable("input_reference_invalid", field, detail);
    let source = state.ledger.get_job(tenant, job).await?;
    let output = source
        .as_ref()
        .and_then(|j| j.outputs.iter().find(|o| o.index == index))
        .ok_or_else(|| invalid(format!("{field}: there is no output {index} of job {job}")))?;
    if output.is_expired(Utc::now()) {
        return Err(invalid(format!(
            "{field}: output {index} of job {job} has expired"
        )));
    }
    Ok(())
}

/// Kiln's own signed URLs are allowed (chaining an earlier output); any other URL must pass the
/// SSRF policy now, and passes it again when the worker connects.
async fn check_input_url(state: &ApiState, field: &str, url: &url::Url) -> Result<(), Problem> {
    if let Some(own) = state.store.resolve_own_url(url).await {
        return own.map(|_| ()).map_err(|e| {
            Problem::unprocessable("input_url_invalid", field, format!("{field}: {e}"))
        });
    }
    state
        .ssrf
        .check_url(url)
        .map_err(|e| Problem::unprocessable("url_forbidden", field, format!("{field}: {e}")))
}

#[utoipa::path(
    get,
    path = "/v1/jobs/{id}",
    operation_id = "getJob",
    tag = "jobs",
    params(("id" = String, Path), crate::responses::WaitPreference),
    responses(
        crate::responses::Polled<JobView>,
        crate::responses::KeyRefusals,
        crate::responses::NoSuchJob,
    ),
)]
pub async fn get(
    State(state): State<Arc<ApiState>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let id = parse_id(&id)?;
    let polled = state
        .finished_jobs
        .kept_or_read(&state, &tenant, id, Answer::Job, &headers, job_not_found)
        .await?;
    let (job, read_at) = match polled {
        Polled::Kept(answer) => return Ok(answer),
        Polled::Read(job, read_at) => (*job, read_at),
    };
    if !job.status.is_terminal() {
        return crate::wait::respond(&state, &tenant, job, &headers, StatusCode::OK).await;
    }
    let view = render(&state, &job).await?;
    state
        .finished_jobs
        .keep_answer(Answer::Job, &job, &view, read_at, &headers)
}

/// How long a finished job's answer is kept in the process that rendered it.
pub const FINISHED_JOB_TTL: Duration = Duration::from_secs(1);

/// The bytes all kept answers may take together, and the most one may take.
const FINISHED_JOBS_BUDGET: usize = 16 << 20;
const FINISHED_JOB_MAX: usize = 256 << 10;

/// Finished jobs' answers to `GET /v1/jobs/{id}` (and to `GET /v1/predictions/{id}`, which a
/// Replicate client polls) as this process last rendered them, so a job
/// read again and again after it ended (by several pollers, a dashboard, a workflow tool's
/// retries) is answered without a ledger read or a rendering. Only finished jobs are kept: a
/// job in flight changes under its pollers, and an answer kept from before a webhook said it
/// ended would contradict the webhook. A finished job's status, error, outputs and timings never
/// change again. What can is a late note on its last attempt (its cost, upstream id, route or
/// failure class) from a worker that lost the job while still running it, to a cancel or a
/// rescue; an answer kept for at most a second after its read (`FINISHED_JOB_TTL`) shows such
/// a note that much later. An answer is also never kept past the moment one of its outputs
/// expires, since from then on it shows that output expired. Each answer is kept with its
/// tenant and given only to that tenant's keys. Both shapes of answer share one budget.
pub struct FinishedJobs(FreshCache<(JobId, Answer), (TenantId, Bytes)>);

/// What a poll of a job found: the answer kept for it, or the job as the ledger has it and when
/// it was read.
pub(crate) enum Polled {
    Kept(Response),
    Read(Box<kiln_core::Job>, ReadAt),
}

/// Which route's answer a kept body is: a job's two routes render it differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Answer {
    /// `GET /v1/jobs/{id}`.
    Job,
    /// `GET /v1/predictions/{id}`.
    Prediction,
}

/// When a job was read from the ledger, on both clocks: the monotonic one counts the second its
/// answer is kept; the wall clock is what its outputs' expiry is judged against. Taken before
/// the read, so an answer is judged older than it is, never younger.
#[derive(Clone, Copy)]
pub(crate) struct ReadAt {
    instant: Instant,
    wall: chrono::DateTime<Utc>,
}

impl ReadAt {
    fn now() -> Self {
        ReadAt {
            instant: Instant::now(),
            wall: Utc::now(),
        }
    }
}

impl FinishedJobs {
    pub fn new(ttl: Duration) -> Self {
        FinishedJobs(FreshCache::new(ttl, FINISHED_JOBS_BUDGET))
    }

    pub(crate) fn answer(&self, tenant: &TenantId, id: JobId, shape: Answer) -> Option<Bytes> {
        self.0
            .get(&(id, shape))
            .filter(|(owner, _)| owner == tenant)
            .map(|(_, body)| body)
    }

    /// The answer of shape `shape` kept for the job `id` of `tenant`, if there is one; else the
    /// job read from the ledger (`not_found` if the tenant has none), with the moment before the
    /// read, which its answer's keeping is judged from (`keep_answer`).
    pub(crate) async fn kept_or_read(
        &self,
        state: &ApiState,
        tenant: &TenantId,
        id: JobId,
        shape: Answer,
        headers: &HeaderMap,
        not_found: fn() -> Problem,
    ) -> Result<Polled, Problem> {
        if let Some(body) = self.answer(tenant, id, shape) {
            return Ok(Polled::Kept(crate::wait::finished(body, headers)));
        }
        let read_at = ReadAt::now();
        let job = state
            .ledger
            .get_job(tenant, id)
            .await?
            .ok_or_else(not_found)?;
        Ok(Polled::Read(Box::new(job), read_at))
    }

    /// Answers with `view`, the finished `job` (read from the ledger at `read_at`) as the route
    /// of `shape` shows it, and keeps that answer.
    pub(crate) fn keep_answer(
        &self,
        shape: Answer,
        job: &kiln_core::Job,
        view: &impl serde::Serialize,
        read_at: ReadAt,
        headers: &HeaderMap,
    ) -> Result<Response, Problem> {
        let mut body = serde_json::to_vec(view).map_err(|e| Problem::internal(&e))?;
        // The kept answer weighs what it holds: no spare capacity behind it.
        body.shrink_to_fit();
        let body = Bytes::from(body);
        self.keep(
            (job.id, shape),
            &job.tenant,
            &job.outputs,
            body.clone(),
            read_at,
        );
        Ok(crate::wait::finished(body, headers))
    }

    /// Keeps `body`, the answer of shape `id.1` rendered from the job `id.0` of `tenant` with
    /// these `outputs`, as read from the ledger at `read_at`.
    fn keep(
        &self,
        id: (JobId, Answer),
        tenant: &TenantId,
        outputs: &[kiln_core::Output],
        body: Bytes,
        read_at: ReadAt,
    ) {
        if body.len() > FINISHED_JOB_MAX {
            return;
        }
        // The map's own share of an entry, beside the answer and the tenant's name.
        const ENTRY_OVERHEAD: usize = 128;
        let weight = body.len() + tenant.0.len() + ENTRY_OVERHEAD;
        // The monotonic clock read first, so the moment worked out below is, if anything, early.
        let now = Instant::now();
        let true_until = now.checked_add(unchanged_for(outputs, read_at.wall, Utc::now()));
        self.0.put(
            id,
            (tenant.clone(), body),
            weight,
            read_at.instant,
            true_until,
        );
    }
}

/// How long from `now` a finished job's answer (with these outputs), rendered from a read at
/// `read_at` or later, stays as it is: until the first output it may show unexpired expires
/// (from then on the answer shows it expired, without its URL), for ever once none is left;
/// nothing if one expired meanwhile.
fn unchanged_for(
    outputs: &[kiln_core::Output],
    read_at: chrono::DateTime<Utc>,
    now: chrono::DateTime<Utc>,
) -> Duration {
    outputs
        .iter()
        .filter(|output| !output.is_expired(read_at))
        .map(|output| (output.expires_at - now).to_std().unwrap_or_default())
        .min()
        .unwrap_or(Duration::MAX)
}

#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/transitions",
    operation_id = "listJobTransitions",
    tag = "jobs",
    params(("id" = String, Path)),
    responses(
        (status = 200, description = "Every change of the job's status, oldest first", body = crate::wire::List<crate::wire::TransitionView>),
        crate::responses::KeyRefusals,
        crate::responses::NoSuchJob,
    ),
)]
pub async fn transitions(
    State(state): State<Arc<ApiState>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Json<crate::wire::List<crate::wire::TransitionView>>, Problem> {
    let id = parse_id(&id)?;
    // The ledger's history read is not scoped: the tenant's own read of the job is the check.
    if state.ledger.get_job(&tenant, id).await?.is_none() {
        return Err(job_not_found());
    }
    let history = state.ledger.transitions(id).await?;
    Ok(Json(crate::wire::List::of(
        history
            .into_iter()
            .map(|t| crate::wire::TransitionView {
                from: t.from,
                to: t.to,
                reason: t.reason,
                at: t.at,
            })
            .collect(),
    )))
}

#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/cancel",
    operation_id = "cancelJob",
    tag = "jobs",
    params(("id" = String, Path)),
    responses(
        (status = 200, description = "Canceled (a running generator is stopped)", body = JobView),
        crate::responses::KeyRefusals,
        crate::responses::NoSuchJob,
        (status = 409, description = "The job already ended", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn cancel(
    State(state): State<Arc<ApiState>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    match state.ledger.cancel_job(&tenant, parse_id(&id)?).await? {
        CancelOutcome::Canceled(job) => {
            crate::wait::respond(&state, &tenant, job, &HeaderMap::new(), StatusCode::OK).await
        }
        CancelOutcome::AlreadyTerminal(job) => Err(Problem::new(
            StatusCode::CONFLICT,
            "job_already_finished",
            format!(
                "the job already ended as {}; it can no longer be canceled",
                job.status
            ),
        )),
        CancelOutcome::NotFound => Err(job_not_found()),
    }
}

/// An output by index, for the owning tenant only: redirects to a fresh download URL.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/outputs/{index}",
    operation_id = "getJobOutput",
    tag = "jobs",
    params(("id" = String, Path), ("index" = String, Path)),
    responses(
        (status = 307, description = "Redirect to a fresh signed download URL", headers(("Location" = String, description = "The signed download URL"))),
        crate::responses::KeyRefusals,
        (status = 404, description = "No such job or output (or another tenant's)", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "The output expired and was deleted", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn output(
    State(state): State<Arc<ApiState>>,
    Tenant(tenant): Tenant,
    Path((id, index)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let job = state
        .ledger
        .get_job(&tenant, parse_id(&id)?)
        .await?
        .ok_or_else(job_not_found)?;
    let output = index
        .parse::<u32>()
        .ok()
        .and_then(|i| job.outputs.iter().find(|o| o.index == i))
        .ok_or_else(|| {
            Problem::not_found("output_not_found", "the job has no output with this index")
        })?;
    if output.is_expired(Utc::now()) {
        return Err(Problem::new(
            StatusCode::GONE,
            "output_expired",
            "the output has expired and was deleted",
        ));
    }
    let url = state
        .store
        .presign_get(&output.object_key, output.expires_at)
        .await?;
    Ok(Redirect::temporary(url.as_str()).into_response())
}

#[utoipa::path(
    get,
    path = "/v1/jobs",
    operation_id = "listJobs",
    tag = "jobs",
    params(
        ("status" = Option<String>, Query, description = "Comma-separated statuses"),
        ("model" = Option<String>, Query),
        ("created_after" = Option<chrono::DateTime<chrono::Utc>>, Query, description = "RFC 3339"),
        ("created_before" = Option<chrono::DateTime<chrono::Utc>>, Query, description = "RFC 3339"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "1 to 100 (default 20)"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "The tenant's jobs, newest first", body = crate::wire::Page<JobView>),
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
    let mut data = Vec::with_capacity(jobs.len());
    for job in &jobs {
        // A list shows what `GET` of each shows, the place of a queued job included (each
        // count stops at 100, so a page costs at most a page of short counts).
        data.push(render(&state, job).await?);
    }
    let last = jobs.last().map(|j| j.id.0);
    Ok(Json(list_body(data, has_more, last, &filter)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

    fn output(index: u32, expires_at: chrono::DateTime<Utc>) -> kiln_core::Output {
        kiln_core::Output {
            index,
            object_key: format!("o/{index}"),
            content_type: "image/png".into(),
            bytes: 1,
            expires_at,
            deleted_at: None,
            media: Default::default(),
        }
    }

    #[test]
    fn a_finished_answer_is_true_until_its_first_kept_output_expires() {
        let now = Utc::now();
        let minute = TimeDelta::minutes(1);
        assert_eq!(unchanged_for(&[], now, now), Duration::MAX, "no outputs");
        let outputs = [output(0, now + minute * 5), output(1, now + minute)];
        assert_eq!(
            unchanged_for(&outputs, now, now),
            Duration::from_secs(60),
            "the earlier expiry bounds it"
        );
        let one_gone = [output(0, now - minute), output(1, now + minute * 2)];
        assert_eq!(
            unchanged_for(&one_gone, now, now),
            Duration::from_secs(120),
            "an output already shown expired changes nothing more"
        );
        let all_gone = [output(0, now - minute)];
        assert_eq!(unchanged_for(&all_gone, now, now), Duration::MAX);
        // Shown unexpired by a rendering that began before it expired, and expired since.
        let meanwhile = [output(0, now + TimeDelta::milliseconds(1))];
        assert_eq!(
            unchanged_for(&meanwhile, now, now + TimeDelta::milliseconds(2)),
            Duration::ZERO
        );
    }

    #[test]
    fn a_kept_answer_is_given_only_to_its_tenant() {
        let kept = FinishedJobs::new(FINISHED_JOB_TTL);
        let id = JobId::new();
        let acme = TenantId("acme".into());
        let body = Bytes::from_static(b"{}");
        kept.keep((id, Answer::Job), &acme, &[], body.clone(), ReadAt::now());
        assert_eq!(kept.answer(&acme, id, Answer::Job), Some(body));
        assert_eq!(
            kept.answer(&TenantId("umbrella".into()), id, Answer::Job),
            None
        );
        assert_eq!(
            kept.answer(&acme, id, Answer::Prediction),
            None,
            "a job's answer is not its prediction's"
        );
    }

    #[test]
    fn an_answer_that_cannot_hold_is_not_kept() {
        let kept = FinishedJobs::new(FINISHED_JOB_TTL);
        let acme = TenantId("acme".into());
        let too_large = Bytes::from(vec![b' '; FINISHED_JOB_MAX + 1]);
        let id = JobId::new();
        kept.keep((id, Answer::Job), &acme, &[], too_large, ReadAt::now());
        assert_eq!(
            kept.answer(&acme, id, Answer::Job),
            None,
            "larger than one answer may be"
        );

        // Read while its output was kept, and the output expired before the answer was kept.
        let read_at = ReadAt::now();
        let expired = [output(0, read_at.wall + TimeDelta::milliseconds(1))];
        std::thread::sleep(Duration::from_millis(2));
        let id = JobId::new();
        kept.keep(
            (id, Answer::Job),
            &acme,
            &expired,
            Bytes::from_static(b"{}"),
            read_at,
        );
        assert_eq!(
            kept.answer(&acme, id, Answer::Job),
            None,
            "its output expired meanwhile"
        );

        // An output marked deleted is expired: nothing in the answer waits on it.
        let mut deleted = output(0, read_at.wall + TimeDelta::minutes(1));
        deleted.deleted_at = Some(read_at.wall);
        assert_eq!(
            unchanged_for(&[deleted], read_at.wall, read_at.wall),
            Duration::MAX
        );
    }
}
