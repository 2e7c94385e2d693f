//! What a key sees of its own account on the wire: its webhook signing secret and its usage.

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
    pub total: UsageGroupView,
}
