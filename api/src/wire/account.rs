//! What a key sees of its own account on the wire: its webhook signing secret, its usage and its
//! share of the queue.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

/// The calling key's webhook signing secret.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = WebhookSecret)]
pub struct WebhookSecretView {
    /// `whsec_…`, for any Standard Webhooks library.
    pub key: String,
    /// After a rotation: until when the previous secret still signs beside it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_valid_until: Option<DateTime<Utc>>,
}

/// One group of `GET /v1/usage` (a model, a provider or a day), or its total.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = UsageGroup)]
pub struct UsageGroupView {
    /// The model, provider or day; `total` for the total.
    pub key: String,
    /// In `parts`: the group this part belongs to (the day, model or provider of `group_by`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub jobs: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub attempts: u64,
    pub fallbacks: u64,
    pub cost: f64,
    /// Cost over successes, failed attempts included: the true price of one success.
    pub cost_per_success: Option<f64>,
}

/// `GET /v1/usage`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Usage)]
pub struct UsageView {
    /// Always `usage`.
    #[schema(value_type = String)]
    pub object: &'static str,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub group_by: crate::usage::GroupBy,
    pub data: Vec<UsageGroupView>,
    /// With `split`: each group's parts (by day split by model, say: what a stacked chart of
    /// cost per day draws), each naming its `group`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parts: Option<Vec<UsageGroupView>>,
    pub total: UsageGroupView,
}

/// The caller's jobs in one dispatch lane.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = QueueLane)]
pub struct QueueLaneView {
    #[schema(value_type = kiln_core::dispatch::Lane)]
    pub lane: kiln_core::dispatch::Lane,
    /// Waiting to run, including those held back by the tenant's fairness window.
    pub queued: u64,
    pub running: u64,
}

/// `GET /v1/queue`: the caller's tenant's jobs queued and running, per lane.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Queue)]
pub struct QueueView {
    /// Always `queue`.
    #[schema(value_type = String)]
    pub object: &'static str,
    pub lanes: Vec<QueueLaneView>,
}

/// One change of a job's status, as the ledger recorded it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Transition)]
pub struct TransitionView {
    /// Null for the job's first status.
    pub from: Option<kiln_core::Status>,
    pub to: kiln_core::Status,
    /// Why, where the ledger says (a rescue, a retry, a deadline).
    pub reason: Option<String>,
    pub at: DateTime<Utc>,
}
