//! Replicate's shapes, for the clients written against Replicate's HTTP API: a job seen as a
//! prediction, a model and its version. They are views of the same records as `JobView` and
//! `ModelInfo`, never stored: a prediction is a job (same ledger row, same lifecycle).
//!
//! The fields are the ones Replicate's Python and JavaScript clients parse, with the values they
//! accept: `version` is never null, every `urls` value is a string (a null one fails the Python
//! client's validation), and `status` is one of Replicate's five (a queued job reads `starting`).
//! A create that waited answers an unfinished prediction as `starting`, whatever it is doing:
//! the clients take any other status in that answer to mean it has ended, and would stop
//! without its output.

use crate::problem::Problem;
use chrono::{DateTime, Utc};
use kiln_core::catalog::ModelInfo;
use kiln_core::{AttemptOutcome, Job, Status};
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

/// A prediction's status, in Replicate's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PredictionStatus {
    /// Queued (or, in a create's answer, not finished yet).
    Starting,
    Processing,
    Succeeded,
    Failed,
    Canceled,
}

impl PredictionStatus {
    /// The status a read shows.
    pub fn of(status: Status) -> Self {
        match status {
            Status::Queued => PredictionStatus::Starting,
            Status::Running => PredictionStatus::Processing,
            Status::Succeeded => PredictionStatus::Succeeded,
            Status::Failed => PredictionStatus::Failed,
            Status::Canceled => PredictionStatus::Canceled,
        }
    }

    /// The status a create's answer shows: `starting` until the prediction has ended.
    pub fn in_create_answer(status: Status) -> Self {
        match Self::of(status) {
            PredictionStatus::Processing => PredictionStatus::Starting,
            other => other,
        }
    }
}

/// Where a prediction's operations live (absolute URLs).
#[derive(Debug, Serialize, ToSchema)]
pub struct PredictionUrls {
    pub get: String,
    pub cancel: String,
    /// Kiln's own event stream of the job (server-sent `job` events; not Replicate's stream).
    pub events: String,
}

/// A prediction's timings, in seconds.
#[derive(Debug, Serialize, ToSchema)]
pub struct PredictionMetrics {
    /// From its first attempt's start to its end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predict_time: Option<f64>,
    /// From its submission to its end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_time: Option<f64>,
}

/// A job as Replicate's clients read a prediction.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Prediction)]
pub struct PredictionView {
    /// The job's id: `GET /v1/jobs/{id}` shows the same job.
    pub id: String,
    pub model: String,
    /// The model's version (`GET /v1/models/{owner}/{name}/versions/{id}`).
    pub version: String,
    pub status: PredictionStatus,
    /// As submitted, with large inline data elided.
    #[schema(value_type = Object)]
    pub input: Value,
    /// The outputs' download URLs once it succeeded; null before, and once they expired.
    pub output: Option<Vec<String>>,
    /// Why it failed, or null.
    pub error: Option<String>,
    /// One line per attempt and its end, and the running attempt's progress as a bar.
    pub logs: String,
    pub metrics: PredictionMetrics,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    /// True once its outputs have expired and were removed.
    pub data_removed: bool,
    /// Always `api`.
    #[schema(value_type = String)]
    pub source: &'static str,
    pub urls: PredictionUrls,
}

impl PredictionView {
    /// The job as a prediction, its outputs with fresh signed URLs of the api's own
    /// (`downloads`: they work with the client's `Authorization` header attached, which S3's
    /// presigned URLs refuse). `base` is the api's public URL; `status` is what this answer
    /// says (a read's or a create's, `PredictionStatus`).
    pub fn of(
        downloads: &kiln_storage::SignedDownloads,
        base: &url::Url,
        version: String,
        job: &Job,
        status: PredictionStatus,
    ) -> Result<Self, Problem> {
        let now = Utc::now();
        let data_removed = !job.outputs.is_empty() && job.outputs.iter().any(|o| o.is_expired(now));
        let output = if job.status == Status::Succeeded && !data_removed {
            let mut urls = Vec::with_capacity(job.outputs.len());
            for output in &job.outputs {
                let until = output.expires_at;
                urls.push(downloads.url(&output.object_key, until)?.to_string());
            }
            Some(urls)
        } else {
            None
        };
        let seconds =
            |from: DateTime<Utc>, to: DateTime<Utc>| (to - from).num_milliseconds() as f64 / 1000.0;
        let metrics = PredictionMetrics {
            predict_time: job
                .started_at
                .zip(job.completed_at)
                .map(|(from, to)| seconds(from, to)),
            total_time: job.completed_at.map(|to| seconds(job.created_at, to)),
        };
        let path = format!("v1/predictions/{}", job.id);
        let link = |suffix: &str| {
            base.join(&format!("{path}{suffix}"))
                .map(String::from)
                .unwrap_or_else(|_| format!("/{path}{suffix}"))
        };
        Ok(PredictionView {
            id: job.id.to_string(),
            model: job.model.clone(),
            version,
            status,
            input: kiln_core::job::elide_inline_data(&job.input),
            output,
            error: job.error.as_ref().map(|e| e.message.clone()),
            logs: logs(job),
            metrics,
            created_at: job.created_at,
            started_at: job.started_at,
            completed_at: job.completed_at,
            data_removed,
            source: "api",
            urls: PredictionUrls {
                get: link(""),
                cancel: link("/cancel"),
                events: base
                    .join(&format!("v1/jobs/{}/events", job.id))
                    .map(String::from)
                    .unwrap_or_default(),
            },
        })
    }
}

