//! Waiting without poll loops, for jobs and pipelines alike. `Prefer: wait=N` (RFC 7240,
//! N ≤ 60) on create and `GET` holds the answer until the resource is terminal or N seconds
//! have passed, then answers with it as it is, saying `Preference-Applied`. `GET …/events`
//! streams the resource as server-sent events, one event per change (`job` or `pipeline`),
//! and ends after the terminal one.
//!
//! Each event's id names the state it carries (a digest of what a watcher compares), so a client
//! that reconnects with `Last-Event-ID` (as `EventSource` does by itself) resumes: it is sent the
//! resource only once it differs from the state it last saw, and a stream whose last event was
//! the terminal one ends at once. Every event carries the whole resource, so the states skipped
//! while it was away are summed up by the one it gets.
//!
//! Both watch the ledger, the only place that knows a resource's state whichever process
//! changed it: a read every 100 ms at first, easing to one a second, so a short job answers
//! quickly and a long wait costs little. What a watcher needs of a resource is the `Watched`
//! trait, so jobs and pipelines share one waiting loop, one event stream and one way of
//! answering a read or a create (`respond`, `created`: the wait, 201 for a create that ended
//! within it, the poll hint, the `Location`). A pipeline's read goes through `get`. A job's read
//! (`jobs::get`) first looks for the answer kept in the api for a finished job
//! (`jobs::FinishedJobs`); otherwise a job in flight is answered through `respond`, and a
//! finished one is rendered, kept and sent, like a kept answer, through `finished`.

use crate::auth::Tenant;
use crate::problem::Problem;
use crate::ApiState;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::Stream;
use kiln_core::ledger::Pipeline;
use kiln_core::{Job, JobId, PipelineId, Status, TenantId};
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The longest `Prefer: wait` honoured.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// The wait a bare `Prefer: wait` asks for: the longest there is, less a margin, because the
/// client that sends it (Replicate's `run`) reads with a 60.5 s timeout and an answer held for
/// the whole 60 s would reach it too late.
pub const BARE_WAIT: Duration = Duration::from_secs(55);

/// `Prefer: wait=N` (among other preferences), capped at `MAX_WAIT`, or a bare `Prefer: wait`
/// (`BARE_WAIT`); `None` when absent or malformed (a preference a server cannot apply is
/// ignored, per RFC 7240).
pub fn requested_wait(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .filter_map(|p| {
            let p = p.trim();
            if p.eq_ignore_ascii_case("wait") {
                return Some(BARE_WAIT);
            }
            let n = p.strip_prefix("wait=")?.trim().parse::<u64>().ok()?;
            Some(Duration::from_secs(n).min(MAX_WAIT))
        })
        .next()
}

/// Says which wait was applied, as RFC 7240 asks.
pub fn mark_applied(response: &mut Response, wait: Duration) {
    let applied = format!("wait={}", wait.as_secs());
    response.headers_mut().insert(
        "preference-applied",
        HeaderValue::from_str(&applied).expect("digits are a valid header"),
    );
}

/// What a watcher needs of a resource: how to read it again, when it has changed, whether it
/// has ended, and how clients see it.
pub trait Watched: Sized + Send + Sync + 'static {
    /// The server-sent event's name.
    const EVENT: &'static str;
    /// Where resources of this kind live (`/v1/jobs`).
    const PATH: &'static str;
    /// The answer for an id that is not one of the caller's (or not an id at all).
    fn not_found() -> Problem;
    /// What a watcher compares to decide that the resource changed.
    type Print: PartialEq + std::fmt::Debug + Send + Sync + 'static;

    /// The resource's id type (a job's or a pipeline's).
    type Id: Copy + Send + Sync + std::fmt::Display + std::str::FromStr + 'static;

    fn id(&self) -> Self::Id;
    fn print(&self) -> Self::Print;
    fn is_terminal(&self) -> bool;
    fn fetch(
        state: &ApiState,
        tenant: &TenantId,
        id: Self::Id,
    ) -> impl Future<Output = Result<Option<Self>, Problem>> + Send;
    /// How a client sees it (`crate::wire`).
    type View: serde::Serialize + Send;
    /// The view; `place`: whether a queued job's place in the queue is counted (a read of up
    /// to 100 index entries). A create's answer does not count it: the job has just joined the
    /// end of the queue, and counting on every submit was the costliest statement of a burst.
    fn render(
        &self,
        state: &ApiState,
        place: bool,
    ) -> impl Future<Output = Result<Self::View, Problem>> + Send;
}

impl Watched for Job {
    const EVENT: &'static str = "job";
    const PATH: &'static str = "/v1/jobs";

    fn not_found() -> Problem {
        Problem::not_found("job_not_found", "there is no job with this id")
    }

    type Print = (Status, usize, usize, Option<u8>);
    type Id = JobId;

    fn id(&self) -> JobId {
        self.id
    }

    fn print(&self) -> Self::Print {
        let progress = self.attempts.last().and_then(|a| a.progress_percent);
        (
            self.status,
            self.attempts.len(),
            self.outputs.len(),
            progress,
        )
    }

