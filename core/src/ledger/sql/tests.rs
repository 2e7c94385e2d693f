//! The SQL ledger's own tests: what neither engine's contract suite can see from outside, the
//! group commit's recounting of transitions, the write turn's timeout, and, on Postgres, the
//! plans of the hot statements in every state a pooled connection meets (no statistics, fresh
//! ones; custom, generic and the hot connections' settings) and the hot connections' settings
//! themselves; and both engines' contract suites, run on this ledger. Kept apart from `mod.rs`, so
//! that file holds the ledger alone.
use super::*;
use std::sync::Arc;

async fn fresh() -> (Arc<dyn Ledger>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
    (Arc::new(SqlLedger::open(&url).await.unwrap()), dir)
}

#[test]
fn placeholders_become_numbered_for_postgres() {
    let q = "UPDATE jobs SET a = ? WHERE id = ? AND b IN (?, ?)";
    assert_eq!(Dialect::Sqlite.sql(q), q);
    assert_eq!(
        Dialect::Postgres.sql(q),
        "UPDATE jobs SET a = $1 WHERE id = $2 AND b IN ($3, $4)"
    );
    // A question mark in quoted text is text.
    let q = "SELECT 'a?', ? FROM \"odd?\" WHERE m = 'it''s ?' AND n = ?";
    assert_eq!(
        Dialect::Postgres.sql(q),
        "SELECT 'a?', $1 FROM \"odd?\" WHERE m = 'it''s ?' AND n = $2"
    );
}

#[test]
fn passwords_stay_out_of_errors() {
    assert_eq!(
        redact("postgres://kiln:hunter2@db:5432/kiln"),
        "postgres://kiln:***@db:5432/kiln"
    );
    assert!(!redact("mysql://u:hunter2@h/db").contains("hunter2"));
}

/// A group of writes that fails (one of them breaks a key) is written again write by write;
/// its transitions are counted once, when a transaction that holds them commits. Returns
/// how many `queued` transitions were counted for 21 committed jobs, on a ledger of `fresh`.
fn queued_transitions_counted<F, G>(fresh: impl FnOnce() -> F) -> u64
where
    F: std::future::Future<Output = (Arc<dyn Ledger>, G)>,
{
    use crate::ledger::contract::job_of;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshots = recorder.snapshotter();
    // A thread-local recorder and a runtime on this thread: only this test's counts.
    metrics::with_local_recorder(&recorder, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let (ledger, _guard) = fresh().await;
                let job = |id: JobId| NewJob { id, ..job_of("a") };
                let taken = JobId::new();
                ledger.insert_job(job(taken)).await.unwrap();
                // Twenty good inserts and one whose id is taken, all at once: they share a
                // group, which the taken id fails.
                let writes = (0..20)
                    .map(|_| job(JobId::new()))
                    .chain(std::iter::once(job(taken)))
                    .map(|j| ledger.insert_job(j));
                let results = futures::future::join_all(writes).await;
                assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 20);
                assert!(results.last().unwrap().is_err());
            });
    });
    snapshots
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, _, _, _)| {
            key.key().name() == "kiln_job_transitions_total"
                && key.key().labels().any(|l| l.value() == "queued")
        })
        .map(|(_, _, _, value)| match value {
            DebugValue::Counter(n) => n,
            _ => 0,
        })
        .sum()
}

/// On a SQLite file every write waits for its turn (the embedded writer's groups too); a
/// writer stuck behind a transaction that never ends hears that the ledger is unavailable
/// (the api's 503 with `Retry-After`) once the wait runs out, and writes again once it ends.
#[tokio::test]
async fn a_write_kept_waiting_for_its_turn_hears_the_ledger_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
    let ledger = SqlLedger::open(&url).await.unwrap();
    let job = || NewJob {
        id: JobId::new(),
        ..crate::ledger::contract::job_of("a")
    };
    let stuck = ledger.write_tx().await.unwrap();
    let refused = ledger.insert_job(job()).await.unwrap_err();
    assert!(refused.is_unavailable(), "{refused}");
    stuck.rollback().await.unwrap();
    let written = ledger.insert_job(job()).await.unwrap();
    assert!(ledger.job_by_id(written.id).await.unwrap().is_some());
}

