//! Faults against the real binary: kill -9 mid-run loses nothing and finishes nothing twice; a
//! poison job that kills its process every time fails after the rescue limit; SIGTERM releases
//! what it cannot finish in its grace period.

use crate::common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

async fn all_jobs(http: &reqwest::Client, base: &str, key: &str) -> Vec<Value> {
    let res = http
        .get(format!("{base}/v1/jobs?limit=100"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    res.json::<Value>().await.unwrap()["data"]
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_run_then_restart_loses_nothing_and_runs_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let key = create_key(dir.path(), "acme");
    let env = [("KILN_WORKER__CONCURRENCY", "3")];
    let mut kiln = KilnProcess::serve(dir.path(), &env);
    let http = http();
    let mut ids = vec![];
    for i in 0..12 {
        let body = json!({"model": "demo/image", "input": {"prompt": format!("job {i}"), "width": 32, "height": 32, "latency_ms": 400}});
        ids.push(submit_ok(&http, &kiln.base, &key, body).await);
    }
    // Kill it while jobs are running.
    wait_for(&http, &kiln.base, &key, &ids[0], "running", |j| {
        j["status"] == "running"
    })
    .await;
    kiln.kill9();
    let killed_with_running: Vec<String> = {
        let pool = ledger_pool(&dir.path().join("kiln.db")).await;
        sqlx::query_scalar("SELECT id FROM jobs WHERE status = 'running'")
            .fetch_all(&pool)
            .await
            .unwrap()
    };
    assert!(
        !killed_with_running.is_empty(),
        "the kill must catch jobs mid-run"
    );

    let kiln = KilnProcess::serve(dir.path(), &env);
    for id in &ids {
        let job = wait_terminal(&http, &kiln.base, &key, id).await;
        assert_eq!(job["status"], "succeeded", "{job:#}");
        assert_eq!(job["outputs"].as_array().unwrap().len(), 1);
    }
    assert_eq!(
        all_jobs(&http, &kiln.base, &key).await.len(),
        ids.len(),
        "no job lost, none invented"
    );
    let pool = ledger_pool(&dir.path().join("kiln.db")).await;
    for id in &ids {
        let terminal = count(&pool, &format!("SELECT COUNT(*) FROM job_transitions WHERE job_id = '{id}' AND to_status IN ('succeeded','failed','canceled')")).await;
        assert_eq!(terminal, 1, "job {id} has exactly one terminal transition");
        let outputs = count(
            &pool,
            &format!("SELECT COUNT(*) FROM outputs WHERE job_id = '{id}'"),
        )
        .await;
        assert_eq!(outputs, 1, "job {id} has one set of outputs");
    }
    for id in &killed_with_running {
        let job = get_job(&http, &kiln.base, &key, id).await;
        assert_eq!(job["rescues"], 1, "{job:#}");
        let outcomes: Vec<&str> = job["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["outcome"].as_str().unwrap())
            .collect();
        assert_eq!(outcomes, vec!["lost", "succeeded"], "{job:#}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_that_kills_its_worker_every_time_fails_after_the_rescue_limit() {
    let dir = tempfile::tempdir().unwrap();
    let key = create_key(dir.path(), "acme");
    let env = [
        ("KILN_DEMO__ALLOW_CRASH", "true"),
        ("KILN_WORKER__MAX_RESCUES", "2"),
    ];
    let http = http();
    let mut kiln = KilnProcess::serve(dir.path(), &env);
    // The job runs a moment before it aborts the process, so the submit's answer is out first
    // (an abort at once can cut the answer off, and the test would not learn the job's id).
    let poison = submit_ok(
        &http,
        &kiln.base,
        &key,
        json!({"model": "demo/image", "input": {"prompt": "poison", "width": 16, "height": 16, "crash": true, "latency_ms": 300}}),
    )
    .await;
    let mut crashes = 0;
    let start = Instant::now();
    let job = loop {
        assert!(start.elapsed() < DEADLINE, "the poison job never ended");
        if let Some(status) = kiln.child.try_wait().unwrap() {
            assert!(!status.success(), "the process died of the poison job");
            crashes += 1;
            kiln = KilnProcess::serve(dir.path(), &env);
            continue;
        }
        // A request may meet the process as it aborts; the next loop sees the exit.
        if let Some(job) = try_get_job(&http, &kiln.base, &key, &poison).await {
            if is_terminal(&job) {
                break job;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(job["status"], "failed", "{job:#}");
    assert_eq!(job["error"]["code"], "rescue_limit_exceeded");
    assert_eq!(crashes, 3, "one run plus two rescues");
    let attempts = job["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3);
    assert!(attempts.iter().all(|a| a["outcome"] == "lost"));
    // The process that remains is healthy and runs other work.
    let ok = submit_ok(&http, &kiln.base, &key, image_job(16, 16)).await;
    assert_eq!(
        wait_terminal(&http, &kiln.base, &key, &ok).await["status"],
        "succeeded"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_releases_unfinished_jobs_for_the_next_process() {
    let dir = tempfile::tempdir().unwrap();
    let key = create_key(dir.path(), "acme");
    let env = [("KILN_WORKER__SHUTDOWN_TIMEOUT", "500ms")];
    let http = http();
    let mut kiln = KilnProcess::serve(dir.path(), &env);
    let long = submit_ok(
        &http,
        &kiln.base,
        &key,
        json!({"model": "demo/image", "input": {"prompt": "long", "width": 16, "height": 16, "latency_ms": 3000}}),
    )
    .await;
    wait_for(&http, &kiln.base, &key, &long, "running", |j| {
        j["status"] == "running"
    })
    .await;
    kiln.sigterm();
    let status = kiln.child.wait().unwrap();
    assert!(status.success(), "a graceful stop exits 0");
    {
        let pool = ledger_pool(&dir.path().join("kiln.db")).await;
        let status: String =
            sqlx::query_scalar(&format!("SELECT status FROM jobs WHERE id = '{long}'"))
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(
            status, "queued",
            "released, not left running until its lease expires"
        );
        let outcome: String = sqlx::query_scalar(&format!(
            "SELECT outcome FROM attempts WHERE job_id = '{long}'"
        ))
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(outcome, "released");
    }
    let kiln = KilnProcess::serve(dir.path(), &[]);
    let job = wait_terminal(&http, &kiln.base, &key, &long).await;
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["rescues"], 0, "a release is not a rescue");
}

/// A ledger pool held full (every connection waiting on a slow statement: here a lock on the
/// keys table) answers the requests that cannot get a connection with `503 ledger_unavailable`
/// and `Retry-After`, saying nothing of the cause; once the lock goes, the waiting requests are
/// answered and new work runs, with nothing half-written.
#[tokio::test(flavor = "multi_thread")]
async fn an_exhausted_ledger_pool_answers_503_and_recovers() {
    use sqlx::Connection;
    let db = kiln_core::testing::PostgresDatabase::create().await;
    let url = db.url.clone();
    let kiln = Kiln::start_with(|c| c.database_url = Some(kiln::config::Secret::new(url))).await;
    let key = kiln.key("acme").await;
    let first = kiln.submit_ok(&key, image_job(16, 16)).await;
    assert_eq!(
        kiln.wait_terminal(&key, &first).await["status"],
        "succeeded"
    );
    let mut holder = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    // The jobs table, not the keys': a key just used is answered from the api's key cache.
    sqlx::query("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
        .execute(&mut holder)
        .await
        .unwrap();
    // More requests than the pool has connections (16): each holds one while it waits.
    let (tx, mut answers) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..24 {
        let (http, url, key, tx) = (
            kiln.http.clone(),
            kiln.url("/v1/jobs"),
            key.clone(),
            tx.clone(),
        );
        tokio::spawn(async move {
            let res = http.get(url).bearer_auth(key).send().await.unwrap();
            let status = res.status().as_u16();
            let retry_after = res.headers().get("retry-after").cloned();
            let _ = tx.send((status, retry_after, res.text().await.unwrap()));
        });
    }
    // The first answers are the requests that found no connection in time.
    let (status, retry_after, body) = tokio::time::timeout(DEADLINE, answers.recv())
        .await
        .expect("no request was answered while the pool was full")
        .unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(retry_after.is_some());
    let problem: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(problem["code"], "ledger_unavailable");
    for hidden in ["pool", "sqlx", "lock", "timed out"] {
        assert!(!body.to_lowercase().contains(hidden), "{body}");
    }
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    drop(holder);
    // Every request is answered: the ones that waited on the lock with their list.
    let mut statuses = vec![status];
    while statuses.len() < 24 {
        let (status, _, _) = tokio::time::timeout(DEADLINE, answers.recv())
            .await
            .expect("a request was never answered")
            .unwrap();
        statuses.push(status);
    }
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 503),
        "{statuses:?}"
    );
    assert!(statuses.contains(&200), "{statuses:?}");
    // And the ledger works as before.
    let next = kiln.submit_ok(&key, image_job(16, 16)).await;
    assert_eq!(kiln.wait_terminal(&key, &next).await["status"], "succeeded");
    kiln.shutdown().await;
}
