//! The production shape with real processes, for the scale and fault tests: one `kiln api` and
//! N `kiln worker`s on Postgres, Redis and an S3 server, each cluster with backends of its own.
//! It reads the ledger directly for the invariants the fault suite checks after every fault:
//! nothing lost, no job with two terminal transitions, no event under two webhook ids.

use super::*;
use serde_json::json;
use sqlx::postgres::PgPool;
use std::time::{Duration, Instant};

/// Fields drop in order: the processes stop before the backends they use go away.
pub struct Cluster {
    pub api: KilnProcess,
    pub workers: Vec<KilnProcess>,
    pub pg: PgPool,
    pub backends: Backends,
    pub dir: tempfile::TempDir,
    pub env: Vec<(String, String)>,
    pub key: String,
}

impl Cluster {
    pub async fn start(workers: usize) -> Cluster {
        Self::start_with(workers, &[], |_| {}).await
    }

    /// With `overrides` replacing (or adding to) the processes' `KILN_*` environment, and
    /// `prepare` run on the data directory first (to write a `kiln.toml`, say).
    pub async fn start_with(
        workers: usize,
        overrides: &[(&str, String)],
        prepare: impl FnOnce(&Path),
    ) -> Cluster {
        let backends = Backends::start().await;
        let dir = tempfile::tempdir().unwrap();
        prepare(dir.path());
        let mut env = backends.env();
        env.push(("KILN_WORKER__CONCURRENCY".into(), "4".into()));
        for (name, value) in overrides {
            env.retain(|(k, _)| k != name);
            env.push(((*name).to_owned(), value.clone()));
        }
        let database = env
            .iter()
            .find(|(k, _)| k == "KILN_DATABASE_URL")
            .map(|(_, v)| v.clone())
            .unwrap();
        let key = create_key_with(dir.path(), "acme", &env);
        let api = KilnProcess::start("api", dir.path(), &env);
        let workers = (0..workers)
            .map(|_| KilnProcess::start("worker", dir.path(), &env))
            .collect();
        let pg = PgPool::connect(&database).await.unwrap();
        Cluster {
            api,
            workers,
            pg,
            backends,
            dir,
            env,
            key,
        }
    }

    pub async fn scalar(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.pg).await.unwrap()
    }

    /// Waits until `sql` counts at least `n`. Ledger reads that fail (the database may be the
    /// fault under test) are retried until the deadline.
    pub async fn wait_count(&self, sql: &str, n: i64, deadline: Duration) {
        let start = Instant::now();
        loop {
            let got: Result<i64, _> = sqlx::query_scalar(sql).fetch_one(&self.pg).await;
            if got.as_ref().is_ok_and(|got| *got >= n) {
                return;
            }
            assert!(start.elapsed() < deadline, "only {got:?} of {n}: {sql}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Invariants that hold at every moment: at most one terminal transition per job, and
    /// outputs only on succeeded jobs, one set each.
    pub async fn assert_exactly_once(&self) {
        let doubled = self
            .scalar("SELECT COUNT(*) FROM (SELECT job_id FROM job_transitions WHERE to_status IN ('succeeded','failed','canceled') GROUP BY job_id HAVING COUNT(*) > 1) d")
            .await;
        assert_eq!(doubled, 0, "a job has two terminal transitions");
        let stray = self.scalar("SELECT COUNT(*) FROM outputs o JOIN jobs j ON j.id = o.job_id WHERE j.status <> 'succeeded'").await;
        assert_eq!(stray, 0, "outputs on a job that did not succeed");
        let per_job = self.scalar("SELECT COALESCE(MAX(n), 0) FROM (SELECT COUNT(*) AS n FROM outputs GROUP BY job_id) c").await;
        assert!(per_job <= 1, "a job has two sets of outputs");
        let twice = self
            .scalar("SELECT COUNT(*) FROM (SELECT job_id, event_type FROM webhook_deliveries GROUP BY job_id, event_type HAVING COUNT(*) > 1) d")
            .await;
        assert_eq!(twice, 0, "an event was written under two webhook ids");
    }

    /// Every job the cluster holds ended `succeeded`: nothing lost, nothing failed.
    pub async fn assert_all_succeeded(&self, expected: usize) {
        let succeeded = self
            .scalar("SELECT COUNT(*) FROM jobs WHERE status = 'succeeded'")
            .await;
        let all = self.scalar("SELECT COUNT(*) FROM jobs").await;
        assert_eq!((succeeded, all), (expected as i64, expected as i64));
    }

    /// Submits `n` demo jobs, 32 at a time, each holding its worker for `latency_ms`.
    pub async fn submit_many(&self, n: usize, latency_ms: u64) -> Vec<String> {
        self.submit_bodies(n, |i| {
            json!({"model": "demo/image", "input": {"prompt": format!("job {i}"), "width": 16, "height": 16, "latency_ms": latency_ms}})
        })
        .await
    }

    /// Submits `n` bodies made by `body`, 32 at a time.
    pub async fn submit_bodies(&self, n: usize, body: impl Fn(usize) -> Value) -> Vec<String> {
        use futures::StreamExt;
        let http = http();
        let mut ids = Vec::with_capacity(n);
        let mut pending = futures::stream::iter((0..n).map(|i| {
            let (http, base, key, body) = (
                http.clone(),
                self.api.base.clone(),
                self.key.clone(),
                body(i),
            );
            async move { submit_ok(&http, &base, &key, body).await }
        }))
        .buffer_unordered(32);
        while let Some(id) = pending.next().await {
            ids.push(id);
        }
        ids
    }
}
