//! Fairness across tenants: one tenant's burst does not starve another tenant's single job.
//! Tenant A submits 5,000 jobs; then tenant B submits one. At most `tenant_window` of A's queued
//! jobs wait in the shared queue at a time (the rest are held in the ledger), so B's job is rung
//! behind at most that many of A's. The bound the test states: from B's submit to B's start, no
//! more of A's jobs start than A's window plus the jobs the workers were already about to take
//! (their concurrency), and A's backlog is still thousands deep when B's job starts.

use crate::common::*;
use futures::StreamExt;
use serde_json::json;

const BURST: usize = 5_000;
const WINDOW: u32 = 50;
const CONCURRENCY: usize = 4;

#[tokio::test(flavor = "multi_thread")]
async fn one_tenants_burst_does_not_starve_another_tenants_job() {
    let kiln = Kiln::start_with(|c| {
        c.tenant_window = WINDOW;
        c.worker.concurrency = CONCURRENCY;
    })
    .await;
    let a = kiln.key("tenant-a").await;
    let b = kiln.key("tenant-b").await;
    // A's jobs take 50 ms each: four at a time, the burst takes about a minute to drain.
    let a_job = json!({"model": "demo/image", "input": {"prompt": "a", "width": 16, "height": 16, "latency_ms": 50}});
    let accepted = futures::stream::iter(0..BURST)
        .map(|_| {
            let (http, base, a, body) = (
                kiln.http.clone(),
                kiln.base.clone(),
                a.clone(),
                a_job.clone(),
            );
            async move { submit(&http, &base, &a, body).await.status().as_u16() }
        })
        .buffer_unordered(16)
        .filter(|status| futures::future::ready(*status == 202))
        .count()
        .await;
    assert_eq!(accepted, BURST);

    let b_job = kiln.submit_ok(&b, image_job(16, 16)).await;
    let done = kiln.wait_terminal(&b, &b_job).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");

    let ledger = ledger_pool(&kiln.db_path()).await;
    let (b_created, b_started): (i64, i64) =
        sqlx::query_as("SELECT created_at, started_at FROM jobs WHERE id = ?")
            .bind(&b_job)
            .fetch_one(&ledger)
            .await
            .unwrap();
    let overtook: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM jobs WHERE tenant = 'tenant-a' AND started_at >= ? AND started_at <= ?",
    )
    .bind(b_created)
    .bind(b_started)
    .fetch_one(&ledger)
    .await
    .unwrap();
    let bound = i64::from(WINDOW) + CONCURRENCY as i64;
    assert!(
        overtook <= bound,
        "{overtook} of A's jobs started between B's submit and B's start (bound {bound})"
    );
    let a_still_waiting: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM jobs WHERE tenant = 'tenant-a' AND (started_at IS NULL OR started_at > ?)",
    )
    .bind(b_started)
    .fetch_one(&ledger)
    .await
    .unwrap();
    assert!(
        a_still_waiting > 1_000,
        "B's job started before A's backlog drained ({a_still_waiting} of A's jobs had not started)"
    );
    kiln.shutdown().await;
}
