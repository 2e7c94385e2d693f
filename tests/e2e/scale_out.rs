//! The production shape with real processes: one api and two workers on Postgres, Redis and an
//! S3 server, each test with backends of its own. 1,000 concurrent submits run exactly once each;
//! a worker killed with -9 loses nothing and rejoins; a Redis restart mid-run loses nothing and
//! needs no worker restart; a burst of 50,000 queued jobs is worked off steadily.

use crate::common::cluster::Cluster;
use crate::common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_concurrent_jobs_each_run_exactly_once_across_two_workers() {
    let cluster = Cluster::start(2).await;
    let ids = cluster.submit_many(1000, 0).await;
    assert_eq!(ids.len(), 1000);
    cluster
        .wait_count(
            "SELECT COUNT(*) FROM jobs WHERE status = 'succeeded'",
            1000,
            Duration::from_secs(600),
        )
        .await;
    cluster.assert_exactly_once().await;
    assert_eq!(
        cluster.scalar("SELECT COUNT(*) FROM attempts").await,
        1000,
        "one attempt per job"
    );
    assert_eq!(cluster.scalar("SELECT COUNT(*) FROM outputs").await, 1000);
    assert_eq!(
        cluster
            .scalar("SELECT COUNT(DISTINCT worker) FROM attempts")
            .await,
        2,
        "both workers took work"
    );
    assert_eq!(
        cluster.backends.s3.object_count(),
        1000,
        "one object per job in the bucket"
    );
    // Output URLs are presigned S3 URLs that download.
    let job = get_job(&http(), &cluster.api.base, &cluster.key, &ids[0]).await;
    let url = job["outputs"][0]["url"].as_str().unwrap();
    assert!(url.contains("X-Amz-Signature"), "{url}");
    let png = reqwest::get(url).await.unwrap();
    assert_eq!(png.status(), 200);
    image::load_from_memory(&png.bytes().await.unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_mid_run_loses_nothing_and_rejoins() {
    let mut cluster = Cluster::start(2).await;
    let ids = cluster.submit_many(40, 400).await;
    let victim = cluster.workers[0].identity.clone().unwrap();
    cluster
        .wait_count(
            &format!(
                "SELECT COUNT(*) FROM jobs WHERE status = 'running' AND lease_owner = '{victim}'"
            ),
            1,
            Duration::from_secs(60),
        )
        .await;
    cluster.workers[0].kill9();
    cluster
        .wait_count(
            "SELECT COUNT(*) FROM jobs WHERE status = 'succeeded'",
            ids.len() as i64,
            Duration::from_secs(120),
        )
        .await;
    cluster.assert_exactly_once().await;
    let lost = cluster
        .scalar(&format!(
            "SELECT COUNT(*) FROM attempts WHERE worker = '{victim}' AND outcome = 'lost'"
        ))
        .await;
    assert!(lost >= 1, "the killed worker's running jobs were rescued");

    // Restarted with the same configuration, it rejoins and takes work again.
    let restarted = KilnProcess::start("worker", cluster.dir.path(), &cluster.env);
    let rejoined = restarted.identity.clone().unwrap();
    assert_eq!(
        rejoined, victim,
        "the restarted worker gets its identity back once the old slot expired"
    );
    cluster.workers[0] = restarted;
    let more = cluster.submit_many(40, 200).await;
    cluster
        .wait_count(
            "SELECT COUNT(*) FROM jobs WHERE status = 'succeeded'",
            (ids.len() + more.len()) as i64,
            Duration::from_secs(120),
        )
        .await;
    let taken = cluster
        .scalar(&format!(
            "SELECT COUNT(*) FROM attempts WHERE worker = '{rejoined}' AND outcome = 'succeeded'"
        ))
        .await;
    assert!(taken >= 1, "the restarted worker picked up work");
    cluster.assert_exactly_once().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_restart_mid_run_loses_nothing_and_workers_recover_alone() {
    let mut cluster = Cluster::start(2).await;
    let first = cluster.submit_many(60, 100).await;
    cluster
        .wait_count(
            "SELECT COUNT(*) FROM jobs WHERE status = 'succeeded'",
            5,
            Duration::from_secs(60),
        )
        .await;
    cluster.backends.redis.restart();
    let second = cluster.submit_many(60, 0).await;
    let total = (first.len() + second.len()) as i64;
    cluster
        .wait_count(
            "SELECT COUNT(*) FROM jobs WHERE status = 'succeeded'",
            total,
            Duration::from_secs(120),
        )
        .await;
    cluster.assert_exactly_once().await;
    for w in &mut cluster.workers {
        assert!(
            w.child.try_wait().unwrap().is_none(),
            "no worker died or needed a restart"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_fifty_thousand_queued_jobs_is_worked_off_steadily() {
    let cluster = Cluster::start(0).await;
    // Commit the burst straight into the ledger and ring each job, as 50,000 submits would.
    sqlx::query(
        "INSERT INTO jobs (id, tenant, model, input, status, created_at, run_after, rung_at) \
         SELECT gen_random_uuid()::text, 'acme', 'demo/image', '{\"prompt\":\"burst\",\"width\":16,\"height\":16}', 'queued', 0, 0, \
                (EXTRACT(EPOCH FROM now()) * 1000)::bigint \
         FROM generate_series(1, 50000)",
    )
    .execute(&cluster.pg)
    .await
    .unwrap();
    let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM jobs")
        .fetch_all(&cluster.pg)
        .await
        .unwrap();
    let client = redis::Client::open(cluster.backends.redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    for chunk in ids.chunks(5000) {
        let mut pipe = redis::pipe();
        for id in chunk {
            pipe.cmd("XADD")
                .arg("kiln:dispatch:normal")
                .arg("*")
                .arg("job")
                .arg(id)
                .ignore();
        }
        let () = pipe.query_async(&mut conn).await.unwrap();
    }
    let workers: Vec<KilnProcess> = (0..2)
        .map(|_| KilnProcess::start("worker", cluster.dir.path(), &cluster.env))
        .collect();
    // Steady progress: the first thousands complete, and nothing crashes on the way.
    for target in [500, 1500, 3000] {
        cluster
            .wait_count(
                "SELECT COUNT(*) FROM jobs WHERE status = 'succeeded'",
                target,
                Duration::from_secs(300),
            )
            .await;
    }
    for mut w in workers {
        assert!(
            w.child.try_wait().unwrap().is_none(),
            "a worker died under the burst"
        );
        w.sigterm();
        assert!(w.child.wait().unwrap().success());
    }
    cluster.assert_exactly_once().await;
    assert_eq!(
        cluster.scalar("SELECT COUNT(*) FROM jobs").await,
        50_000,
        "nothing lost"
    );
    assert_eq!(
        cluster
            .scalar("SELECT COUNT(*) FROM jobs WHERE status = 'running'")
            .await,
        0,
        "graceful stop released everything"
    );
}
