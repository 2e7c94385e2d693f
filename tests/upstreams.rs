//! Protocol tests of the Replicate, fal and ComfyUI adapters against fakes built from each
//! provider's documented requests and answers (paths, auth headers, status vocabularies, output
//! shapes). A real provider cannot be reached from here, and a fake is also the only way to make
//! one fail on cue. Each fake records what it was asked, so the tests check what Kiln sent
//! (auth, inputs, cancels) as well as what Kiln made of the answers.

mod common;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use common::*;
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

// --- Replicate ------------------------------------------------------------------------------

/// The prediction object as Replicate documents it, at the state its polls have reached. The
/// prompt scripts the run: `slow` never finishes, `oom` fails, `nsfw` is flagged, anything else
/// succeeds on the third look.
fn replicate_prediction(s: &Upstream, id: &str, input: &Value) -> Value {
    let polls = s.polls.get(id).copied().unwrap_or(0);
    let prompt = input["prompt"].as_str().unwrap_or_default();
    let canceled = s.canceled.iter().any(|c| c == id);
    let (status, output, error) = match (prompt, polls) {
        _ if canceled => ("canceled", Value::Null, Value::Null),
        (_, 0) => ("starting", Value::Null, Value::Null),
        ("slow", _) | (_, 1) => ("processing", Value::Null, Value::Null),
        ("oom", _) => ("failed", Value::Null, json!("CUDA out of memory")),
        ("nsfw", _) => (
            "failed",
            Value::Null,
            json!("NSFW content detected. Try running it again, or try a different prompt."),
        ),
        // A misbehaving upstream names an output wherever the prompt says.
        (p, _) if p.starts_with("output-at ") => (
            "succeeded",
            json!([p.trim_start_matches("output-at ")]),
            Value::Null,
        ),
        _ => {
            let (w, h) = (
                input["width"].as_u64().unwrap(),
                input["height"].as_u64().unwrap(),
            );
            (
                "succeeded",
                json!([format!("{}files/{w}x{h}.png", s.base)]),
                Value::Null,
            )
        }
    };
    json!({
        "id": id,
        "model": "acme/painter",
        "version": "5c7d5dc6dd8bf75c1acaa8565735e7986bc5b66206b55cca93cb72c9bf15ccaa",
        "input": input,
        "logs": replicate_logs(status, polls),
        "output": output,
        "error": error,
        "status": status,
        "created_at": "2026-11-25T00:00:00.000Z",
        "metrics": if status == "succeeded" { json!({"predict_time": 2.5}) } else { json!({}) },
        "urls": {
            "get": format!("{}v1/predictions/{id}", s.base),
            "cancel": format!("{}v1/predictions/{id}/cancel", s.base),
            "web": format!("https://replicate.com/p/{id}"),
        },
    })
}

/// What a diffusion model logs on Replicate: its sampling loop as tqdm bars, one step per poll.
fn replicate_logs(status: &str, polls: u32) -> String {
    if status != "processing" {
        return String::new();
    }
    let steps = polls.min(9);
    let mut logs = String::from("Using seed: 42\n");
    for step in 0..=steps {
        let bar = format!("{:<10}", "#".repeat(step as usize));
        logs.push_str(&format!(
            "{:3}%|{bar}| {step}/10 [00:0{step}<00:10, 1.00it/s]\n",
            step * 10
        ));
    }
    logs
}

