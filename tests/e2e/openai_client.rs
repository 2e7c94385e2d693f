//! OpenAI's own Python client (`openai` from PyPI) against Kiln's images API, as a user's
//! existing code would run it with only `OPENAI_BASE_URL` and `OPENAI_API_KEY` changed: images
//! answered as URLs and as base64, a model's failure and a refused request as the client's own
//! error types with Kiln's message, code and field, and a bad key as its authentication error.

use crate::common::clients::{kiln_behind_tls, run_scenario, TlsFront};
use crate::common::Kiln;
use serde_json::json;

async fn client_env(kiln: &Kiln, front: &TlsFront) -> Vec<(&'static str, String)> {
    vec![
        ("OPENAI_BASE_URL", format!("{}/v1", front.url())),
        ("OPENAI_API_KEY", kiln.key("acme").await),
        ("SSL_CERT_FILE", front.cert.display().to_string()),
    ]
}

#[tokio::test]
async fn images_generate_answers_urls_and_base64_of_the_asked_size() {
    let (kiln, front) = kiln_behind_tls(false).await;
    let env = client_env(&kiln, &front).await;
    let urls = run_scenario("openai_client.py", "generate_urls", &env).await;
    assert_eq!(urls["sizes"], json!([[64, 48], [64, 48]]), "{urls}");
    assert_eq!(urls["b64"], json!([null, null]), "{urls}");
    assert!(urls["created"].as_i64().unwrap() > 0, "{urls}");
    let inline = run_scenario("openai_client.py", "generate_b64", &env).await;
    assert_eq!(inline["sizes"], json!([[40, 30]]), "{inline}");
    assert_eq!(inline["urls"], json!([null]), "{inline}");
    kiln.shutdown().await;
}

#[tokio::test]
async fn images_generate_on_the_production_stack_answers_downloadable_urls() {
    let (kiln, front) = kiln_behind_tls(true).await;
    let env = client_env(&kiln, &front).await;
    let urls = run_scenario("openai_client.py", "generate_urls", &env).await;
    assert_eq!(urls["sizes"], json!([[64, 48], [64, 48]]), "{urls}");
    kiln.shutdown().await;
}

#[tokio::test]
async fn a_model_failure_and_a_refusal_reach_the_client_as_its_error_types() {
    let (kiln, front) = kiln_behind_tls(false).await;
    let env = client_env(&kiln, &front).await;
    let failed = run_scenario("openai_client.py", "model_error", &env).await;
    assert_eq!(failed["raised"], "InternalServerError", "{failed}");
    assert_eq!(failed["status"], 500, "{failed}");
    assert_eq!(failed["should_retry"], "false", "{failed}");
    assert!(
        failed["message"].as_str().unwrap().contains("job "),
        "Kiln's message reaches the client: {failed}"
    );
    let refused = run_scenario("openai_client.py", "refused", &env).await;
    assert_eq!(refused["raised"], "BadRequestError", "{refused}");
    assert_eq!(refused["status"], 400, "{refused}");
    assert_eq!(refused["param"], "size", "{refused}");
    assert_eq!(refused["code"], "invalid_size", "{refused}");
    assert_eq!(refused["type"], "invalid_request_error", "{refused}");
    assert_eq!(refused["should_retry"], "false", "{refused}");
    let denied = run_scenario("openai_client.py", "unauthenticated", &env).await;
    assert_eq!(denied["raised"], "AuthenticationError", "{denied}");
    assert_eq!(denied["type"], "authentication_error", "{denied}");
    kiln.shutdown().await;
}

/// OpenAI's SDKs retry a generation that timed out, with no idempotency key of their own: the
/// jobs of the request whose client hung up are canceled, so only the retry's run to the end.
#[tokio::test]
async fn the_jobs_of_a_generation_whose_client_hung_up_are_canceled() {
    let kiln = Kiln::start().await;
    let key = kiln.key("acme").await;
    let body =
        json!({"model": "demo/image", "prompt": "slow", "size": "16x16", "latency_ms": 60000});
    let impatient = crate::common::http()
        .post(kiln.url("/v1/images/generations"))
        .bearer_auth(&key)
        .json(&body)
        .timeout(std::time::Duration::from_millis(500))
        .send()
        .await;
    assert!(impatient.unwrap_err().is_timeout());
    // The job was created before the client gave up, and is canceled once the api sees the
    // connection gone.
    let listed: serde_json::Value = kiln
        .http
        .get(kiln.url("/v1/jobs"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jobs = listed["data"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{listed}");
    let id = jobs[0]["id"].as_str().unwrap();
    let job = kiln
        .wait_for(&key, id, "canceled", |j| j["status"] == "canceled")
        .await;
    assert_eq!(job["model"], "demo/image");
    kiln.shutdown().await;
}

#[tokio::test]
async fn images_edit_uploads_the_image_and_runs_a_model_that_takes_one() {
    let (kiln, front) = kiln_behind_tls(false).await;
    let env = client_env(&kiln, &front).await;
    let edited = run_scenario("openai_client.py", "edit", &env).await;
    assert_eq!(edited["sizes"], json!([[48, 40]]), "{edited}");
    // Bytes that are no image fail the job as the input's fault: the request's error, 400.
    let refused = run_scenario("openai_client.py", "edit_not_an_image", &env).await;
    assert_eq!(refused["raised"], "BadRequestError", "{refused}");
    assert_eq!(refused["param"], "image", "{refused}");
    assert_eq!(refused["code"], "input_invalid_image", "{refused}");
    kiln.shutdown().await;
}
