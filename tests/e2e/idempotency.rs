//! `Idempotency-Key` with Stripe's semantics, through the api: a retry with the same key and
//! body gets the original answer (marked replayed) and creates nothing; the same key with another
//! body is refused; the same key while the first request is still being answered is a conflict;
//! after the keeping time the key is new again. Keys are scoped to the API key that sent them.

use crate::common::*;
use serde_json::{json, Value};

fn job(prompt: &str, latency_ms: u64) -> Value {
    json!({"model": "demo/image", "input": {"prompt": prompt, "width": 16, "height": 16, "latency_ms": latency_ms}})
}

async fn post(kiln: &Kiln, key: &str, path: &str, idem: &str, body: &Value) -> reqwest::Response {
    kiln.http
        .post(kiln.url(path))
        .bearer_auth(key)
        .header("Idempotency-Key", idem)
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_with_the_same_key_replays_the_answer_and_creates_nothing() {
    let kiln = Kiln::start().await;
    let key = kiln.key("acme").await;
    let body = job("once", 0);
    let first = post(&kiln, &key, "/v1/jobs", "order-1", &body).await;
    assert_eq!(first.status(), 202);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let location = first.headers()["location"].clone();
    let first: Value = first.json().await.unwrap();
    let again = post(&kiln, &key, "/v1/jobs", "order-1", &body).await;
    assert_eq!(again.status(), 202, "the original status");
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.headers()["location"], location);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again, first, "the original body");
    assert_eq!(job_count(&kiln, &key).await, 1);
    // Another API key's same Idempotency-Key is its own: it creates its own job.
    let other = kiln.key("acme").await;
    let theirs = post(&kiln, &other, "/v1/jobs", "order-1", &body).await;
    assert_eq!(theirs.status(), 202);
    assert!(theirs.headers().get("idempotent-replayed").is_none());
    assert_ne!(theirs.json::<Value>().await.unwrap()["id"], first["id"]);
    // A refusal is not kept (as Stripe keeps none for a request that failed validation): the
    // same key with the same bad request runs again and is refused again, not replayed.
    let bad = json!({"model": "demo/image", "input": {"prompt": "x", "width": 1}});
    let refused = post(&kiln, &key, "/v1/jobs", "order-2", &bad).await;
    assert_eq!(refused.status(), 422);
    let again = post(&kiln, &key, "/v1/jobs", "order-2", &bad).await;
    assert_eq!(again.status(), 422);
    assert!(again.headers().get("idempotent-replayed").is_none());
    // The tenant's jobs: the first, and the other key's.
    assert_eq!(job_count(&kiln, &key).await, 2);
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelines_are_idempotent_too() {
    let kiln = Kiln::start().await;
    let key = kiln.key("acme").await;
    let body = json!({"steps": [
        {"name": "image", "model": "demo/image", "input": {"prompt": "a kiln", "width": 16, "height": 16}}
    ]});
    let first: Value = post(&kiln, &key, "/v1/pipelines", "chain-1", &body)
        .await
        .json()
        .await
        .unwrap();
    let again = post(&kiln, &key, "/v1/pipelines", "chain-1", &body).await;
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap()["id"], first["id"]);
    let list: Value = kiln
        .http
        .get(kiln.url("/v1/pipelines"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    // The same key on the other create route is another request: refused.
    let crossed = post(&kiln, &key, "/v1/jobs", "chain-1", &body).await;
    assert_eq!(crossed.status(), 422);
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_key_with_another_body_is_refused_and_creates_nothing() {
    let kiln = Kiln::start().await;
    let key = kiln.key("acme").await;
    let res = post(&kiln, &key, "/v1/jobs", "order-1", &job("first", 0)).await;
    assert_eq!(res.status(), 202);
    let res = post(&kiln, &key, "/v1/jobs", "order-1", &job("second", 0)).await;
    assert_eq!(res.status(), 422);
    let problem: Value = res.json().await.unwrap();
    assert_eq!(problem["code"], "idempotency_key_reused");
    assert_eq!(problem["field"], "Idempotency-Key");
    assert_eq!(job_count(&kiln, &key).await, 1);
    // A malformed key is refused before anything runs.
    let res = post(&kiln, &key, "/v1/jobs", &"k".repeat(300), &job("third", 0)).await;
    assert_eq!(res.status(), 400);
    assert_eq!(
        res.json::<Value>().await.unwrap()["code"],
        "invalid_idempotency_key"
    );
    assert_eq!(job_count(&kiln, &key).await, 1);
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_key_while_the_first_is_being_answered_is_a_conflict() {
    let kiln = Kiln::start().await;
    let key = kiln.key("acme").await;
    let body = job("slow", 3_000);
    // The first request holds its answer until the job ends (Prefer: wait).
    let first = {
        let (http, url, key, body) = (
            kiln.http.clone(),
            kiln.url("/v1/jobs"),
            key.clone(),
            body.clone(),
        );
        tokio::spawn(async move {
            http.post(url)
                .bearer_auth(key)
                .header("Idempotency-Key", "order-1")
                .header("Prefer", "wait=30")
                .json(&body)
                .send()
                .await
                .unwrap()
        })
    };
    // Its job exists once it is committed; the answer is still being held.
    let deadline = std::time::Instant::now() + DEADLINE;
    while job_count(&kiln, &key).await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the first request never committed"
        );
        tokio::task::yield_now().await;
    }
    let second = post(&kiln, &key, "/v1/jobs", "order-1", &body).await;
    assert_eq!(second.status(), 409);
    assert!(second.headers().get("retry-after").is_some());
    assert_eq!(
        second.json::<Value>().await.unwrap()["code"],
        "idempotency_key_in_flight"
    );
    let first = first.await.unwrap();
    assert_eq!(first.status(), 201, "the first ran to its end");
    // Now answered, the same request is replayed.
    let third = post(&kiln, &key, "/v1/jobs", "order-1", &body).await;
    assert_eq!(third.status(), 201);
    assert_eq!(third.headers()["idempotent-replayed"], "true");
    assert_eq!(job_count(&kiln, &key).await, 1);
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn after_the_keeping_time_the_key_is_new_again() {
    let kiln = Kiln::start_with(|c| c.idempotency_keep = std::time::Duration::from_secs(1)).await;
    let key = kiln.key("acme").await;
    let body = job("kept", 0);
    let first: Value = post(&kiln, &key, "/v1/jobs", "order-1", &body)
        .await
        .json()
        .await
        .unwrap();
    // The keeping time is what passes here; there is no event to await instead.
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    let later = post(&kiln, &key, "/v1/jobs", "order-1", &body).await;
    assert_eq!(later.status(), 202);
    assert!(later.headers().get("idempotent-replayed").is_none());
    assert_ne!(later.json::<Value>().await.unwrap()["id"], first["id"]);
    assert_eq!(job_count(&kiln, &key).await, 2);
    kiln.shutdown().await;
}
