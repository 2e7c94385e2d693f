//! Inputs that name an earlier output by reference (`kiln://jobs/{id}/outputs/{n}`): read from
//! storage by key, within the caller's tenant only, checked at submit.

use crate::common::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread")]
async fn an_output_reference_chains_jobs_through_storage() {
    let kiln = Kiln::start().await;
    let key = kiln.key("acme").await;
    let first = kiln.submit_ok(&key, image_job(40, 24)).await;
    let done = kiln.wait_terminal(&key, &first).await;
    assert_eq!(done["status"], "succeeded");
    let reference = format!("kiln://jobs/{first}/outputs/0");
    let upscale = json!({"model": "demo/upscale", "input": {"image": reference, "scale": 2}});
    let second = kiln.submit_ok(&key, upscale).await;
    let job = kiln.wait_terminal(&key, &second).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    let url = job["outputs"][0]["url"].as_str().unwrap();
    assert_eq!(output_size(&kiln.http, url).await, (80, 48));
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn references_to_other_tenants_or_missing_outputs_are_refused() {
    let kiln = Kiln::start().await;
    let acme = kiln.key("acme").await;
    let other = kiln.key("other").await;
    let first = kiln.submit_ok(&acme, image_job(16, 16)).await;
    kiln.wait_terminal(&acme, &first).await;
    let cases = [
        (
            &other,
            format!("kiln://jobs/{first}/outputs/0"),
            "input_reference_invalid",
        ),
        (
            &acme,
            format!("kiln://jobs/{first}/outputs/3"),
            "input_reference_invalid",
        ),
        (
            &acme,
            format!("kiln://jobs/{}/outputs/0", uuid_like()),
            "input_reference_invalid",
        ),
        (
            &acme,
            "kiln://jobs/not-a-job/outputs/0".to_owned(),
            "invalid_reference",
        ),
        (
            &acme,
            format!("kiln://jobs/{first}/inputs/0"),
            "invalid_reference",
        ),
    ];
    for (key, reference, code) in cases {
        let body = json!({"model": "demo/upscale", "input": {"image": reference, "scale": 2}});
        let res = kiln.submit(key, body).await;
        assert_eq!(res.status(), 422, "{reference}");
        let problem: Value = res.json().await.unwrap();
        assert_eq!(problem["code"], code, "{reference}");
        assert_eq!(problem["field"], "input.image", "{reference}");
    }
    let listed: Value = kiln
        .http
        .get(kiln.url("/v1/jobs"))
        .bearer_auth(&other)
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
    kiln.shutdown().await;
}

fn uuid_like() -> String {
    kiln_core::JobId::new().to_string()
}
