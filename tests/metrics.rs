//! `/metrics` is Prometheus text that a Prometheus parser reads, and its counters move when jobs
//! run: transitions, attempts, retries, queue waits, stored bytes, webhook deliveries and
//! requests; the ledger-wide gauges (jobs by status, queue depth per lane) are there too.

mod common;

use common::*;
use prometheus_parse::{Scrape, Value as Sample};
use serde_json::json;

async fn scrape(kiln: &Kiln) -> Scrape {
    let res = kiln.http.get(kiln.metrics_url()).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = res.text().await.unwrap();
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("valid Prometheus text")
}

/// The sum of a metric's samples whose labels include `labels` (counters, gauges, and the
/// `_count` of histograms).
fn total(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            Sample::Counter(v) | Sample::Gauge(v) | Sample::Untyped(v) => *v,
            Sample::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            Sample::Summary(_) => 0.0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_parse_as_prometheus_text_and_move_when_jobs_run() {
    let kiln = Kiln::start().await;
    let key = kiln.key("acme").await;
    let before = scrape(&kiln).await;
    assert!(before
        .samples
        .iter()
        .any(|s| s.metric == "kiln_queue_depth" && s.labels.get("lane") == Some("high")));
    assert!(before
        .samples
        .iter()
        .any(|s| s.metric == "kiln_jobs" && s.labels.get("status") == Some("queued")));

    let mut hooks = Receiver::start().await;
    let mut with_hook = image_job(32, 32);
    with_hook["webhook"] = json!(hooks.url);
    with_hook["webhook_events"] = json!(["job.succeeded"]);
    let a = kiln.submit_ok(&key, with_hook).await;
    let b = kiln.submit_ok(&key, image_job(16, 16)).await;
    let failing = json!({"model": "demo/image", "input": {"prompt": "x", "width": 16, "height": 16, "fail_rate": 1.0}});
    let c = kiln.submit_ok(&key, failing).await;
    for id in [&a, &b, &c] {
        kiln.wait_terminal(&key, id).await;
    }
    assert_eq!(hooks.next().await["type"], "job.succeeded");
    let after = scrape(&kiln).await;
    let moved = |name: &str, labels: &[(&str, &str)]| {
        total(&after, name, labels) - total(&before, name, labels)
    };
    assert!(moved("kiln_job_transitions_total", &[("to", "succeeded")]) >= 2.0);
    assert!(moved("kiln_job_transitions_total", &[("to", "failed")]) >= 1.0);
    assert!(
        moved(
            "kiln_attempts_total",
            &[("outcome", "succeeded"), ("provider", "demo")]
        ) >= 2.0
    );
    assert!(moved("kiln_attempts_total", &[("outcome", "retry")]) >= 1.0);
    assert!(moved("kiln_retries_total", &[("model", "demo/image")]) >= 1.0);
    assert!(moved("kiln_queue_wait_seconds_count", &[("model", "demo/image")]) >= 3.0);
    assert!(moved("kiln_attempt_seconds_count", &[]) >= 3.0);
    assert!(moved("kiln_outputs_stored_total", &[]) >= 2.0);
    assert!(moved("kiln_stored_bytes_total", &[]) > 0.0);
    assert!(
        moved(
            "kiln_http_requests_total",
            &[("route", "/v1/jobs"), ("method", "POST"), ("status", "202")]
        ) >= 3.0
    );
    // The delivery is counted once it is recorded, just after the receiver answered.
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let now = scrape(&kiln).await;
        if total(
            &now,
            "kiln_webhook_deliveries_total",
            &[("outcome", "delivered")],
        ) >= 1.0
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no delivery counted");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    kiln.shutdown().await;
}

/// Every tenant's counts go out on the private metrics listener only: the public one, where
/// clients come with or without a key, has no `/metrics`.
#[tokio::test(flavor = "multi_thread")]
async fn the_public_listener_serves_no_metrics() {
    let kiln = Kiln::start().await;
    let key = kiln.key("acme").await;
    for auth in [None, Some(&key)] {
        let mut req = kiln.http.get(kiln.url("/metrics"));
        if let Some(key) = auth {
            req = req.bearer_auth(key);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 404, "a key changes nothing");
    }
    let private = kiln.http.get(kiln.metrics_url()).send().await.unwrap();
    assert_eq!(private.status(), 200);
    kiln.shutdown().await;
}
