//! The wire format: every JSON body Kiln sends or takes, as one typed struct each. Handlers and
//! webhook payloads serialize these, request parsing fills the submission types, and the OpenAPI
//! document is derived from the same types, so what the contract says and what goes on the wire
//! cannot drift apart. Where the ledger's own record already has the wire's shape (a delivery and
//! its tries, a model, a step as submitted, the status and priority enums, an error) it derives
//! the schema itself in `kiln-core` and is serialized as it is; the views here are the shapes
//! that differ from a record (signed URLs, derived costs and links, nested lists). A view is built
//! by its `of` constructor from the ledger's record and whatever I/O it needs (signing URLs,
//! reading a pipeline's step jobs), so building one is the only place its fields are filled.

mod account;
mod jobs;
mod pipelines;
pub mod predictions;

pub use account::{
    QueueLaneView, QueueView, TransitionView, UsageGroupView, UsageView, WebhookSecretView,
};
pub use jobs::{AttemptView, JobSubmission, JobView, OutputView};
pub use pipelines::{PipelineOutputView, PipelineSubmission, PipelineView, StepView};

use serde::Serialize;
use utoipa::ToSchema;

/// Where a created resource's operations live, relative to the server.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Links {
    #[serde(rename = "self")]
    pub self_: String,
    pub cancel: String,
    pub events: String,
}

impl Links {
    /// The links of the resource at `path` (`/v1/jobs/{id}`).
    fn under(path: String) -> Links {
        Links {
            cancel: format!("{path}/cancel"),
            events: format!("{path}/events"),
            self_: path,
        }
    }
}

/// One page of a list that continues by cursor (jobs, pipelines).
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T: ToSchema> {
    /// Always `list`.
    #[schema(value_type = String)]
    pub object: &'static str,
    pub data: Vec<T>,
    pub has_more: bool,
    /// Pass as `cursor` for the next page.
    pub next_cursor: Option<String>,
}

/// A whole list (models, a job's deliveries).
#[derive(Debug, Serialize, ToSchema)]
pub struct List<T: ToSchema> {
    /// Always `list`.
    #[schema(value_type = String)]
    pub object: &'static str,
    pub data: Vec<T>,
}

impl<T: ToSchema> List<T> {
    pub fn of(data: Vec<T>) -> Self {
        List {
            object: "list",
            data,
        }
    }
}

/// Costs are kept in millionths of the operator's currency unit and shown in the unit.
pub(crate) fn cost_in_units(micros: i64) -> f64 {
    micros as f64 / 1e6
}
