//! The reconciler's repairs and worker identities: the rescue limit, overdue jobs, identity
//! slots.

use super::*;

pub async fn the_rescue_limit_fails_a_job(ledger: Arc<dyn Ledger>) {
    let id = new_job(ledger.as_ref(), "a").await;
    let short = Duration::from_millis(30);
    ledger
        .claim(id, "w1", "demo", short)
        .await
        .unwrap()
        .unwrap();
    outlive(short).await;
    assert_eq!(
        ledger.rescue_expired_leases(1, 10).await.unwrap(),
        vec![Rescue::Requeued(id, Lane::Normal)]
    );
    ledger
        .claim(id, "w2", "demo", short)
        .await
        .unwrap()
        .unwrap();
    outlive(short).await;
    assert_eq!(
        ledger.rescue_expired_leases(1, 10).await.unwrap(),
        vec![Rescue::GaveUp(id)]
    );
    let job = ledger.job_by_id(id).await.unwrap().unwrap();
    assert_eq!(job.status, Status::Failed);
    assert_eq!(job.error.unwrap().code, "rescue_limit_exceeded");
    assert!(job
        .attempts
        .iter()
        .all(|a| a.outcome == Some(AttemptOutcome::Lost)));
}

pub async fn overdue_jobs_fail_with_the_limit_they_broke(ledger: Arc<dyn Ledger>) {
    let insert = |deadline: Option<i64>, start_by: Option<i64>| {
        let ledger = ledger.clone();
        async move {
            let at = |secs: i64| now() + chrono::Duration::seconds(secs);
            ledger
                .insert_job(NewJob {
                    idempotency: None,
                    priority: Default::default(),
                    surface: Default::default(),
                    max_active: None,
                    spend: None,
                    id: JobId::new(),
                    tenant: tenant("a"),
                    model: "demo/image".into(),
                    input: serde_json::json!({"prompt": "x"}),
                    deadline_at: deadline.map(at),
                    start_by: start_by.map(at),
                    key_id: None,
                    webhook_url: None,
                    webhook_events: None,
                })
                .await
                .unwrap()
                .id
        }
    };
    let past_deadline = insert(Some(-1), None).await;
    let never_started = insert(None, Some(-1)).await;
    let in_time = insert(Some(60), Some(60)).await;
    let unlimited = insert(None, None).await;
    // A job that started keeps running past its start_by.
    let started = insert(None, Some(-1)).await;
    let claim = ledger
        .claim(started, "w", "demo", LEASE)
        .await
        .unwrap()
        .unwrap();
    assert!(ledger.release(&claim.lease).await.unwrap());

    let mut failed = ledger.fail_overdue(now(), 100).await.unwrap();
    failed.sort();
    let mut expected = vec![
        (past_deadline, "deadline_exceeded".to_owned()),
        (never_started, "queue_timeout".to_owned()),
    ];
    expected.sort();
    assert_eq!(failed, expected);
    for (id, code) in &expected {
        let job = ledger.job_by_id(*id).await.unwrap().unwrap();
        assert_eq!(job.status, Status::Failed);
        assert_eq!(job.error.unwrap().code, *code);
        assert_eq!(terminal_transitions(ledger.as_ref(), *id).await, 1);
    }
    for id in [in_time, unlimited, started] {
        assert_eq!(
            ledger.job_by_id(id).await.unwrap().unwrap().status,
            Status::Queued
        );
    }
    assert!(
        ledger.fail_overdue(now(), 100).await.unwrap().is_empty(),
        "once only"
    );
}

pub async fn worker_slots_are_unique_and_come_back(ledger: Arc<dyn Ledger>) {
    let short = Duration::from_millis(30);
    let a = ledger
        .acquire_worker_slot("host", "proc-a", LEASE)
        .await
        .unwrap();
    let b = ledger
        .acquire_worker_slot("host", "proc-b", LEASE)
        .await
        .unwrap();
    assert_eq!((a.as_str(), b.as_str()), ("host-0", "host-1"));
    assert!(ledger.renew_worker_slot(&a, "proc-a", LEASE).await.unwrap());
    assert!(!ledger.renew_worker_slot(&a, "proc-b", LEASE).await.unwrap());
    // A graceful stop frees the slot: the restart gets the same identity back.
    ledger.release_worker_slot(&a, "proc-a").await.unwrap();
    assert_eq!(
        ledger
            .acquire_worker_slot("host", "proc-a2", short)
            .await
            .unwrap(),
        "host-0"
    );
    // A holder that stops renewing loses its slot to the next process once it expires.
    let id = new_job(ledger.as_ref(), "a").await;
    ledger
        .claim(id, "host-0", "demo", LEASE)
        .await
        .unwrap()
        .unwrap();
    outlive(short).await;
    assert_eq!(
        ledger
            .acquire_worker_slot("host", "proc-c", LEASE)
            .await
            .unwrap(),
        "host-0"
    );
    assert!(!ledger
        .renew_worker_slot("host-0", "proc-a2", LEASE)
        .await
        .unwrap());
    // The new holder expires what the old one still held; the reconciler rescues it at once.
    assert_eq!(ledger.expire_leases_of("host-0").await.unwrap(), 1);
    assert_eq!(
        ledger.rescue_expired_leases(3, 10).await.unwrap(),
        vec![Rescue::Requeued(id, Lane::Normal)]
    );
}
