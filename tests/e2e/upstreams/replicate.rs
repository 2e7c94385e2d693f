//! Replicate: predictions created, polled, throttled, refused, canceled, cut short by a
//! deadline, and the outputs they name fetched (or refused) and stored.

use super::*;

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
    let id = kiln.submit_ok(&key, body).await;
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
    let job = kiln.wait_terminal(&key, &id).await;
    assert_eq!(job["status"], "canceled");
    assert!(
        job["progress"].is_null(),
        "a canceled job shows no progress"
    );
    drop(upstream);
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
    let id = kiln.submit_ok(&key, body).await;
    let job = kiln.wait_terminal(&key, &id).await;
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
    let id = first.submit_ok(&key, body).await;
    first
        .wait_for(&key, &id, "attached upstream", |j| {
            j["attempts"][0]["upstream_id"].is_string()
        })
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

/// An output is streamed into the store as it downloads and counted against
/// `outputs.max_output_bytes` as it comes: one over the limit fails the job with a clear code
/// and leaves no object behind.
#[tokio::test(flavor = "multi_thread")]
async fn an_output_over_the_output_limit_fails_as_it_streams_and_stores_nothing() {
    let secrets = Secrets::new();
    let replicate_key = secrets.file("replicate", "r8_test");
    let (base, _upstream) = fake_replicate().await;
    let kiln = kiln_adjusted(
        vec![provider(
            "replicate",
            ProviderKind::Replicate,
            &base,
            Some(replicate_key),
        )],
        vec![route("replicate", "acme/painter")],
        // The fake's 48x40 PNG is larger than this.
        |c| c.outputs.max_output_bytes = 100,
    )
    .await;
    let key = kiln.key("acme").await;
    let job = run(&kiln, &key, "a kiln").await;
    assert_eq!(job["status"], "failed", "{job:#}");
    assert_eq!(job["error"]["code"], "upstream_output_too_large");
    let left = local_objects(&kiln.dir.path().join("outputs"));
    assert!(left.is_empty(), "nothing is stored: {left:?}");
    kiln.shutdown().await;
}
