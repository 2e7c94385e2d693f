//! The fault suite: the production shape (real `kiln api` and `kiln worker` processes on
//! Postgres, Redis and an S3 server) under one fault each — repeated kill -9 of workers during a
//! 1,000-job run, a Postgres restart, the S3 server down during uploads (waited out without
//! generating again), a flapping webhook receiver, an upstream 429 storm. (A Redis restart is
//! in `scale_out.rs`.) Each run ends with every job succeeded (nothing lost), no job with two
//! terminal transitions, and no event delivered under two webhook ids.

use crate::common::cluster::Cluster;
use crate::common::*;
use kiln_core::testing::PostgresServer;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SUCCEEDED: &str = "SELECT COUNT(*) FROM jobs WHERE status = 'succeeded'";
const LONG: Duration = Duration::from_secs(300);

/// Retry settings for outages that last seconds: attempts enough to outlast them.
fn patient() -> Vec<(&'static str, String)> {
    vec![
        ("KILN_WORKER__MAX_ATTEMPTS", "40".into()),
        ("KILN_WORKER__RETRY_BASE", "100ms".into()),
        ("KILN_WORKER__RETRY_MAX", "500ms".into()),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn repeated_kill_9_of_workers_during_a_thousand_jobs_loses_nothing() {
    let mut cluster = Cluster::start(2).await;
    let ids = cluster.submit_many(1000, 30).await;
    // Three times: once some more jobs have ended, kill a worker mid-run and start it again.
    for (round, done) in [150i64, 400, 650].into_iter().enumerate() {
        cluster.wait_count(SUCCEEDED, done, LONG).await;
        let victim = round % cluster.workers.len();
        cluster.workers[victim].kill9();
        cluster.workers[victim] = KilnProcess::start("worker", cluster.dir.path(), &cluster.env);
    }
    cluster.wait_count(SUCCEEDED, ids.len() as i64, LONG).await;
    cluster.assert_all_succeeded(ids.len()).await;
    cluster.assert_exactly_once().await;
    let lost = cluster
        .scalar("SELECT COUNT(*) FROM attempts WHERE outcome = 'lost'")
        .await;
    assert!(lost >= 1, "the kills caught jobs mid-run");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_restart_mid_run_loses_nothing() {
    let postgres = PostgresServer::start();
    let mut overrides = patient();
    overrides.push(("KILN_DATABASE_URL", postgres.url()));
    let cluster = Cluster::start_with(2, &overrides, |_| {}).await;
    let first = cluster.submit_many(200, 100).await;
    cluster.wait_count(SUCCEEDED, 40, LONG).await;
    let before = cluster.scalar(SUCCEEDED).await;
    assert!(before < first.len() as i64, "the restart comes mid-run");
    // A crash-like stop (no checkpoint, every connection cut), then back on the same port.
    postgres.restart();
    let second = cluster.submit_many(100, 0).await;
    let total = first.len() + second.len();
    cluster.wait_count(SUCCEEDED, total as i64, LONG).await;
    cluster.assert_all_succeeded(total).await;
    cluster.assert_exactly_once().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_s3_server_down_during_uploads_and_back_loses_nothing_and_generates_once() {
    let mut cluster = Cluster::start_with(2, &patient(), |_| {}).await;
    let ids = cluster.submit_many(200, 50).await;
    cluster.wait_count(SUCCEEDED, 30, LONG).await;
    cluster.backends.s3.kill();
    // The outage is the fault: three seconds of a dead store while jobs keep finishing their
    // generation and trying to upload.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = cluster.scalar(SUCCEEDED).await;
    cluster.backends.s3.restart();
    assert!(during < ids.len() as i64, "the outage came mid-run");
    cluster.wait_count(SUCCEEDED, ids.len() as i64, LONG).await;
    cluster.assert_all_succeeded(ids.len()).await;
    cluster.assert_exactly_once().await;
    assert_eq!(
        cluster.backends.s3.object_count(),
        ids.len(),
        "one object per job: failed uploads left nothing behind"
    );
    // The uploads were waited out with the outputs in hand: no job generated (and paid) twice.
    assert_eq!(
        cluster.scalar("SELECT COUNT(*) FROM attempts").await,
        ids.len() as i64,
        "one attempt per job"
    );
}

/// What a receiver saw: per webhook-id, the event type and job.
type Seen = Arc<Mutex<Vec<(String, String, String)>>>;

/// A flapping receiver: it answers 500 to the first two tries of every event (and to every
/// other request besides), recording the events it accepts.
async fn flapping_receiver() -> (String, Seen, Arc<AtomicUsize>) {
    let seen: Seen = Arc::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let tries: Arc<Mutex<std::collections::HashMap<String, u32>>> = Arc::default();
    let (record, count) = (seen.clone(), calls.clone());
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::Json<Value>| {
                let (record, count, tries) = (record.clone(), count.clone(), tries.clone());
                async move {
                    let id = headers["webhook-id"].to_str().unwrap().to_owned();
                    let nth = {
                        let mut tries = tries.lock().unwrap();
                        let n = tries.entry(id.clone()).or_default();
                        *n += 1;
                        *n
                    };
                    let flap = count.fetch_add(1, Ordering::SeqCst) % 2 == 0;
                    if nth <= 2 || (flap && nth <= 4) {
                        return axum::http::StatusCode::INTERNAL_SERVER_ERROR;
                    }
                    let kind = body["type"].as_str().unwrap().to_owned();
                    let job = body["data"]["id"].as_str().unwrap().to_owned();
                    record.lock().unwrap().push((id, kind, job));
                    axum::http::StatusCode::NO_CONTENT
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen, calls)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flapping_webhook_receiver_gets_every_event_under_one_id() {
    let (hook, seen, calls) = flapping_receiver().await;
    let cluster = Cluster::start_with(2, &[], |dir| {
        std::fs::write(
            dir.join("kiln.toml"),
            "[webhooks]\nschedule = [\"0s\", \"100ms\", \"200ms\", \"300ms\", \"500ms\", \"1s\", \"1s\", \"1s\"]\npoll = \"100ms\"\n\n[ssrf]\nloopback_webhooks = true\n",
        )
        .unwrap();
    })
    .await;
    let ids = cluster
        .submit_bodies(100, |i| {
            json!({"model": "demo/image", "input": {"prompt": format!("hooked {i}"), "width": 16, "height": 16},
                   "webhook": hook, "webhook_events": ["job.succeeded"]})
        })
        .await;
    cluster.wait_count(SUCCEEDED, ids.len() as i64, LONG).await;
    cluster
        .wait_count(
            "SELECT COUNT(*) FROM webhook_deliveries WHERE status = 'delivered'",
            ids.len() as i64,
            LONG,
        )
        .await;
    cluster.assert_all_succeeded(ids.len()).await;
    cluster.assert_exactly_once().await;
    let seen = seen.lock().unwrap().clone();
    assert!(
        calls.load(Ordering::SeqCst) > seen.len(),
        "the receiver did flap"
    );
    // Every job's event arrived, each under exactly one webhook id.
    let mut per_job: std::collections::HashMap<&str, std::collections::HashSet<&str>> =
        Default::default();
    for (id, kind, job) in &seen {
        assert_eq!(kind, "job.succeeded");
        per_job.entry(job.as_str()).or_default().insert(id.as_str());
    }
    assert_eq!(per_job.len(), ids.len());
    assert!(
        per_job.values().all(|ids| ids.len() == 1),
        "an event under two ids"
    );
}

/// An OpenAI-compatible images upstream in a 429 storm: it refuses the first `storm` calls with
/// `429` and `Retry-After: 1`, then draws.
async fn storming_upstream(storm: usize) -> (String, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let mut png = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_pixel(16, 16, image::Rgb([200, 80, 40]))
        .write_to(&mut png, image::ImageFormat::Png)
        .unwrap();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(png.into_inner());
    let app = axum::Router::new().route(
        "/v1/images/generations",
        axum::routing::post(move || {
            let (counter, b64) = (counter.clone(), b64.clone());
            async move {
                use axum::response::IntoResponse;
                if counter.fetch_add(1, Ordering::SeqCst) < storm {
                    return (
                        axum::http::StatusCode::TOO_MANY_REQUESTS,
                        [("retry-after", "1")],
                        axum::Json(json!({"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}})),
                    )
                        .into_response();
                }
                axum::Json(json!({"created": 1, "data": [{"b64_json": b64}]})).into_response()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, calls)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_429_storm_is_waited_out_and_loses_nothing() {
    let (base, calls) = storming_upstream(300).await;
    let config = format!(
        "[[providers]]\nname = \"storm\"\nkind = \"openai\"\nbase_url = \"{base}\"\n\n\
         [[models]]\nname = \"acme/img\"\nroutes = [{{ provider = \"storm\", model = \"img-1\", max_attempts = 40 }}]\n"
    );
    let mut overrides = patient();
    overrides.push(("KILN_WORKER__RETRY_MAX", "2s".into()));
    let cluster = Cluster::start_with(2, &overrides, |dir| {
        std::fs::write(dir.join("kiln.toml"), config).unwrap();
    })
    .await;
    let ids = cluster
        .submit_bodies(100, |i| {
            json!({"model": "acme/img", "input": {"prompt": format!("storm {i}"), "width": 16, "height": 16}})
        })
        .await;
    cluster.wait_count(SUCCEEDED, ids.len() as i64, LONG).await;
    cluster.assert_all_succeeded(ids.len()).await;
    cluster.assert_exactly_once().await;
    assert!(
        calls.load(Ordering::SeqCst) > 300,
        "the storm was met and outlasted"
    );
    let refused = cluster
        .scalar("SELECT COUNT(*) FROM attempts WHERE error_code = 'upstream_rate_limited'")
        .await;
    assert!(refused >= 100, "{refused}");
}
