//! The job and what hangs off it. `Status` is the closed state machine of invariant 2:
//! `queued → running → succeeded | failed | canceled`, plus `running → queued` for a scheduled
//! retry or a rescue, and `queued → canceled`. Terminal states never change; the ledger enforces
//! that with compare-and-set, and `Status::can_become` documents the legal edges.

use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

/// An id that is a UUIDv7, so ids sort by creation time and make a natural pagination cursor.
/// A macro so that job and pipeline ids are distinct types with one definition.
macro_rules! uuid_v7_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            pub fn new() -> Self {
                $name(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map($name)
            }
        }
    };
}

uuid_v7_id!(
    /// A job's id.
    JobId
);

uuid_v7_id!(
    /// A pipeline's id: its own type, so a pipeline id cannot be passed where a job's is meant.
    PipelineId
);

/// The tenant an API key belongs to. Every ledger read and write is scoped by it (invariant 5).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TenantId(pub String);

impl TenantId {
    /// Tenant names are short identifiers: they appear in logs and key listings.
    pub fn parse(s: &str) -> Result<Self, String> {
        let valid = !s.is_empty()
            && s.len() <= 64
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
        if valid {
            Ok(TenantId(s.to_owned()))
        } else {
            Err("a tenant is 1 to 64 characters of letters, digits, '-', '_' or '.'".into())
        }
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A job's (or a pipeline's) state, as the wire shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Committed and waiting for a worker (possibly not before `run_after`, for a retry).
    Queued,
    /// Claimed by a worker that holds a lease on it.
    Running,
    Succeeded,
    Failed,
    Canceled,
}

impl Status {
    pub const ALL: [Status; 5] = [
        Status::Queued,
        Status::Running,
        Status::Succeeded,
        Status::Failed,
        Status::Canceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Canceled => "canceled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Succeeded | Status::Failed | Status::Canceled)
    }

    /// The legal edges of the state machine. The ledger's compare-and-set statements only ever
    /// write edges listed here; the unit test below pins the list.
    pub fn can_become(self, next: Status) -> bool {
        use Status::*;
        matches!(
            (self, next),
            (Queued, Running)
                | (Queued, Canceled)
                | (Queued, Failed)
                | (Running, Succeeded)
                | (Running, Failed)
                | (Running, Canceled)
                | (Running, Queued)
        )
    }
}

impl FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown status '{s}'"))
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stable, machine-readable error code plus a human sentence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorInfo {
    pub code: String,
    pub message: String,
}

impl ErrorInfo {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        ErrorInfo {
            code: code.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    Succeeded,
    /// Failed and will be retried (or fell through to the job's failure if none are left).
    Failed,
    /// Stopped because the job was canceled.
    Canceled,
    /// The worker lost its lease or died; the attempt's result, if any, was never committed.
    Lost,
    /// The worker was shutting down and released the job for another worker.
    Released,
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Succeeded => "succeeded",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::Canceled => "canceled",
            AttemptOutcome::Lost => "lost",
            AttemptOutcome::Released => "released",
        }
    }
}

impl FromStr for AttemptOutcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            AttemptOutcome::Succeeded,
            AttemptOutcome::Failed,
            AttemptOutcome::Canceled,
            AttemptOutcome::Lost,
            AttemptOutcome::Released,
        ]
        .into_iter()
        .find(|o| o.as_str() == s)
        .ok_or_else(|| format!("unknown attempt outcome '{s}'"))
    }
}

/// What a failed attempt means for the job: try the same route again (a transient fault:
/// timeout, reset, 5xx, 429), fall back to the next route (capacity, quota, an unavailable
/// model, a misconfigured provider), or fail the job (bad input, a content-policy refusal).
/// Workers classify; the executor decides from the class alone and the ledger records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    Retry,
    FallBack,
    Fail,
}

impl FailureClass {
    pub const ALL: [FailureClass; 3] = [
        FailureClass::Retry,
        FailureClass::FallBack,
        FailureClass::Fail,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Retry => "retry",
            FailureClass::FallBack => "fall_back",
            FailureClass::Fail => "fail",
        }
    }
}

impl FromStr for FailureClass {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FailureClass::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| format!("unknown failure class '{s}'"))
    }
}

