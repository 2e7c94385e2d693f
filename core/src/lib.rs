//! `kiln-core` is Kiln's domain: jobs, their closed set of states, attempts and outputs; the
//! `Ledger` traits that are the single source of truth for all of them (one SQL implementation
//! for SQLite and Postgres); API keys; the model catalog that validates inputs; the webhook
//! events; and the dispatch doorbell. Everything above this crate (api, worker) speaks these
//! types, so a value is parsed once at the edge and trusted afterwards.

pub mod batch;
pub mod callbacks;
pub mod catalog;
pub mod dispatch;
pub mod events;
pub mod job;
pub mod keys;
pub mod ledger;
pub mod metrics;
pub mod permits;
pub mod pipeline;
pub mod progress;
pub mod routes;
#[cfg(any(test, feature = "contract"))]
pub mod testing;
pub mod time;

pub use job::{
    Attempt, AttemptOutcome, ErrorInfo, Job, JobId, NewOutput, Output, OutputMedia, PipelineId,
    Preview, Status, Surface, TenantId,
};
pub use ledger::{Ledger, LedgerError};
