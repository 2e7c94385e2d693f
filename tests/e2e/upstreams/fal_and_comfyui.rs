//! fal's queue and ComfyUI's prompt API: requests queued, polled, failed and canceled.

use super::*;

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