#[test]
fn a_group_written_again_counts_its_transitions_once() {
    assert_eq!(
        queued_transitions_counted(fresh),
        21,
        "each committed job counted once"
    );
}

crate::ledger_contract_tests!(fresh());

/// A job that runs once and succeeds writes one row of `job_transitions`, its end: its
/// creation and its claim are implied by its rows (`Transition::is_implied`), and its history
/// shows them all the same. The rows an earlier version wrote for those steps are read once,
/// not twice.
async fn plain_steps_write_no_row_and_earlier_rows_read_once(
    ledger: Arc<dyn Ledger>,
    url: &str,
    d: Dialect,
) {
    let id = ledger
        .insert_job(crate::ledger::contract::job_of("a"))
        .await
        .unwrap()
        .id;
    let claim = ledger
        .claim(id, "w1", "demo", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert!(ledger.succeed(&claim.lease, &[]).await.unwrap());
    let history = ledger.transitions(id).await.unwrap();
    let steps: Vec<_> = history.iter().map(|t| (t.from, t.to)).collect();
    assert_eq!(
        steps,
        vec![
            (None, Status::Queued),
            (Some(Status::Queued), Status::Running),
            (Some(Status::Running), Status::Succeeded)
        ]
    );
    let db = sqlx::AnyPool::connect(url).await.unwrap();
    let written: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM job_transitions")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(written, 1, "the end alone is written");
    // The rows an earlier version wrote for the steps before it.
    for t in &history[..2] {
        sqlx::query(&d.sql(
            "INSERT INTO job_transitions (job_id, from_status, to_status, reason, at) VALUES (?, ?, ?, NULL, ?)",
        ))
        .bind(id.to_string())
        .bind(t.from.map(|s| s.as_str().to_owned()))
        .bind(t.to.as_str())
        .bind(to_millis(t.at))
        .execute(&db)
        .await
        .unwrap();
    }
    assert_eq!(ledger.transitions(id).await.unwrap(), history);
}

/// Claims the deliveries due now (first tries at once), up to 32.
async fn claim_due(ledger: &Arc<dyn Ledger>) -> Vec<crate::ledger::DueDelivery> {
    ledger
        .claim_deliveries(
            crate::time::now(),
            Duration::ZERO,
            Duration::from_secs(60),
            32,
        )
        .await
        .unwrap()
}

/// A job of tenant `a` with a webhook hearing `events`, run to its success; its id.
async fn succeed_with_webhook(ledger: &Arc<dyn Ledger>, events: Option<Vec<String>>) -> JobId {
    let job = NewJob {
        webhook_url: Some("https://hooks.example.com/k".into()),
        webhook_events: events,
        ..crate::ledger::contract::job_of("a")
    };
    let id = ledger.insert_job(job).await.unwrap().id;
    let claim = ledger
        .claim(id, "w", "demo", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert!(ledger.succeed(&claim.lease, &[]).await.unwrap());
    id
}

/// A try that delivers is kept on its delivery's row, not as a row of `webhook_tries`, and the
/// delivery's tries still show it, once; a redelivery writes it to the log before the delivery
/// is pending again, so it still shows once; a try that does not deliver is a row as before.
async fn a_delivering_try_is_kept_on_its_delivery(ledger: Arc<dyn Ledger>, url: &str) {
    use crate::ledger::{DeliveryNext, DeliveryTry};
    let id = succeed_with_webhook(&ledger, Some(vec!["job.succeeded".into()])).await;
    let due = claim_due(&ledger).await;
    assert_eq!(due.len(), 1, "the job.succeeded delivery");
    let delivered = DeliveryTry {
        number: 1,
        at: crate::time::from_millis(to_millis(crate::time::now())),
        status_code: Some(204),
        latency_ms: 7,
        error: None,
    };
    assert!(ledger
        .finish_delivery_try(
            &due[0].id,
            &due[0].claim_token,
            &delivered,
            DeliveryNext::Delivered
        )
        .await
        .unwrap());
    let db = sqlx::AnyPool::connect(url).await.unwrap();
    let logged = || async {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM webhook_tries")
            .fetch_one(&db)
            .await
            .unwrap()
    };
    assert_eq!(logged().await, 0, "kept on the delivery's row");
    let tenant = crate::ledger::contract::job_of("a").tenant;
    let shown = ledger.deliveries(&tenant, id).await.unwrap().unwrap();
    assert_eq!(shown[0].tries, vec![delivered.clone()]);

    assert!(ledger.redeliver(&tenant, id, &due[0].id).await.unwrap());
    assert_eq!(logged().await, 1, "written to the log as it is redelivered");
    let shown = ledger.deliveries(&tenant, id).await.unwrap().unwrap();
    assert_eq!(shown[0].tries, vec![delivered.clone()], "still once");

    let due = claim_due(&ledger).await;
    let refused = DeliveryTry {
        number: 2,
        status_code: Some(500),
        error: Some("the receiver answered 500".into()),
        ..delivered.clone()
    };
    let later = crate::time::now() + chrono::Duration::minutes(5);
    assert!(ledger
        .finish_delivery_try(
            &due[0].id,
            &due[0].claim_token,
            &refused,
            DeliveryNext::RetryAt(later)
        )
        .await
        .unwrap());
    assert_eq!(logged().await, 2, "a try that does not deliver is a row");
    let shown = ledger.deliveries(&tenant, id).await.unwrap().unwrap();
    assert_eq!(shown[0].tries, vec![delivered, refused]);
}

#[tokio::test]
async fn a_delivering_try_is_kept_on_its_delivery_row() {
    let (ledger, dir) = fresh().await;
    let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
    a_delivering_try_is_kept_on_its_delivery(ledger, &url).await;
}

/// A job's `job.started` is written for its first start only, however soon it starts again: a
/// retry claimed again within the same millisecond as its first claim (frequent on the embedded
/// default's fast path) once wrote a second one, when the first start was told by the claim's
/// time. A hundred jobs, each claimed, retried at once and claimed again.
#[tokio::test]
async fn a_job_started_again_at_once_announces_its_start_once() {
    let (ledger, _dir) = fresh().await;
    for _ in 0..100 {
        let job = NewJob {
            webhook_url: Some("https://hooks.example.com/k".into()),
            ..crate::ledger::contract::job_of("a")
        };
        let id = ledger.insert_job(job).await.unwrap().id;
        let first = ledger
            .claim(id, "w", "demo", Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap();
        let error = crate::ErrorInfo::new("x", "x");
        assert!(ledger
            .retry_later(&first.lease, &error, crate::time::now())
            .await
            .unwrap());
        assert!(ledger
            .claim(id, "w", "demo", Duration::from_secs(30))
            .await
            .unwrap()
            .is_some());
        let tenant = crate::ledger::contract::job_of("a").tenant;
        let deliveries = ledger.deliveries(&tenant, id).await.unwrap().unwrap();
        assert_eq!(deliveries.len(), 1, "one job.started for job {id}");
    }
}

#[tokio::test]
async fn a_plain_job_writes_no_transition_row_and_earlier_rows_read_once() {
    let (ledger, dir) = fresh().await;
    let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
    plain_steps_write_no_row_and_earlier_rows_read_once(ledger, &url, Dialect::Sqlite).await;
}

mod postgres {
    use super::*;
    use crate::testing::PostgresDatabase;

    async fn fresh() -> (Arc<dyn Ledger>, PostgresDatabase) {
        let db = PostgresDatabase::create().await;
        (Arc::new(SqlLedger::open(&db.url).await.unwrap()), db)
    }

    #[tokio::test]
    async fn a_plain_job_writes_no_transition_row_and_earlier_rows_read_once() {
        let (ledger, db) = fresh().await;
        plain_steps_write_no_row_and_earlier_rows_read_once(ledger, &db.url, Dialect::Postgres)
            .await;
    }

    #[tokio::test]
    async fn a_delivering_try_is_kept_on_its_delivery_row() {
        let (ledger, db) = fresh().await;
        a_delivering_try_is_kept_on_its_delivery(ledger, &db.url).await;
    }

    /// While this process's deliverer takes handed-over deliveries, a success writes its
    /// `job.succeeded` delivery claimed for it when the job's webhook hears its end but not its
    /// start: no claim finds it while its hold lasts, and its token records its try. A job that
    /// hears its start keeps its end pending (its start may still be), and so does every job
    /// once handing stops; those handed and not taken are then due again at once.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_success_hands_its_end_event_to_this_process_only_while_handing_is_on() {
        use crate::ledger::{DeliveryNext, DeliveryTry};
        let (ledger, _db) = fresh().await;
        let run = |events: Option<Vec<String>>| succeed_with_webhook(&ledger, events);
        let claim_due = || claim_due(&ledger);
        let end_only = || Some(vec!["job.succeeded".to_owned()]);

        let before = run(end_only()).await;
        assert!(
            ledger.take_handed_deliveries(32).await.unwrap().is_empty(),
            "not handing yet"
        );
        ledger.start_handing_deliveries();
        let handed_job = run(end_only()).await;
        let hears_start = run(None).await;
        let handed = ledger.take_handed_deliveries(32).await.unwrap();
        assert_eq!(handed.len(), 1, "{handed:?}");
        assert_eq!(handed[0].job_id, handed_job);
        assert_eq!(handed[0].event_type, EventType::JobSucceeded);
        assert_eq!(handed[0].tries, 0);
        let claimed: Vec<(JobId, EventType)> = claim_due()
            .await
            .iter()
            .map(|d| (d.job_id, d.event_type))
            .collect();
        assert!(claimed.contains(&(before, EventType::JobSucceeded)));
        assert!(claimed.contains(&(hears_start, EventType::JobStarted)));
        assert!(claimed.contains(&(hears_start, EventType::JobSucceeded)));
        assert!(
            !claimed.iter().any(|(job, _)| *job == handed_job),
            "a handed delivery is held from claims"
        );
        let tried = DeliveryTry {
            number: 1,
            at: crate::time::now(),
            status_code: Some(200),
            latency_ms: 3,
            error: None,
        };
        assert!(ledger
            .finish_delivery_try(
                &handed[0].id,
                &handed[0].claim_token,
                &tried,
                DeliveryNext::Delivered
            )
            .await
            .unwrap());

        // Handed over to a worker that then dies: any deliverer claims it once the hold lapses.
        let orphan = run(end_only()).await;
        assert_eq!(ledger.take_handed_deliveries(32).await.unwrap().len(), 1);
        assert!(!claim_due().await.iter().any(|d| d.job_id == orphan));
        let lapsed = ledger
            .claim_deliveries(
                crate::time::now() + chrono::Duration::seconds(61),
                Duration::ZERO,
                Duration::from_secs(60),
                32,
            )
            .await
            .unwrap();
        assert!(
            lapsed.iter().any(|d| d.job_id == orphan),
            "claimable once its hold lapses"
        );

        // Handed over and not taken when handing stops: due again at once.
        let left = run(end_only()).await;
        ledger.stop_handing_deliveries().await.unwrap();
        assert!(ledger.take_handed_deliveries(32).await.unwrap().is_empty());
        let after = run(end_only()).await;
        let claimed: Vec<JobId> = claim_due().await.iter().map(|d| d.job_id).collect();
        assert!(claimed.contains(&left), "released for any deliverer");
        assert!(
            claimed.contains(&after),
            "written pending once handing stopped"
        );
    }

    /// A pass takes at most its batch of what was handed over, oldest first; past
    /// `HANDOFF_CAP` untaken, successes write their deliveries pending, for any claim.
    #[tokio::test(flavor = "multi_thread")]
    async fn handed_deliveries_are_taken_a_batch_at_a_time_and_capped() {
        use crate::ledger::sql::deliveries::HANDOFF_CAP;
        let (ledger, _db) = fresh().await;
        ledger.start_handing_deliveries();
        let mut jobs = Vec::new();
        for _ in 0..=HANDOFF_CAP {
            jobs.push(succeed_with_webhook(&ledger, Some(vec!["job.succeeded".into()])).await);
        }
        let over_cap = *jobs.last().unwrap();
        let claimed: Vec<JobId> = claim_due(&ledger).await.iter().map(|d| d.job_id).collect();
        assert_eq!(claimed, [over_cap], "past the cap, written pending");
        let first = ledger.take_handed_deliveries(32).await.unwrap();
        assert_eq!(
            first.iter().map(|d| d.job_id).collect::<Vec<_>>(),
            jobs[..32],
            "a batch, oldest first"
        );
        let mut rest = 0;
        loop {
            let batch = ledger.take_handed_deliveries(32).await.unwrap();
            if batch.is_empty() {
                break;
            }
            assert!(batch.len() <= 32);
            rest += batch.len();
        }
        assert_eq!(32 + rest, HANDOFF_CAP);
    }

    #[test]
    fn a_handed_delivery_older_than_half_its_hold_is_not_taken_to_be_tried() {
        use crate::ledger::sql::deliveries::split_stale;
        use crate::ledger::{DeliveryId, DueDelivery};
        let now = crate::time::now();
        let handed_at = |ago: i64| DueDelivery {
            id: DeliveryId(format!("msg_{ago}")),
            job_id: JobId::new(),
            event_type: EventType::JobSucceeded,
            url: "https://hooks.example.com/k".into(),
            created_at: now - chrono::Duration::seconds(ago),
            tries: 0,
            schedule_base: 0,
            key_id: None,
            secrets: None,
            claim_token: "t".into(),
        };
        let (fresh, stale) = split_stale(
            vec![handed_at(1), handed_at(31), handed_at(29)],
            now,
            Duration::from_secs(30),
        );
        let ids = |v: &[DueDelivery]| v.iter().map(|d| d.id.0.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&fresh), ["msg_1", "msg_29"]);
        assert_eq!(ids(&stale), ["msg_31"]);
    }

    #[test]
    fn a_group_written_again_counts_its_transitions_once() {
        assert_eq!(super::queued_transitions_counted(fresh), 21);
    }

    /// The hot path's connections plan each statement once and by index
    /// (`POSTGRES_HOT_SESSION`), and only they do: every other write, and every read, plans
    /// as Postgres is configured, so a sweep or a dashboard's listing may still scan or hash.
    #[tokio::test(flavor = "multi_thread")]
    async fn only_the_hot_path_plans_once_and_by_index() {
        let db = PostgresDatabase::create().await;
        let ledger = SqlLedger::open(&db.url).await.unwrap();
        let settings = "SELECT current_setting('plan_cache_mode') || ' ' || \
                        current_setting('enable_seqscan') || ' ' || \
                        current_setting('enable_hashjoin') || ' ' || \
                        current_setting('enable_mergejoin')";
        let within = |mut tx: Tx| async move {
            let found: String = sqlx::query_scalar(settings)
                .fetch_one(&mut *tx.tx)
                .await
                .unwrap();
            tx.rollback().await.unwrap();
            found
        };
        let in_hot = within(ledger.hot_tx().await.unwrap()).await;
        let in_other = within(ledger.write_tx().await.unwrap()).await;
        let in_read: String = sqlx::query_scalar(settings)
            .fetch_one(&ledger.pool)
            .await
            .unwrap();
        assert_eq!(
            [
                ("hot", in_hot),
                ("other write", in_other),
                ("read", in_read)
            ],
            [
                ("hot", "force_generic_plan off off off".to_owned()),
                ("other write", "auto on on on".to_owned()),
                ("read", "auto on on on".to_owned()),
            ]
        );
    }

    /// A migrated database holding `burst` (SQL run as is: no `ANALYZE`, as mid-burst), and
    /// a plain connection to it for `EXPLAIN`.
    async fn database_after(burst: &str) -> (PostgresDatabase, sqlx::PgConnection) {
        use sqlx::Connection;
        let db = PostgresDatabase::create().await;
        drop(SqlLedger::open(&db.url).await.unwrap());
        let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
        sqlx::raw_sql(burst).execute(&mut conn).await.unwrap();
        (db, conn)
    }

    /// The plan of `statement` prepared on `conn` and executed with `arguments`, the way a
    /// pooled connection runs it (under the session's `plan_cache_mode`), one line per node.
    async fn prepared_plan(
        conn: &mut sqlx::PgConnection,
        statement: &str,
        arguments: &str,
    ) -> Vec<String> {
        use sqlx::Row;
        sqlx::raw_sql(&format!("PREPARE planned AS {statement}"))
            .execute(&mut *conn)
            .await
            .unwrap();
        let plan = sqlx::query(&format!("EXPLAIN EXECUTE planned({arguments})"))
            .fetch_all(&mut *conn)
            .await
            .unwrap()
            .iter()
            .map(|row| row.get::<String, _>(0))
            .collect();
        sqlx::raw_sql("DEALLOCATE planned")
            .execute(&mut *conn)
            .await
            .unwrap();
        plan
    }

    /// Each of `statements` (name, SQL, arguments) planned in every state a pooled prepared
    /// statement can meet: with no statistics (as mid-burst) and then fresh ones, under
    /// custom and generic plans alike, and as the hot path's connections plan it
    /// (`POSTGRES_HOT_SESSION`). `check` gets a label for its message ("the claim (fresh
    /// statistics, auto)"), the SQL and the plan, one line per node.
    async fn check_plans_in_every_planner_state(
        conn: &mut sqlx::PgConnection,
        statements: &[(&str, String, String)],
        check: impl Fn(&str, &str, &[String]),
    ) {
        for statistics in ["none", "fresh"] {
            if statistics == "fresh" {
                sqlx::raw_sql("ANALYZE").execute(&mut *conn).await.unwrap();
            }
            for mode in ["auto", "force_generic_plan", "hot path"] {
                let setup = match mode {
                    "hot path" => POSTGRES_HOT_SESSION.to_owned(),
                    mode => format!("SET plan_cache_mode = {mode}"),
                };
                sqlx::raw_sql(&format!("RESET ALL; {setup}"))
                    .execute(&mut *conn)
                    .await
                    .unwrap();
                for (name, statement, arguments) in statements {
                    let plan = prepared_plan(conn, statement, arguments).await;
                    let label = format!("the {name} ({statistics} statistics, {mode})");
                    check(&label, statement, &plan);
                }
            }
        }
    }

    /// A one-tenant burst as a benchmark leaves it mid-run: 10,000 jobs succeeded, then the
    /// tenant's window of 100 admitted and 9,900 held behind it, every one in the normal lane.
    const ONE_TENANT_BURST: &str =
        "INSERT INTO jobs (id, tenant, model, input, status, created_at, run_after, rung_at) \
         SELECT lpad(g::text, 36, '0'), 't', 'm', '{}', \
                CASE WHEN g <= 10000 THEN 'succeeded' ELSE 'queued' END, 0, 0, \
                CASE WHEN g <= 10100 THEN 0 ELSE -1 END \
         FROM generate_series(1, 20000) g";

    /// The batched admission and the lone one, with their arguments: the statements whose
    /// plans both tests below hold.
    fn admissions() -> [(&'static str, String, String); 2] {
        [
            (
                "admission of a batch",
                Dialect::Postgres
                    .sql(&claims::admission_batch_sql(2))
                    .into_owned(),
                "0, 't', 8, 'u', 2".to_owned(),
            ),
            (
                "admission",
                claims::admission_sql(Dialect::Postgres, false),
                "0, 't', 'high', 't', 'normal', 't', 'low'".to_owned(),
            ),
        ]
    }

    /// Every walk of a tenant's held jobs (each lane's walk in the batched admission and in
    /// the lone one, and the submit's holding probe, backwards) is an ordered scan of
    /// `jobs_held`, whatever the planner knows. `jobs_queued` and the primary key are in id
    /// order too, and a plan that walked one of them for a lane's oldest held job, filtering
    /// on the tenant, the lane and the held state, read every queued job for a lane that
    /// held none (a claim's writes went from ~50 to 100-125 buffers per job in one run of
    /// three).
    #[tokio::test(flavor = "multi_thread")]
    async fn walks_of_held_jobs_take_jobs_held_whatever_the_planner_knows() {
        let (_db, mut conn) = database_after(ONE_TENANT_BURST).await;
        let probe = format!(
            "SELECT {} AS holding FROM (SELECT $1::text AS tenant) t",
            jobs::holding_probe(Dialect::Postgres, "t.tenant")
        );
        let mut statements = admissions().to_vec();
        statements.push(("holding probe", probe, "'t'".to_owned()));
        check_plans_in_every_planner_state(&mut conn, &statements, |label, statement, plan| {
            let plan = plan.join("\n");
            // Each scan of `jobs` but an `UPDATE`'s own, which is unaliased (`on jobs  (`)
            // and by key (the test below).
            let updates = statement.starts_with("UPDATE");
            let walks: Vec<&str> = plan
                .lines()
                .filter(|l| l.contains("Scan") && l.contains(" on jobs"))
                .filter(|l| {
                    !(updates
                        && (l.contains(" on jobs  (")
                            || l.contains("Bitmap Index Scan on jobs_pkey")))
                })
                .collect();
            assert!(
                !walks.is_empty()
                    && walks.iter().all(|l| (l.contains("Index Scan")
                        || l.contains("Index Only Scan"))
                        && !l.contains("Bitmap")
                        && l.contains("using jobs_held")),
                "{label} walks held jobs other than in jobs_held's order:\n{plan}"
            );
            // The submit's probe from the newest end: a burst's admitted jobs leave dead
            // entries at the oldest, which a walk from there read on every insert.
            assert!(
                updates || walks.iter().all(|l| l.contains("Scan Backward")),
                "{label} does not walk jobs_held from its newest end:\n{plan}"
            );
        })
        .await;
    }

    /// The claim and the held-job admission (alone and batched) find their jobs by primary
    /// key whatever the planner knows. With a plain state test the claim's plan walked
    /// `jobs_due` for the id; with `id IN (…)` and fresh statistics, the batched
    /// admission's scanned the whole table, its planner reckoning on hundreds of admitted
    /// jobs where there are a few.
    #[tokio::test(flavor = "multi_thread")]
    async fn hot_statements_find_their_job_by_primary_key_in_a_burst() {
        let (_db, mut conn) = database_after(ONE_TENANT_BURST).await;
        let ids = |n: usize| vec!["'x'"; n].join(", ");
        let mut statements = vec![
            (
                "claim",
                claims::claim_update_sql(Dialect::Postgres, 1),
                format!("0, 'w', 0, {}, 0", ids(1)),
            ),
            (
                "claim of a full batch",
                claims::claim_update_sql(Dialect::Postgres, claims::CLAIM_BATCH_MAX),
                format!("0, 'w', 0, {}, 0", ids(claims::CLAIM_BATCH_MAX)),
            ),
        ];
        statements.extend(admissions());
        check_plans_in_every_planner_state(&mut conn, &statements, |label, _, lines| {
            // The `UPDATE`'s own scan (`on jobs  (cost…`), not a lane's (`on jobs jobs_1`):
            // the primary key's index, probed directly or through a bitmap.
            let target = lines
                .iter()
                .position(|line| line.contains("Scan") && line.contains(" on jobs  ("))
                .unwrap_or_default();
            let by_key = lines[target].contains("jobs_pkey")
                || (lines[target].contains("Bitmap Heap Scan")
                    && lines[target + 1..]
                        .iter()
                        .find(|l| l.contains("Scan"))
                        .is_some_and(|l| l.contains("Bitmap Index Scan on jobs_pkey")));
            assert!(
                by_key,
                "{label} does not find its job by primary key:\n{}",
                lines.join("\n")
            );
        })
        .await;
    }

    /// The deliverer's claim picks its batch before it joins jobs and keys, and marks it by
    /// key, whatever the planner knows of a backlog of pending deliveries: joined first,
    /// every due delivery was joined and sorted on each claim, ~600 buffers per claim
    /// mid-burst.
    #[tokio::test(flavor = "multi_thread")]
    async fn the_delivery_claim_joins_only_its_batch() {
        let (_db, mut conn) = database_after(
            "INSERT INTO webhook_deliveries (id, job_id, event_type, url, created_at, status, next_try_at) \
             SELECT lpad(g::text, 36, '0'), lpad(g::text, 36, '0'), 'job.succeeded', 'http://x', 0, \
                    CASE WHEN g % 2 = 0 THEN 'pending' ELSE 'delivered' END, g \
             FROM generate_series(1, 5000) g",
        )
        .await;
        let claim = (
            "delivery claim",
            deliveries::delivery_claim_sql(Dialect::Postgres),
            "100000, 100000, 32, 0, 't'".to_owned(),
        );
        check_plans_in_every_planner_state(&mut conn, &[claim], |label, _, plan| {
            // The batch's `Limit` reads the deliveries alone: nothing in its subtree (the
            // lines below it, indented deeper) scans `jobs` or `api_keys`.
            let depth = |l: &str| l.len() - l.trim_start().len();
            let limit = plan.iter().position(|l| l.contains("Limit"));
            let batch_alone = limit.is_some_and(|at| {
                plan[at + 1..]
                    .iter()
                    .take_while(|l| depth(l) > depth(&plan[at]))
                    .all(|l| !l.contains(" on jobs") && !l.contains(" on api_keys"))
            });
            assert!(
                batch_alone,
                "{label} joins before it limits:\n{}",
                plan.join("\n")
            );
            assert!(
                !plan
                    .iter()
                    .any(|l| l.contains("Seq Scan on webhook_deliveries")),
                "{label} scans the deliveries table:\n{}",
                plan.join("\n")
            );
        })
        .await;
    }

    /// A worker's release of its running jobs walks the running jobs' own index
    /// (`jobs_lease_expiry`), never the table, whatever the planner knows: no index is kept on
    /// the owner (migration 0022).
    #[tokio::test(flavor = "multi_thread")]
    async fn a_release_of_a_workers_jobs_walks_only_the_running_ones() {
        let (_db, mut conn) = database_after(
            "INSERT INTO jobs (id, tenant, model, input, status, created_at, run_after, rung_at, \
                 lease_owner, lease_expires_at) \
             SELECT lpad(g::text, 36, '0'), 't', 'm', '{}', \
                    CASE WHEN g <= 10000 THEN 'succeeded' ELSE 'running' END, 0, 0, 0, \
                    CASE WHEN g <= 10000 THEN NULL ELSE 'w-' || (g % 2) END, \
                    CASE WHEN g <= 10000 THEN NULL ELSE g END \
             FROM generate_series(1, 10100) g",
        )
        .await;
        let release = (
            "release of a worker's jobs",
            Dialect::Postgres
                .sql(maintenance::EXPIRE_LEASES_OF)
                .into_owned(),
            "'w-1'".to_owned(),
        );
        check_plans_in_every_planner_state(&mut conn, &[release], |label, _, plan| {
            assert!(
                plan.iter()
                    .any(|l| l.contains("Scan") && l.contains("jobs_lease_expiry"))
                    && !plan.iter().any(|l| l.contains("Seq Scan")),
                "{label} does not walk jobs_lease_expiry:\n{}",
                plan.join("\n")
            );
        })
        .await;
    }

    crate::ledger_contract_tests!(fresh());
}
