//! `kiln-worker` runs jobs. The executor claims a job from the ledger, runs it on its generator
//! while renewing its lease and watching for cancel, stores the outputs, and commits the result
//! with a fenced transition; failures are classified as retry or fail. Beside it run the
//! reconciler, which keeps invariant 1 (rings what nobody took, rescues what a dead worker held),
//! and the janitor, which deletes expired outputs. `runtime` wires them onto apalis.
//!
//! Providers reach the ledger only through their attempt's `UpstreamLink` (record the upstream
//! handle, read a pushed callback); every state change is the executor's.

pub mod blocking;
pub mod circuit;
pub mod clip;
pub mod cog;
pub mod comfyui;
pub mod deliverer;
pub mod demo;
pub mod demo_provider;
pub mod executor;
pub mod fal;
pub mod inputs;
pub mod janitor;
pub mod limit;
pub mod media;
pub mod openai;
pub mod outputs;
pub mod provider;
pub mod reconciler;
pub mod replicate;
pub mod runtime;
pub mod upstream;

pub use executor::{Executor, ExecutorConfig};
pub use runtime::{WorkerHandle, WorkerRuntime, WorkerSettings};
