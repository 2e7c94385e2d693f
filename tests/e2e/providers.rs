//! Upstream providers behind route chains, against a fault-injecting fake that speaks the
//! OpenAI images protocol (`POST /v1/images/generations`): 429 with `Retry-After` is honoured,
//! 500s retry then fall back, a hang hits the route's timeout, a malformed answer fails cleanly,
//! a content-policy refusal fails without fallback, and when every route fails the job fails
//! with all its attempts shown.

use crate::common::*;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use base64::Engine;
use kiln_core::routes::{ModelConfig, ProviderConfig, ProviderKind, RouteConfig};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Debug)]
enum Behaviour {
    Image,
    /// An image after a pause, so concurrent requests overlap.
    SlowImage,
    Status(u16, Option<u64>, &'static str),
    Hang,
    Malformed,
}

#[derive(Default)]
struct Script {
    next: VecDeque<Behaviour>,
    seen_keys: Vec<String>,
    /// When each request arrived.
    arrivals: Vec<std::time::Instant>,
    in_flight: usize,
    max_in_flight: usize,
}

impl Script {
    fn replace(&mut self, behaviours: Vec<Behaviour>) {
        self.next = behaviours.into();
    }
}

/// The fake upstream; answers each request with the next scripted behaviour (the last one
/// repeats).
async fn fake_upstream(script: Vec<Behaviour>) -> (String, Arc<Mutex<Script>>) {
    let state = Arc::new(Mutex::new(Script {
        next: script.into(),
        ..Script::default()
    }));
    let shared = state.clone();
    let app = axum::Router::new().route(
        "/v1/images/generations",
        post(move |headers: HeaderMap, body: axum::Json<Value>| {
            let state = shared.clone();
            async move {
                assert!(body["prompt"].is_string() && body["model"].is_string() && body["size"].is_string());
                let behaviour = {
                    let mut s = state.lock().unwrap();
                    let key = headers.get("idempotency-key").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
                    s.seen_keys.push(key);
                    s.arrivals.push(std::time::Instant::now());
                    if s.next.len() > 1 { s.next.pop_front().unwrap() } else { s.next.front().cloned().unwrap() }
                };
                match behaviour {
                    Behaviour::SlowImage => {
                        {
                            let mut s = state.lock().unwrap();
                            s.in_flight += 1;
                            s.max_in_flight = s.max_in_flight.max(s.in_flight);
                        }
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        state.lock().unwrap().in_flight -= 1;
                        let b64 = base64::engine::general_purpose::STANDARD.encode(tiny_png());
                        axum::Json(json!({"created": 1, "data": [{"b64_json": b64}]})).into_response()
                    }
                    Behaviour::Image => {
                        let png = tiny_png();
                        let b64 = base64::engine::general_purpose::STANDARD.encode(png);
                        axum::Json(json!({"created": 1, "data": [{"b64_json": b64}]})).into_response()
                    }
                    Behaviour::Status(code, retry_after, error_code) => {
                        let mut headers = HeaderMap::new();
                        if let Some(s) = retry_after {
                            headers.insert("retry-after", s.to_string().parse().unwrap());
                        }
                        let body = json!({"error": {"message": "scripted failure", "type": "scripted", "code": error_code}});
                        (StatusCode::from_u16(code).unwrap(), headers, axum::Json(body)).into_response()
                    }
                    Behaviour::Hang => {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        StatusCode::OK.into_response()
                    }
                    Behaviour::Malformed => (StatusCode::OK, "{\"data\": [{\"url\": ").into_response(),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, state)
}

fn tiny_png() -> Vec<u8> {
    let img = image::RgbaImage::from_pixel(4, 4, image::Rgba([200, 100, 50, 255]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn route(
    provider: &str,
    model: &str,
    timeout_ms: Option<u64>,
    max_attempts: Option<u32>,
) -> RouteConfig {
    RouteConfig {
        provider: provider.into(),
        model: model.into(),
        timeout: timeout_ms.map(Duration::from_millis),
        max_attempts,
        ..Default::default()
    }
}

/// Kiln with the fake as provider `fake` and a model `acme/img` on `routes`.
async fn kiln_with(base: &str, routes: Vec<RouteConfig>) -> Kiln {
    let base = url::Url::parse(base).unwrap();
    Kiln::start_with(move |c| {
        c.providers = vec![ProviderConfig {
            name: "fake".into(),
            kind: ProviderKind::Openai,
            base_url: base,
            api_key_env: None,
            api_key_file: None,
            max_concurrency: None,
            rate_limit: None,
            capacity_wait: Duration::from_secs(60),
            poll_interval: Duration::from_millis(100),
            prefer_wait: None,
            circuit_failures: 2,
            circuit_cooldown: Duration::from_millis(1500),
        }];
        c.models = vec![ModelConfig {
            name: "acme/img".into(),
            description: String::new(),
            params: vec![],
            fallback_on_refusal: false,
            routes,
        }];
        c.worker.retry_max = Duration::from_secs(5);
    })
    .await
}

async fn run_job(kiln: &Kiln) -> Value {
    let key = kiln.key("acme").await;
    let id = kiln
        .submit_ok(
            &key,
            json!({"model": "acme/img", "input": {"prompt": "a kiln", "width": 64, "height": 64}}),
        )
        .await;
    kiln.wait_terminal(&key, &id).await
}

fn attempts(job: &Value) -> Vec<(String, String, String)> {
    job["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["route"].as_str().unwrap_or_default().to_owned(),
                a["outcome"].as_str().unwrap_or_default().to_owned(),
                a["error"]["code"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_429_with_retry_after_is_honoured() {
    let (base, script) = fake_upstream(vec![
        Behaviour::Status(429, Some(1), "rate_limit_exceeded"),
        Behaviour::Image,
    ])
    .await;
    let kiln = kiln_with(&base, vec![route("fake", "img-1", None, Some(3))]).await;
    let job = run_job(&kiln).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    assert_eq!(
        attempts(&job),
        vec![
            (
                "fake:img-1".into(),
                "failed".into(),
                "upstream_rate_limited".into()
            ),
            ("fake:img-1".into(), "succeeded".into(), String::new()),
        ]
    );
    assert_eq!(job["attempts"][0]["error_class"], "retry");
    let failed_at: chrono::DateTime<chrono::Utc> = job["attempts"][0]["finished_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let retried_at: chrono::DateTime<chrono::Utc> = job["attempts"][1]["started_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        retried_at - failed_at >= chrono::Duration::milliseconds(1000),
        "Retry-After: 1 was not honoured"
    );
    // Each attempt carried its own stable id upstream as the idempotency key.
    let keys = script.lock().unwrap().seen_keys.clone();
    let ids: Vec<String> = job["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(keys, ids);
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn server_errors_retry_then_fall_back_to_the_next_route() {
    let (base, _) = fake_upstream(vec![Behaviour::Status(500, None, "server_error")]).await;
    let kiln = kiln_with(
        &base,
        vec![
            route("fake", "img-1", None, Some(2)),
            route("demo", "demo/image", None, None),
        ],
    )
    .await;
    let job = run_job(&kiln).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    assert_eq!(
        attempts(&job),
        vec![
            (
                "fake:img-1".into(),
                "failed".into(),
                "upstream_error".into()
            ),
            (
                "fake:img-1".into(),
                "failed".into(),
                "upstream_error".into()
            ),
            ("demo:demo/image".into(), "succeeded".into(), String::new()),
        ]
    );
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unauthorized_provider_falls_back_at_once_and_a_policy_refusal_does_not() {
    let (base, _) = fake_upstream(vec![Behaviour::Status(401, None, "invalid_api_key")]).await;
    let kiln = kiln_with(
        &base,
        vec![
            route("fake", "img-1", None, Some(3)),
            route("demo", "demo/image", None, None),
        ],
    )
    .await;
    let job = run_job(&kiln).await;
    assert_eq!(job["status"], "succeeded");
    assert_eq!(attempts(&job)[0].2, "upstream_unauthorized");
    assert_eq!(job["attempts"][0]["error_class"], "fall_back");
    assert_eq!(attempts(&job).len(), 2, "no retries on a fall-back failure");
    kiln.shutdown().await;

    let (base, _) = fake_upstream(vec![Behaviour::Status(
        400,
        None,
        "content_policy_violation",
    )])
    .await;
    let kiln = kiln_with(
        &base,
        vec![
            route("fake", "img-1", None, Some(3)),
            route("demo", "demo/image", None, None),
        ],
    )
    .await;
    let job = run_job(&kiln).await;
    assert_eq!(job["status"], "failed");
    assert_eq!(job["error"]["code"], "content_policy_violation");
    assert_eq!(
        attempts(&job).len(),
        1,
        "a policy refusal neither retries nor falls back"
    );
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hang_hits_the_route_timeout_and_a_malformed_answer_fails_cleanly() {
    let (base, _) = fake_upstream(vec![Behaviour::Hang]).await;
    let kiln = kiln_with(&base, vec![route("fake", "img-1", Some(300), Some(1))]).await;
    let job = run_job(&kiln).await;
    assert_eq!(job["status"], "failed");
    assert_eq!(job["error"]["code"], "upstream_timeout");
    kiln.shutdown().await;

    let (base, _) = fake_upstream(vec![Behaviour::Malformed]).await;
    let kiln = kiln_with(&base, vec![route("fake", "img-1", None, Some(2))]).await;
    let job = run_job(&kiln).await;
    assert_eq!(job["status"], "failed");
    assert_eq!(job["error"]["code"], "upstream_malformed_response");
    assert_eq!(attempts(&job).len(), 2);
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn when_every_route_fails_the_job_fails_with_all_attempts_shown() {
    let (base, _) = fake_upstream(vec![Behaviour::Status(503, None, "overloaded")]).await;
    let kiln = kiln_with(
        &base,
        vec![
            route("fake", "img-1", None, Some(2)),
            route("fake", "img-2", None, Some(1)),
        ],
    )
    .await;
    let job = run_job(&kiln).await;
    assert_eq!(job["status"], "failed");
    assert_eq!(
        attempts(&job)
            .iter()
            .map(|a| a.0.as_str())
            .collect::<Vec<_>>(),
        vec!["fake:img-1", "fake:img-1", "fake:img-2"]
    );
    assert!(
        job["error"]["message"]
            .as_str()
            .unwrap()
            .contains("every route failed"),
        "{job:#}"
    );
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_circuit_opens_skips_the_provider_and_probes_after_its_cooldown() {
    let (base, script) = fake_upstream(vec![Behaviour::Status(500, None, "server_error")]).await;
    let kiln = kiln_with(
        &base,
        vec![
            route("fake", "img-1", None, Some(1)),
            route("demo", "demo/image", None, None),
        ],
    )
    .await;
    // Two failures (one per job) open the circuit (circuit_failures = 2).
    for _ in 0..2 {
        let job = run_job(&kiln).await;
        assert_eq!(attempts(&job)[0].2, "upstream_error");
        assert_eq!(job["status"], "succeeded", "the demo route takes over");
    }
    assert_eq!(script.lock().unwrap().seen_keys.len(), 2);
    // Open: the provider is skipped without a request, the job falls back at once.
    let job = run_job(&kiln).await;
    assert_eq!(attempts(&job)[0].2, "circuit_open", "{job:#}");
    assert_eq!(job["attempts"][0]["error_class"], "fall_back");
    assert_eq!(job["status"], "succeeded");
    assert_eq!(
        script.lock().unwrap().seen_keys.len(),
        2,
        "an open circuit sends nothing upstream"
    );
    assert_eq!(
        circuit_gauge(&kiln, "fake").await,
        Some(1.0),
        "metrics show it open"
    );
    // After the cooldown one probe goes through; the upstream has recovered, the circuit closes.
    script.lock().unwrap().replace(vec![Behaviour::Image]);
    tokio::time::sleep(Duration::from_millis(1600)).await; // the cooldown is the behaviour under test
    let job = run_job(&kiln).await;
    assert_eq!(
        attempts(&job),
        vec![("fake:img-1".into(), "succeeded".into(), String::new())]
    );
    assert_eq!(script.lock().unwrap().seen_keys.len(), 3);
    assert_eq!(
        circuit_gauge(&kiln, "fake").await,
        Some(0.0),
        "and closed again"
    );
    kiln.shutdown().await;
}

/// A rate limit of 2 starts per second holds however many workers slots are free: no window of
/// a second ever sees a third request, and every job still runs.
#[tokio::test(flavor = "multi_thread")]
async fn a_rate_limit_spaces_the_calls_it_starts() {
    let (base, script) = fake_upstream(vec![Behaviour::Image]).await;
    let base = url::Url::parse(&base).unwrap();
    let kiln = Kiln::start_with(|c| {
        c.worker.concurrency = 6;
        c.providers = vec![ProviderConfig {
            name: "fake".into(),
            kind: ProviderKind::Openai,
            base_url: base,
            api_key_env: None,
            api_key_file: None,
            max_concurrency: None,
            rate_limit: Some(kiln_core::routes::RateLimit {
                requests: 2,
                per: Duration::from_secs(1),
            }),
            capacity_wait: Duration::from_secs(60),
            poll_interval: Duration::from_millis(100),
            prefer_wait: None,
            circuit_failures: 5,
            circuit_cooldown: Duration::from_secs(30),
        }];
        c.models = vec![ModelConfig {
            name: "acme/img".into(),
            description: String::new(),
            params: vec![],
            fallback_on_refusal: false,
            routes: vec![route("fake", "img-1", None, Some(1))],
        }];
    })
    .await;
    let key = kiln.key("acme").await;
    let mut ids = vec![];
    for _ in 0..6 {
        let body =
            json!({"model": "acme/img", "input": {"prompt": "a kiln", "width": 64, "height": 64}});
        ids.push(kiln.submit_ok(&key, body).await);
    }
    for id in &ids {
        let job = kiln.wait_terminal(&key, id).await;
        assert_eq!(job["status"], "succeeded", "{job:#}");
        assert_eq!(
            job["attempts"].as_array().unwrap().len(),
            1,
            "waiting is not failing"
        );
    }
    let arrivals = script.lock().unwrap().arrivals.clone();
    assert_eq!(arrivals.len(), 6);
    for pair in arrivals.windows(3) {
        // The third start of any window waits for the first to leave it (less the moment a
        // request takes from Kiln's count to the fake's arrival).
        let spread = pair[2].duration_since(pair[0]);
        assert!(
            spread >= Duration::from_millis(900),
            "three starts within {spread:?}"
        );
    }
    kiln.shutdown().await;
}

/// With a cap of 2 and three workers (each its own Kiln on one Postgres and one Redis), the
/// upstream never sees more than 2 requests at once, and every job still runs.
#[tokio::test(flavor = "multi_thread")]
async fn a_concurrency_cap_holds_across_workers() {
    let (base, script) = fake_upstream(vec![Behaviour::SlowImage]).await;
    let backends = Backends::start().await;
    let base = url::Url::parse(&base).unwrap();
    let mut kilns = vec![];
    for _ in 0..3 {
        let base = base.clone();
        kilns.push(
            Kiln::start_with(|c| {
                backends.apply(c);
                c.worker.concurrency = 3;
                c.providers = vec![ProviderConfig {
                    name: "fake".into(),
                    kind: ProviderKind::Openai,
                    base_url: base,
                    api_key_env: None,
                    api_key_file: None,
                    max_concurrency: Some(2),
                    rate_limit: None,
                    capacity_wait: Duration::from_secs(60),
                    poll_interval: Duration::from_millis(100),
                    prefer_wait: None,
                    circuit_failures: 5,
                    circuit_cooldown: Duration::from_secs(30),
                }];
                c.models = vec![ModelConfig {
                    name: "acme/img".into(),
                    description: String::new(),
                    params: vec![],
                    fallback_on_refusal: false,
                    routes: vec![route("fake", "img-1", None, Some(1))],
                }];
            })
            .await,
        );
    }
    let key = kilns[0].key("acme").await;
    let mut ids = vec![];
    for _ in 0..9 {
        let body =
            json!({"model": "acme/img", "input": {"prompt": "a kiln", "width": 64, "height": 64}});
        ids.push(kilns[0].submit_ok(&key, body).await);
    }
    let mut workers = std::collections::HashSet::new();
    for id in &ids {
        let job = kilns[0].wait_terminal(&key, id).await;
        assert_eq!(job["status"], "succeeded", "{job:#}");
        // Which worker ran an attempt is the operator's to know (the ledger), not the tenant's.
        assert!(job["attempts"][0].get("worker").is_none(), "{job:#}");
        let row = kilns[0]
            .running
            .as_ref()
            .unwrap()
            .ledger
            .job_by_id(id.parse().unwrap())
            .await
            .unwrap()
            .unwrap();
        workers.insert(row.attempts[0].worker.clone());
    }
    let (calls, max_in_flight) = {
        let s = script.lock().unwrap();
        (s.seen_keys.len(), s.max_in_flight)
    };
    assert_eq!(calls, 9, "each job called the upstream once");
    assert!(
        max_in_flight <= 2,
        "the upstream saw {max_in_flight} requests at once"
    );
    assert_eq!(max_in_flight, 2, "the cap is used, not just respected");
    assert!(
        workers.len() >= 2,
        "the jobs spread over the workers: {workers:?}"
    );
    for k in kilns {
        k.shutdown().await;
    }
}

/// `kiln_circuit_open{provider}` as `/metrics` shows it.
async fn circuit_gauge(kiln: &Kiln, provider: &str) -> Option<f64> {
    let text = kiln
        .http
        .get(kiln.metrics_url())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prefix = format!("kiln_circuit_open{{provider=\"{provider}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .map(|v| v.trim().parse().unwrap())
}
