//! Waiting without poll loops: `Prefer: wait=N` answers as soon as the job is terminal, or after
//! N seconds with its current state; server-sent events stream each change and end with the
//! terminal one.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn job(latency_ms: u64) -> Value {
    json!({"model": "demo/image", "input": {"prompt": "a kiln", "width": 16, "height": 16, "latency_ms": latency_ms}})
}

#[tokio::test(flavor = "multi_thread")]
async fn prefer_wait_on_submit_returns_a_short_job_finished() {
    let kiln = Kiln::start().await;
    let key = kiln.key("acme").await;
    let res = kiln
        .http
        .post(kiln.url("/v1/jobs"))
        .bearer_auth(&key)
        .header("Prefer", "wait=10")
        .json(&job(1_000))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "created and done");
    assert_eq!(res.headers()["preference-applied"], "wait=10");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], "succeeded", "{body:#}");
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn prefer_wait_on_get_returns_a_long_job_running_after_the_wait() {
    let kiln = Kiln::start().await;
    let key = kiln.key("acme").await;
    let id = submit_ok(&kiln.http, &kiln.base, &key, job(30_000)).await;
    let started = Instant::now();
    let res = kiln
        .http
        .get(kiln.url(&format!("/v1/jobs/{id}")))
        .bearer_auth(&key)
        .header("Prefer", "respond-async, wait=10")
        .send()
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], "running", "{body:#}");
    // The wait is the behaviour under test: it holds for the 10 s asked, and not much more.
    assert!(waited >= Duration::from_secs(10), "{waited:?}");
    assert!(waited < Duration::from_secs(14), "{waited:?}");
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_streams_its_changes_as_server_sent_events_until_it_ends() {
    let kiln = Kiln::start().await;
    let key = kiln.key("acme").await;
    let id = submit_ok(&kiln.http, &kiln.base, &key, job(500)).await;
    let res = kiln
        .http
        .get(kiln.url(&format!("/v1/jobs/{id}/events")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    // The stream ends by itself after the terminal event.
    let text = res.text().await.unwrap();
    let statuses: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| {
            serde_json::from_str::<Value>(d).unwrap()["status"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        statuses.last().map(String::as_str),
        Some("succeeded"),
        "{text}"
    );
    assert!(statuses.iter().any(|s| s == "running"), "{statuses:?}");
    // Each event is a change: no status repeats back to back.
    assert!(statuses.windows(2).all(|w| w[0] != w[1]), "{statuses:?}");
    // Another tenant sees nothing.
    let other = kiln.key("other").await;
    let res = kiln
        .http
        .get(kiln.url(&format!("/v1/jobs/{id}/events")))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    kiln.shutdown().await;
}