/// Which API a job was created through. A job is the same whatever its surface; the surface
/// decides only the shape its webhooks are posted in (`None` in the ledger is Kiln's own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Surface {
    /// `/v1/jobs` (and pipelines' steps): webhooks carry Kiln's `{type, timestamp, data}`.
    #[default]
    Kiln,
    /// Replicate's `/v1/predictions`: webhooks carry the prediction itself.
    Replicate,
}

impl Surface {
    /// The ledger's `surface` column: null for Kiln's own.
    pub fn column(self) -> Option<&'static str> {
        match self {
            Surface::Kiln => None,
            Surface::Replicate => Some("replicate"),
        }
    }

    pub fn from_column(value: Option<&str>) -> Result<Self, String> {
        match value {
            None => Ok(Surface::Kiln),
            Some("replicate") => Ok(Surface::Replicate),
            Some(other) => Err(format!("unknown job surface '{other}'")),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attempt {
    pub number: u32,
    /// Stable id of this attempt; upstream calls carry it for idempotency.
    pub id: String,
    pub route: String,
    pub worker: String,
    pub started_at: Timestamp,
    pub finished_at: Option<Timestamp>,
    pub outcome: Option<AttemptOutcome>,
    pub error: Option<ErrorInfo>,
    /// How a failure was classified (`FailureClass`).
    pub error_class: Option<FailureClass>,
    /// The upstream's handle for this attempt (a re-attached attempt shows the one it resumed).
    pub upstream_id: Option<String>,
    /// What the attempt cost, in millionths of the configured currency unit.
    pub cost_micros: Option<i64>,
    /// The percentage the generator last reported, where it reports one.
    pub progress_percent: Option<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Output {
    pub index: u32,
    pub object_key: String,
    pub content_type: String,
    pub bytes: u64,
    pub expires_at: Timestamp,
    /// Set once the janitor has deleted the object.
    pub deleted_at: Option<Timestamp>,
    pub media: OutputMedia,
}

/// What an output is, read from the file itself by the worker; a field is absent where the
/// file does not say (a width for an image or video, a duration and frame rate for a video).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OutputMedia {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fps: Option<f64>,
    /// Where the output's preview is, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<Preview>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preview {
    /// A JPEG stored beside the output, at `preview_key(object_key)`.
    Stored,
    /// The output is an image already small enough to be its own preview: nothing more is
    /// stored (a second object per small output would double the store's writes).
    Itself,
}

/// Where an output's preview image is stored: beside it, so that it shares the output's prefix
/// (and S3 lifecycle rule), and the janitor deletes it with the output.
pub fn preview_key(object_key: &str) -> String {
    format!("{object_key}.preview.jpg")
}

impl Output {
    /// Whether the output can no longer be downloaded: deleted by the janitor, or past its
    /// expiry (the janitor may not have come by yet).
    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.deleted_at.is_some() || self.expires_at <= now
    }
}

/// An output a worker has stored and now commits with the job's success.
#[derive(Debug, Clone)]
pub struct NewOutput {
    pub index: u32,
    pub object_key: String,
    pub content_type: String,
    pub bytes: u64,
    pub expires_at: Timestamp,
    pub media: OutputMedia,
}

#[derive(Debug, Clone)]
pub struct Job {
    pub id: JobId,
    pub tenant: TenantId,
    pub model: String,
    pub input: serde_json::Value,
    pub status: Status,
    pub error: Option<ErrorInfo>,
    pub created_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub completed_at: Option<Timestamp>,
    pub run_after: Timestamp,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<Timestamp>,
    pub attempt_count: u32,
    pub rescue_count: u32,
    /// From `cancel_after`: past it the job fails as `deadline_exceeded`.
    pub deadline_at: Option<Timestamp>,
    /// From `max_queue_wait`: never started by then, the job fails as `queue_timeout`.
    pub start_by: Option<Timestamp>,
    pub webhook_url: Option<String>,
    /// The event types its webhook receives; `None` for all.
    pub webhook_events: Option<Vec<String>>,
    /// The pipeline this job is a step of.
    pub pipeline_id: Option<PipelineId>,
    /// Its dispatch lane.
    pub priority: crate::dispatch::Lane,
    /// Queued but held back by its tenant's dispatch window (not yet in the shared queue).
    pub held: bool,
    /// The API it was created through.
    pub surface: Surface,
    pub attempts: Vec<Attempt>,
    pub outputs: Vec<Output>,
}

impl Job {
    /// Whether the job's own webhook hears `event`: it has one, and its filter (none: every
    /// event) names the event. The ledger writes deliveries by the same rule
    /// (`delivery_insert`); this is its reading for a process that holds the job.
    pub fn webhook_hears(&self, event: crate::events::EventType) -> bool {
        self.webhook_url.is_some()
            && self
                .webhook_events
                .as_ref()
                .is_none_or(|events| events.iter().any(|e| e == event.as_str()))
    }

    /// When the job's outputs stop being downloadable: the latest output expiry.
    pub fn expires_at(&self) -> Option<Timestamp> {
        self.outputs.iter().map(|o| o.expires_at).max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_states_have_no_exits() {
        for from in Status::ALL.into_iter().filter(|s| s.is_terminal()) {
            for to in Status::ALL {
                assert!(!from.can_become(to), "{from} must not become {to}");
            }
        }
    }

    #[test]
    fn the_state_machine_is_exactly_the_documented_edges() {
        let edges: Vec<(Status, Status)> = Status::ALL
            .into_iter()
            .flat_map(|a| Status::ALL.into_iter().map(move |b| (a, b)))
            .filter(|(a, b)| a.can_become(*b))
            .collect();
        use Status::*;
        assert_eq!(
            edges,
            vec![
                (Queued, Running),
                (Queued, Failed),
                (Queued, Canceled),
                (Running, Queued),
                (Running, Succeeded),
                (Running, Failed),
                (Running, Canceled),
            ]
        );
    }

    #[test]
    fn status_round_trips_through_text() {
        for s in Status::ALL {
            assert_eq!(s.as_str().parse::<Status>().unwrap(), s);
        }
        assert!("done".parse::<Status>().is_err());
    }

    #[test]
    fn tenant_names_are_restricted() {
        assert!(TenantId::parse("acme-prod").is_ok());
        assert!(TenantId::parse("").is_err());
        assert!(TenantId::parse("a b").is_err());
        assert!(TenantId::parse(&"x".repeat(65)).is_err());
    }
}

/// Inline data (`data:` URIs) longer than this is kept out of the job's row and its views.
pub const INLINE_DATA_SHOWN: usize = 128;

/// A job's input as it is shown and as its row holds it: each `data:` string longer than
/// `INLINE_DATA_SHOWN` bytes becomes its media type and size (`data:image/png;base64,<N bytes
/// elided>`). An input can carry megabytes inline; the full one is stored once, apart
/// (`Ledger::job_input`), and read only by the worker that runs the job, so reading, listing
/// and waiting on jobs never parse it.
pub fn elide_inline_data(value: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(s) if s.starts_with("data:") && s.len() > INLINE_DATA_SHOWN => {
            // What precedes the data is its media type, short for any input that passed the
            // submit's checks; it is cut short anyway, so no row or view ever holds much of it.
            let meta = s.split_once(',').map(|(m, _)| m).unwrap_or("data:");
            let meta: String = meta.chars().take(INLINE_DATA_SHOWN).collect();
            Value::String(format!("{meta},<{} bytes elided>", s.len()))
        }
        Value::Array(items) => Value::Array(items.iter().map(elide_inline_data).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), elide_inline_data(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Whether a shown input had inline data elided (so running it needs the full one).
pub fn has_elided_data(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::String(s) => s.starts_with("data:") && s.ends_with(" bytes elided>"),
        Value::Array(items) => items.iter().any(has_elided_data),
        Value::Object(map) => map.values().any(has_elided_data),
        _ => false,
    }
}

#[cfg(test)]
mod elision_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn long_inline_data_is_shown_as_its_type_and_size() {
        let big = format!("data:image/png;base64,{}", "A".repeat(500));
        let input = json!({"image": big, "prompt": "p".repeat(500), "list": ["data:x,short"]});
        let shown = elide_inline_data(&input);
        assert_eq!(
            shown["image"],
            format!("data:image/png;base64,<{} bytes elided>", big.len())
        );
        assert_eq!(
            shown["prompt"], input["prompt"],
            "only data: strings are elided"
        );
        assert_eq!(shown["list"], input["list"], "short data is kept");
        assert!(has_elided_data(&shown));
        assert!(!has_elided_data(&input));
    }
}
