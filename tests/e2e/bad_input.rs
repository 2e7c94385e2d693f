//! Bad input gets a 4xx problem detail with a stable code and the field at fault, and changes
//! nothing: the ledger has exactly the rows it had before.

use crate::common::*;
use serde_json::{json, Value};

async fn ledger_rows(kiln: &Kiln) -> (i64, i64, i64) {
    let pool = ledger_pool(&kiln.db_path()).await;
    let rows = (
        count(&pool, "SELECT COUNT(*) FROM jobs").await,
        count(&pool, "SELECT COUNT(*) FROM job_transitions").await,
        count(&pool, "SELECT COUNT(*) FROM attempts").await,
    );
    pool.close().await;
    rows
}

#[tokio::test]
async fn bad_submissions_are_refused_and_change_nothing() {
    let kiln = Kiln::start().await;
    let key = kiln.key("acme").await;
    // One good job first, so "unchanged" is not trivially "empty".
    let id = kiln.submit_ok(&key, image_job(16, 16)).await;
    kiln.wait_terminal(&key, &id).await;
    let before = ledger_rows(&kiln).await;

    let image = |input: Value| json!({"model": "demo/image", "input": input});
    let cases: Vec<(&str, Value, u16, &str, Option<&str>)> = vec![
        (
            "unknown model",
            json!({"model": "acme/nope", "input": {}}),
            422,
            "unknown_model",
            Some("model"),
        ),
        (
            "model of the wrong type",
            json!({"model": 5, "input": {}}),
            422,
            "invalid_type",
            Some("model"),
        ),
        (
            "a cancel_after that is not a duration",
            json!({"model": "demo/image", "input": {"prompt": "x", "width": 16, "height": 16}, "cancel_after": "forever"}),
            422,
            "invalid_duration",
            Some("cancel_after"),
        ),
        (
            "a cancel_after of zero",
            json!({"model": "demo/image", "input": {"prompt": "x", "width": 16, "height": 16}, "cancel_after": 0}),
            422,
            "out_of_range",
            Some("cancel_after"),
        ),
        (
            "a max_queue_wait past a day",
            json!({"model": "demo/image", "input": {"prompt": "x", "width": 16, "height": 16}, "max_queue_wait": "25h"}),
            422,
            "out_of_range",
            Some("max_queue_wait"),
        ),
        (
            "missing model",
            json!({"input": {}}),
            422,
            "missing_field",
            Some("model"),
        ),
        (
            "missing input",
            json!({"model": "demo/image"}),
            422,
            "missing_field",
            Some("input"),
        ),
        (
            "unknown top-level field",
            json!({"model": "demo/image", "input": {}, "colour": 1}),
            422,
            "unknown_field",
            Some("colour"),
        ),
        (
            "wrong type",
            image(json!({"prompt": "x", "width": "64", "height": 64})),
            422,
            "invalid_type",
            Some("input.width"),
        ),
        (
            "missing prompt",
            image(json!({"width": 64, "height": 64})),
            422,
            "missing_field",
            Some("input.prompt"),
        ),
        (
            "width 0",
            image(json!({"prompt": "x", "width": 0, "height": 64})),
            422,
            "out_of_range",
            Some("input.width"),
        ),
        (
            "width 100000",
            image(json!({"prompt": "x", "width": 100000, "height": 64})),
            422,
            "out_of_range",
            Some("input.width"),
        ),
        (
            "input not an object",
            json!({"model": "demo/image", "input": "draw"}),
            422,
            "invalid_type",
            Some("input"),
        ),
        (
            "loopback input URL",
            json!({"model": "demo/upscale", "input": {"image": "http://127.0.0.1:1/x.png", "scale": 2}}),
            422,
            "url_forbidden",
            Some("input.image"),
        ),
        (
            "metadata input URL",
            json!({"model": "demo/upscale", "input": {"image": "http://169.254.169.254/latest", "scale": 2}}),
            422,
            "url_forbidden",
            Some("input.image"),
        ),
        (
            "tampered own URL",
            json!({"model": "demo/upscale", "input": {"image": format!("{}/v1/files/jobs/x/0.png?expires=9999999999&sig=00", kiln.base), "scale": 2}}),
            422,
            "input_url_invalid",
            Some("input.image"),
        ),
        ("JSON array body", json!([1, 2]), 400, "invalid_json", None),
    ];
    for (name, body, status, code, field) in cases {
        let res = kiln.submit(&key, body).await;
        assert_eq!(res.status().as_u16(), status, "{name}");
        assert_eq!(
            res.headers()["content-type"],
            "application/problem+json",
            "{name}"
        );
        let problem: Value = res.json().await.unwrap();
        assert_eq!(problem["code"], code, "{name}: {problem}");
        assert_eq!(problem["status"], status, "{name}");
        assert!(
            problem["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{name}"
        );
        assert_eq!(problem["field"].as_str(), field, "{name}: {problem}");
    }

    let res = kiln
        .http
        .post(kiln.url("/v1/jobs"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body("{\"model\": \"demo/image\", \"input\": {")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "invalid_json");

    let res = kiln
        .http
        .post(kiln.url("/v1/jobs"))
        .bearer_auth(&key)
        .header("Cancel-After", "soon")
        .json(&image_job(16, 16))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
    let problem: Value = res.json().await.unwrap();
    assert_eq!(problem["code"], "invalid_duration");
    assert_eq!(problem["field"], "Cancel-After");

    let huge = format!(
        "{{\"model\":\"demo/image\",\"input\":{{\"prompt\":\"{}\"}}}}",
        "x".repeat(10 * 1024 * 1024)
    );
    let res = kiln
        .http
        .post(kiln.url("/v1/jobs"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "body_too_large");

    assert_eq!(
        ledger_rows(&kiln).await,
        before,
        "refused submissions must not write"
    );
    kiln.shutdown().await;
}

#[tokio::test]
async fn unknown_routes_and_jobs_are_problem_404s() {
    let kiln = Kiln::start().await;
    let key = kiln.key("acme").await;
    for path in [
        "/v1/nothing",
        "/v1/jobs/not-a-uuid",
        "/v1/jobs/01a20882-954f-77d0-8913-d7e308f5b872",
    ] {
        let res = kiln
            .http
            .get(kiln.url(path))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 404, "{path}");
        assert_eq!(res.headers()["content-type"], "application/problem+json");
    }
    kiln.shutdown().await;
}

/// An upload is bounded before and while it is read: a declared length over the limit is
/// refused unread, and a body that goes on past it is cut off; neither leaves a file behind.
#[tokio::test]
async fn an_upload_over_the_limit_is_refused_and_leaves_nothing() {
    let kiln = Kiln::start_with(|c| c.outputs.max_input_bytes = 64 * 1024).await;
    let key = kiln.key("acme").await;
    let big = vec![7u8; 300 * 1024];
    let form = reqwest::multipart::Form::new().part(
        "content",
        reqwest::multipart::Part::bytes(big.clone()).file_name("big.bin"),
    );
    let declared = kiln.post_file(&key, form).await;
    assert_eq!(declared.status(), 413);
    let problem: serde_json::Value = declared.json().await.unwrap();
    assert_eq!(problem["code"], "file_too_large");
    // No length declared (a stream): cut off at the limit as it is read.
    let chunks = futures::stream::iter(
        big.chunks(16 * 1024)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let streamed = reqwest::multipart::Form::new().part(
        "content",
        reqwest::multipart::Part::stream(reqwest::Body::wrap_stream(chunks)).file_name("big.bin"),
    );
    let cut = kiln.post_file(&key, streamed).await;
    assert_eq!(cut.status(), 413);
    let listed: serde_json::Value = kiln
        .http
        .get(kiln.url("/v1/files"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["results"], serde_json::json!([]));
    fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        std::fs::read_dir(dir).map_or(vec![], |entries| {
            entries
                .flatten()
                .flat_map(|e| {
                    let path = e.path();
                    if path.is_dir() {
                        files_under(&path)
                    } else {
                        vec![path]
                    }
                })
                .collect()
        })
    }
    // Uploads are stored under keys `uploads/…`: in the local store, files named `uploads+…`.
    let outputs = kiln.dir.path().join("outputs");
    let uploads = || -> Vec<_> {
        files_under(&outputs)
            .into_iter()
            .filter(|p| {
                p.file_name()
                    .and_then(|f| f.to_str())
                    .is_some_and(|f| f.starts_with("uploads+") || f.starts_with(".tmp-"))
            })
            .collect()
    };
    assert_eq!(
        uploads(),
        Vec::<std::path::PathBuf>::new(),
        "nothing is left"
    );
    // Where an accepted upload is found, so the look above looked in the right place.
    let small = reqwest::multipart::Form::new().part(
        "content",
        reqwest::multipart::Part::bytes(vec![7u8; 1024]).file_name("small.bin"),
    );
    let accepted = kiln.post_file(&key, small).await;
    assert!(accepted.status().is_success(), "{}", accepted.status());
    assert_eq!(uploads().len(), 1, "{:?}", files_under(&outputs));
    kiln.shutdown().await;
}
