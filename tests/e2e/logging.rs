//! Structured logs: with `KILN_LOG_FORMAT=json` every line Kiln writes is one JSON object, and
//! lines carry the id of the request (the client's `x-request-id`, echoed back) or of the job
//! they are about.

use crate::common::*;
use serde_json::Value;
use std::process::Stdio;

/// Whether a JSON log line was written inside a span carrying `field` = `value`.
fn in_span(line: &Value, field: &str, value: &str) -> bool {
    line["spans"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(std::iter::once(&line["span"]))
        .any(|span| span[field] == value)
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_carry_request_and_job_ids() {
    let dir = tempfile::tempdir().unwrap();
    let key = create_key(dir.path(), "acme");
    let log_path = dir.path().join("kiln.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let env = vec![
        ("KILN_LOG_FORMAT".to_owned(), "json".to_owned()),
        ("KILN_LOG".to_owned(), "info,tower_http=debug".to_owned()),
    ];
    let kiln = KilnProcess::start_logging_to("serve", dir.path(), &env, Stdio::from(log));
    let http = http();
    let res = http
        .post(format!("{}/v1/jobs", kiln.base))
        .bearer_auth(&key)
        .header("x-request-id", "req-for-the-log-test")
        .json(&image_job(16, 16))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    assert_eq!(res.headers()["x-request-id"], "req-for-the-log-test");
    let job: Value = res.json().await.unwrap();
    let id = job["id"].as_str().unwrap().to_owned();
    wait_terminal(&http, &kiln.base, &key, &id).await;
    // A request without an id of its own gets a fresh one.
    let res = http
        .get(format!("{}/healthz", kiln.base))
        .send()
        .await
        .unwrap();
    assert!(!res.headers()["x-request-id"].is_empty());
    kiln.sigterm();
    drop(kiln);

    let text = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(!lines.is_empty());
    assert!(lines
        .iter()
        .all(|l| l["timestamp"].is_string() && l["level"].is_string()));
    assert!(
        lines
            .iter()
            .any(|l| in_span(l, "request_id", "req-for-the-log-test")),
        "no line carries the request id:\n{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| in_span(l, "job_id", &id) && l["message"] == "claimed"),
        "no line carries the job id:\n{text}"
    );
}
