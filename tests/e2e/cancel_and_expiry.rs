//! Cancel of a queued and of a running job, and the expiry of outputs: the janitor deletes them,
//! the job shows them as expired, and their download URLs stop working.

use crate::common::*;
use serde_json::{json, Value};

fn slow_job(latency_ms: u64) -> Value {
    json!({"model": "demo/image", "input": {"prompt": "slow", "width": 16, "height": 16, "latency_ms": latency_ms}})
}

fn files_under(dir: &std::path::Path) -> usize {
    if !dir.exists() {
        return 0;
    }
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                files_under(&e.path())
            } else {
                1
            }
        })
        .sum()
}

#[tokio::test]
async fn cancel_running_and_queued_jobs() {
    // One job at a time, so the second job stays queued behind the first.
    let kiln = Kiln::start_with(|c| c.worker.concurrency = 1).await;
    let key = kiln.key("acme").await;
    let running = kiln.submit_ok(&key, slow_job(60_000)).await;
    kiln.wait_for(&key, &running, "running", |j| j["status"] == "running")
        .await;
    let queued = kiln.submit_ok(&key, slow_job(0)).await;
    assert_eq!(kiln.get_job(&key, &queued).await["status"], "queued");

    let res = kiln
        .http
        .post(kiln.url(&format!("/v1/jobs/{queued}/cancel")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let job: Value = res.json().await.unwrap();
    assert_eq!(job["status"], "canceled");
    assert!(
        job["attempts"].as_array().unwrap().is_empty(),
        "a queued job never started"
    );

    let res = kiln
        .http
        .post(kiln.url(&format!("/v1/jobs/{running}/cancel")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["status"], "canceled");
    // The worker notices at its next heartbeat and stops the generator: the attempt is closed as
    // canceled long before its 60 s of latency would have passed, and it wrote no output.
    let job = kiln
        .wait_for(&key, &running, "stopped", |j| {
            j["attempts"][0]["finished_at"].is_string()
        })
        .await;
    assert_eq!(job["status"], "canceled");
    assert_eq!(job["attempts"][0]["outcome"], "canceled");
    assert_eq!(job["error"]["code"], "canceled");
    assert!(job["outputs"].as_array().unwrap().is_empty());
    assert_eq!(files_under(&kiln.dir.path().join("outputs")), 0);

    // The worker is free again: a new job runs to completion, and the canceled ones stay canceled.
    let next = kiln.submit_ok(&key, slow_job(0)).await;
    assert_eq!(kiln.wait_terminal(&key, &next).await["status"], "succeeded");
    assert_eq!(kiln.get_job(&key, &queued).await["status"], "canceled");

    // Terminal jobs cannot be canceled again, a canceled one included: a second cancel is a
    // conflict that names how the job ended, as the README promises once a job has ended.
    let again = kiln
        .http
        .post(kiln.url(&format!("/v1/jobs/{queued}/cancel")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);
    let problem: Value = again.json().await.unwrap();
    assert_eq!(problem["code"], "job_already_finished");
    let done = kiln
        .http
        .post(kiln.url(&format!("/v1/jobs/{next}/cancel")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 409);
    assert_eq!(
        done.json::<Value>().await.unwrap()["code"],
        "job_already_finished"
    );
    let pool = ledger_pool(&kiln.db_path()).await;
    for id in [&queued, &running, &next] {
        let terminal = count(&pool, &format!("SELECT COUNT(*) FROM job_transitions WHERE job_id = '{id}' AND to_status IN ('succeeded','failed','canceled')")).await;
        assert_eq!(terminal, 1, "job {id}");
    }
    kiln.shutdown().await;
}

#[tokio::test]
async fn the_janitor_deletes_expired_outputs() {
    let kiln = Kiln::start_with(|c| {
        c.outputs.ttl = std::time::Duration::from_secs(2);
        c.outputs.janitor_interval = std::time::Duration::from_millis(200);
    })
    .await;
    let key = kiln.key("acme").await;
    // Larger than a preview, so a preview is stored beside it.
    let id = kiln.submit_ok(&key, image_job(300, 200)).await;
    let job = kiln.wait_terminal(&key, &id).await;
    let url = job["outputs"][0]["url"].as_str().unwrap().to_owned();
    assert_eq!(kiln.http.get(&url).send().await.unwrap().status(), 200);
    let outputs_dir = kiln.dir.path().join("outputs");
    assert_eq!(files_under(&outputs_dir), 2, "the output and its preview");
    let preview = job["outputs"][0]["preview_url"]
        .as_str()
        .unwrap()
        .to_owned();

    let job = kiln
        .wait_for(&key, &id, "expired", |j| j["outputs"][0]["expired"] == true)
        .await;
    assert!(job["outputs"][0]["url"].is_null());
    // Deletion is recorded after the object is gone; wait for the ledger's mark.
    let pool = ledger_pool(&kiln.db_path()).await;
    let start = std::time::Instant::now();
    while count(
        &pool,
        "SELECT COUNT(*) FROM outputs WHERE deleted_at IS NOT NULL",
    )
    .await
        == 0
    {
        assert!(
            start.elapsed() < DEADLINE,
            "the janitor never deleted the output"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        files_under(&outputs_dir),
        0,
        "the object and its preview are gone from storage"
    );
    assert_eq!(kiln.http.get(&preview).send().await.unwrap().status(), 403);
    let res = kiln.http.get(&url).send().await.unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "url_expired");
    let res = kiln
        .http
        .get(kiln.url(&format!("/v1/jobs/{id}/outputs/0")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 410);
    kiln.shutdown().await;
}

/// An upload expires like an output: past the outputs' time to live the janitor deletes its
/// object and marks it, and the file is no longer found.
#[tokio::test]
async fn the_janitor_deletes_expired_uploads() {
    let kiln = Kiln::start_with(|c| {
        c.outputs.ttl = std::time::Duration::from_secs(1);
        c.outputs.janitor_interval = std::time::Duration::from_millis(200);
    })
    .await;
    let key = kiln.key("acme").await;
    let form = reqwest::multipart::Form::new().part(
        "content",
        reqwest::multipart::Part::bytes(b"abc".to_vec()).file_name("a.txt"),
    );
    let created = kiln.post_file(&key, form).await;
    assert_eq!(created.status(), 201);
    let file: Value = created.json().await.unwrap();
    assert_eq!(file["size"], 3);
    let outputs_dir = kiln.dir.path().join("outputs");
    assert_eq!(files_under(&outputs_dir), 1);
    let pool = ledger_pool(&kiln.db_path()).await;
    let start = std::time::Instant::now();
    while count(
        &pool,
        "SELECT COUNT(*) FROM files WHERE deleted_at IS NOT NULL",
    )
    .await
        == 0
    {
        assert!(
            start.elapsed() < DEADLINE,
            "the janitor never deleted the upload"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        files_under(&outputs_dir),
        0,
        "the object is gone from storage"
    );
    let read = kiln
        .http
        .get(kiln.url(&format!("/v1/files/{}", file["id"].as_str().unwrap())))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 404);
    kiln.shutdown().await;
}
