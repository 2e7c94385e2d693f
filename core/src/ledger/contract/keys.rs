//! API keys, idempotency keys and the spend cap: what a request is checked against before it
//! becomes a job.

use super::*;

pub async fn api_keys_are_looked_up_by_hash(ledger: Arc<dyn Ledger>) {
    let key = crate::keys::mint();
    let record = ledger.insert_api_key(&tenant("a"), &key).await.unwrap();
    let found = ledger.key_by_hash(&key.hash).await.unwrap().unwrap();
    assert_eq!(
        (found.id.as_str(), &found.tenant),
        (record.id.as_str(), &tenant("a"))
    );
    assert!(ledger
        .key_by_hash(&crate::keys::hash("kiln_other"))
        .await
        .unwrap()
        .is_none());
    assert_eq!(ledger.count_api_keys().await.unwrap(), 1);
    assert_eq!(ledger.revoke_api_key(record.id.as_str()).await.unwrap(), 1);
    assert!(ledger.key_by_hash(&key.hash).await.unwrap().is_none());
    assert!(ledger.list_api_keys().await.unwrap()[0]
        .revoked_at
        .is_some());
}

pub async fn idempotency_keys_replay_refuse_take_over_and_expire(ledger: Arc<dyn Ledger>) {
    let key = |k: &str| IdempotencyRef {
        key_id: KeyId("key-1".into()),
        key: k.into(),
    };
    let hour = Duration::from_secs(3600);
    let begin = |k: IdempotencyRef, print: &'static str, lock: Duration, keep: Duration| {
        let ledger = ledger.clone();
        async move {
            ledger
                .begin_idempotent(&k, print, lock, keep)
                .await
                .unwrap()
        }
    };
    // First use runs; a second while it runs is in flight; another body is a mismatch.
    assert_eq!(
        begin(key("a"), "p1", hour, hour).await,
        IdempotencyBegin::Started
    );
    assert_eq!(
        begin(key("a"), "p1", hour, hour).await,
        IdempotencyBegin::InFlight
    );
    assert_eq!(
        begin(key("a"), "p2", hour, hour).await,
        IdempotencyBegin::Mismatch
    );
    // Another API key's same key is its own.
    let theirs = IdempotencyRef {
        key_id: KeyId("key-2".into()),
        key: "a".into(),
    };
    assert_eq!(
        begin(theirs, "p2", hour, hour).await,
        IdempotencyBegin::Started
    );
    // Answered: replayed as stored.
    let answer = StoredResponse {
        status: 202,
        headers: vec![("location".into(), "/v1/jobs/x".into())],
        body: "{\"id\":\"x\"}".into(),
    };
    ledger
        .complete_idempotent(&key("a"), &answer)
        .await
        .unwrap();
    assert_eq!(
        begin(key("a"), "p1", hour, hour).await,
        IdempotencyBegin::Replay(answer)
    );
    // A server-side failure lets the key go: the retry runs.
    assert_eq!(
        begin(key("b"), "p1", hour, hour).await,
        IdempotencyBegin::Started
    );
    ledger.abandon_idempotent(&key("b")).await.unwrap();
    assert_eq!(
        begin(key("b"), "p1", hour, hour).await,
        IdempotencyBegin::Started
    );
    // A request that died after creating its job: once its lock lapses, the retry gets the job.
    let short = Duration::from_millis(30);
    assert_eq!(
        begin(key("c"), "p1", short, hour).await,
        IdempotencyBegin::Started
    );
    let job = ledger
        .insert_job(NewJob {
            idempotency: Some(key("c")),
            ..job_of("a")
        })
        .await
        .unwrap();
    outlive(short).await;
    assert_eq!(
        begin(key("c"), "p1", short, hour).await,
        IdempotencyBegin::Created(job.id)
    );
    // One that died before creating anything is taken over.
    assert_eq!(
        begin(key("d"), "p1", short, hour).await,
        IdempotencyBegin::Started
    );
    outlive(short).await;
    assert_eq!(
        begin(key("d"), "p1", short, hour).await,
        IdempotencyBegin::Started
    );
    // Past its keeping time a key is new again, and the purge deletes what has lapsed.
    assert_eq!(
        begin(key("e"), "p1", hour, short).await,
        IdempotencyBegin::Started
    );
    outlive(short).await;
    assert_eq!(
        begin(key("e"), "p2", hour, short).await,
        IdempotencyBegin::Started
    );
    assert_eq!(
        begin(key("f"), "p1", hour, short).await,
        IdempotencyBegin::Started
    );
    outlive(short).await;
    assert!(ledger.purge_idempotency(now(), 100).await.unwrap() >= 1);
    assert_eq!(
        begin(key("f"), "p2", hour, hour).await,
        IdempotencyBegin::Started
    );
    assert_eq!(
        begin(key("a"), "p1", hour, hour).await,
        IdempotencyBegin::Replay(StoredResponse {
            status: 202,
            headers: vec![("location".into(), "/v1/jobs/x".into())],
            body: "{\"id\":\"x\"}".into(),
        })
    );
}