/// What a prediction's `logs` say: each attempt's start and end, and the running attempt's
/// progress as a tqdm-style bar (`42%|████      | 42/100`), the form the Python client reads a
/// prediction's `progress` from.
pub fn logs(job: &Job) -> String {
    let mut lines = String::new();
    for attempt in &job.attempts {
        lines.push_str(&format!(
            "attempt {} on {}\n",
            attempt.number, attempt.route
        ));
        match attempt.outcome {
            None => {
                if let Some(percent) = attempt.progress_percent {
                    let filled = usize::from(percent.min(100)) / 10;
                    lines.push_str(&format!(
                        "{percent:>3}%|{}{}| {percent}/100\n",
                        "█".repeat(filled),
                        " ".repeat(10 - filled)
                    ));
                }
            }
            Some(AttemptOutcome::Succeeded) => {
                lines.push_str(&format!("attempt {} succeeded\n", attempt.number));
            }
            Some(outcome) => {
                let why = attempt
                    .error
                    .as_ref()
                    .map(|e| format!(": {}: {}", e.code, e.message))
                    .unwrap_or_default();
                let outcome = serde_json::to_value(outcome)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_else(|| "ended".into());
                lines.push_str(&format!("attempt {} {outcome}{why}\n", attempt.number));
            }
        }
    }
    lines
}

/// A model's one published version: its id is a digest of the model's name and input schema,
/// so it is the same in every api process and changes exactly when the schema does.
pub fn version_id(model: &ModelInfo) -> String {
    let mut digest = Sha256::new();
    digest.update(model.name.as_bytes());
    digest.update(b"\n");
    digest.update(model.input_schema.to_string().as_bytes());
    hex::encode(digest.finalize())
}

/// The version of a model that is no longer configured: a digest of its name alone, so its
/// old predictions still show a version.
pub fn retired_version_id(model: &str) -> String {
    hex::encode(Sha256::digest(model.as_bytes()))
}

/// The Cog version whose schema conventions the published versions follow (an `Input` and an
/// `Output` under `components.schemas`, a list of files as an `array` of `uri` strings, not an
/// iterator). Clients only compare it against 0.3.9 to decide how to read the schema.
const SCHEMA_CONVENTIONS_OF_COG: &str = "0.9.0";

/// A model's version as Replicate's clients read it (`run("owner/name:version")` reads its
/// `openapi_schema` and `cog_version`).
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = ModelVersion)]
pub struct VersionView {
    pub id: String,
    /// Kiln does not record when a model's schema was published: the Unix epoch.
    pub created_at: DateTime<Utc>,
    pub cog_version: &'static str,
    /// `components.schemas.Input` is the model's input schema; `Output` a list of file URLs.
    #[schema(value_type = Object)]
    pub openapi_schema: Value,
}

impl VersionView {
    pub fn of(model: &ModelInfo) -> Self {
        VersionView {
            id: version_id(model),
            created_at: DateTime::<Utc>::UNIX_EPOCH,
            cog_version: SCHEMA_CONVENTIONS_OF_COG,
            openapi_schema: json!({
                "openapi": "3.0.2",
                "info": {"title": model.name, "version": "1.0.0"},
                "paths": {},
                "components": {"schemas": {
                    "Input": model.input_schema,
                    "Output": {"type": "array", "items": {"type": "string", "format": "uri"}},
                }},
            }),
        }
    }
}

/// A model as Replicate's clients read it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = ReplicateModel)]
pub struct ModelView {
    pub url: String,
    pub owner: String,
    pub name: String,
    pub description: String,
    /// Always `public`: every key sees every model.
    #[schema(value_type = String)]
    pub visibility: &'static str,
    pub github_url: Option<String>,
    pub paper_url: Option<String>,
    pub license_url: Option<String>,
    pub cover_image_url: Option<String>,
    /// Kiln does not count runs per model here (`GET /v1/usage` does): always 0.
    pub run_count: u64,
    pub latest_version: VersionView,
}

impl ModelView {
    /// The model, if its name has Replicate's `owner/name` form.
    pub fn of(base: &url::Url, model: &ModelInfo) -> Option<Self> {
        let (owner, name) = model.name.split_once('/')?;
        Some(ModelView {
            url: base
                .join(&format!("v1/models/{}", model.name))
                .map(String::from)
                .unwrap_or_default(),
            owner: owner.to_owned(),
            name: name.to_owned(),
            description: model.description.clone(),
            visibility: "public",
            github_url: None,
            paper_url: None,
            license_url: None,
            cover_image_url: None,
            run_count: 0,
            latest_version: VersionView::of(model),
        })
    }
}

/// A page of Replicate's lists: absolute URLs of the pages around it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReplicatePage<T: ToSchema> {
    pub next: Option<String>,
    pub previous: Option<String>,
    pub results: Vec<T>,
}
