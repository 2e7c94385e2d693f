//! Kiln on its production backends: the Postgres ledger and the Redis Streams doorbell (and,
//! as they land, S3), each test with its own database and its own redis-server.

use crate::common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn jobs_run_on_postgres_and_redis() {
    let kiln = Kiln::start_production(|_| {}).await;
    let key = kiln.key("acme").await;
    let image = kiln.submit_ok(&key, image_job(32, 24)).await;
    let image = kiln.wait_terminal(&key, &image).await;
    assert_eq!(image["status"], "succeeded", "{image:#}");
    let up = kiln.submit_ok(&key,
        json!({"model": "demo/upscale", "input": {"image": image["outputs"][0]["url"], "scale": 2}}),
    )
    .await;
    assert_eq!(kiln.wait_terminal(&key, &up).await["status"], "succeeded");
    let retried = kiln.submit_ok(&key,
        json!({"model": "demo/image", "input": {"prompt": "x", "width": 16, "height": 16, "fail_rate": 1.0}}),
    )
    .await;
    let retried = kiln.wait_terminal(&key, &retried).await;
    assert_eq!(
        retried["attempts"].as_array().unwrap().len(),
        3,
        "retries are rung through Redis"
    );
    kiln.shutdown().await;
}

/// Redis down at submit: the job is committed and answered 202; once Redis is back the
/// reconciler rings it (the queue's new epoch makes it ring every due job) and it runs.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_submitted_while_redis_is_down_runs_when_it_returns() {
    let mut kiln = Kiln::start_production(|_| {}).await;
    let key = kiln.key("acme").await;
    let redis = kiln.services[0]
        .downcast_mut::<kiln_core::testing::RedisServer>()
        .unwrap();
    redis.kill();
    let id = kiln.submit_ok(&key, image_job(16, 16)).await;
    assert_eq!(kiln.get_job(&key, &id).await["status"], "queued");
    let redis = kiln.services[0]
        .downcast_mut::<kiln_core::testing::RedisServer>()
        .unwrap();
    redis.restart();
    let job = kiln.wait_terminal(&key, &id).await;
    assert_eq!(job["status"], "succeeded");
    kiln.shutdown().await;
}

/// Outputs land in the bucket, their presigned URLs download them, and after expiry the janitor
/// deletes the objects and the job shows them as expired.
#[tokio::test(flavor = "multi_thread")]
async fn s3_outputs_are_presigned_and_removed_after_expiry() {
    let kiln = Kiln::start_production(|c| {
        c.outputs.ttl = std::time::Duration::from_secs(2);
        c.outputs.janitor_interval = std::time::Duration::from_millis(200);
    })
    .await;
    let key = kiln.key("acme").await;
    let s3 = kiln.services[2]
        .downcast_ref::<kiln_core::testing::S3Server>()
        .unwrap();
    let id = kiln.submit_ok(&key, image_job(16, 16)).await;
    let job = kiln.wait_terminal(&key, &id).await;
    assert_eq!(job["status"], "succeeded");
    assert!(
        s3.root
            .join(format!("kiln/outputs/jobs/{id}/0.png"))
            .exists(),
        "the object is in the bucket"
    );
    let url = job["outputs"][0]["url"].as_str().unwrap().to_owned();
    assert!(url.starts_with(&s3.endpoint()), "{url}");
    let res = kiln.http.get(&url).send().await.unwrap();
    assert_eq!(res.status(), 200);
    image::load_from_memory(&res.bytes().await.unwrap()).unwrap();

    let job = kiln
        .wait_for(&key, &id, "expired", |j| j["outputs"][0]["expired"] == true)
        .await;
    assert!(job["outputs"][0]["url"].is_null());
    let start = std::time::Instant::now();
    while s3.object_count() > 0 {
        assert!(
            start.elapsed() < DEADLINE,
            "the janitor never deleted the object"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_ne!(
        kiln.http.get(&url).send().await.unwrap().status(),
        200,
        "the presigned URL is dead"
    );
    kiln.shutdown().await;
}

/// Any mix of backends works: SQLite with S3 outputs, and Postgres with a local directory and
/// no Redis (in-process dispatch).
#[tokio::test(flavor = "multi_thread")]
async fn backends_mix_freely() {
    let s3 = kiln_core::testing::S3Server::start();
    let sqlite_s3 = Kiln::start_with(|c| {
        use kiln::config::Secret;
        use kiln_core::testing::S3Server;
        c.storage_url = Some(format!("s3://{}/mixed", S3Server::BUCKET));
        c.s3_endpoint = Some(s3.endpoint());
        c.s3_force_path_style = true;
        c.s3_access_key_id = Some(Secret::new(S3Server::ACCESS_KEY));
        c.s3_secret_access_key = Some(Secret::new(S3Server::SECRET_KEY));
    })
    .await;
    let db = kiln_core::testing::PostgresDatabase::create().await;
    let postgres_local =
        Kiln::start_with(|c| c.database_url = Some(kiln::config::Secret::new(db.url.clone())))
            .await;
    for kiln in [&sqlite_s3, &postgres_local] {
        let key = kiln.key("acme").await;
        let id = kiln.submit_ok(&key, image_job(16, 16)).await;
        let job = kiln.wait_terminal(&key, &id).await;
        assert_eq!(job["status"], "succeeded", "{job:#}");
        let res = kiln
            .http
            .get(job["outputs"][0]["url"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    assert_eq!(
        s3.object_count(),
        1,
        "the SQLite instance stored its output in S3"
    );
    // The local store keeps an object as one file in a shard directory.
    let stored_locally = local_objects(&postgres_local.dir.path().join("outputs"));
    assert_eq!(
        stored_locally.len(),
        1,
        "the Postgres instance stored it locally: {stored_locally:?}"
    );
    sqlite_s3.shutdown().await;
    postgres_local.shutdown().await;
}
