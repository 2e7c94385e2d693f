//! The examples stay true: the curl walk-through runs the chain to a video against a live
//! Kiln, and the n8n workflow's request body, with n8n's expressions filled in as n8n would, is
//! a pipeline that runs to the end and posts `pipeline.succeeded` to the execution's resume URL
//! carrying what the workflow's later nodes read.

use crate::common::*;
use serde_json::Value;
use std::path::Path;

fn example(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(path)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_curl_walkthrough_runs_the_chain_to_a_video() {
    let kiln = Kiln::start().await;
    let key = kiln.key("acme").await;
    let run = tokio::process::Command::new("bash")
        .arg(example("pipeline.sh"))
        .env("KILN_URL", &kiln.base)
        .env("KILN_API_KEY", &key)
        .output();
    let run = tokio::time::timeout(DEADLINE, run)
        .await
        .expect("the walk-through finished")
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("ended succeeded"), "{stdout}");
    // Its last line is the video's download URL: 256×256 upscaled 2×.
    let url = stdout.lines().last().unwrap();
    assert_eq!(output_size(&kiln.http, url).await, (512, 512));
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_quick_start_runs_end_to_end_with_the_client_and_curl() {
    let kiln = Kiln::start().await;
    let key = kiln.key("acme").await;
    let dir = tempfile::tempdir().unwrap();
    let metrics = kiln.metrics_url();
    let run = tokio::process::Command::new("bash")
        .arg(example("quickstart.sh"))
        .current_dir(dir.path())
        .env("KILN", kiln_bin())
        .env("KILN_URL", &kiln.base)
        .env("KILN_API_KEY", &key)
        .env("KILN_METRICS_URL", metrics.trim_end_matches("/metrics"))
        .output();
    let run = tokio::time::timeout(DEADLINE, run)
        .await
        .expect("the quick start finished")
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("event: job"),
        "the event stream was followed: {stdout}"
    );
    assert!(stdout.contains("kiln_outputs_stored_total"), "{stdout}");
    let clip = std::fs::read(dir.path().join("clip.mp4")).unwrap();
    assert_eq!(&clip[4..8], b"ftyp", "the chain ended in an MP4 clip");
    let image = image::open(dir.path().join("image.png")).unwrap();
    assert_eq!((image.width(), image.height()), (256, 256));
    kiln.shutdown().await;
}

/// Fills in the n8n expressions of a string the way n8n does for this workflow.
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut text = template.strip_prefix('=').unwrap_or(template).to_owned();
    for (expression, value) in values {
        text = text.replace(&format!("{{{{ {expression} }}}}"), value);
    }
    assert!(
        !text.contains("{{"),
        "an expression was left unfilled: {text}"
    );
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn the_n8n_workflow_creates_a_pipeline_that_resumes_its_wait_node() {
    let workflow: Value = serde_json::from_str(
        &std::fs::read_to_string(example("n8n/image-upscale-video.json")).unwrap(),
    )
    .unwrap();
    let nodes = workflow["nodes"].as_array().unwrap();
    let node = |name: &str| {
        nodes
            .iter()
            .find(|n| n["name"] == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    };
    // Every connection joins nodes that exist, and the chain runs settings → create → wait → if.
    for (from, outputs) in workflow["connections"].as_object().unwrap() {
        node(from);
        for to in outputs["main"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|o| o.as_array().unwrap())
        {
            node(to["node"].as_str().unwrap());
        }
    }
    let next = |from: &str| workflow["connections"][from]["main"][0][0]["node"].clone();
    assert_eq!(next("Kiln settings"), "Create pipeline");
    assert_eq!(next("Create pipeline"), "Wait for Kiln webhook");
    assert_eq!(next("Wait for Kiln webhook"), "Succeeded?");
    let wait = node("Wait for Kiln webhook");
    assert_eq!(wait["type"], "n8n-nodes-base.wait");
    assert_eq!(wait["parameters"]["resume"], "webhook");
    assert_eq!(wait["parameters"]["httpMethod"], "POST");

    let kiln = Kiln::start().await;
    let key = kiln.key("acme").await;
    let mut resume = Receiver::start().await;
    let settings = &node("Kiln settings")["parameters"]["assignments"]["assignments"];
    let setting = |name: &str| {
        settings
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == name)
            .unwrap()["value"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let create = &node("Create pipeline")["parameters"];
    assert_eq!(create["method"], "POST");
    let url = fill(
        create["url"].as_str().unwrap(),
        &[("$json.kiln_url", &kiln.base)],
    );
    let body = fill(
        create["jsonBody"].as_str().unwrap(),
        &[
            ("$execution.resumeUrl", &resume.url),
            ("$json.prompt", &setting("prompt")),
        ],
    );
    let authorization = fill(
        create["headerParameters"]["parameters"][0]["value"]
            .as_str()
            .unwrap(),
        &[("$('Kiln settings').item.json.kiln_api_key", &key)],
    );
    let res = kiln
        .http
        .post(url)
        .header("Authorization", authorization)
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202, "{:?}", res.text().await);

    // What n8n's Wait node receives as `body`, and what the later nodes read of it.
    let event = resume.next().await;
    assert_eq!(event["type"], "pipeline.succeeded", "{event:#}");
    let video = event["data"]["outputs"][0]["url"].as_str().unwrap();
    assert_eq!(output_size(&kiln.http, video).await, (512, 512));
    assert!(event["data"]["cost"].is_number());
    assert_eq!(
        node("Succeeded?")["parameters"]["conditions"]["conditions"][0]["leftValue"],
        "={{ $json.body.type }}"
    );
    kiln.shutdown().await;
}
