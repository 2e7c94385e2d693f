//! Waiting without poll loops. `Prefer: wait=N` (RFC 7240, N ≤ 60) on job create and `GET`
//! holds the answer until the job is terminal or N seconds have passed, then answers with the
//! job as it is, saying `Preference-Applied`. `GET /v1/jobs/{id}/events` streams the job as
//! server-sent events, one `job` event per change, and ends after the terminal one.
//!
//! Both watch the ledger, the only place that knows a job's state whichever process changed
//! it: a read every 100 ms at first, easing to one a second, so a short job answers quickly and a
//! long wait costs little.

use crate::auth::Tenant;
use crate::jobs::view_job;
use crate::problem::Problem;
use crate::ApiState;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use kiln_core::{Job, JobId, TenantId};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The longest `Prefer: wait` honoured.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// `Prefer: wait=N` (among other preferences), capped at `MAX_WAIT`; `None` when absent or
/// malformed (a preference a server cannot apply is ignored, per RFC 7240).
pub fn requested_wait(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .filter_map(|p| p.trim().strip_prefix("wait="))
        .filter_map(|n| n.trim().parse::<u64>().ok())
        .map(|n| Duration::from_secs(n).min(MAX_WAIT))
        .next()
}

/// Backoff between ledger reads while watching a job.
fn next_pause(pause: Duration) -> Duration {
    (pause.mul_f64(1.5)).min(Duration::from_secs(1))
}

/// The job once it is terminal, or as it is when `wait` runs out.
pub async fn until_terminal(
    state: &ApiState,
    tenant: &TenantId,
    mut job: Job,
    wait: Duration,
) -> Result<Job, Problem> {
    let deadline = Instant::now() + wait;
    let mut pause = Duration::from_millis(100);
    while !job.status.is_terminal() && Instant::now() < deadline {
        tokio::time::sleep(pause.min(deadline - Instant::now())).await;
        pause = next_pause(pause);
        match state.ledger.get_job(tenant, job.id).await? {
            Some(fresh) => job = fresh,
            None => break,
        }
    }
    Ok(job)
}

/// `GET /v1/jobs/{id}/events`: the job now, then again at each change of status, attempts or
/// outputs, ending after it is terminal.
pub async fn job_events(
    State(state): State<Arc<ApiState>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Problem> {
    let not_found = || Problem::not_found("job_not_found", "there is no job with this id");
    let id: JobId = id.parse().map_err(|_| not_found())?;
    let first = state
        .ledger
        .get_job(&tenant, id)
        .await?
        .ok_or_else(not_found)?;
    let stream = async_stream(state, tenant, first);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// What a watcher compares to decide that the job changed.
fn fingerprint(job: &Job) -> (kiln_core::Status, usize, usize) {
    (job.status, job.attempts.len(), job.outputs.len())
}

fn async_stream(
    state: Arc<ApiState>,
    tenant: TenantId,
    first: Job,
) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(
        (Some(first), None, Duration::from_millis(100), false),
        move |(next, last, pause, done)| {
            let (state, tenant) = (state.clone(), tenant.clone());
            async move {
                if done {
                    return None;
                }
                let mut job = next;
                let mut pause = pause;
                // Wait for a change.
                loop {
                    if let Some(j) = &job {
                        if Some(fingerprint(j)) != last {
                            break;
                        }
                    }
                    tokio::time::sleep(pause).await;
                    pause = next_pause(pause);
                    let id = job.as_ref().map(|j| j.id)?;
                    job = Some(state.ledger.get_job(&tenant, id).await.ok().flatten()?);
                }
                let job = job.expect("a changed job is present");
                let body = view_job(state.store.as_ref(), &job)
                    .await
                    .unwrap_or_else(|_| serde_json::json!({"id": job.id, "status": job.status}));
                let event = Event::default()
                    .event("job")
                    .id(format!("{}-{}", job.status, job.attempts.len()))
                    .json_data(&body)
                    .unwrap_or_else(|_| Event::default().event("job"));
                let terminal = job.status.is_terminal();
                let print = Some(fingerprint(&job));
                Some((
                    Ok(event),
                    (Some(job), print, Duration::from_millis(100), terminal),
                ))
            }
        },
    )
}
