//! Replicate's own Python client (`replicate` from PyPI) against Kiln, as a user's existing code
//! would run it with only `REPLICATE_BASE_URL` and `REPLICATE_API_TOKEN` changed: `run` by model
//! and by version, a run that outlasts its wait, `predictions.create` + `wait`, `cancel`, a model
//! failure as the client's `ModelError`, and a refused input as its `ReplicateError`. Kiln sits
//! behind a TLS front (`common::clients`), on the embedded default and on the production stack.

use crate::common::clients::{kiln_behind_tls, run_scenario, TlsFront};
use crate::common::Kiln;
use serde_json::{json, Value};

/// The client's environment: Kiln's https address, a key, and trust in the front's certificate.
async fn client_env(kiln: &Kiln, front: &TlsFront) -> Vec<(&'static str, String)> {
    vec![
        ("REPLICATE_BASE_URL", front.url()),
        ("REPLICATE_API_TOKEN", kiln.key("acme").await),
        ("SSL_CERT_FILE", front.cert.display().to_string()),
        ("REPLICATE_POLL_INTERVAL", "0.1".into()),
    ]
}

async fn runs_return_readable_outputs(production: bool) {
    let (kiln, front) = kiln_behind_tls(production).await;
    let env = client_env(&kiln, &front).await;
    let ran = run_scenario("replicate_client.py", "run", &env).await;
    assert_eq!(ran["types"], json!(["FileOutput"]), "{ran}");
    assert_eq!(ran["sizes"], json!([[64, 48]]), "{ran}");
    let slow = run_scenario("replicate_client.py", "run_longer_than_its_wait", &env).await;
    assert_eq!(slow["sizes"], json!([[40, 30]]), "{slow}");
    kiln.shutdown().await;
}

#[tokio::test]
async fn replicate_run_returns_files_that_read_as_the_asked_png_on_the_embedded_default() {
    runs_return_readable_outputs(false).await;
}

#[tokio::test]
async fn replicate_run_returns_files_that_read_as_the_asked_png_on_the_production_stack() {
    runs_return_readable_outputs(true).await;
}

#[tokio::test]
async fn replicate_run_by_version_reads_the_published_version() {
    let (kiln, front) = kiln_behind_tls(false).await;
    let env = client_env(&kiln, &front).await;
    let ran = run_scenario("replicate_client.py", "run_by_version", &env).await;
    assert_eq!(ran["sizes"], json!([[32, 16]]), "{ran}");
    let version = ran["version"].as_str().unwrap();
    assert_eq!(version.len(), 64, "a version id is a hex digest: {version}");
    kiln.shutdown().await;
}

#[tokio::test]
async fn a_prediction_created_and_waited_for_is_the_same_job_under_v1_jobs() {
    let (kiln, front) = kiln_behind_tls(false).await;
    let env = client_env(&kiln, &front).await;
    let seen = run_scenario("replicate_client.py", "create_and_wait", &env).await;
    assert_eq!(seen["created_status"], "starting", "{seen}");
    assert_eq!(seen["status"], "succeeded", "{seen}");
    assert_eq!(seen["reloaded_status"], "succeeded", "{seen}");
    assert_eq!(seen["listed"], true, "{seen}");
    assert!(seen["predict_time"].as_f64().is_some(), "{seen}");
    let outputs = seen["output"].as_array().unwrap();
    assert_eq!(outputs.len(), 1);
    assert!(outputs[0]
        .as_str()
        .unwrap()
        .starts_with("https://127.0.0.1:"));
    // The prediction is a job: the same row, seen through Kiln's own routes.
    let key = &env[1].1;
    let job: Value = kiln.get_job(key, seen["id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["model"], "demo/image");
    kiln.shutdown().await;
}

#[tokio::test]
async fn a_canceled_prediction_stops_as_canceled() {
    let (kiln, front) = kiln_behind_tls(false).await;
    let env = client_env(&kiln, &front).await;
    let seen = run_scenario("replicate_client.py", "cancel", &env).await;
    assert_eq!(seen["status"], "canceled", "{seen}");
    let job = kiln.get_job(&env[1].1, seen["id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "canceled");
    kiln.shutdown().await;
}

#[tokio::test]
async fn a_failed_model_and_a_refused_input_reach_the_client_as_its_own_errors() {
    let (kiln, front) = kiln_behind_tls(false).await;
    let env = client_env(&kiln, &front).await;
    let failed = run_scenario("replicate_client.py", "failure", &env).await;
    assert_eq!(failed["raised"], "ModelError", "{failed}");
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(!failed["error"].as_str().unwrap().is_empty(), "{failed}");
    let refused = run_scenario("replicate_client.py", "refused", &env).await;
    assert_eq!(refused["raised"], "ReplicateError", "{refused}");
    assert_eq!(refused["status"], 422, "{refused}");
    assert!(
        refused["detail"].as_str().unwrap().contains("width"),
        "{refused}"
    );
    kiln.shutdown().await;
}

#[tokio::test]
async fn a_completed_prediction_posts_the_prediction_once_signed_as_the_client_validates() {
    let (kiln, front) = kiln_behind_tls(false).await;
    let env = client_env(&kiln, &front).await;
    let seen = run_scenario("replicate_client.py", "webhook", &env).await;
    assert_eq!(seen["arrived"], 1, "{seen}");
    assert_eq!(seen["deliveries"], json!(["job.succeeded"]), "{seen}");
    assert_eq!(seen["valid"], true, "{seen}");
    assert_eq!(seen["tampered_refused"], true, "{seen}");
    // The body is the prediction itself, finished, with its output.
    assert_eq!(seen["body_id"], seen["id"], "{seen}");
    assert_eq!(seen["body_status"], "succeeded", "{seen}");
    assert_eq!(
        seen["body_output"].as_array().map(Vec::len),
        Some(1),
        "{seen}"
    );
    kiln.shutdown().await;
}

async fn a_file_handle_input_goes_through_an_upload(production: bool) {
    let (kiln, front) = kiln_behind_tls(production).await;
    let env = client_env(&kiln, &front).await;
    let seen = run_scenario("replicate_client.py", "file_input", &env).await;
    // The 24×20 drawing, uploaded from an open file and upscaled 2×.
    assert_eq!(seen["sizes"], json!([[48, 40]]), "{seen}");
    assert_eq!(seen["files"], 1, "{seen}");
    assert_eq!(seen["uploaded_size"], seen["source_size"], "{seen}");
    assert_eq!(seen["content_type"], "image/png", "{seen}");
    assert_eq!(seen["sha256"].as_str().map(str::len), Some(64), "{seen}");
    assert_eq!(seen["read_again"], true, "{seen}");
    assert_eq!(seen["deleted"], true, "{seen}");
    kiln.shutdown().await;
}

#[tokio::test]
async fn an_open_file_as_input_is_uploaded_and_used_on_the_embedded_default() {
    a_file_handle_input_goes_through_an_upload(false).await;
}

#[tokio::test]
async fn an_open_file_as_input_is_uploaded_and_used_on_the_production_stack() {
    a_file_handle_input_goes_through_an_upload(true).await;
}
