//! The `kiln` binary's library half: configuration loading and the wiring of api, worker,
//! ledger, doorbell and store into running processes. It is a library so that end-to-end tests
//! can start the very same wiring in-process on a random port. The command-line client of a
//! Kiln's public API lives here too (`client`).

pub mod app;
pub mod client;
pub mod config;
pub mod telemetry;

pub use app::{start, Roles, Running};
pub use config::Config;
