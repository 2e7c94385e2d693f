//! Protocol tests of the Replicate, fal and ComfyUI adapters against fakes built from each
//! provider's documented requests and answers (paths, auth headers, status vocabularies, output
//! shapes). A real provider cannot be reached from here, and a fake is also the only way to make
//! one fail on cue. Each fake records what it was asked, so the tests check what Kiln sent
//! (auth, inputs, cancels) as well as what Kiln made of the answers.

use crate::common::*;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use kiln_core::routes::{CostModel, ModelConfig, ProviderConfig, ProviderKind, RouteConfig};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a fake was asked, and the state of the work it holds.
#[derive(Default)]
struct Upstream {
    base: String,
    /// Authorization headers of every call.
    auth: Vec<String>,
    /// Inputs (or workflows) of every create call.
    created: Vec<Value>,
    /// Polls per work item: the fakes advance one state per poll.
    polls: HashMap<String, u32>,
    canceled: Vec<String>,
    /// Extra calls worth asserting (`interrupt`, `queue delete`).
    calls: Vec<String>,
    throttled_once: bool,
}

type Shared = Arc<Mutex<Upstream>>;

async fn serve(app: Router<Shared>) -> (String, Shared) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/", listener.local_addr().unwrap());
    let state: Shared = Arc::new(Mutex::new(Upstream {
        base: base.clone(),
        ..Upstream::default()
    }));
    let app = app.with_state(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, state)
}

fn png(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(width, height, image::Rgb([30, 90, 200]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// `GET /files/{w}x{h}.png`, where the fakes point their output URLs.
async fn file(Path(name): Path<String>) -> Response {
    let size = name.trim_end_matches(".png");
    let (w, h) = size.split_once('x').unwrap();
    (
        [("content-type", "image/png")],
        png(w.parse().unwrap(), h.parse().unwrap()),
    )
        .into_response()
}

fn record_auth(state: &Shared, headers: &HeaderMap) {
    let auth = headers
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    state.lock().unwrap().auth.push(auth);
}

mod fakes;
mod fal_and_comfyui;
mod replicate;

use fakes::*;

// --- Kiln wiring ------------------------------------------------------------------------------

/// Secret files holding provider keys, as an operator mounts them.
struct Secrets(tempfile::TempDir);

impl Secrets {
    fn new() -> Secrets {
        Secrets(tempfile::tempdir().unwrap())
    }

    fn file(&self, name: &str, key: &str) -> std::path::PathBuf {
        let path = self.0.path().join(name);
        std::fs::write(&path, format!("{key}\n")).unwrap();
        path
    }
}

fn provider(
    name: &str,
    kind: ProviderKind,
    base: &str,
    key_file: Option<std::path::PathBuf>,
) -> ProviderConfig {
    ProviderConfig {
        name: name.into(),
        kind,
        base_url: base.parse().unwrap(),
        api_key_env: None,
        api_key_file: key_file,
        max_concurrency: None,
        rate_limit: None,
        capacity_wait: Duration::from_secs(60),
        poll_interval: Duration::from_millis(50),
        prefer_wait: None,
        circuit_failures: 5,
        circuit_cooldown: Duration::from_secs(30),
    }
}

fn route(provider: &str, model: &str) -> RouteConfig {
    RouteConfig {
        provider: provider.into(),
        model: model.into(),
        max_attempts: Some(2),
        ..Default::default()
    }
}

async fn kiln(providers: Vec<ProviderConfig>, routes: Vec<RouteConfig>) -> Kiln {
    kiln_adjusted(providers, routes, |_| {}).await
}

async fn kiln_adjusted(
    providers: Vec<ProviderConfig>,
    routes: Vec<RouteConfig>,
    adjust: impl FnOnce(&mut kiln::config::Config),
) -> Kiln {
    Kiln::start_with(move |c| {
        adjust(c);
        c.providers = providers;
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

async fn run(kiln: &Kiln, key: &str, prompt: &str) -> Value {
    let body = json!({"model": "acme/img", "input": {"prompt": prompt, "width": 48, "height": 40}});
    let id = kiln.submit_ok(key, body).await;
    kiln.wait_terminal(key, &id).await
}

async fn job_output_size(kiln: &Kiln, job: &Value) -> (u32, u32) {
    output_size(&kiln.http, job["outputs"][0]["url"].as_str().unwrap()).await
}

/// Submits a job that never finishes upstream, waits until the upstream has it, cancels it.
async fn cancel_running(kiln: &Kiln, key: &str, upstream: &Shared) -> Value {
    let body = json!({"model": "acme/img", "input": {"prompt": "slow", "width": 48, "height": 40}});
    let id = kiln.submit_ok(key, body).await;
    kiln.wait_for(key, &id, "attached upstream", |j| {
        j["attempts"][0]["upstream_id"].is_string()
    })
    .await;
    let res = kiln
        .http
        .post(format!("{}/v1/jobs/{id}/cancel", kiln.base))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let deadline = std::time::Instant::now() + DEADLINE;
    while upstream.lock().unwrap().canceled.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the cancel never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    kiln.get_job(key, &id).await
}