async fn fake_replicate() -> (String, Shared) {
    async fn create(
        State(state): State<Shared>,
        Path((owner, name)): Path<(String, String)>,
        headers: HeaderMap,
        Json(body): Json<Value>,
    ) -> Response {
        record_auth(&state, &headers);
        assert_eq!((owner.as_str(), name.as_str()), ("acme", "painter"));
        let mut s = state.lock().unwrap();
        if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer r8_test") {
            return (StatusCode::UNAUTHORIZED, Json(json!({"title": "Unauthenticated", "detail": "You did not pass a valid authentication token", "status": 401}))).into_response();
        }
        if body["input"]["prompt"] == "throttled" && !s.throttled_once {
            s.throttled_once = true;
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "1")],
                Json(json!({"title": "Request was throttled", "detail": "Request was throttled. Expected available in 1 second.", "status": 429})),
            )
                .into_response();
        }
        s.created.push(body["input"].clone());
        let id = format!("rp{}", s.created.len());
        (
            StatusCode::CREATED,
            Json(replicate_prediction(&s, &id, &body["input"])),
        )
            .into_response()
    }
    async fn fetch(
        State(state): State<Shared>,
        Path(id): Path<String>,
        headers: HeaderMap,
    ) -> Response {
        record_auth(&state, &headers);
        let mut s = state.lock().unwrap();
        let n: usize = id.trim_start_matches("rp").parse().unwrap();
        let input = s.created[n - 1].clone();
        *s.polls.entry(id.clone()).or_default() += 1;
        Json(replicate_prediction(&s, &id, &input)).into_response()
    }
    async fn cancel(State(state): State<Shared>, Path(id): Path<String>) -> Response {
        let mut s = state.lock().unwrap();
        s.canceled.push(id.clone());
        let n: usize = id.trim_start_matches("rp").parse().unwrap();
        let input = s.created[n - 1].clone();
        Json(replicate_prediction(&s, &id, &input)).into_response()
    }
    serve(
        Router::new()
            .route("/v1/models/{owner}/{name}/predictions", post(create))
            .route("/v1/predictions/{id}", get(fetch))
            .route("/v1/predictions/{id}/cancel", post(cancel))
            .route("/files/{name}", get(file)),
    )
    .await
}

// --- fal ----------------------------------------------------------------------------------

async fn fake_fal() -> (String, Shared) {
    fn urls(s: &Upstream, id: &str) -> Value {
        let app = format!("{}fal-ai/flux", s.base);
        json!({
            "request_id": id,
            "response_url": format!("{app}/requests/{id}"),
            "status_url": format!("{app}/requests/{id}/status"),
            "cancel_url": format!("{app}/requests/{id}/cancel"),
            "queue_position": 0,
        })
    }
    fn input_of(s: &Upstream, id: &str) -> Value {
        let n: usize = id.trim_start_matches("fr").parse().unwrap();
        s.created[n - 1].clone()
    }
    async fn submit(
        State(state): State<Shared>,
        headers: HeaderMap,
        Json(body): Json<Value>,
    ) -> Response {
        record_auth(&state, &headers);
        let mut s = state.lock().unwrap();
        if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Key fal_test") {
            return (
                StatusCode::UNAUTHORIZED,
                Json(json!({"detail": "Unauthorized"})),
            )
                .into_response();
        }
        s.created.push(body);
        let id = format!("fr{}", s.created.len());
        Json(urls(&s, &id)).into_response()
    }
    async fn status(State(state): State<Shared>, Path(id): Path<String>) -> Response {
        let mut s = state.lock().unwrap();
        let polls = {
            let p = s.polls.entry(id.clone()).or_default();
            *p += 1;
            *p
        };
        let slow = input_of(&s, &id)["prompt"] == "slow";
        let status = match polls {
            _ if s.canceled.contains(&id) => "COMPLETED",
            1 => "IN_QUEUE",
            2 => "IN_PROGRESS",
            _ if slow => "IN_PROGRESS",
            _ => "COMPLETED",
        };
        let mut body = urls(&s, &id);
        body["status"] = status.into();
        Json(body).into_response()
    }
    async fn result(State(state): State<Shared>, Path(id): Path<String>) -> Response {
        let s = state.lock().unwrap();
        let input = input_of(&s, &id);
        if input["prompt"] == "rejected" {
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({"detail": [{"loc": ["body", "prompt"], "msg": "prompt is not allowed", "type": "value_error"}]})),
            )
                .into_response();
        }
        let (w, h) = (
            input["width"].as_u64().unwrap(),
            input["height"].as_u64().unwrap(),
        );
        Json(json!({
            "images": [{"url": format!("{}files/{w}x{h}.png", s.base), "width": w, "height": h, "content_type": "image/png"}],
            "timings": {"inference": 1.25},
            "seed": 42,
            "has_nsfw_concepts": [false],
            "prompt": input["prompt"],
        }))
        .into_response()
    }
    async fn cancel(State(state): State<Shared>, Path(id): Path<String>) -> Response {
        state.lock().unwrap().canceled.push(id);
        (
            StatusCode::ACCEPTED,
            Json(json!({"status": "CANCELLATION_REQUESTED"})),
        )
            .into_response()
    }
    serve(
        Router::new()
            .route("/fal-ai/flux/dev", post(submit))
            .route("/fal-ai/flux/requests/{id}/status", get(status))
            .route("/fal-ai/flux/requests/{id}", get(result))
            .route("/fal-ai/flux/requests/{id}/cancel", put(cancel))
            .route("/files/{name}", get(file)),
    )
    .await
}