    fn is_terminal(&self) -> bool {
        self.status.is_terminal()
    }

    async fn fetch(
        state: &ApiState,
        tenant: &TenantId,
        id: JobId,
    ) -> Result<Option<Self>, Problem> {
        Ok(state.ledger.get_job(tenant, id).await?)
    }

    type View = crate::wire::JobView;
    async fn render(&self, state: &ApiState, place: bool) -> Result<Self::View, Problem> {
        if place {
            crate::jobs::render(state, self).await
        } else {
            crate::wire::JobView::of(state.store.as_ref(), self).await
        }
    }
}

impl Watched for Pipeline {
    const EVENT: &'static str = "pipeline";
    const PATH: &'static str = "/v1/pipelines";

    fn not_found() -> Problem {
        Problem::not_found("pipeline_not_found", "there is no pipeline with this id")
    }

    type Print = (Status, Vec<Option<Status>>);
    type Id = PipelineId;

    fn id(&self) -> PipelineId {
        self.id
    }

    fn print(&self) -> Self::Print {
        let steps = self.steps.iter().map(|s| s.job_status).collect();
        (self.status, steps)
    }

    fn is_terminal(&self) -> bool {
        self.status.is_terminal()
    }

    async fn fetch(
        state: &ApiState,
        tenant: &TenantId,
        id: PipelineId,
    ) -> Result<Option<Self>, Problem> {
        Ok(state.ledger.get_pipeline(tenant, id).await?)
    }

    type View = crate::wire::PipelineView;
    async fn render(&self, state: &ApiState, _place: bool) -> Result<Self::View, Problem> {
        crate::pipelines::render(state, self).await
    }
}

/// The event id of a state: a short digest of its print, the same in every process.
fn event_id<W: Watched>(resource: &W) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{:?}", resource.print()).as_bytes());
    hex::encode(&digest[..8])
}

/// `GET` of one resource, by the id in the path: one that is malformed or not the caller's is
/// not found; the answer waits if the client asked (`respond`).
pub(crate) async fn get<W: Watched>(
    state: &ApiState,
    tenant: &TenantId,
    id: &str,
    headers: &HeaderMap,
) -> Result<Response, Problem> {
    let id: W::Id = id.parse().map_err(|_| W::not_found())?;
    let resource = W::fetch(state, tenant, id)
        .await?
        .ok_or_else(W::not_found)?;
    respond(state, tenant, resource, headers, StatusCode::OK).await
}

/// The answer for a resource that has ended, from its view as it was serialized: what `respond`
/// answers for it (an ended resource is not waited for and carries no poll hint), without
/// rendering it again.
pub(crate) fn finished(body: axum::body::Bytes, headers: &HeaderMap) -> Response {
    let json = [(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    )];
    let mut response = (json, body).into_response();
    if let Some(wait) = requested_wait(headers) {
        mark_applied(&mut response, wait);
    }
    response
}

/// The answer to a create: `respond` with 202 (201 once it ended within the client's wait), and
/// the created resource's `Location`.
pub(crate) async fn created<W: Watched>(
    state: &ApiState,
    tenant: &TenantId,
    resource: W,
    headers: &HeaderMap,
) -> Result<Response, Problem> {
    let location = format!("{}/{}", W::PATH, resource.id());
    let mut response = respond(state, tenant, resource, headers, StatusCode::ACCEPTED).await?;
    response.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(&location).expect("ids are valid header text"),
    );
    Ok(response)
}

/// Answers with the resource, first waiting for it to end if the client asked (`Prefer:
/// wait=N`, then said in `Preference-Applied`); a create (202) whose resource ended within the
/// wait answers 201. Unfinished, it carries a poll hint (`Retry-After`).
pub(crate) async fn respond<W: Watched>(
    state: &ApiState,
    tenant: &TenantId,
    resource: W,
    headers: &HeaderMap,
    status: StatusCode,
) -> Result<Response, Problem> {
    let wait = requested_wait(headers);
    let resource = match wait {
        Some(wait) => until_terminal(state, tenant, resource, wait).await?,
        None => resource,
    };
    let status = if status == StatusCode::ACCEPTED && wait.is_some() && resource.is_terminal() {
        StatusCode::CREATED
    } else {
        status
    };
    // A create's answer (202, or 201 after a wait) does not count a queued job's place.
    let place = status == StatusCode::OK;
    let mut response = (status, Json(resource.render(state, place).await?)).into_response();
    if !resource.is_terminal() {
        let secs = state.poll_hint.as_secs().max(1).to_string();
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from_str(&secs).expect("digits are a valid header"),
        );
    }
    if let Some(wait) = wait {
        mark_applied(&mut response, wait);
    }
    Ok(response)
}

/// The `Last-Event-ID` a reconnecting client sends.
fn last_event_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// Backoff between ledger reads while watching.
fn next_pause(pause: Duration) -> Duration {
    (pause.mul_f64(1.5)).min(Duration::from_secs(1))
}

