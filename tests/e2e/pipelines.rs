//! Pipelines: steps that feed each other's outputs, each an ordinary job. A chain runs to the end
//! with each step reading the previous one's output from storage; a failing step fails the
//! pipeline and its dependents never run; cancel cascades; bad graphs create nothing.

use crate::common::*;
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

/// Follows the pipeline's events until `done` holds.
async fn wait_pipeline(kiln: &Kiln, key: &str, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let url = kiln.url(&format!("/v1/pipelines/{id}/events"));
    follow_events(&kiln.http, &url, key, done).await
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
    let upscale_job = kiln
        .get_job(&key, steps[1]["job_id"].as_str().unwrap())
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
        outputs[0]["content_type"], "video/mp4",
        "the chain ends in an MP4"
    );
    assert_eq!(
        output_size(&kiln.http, outputs[0]["url"].as_str().unwrap()).await,
        (80, 48)
    );
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_step_that_fails_for_good_fails_the_pipeline_and_its_dependents_never_run() {
    // The deliverer's look an hour apart: the worker that ended the step wakes it, so
    // `pipeline.failed` still goes out at once.
    let kiln = Kiln::start_with(|c| c.webhooks.poll = std::time::Duration::from_secs(3600)).await;
    let key = kiln.key("acme").await;
    let mut hooks = Receiver::start().await;
    let mut body = chain(json!({"fail_rate": 1.0}));
    body["webhook"] = json!(hooks.url);
    let res = submit_pipeline(&kiln, &key, body).await;
    let id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let done = wait_pipeline(&kiln, &key, &id, |p| p["status"] != "running").await;
    assert_eq!(done["status"], "failed", "{done:#}");
    assert_eq!(done["error"]["code"], "step_failed");
    assert_eq!(done["steps"][1]["status"], "failed");
    // A step that will never start reads as canceled once its pipeline has ended.
    assert_eq!(done["steps"][2]["status"], "canceled");
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
    let event = hooks.next().await;
    assert_eq!(event["type"], "pipeline.failed");
    assert_eq!(event["data"]["id"], id.as_str());
    assert_eq!(event["data"]["status"], "failed");
    assert!(
        hooks.arrived().is_empty(),
        "pipeline.failed fired more than once"
    );
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
    let job = kiln
        .wait_for(&key, step2, "closed", |j| {
            j["attempts"][0]["outcome"] == "canceled"
        })
        .await;
    assert_eq!(job["status"], "canceled");
    let after = get_pipeline(&kiln, &key, &id).await;
    assert!(after["steps"][2]["job_id"].is_null());
    assert_eq!(
        after["steps"][2]["status"], "canceled",
        "a step that will never start does not stay pending"
    );
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_graphs_are_refused_and_create_nothing() {
    let kiln = Kiln::start().await;
    let acme = kiln.key("acme").await;
    let other = kiln.key("other").await;
    let theirs = kiln.submit_ok(&other, image_job(16, 16)).await;
    kiln.wait_terminal(&other, &theirs).await;
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

/// A pipeline's step goes through the same submit checks as a job: an input URL a job may not
/// name is refused for a step with the same problem, and nothing is created.
#[tokio::test(flavor = "multi_thread")]
async fn a_forbidden_input_url_is_refused_in_a_pipeline_as_in_a_job() {
    let kiln = Kiln::start().await;
    let key = kiln.key("acme").await;
    for url in [
        "http://169.254.169.254/latest/meta-data",
        "http://127.0.0.1:1/x.png",
        "http://[::ffff:10.0.0.1]/x.png",
    ] {
        let input = json!({"image": url, "scale": 2});
        let job = kiln
            .submit(&key, json!({"model": "demo/upscale", "input": input}))
            .await;
        assert_eq!(job.status(), 422, "{url}");
        let job: Value = job.json().await.unwrap();
        let res = submit_pipeline(
            &kiln,
            &key,
            json!({"steps": [
                {"name": "image", "model": "demo/image", "input": {"prompt": "x", "width": 16, "height": 16}},
                {"name": "up", "model": "demo/upscale", "input": input},
            ]}),
        )
        .await;
        assert_eq!(res.status(), 422, "{url}");
        let step: Value = res.json().await.unwrap();
        assert_eq!(step["code"], job["code"], "{step}");
        assert_eq!(step["code"], "url_forbidden");
        assert_eq!(
            step["field"].as_str().unwrap(),
            format!("steps[1].{}", job["field"].as_str().unwrap())
        );
    }
    for list in ["/v1/jobs", "/v1/pipelines"] {
        let listed: Value = kiln
            .http
            .get(kiln.url(list))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(
            listed["data"].as_array().unwrap().is_empty(),
            "{list}: {listed}"
        );
    }
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn prefer_wait_on_create_returns_a_short_pipeline_finished() {
    let kiln = Kiln::start().await;
    let key = kiln.key("acme").await;
    // About a second of work in all: the first step holds for 1 s.
    let mut body = chain(json!({}));
    body["steps"][0]["input"]["latency_ms"] = json!(1_000);
    let res = kiln
        .http
        .post(kiln.url("/v1/pipelines"))
        .bearer_auth(&key)
        .header("Prefer", "wait=10")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "created and done");
    assert_eq!(res.headers()["preference-applied"], "wait=10");
    assert!(res.headers().get("location").is_some());
    let done: Value = res.json().await.unwrap();
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert_eq!(done["outputs"][0]["step"], "video");
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn prefer_wait_on_get_returns_a_long_pipeline_running_after_the_wait() {
    let kiln = Kiln::start().await;
    let key = kiln.key("acme").await;
    let mut body = chain(json!({}));
    body["steps"][0]["input"]["latency_ms"] = json!(30_000);
    let res = submit_pipeline(&kiln, &key, body).await;
    assert_eq!(res.status(), 202);
    let id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let started = std::time::Instant::now();
    let res = kiln
        .http
        .get(kiln.url(&format!("/v1/pipelines/{id}")))
        .bearer_auth(&key)
        .header("Prefer", "wait=10")
        .send()
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["preference-applied"], "wait=10");
    assert!(res.headers().get("retry-after").is_some(), "a poll hint");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], "running", "{body:#}");
    assert_eq!(body["steps"][0]["status"], "running", "{body:#}");
    // The wait is the behaviour under test: it holds for the 10 s asked, and not much more.
    assert!(waited >= std::time::Duration::from_secs(10), "{waited:?}");
    assert!(waited < std::time::Duration::from_secs(14), "{waited:?}");
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pipeline_streams_each_change_as_server_sent_events_until_it_ends() {
    let kiln = Kiln::start().await;
    let key = kiln.key("acme").await;
    // Step 2 takes 1.5 s, longer than the watcher's slowest pause, so it is seen running.
    let res = submit_pipeline(&kiln, &key, chain(json!({"latency_ms": 1_500}))).await;
    let id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = kiln
        .http
        .get(kiln.url(&format!("/v1/pipelines/{id}/events")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    // The stream ends by itself after the terminal event.
    let text = res.text().await.unwrap();
    assert!(text.lines().any(|l| l == "event: pipeline"), "{text}");
    let seen: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let last = seen.last().expect("at least one event");
    assert_eq!(last["status"], "succeeded", "{text}");
    // Each event is a change of the pipeline or one of its steps.
    let prints: Vec<Value> = seen
        .iter()
        .map(|p| {
            json!([
                p["status"],
                p["steps"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s["status"].clone())
                    .collect::<Vec<_>>()
            ])
        })
        .collect();
    assert!(prints.windows(2).all(|w| w[0] != w[1]), "{prints:#?}");
    // Step 2 was seen running between step 1's end and its own.
    assert!(
        prints
            .iter()
            .any(|p| p[1][0] == "succeeded" && p[1][1] == "running"),
        "{prints:#?}"
    );
    // Another tenant sees nothing.
    let other = kiln.key("other").await;
    let res = kiln
        .http
        .get(kiln.url(&format!("/v1/pipelines/{id}/events")))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelines_are_listed_newest_first_by_tenant_and_paged() {
    let kiln = Kiln::start().await;
    let acme = kiln.key("acme").await;
    let other = kiln.key("other").await;
    let mut ids = vec![];
    for _ in 0..3 {
        let res = submit_pipeline(&kiln, &acme, chain(json!({}))).await;
        assert_eq!(res.status(), 202);
        ids.push(
            res.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let res = submit_pipeline(&kiln, &other, chain(json!({}))).await;
    assert_eq!(res.status(), 202);
    let page = |key: String, query: String| {
        let http = kiln.http.clone();
        let url = kiln.url(&format!("/v1/pipelines{query}"));
        async move {
            let res = http.get(url).bearer_auth(key).send().await.unwrap();
            let status = res.status();
            (status, res.json::<Value>().await.unwrap())
        }
    };
    let (status, first) = page(acme.clone(), "?limit=2".into()).await;
    assert_eq!(status, 200);
    let listed: Vec<&str> = first["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, vec![ids[2].as_str(), ids[1].as_str()]);
    assert_eq!(first["has_more"], true);
    let cursor = first["next_cursor"].as_str().unwrap();
    let (_, second) = page(acme.clone(), format!("?limit=2&cursor={cursor}")).await;
    assert_eq!(second["data"].as_array().unwrap().len(), 1);
    assert_eq!(second["data"][0]["id"], ids[0].as_str());
    assert_eq!(second["has_more"], false);
    // Filters: every acme pipeline ends succeeded; none is listed as failed.
    for id in &ids {
        wait_pipeline(&kiln, &acme, id, |p| p["status"] == "succeeded").await;
    }
    let (_, failed) = page(acme.clone(), "?status=failed".into()).await;
    assert!(failed["data"].as_array().unwrap().is_empty(), "{failed:#}");
    let (_, succeeded) = page(acme.clone(), "?status=succeeded".into()).await;
    assert_eq!(succeeded["data"].as_array().unwrap().len(), 3);
    // The other tenant sees only its own; a bad filter is a problem naming it.
    let (_, theirs) = page(other.clone(), String::new()).await;
    assert_eq!(theirs["data"].as_array().unwrap().len(), 1);
    let (status, bad) = page(acme.clone(), "?model=demo/image".into()).await;
    assert_eq!(status, 400);
    assert_eq!(bad["code"], "unknown_parameter");
    assert_eq!(bad["field"], "model");
    kiln.shutdown().await;
}
