//! The whole job lifecycle on the embedded default: submit → poll → download, chaining
//! image → upscale → video through output URLs, retries, listing, and the bare binary starting
//! with no configuration at all.

use crate::common::*;
use serde_json::{json, Value};
use std::process::{Command, Stdio};

async fn download(http: &reqwest::Client, url: &str) -> Vec<u8> {
    let res = http.get(url).send().await.unwrap();
    assert_eq!(res.status(), 200, "downloading {url}");
    res.bytes().await.unwrap().to_vec()
}

#[tokio::test]
async fn image_then_upscale_then_video() {
    let kiln = Kiln::start().await;
    let key = kiln.key("acme").await;

    let res = kiln.submit(&key, image_job(64, 48)).await;
    assert_eq!(res.status(), 202);
    assert!(
        res.headers().get("retry-after").is_some(),
        "a queued job carries a poll hint"
    );
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    let job: Value = res.json().await.unwrap();
    assert_eq!(job["status"], "queued");
    assert_eq!(
        location,
        format!("/v1/jobs/{}", job["id"].as_str().unwrap())
    );
    let id = job["id"].as_str().unwrap();

    let done = kiln.wait_terminal(&key, id).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert_eq!(done["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(done["attempts"][0]["outcome"], "succeeded");
    let output = &done["outputs"][0];
    assert_eq!(output["content_type"], "image/png");
    assert!(done["expires_at"].is_string());
    let png = download(&kiln.http, output["url"].as_str().unwrap()).await;
    assert_eq!(png.len() as u64, output["bytes"].as_u64().unwrap());
    let img = image::load_from_memory_with_format(&png, image::ImageFormat::Png).unwrap();
    assert_eq!((img.width(), img.height()), (64, 48));

    // The same input and seed give the same bytes.
    let again = kiln.submit_ok(&key, image_job(64, 48)).await;
    let again = kiln.wait_terminal(&key, &again).await;
    assert_eq!(
        download(&kiln.http, again["outputs"][0]["url"].as_str().unwrap()).await,
        png
    );

    let upscale = kiln
        .submit_ok(
            &key,
            json!({"model": "demo/upscale", "input": {"image": output["url"], "scale": 2}}),
        )
        .await;
    let upscaled = kiln.wait_terminal(&key, &upscale).await;
    assert_eq!(upscaled["status"], "succeeded", "{upscaled:#}");
    let big = download(&kiln.http, upscaled["outputs"][0]["url"].as_str().unwrap()).await;
    let big = image::load_from_memory(&big).unwrap();
    assert_eq!((big.width(), big.height()), (128, 96));

    let video = kiln.submit_ok(&key,
        json!({"model": "demo/video", "input": {"image": upscaled["outputs"][0]["url"], "seconds": 1, "fps": 6}}),
    )
    .await;
    let video = kiln.wait_terminal(&key, &video).await;
    assert_eq!(video["status"], "succeeded", "{video:#}");
    let clip = download(&kiln.http, video["outputs"][0]["url"].as_str().unwrap()).await;
    assert_eq!(video["outputs"][0]["content_type"], "video/mp4");
    let path = kiln.dir.path().join("clip.mp4");
    std::fs::write(&path, &clip).unwrap();
    let probe = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=codec_type,codec_name,nb_read_frames,width,height,r_frame_rate,duration:format=format_name",
            "-of",
            "json",
        ])
        .arg(&path)
        .output()
        .expect("ffprobe is installed by the test command");
    assert!(
        probe.status.success(),
        "ffprobe refused the clip: {}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let probed: Value = serde_json::from_slice(&probe.stdout).unwrap();
    let stream = &probed["streams"][0];
    assert_eq!(stream["codec_type"], "video");
    assert_eq!(stream["codec_name"], "h264");
    assert!(
        probed["format"]["format_name"]
            .as_str()
            .unwrap()
            .contains("mp4"),
        "{probed:#}"
    );
    // Exactly the asked rate and length: MP4's timescale has no GIF-style rounding.
    assert_eq!(stream["r_frame_rate"], "6/1");
    assert_eq!(stream["duration"], "1.000000");
    assert_eq!(
        (stream["width"].as_u64(), stream["height"].as_u64()),
        (Some(128), Some(96))
    );
    assert_eq!(stream["nb_read_frames"], "6");
    kiln.shutdown().await;
}

#[tokio::test]
async fn inline_data_uri_inputs_work() {
    let kiln = Kiln::start().await;
    let key = kiln.key("acme").await;
    let src = kiln.submit_ok(&key, image_job(20, 20)).await;
    let src = kiln.wait_terminal(&key, &src).await;
    let png = download(&kiln.http, src["outputs"][0]["url"].as_str().unwrap()).await;
    use base64::Engine;
    let uri = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&png)
    );
    let up = kiln
        .submit_ok(
            &key,
            json!({"model": "demo/upscale", "input": {"image": uri, "scale": 4}}),
        )
        .await;
    let up = kiln.wait_terminal(&key, &up).await;
    let shown = up["input"]["image"].as_str().unwrap();
    assert!(
        shown.starts_with("data:image/png;base64,<") && shown.ends_with("bytes elided>"),
        "{shown}"
    );
    let img = image::load_from_memory(
        &download(&kiln.http, up["outputs"][0]["url"].as_str().unwrap()).await,
    )
    .unwrap();
    assert_eq!((img.width(), img.height()), (80, 80));
    kiln.shutdown().await;
}

