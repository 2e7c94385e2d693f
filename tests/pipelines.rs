//! Pipelines: steps that feed each other's outputs, each an ordinary job. A chain runs to the end
//! with each step reading the previous one's output from storage; a failing step fails the
//! pipeline and its dependents never run; cancel cascades; bad graphs create nothing.

mod common;

use common::*;
use serde_json::{json, Value};

async fn submit_pipeline(kiln: &Kiln, key: &str, body: Value) -> reqwest::Response {
    kiln.http
        .post(kiln.url("/v1/pipelines"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn get_pipeline(kiln: &Kiln, key: &str, id: &str) -> Value {
    kiln.http
        .get(kiln.url(&format!("/v1/pipelines/{id}")))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn wait_pipeline(kiln: &Kiln, key: &str, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let p = get_pipeline(kiln, key, id).await;
        if done(&p) {
            return p;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "pipeline never got there: {p:#}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A webhook receiver that keeps every body it gets.
async fn receiver() -> (String, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let shared = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::Json<Value>| {
            let got = shared.clone();
            async move {
                got.lock().unwrap().push(body.0);
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, got)
}

fn chain(upscale_extra: Value) -> Value {
    let mut upscale = json!({"image": "$steps.image.outputs[0]", "scale": 2});
    upscale
        .as_object_mut()
        .unwrap()
        .extend(upscale_extra.as_object().unwrap().clone());
    json!({"steps": [
        {"name": "image", "model": "demo/image", "input": {"prompt": "a kiln", "width": 40, "height": 24}},
        {"name": "upscale", "model": "demo/upscale", "input": upscale},
        {"name": "video", "model": "demo/video", "input": {"image": "$steps.upscale.outputs[0]", "seconds": 1, "fps": 4}},
    ]})
}

#[tokio::test(flavor = "multi_thread")]
async fn image_upscale_video_runs_through_and_the_frames_are_the_upscaled_size() {
    let kiln = Kiln::start().await;
    let key = kiln.key("acme").await;
    let res = submit_pipeline(&kiln, &key, chain(json!({}))).await;
    assert_eq!(res.status(), 202);
    let id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let done = wait_pipeline(&kiln, &key, &id, |p| p["status"] != "running").await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    let steps = done["steps"].as_array().unwrap();
    assert!(steps.iter().all(|s| s["status"] == "succeeded"));
    // Step 2 read step 1's output by storage reference, not by URL.
    let upscale_job = get_job(
        &kiln.http,
        &kiln.base,
        &key,
        steps[1]["job_id"].as_str().unwrap(),
    )
    .await;
    let image_job = steps[0]["job_id"].as_str().unwrap();
    assert_eq!(
        upscale_job["input"]["image"],
        format!("kiln://jobs/{image_job}/outputs/0")
    );
    // The final step's output is the pipeline's; its frames have the upscaled size.
    let outputs = done["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 1);
    assert_eq!(outputs[0]["step"], "video");
    assert_eq!(
        output_size(&kiln.http, outputs[0]["url"].as_str().unwrap()).await,
        (80, 48)
    );
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_step_that_fails_for_good_fails_the_pipeline_and_its_dependents_never_run() {
    let kiln = Kiln::start().await;
    let key = kiln.key("acme").await;
    let (hook, got) = receiver().await;
    let mut body = chain(json!({"fail_rate": 1.0}));
    body["webhook"] = json!(hook);
    let res = submit_pipeline(&kiln, &key, body).await;
    let id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let done = wait_pipeline(&kiln, &key, &id, |p| p["status"] != "running").await;
    assert_eq!(done["status"], "failed", "{done:#}");
    assert_eq!(done["error"]["code"], "step_failed");
    assert_eq!(done["steps"][1]["status"], "failed");
    assert_eq!(done["steps"][2]["status"], "pending");
    assert!(done["steps"][2]["job_id"].is_null(), "step 3 never ran");
    // pipeline.failed fires once, carrying the pipeline; it is logged on the step it hangs off.
    let step2 = done["steps"][1]["job_id"].as_str().unwrap();
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let log: Value = kiln
            .http
            .get(kiln.url(&format!("/v1/jobs/{step2}/deliveries")))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if log["data"][0]["status"] == "delivered" {
            assert_eq!(log["data"].as_array().unwrap().len(), 1, "{log:#}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{log:#}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let events = got.lock().unwrap().clone();
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["type"], "pipeline.failed");
    assert_eq!(events[0]["data"]["id"], id.as_str());
    assert_eq!(events[0]["data"]["status"], "failed");
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_during_a_step_cancels_it_and_nothing_after_runs() {
    let kiln = Kiln::start().await;
    let key = kiln.key("acme").await;
    let res = submit_pipeline(&kiln, &key, chain(json!({"latency_ms": 30000}))).await;
    let id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_pipeline(&kiln, &key, &id, |p| p["steps"][1]["status"] == "running").await;
    let res = kiln
        .http
        .post(kiln.url(&format!("/v1/pipelines/{id}/cancel")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let canceled: Value = res.json().await.unwrap();
    assert_eq!(canceled["status"], "canceled");
    assert_eq!(canceled["steps"][1]["status"], "canceled");
    let step2 = canceled["steps"][1]["job_id"].as_str().unwrap();
    let job = wait_for(&kiln.http, &kiln.base, &key, step2, "closed", |j| {
        j["attempts"][0]["outcome"] == "canceled"
    })
    .await;
    assert_eq!(job["status"], "canceled");
    assert!(get_pipeline(&kiln, &key, &id).await["steps"][2]["job_id"].is_null());
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_graphs_are_refused_and_create_nothing() {
    let kiln = Kiln::start().await;
    let acme = kiln.key("acme").await;
    let other = kiln.key("other").await;
    let theirs = submit_ok(&kiln.http, &kiln.base, &other, image_job(16, 16)).await;
    wait_terminal(&kiln.http, &kiln.base, &other, &theirs).await;
    let cases = [
        (
            json!({"steps": [
                {"name": "a", "model": "demo/upscale", "input": {"image": "$steps.b.outputs[0]", "scale": 2}},
                {"name": "b", "model": "demo/upscale", "input": {"image": "$steps.a.outputs[0]", "scale": 2}},
            ]}),
            "cycle",
        ),
        (
            json!({"steps": [{"name": "a", "model": "demo/upscale", "input": {"image": "$steps.nope.outputs[0]", "scale": 2}}]}),
            "unknown_step",
        ),
        (
            json!({"steps": [{"name": "a", "model": "demo/upscale", "input": {"image": format!("kiln://jobs/{theirs}/outputs/0"), "scale": 2}}]}),
            "input_reference_invalid",
        ),
        (
            json!({"steps": [{"name": "a", "model": "demo/upscale", "input": {"image": "$steps.a.outputs[0]", "scale": 3}}]}),
            "cycle",
        ),
        (
            json!({"steps": [{"name": "a", "model": "demo/image", "input": {"prompt": "x", "width": 16}}]}),
            "missing_field",
        ),
    ];
    for (body, code) in cases {
        let res = submit_pipeline(&kiln, &acme, body.clone()).await;
        assert_eq!(res.status(), 422, "{body}");
        let problem: Value = res.json().await.unwrap();
        assert_eq!(problem["code"], code, "{body}");
        assert!(
            problem["field"].as_str().unwrap().starts_with("steps"),
            "{problem}"
        );
    }
    let listed: Value = kiln
        .http
        .get(kiln.url("/v1/jobs"))
        .bearer_auth(&acme)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        listed["data"].as_array().unwrap().is_empty(),
        "nothing was created"
    );
    // Another tenant's pipeline is a 404.
    let res = submit_pipeline(&kiln, &acme, chain(json!({}))).await;
    let id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = kiln
        .http
        .get(kiln.url(&format!("/v1/pipelines/{id}")))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    kiln.shutdown().await;
}
