//! A job's own time limits: `cancel_after` (or Replicate's `Cancel-After` header) fails a job
//! that has not finished in time, running or still queued; `max_queue_wait` fails a job that
//! no worker started in time, and leaves alone one that started.

use crate::common::*;
use serde_json::{json, Value};

fn slow_job(latency_ms: u64, limits: Value) -> Value {
    let mut job = json!({
        "model": "demo/image",
        "input": {"prompt": "a slow kiln", "width": 16, "height": 16, "latency_ms": latency_ms},
    });
    job.as_object_mut()
        .unwrap()
        .extend(limits.as_object().unwrap().clone());
    job
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_job_past_its_cancel_after_fails_as_deadline_exceeded() {
    let kiln = Kiln::start().await;
    let key = kiln.key("acme").await;
    let id = kiln
        .submit_ok(&key, slow_job(30_000, json!({"cancel_after": "1s"})))
        .await;
    let job = kiln.wait_terminal(&key, &id).await;
    assert_eq!(job["status"], "failed", "{job:#}");
    assert_eq!(job["error"]["code"], "deadline_exceeded");
    assert!(job["deadline_at"].is_string());
    let attempts = job["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "a deadline is not retried");
    assert_eq!(attempts[0]["error_class"], "fail");
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cancel_after_header_limits_a_job_that_never_starts() {
    // One worker slot, held by a long job: the limited job waits in the queue past its
    // deadline and fails there, never started.
    let kiln = Kiln::start_with(|c| c.worker.concurrency = 1).await;
    let key = kiln.key("acme").await;
    let blocker = kiln.submit_ok(&key, slow_job(30_000, json!({}))).await;
    kiln.wait_for(&key, &blocker, "running", |j| j["status"] == "running")
        .await;
    let res = kiln
        .http
        .post(kiln.url("/v1/jobs"))
        .bearer_auth(&key)
        .header("Cancel-After", "1s")
        .json(&slow_job(0, json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let job = kiln.wait_terminal(&key, &id).await;
    assert_eq!(job["status"], "failed", "{job:#}");
    assert_eq!(job["error"]["code"], "deadline_exceeded");
    assert_eq!(job["attempts"].as_array().unwrap().len(), 0);
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn max_queue_wait_fails_a_job_no_worker_started_and_spares_one_that_started() {
    let kiln = Kiln::start_with(|c| c.worker.concurrency = 1).await;
    let key = kiln.key("acme").await;
    // Started at once, then runs longer than its max_queue_wait: that is not queue time.
    let started = kiln
        .submit_ok(&key, slow_job(2_500, json!({"max_queue_wait": "1s"})))
        .await;
    kiln.wait_for(&key, &started, "running", |j| j["status"] == "running")
        .await;
    let waiting = kiln
        .submit_ok(&key, slow_job(0, json!({"max_queue_wait": 1})))
        .await;
    let job = kiln.wait_terminal(&key, &waiting).await;
    assert_eq!(job["status"], "failed", "{job:#}");
    assert_eq!(job["error"]["code"], "queue_timeout");
    assert!(job["started_at"].is_null());
    let done = kiln.wait_terminal(&key, &started).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    kiln.shutdown().await;
}