// --- ComfyUI --------------------------------------------------------------------------------

/// A text-to-image workflow in ComfyUI's API format, trimmed to the nodes the fake reads.
const WORKFLOW: &str = r#"{
  "3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 20, "model": ["4", 0], "positive": ["6", 0], "latent_image": ["5", 0]}},
  "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
  "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
  "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "placeholder", "clip": ["4", 1]}},
  "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "kiln", "images": ["8", 0]}}
}"#;

async fn fake_comfyui() -> (String, Shared) {
    async fn prompt(State(state): State<Shared>, Json(body): Json<Value>) -> Response {
        let mut s = state.lock().unwrap();
        let workflow = &body["prompt"];
        if workflow["4"]["inputs"]["ckpt_name"] == "missing.safetensors" {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({
                    "error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation", "details": "", "extra_info": {}},
                    "node_errors": {"4": {"errors": [{"type": "value_not_in_list", "message": "Value not in list", "details": "ckpt_name: 'missing.safetensors' not in []"}], "class_type": "CheckpointLoaderSimple"}},
                })),
            )
                .into_response();
        }
        let id = body["prompt_id"]
            .as_str()
            .expect("Kiln chooses the prompt id")
            .to_owned();
        s.created.push(json!({"id": id, "workflow": workflow}));
        let number = s.created.len();
        Json(json!({"prompt_id": id, "number": number, "node_errors": {}})).into_response()
    }
    async fn history(State(state): State<Shared>, Path(id): Path<String>) -> Response {
        let mut s = state.lock().unwrap();
        let polls = {
            let p = s.polls.entry(id.clone()).or_default();
            *p += 1;
            *p
        };
        let workflow = s
            .created
            .iter()
            .find(|c| c["id"] == id.as_str())
            .map(|c| c["workflow"].clone())
            .unwrap();
        let text = workflow["6"]["inputs"]["text"].as_str().unwrap_or_default();
        if polls < 2 || text == "slow" {
            return Json(json!({})).into_response();
        }
        let (w, h) = (
            &workflow["5"]["inputs"]["width"],
            &workflow["5"]["inputs"]["height"],
        );
        let entry = if text == "explode" {
            json!({
                "prompt": [1, id, workflow, {}, ["9"]],
                "outputs": {},
                "status": {"status_str": "error", "completed": false, "messages": [
                    ["execution_start", {"prompt_id": id}],
                    ["execution_error", {"prompt_id": id, "node_id": "3", "exception_message": "Allocation on device 0 would exceed allowed memory", "exception_type": "torch.OutOfMemoryError"}],
                ]},
            })
        } else {
            json!({
                "prompt": [1, id, workflow, {}, ["9"]],
                "outputs": {"9": {"images": [
                    {"filename": format!("{w}x{h}.png"), "subfolder": "", "type": "output"},
                    {"filename": "preview.png", "subfolder": "", "type": "temp"},
                ]}},
                "status": {"status_str": "success", "completed": true, "messages": []},
            })
        };
        Json(json!({ id: entry })).into_response()
    }
    async fn view(Query(q): Query<BTreeMap<String, String>>) -> Response {
        assert_eq!(q.get("type").map(String::as_str), Some("output"));
        file(Path(q["filename"].clone())).await
    }
    async fn interrupt(State(state): State<Shared>, Json(body): Json<Value>) -> StatusCode {
        let mut s = state.lock().unwrap();
        s.calls
            .push(format!("interrupt {}", body["prompt_id"].as_str().unwrap()));
        s.canceled
            .push(body["prompt_id"].as_str().unwrap().to_owned());
        StatusCode::OK
    }
    async fn queue(State(state): State<Shared>, Json(body): Json<Value>) -> StatusCode {
        let deleted = body["delete"][0].as_str().unwrap().to_owned();
        state
            .lock()
            .unwrap()
            .calls
            .push(format!("delete {deleted}"));
        StatusCode::OK
    }
    serve(
        Router::new()
            .route("/prompt", post(prompt))
            .route("/history/{id}", get(history))
            .route("/view", get(view))
            .route("/interrupt", post(interrupt))
            .route("/queue", post(queue)),
    )
    .await
}

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
    Kiln::start_with(move |c| {
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
    let id = submit_ok(&kiln.http, &kiln.base, key, body).await;
    wait_terminal(&kiln.http, &kiln.base, key, &id).await
}

async fn job_output_size(kiln: &Kiln, job: &Value) -> (u32, u32) {
    output_size(&kiln.http, job["outputs"][0]["url"].as_str().unwrap()).await
}

/// Submits a job that never finishes upstream, waits until the upstream has it, cancels it.
async fn cancel_running(kiln: &Kiln, key: &str, upstream: &Shared) -> Value {
    let body = json!({"model": "acme/img", "input": {"prompt": "slow", "width": 48, "height": 40}});
    let id = submit_ok(&kiln.http, &kiln.base, key, body).await;
    wait_for(&kiln.http, &kiln.base, key, &id, "attached upstream", |j| {
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
    get_job(&kiln.http, &kiln.base, key, &id).await
}

// --- the tests ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn replicate_predictions_are_created_polled_and_their_outputs_stored() {
    let secrets = Secrets::new();
    let replicate_key = secrets.file("replicate", "r8_test");
    let (base, upstream) = fake_replicate().await;
    let mut r = route("replicate", "acme/painter");
    r.cost = CostModel {
        per_run: 0.0,
        per_second: 0.001,
        per_output: 0.0,
    };
    let kiln = kiln(
        vec![provider(
            "replicate",
            ProviderKind::Replicate,
            &base,
            Some(replicate_key.clone()),
        )],
        vec![r],
    )
    .await;
    let key = kiln.key("acme").await;
    let job = run(&kiln, &key, "a kiln").await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    assert_eq!(job_output_size(&kiln, &job).await, (48, 40));
    let attempt = &job["attempts"][0];
    assert_eq!(attempt["provider"], "replicate");
    assert_eq!(attempt["upstream_model"], "acme/painter");
    assert_eq!(attempt["upstream_id"], "rp1");
    // Billed per second of Replicate's own predict_time (2.5 s), not Kiln's wall time.
    assert_eq!(attempt["cost"], 0.0025);
    {
        let s = upstream.lock().unwrap();
        assert_eq!(
            s.created,
            vec![json!({"prompt": "a kiln", "width": 48, "height": 40})]
        );
        assert!(s.auth.iter().all(|a| a == "Bearer r8_test"), "{:?}", s.auth);
    }
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn replicate_throttling_is_retried_after_its_retry_after() {
    let secrets = Secrets::new();
    let replicate_key = secrets.file("replicate", "r8_test");
    let (base, upstream) = fake_replicate().await;
    let kiln = kiln(
        vec![provider(
            "replicate",
            ProviderKind::Replicate,
            &base,
            Some(replicate_key.clone()),
        )],
        vec![route("replicate", "acme/painter")],
    )
    .await;
    let key = kiln.key("acme").await;
    let job = run(&kiln, &key, "throttled").await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    let attempts = job["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0]["error"]["code"], "upstream_rate_limited");
    assert_eq!(attempts[0]["error_class"], "retry");
    assert!(
        attempts[0]["upstream_id"].is_null(),
        "a refused create has no prediction"
    );
    assert!(
        attempts[0]["cost"].is_null(),
        "a refused create costs nothing"
    );
    assert_eq!(
        upstream.lock().unwrap().created.len(),
        1,
        "one prediction in all"
    );
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_replicate_prediction_falls_back_to_fal_and_says_why() {
    let secrets = Secrets::new();
    let replicate_key = secrets.file("replicate", "r8_test");
    let fal_key = secrets.file("fal", "fal_test");
    let (replicate, _) = fake_replicate().await;
    let (fal, fal_state) = fake_fal().await;
    let kiln = kiln(
        vec![
            provider(
                "replicate",
                ProviderKind::Replicate,
                &replicate,
                Some(replicate_key.clone()),
            ),
            provider("fal", ProviderKind::Fal, &fal, Some(fal_key.clone())),
        ],
        vec![
            route("replicate", "acme/painter"),
            route("fal", "fal-ai/flux/dev"),
        ],
    )
    .await;
    let key = kiln.key("acme").await;
    let job = run(&kiln, &key, "oom").await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    let attempts = job["attempts"].as_array().unwrap();
    assert_eq!(
        attempts.len(),
        2,
        "a model failure falls back at once: {job:#}"
    );
    assert_eq!(attempts[0]["error"]["code"], "upstream_prediction_failed");
    assert!(attempts[0]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("CUDA out of memory"));
    assert_eq!(attempts[1]["provider"], "fal");
    assert_eq!(attempts[1]["fallback_reason"], "upstream_prediction_failed");
    assert_eq!(attempts[1]["upstream_id"], "fr1");
    assert_eq!(fal_state.lock().unwrap().auth, vec!["Key fal_test"]);
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replicate_nsfw_refusal_fails_without_fallback() {
    let secrets = Secrets::new();
    let replicate_key = secrets.file("replicate", "r8_test");
    let fal_key = secrets.file("fal", "fal_test");
    let (replicate, _) = fake_replicate().await;
    let (fal, fal_state) = fake_fal().await;
    let kiln = kiln(
        vec![
            provider(
                "replicate",
                ProviderKind::Replicate,
                &replicate,
                Some(replicate_key.clone()),
            ),
            provider("fal", ProviderKind::Fal, &fal, Some(fal_key.clone())),
        ],
        vec![
            route("replicate", "acme/painter"),
            route("fal", "fal-ai/flux/dev"),
        ],
    )
    .await;
    let key = kiln.key("acme").await;
    let job = run(&kiln, &key, "nsfw").await;
    assert_eq!(job["status"], "failed", "{job:#}");
    assert_eq!(job["error"]["code"], "content_policy_violation");
    assert_eq!(job["attempts"].as_array().unwrap().len(), 1);
    assert!(fal_state.lock().unwrap().created.is_empty(), "no fallback");
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replicate_key_that_is_refused_falls_back() {
    let secrets = Secrets::new();
    let replicate_key = secrets.file("replicate", "r8_wrong");
    let fal_key = secrets.file("fal", "fal_test");
    let (replicate, _) = fake_replicate().await;
    let (fal, _) = fake_fal().await;
    let kiln = kiln(
        vec![
            provider(
                "replicate",
                ProviderKind::Replicate,
                &replicate,
                Some(replicate_key.clone()),
            ),
            provider("fal", ProviderKind::Fal, &fal, Some(fal_key.clone())),
        ],
        vec![
            route("replicate", "acme/painter"),
            route("fal", "fal-ai/flux/dev"),
        ],
    )
    .await;
    let key = kiln.key("acme").await;
    let job = run(&kiln, &key, "a kiln").await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    assert_eq!(job["attempts"][0]["error"]["code"], "upstream_unauthorized");
    assert_eq!(
        job["attempts"][1]["fallback_reason"],
        "upstream_unauthorized"
    );
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_reaches_a_replicate_prediction() {
    let secrets = Secrets::new();
    let replicate_key = secrets.file("replicate", "r8_test");
    let (base, upstream) = fake_replicate().await;
    let kiln = kiln(
        vec![provider(
            "replicate",
            ProviderKind::Replicate,
            &base,
            Some(replicate_key.clone()),
        )],
        vec![route("replicate", "acme/painter")],
    )
    .await;
    let key = kiln.key("acme").await;
    let job = cancel_running(&kiln, &key, &upstream).await;
    assert_eq!(job["status"], "canceled");
    assert_eq!(upstream.lock().unwrap().canceled, vec!["rp1"]);
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn replicate_progress_is_read_from_the_predictions_logs() {
    let secrets = Secrets::new();
    let replicate_key = secrets.file("replicate", "r8_test");
    let (base, upstream) = fake_replicate().await;
    let kiln = kiln(
        vec![provider(
            "replicate",
            ProviderKind::Replicate,
            &base,
            Some(replicate_key.clone()),
        )],
        vec![route("replicate", "acme/painter")],
    )
    .await;
    let key = kiln.key("acme").await;
    let body = json!({"model": "acme/img", "input": {"prompt": "slow", "width": 48, "height": 40}});
    let id = submit_ok(&kiln.http, &kiln.base, &key, body).await;
    let events = format!("{}/v1/jobs/{id}/events", kiln.base);
    // The fake logs one more tqdm step per poll, up to 90 %; the job shows the bar's figure.
    let job = follow_events(&kiln.http, &events, &key, |j| {
        j["progress"].as_f64().is_some_and(|p| p > 0.0)
    })
    .await;
    assert_eq!(job["status"], "running", "{job:#}");
    let progress = job["progress"].as_f64().unwrap();
    assert!(progress <= 0.9, "{job:#}");
    assert_eq!(job["attempts"][0]["progress"], job["progress"]);
    kiln.http
        .post(format!("{}/v1/jobs/{id}/cancel", kiln.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    let job = wait_terminal(&kiln.http, &kiln.base, &key, &id).await;
    assert_eq!(job["status"], "canceled");
    assert!(
        job["progress"].is_null(),
        "a canceled job shows no progress"
    );
    drop(upstream);
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fal_requests_are_queued_polled_and_their_results_stored() {
    let secrets = Secrets::new();
    let fal_key = secrets.file("fal", "fal_test");
    let (base, upstream) = fake_fal().await;
    let kiln = kiln(
        vec![provider(
            "fal",
            ProviderKind::Fal,
            &base,
            Some(fal_key.clone()),
        )],
        vec![route("fal", "fal-ai/flux/dev")],
    )
    .await;
    let key = kiln.key("acme").await;
    let job = run(&kiln, &key, "a kiln").await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    assert_eq!(job_output_size(&kiln, &job).await, (48, 40));
    assert_eq!(job["attempts"][0]["upstream_id"], "fr1");
    {
        let s = upstream.lock().unwrap();
        assert_eq!(
            s.created,
            vec![json!({"prompt": "a kiln", "width": 48, "height": 40})]
        );
        assert!(
            s.polls["fr1"] >= 3,
            "it waited through IN_QUEUE and IN_PROGRESS"
        );
    }
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fal_validation_error_fails_the_job() {
    let secrets = Secrets::new();
    let fal_key = secrets.file("fal", "fal_test");
    let (base, _) = fake_fal().await;
    let kiln = kiln(
        vec![provider(
            "fal",
            ProviderKind::Fal,
            &base,
            Some(fal_key.clone()),
        )],
        vec![route("fal", "fal-ai/flux/dev")],
    )
    .await;
    let key = kiln.key("acme").await;
    let job = run(&kiln, &key, "rejected").await;
    assert_eq!(job["status"], "failed", "{job:#}");
    assert_eq!(job["error"]["code"], "upstream_rejected_input");
    assert!(job["error"]["message"].as_str().unwrap().contains("422"));
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_reaches_a_fal_request() {
    let secrets = Secrets::new();
    let fal_key = secrets.file("fal", "fal_test");
    let (base, upstream) = fake_fal().await;
    let kiln = kiln(
        vec![provider(
            "fal",
            ProviderKind::Fal,
            &base,
            Some(fal_key.clone()),
        )],
        vec![route("fal", "fal-ai/flux/dev")],
    )
    .await;
    let key = kiln.key("acme").await;
    let job = cancel_running(&kiln, &key, &upstream).await;
    assert_eq!(job["status"], "canceled");
    assert_eq!(upstream.lock().unwrap().canceled, vec!["fr1"]);
    kiln.shutdown().await;
}

fn comfy_route(dir: &std::path::Path, workflow: &str) -> RouteConfig {
    let path = dir.join("workflow.json");
    std::fs::write(&path, workflow).unwrap();
    RouteConfig {
        provider: "comfy".into(),
        model: "sdxl".into(),
        workflow: Some(path),
        rename: [
            ("prompt", "6.text"),
            ("width", "5.width"),
            ("height", "5.height"),
            ("seed", "3.seed"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect(),
        max_attempts: Some(1),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn comfyui_workflows_are_filled_queued_and_their_saved_images_stored() {
    let (base, upstream) = fake_comfyui().await;
    let files = tempfile::tempdir().unwrap();
    let kiln = kiln(
        vec![provider("comfy", ProviderKind::Comfyui, &base, None)],
        vec![comfy_route(files.path(), WORKFLOW)],
    )
    .await;
    let key = kiln.key("acme").await;
    let job = run(&kiln, &key, "a kiln").await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    // The image ComfyUI "rendered" has the size Kiln wrote into the latent node; the preview
    // (a `temp` file) is not an output.
    assert_eq!(job_output_size(&kiln, &job).await, (48, 40));
    assert_eq!(job["outputs"].as_array().unwrap().len(), 1);
    let attempt = &job["attempts"][0];
    assert_eq!(
        attempt["upstream_id"], attempt["id"],
        "Kiln chose the prompt id"
    );
    {
        let s = upstream.lock().unwrap();
        let workflow = &s.created[0]["workflow"];
        assert_eq!(workflow["6"]["inputs"]["text"], "a kiln");
        assert_eq!(workflow["5"]["inputs"]["width"], 48);
        assert_eq!(
            workflow["4"]["inputs"]["ckpt_name"],
            "sd_xl_base_1.0.safetensors"
        );
    }
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_comfyui_execution_error_and_a_refused_workflow_are_reported() {
    let (base, _) = fake_comfyui().await;
    let files = tempfile::tempdir().unwrap();
    let broken = files.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    let kiln = kiln(
        vec![provider("comfy", ProviderKind::Comfyui, &base, None)],
        vec![
            comfy_route(&broken, &WORKFLOW.replace("sd_xl_base_1.0", "missing")),
            comfy_route(files.path(), WORKFLOW),
        ],
    )
    .await;
    let key = kiln.key("acme").await;
    // The first route's workflow names a checkpoint the server lacks: it falls back.
    let job = run(&kiln, &key, "explode").await;
    assert_eq!(job["status"], "failed", "{job:#}");
    let attempts = job["attempts"].as_array().unwrap();
    assert_eq!(attempts[0]["error"]["code"], "route_misconfigured");
    assert!(attempts[0]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Prompt outputs failed validation"));
    // The second runs, and the run itself fails with ComfyUI's exception message.
    assert_eq!(attempts[1]["error"]["code"], "upstream_prediction_failed");
    assert!(attempts[1]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("would exceed allowed memory"));
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_interrupts_and_dequeues_a_comfyui_prompt() {
    let (base, upstream) = fake_comfyui().await;
    let files = tempfile::tempdir().unwrap();
    let kiln = kiln(
        vec![provider("comfy", ProviderKind::Comfyui, &base, None)],
        vec![comfy_route(files.path(), WORKFLOW)],
    )
    .await;
    let key = kiln.key("acme").await;
    let job = cancel_running(&kiln, &key, &upstream).await;
    assert_eq!(job["status"], "canceled");
    let prompt_id = job["attempts"][0]["upstream_id"].as_str().unwrap();
    let deadline = std::time::Instant::now() + DEADLINE;
    while upstream.lock().unwrap().calls.len() < 2 {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        upstream.lock().unwrap().calls,
        vec![
            format!("interrupt {prompt_id}"),
            format!("delete {prompt_id}")
        ]
    );
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deadline_stops_the_replicate_prediction_it_cuts_short() {
    let secrets = Secrets::new();
    let replicate_key = secrets.file("replicate", "r8_test");
    let (base, upstream) = fake_replicate().await;
    let kiln = kiln(
        vec![provider(
            "replicate",
            ProviderKind::Replicate,
            &base,
            Some(replicate_key),
        )],
        vec![route("replicate", "acme/painter")],
    )
    .await;
    let key = kiln.key("acme").await;
    let body = json!({"model": "acme/img", "input": {"prompt": "slow", "width": 48, "height": 40}, "cancel_after": "1s"});
    let id = submit_ok(&kiln.http, &kiln.base, &key, body).await;
    let job = wait_terminal(&kiln.http, &kiln.base, &key, &id).await;
    assert_eq!(job["status"], "failed", "{job:#}");
    assert_eq!(job["error"]["code"], "deadline_exceeded");
    let deadline = std::time::Instant::now() + DEADLINE;
    while upstream.lock().unwrap().canceled.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the prediction was never canceled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(upstream.lock().unwrap().canceled, vec!["rp1"]);
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_may_let_a_refusal_fall_back_to_a_provider_that_judges_differently() {
    let secrets = Secrets::new();
    let replicate_key = secrets.file("replicate", "r8_test");
    let fal_key = secrets.file("fal", "fal_test");
    let (replicate, _) = fake_replicate().await;
    let (fal, _) = fake_fal().await;
    let kiln = Kiln::start_with(move |c| {
        c.providers = vec![
            provider(
                "replicate",
                ProviderKind::Replicate,
                &replicate,
                Some(replicate_key),
            ),
            provider("fal", ProviderKind::Fal, &fal, Some(fal_key)),
        ];
        c.models = vec![ModelConfig {
            name: "acme/img".into(),
            description: String::new(),
            params: vec![],
            fallback_on_refusal: true,
            routes: vec![
                route("replicate", "acme/painter"),
                route("fal", "fal-ai/flux/dev"),
            ],
        }];
    })
    .await;
    let key = kiln.key("acme").await;
    let job = run(&kiln, &key, "nsfw").await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    assert_eq!(
        job["attempts"][0]["error"]["code"],
        "content_policy_violation"
    );
    assert_eq!(job["attempts"][0]["error_class"], "fall_back");
    assert_eq!(
        job["attempts"][1]["fallback_reason"],
        "content_policy_violation"
    );
    kiln.shutdown().await;
}

/// An output URL is the upstream's say-so: one that leads to a private or loopback address
/// (literally, or by a name that resolves there) fails the attempt with a clear error, and no
/// request reaches that address.
#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_output_url_on_an_internal_address_is_refused_unfetched() {
    let secrets = Secrets::new();
    let replicate_key = secrets.file("replicate", "r8_test");
    let (base, _upstream) = fake_replicate().await;
    // The "internal service" the upstream points at: it counts every connection it is offered.
    let internal = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = internal.local_addr().unwrap().port();
    let reached = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = reached.clone();
    tokio::spawn(async move {
        while let Ok((_socket, _)) = internal.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let kiln = kiln(
        vec![provider(
            "replicate",
            ProviderKind::Replicate,
            &base,
            Some(replicate_key),
        )],
        vec![route("replicate", "acme/painter")],
    )
    .await;
    let key = kiln.key("acme").await;
    for target in [
        format!("http://127.0.0.1:{port}/secret.png"),
        format!("http://localhost:{port}/secret.png"),
        "http://169.254.169.254/latest/meta-data/iam".to_owned(),
    ] {
        let job = run(&kiln, &key, &format!("output-at {target}")).await;
        assert_eq!(job["status"], "failed", "{target}: {job:#}");
        assert_eq!(
            job["error"]["code"], "upstream_output_url_forbidden",
            "{target}: {job:#}"
        );
        assert_eq!(
            job["attempts"].as_array().unwrap().len(),
            1,
            "a forbidden URL is not retried"
        );
    }
    assert_eq!(
        reached.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no request reached the internal address"
    );
    kiln.shutdown().await;
}

/// A job whose worker stopped mid-prediction goes back to the queue with the prediction still
/// running upstream; canceled there, before any worker re-attached, the prediction is stopped
/// all the same (by the next worker that runs), and nothing is started again.
#[tokio::test(flavor = "multi_thread")]
async fn canceling_a_queued_job_stops_the_prediction_a_lost_attempt_left_running() {
    let secrets = Secrets::new();
    let replicate_key = secrets.file("replicate", "r8_test");
    let (base, upstream) = fake_replicate().await;
    let mut first = kiln(
        vec![provider(
            "replicate",
            ProviderKind::Replicate,
            &base,
            Some(replicate_key),
        )],
        vec![route("replicate", "acme/painter")],
    )
    .await;
    let key = first.key("acme").await;
    let body = json!({"model": "acme/img", "input": {"prompt": "slow", "width": 48, "height": 40}});
    let id = submit_ok(&first.http, &first.base, &key, body).await;
    wait_for(
        &first.http,
        &first.base,
        &key,
        &id,
        "attached upstream",
        |j| j["attempts"][0]["upstream_id"].is_string(),
    )
    .await;
    // The worker stops with the prediction running: the job is released, its handle kept.
    first.running.take().unwrap().shutdown().await;
    let config = first.config.clone();
    let api = kiln::start(
        &config,
        kiln::Roles {
            api: true,
            worker: false,
        },
    )
    .await
    .unwrap();
    let api_base = format!("http://{}", api.addr.unwrap());
    let res = first
        .http
        .post(format!("{api_base}/v1/jobs/{id}/cancel"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let canceled: Value = res.json().await.unwrap();
    assert_eq!(canceled["status"], "canceled");
    assert_eq!(canceled["attempts"][0]["outcome"], "released");
    assert!(upstream.lock().unwrap().canceled.is_empty());
    // The next worker that runs tells the upstream to stop.
    let worker = kiln::start(
        &config,
        kiln::Roles {
            api: false,
            worker: true,
        },
    )
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + DEADLINE;
    while upstream.lock().unwrap().canceled.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the abandoned prediction was never stopped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    {
        let s = upstream.lock().unwrap();
        assert_eq!(s.canceled, vec!["rp1".to_owned()]);
        assert_eq!(s.created.len(), 1, "nothing was started again");
    }
    worker.shutdown().await;
    api.shutdown().await;
    first.shutdown().await;
}