/// The resource once it is terminal, or as it is when `wait` runs out.
pub async fn until_terminal<W: Watched>(
    state: &ApiState,
    tenant: &TenantId,
    mut current: W,
    wait: Duration,
) -> Result<W, Problem> {
    let deadline = Instant::now() + wait;
    let mut pause = Duration::from_millis(100);
    while !current.is_terminal() && Instant::now() < deadline {
        tokio::time::sleep(pause.min(deadline - Instant::now())).await;
        pause = next_pause(pause);
        match W::fetch(state, tenant, current.id()).await? {
            Some(fresh) => current = fresh,
            None => break,
        }
    }
    Ok(current)
}

/// `GET /v1/jobs/{id}/events`: the job now, then again at each change of status, attempts,
/// outputs or progress, ending after it is terminal.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/events",
    operation_id = "jobEvents",
    tag = "jobs",
    params(("id" = String, Path), crate::responses::ResumeFrom),
    responses(
        crate::responses::EventStream<crate::wire::JobView>,
        crate::responses::KeyRefusals,
        crate::responses::NoSuchJob,
    ),
)]
pub async fn job_events(
    state: State<Arc<ApiState>>,
    tenant: Tenant,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Problem> {
    events::<Job>(state, tenant, &id, &headers).await
}

/// `GET /v1/pipelines/{id}/events`: the pipeline now, then again whenever it or one of its
/// steps changes status, ending after it is terminal.
#[utoipa::path(
    get,
    path = "/v1/pipelines/{id}/events",
    operation_id = "pipelineEvents",
    tag = "pipelines",
    params(("id" = String, Path), crate::responses::ResumeFrom),
    responses(
        crate::responses::EventStream<crate::wire::PipelineView>,
        crate::responses::KeyRefusals,
        crate::responses::NoSuchPipeline,
    ),
)]
pub async fn pipeline_events(
    state: State<Arc<ApiState>>,
    tenant: Tenant,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Problem> {
    events::<Pipeline>(state, tenant, &id, &headers).await
}

async fn events<W: Watched>(
    State(state): State<Arc<ApiState>>,
    Tenant(tenant): Tenant,
    id: &str,
    headers: &HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Problem> {
    let id: W::Id = id.parse().map_err(|_| W::not_found())?;
    let first = W::fetch(&state, &tenant, id)
        .await?
        .ok_or_else(W::not_found)?;
    let resume_after = last_event_id(headers);
    Ok(Sse::new(changes(state, tenant, first, resume_after)).keep_alive(KeepAlive::default()))
}

/// Where a stream of changes stands between two events.
struct Watch<W: Watched> {
    current: Option<W>,
    /// The id of the state the client last got (from this stream, or `Last-Event-ID`).
    last: Option<String>,
    done: bool,
}

fn changes<W: Watched>(
    state: Arc<ApiState>,
    tenant: TenantId,
    first: W,
    resume_after: Option<String>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let start = Watch {
        current: Some(first),
        last: resume_after,
        done: false,
    };
    futures::stream::unfold(start, move |watch| {
        let (state, tenant) = (state.clone(), tenant.clone());
        async move {
            if watch.done {
                return None;
            }
            let mut current = watch.current?;
            let mut pause = Duration::from_millis(100);
            // Wait for a change; a read that fails or finds nothing ends the stream, and so
            // does a resume whose last event was the terminal state.
            while Some(event_id(&current)) == watch.last {
                if current.is_terminal() {
                    return None;
                }
                tokio::time::sleep(pause).await;
                pause = next_pause(pause);
                current = W::fetch(&state, &tenant, current.id())
                    .await
                    .ok()
                    .flatten()?;
            }
            // A state that cannot be shown (its outputs' URLs cannot be signed just now) ends
            // the stream: the client's reconnect, with its `Last-Event-ID`, resumes it.
            let body = current.render(&state, true).await.ok()?;
            let id = event_id(&current);
            let event = Event::default()
                .event(W::EVENT)
                .id(id.clone())
                .json_data(&body)
                .unwrap_or_else(|_| Event::default().event(W::EVENT));
            let next = Watch {
                last: Some(id),
                done: current.is_terminal(),
                current: Some(current),
            };
            Some((Ok(event), next))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefer(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("prefer", HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn a_bare_wait_leaves_the_clients_read_timeout_a_margin() {
        assert_eq!(requested_wait(&prefer("wait")), Some(BARE_WAIT));
        assert_eq!(
            requested_wait(&prefer("respond-async, Wait")),
            Some(BARE_WAIT)
        );
        assert!(BARE_WAIT < MAX_WAIT);
    }

    #[test]
    fn a_counted_wait_is_capped_and_a_malformed_one_ignored() {
        assert_eq!(
            requested_wait(&prefer("wait=5")),
            Some(Duration::from_secs(5))
        );
        assert_eq!(requested_wait(&prefer("wait=600")), Some(MAX_WAIT));
        assert_eq!(requested_wait(&prefer("wait=soon")), None);
        assert_eq!(requested_wait(&prefer("waiting")), None);
        assert_eq!(requested_wait(&HeaderMap::new()), None);
    }
}