/// The spend cap is decided in the inserting transaction with the key's row locked: of many
/// concurrent submits, exactly as many pass as the budget holds, and the rest are refused
/// having written nothing.
pub async fn concurrent_submits_cannot_both_pass_the_spend_cap(ledger: Arc<dyn Ledger>) {
    let record = ledger
        .insert_api_key(&tenant("a"), &crate::keys::mint())
        .await
        .unwrap();
    // Each job costs at least 100; a cap of 250 holds two.
    let check = SpendCheck {
        cap_micros: 250,
        day_began: now() - chrono::Duration::hours(1),
        new_cost_micros: 100,
        least_by_model: vec![("demo/image".into(), 100)],
    };
    let submits = (0..12).map(|_| {
        let (ledger, key_id, spend) = (ledger.clone(), record.id.clone(), check.clone());
        async move {
            ledger
                .insert_job(NewJob {
                    key_id: Some(key_id),
                    spend: Some(spend),
                    ..job_of("a")
                })
                .await
        }
    });
    let results = futures::future::join_all(submits).await;
    let passed = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(passed, 2, "the cap holds across concurrent submits");
    for refused in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(
            matches!(
                refused,
                LedgerError::SpendCap {
                    cap: 250,
                    committed: 200,
                    more: 100
                }
            ),
            "{refused:?}"
        );
    }
    let listed = ledger
        .list_jobs(
            &tenant("a"),
            &JobFilter {
                limit: 100,
                ..JobFilter::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(listed.len(), 2, "a refused submit writes nothing");
}

/// Usage is read a page of jobs at a time: every row of a job in the same page, pages in id
/// order, nothing read twice, nothing outside the window or the tenant.
pub async fn usage_rows_come_a_page_of_jobs_at_a_time(ledger: Arc<dyn Ledger>) {
    let mut ids = Vec::new();
    for _ in 0..3 {
        let id = new_job(ledger.as_ref(), "a").await;
        // Two attempts each: a page must not split a job's rows.
        let first = ledger.claim(id, "w", "demo", LEASE).await.unwrap().unwrap();
        let error = ErrorInfo::new("x", "x");
        assert!(ledger
            .retry_later(&first.lease, &error, now())
            .await
            .unwrap());
        ledger.claim(id, "w", "demo", LEASE).await.unwrap().unwrap();
        ids.push(id);
    }
    new_job(ledger.as_ref(), "b").await;
    let (from, to) = (
        now() - chrono::Duration::hours(1),
        now() + chrono::Duration::hours(1),
    );
    let page = |after| {
        let ledger = ledger.clone();
        async move {
            ledger
                .usage_rows(&tenant("a"), from, to, after, 2)
                .await
                .unwrap()
        }
    };
    let first = page(None).await;
    let jobs: Vec<JobId> = first.iter().map(|r| r.job_id).collect();
    assert_eq!(
        jobs,
        [ids[0], ids[0], ids[1], ids[1]],
        "two jobs, both attempts each"
    );
    let second = page(Some(ids[1])).await;
    let jobs: Vec<JobId> = second.iter().map(|r| r.job_id).collect();
    assert_eq!(jobs, [ids[2], ids[2]]);
    assert!(page(Some(ids[2])).await.is_empty());
    let outside = ledger
        .usage_rows(&tenant("a"), to, to + chrono::Duration::hours(1), None, 10)
        .await
        .unwrap();
    assert!(outside.is_empty(), "nothing outside the window");
}
