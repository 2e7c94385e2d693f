//! A job on the wire: what `POST /v1/jobs` takes (`JobSubmission`, filled by the handler's
//! parser so each refusal can name its field) and what every job answer, event and webhook
//! payload shows (`JobView`, with its outputs' signed URLs and its attempts).

use super::{cost_in_units, Links};
use crate::problem::Problem;
use chrono::{DateTime, Utc};
use kiln_core::dispatch::Lane;
use kiln_core::events::EventType;
use kiln_core::job::FailureClass;
use kiln_core::{AttemptOutcome, ErrorInfo, Job, JobId, Status};
use serde::Serialize;
use serde_json::Value;
use std::time::Duration;
use utoipa::ToSchema;

/// `POST /v1/jobs`. Parsed field by field (`crate::jobs`), so a refusal names the field at
/// fault; the time limits' grammar and each model's input are completed in the document from
/// their parsers (`crate::openapi::document`).
#[derive(Debug, ToSchema)]
#[schema(example = json!({"model": "demo/image", "input": {"prompt": "a kiln at dusk", "width": 64, "height": 64, "seed": 7}}))]
pub struct JobSubmission {
    /// A model from `GET /v1/models`.
    pub model: String,
    /// The model's input, as its `input_schema` describes. Image inputs may be http(s) URLs,
    /// `data:` URIs, or `kiln://jobs/{id}/outputs/{n}` references to the caller's outputs.
    #[schema(value_type = Object)]
    pub input: Value,
    /// The dispatch lane; `normal` when absent.
    #[schema(value_type = Option<Lane>)]
    pub priority: Lane,
    /// Fail the job as `deadline_exceeded` if it has not finished by then.
    #[schema(value_type = Option<String>)]
    pub cancel_after: Option<Duration>,
    /// Fail the job as `queue_timeout` if no attempt started by then.
    #[schema(value_type = Option<String>)]
    pub max_queue_wait: Option<Duration>,
    /// Where job events are posted (Standard Webhooks).
    #[schema(value_type = Option<String>)]
    pub webhook: Option<url::Url>,
    /// `job.started`, `job.succeeded`, `job.failed`, `job.canceled`; all when absent.
    pub webhook_events: Option<Vec<EventType>>,
}

/// An output of a job.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = Output)]
pub struct OutputView {
    pub index: u32,
    /// A signed download URL, until the output expires (then null).
    pub url: Option<String>,
    pub content_type: String,
    pub bytes: u64,
    pub expires_at: DateTime<Utc>,
    pub expired: bool,
    /// Pixels across, for an image or video (read from the file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// A video's length in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
    /// A video's frames per second (its average, for a GIF).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fps: Option<f64>,
    /// A signed URL of a small preview image (at most 256 px a side: a JPEG, a video's first
    /// frame; an image already that small is its own preview), for images and videos, until the
    /// output expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preview_url: Option<String>,
}

impl OutputView {
    /// The output with a fresh signed URL, unless it has expired.
    pub async fn of(
        store: &dyn kiln_storage::ObjectStore,
        output: &kiln_core::Output,
    ) -> Result<Self, Problem> {
        let expired = output.is_expired(Utc::now());
        let sign = |key: String| async move {
            Ok::<_, Problem>(Some(
                store
                    .presign_get(&key, output.expires_at)
                    .await?
                    .to_string(),
            ))
        };
        let (url, preview_url) = if expired {
            (None, None)
        } else {
            let url = sign(output.object_key.clone()).await?;
            let preview = match output.media.preview {
                Some(kiln_core::Preview::Stored) => {
                    sign(kiln_core::job::preview_key(&output.object_key)).await?
                }
                Some(kiln_core::Preview::Itself) => url.clone(),
                None => None,
            };
            (url, preview)
        };
        let media = &output.media;
        Ok(OutputView {
            index: output.index,
            url,
            content_type: output.content_type.clone(),
            bytes: output.bytes,
            expires_at: output.expires_at,
            width: media.width,
            height: media.height,
            duration_seconds: media.duration_seconds,
            fps: media.fps,
            preview_url,
            expired,
        })
    }
}

/// One attempt of a job at one route.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Attempt)]
pub struct AttemptView {
    pub number: u32,
    pub id: String,
    /// `provider:model`.
    pub route: String,
    pub provider: String,
    pub upstream_model: String,
    pub upstream_id: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Null while it runs.
    pub outcome: Option<AttemptOutcome>,
    pub error: Option<ErrorInfo>,
    pub error_class: Option<FailureClass>,
    /// On an attempt that fell back from the failed one before it: that failure's code.
    pub fallback_reason: Option<String>,
    pub cost: Option<f64>,
    pub progress: Option<f64>,
}

