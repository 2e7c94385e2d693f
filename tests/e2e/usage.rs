//! `GET /v1/usage`: jobs, outcomes, attempts and cost of the caller's tenant, grouped by model,
//! provider or day; failed attempts count in the cost. Another tenant's work is not in it.

use crate::common::*;
use serde_json::{json, Value};

async fn usage(kiln: &Kiln, key: &str, query: &str) -> (u16, Value) {
    let res = kiln
        .http
        .get(kiln.url(&format!("/v1/usage{query}")))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

fn row<'a>(report: &'a Value, key: &str) -> &'a Value {
    report["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == key)
        .unwrap_or_else(|| panic!("no row {key}: {report:#}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_sums_jobs_attempts_and_cost_by_model_provider_and_day() {
    let kiln = Kiln::start_with(|c| c.models = vec![priced_model()]).await;
    let key = kiln.key("acme").await;
    let priced =
        json!({"model": "acme/priced", "input": {"prompt": "a kiln", "width": 16, "height": 16}});
    for _ in 0..2 {
        let id = kiln.submit_ok(&key, priced.clone()).await;
        assert_eq!(kiln.wait_terminal(&key, &id).await["status"], "succeeded");
    }
    let failing = json!({"model": "demo/image", "input": {"prompt": "x", "width": 16, "height": 16, "fail_rate": 1.0}});
    let id = kiln.submit_ok(&key, failing).await;
    let failed = kiln.wait_terminal(&key, &id).await;
    assert_eq!(failed["status"], "failed");
    let failed_attempts = failed["attempts"].as_array().unwrap().len() as u64;
    // Another tenant's job is not in acme's usage.
    let other = kiln.key("other").await;
    let theirs = kiln.submit_ok(&other, priced.clone()).await;
    kiln.wait_terminal(&other, &theirs).await;

    let (status, by_model) = usage(&kiln, &key, "?group_by=model").await;
    assert_eq!(status, 200, "{by_model:#}");
    let p = row(&by_model, "acme/priced");
    assert_eq!(
        (
            p["jobs"].as_u64(),
            p["succeeded"].as_u64(),
            p["failed"].as_u64()
        ),
        (Some(2), Some(2), Some(0))
    );
    assert_eq!(p["attempts"], 2);
    assert_eq!(p["cost"], 1.0);
    assert_eq!(p["cost_per_success"], 0.5);
    let d = row(&by_model, "demo/image");
    assert_eq!(
        (d["jobs"].as_u64(), d["failed"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(d["attempts"].as_u64(), Some(failed_attempts));
    assert!(d["cost_per_success"].is_null());
    assert_eq!(by_model["total"]["jobs"], 3);
    assert_eq!(
        by_model["total"]["attempts"].as_u64(),
        Some(2 + failed_attempts)
    );
    assert_eq!(by_model["total"]["cost"], 1.0);

    let (_, by_provider) = usage(&kiln, &key, "?group_by=provider").await;
    let demo = row(&by_provider, "demo");
    assert_eq!(demo["jobs"], 3);
    assert_eq!(demo["succeeded"], 2, "succeeded attempts there");
    assert_eq!(demo["failed"].as_u64(), Some(failed_attempts));
    assert_eq!(demo["cost"], 1.0);

    let (_, by_day) = usage(&kiln, &key, "?group_by=day").await;
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    assert_eq!(row(&by_day, &today)["jobs"], 3);

    // A window that holds none of it is empty.
    let (_, past) = usage(
        &kiln,
        &key,
        "?from=2020-01-01T00:00:00Z&to=2020-01-02T00:00:00Z",
    )
    .await;
    assert!(past["data"].as_array().unwrap().is_empty());
    assert_eq!(past["total"]["jobs"], 0);
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_usage_parameters_are_problems_naming_them() {
    let kiln = Kiln::start().await;
    let key = kiln.key("acme").await;
    for (query, field) in [
        ("?group_by=color", "group_by"),
        ("?from=yesterday", "from"),
        ("?limit=3", "limit"),
    ] {
        let (status, problem) = usage(&kiln, &key, query).await;
        assert_eq!(status, 400, "{query}: {problem}");
        assert_eq!(problem["field"], field, "{query}: {problem}");
    }
    kiln.shutdown().await;
}

/// Every window the document allows is an answer: one that ends before it starts holds no jobs,
/// and a window of years is summed (a page of jobs at a time, in bounded memory).
#[tokio::test(flavor = "multi_thread")]
async fn any_window_is_summed_and_an_inverted_one_is_empty() {
    let kiln = Kiln::start().await;
    let key = kiln.key("acme").await;
    let id = kiln.submit_ok(&key, image_job(16, 16)).await;
    assert_eq!(kiln.wait_terminal(&key, &id).await["status"], "succeeded");
    let (status, inverted) = usage(
        &kiln,
        &key,
        "?from=2030-01-02T00:00:00Z&to=2020-01-01T00:00:00Z",
    )
    .await;
    assert_eq!(status, 200, "{inverted}");
    assert_eq!(inverted["total"]["jobs"], 0);
    assert_eq!(inverted["data"], json!([]));
    let (status, years) = usage(
        &kiln,
        &key,
        "?from=2000-01-01T00:00:00Z&to=2099-01-01T00:00:00Z",
    )
    .await;
    assert_eq!(status, 200, "{years}");
    assert_eq!(years["total"]["jobs"], 1);
    assert_eq!(years["total"]["succeeded"], 1);
    kiln.shutdown().await;
}
