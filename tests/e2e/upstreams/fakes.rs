//! The fake upstreams: Replicate, fal and ComfyUI as their HTTP APIs answer, for the faults a
//! real one cannot be made to produce on demand.

use super::*;

// --- Replicate ------------------------------------------------------------------------------

/// The prediction object as Replicate documents it, at the state its polls have reached. The
/// prompt scripts the run: `slow` never finishes, `oom` fails, `nsfw` is flagged, anything else
/// succeeds on the third look.
pub(super) fn replicate_prediction(s: &Upstream, id: &str, input: &Value) -> Value {
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
pub(super) fn replicate_logs(status: &str, polls: u32) -> String {
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

pub(super) async fn fake_replicate() -> (String, Shared) {
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

pub(super) async fn fake_fal() -> (String, Shared) {
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
pub(super) const WORKFLOW: &str = r#"{
  "3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 20, "model": ["4", 0], "positive": ["6", 0], "latent_image": ["5", 0]}},
  "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
  "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
  "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "placeholder", "clip": ["4", 1]}},
  "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "kiln", "images": ["8", 0]}}
}"#;

pub(super) async fn fake_comfyui() -> (String, Shared) {
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