#[tokio::test]
async fn transient_failures_are_retried_up_to_max_attempts_then_fail() {
    let kiln = Kiln::start_with(|c| c.worker.max_attempts = 3).await;
    let key = kiln.key("acme").await;
    let id = kiln.submit_ok(&key,
        json!({"model": "demo/image", "input": {"prompt": "x", "width": 32, "height": 32, "fail_rate": 1.0}}),
    )
    .await;
    let job = kiln.wait_terminal(&key, &id).await;
    assert_eq!(job["status"], "failed");
    assert_eq!(job["error"]["code"], "demo_transient_failure");
    let attempts = job["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3, "{job:#}");
    for (n, a) in attempts.iter().enumerate() {
        assert_eq!(a["number"], n as u64 + 1);
        assert_eq!(a["outcome"], "failed");
        assert_eq!(a["error"]["code"], "demo_transient_failure");
        assert_eq!(a["id"], format!("{id}-{}", n + 1), "attempt ids are stable");
    }
    let pool = ledger_pool(&kiln.db_path()).await;
    let terminal = count(&pool, &format!("SELECT COUNT(*) FROM job_transitions WHERE job_id = '{id}' AND to_status IN ('succeeded','failed','canceled')")).await;
    assert_eq!(terminal, 1);
    kiln.shutdown().await;
}

#[tokio::test]
async fn listing_paginates_newest_first_and_filters() {
    let kiln = Kiln::start().await;
    let key = kiln.key("acme").await;
    let mut ids = vec![];
    for _ in 0..5 {
        ids.push(kiln.submit_ok(&key, image_job(16, 16)).await);
    }
    let failing = kiln.submit_ok(&key,
        json!({"model": "demo/image", "input": {"prompt": "x", "width": 16, "height": 16, "fail_rate": 1.0}}),
    )
    .await;
    for id in ids.iter().chain([&failing]) {
        kiln.wait_terminal(&key, id).await;
    }
    let list = |query: String| {
        let http = kiln.http.clone();
        let url = kiln.url(&format!("/v1/jobs?{query}"));
        let key = key.clone();
        async move {
            let res = http.get(url).bearer_auth(key).send().await.unwrap();
            assert_eq!(res.status(), 200);
            res.json::<Value>().await.unwrap()
        }
    };
    let page1 = list("limit=2".into()).await;
    let got: Vec<&str> = page1["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, vec![failing.as_str(), ids[4].as_str()]);
    assert_eq!(page1["has_more"], true);
    let page2 = list(format!(
        "limit=2&cursor={}",
        page1["next_cursor"].as_str().unwrap()
    ))
    .await;
    let got: Vec<&str> = page2["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, vec![ids[3].as_str(), ids[2].as_str()]);

    // A cursor carries its list's filters: the next page of a filtered list, asked for with
    // the cursor alone, stays filtered; the same filters beside it are fine, others refused.
    let succeeded = list("status=succeeded&limit=2".into()).await;
    let cursor = succeeded["next_cursor"].as_str().unwrap().to_owned();
    for query in [
        format!("cursor={cursor}"),
        format!("status=succeeded&cursor={cursor}"),
    ] {
        let next = list(query).await;
        let got: Vec<&str> = next["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap())
            .collect();
        assert_eq!(got, vec![ids[2].as_str(), ids[1].as_str()], "{next:#}");
        assert!(next["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|j| j["status"] == "succeeded"));
    }
    let mixed = kiln
        .http
        .get(kiln.url(&format!("/v1/jobs?status=failed&cursor={cursor}")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(mixed.status(), 400);
    let problem: Value = mixed.json().await.unwrap();
    assert_eq!(problem["code"], "cursor_mismatch");
    assert_eq!(problem["field"], "status");

    let failed = list("status=failed".into()).await;
    assert_eq!(failed["data"].as_array().unwrap().len(), 1);
    assert_eq!(failed["data"][0]["id"], failing.as_str());
    let by_model = list("model=demo/upscale".into()).await;
    assert!(by_model["data"].as_array().unwrap().is_empty());
    let future = list("created_after=2999-01-01T00:00:00Z".into()).await;
    assert!(future["data"].as_array().unwrap().is_empty());
    let past = list("created_before=2999-01-01T00:00:00Z&limit=100".into()).await;
    assert_eq!(past["data"].as_array().unwrap().len(), 6);

    for bad in [
        "limit=0",
        "limit=101",
        "status=done",
        "created_after=yesterday",
        "cursor=zzz",
        "colour=red",
    ] {
        let res = kiln
            .http
            .get(kiln.url(&format!("/v1/jobs?{bad}")))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{bad}");
        let problem: Value = res.json().await.unwrap();
        assert!(problem["field"].is_string(), "{bad}: {problem}");
    }
    kiln.shutdown().await;
}

#[tokio::test]
async fn models_health_and_readiness() {
    let kiln = Kiln::start().await;
    let models: Value = kiln
        .http
        .get(kiln.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["demo/image", "demo/upscale", "demo/video"]);
    assert_eq!(
        kiln.http
            .get(kiln.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        kiln.http
            .get(kiln.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    kiln.shutdown().await;
}

/// `kiln serve` with no configuration file, no environment and no server: it mints and saves a
/// first key, and a job submitted with that key succeeds.
#[tokio::test]
async fn the_binary_serves_with_no_configuration() {
    let cwd = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(kiln_bin())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .current_dir(cwd.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = vec![];
    let base = loop {
        let line = lines.next().expect("kiln exited early").unwrap();
        if let Some(addr) = line.strip_prefix("kiln listening on ") {
            break addr.to_owned();
        }
        printed.push(line);
    };
    let saved = std::fs::read_to_string(cwd.path().join("kiln-data/api-key")).unwrap();
    let key = saved.trim();
    assert!(
        printed.iter().any(|l| l.trim() == key),
        "the first key is printed once: {printed:?}"
    );
    let http = http();
    let id = submit_ok(&http, &base, key, image_job(32, 32)).await;
    let job = wait_terminal(&http, &base, key, &id).await;
    assert_eq!(job["status"], "succeeded");
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A crash between the ledger commit and the ring leaves a committed job nobody was told about;
/// the reconciler rings it. Inserting straight into the ledger is exactly that state.
#[tokio::test]
async fn a_committed_job_that_was_never_rung_still_runs() {
    let kiln = Kiln::start().await;
    let key = kiln.key("acme").await;
    let ledger = &kiln.running.as_ref().unwrap().ledger;
    let job = ledger
        .insert_job(kiln_core::ledger::NewJob {
            idempotency: None,
            priority: Default::default(),
            surface: Default::default(),
            max_active: None,
            spend: None,
            id: kiln_core::JobId::new(),
            tenant: kiln_core::TenantId::parse("acme").unwrap(),
            model: "demo/image".into(),
            input: json!({"prompt": "never rung", "width": 16, "height": 16}),
            deadline_at: None,
            start_by: None,
            key_id: None,
            webhook_url: None,
            webhook_events: None,
        })
        .await
        .unwrap();
    let done = kiln.wait_terminal(&key, &job.id.to_string()).await;
    assert_eq!(done["status"], "succeeded");
    kiln.shutdown().await;
}

/// The embedded default split in two: `kiln api` and `kiln worker` share only the SQLite ledger,
/// and the worker finds jobs by polling it.
#[tokio::test]
async fn separate_api_and_worker_processes_share_the_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let key = create_key(dir.path(), "acme");
    let spawn = |role: &str| {
        std::process::Command::new(kiln_bin())
            .args([role, "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .env("KILN_LOG", "warn")
            .env("KILN_WORKER__RECONCILE_INTERVAL", "100ms")
            // Only polling can find jobs: no ring reaches the worker, and nothing counts as stale.
            .env("KILN_WORKER__RING_STALE_AFTER", "1h")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut api = spawn("api");
    let mut worker = spawn("worker");
    use std::io::BufRead;
    let base = std::io::BufReader::new(api.stdout.take().unwrap())
        .lines()
        .map(|l| l.unwrap())
        .find_map(|l| l.strip_prefix("kiln listening on ").map(str::to_owned))
        .unwrap();
    let http = http();
    // The second job is submitted long after the worker's first pass (which rings everything
    // due at start), so only the per-pass polling of the ledger can find it.
    for _ in 0..2 {
        let id = submit_ok(&http, &base, &key, image_job(16, 16)).await;
        let job = wait_terminal(&http, &base, &key, &id).await;
        assert_eq!(job["status"], "succeeded");
    }
    for p in [&mut api, &mut worker] {
        p.kill().unwrap();
        p.wait().unwrap();
    }
}
