//! Kiln against a real Cog server (the `cog` package from PyPI, running the fixture predictor in
//! `tests/fixtures/cog`): a Kiln model served end to end with its result pushed back through the
//! callback, cancel reaching the prediction, and a worker killed mid-prediction whose job
//! re-attaches to the same prediction instead of running the model again.

use crate::common::*;
use kiln_core::routes::{CostModel, ModelConfig, ParamConfig, ParamKind, RouteConfig};
use serde_json::{json, Value};
use std::time::Duration;

fn draw_model() -> ModelConfig {
    ModelConfig {
        name: "acme/draw".into(),
        description: "the fixture predictor".into(),
        params: vec![ParamConfig {
            name: "delay".into(),
            kind: ParamKind::Number,
            minimum: Some(0.0),
            maximum: Some(60.0),
            description: String::new(),
        }],
        fallback_on_refusal: false,
        routes: vec![RouteConfig {
            provider: "cog".into(),
            model: "draw".into(),
            cost: CostModel {
                per_run: 0.01,
                per_second: 0.5,
                per_output: 0.0,
            },
            ..Default::default()
        }],
    }
}

async fn kiln_with_cog(cog: &CogServer) -> Kiln {
    let url = cog.url.clone();
    Kiln::start_with(move |c| {
        c.providers = vec![cog_provider(&url)];
        c.models = vec![draw_model()];
    })
    .await
}

