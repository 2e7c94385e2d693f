//! Per-key guardrails: a request rate, a cap on active jobs, a daily spend cap and the highest
//! priority a key may use. Each refusal is a problem detail with a stable code (and
//! `Retry-After` where waiting helps) and creates nothing.

use crate::common::*;
use kiln_core::dispatch::Lane;
use kiln_core::ledger::KeyLimits;
use serde_json::{json, Value};

fn job(latency_ms: u64) -> Value {
    json!({"model": "demo/image", "input": {"prompt": "a kiln", "width": 16, "height": 16, "latency_ms": latency_ms}})
}

#[tokio::test(flavor = "multi_thread")]
async fn past_its_request_rate_a_key_gets_429_with_retry_after_and_creates_nothing() {
    let kiln = Kiln::start().await;
    let limits = KeyLimits {
        rate_per_second: Some(3),
        ..KeyLimits::default()
    };
    let key = kiln.key_with("acme", limits).await;
    let mut accepted = 0;
    let mut refused = None;
    // Ten submits in a row: the first three fit the second's window, the rest cannot all.
    for _ in 0..10 {
        let res = kiln.submit(&key, job(0)).await;
        match res.status().as_u16() {
            202 => accepted += 1,
            429 => {
                let retry_after = res.headers()["retry-after"].to_str().unwrap().to_owned();
                refused = Some((retry_after, res.json::<Value>().await.unwrap()));
            }
            other => panic!("unexpected {other}"),
        }
    }
    let (retry_after, problem) = refused.expect("the rate was enforced");
    assert!(retry_after.parse::<u64>().unwrap() >= 1);
    assert_eq!(problem["code"], "rate_limited");
    assert_eq!(problem["status"], 429);
    assert!((3..10).contains(&accepted), "{accepted}");
    // Another key of the same tenant has its own rate: unlimited here.
    let other = kiln.key("acme").await;
    assert_eq!(
        job_count(&kiln, &other).await,
        accepted,
        "each refusal created nothing"
    );
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_at_its_active_job_limit_is_refused_until_one_ends() {
    let kiln = Kiln::start().await;
    let limits = KeyLimits {
        max_active_jobs: Some(2),
        ..KeyLimits::default()
    };
    let key = kiln.key_with("acme", limits).await;
    let first = kiln.submit_ok(&key, job(1_500)).await;
    kiln.submit_ok(&key, job(30_000)).await;
    let third = |idem: &'static str| {
        kiln.http
            .post(kiln.url("/v1/jobs"))
            .bearer_auth(&key)
            .header("Idempotency-Key", idem)
            .json(&job(0))
            .send()
    };
    let res = third("third").await.unwrap();
    assert_eq!(res.status(), 429);
    assert!(res.headers().get("retry-after").is_some());
    let problem: Value = res.json().await.unwrap();
    assert_eq!(problem["code"], "active_job_limit");
    assert_eq!(job_count(&kiln, &key).await, 2);
    // A pipeline's first steps count too.
    let pipeline = json!({"steps": [{"name": "a", "model": "demo/image", "input": {"prompt": "x", "width": 16, "height": 16}}]});
    let res = kiln
        .http
        .post(kiln.url("/v1/pipelines"))
        .bearer_auth(&key)
        .json(&pipeline)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    // Once one ends, there is room again: the refused request, retried with its key, runs (a
    // refusal was not kept for replay).
    kiln.wait_terminal(&key, &first).await;
    let res = third("third").await.unwrap();
    assert_eq!(res.status(), 202);
    assert!(res.headers().get("idempotent-replayed").is_none());
    assert_eq!(job_count(&kiln, &key).await, 3);
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daily_spend_cap_refuses_a_job_that_would_pass_it_and_creates_nothing() {
    let kiln = Kiln::start_with(|c| c.models = vec![priced_model()]).await;
    let limits = KeyLimits {
        daily_spend_micros: Some(1_000_000),
        ..KeyLimits::default()
    };
    let key = kiln.key_with("acme", limits).await;
    let priced =
        json!({"model": "acme/priced", "input": {"prompt": "a kiln", "width": 16, "height": 16}});
    // Two runs at 0.5 reach the cap of 1.0 exactly; each has ended (and cost) before the next.
    for _ in 0..2 {
        let id = kiln.submit_ok(&key, priced.clone()).await;
        let done = kiln.wait_terminal(&key, &id).await;
        assert_eq!(done["cost"], 0.5, "{done:#}");
    }
    let res = kiln.submit(&key, priced.clone()).await;
    assert_eq!(res.status(), 429);
    let retry_after: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after <= 24 * 3600, "until the next UTC day");
    let problem: Value = res.json().await.unwrap();
    assert_eq!(problem["code"], "daily_spend_cap_reached");
    assert_eq!(job_count(&kiln, &key).await, 2);
    // A pipeline of the priced model is refused the same way.
    let res = kiln
        .http
        .post(kiln.url("/v1/pipelines"))
        .bearer_auth(&key)
        .json(&json!({"steps": [{"name": "a", "model": "acme/priced", "input": {"prompt": "x", "width": 16, "height": 16}}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    // A free model still runs: the cap is on spend, not on jobs.
    kiln.submit_ok(&key, job(0)).await;
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_may_not_submit_above_its_highest_priority() {
    let kiln = Kiln::start().await;
    let limits = KeyLimits {
        max_priority: Some(Lane::Normal),
        ..KeyLimits::default()
    };
    let key = kiln.key_with("acme", limits).await;
    let mut high = job(0);
    high["priority"] = json!("high");
    let res = kiln.submit(&key, high).await;
    assert_eq!(res.status(), 403);
    let problem: Value = res.json().await.unwrap();
    assert_eq!(problem["code"], "priority_not_allowed");
    assert_eq!(problem["field"], "priority");
    let mut urgent = job(0);
    urgent["priority"] = json!("urgent");
    let res = kiln.submit(&key, urgent).await;
    assert_eq!(res.status(), 422);
    assert_eq!(res.json::<Value>().await.unwrap()["field"], "priority");
    assert_eq!(job_count(&kiln, &key).await, 0);
    // A pipeline may not either.
    let res = kiln
        .http
        .post(kiln.url("/v1/pipelines"))
        .bearer_auth(&key)
        .json(&json!({"priority": "high", "steps": [{"name": "a", "model": "demo/image", "input": {"prompt": "x", "width": 16, "height": 16}}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let mut low = job(0);
    low["priority"] = json!("low");
    let id = kiln.submit_ok(&key, low).await;
    let done = kiln.wait_terminal(&key, &id).await;
    assert_eq!(done["priority"], "low");
    assert_eq!(done["status"], "succeeded");
    kiln.shutdown().await;
}
