//! `kiln-worker` runs jobs. The executor claims a job from the ledger, runs it on its generator
//! while renewing its lease and watching for cancel, stores the outputs, and commits the result
//! with a fenced transition; failures are classified as retry or fail. Beside it run the
//! reconciler, which keeps invariant 1 (rings what nobody took, rescues what a dead worker held),
//! and the janitor, which deletes expired outputs. `runtime` wires them onto apalis.
//!
//! Providers never touch the ledger; only the executor does.

pub mod circuit;
pub mod demo;
pub mod demo_provider;
pub mod executor;
pub mod inputs;
pub mod janitor;
pub mod limit;
pub mod openai;
pub mod provider;
pub mod reconciler;
pub mod runtime;

pub use executor::{Executor, ExecutorConfig};
pub use runtime::{WorkerHandle, WorkerRuntime, WorkerSettings};
