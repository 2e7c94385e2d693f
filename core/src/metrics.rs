//! Kiln's metrics: their names and labels, written once here so every process records them the
//! same way. They go through the `metrics` facade; the process that serves `/metrics` installs
//! a Prometheus recorder and renders them, with the ledger-wide gauges (jobs by status, queue
//! depth and age per lane) read at scrape time from the ledger, which every process shares.
//!
//! Counters and histograms are per process: a worker running apart from the api serves its own
//! at `worker.metrics_listen`. Labels are bounded sets (models and providers are configured,
//! statuses and outcomes are enums), never job ids or tenants.

use metrics::{counter, gauge, histogram};

/// A job moved to `status` (recorded with the ledger's transition, whichever process made it).
pub fn transition(status: &'static str) {
    counter!("kiln_job_transitions_total", "to" => status).increment(1);
}

/// A worker claimed a job that had waited `seconds` since it became due.
pub fn queue_wait(model: &str, lane: &str, seconds: f64) {
    histogram!("kiln_queue_wait_seconds", "model" => model.to_owned(), "lane" => lane.to_owned())
        .record(seconds);
}

/// An attempt ended: `outcome` is succeeded, retry, fall_back, fail, lost or released.
pub fn attempt_ended(model: &str, provider: &str, outcome: &str, seconds: f64) {
    let labels = [
        ("model", model.to_owned()),
        ("provider", provider.to_owned()),
        ("outcome", outcome.to_owned()),
    ];
    counter!("kiln_attempts_total", &labels).increment(1);
    histogram!("kiln_attempt_seconds", &labels).record(seconds);
}

/// The next attempt was scheduled on the same route (a retry) or the next one (a fallback).
pub fn next_attempt(model: &str, provider: &str, fallback: bool) {
    let name = if fallback {
        "kiln_fallbacks_total"
    } else {
        "kiln_retries_total"
    };
    counter!(name, "model" => model.to_owned(), "provider" => provider.to_owned()).increment(1);
}

/// A provider's circuit breaker in this process: 0 closed, 1 open.
pub fn circuit(provider: &str, open: bool) {
    gauge!("kiln_circuit_open", "provider" => provider.to_owned()).set(if open {
        1.0
    } else {
        0.0
    });
}

/// A webhook delivery try ended: delivered, retry, failed (gave up) or gone (410).
pub fn delivery(outcome: &str) {
    counter!("kiln_webhook_deliveries_total", "outcome" => outcome.to_owned()).increment(1);
}

/// Outputs written to storage.
pub fn stored(outputs: usize, bytes: u64) {
    counter!("kiln_outputs_stored_total").increment(outputs as u64);
    counter!("kiln_stored_bytes_total").increment(bytes);
}

/// One api request answered.
pub fn request(method: &str, route: &str, status: u16) {
    counter!(
        "kiln_http_requests_total",
        "method" => method.to_owned(),
        "route" => route.to_owned(),
        "status" => status.to_string()
    )
    .increment(1);
}

/// The ledger-wide gauges, set from a fresh read just before rendering.
pub fn ledger_snapshot(snapshot: &crate::ledger::QueueSnapshot) {
    for (status, n) in &snapshot.jobs {
        gauge!("kiln_jobs", "status" => status.as_str()).set(*n as f64);
    }
    for lane in &snapshot.lanes {
        let name = lane.lane.as_str();
        gauge!("kiln_queue_depth", "lane" => name).set(lane.depth as f64);
        gauge!("kiln_queue_oldest_age_seconds", "lane" => name).set(lane.oldest_age_seconds);
    }
    gauge!("kiln_jobs_held").set(snapshot.held as f64);
}