/// What an attempt shows of its upstream handle. A Cog prediction's id carries the MAC that
/// admits its uploads (`kiln_core::callbacks::UploadHandle`, `{job}-{n}.{mac}`): a credential
/// is not shown, only the attempt it names (a re-attached attempt names the earlier one).
fn shown_upstream_id(attempt: &kiln_core::Attempt, id: &str) -> String {
    let job_prefix = attempt.id.rsplit_once('-').map_or("", |(job, _)| job);
    match id.rsplit_once('.') {
        Some((attempt_id, mac))
            if !job_prefix.is_empty()
                && attempt_id.starts_with(job_prefix)
                && mac.len() == 32
                && mac.bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            attempt_id.to_owned()
        }
        _ => id.to_owned(),
    }
}

impl AttemptView {
    /// The attempt; `previous` is the attempt before it, whose failure on another route makes
    /// this one a fallback.
    fn of(attempt: &kiln_core::Attempt, previous: Option<&kiln_core::Attempt>) -> Self {
        let fallback_reason = previous
            .filter(|p| p.outcome == Some(AttemptOutcome::Failed) && p.route != attempt.route)
            .and_then(|p| p.error.as_ref())
            .map(|e| e.code.clone());
        let (provider, upstream_model) = attempt
            .route
            .split_once(':')
            .unwrap_or((&attempt.route, ""));
        AttemptView {
            number: attempt.number,
            id: attempt.id.clone(),
            route: attempt.route.clone(),
            provider: provider.to_owned(),
            upstream_model: upstream_model.to_owned(),
            upstream_id: attempt
                .upstream_id
                .as_deref()
                .map(|id| shown_upstream_id(attempt, id)),
            started_at: attempt.started_at,
            finished_at: attempt.finished_at,
            outcome: attempt.outcome,
            error: attempt.error.clone(),
            error_class: attempt.error_class,
            fallback_reason,
            cost: attempt.cost_micros.map(cost_in_units),
            progress: attempt.progress_percent.map(|p| f64::from(p) / 100.0),
        }
    }
}

/// A job as `GET /v1/jobs/{id}` shows it; its events and webhook payloads carry the same.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Job)]
pub struct JobView {
    /// Always `job`.
    #[schema(value_type = String)]
    pub object: &'static str,
    #[schema(value_type = String)]
    pub id: JobId,
    pub model: String,
    pub status: Status,
    pub priority: Lane,
    /// Queued jobs ahead of it, while it is queued, counted up to 100 (100 means 100 or more) on
    /// reads (`GET`, lists, event streams); null in a create's answer, which does not count it.
    pub queue_position: Option<u64>,
    /// 0 to 1, where the generator reports it.
    pub progress: Option<f64>,
    /// As submitted, with large inline data elided.
    #[schema(value_type = Object)]
    pub input: Value,
    pub outputs: Vec<OutputView>,
    pub error: Option<ErrorInfo>,
    pub attempts: Vec<AttemptView>,
    /// The sum of its attempts' costs, in the routes' currency unit.
    pub cost: f64,
    pub rescues: u32,
    pub deadline_at: Option<DateTime<Utc>>,
    pub start_by: Option<DateTime<Utc>>,
    pub webhook: Option<String>,
    pub webhook_events: Option<Vec<String>>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub urls: Links,
}

impl JobView {
    /// The job, with fresh signed URLs for its kept outputs. Its queue position is left empty:
    /// counting it is a ledger read that only the api's answers make (`crate::jobs::render`).
    pub async fn of(store: &dyn kiln_storage::ObjectStore, job: &Job) -> Result<Self, Problem> {
        let mut outputs = Vec::with_capacity(job.outputs.len());
        for output in &job.outputs {
            outputs.push(OutputView::of(store, output).await?);
        }
        let attempts = job
            .attempts
            .iter()
            .enumerate()
            .map(|(i, a)| AttemptView::of(a, i.checked_sub(1).map(|p| &job.attempts[p])))
            .collect();
        Ok(JobView {
            object: "job",
            id: job.id,
            model: job.model.clone(),
            status: job.status,
            priority: job.priority,
            queue_position: None,
            progress: progress(job),
            // The row holds the input already elided; a row written before that is elided here.
            input: kiln_core::job::elide_inline_data(&job.input),
            outputs,
            error: job.error.clone(),
            attempts,
            cost: cost_in_units(job.attempts.iter().filter_map(|a| a.cost_micros).sum()),
            rescues: job.rescue_count,
            deadline_at: job.deadline_at,
            start_by: job.start_by,
            webhook: job.webhook_url.clone(),
            webhook_events: job.webhook_events.clone(),
            created_at: job.created_at,
            started_at: job.started_at,
            completed_at: job.completed_at,
            expires_at: job.expires_at(),
            urls: Links::under(format!("/v1/jobs/{}", job.id)),
        })
    }
}

/// How far a job has come, 0 to 1: its running attempt's last report, where the generator
/// gives one; 1 once it succeeded.
fn progress(job: &Job) -> Option<f64> {
    match job.status {
        Status::Succeeded => Some(1.0),
        Status::Running => job
            .attempts
            .last()
            .filter(|a| a.finished_at.is_none())
            .and_then(|a| a.progress_percent)
            .map(|p| f64::from(p) / 100.0),
        _ => None,
    }
}
