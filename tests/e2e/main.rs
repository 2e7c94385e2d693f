//! Kiln end to end, in one test binary: each module drives the real stack (the api and workers,
//! the ledger on SQLite or Postgres, Redis, an S3 server, Cog) the way a client does. One binary
//! links the stack once instead of once per file; the tests that read process-wide state (the
//! metrics recorder, the process's own memory and CPU) keep binaries of their own
//! (`metrics.rs`, `hardening.rs`).

#[path = "../common/mod.rs"]
mod common;

mod bad_input;
mod cancel_and_expiry;
mod cli;
mod cog;
mod dashboard;
mod downloads;
mod examples;
mod fairness;
mod fault_suite;
mod faults;
mod idempotency;
mod key_limits;
mod lifecycle;
mod limits;
mod logging;
mod openai_client;
mod openapi;
mod pipelines;
mod production;
mod providers;
mod references;
mod replicate_client;
mod scale_out;
mod tenancy;
mod traces;
mod upstreams;
mod usage;
mod waiting;
mod webhooks;