fn draw(prompt: &str, extra: Value) -> Value {
    let mut input = json!({"prompt": prompt, "width": 96, "height": 80});
    input
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    json!({"model": "acme/draw", "input": input})
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cog_model_serves_a_kiln_model_end_to_end() {
    let cog = CogServer::start().await;
    let kiln = kiln_with_cog(&cog).await;
    let key = kiln.key("acme").await;
    let id = kiln.submit_ok(&key, draw("a red kiln", json!({}))).await;
    let job = kiln.wait_terminal(&key, &id).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");

    // The output is the predictor's PNG at the requested size, stored by Kiln.
    let url = job["outputs"][0]["url"].as_str().unwrap();
    assert_eq!(output_size(&kiln.http, url).await, (96, 80));

    // One attempt, one prediction: its id is the attempt's (shown without the MAC that admits
    // its uploads), and the attempt shows its cost.
    let attempts = job["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0]["provider"], "cog");
    assert_eq!(attempts[0]["upstream_id"], attempts[0]["id"]);
    let cost = attempts[0]["cost"].as_f64().unwrap();
    assert!(cost >= 0.01, "per-run price plus compute time: {cost}");
    assert_eq!(job["cost"], attempts[0]["cost"]);
    assert_eq!(cog.events("a red kiln"), ["start", "done"]);
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_models_progress_bar_reaches_the_job_through_cogs_log_events() {
    let cog = CogServer::start().await;
    let kiln = kiln_with_cog(&cog).await;
    let key = kiln.key("acme").await;
    let id = kiln
        .submit_ok(&key, draw("a slow kiln", json!({"delay": 4.0})))
        .await;
    let events = format!("{}/v1/jobs/{id}/events", kiln.base);
    // The predictor prints a tqdm bar; Cog posts its logs to the callback URL as it goes.
    let midway = follow_events(&kiln.http, &events, &key, |j| {
        j["progress"].as_f64().is_some_and(|p| p > 0.0 && p < 1.0)
    })
    .await;
    assert_eq!(midway["status"], "running", "{midway:#}");
    assert_eq!(midway["attempts"][0]["progress"], midway["progress"]);
    let job = kiln.wait_terminal(&key, &id).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    assert_eq!(job["progress"], 1.0);
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_prediction_fails_the_job_with_the_models_error() {
    let cog = CogServer::start().await;
    let kiln = Kiln::start_with({
        let url = cog.url.clone();
        move |c| {
            c.providers = vec![cog_provider(&url)];
            let mut model = draw_model();
            model.params.push(ParamConfig {
                name: "fail".into(),
                kind: ParamKind::Boolean,
                minimum: None,
                maximum: None,
                description: String::new(),
            });
            c.models = vec![model];
        }
    })
    .await;
    let key = kiln.key("acme").await;
    let id = kiln
        .submit_ok(&key, draw("a broken kiln", json!({"fail": true})))
        .await;
    let job = kiln.wait_terminal(&key, &id).await;
    assert_eq!(job["status"], "failed", "{job:#}");
    assert_eq!(job["error"]["code"], "upstream_prediction_failed");
    let message = job["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("the predictor was asked to fail"),
        "{message}"
    );
    assert_eq!(cog.events("a broken kiln"), ["start", "failed"]);
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_stops_the_cog_prediction() {
    let cog = CogServer::start().await;
    let kiln = kiln_with_cog(&cog).await;
    let key = kiln.key("acme").await;
    // Far longer than the test waits below: only a cancel that reaches Cog frees it in time.
    let id = kiln
        .submit_ok(&key, draw("a slow kiln", json!({"delay": 45})))
        .await;
    cog.wait_event("a slow kiln", "start").await;
    assert_eq!(cog.health().await.as_deref(), Some("BUSY"));

    let res = kiln
        .http
        .post(format!("{}/v1/jobs/{id}/cancel", kiln.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    // The worker notices at its next heartbeat and cancels the prediction: Cog's slot frees up
    // long before the prediction's 45 seconds are over, and the predictor never finishes.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while cog.health().await.as_deref() != Some("READY") {
        assert!(
            std::time::Instant::now() < deadline,
            "the prediction was never stopped"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(cog.events("a slow kiln"), ["start"]);
    let job = kiln.get_job(&key, &id).await;
    assert_eq!(job["status"], "canceled");
    assert_eq!(job["attempts"][0]["outcome"], "canceled");
    kiln.shutdown().await;
}

/// The processes' configuration: the Cog provider and its model, as an operator writes it.
fn kiln_toml(cog: &CogServer) -> String {
    format!(
        r#"
[[providers]]
name = "cog"
kind = "cog"
base_url = "{}"
max_concurrency = 1
poll_interval = "100ms"

[[models]]
name = "acme/draw"
params = [{{ name = "delay", type = "number", minimum = 0, maximum = 60 }}]

[[models.routes]]
provider = "cog"
model = "draw"
"#,
        cog.url
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_mid_prediction_re_attaches_and_cog_runs_it_once() {
    let cog = CogServer::start().await;
    let backends = Backends::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("kiln.toml"), kiln_toml(&cog)).unwrap();
    let mut env = backends.env();
    env.push((
        "KILN_SIGNING_SECRET".into(),
        "a shared secret for this test".into(),
    ));
    let api = KilnProcess::start("api", dir.path(), &env);
    // Workers have no listener of their own: Cog posts results to the api.
    env.push(("KILN_CALLBACK_URL".into(), format!("{}/", api.base)));
    let mut first = KilnProcess::start("worker", dir.path(), &env);
    let key = create_key_with(dir.path(), "acme", &env);
    let http = http();

    let id = submit_ok(
        &http,
        &api.base,
        &key,
        draw("a rescued kiln", json!({"delay": 4})),
    )
    .await;
    cog.wait_event("a rescued kiln", "start").await;
    first.kill9();

    // A new worker rescues the job and waits on the prediction that is still running.
    let _second = KilnProcess::start("worker", dir.path(), &env);
    let job = wait_terminal(&http, &api.base, &key, &id).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    assert_eq!(
        cog.events("a rescued kiln"),
        ["start", "done"],
        "Cog ran exactly one prediction"
    );

    // The killed worker's attempt is lost; every later one re-attached to its prediction. (On
    // a loaded machine the tests' 1 s lease can lapse once more before the prediction ends; a
    // further rescue re-attaches again, so only the first and last attempts are fixed.)
    let attempts = job["attempts"].as_array().unwrap();
    assert!(attempts.len() >= 2, "{job:#}");
    assert_eq!(attempts[0]["outcome"], "lost");
    assert_eq!(attempts.last().unwrap()["outcome"], "succeeded");
    assert_eq!(attempts[0]["upstream_id"], attempts[0]["id"]);
    for later in &attempts[1..] {
        assert_eq!(later["upstream_id"], attempts[0]["id"], "{job:#}");
    }
    assert_eq!(
        output_size(&http, job["outputs"][0]["url"].as_str().unwrap()).await,
        (96, 80)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_callback_with_a_wrong_token_is_refused_and_stores_nothing() {
    let cog = CogServer::start().await;
    let kiln = kiln_with_cog(&cog).await;
    let key = kiln.key("acme").await;
    let id = kiln
        .submit_ok(&key, draw("a guarded kiln", json!({"delay": 2})))
        .await;
    cog.wait_event("a guarded kiln", "start").await;
    let job = kiln.get_job(&key, &id).await;
    let prediction = job["attempts"][0]["upstream_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let forged =
        json!({"id": prediction, "status": "succeeded", "output": "data:image/png;base64,AAAA"});
    for query in ["", "?token=", "?token=00ff"] {
        let res = kiln
            .http
            .post(format!(
                "{}/v1/callbacks/{id}/{prediction}{query}",
                kiln.base
            ))
            .json(&forged)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 403);
        let problem: Value = res.json().await.unwrap();
        assert_eq!(problem["code"], "invalid_callback_token");
    }
    // The real result still wins.
    let job = kiln.wait_terminal(&key, &id).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    kiln.shutdown().await;
}

/// A Cog server started with `--upload-url` uploads its file outputs to Kiln instead of inlining
/// them; the job's output is that upload. A forged upload, and one replayed after its attempt
/// ended, are refused and store nothing.
#[tokio::test(flavor = "multi_thread")]
async fn uploads_from_cog_are_the_output_and_forged_or_replayed_ones_store_nothing() {
    let cog_port = kiln_core::testing::free_port();
    let kiln = Kiln::start_with(move |c| {
        c.providers = vec![cog_provider(&format!("http://127.0.0.1:{cog_port}/"))];
        c.models = vec![draw_model()];
    })
    .await;
    let _cog = CogServer::start_in("cog", cog_port, Some(&kiln.url("/v1/uploads/cog/"))).await;
    let key = kiln.key("acme").await;
    let id = kiln
        .submit_ok(&key, draw("an uploaded kiln", json!({})))
        .await;
    let job = kiln.wait_terminal(&key, &id).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    let output = &job["outputs"][0];
    assert_eq!(output["content_type"], "image/png");
    let url = output["url"].as_str().unwrap();
    assert!(url.contains(&format!("/jobs/{id}/uploads/1/")), "{url}");
    assert_eq!(output_size(&kiln.http, url).await, (96, 80));
    // Described where it lies in the store, as outputs the worker wrote itself are.
    assert_eq!(
        (output["width"].as_u64(), output["height"].as_u64()),
        (Some(96), Some(80))
    );
    assert!(output["preview_url"].is_string(), "{output:#}");

    let upload = |handle: Option<String>, name: &str| {
        let mut put = kiln
            .http
            .put(kiln.url(&format!("/v1/uploads/cog/{name}")))
            .body(vec![7u8; 1000]);
        if let Some(handle) = handle {
            put = put.header("X-Prediction-Id", handle);
        }
        put.send()
    };
    let stored = |name: &str| {
        walk(kiln.dir.path())
            .iter()
            // The local store keeps an object as one file named by its whole key, `/` as `+`.
            .any(|p| {
                p.file_name()
                    .and_then(|f| f.to_str())
                    .is_some_and(|f| f.rsplit('+').next() == Some(name))
            })
    };
    let uploaded = url.split('?').next().unwrap().rsplit('/').next().unwrap();
    assert!(stored(uploaded), "the accepted upload is found by its name");
    let forged = [
        None,
        Some(format!("{id}-1")),
        Some(format!("{id}-1.{}", "0".repeat(32))),
    ];
    for handle in forged {
        let refused = upload(handle.clone(), "forged.bin").await.unwrap();
        assert_eq!(refused.status(), 403, "{handle:?}");
        let problem: Value = refused.json().await.unwrap();
        assert_eq!(problem["code"], "invalid_upload_token");
    }
    // The real handle, minted with the deployment's secret, once its attempt has ended.
    let secret = std::fs::read_to_string(kiln.dir.path().join("signing.key")).unwrap();
    let handle =
        kiln_core::callbacks::UploadHandle::mint(secret.trim_end().as_bytes(), &format!("{id}-1"));
    let replayed = upload(Some(handle), "replayed.bin").await.unwrap();
    assert_eq!(replayed.status(), 409);
    assert!(!stored("forged.bin") && !stored("replayed.bin"));
    kiln.shutdown().await;
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path);
        }
    }
    found
}
