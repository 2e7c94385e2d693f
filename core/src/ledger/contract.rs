//! The ledger contract: behaviour every `Ledger` implementation must show, written once against
//! the trait and run against each engine (SQLite here; Postgres runs the same functions). Each
//! function takes a fresh, empty ledger.

use super::*;
use crate::dispatch::Lane;
use crate::job::{AttemptOutcome, ErrorInfo, JobId, NewOutput, Status, TenantId};
use crate::time::now;
use std::sync::Arc;
use std::time::Duration;

const LEASE: Duration = Duration::from_secs(30);

fn tenant(name: &str) -> TenantId {
    TenantId::parse(name).unwrap()
}

/// A plain `demo/image` job of `owner`'s, to insert as it is or with fields changed.
pub(crate) fn job_of(owner: &str) -> NewJob {
    NewJob {
        idempotency: None,
        priority: Default::default(),
        max_active: None,
        spend: None,
        id: JobId::new(),
        tenant: tenant(owner),
        model: "demo/image".into(),
        input: serde_json::json!({"prompt": "x"}),
        deadline_at: None,
        start_by: None,
        key_id: None,
        webhook_url: None,
        webhook_events: None,
    }
}

async fn new_job(ledger: &dyn Ledger, owner: &str) -> JobId {
    let job = ledger.insert_job(job_of(owner)).await.unwrap();
    assert_eq!(job.status, Status::Queued);
    job.id
}

/// Waits until a lease taken for `lease` has certainly expired on the ledger's clock.
async fn outlive(lease: Duration) {
    tokio::time::sleep(lease + Duration::from_millis(20)).await;
}

async fn terminal_transitions(ledger: &dyn Ledger, id: JobId) -> usize {
    ledger
        .transitions(id)
        .await
        .unwrap()
        .iter()
        .filter(|t| t.to.is_terminal())
        .count()
}

pub async fn claims_are_exclusive(ledger: Arc<dyn Ledger>) {
    let id = new_job(ledger.as_ref(), "a").await;
    let claims = futures::future::join_all((0..8).map(|i| {
        let ledger = ledger.clone();
        async move {
            ledger
                .claim(id, &format!("w{i}"), "demo", LEASE)
                .await
                .unwrap()
        }
    }))
    .await;
    assert_eq!(claims.iter().filter(|c| c.is_some()).count(), 1);
    let job = ledger.job_by_id(id).await.unwrap().unwrap();
    assert_eq!(job.status, Status::Running);
    assert_eq!(job.attempt_count, 1);
    assert_eq!(job.attempts.len(), 1);
    assert_eq!(job.attempts[0].id, format!("{id}-1"));
}

pub async fn results_are_fenced_by_the_lease(ledger: Arc<dyn Ledger>) {
    let id = new_job(ledger.as_ref(), "a").await;
    let short = Duration::from_millis(30);
    let stale = ledger
        .claim(id, "w1", "demo", short)
        .await
        .unwrap()
        .unwrap();
    outlive(short).await;
    assert_eq!(
        ledger.rescue_expired_leases(3, 10).await.unwrap(),
        vec![Rescue::Requeued(id, Lane::Normal)]
    );
    let fresh = ledger
        .claim(id, "w2", "demo", LEASE)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(fresh.attempt_number, 2);
    // The first worker wakes up late: none of its writes land.
    assert!(!ledger.renew_lease(&stale.lease, LEASE).await.unwrap());
    assert!(!ledger.succeed(&stale.lease, &[]).await.unwrap());
    assert!(!ledger
        .fail(&stale.lease, &ErrorInfo::new("x", "y"))
        .await
        .unwrap());
    assert!(!ledger.release(&stale.lease).await.unwrap());
    assert!(ledger.succeed(&fresh.lease, &[]).await.unwrap());
    assert!(
        !ledger.succeed(&fresh.lease, &[]).await.unwrap(),
        "a second commit must lose"
    );
    let job = ledger.job_by_id(id).await.unwrap().unwrap();
    assert_eq!(job.status, Status::Succeeded);
    assert_eq!(job.rescue_count, 1);
    let outcomes: Vec<_> = job.attempts.iter().map(|a| a.outcome).collect();
    assert_eq!(
        outcomes,
        vec![Some(AttemptOutcome::Lost), Some(AttemptOutcome::Succeeded)]
    );
    assert_eq!(terminal_transitions(ledger.as_ref(), id).await, 1);
}

pub async fn cancel_fences_the_running_worker(ledger: Arc<dyn Ledger>) {
    let id = new_job(ledger.as_ref(), "a").await;
    let claim = ledger
        .claim(id, "w1", "demo", LEASE)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        ledger.cancel_job(&tenant("a"), id).await.unwrap(),
        CancelOutcome::Canceled(_)
    ));
    // A second cancel finds the job ended: only the first made the transition.
    assert!(matches!(
        ledger.cancel_job(&tenant("a"), id).await.unwrap(),
        CancelOutcome::AlreadyTerminal(j) if j.status == Status::Canceled
    ));
    assert!(!ledger.renew_lease(&claim.lease, LEASE).await.unwrap());
    assert!(!ledger.succeed(&claim.lease, &[]).await.unwrap());
    // The cancel itself closed the attempt, so a dead worker leaves no attempt open.
    let job = ledger.job_by_id(id).await.unwrap().unwrap();
    assert!(job.attempts[0].finished_at.is_some());
    assert_eq!(job.status, Status::Canceled);
    assert_eq!(job.attempts[0].outcome, Some(AttemptOutcome::Canceled));
    assert!(job.outputs.is_empty());
    let path: Vec<_> = ledger
        .transitions(id)
        .await
        .unwrap()
        .iter()
        .map(|t| t.to)
        .collect();
    assert_eq!(
        path,
        vec![Status::Queued, Status::Running, Status::Canceled]
    );
}

pub async fn terminal_states_never_change(ledger: Arc<dyn Ledger>) {
    let id = new_job(ledger.as_ref(), "a").await;
    let claim = ledger
        .claim(id, "w1", "demo", LEASE)
        .await
        .unwrap()
        .unwrap();
    let output = NewOutput {
        index: 0,
        object_key: format!("jobs/{id}/0.png"),
        content_type: "image/png".into(),
        bytes: 10,
        expires_at: now() + chrono::Duration::days(7),
    };
    assert!(ledger.succeed(&claim.lease, &[output]).await.unwrap());
    assert!(matches!(
        ledger.cancel_job(&tenant("a"), id).await.unwrap(),
        CancelOutcome::AlreadyTerminal(_)
    ));
    assert!(ledger
        .claim(id, "w2", "demo", LEASE)
        .await
        .unwrap()
        .is_none());
    assert!(ledger
        .rescue_expired_leases(0, 10)
        .await
        .unwrap()
        .is_empty());
    let job = ledger.job_by_id(id).await.unwrap().unwrap();
    assert_eq!(job.status, Status::Succeeded);
    assert_eq!(job.outputs.len(), 1);
    assert_eq!(terminal_transitions(ledger.as_ref(), id).await, 1);
}

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

pub async fn retries_wait_until_due_and_releases_are_free(ledger: Arc<dyn Ledger>) {
    let id = new_job(ledger.as_ref(), "a").await;
    let claim = ledger
        .claim(id, "w1", "demo", LEASE)
        .await
        .unwrap()
        .unwrap();
    let later = now() + chrono::Duration::seconds(60);
    assert!(ledger
        .retry_later(
            &claim.lease,
            &ErrorInfo::new("upstream_429", "slow down"),
            later
        )
        .await
        .unwrap());
    assert!(
        ledger
            .claim(id, "w1", "demo", LEASE)
            .await
            .unwrap()
            .is_none(),
        "not due yet"
    );
    assert!(ledger
        .due_unrung(now() + chrono::Duration::days(1), 10)
        .await
        .unwrap()
        .is_empty());
    let job = ledger.job_by_id(id).await.unwrap().unwrap();
    assert_eq!(job.status, Status::Queued);
    assert!(job.error.is_none(), "a scheduled retry is not a job error");
    assert_eq!(job.attempts[0].error.as_ref().unwrap().code, "upstream_429");

    let other = new_job(ledger.as_ref(), "a").await;
    let claim = ledger
        .claim(other, "w1", "demo", LEASE)
        .await
        .unwrap()
        .unwrap();
    assert!(ledger.release(&claim.lease).await.unwrap());
    let job = ledger.job_by_id(other).await.unwrap().unwrap();
    assert_eq!((job.status, job.rescue_count), (Status::Queued, 0));
    assert_eq!(job.attempts[0].outcome, Some(AttemptOutcome::Released));
    assert!(ledger
        .claim(other, "w2", "demo", LEASE)
        .await
        .unwrap()
        .is_some());
}

pub async fn reads_are_scoped_by_tenant(ledger: Arc<dyn Ledger>) {
    let mine = new_job(ledger.as_ref(), "a").await;
    let theirs = new_job(ledger.as_ref(), "b").await;
    assert!(ledger.get_job(&tenant("b"), mine).await.unwrap().is_none());
    assert!(matches!(
        ledger.cancel_job(&tenant("b"), mine).await.unwrap(),
        CancelOutcome::NotFound
    ));
    let filter = JobFilter {
        limit: 10,
        ..JobFilter::default()
    };
    let listed: Vec<_> = ledger
        .list_jobs(&tenant("a"), &filter)
        .await
        .unwrap()
        .iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(listed, vec![mine]);
    assert_eq!(
        ledger.job_by_id(mine).await.unwrap().unwrap().status,
        Status::Queued
    );
    assert!(ledger
        .get_job(&tenant("b"), theirs)
        .await
        .unwrap()
        .is_some());
}

pub async fn due_jobs_are_rung_again_only_when_stale(ledger: Arc<dyn Ledger>) {
    let id = new_job(ledger.as_ref(), "a").await;
    let an_hour_ago = now() - chrono::Duration::hours(1);
    assert!(
        ledger.due_unrung(an_hour_ago, 10).await.unwrap().is_empty(),
        "just rung at submit"
    );
    let soon = now() + chrono::Duration::seconds(1);
    assert_eq!(
        ledger.due_unrung(soon, 10).await.unwrap(),
        vec![(id, Lane::Normal)]
    );
    // A failed ring makes the job due for the very next pass.
    ledger.mark_unrung(id).await.unwrap();
    assert_eq!(
        ledger.due_unrung(an_hour_ago, 10).await.unwrap(),
        vec![(id, Lane::Normal)]
    );
}

pub async fn expired_outputs_are_listed_until_marked(ledger: Arc<dyn Ledger>) {
    let id = new_job(ledger.as_ref(), "a").await;
    let claim = ledger
        .claim(id, "w1", "demo", LEASE)
        .await
        .unwrap()
        .unwrap();
    let past = now() - chrono::Duration::seconds(1);
    let outputs: Vec<NewOutput> = (0..2)
        .map(|i| NewOutput {
            index: i,
            object_key: format!("jobs/{id}/{i}.png"),
            content_type: "image/png".into(),
            bytes: 1,
            expires_at: if i == 0 {
                past
            } else {
                now() + chrono::Duration::days(7)
            },
        })
        .collect();
    assert!(ledger.succeed(&claim.lease, &outputs).await.unwrap());
    let expired = ledger.expired_outputs(now(), 10).await.unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].object_key, format!("jobs/{id}/0.png"));
    ledger.mark_output_deleted(id, 0).await.unwrap();
    assert!(ledger.expired_outputs(now(), 10).await.unwrap().is_empty());
    let job = ledger.job_by_id(id).await.unwrap().unwrap();
    assert!(job.outputs[0].deleted_at.is_some() && job.outputs[1].deleted_at.is_none());
}

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
    assert_eq!(ledger.revoke_api_key(&record.id).await.unwrap(), 1);
    assert!(ledger.key_by_hash(&key.hash).await.unwrap().is_none());
    assert!(ledger.list_api_keys().await.unwrap()[0]
        .revoked_at
        .is_some());
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

pub async fn upstream_handles_and_callbacks_outlive_a_rescue(ledger: Arc<dyn Ledger>) {
    let id = new_job(ledger.as_ref(), "a").await;
    let short = Duration::from_millis(30);
    let first = ledger
        .claim(id, "w1", "demo", short)
        .await
        .unwrap()
        .unwrap();
    let note = AttemptNote {
        route: Some("cog:draw"),
        upstream_id: Some("prediction-1"),
        ..Default::default()
    };
    ledger.annotate_attempt(&first.lease, note).await.unwrap();
    outlive(short).await;
    ledger.rescue_expired_leases(3, 10).await.unwrap();
    // The result arrives while nobody waits: it is kept for whoever re-attaches.
    assert!(ledger
        .record_callback(id, "prediction-1", "{\"status\":\"succeeded\"}")
        .await
        .unwrap());
    assert!(
        !ledger
            .record_callback(id, "prediction-1", "{\"again\":true}")
            .await
            .unwrap(),
        "the first callback wins"
    );
    let second = ledger
        .claim(id, "w2", "demo", LEASE)
        .await
        .unwrap()
        .unwrap();
    let lost = &second.job.attempts[0];
    assert_eq!(lost.outcome, Some(AttemptOutcome::Lost));
    assert_eq!(lost.upstream_id.as_deref(), Some("prediction-1"));
    assert_eq!(
        ledger
            .callback(id, "prediction-1")
            .await
            .unwrap()
            .as_deref(),
        Some("{\"status\":\"succeeded\"}")
    );
    let cost = AttemptNote {
        cost_micros: Some(2_500),
        ..Default::default()
    };
    ledger.annotate_attempt(&second.lease, cost).await.unwrap();
    assert!(ledger.succeed(&second.lease, &[]).await.unwrap());
    let job = ledger.job_by_id(id).await.unwrap().unwrap();
    assert_eq!(job.attempts[1].cost_micros, Some(2_500));
    assert_eq!(job.attempts[0].route, "cog:draw");
    // A finished job keeps no callbacks and takes no new ones.
    assert_eq!(ledger.callback(id, "prediction-1").await.unwrap(), None);
    assert!(!ledger
        .record_callback(id, "prediction-2", "{}")
        .await
        .unwrap());
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

pub async fn webhook_events_are_written_with_their_transitions(ledger: Arc<dyn Ledger>) {
    let insert = |events: Option<Vec<String>>| {
        let ledger = ledger.clone();
        async move {
            ledger
                .insert_job(NewJob {
                    idempotency: None,
                    priority: Default::default(),
                    max_active: None,
                    spend: None,
                    id: JobId::new(),
                    tenant: tenant("a"),
                    model: "demo/image".into(),
                    input: serde_json::json!({"prompt": "x"}),
                    deadline_at: None,
                    start_by: None,
                    key_id: None,
                    webhook_url: Some("https://hooks.example.com/k".into()),
                    webhook_events: events,
                })
                .await
                .unwrap()
                .id
        }
    };
    let all = insert(None).await;
    let only_end = insert(Some(vec!["job.succeeded".into()])).await;
    for id in [all, only_end] {
        // Started, retried (no event), started again (no second job.started), succeeded.
        let first = ledger.claim(id, "w", "demo", LEASE).await.unwrap().unwrap();
        let error = ErrorInfo::new("x", "x");
        assert!(ledger
            .retry_later(&first.lease, &error, now())
            .await
            .unwrap());
        let second = ledger.claim(id, "w", "demo", LEASE).await.unwrap().unwrap();
        assert!(ledger.succeed(&second.lease, &[]).await.unwrap());
    }
    let types = |id: JobId| {
        let ledger = ledger.clone();
        async move {
            ledger
                .deliveries(&tenant("a"), id)
                .await
                .unwrap()
                .unwrap()
                .into_iter()
                .map(|d| d.event_type)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(types(all).await, ["job.started", "job.succeeded"]);
    assert_eq!(types(only_end).await, ["job.succeeded"]);
    assert!(
        ledger
            .deliveries(&tenant("b"), all)
            .await
            .unwrap()
            .is_none(),
        "tenant-scoped"
    );

    // A first delay holds first tries back; claimed deliveries are held from other claimers.
    let later = ledger
        .claim_deliveries(now(), Duration::from_secs(60), LEASE, 10)
        .await
        .unwrap();
    assert!(later.is_empty());
    let due = ledger
        .claim_deliveries(now(), Duration::ZERO, LEASE, 10)
        .await
        .unwrap();
    assert_eq!(due.len(), 3);
    assert!(ledger
        .claim_deliveries(now(), Duration::ZERO, LEASE, 10)
        .await
        .unwrap()
        .is_empty());
    let tried = DeliveryTry {
        number: 1,
        at: now(),
        status_code: Some(500),
        latency_ms: 3,
        error: Some("the receiver answered 500".into()),
    };
    let retry_at = now() - chrono::Duration::milliseconds(1);
    // Only the claim's holder records a result.
    assert!(!ledger
        .finish_delivery_try(&due[0].id, "not-the-claim", &tried, DeliveryNext::Delivered)
        .await
        .unwrap());
    assert!(ledger
        .finish_delivery_try(
            &due[0].id,
            &due[0].claim_token,
            &tried,
            DeliveryNext::RetryAt(retry_at)
        )
        .await
        .unwrap());
    let again = ledger
        .claim_deliveries(now(), Duration::from_secs(60), LEASE, 10)
        .await
        .unwrap();
    assert_eq!(
        again.len(),
        1,
        "a retry is not held back by the first delay"
    );
    assert_eq!(
        (again[0].id.clone(), again[0].tries),
        (due[0].id.clone(), 1)
    );
    let delivered = DeliveryTry {
        number: 2,
        status_code: Some(200),
        error: None,
        ..tried.clone()
    };
    assert!(ledger
        .finish_delivery_try(
            &again[0].id,
            &again[0].claim_token,
            &delivered,
            DeliveryNext::Delivered
        )
        .await
        .unwrap());
    let log = ledger
        .deliveries(&tenant("a"), again[0].job_id)
        .await
        .unwrap()
        .unwrap();
    let d = log.iter().find(|d| d.id == again[0].id).unwrap();
    assert_eq!(d.status, "delivered");
    assert_eq!(d.tries.len(), 2);
    // Times are kept to the millisecond.
    let logged = &d.tries[0];
    assert_eq!(
        (
            logged.number,
            logged.status_code,
            logged.latency_ms,
            &logged.error
        ),
        (1, Some(500), 3, &tried.error)
    );
    assert!((logged.at - tried.at).num_milliseconds().abs() <= 1);
    // Redelivery puts it back, same id.
    assert!(ledger
        .redeliver(&tenant("a"), d_job(&again[0]), &again[0].id)
        .await
        .unwrap());
    assert!(!ledger
        .redeliver(&tenant("b"), d_job(&again[0]), &again[0].id)
        .await
        .unwrap());
    let back = ledger
        .claim_deliveries(now(), Duration::ZERO, LEASE, 10)
        .await
        .unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].id, again[0].id);
    assert_eq!(back[0].schedule_base, 2, "the schedule starts over");
    // While it is being tried, a redelivery is refused.
    assert!(!ledger
        .redeliver(&tenant("a"), d_job(&again[0]), &again[0].id)
        .await
        .unwrap());
}

fn d_job(d: &DueDelivery) -> JobId {
    d.job_id
}

pub async fn pipelines_start_steps_as_their_inputs_exist_and_end_with_them(
    ledger: Arc<dyn Ledger>,
) {
    use crate::pipeline::StepSpec;
    let chain = |id: JobId| NewPipeline {
        priority: Default::default(),
        max_active: None,
        idempotency: None,
        id,
        tenant: tenant("a"),
        key_id: None,
        webhook_url: None,
        webhook_events: None,
        steps: vec![
            StepSpec {
                name: "image".into(),
                model: "demo/image".into(),
                input: serde_json::json!({"prompt": "x"}),
            },
            StepSpec {
                name: "upscale".into(),
                model: "demo/upscale".into(),
                input: serde_json::json!({"image": "$steps.image.outputs[0]", "scale": 2}),
            },
            StepSpec {
                name: "video".into(),
                model: "demo/video".into(),
                input: serde_json::json!({"image": "$steps.upscale.outputs[0]"}),
            },
        ],
    };
    let (pipeline, started) = ledger.insert_pipeline(chain(JobId::new())).await.unwrap();
    let started: Vec<JobId> = started.into_iter().map(|(id, _)| id).collect();
    assert_eq!(pipeline.status, Status::Running);
    assert_eq!(started.len(), 1, "only the step with no inputs starts");
    assert_eq!(pipeline.steps[0].job_id, Some(started[0]));
    assert!(pipeline.steps[1].job_id.is_none());

    // Step 1 succeeds: step 2 starts, its reference now a storage reference to step 1's output.
    let first = ledger
        .claim(started[0], "w", "demo", LEASE)
        .await
        .unwrap()
        .unwrap();
    let output = NewOutput {
        index: 0,
        object_key: format!("jobs/{}/0.png", started[0]),
        content_type: "image/png".into(),
        bytes: 1,
        expires_at: now() + chrono::Duration::days(7),
    };
    assert!(ledger.succeed(&first.lease, &[output]).await.unwrap());
    let next: Vec<JobId> = ledger
        .advance_pipeline(pipeline.id)
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(next.len(), 1);
    assert!(
        ledger
            .advance_pipeline(pipeline.id)
            .await
            .unwrap()
            .is_empty(),
        "idempotent"
    );
    let upscale = ledger.job_by_id(next[0]).await.unwrap().unwrap();
    assert_eq!(
        upscale.input["image"],
        format!("kiln://jobs/{}/outputs/0", started[0])
    );

    // Step 2 fails for good: the pipeline fails, step 3 never starts.
    let second = ledger
        .claim(next[0], "w", "demo", LEASE)
        .await
        .unwrap()
        .unwrap();
    let error = ErrorInfo::new("boom", "it broke");
    assert!(ledger.fail(&second.lease, &error).await.unwrap());
    assert!(ledger
        .advance_pipeline(pipeline.id)
        .await
        .unwrap()
        .is_empty());
    let ended = ledger
        .get_pipeline(&tenant("a"), pipeline.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ended.status, Status::Failed);
    assert_eq!(ended.error.as_ref().unwrap().code, "step_failed");
    assert!(ended.error.unwrap().message.contains("it broke"));
    assert!(ended.steps[2].job_id.is_none());
    assert!(ledger.active_pipelines(10).await.unwrap().is_empty());

    // Cancel cascades to the running step; another tenant sees nothing.
    let (other, started) = ledger.insert_pipeline(chain(JobId::new())).await.unwrap();
    let started: Vec<JobId> = started.into_iter().map(|(id, _)| id).collect();
    ledger
        .claim(started[0], "w", "demo", LEASE)
        .await
        .unwrap()
        .unwrap();
    assert!(ledger
        .cancel_pipeline(&tenant("b"), other.id)
        .await
        .unwrap()
        .is_none());
    assert!(ledger
        .get_pipeline(&tenant("b"), other.id)
        .await
        .unwrap()
        .is_none());
    let canceled = ledger
        .cancel_pipeline(&tenant("a"), other.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(canceled.status, Status::Canceled);
    assert_eq!(canceled.steps[0].job_status, Some(Status::Canceled));
    assert_eq!(terminal_transitions(ledger.as_ref(), started[0]).await, 1);
}

/// A job further back than the cap reads as the cap ("that many or more"), so reading a queued
/// job's place costs the same however deep the queue is.
pub async fn a_place_deeper_than_the_cap_reads_as_the_cap(ledger: Arc<dyn Ledger>) {
    let cap = u64::from(crate::ledger::sql::QUEUE_POSITION_CAP);
    let mut jobs = Vec::new();
    for _ in 0..cap + 2 {
        jobs.push(new_job(ledger.as_ref(), "a").await);
    }
    let place = |id: JobId| {
        let ledger = ledger.clone();
        async move { ledger.queue_position(id).await.unwrap() }
    };
    assert_eq!(place(jobs[cap as usize - 1]).await, Some(cap - 1));
    assert_eq!(
        place(jobs[cap as usize]).await,
        Some(cap),
        "exactly the cap"
    );
    assert_eq!(place(jobs[cap as usize + 1]).await, Some(cap), "past it");
}

pub async fn queued_jobs_know_their_place_and_running_ones_their_progress(ledger: Arc<dyn Ledger>) {
    let first = new_job(ledger.as_ref(), "a").await;
    let second = new_job(ledger.as_ref(), "b").await;
    let third = new_job(ledger.as_ref(), "a").await;
    // The queue is every tenant's, in submit order.
    assert_eq!(ledger.queue_position(first).await.unwrap(), Some(0));
    assert_eq!(ledger.queue_position(second).await.unwrap(), Some(1));
    assert_eq!(ledger.queue_position(third).await.unwrap(), Some(2));
    let claim = ledger
        .claim(first, "w1", "demo", LEASE)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ledger.queue_position(first).await.unwrap(), None, "running");
    assert_eq!(ledger.queue_position(third).await.unwrap(), Some(1));
    // Progress lands on the open attempt, from the worker or from an upstream's push.
    let note = AttemptNote {
        upstream_id: Some("prediction-1"),
        progress_percent: Some(40),
        ..Default::default()
    };
    ledger.annotate_attempt(&claim.lease, note).await.unwrap();
    let job = ledger.job_by_id(first).await.unwrap().unwrap();
    assert_eq!(job.attempts[0].progress_percent, Some(40));
    ledger
        .record_progress(first, "prediction-1", 70)
        .await
        .unwrap();
    ledger
        .record_progress(first, "elsewhere", 90)
        .await
        .unwrap();
    let job = ledger.job_by_id(first).await.unwrap().unwrap();
    assert_eq!(job.attempts[0].progress_percent, Some(70));
    // A finished attempt takes no more.
    assert!(ledger.succeed(&claim.lease, &[]).await.unwrap());
    ledger
        .record_progress(first, "prediction-1", 10)
        .await
        .unwrap();
    let job = ledger.job_by_id(first).await.unwrap().unwrap();
    assert_eq!(job.attempts[0].progress_percent, Some(70));
    // Nor from its own worker, which may report once more before it learns the attempt ended
    // (a cancel); a cost recorded after the end still lands.
    let late = AttemptNote {
        progress_percent: Some(95),
        cost_micros: Some(1234),
        ..Default::default()
    };
    ledger.annotate_attempt(&claim.lease, late).await.unwrap();
    let job = ledger.job_by_id(first).await.unwrap().unwrap();
    assert_eq!(job.attempts[0].progress_percent, Some(70));
    assert_eq!(job.attempts[0].cost_micros, Some(1234));
}

pub async fn pipelines_are_listed_newest_first_within_their_tenant(ledger: Arc<dyn Ledger>) {
    use crate::pipeline::StepSpec;
    let one_step = |owner: &str| NewPipeline {
        priority: Default::default(),
        max_active: None,
        idempotency: None,
        id: JobId::new(),
        tenant: tenant(owner),
        key_id: None,
        webhook_url: None,
        webhook_events: None,
        steps: vec![StepSpec {
            name: "image".into(),
            model: "demo/image".into(),
            input: serde_json::json!({"prompt": "x"}),
        }],
    };
    let mut mine = vec![];
    for _ in 0..3 {
        mine.push(ledger.insert_pipeline(one_step("a")).await.unwrap().0.id);
    }
    ledger.insert_pipeline(one_step("b")).await.unwrap();
    let page = |before: Option<JobId>, statuses: Vec<Status>| JobFilter {
        statuses,
        before,
        limit: 2,
        ..JobFilter::default()
    };
    let listed: Vec<JobId> = ledger
        .list_pipelines(&tenant("a"), &page(None, vec![]))
        .await
        .unwrap()
        .iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(listed, vec![mine[2], mine[1]]);
    let rest = ledger
        .list_pipelines(&tenant("a"), &page(Some(mine[1]), vec![]))
        .await
        .unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].id, mine[0]);
    assert_eq!(rest[0].steps.len(), 1);
    let failed = ledger
        .list_pipelines(&tenant("a"), &page(None, vec![Status::Failed]))
        .await
        .unwrap();
    assert!(failed.is_empty());
}

pub async fn idempotency_keys_replay_refuse_take_over_and_expire(ledger: Arc<dyn Ledger>) {
    let key = |k: &str| IdempotencyRef {
        key_id: "key-1".into(),
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
        key_id: "key-2".into(),
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

pub async fn tenant_windows_hold_a_burst_and_admit_it_as_places_free(ledger: Arc<dyn Ledger>) {
    ledger.set_dispatch_window(2);
    let insert = |owner: &str, priority: Lane| {
        let ledger = ledger.clone();
        let owner = owner.to_owned();
        async move {
            ledger
                .insert_job(NewJob {
                    priority,
                    ..job_of(&owner)
                })
                .await
                .unwrap()
        }
    };
    let a1 = insert("a", Lane::Normal).await;
    let a2 = insert("a", Lane::Normal).await;
    let a3 = insert("a", Lane::Normal).await;
    let a4 = insert("a", Lane::High).await;
    assert!(!a1.held && !a2.held, "the window admits two");
    assert!(a3.held && a4.held, "the rest wait in the ledger");
    // Another tenant's window is its own.
    let b1 = insert("b", Lane::Normal).await;
    assert!(!b1.held);
    // Held jobs are not rung by the reconciler and cannot be claimed.
    let soon = now() + chrono::Duration::seconds(1);
    let due: Vec<JobId> = ledger
        .due_unrung(soon, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert!(!due.contains(&a3.id) && !due.contains(&a4.id), "{due:?}");
    assert!(ledger
        .claim(a3.id, "w1", "demo", LEASE)
        .await
        .unwrap()
        .is_none());
    // A claim frees a place: the tenant's highest-priority held job takes it, in the same
    // transaction.
    let claim = ledger
        .claim(a1.id, "w1", "demo", LEASE)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claim.admitted, Some((a4.id, Lane::High)));
    assert!(claim.job.priority == Lane::Normal);
    // A queued job that ends without a claim frees a place the reconciler fills.
    assert!(
        ledger.admit_held(10).await.unwrap().is_empty(),
        "no room yet"
    );
    assert!(matches!(
        ledger.cancel_job(&tenant("a"), a2.id).await.unwrap(),
        CancelOutcome::Canceled(_)
    ));
    // While jobs are held, a new one queues behind them even if a place is free.
    let a5 = insert("a", Lane::Normal).await;
    assert!(a5.held, "no jumping the held line");
    assert_eq!(
        ledger.admit_held(10).await.unwrap(),
        vec![(a3.id, Lane::Normal)]
    );
    assert!(!ledger.job_by_id(a3.id).await.unwrap().unwrap().held);
}

/// A job that comes back to the queue comes back admitted, past the window's size; its next
/// claim frees no place of its own, so it admits nobody, and the window returns to its size.
/// A first claim still admits into the place it frees.
pub async fn a_job_back_in_the_window_does_not_widen_it(ledger: Arc<dyn Ledger>) {
    ledger.set_dispatch_window(2);
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(ledger.insert_job(job_of("a")).await.unwrap());
    }
    let [a, b, c, d, e] = [0, 1, 2, 3, 4].map(|i| ids[i].id);
    assert!(ids[2].held && ids[3].held && ids[4].held, "a window of two");
    let first = ledger.claim(a, "w1", "demo", LEASE).await.unwrap().unwrap();
    assert_eq!(
        first.admitted.map(|(id, _)| id),
        Some(c),
        "a's place goes to c"
    );
    // a is retried: b, c and a are admitted now, one past the window.
    let error = ErrorInfo::new("x", "x");
    assert!(ledger
        .retry_later(&first.lease, &error, now())
        .await
        .unwrap());
    let again = ledger.claim(a, "w1", "demo", LEASE).await.unwrap().unwrap();
    assert_eq!(again.admitted, None, "b and c fill the window of two");
    assert!(ledger.job_by_id(d).await.unwrap().unwrap().held);
    // b's first claim frees b's place, and d takes it.
    let of_b = ledger.claim(b, "w1", "demo", LEASE).await.unwrap().unwrap();
    assert_eq!(of_b.admitted.map(|(id, _)| id), Some(d));
    assert!(ledger.job_by_id(e).await.unwrap().unwrap().held);
}

/// Many jobs' inserts, claims and successes at once (the ledger may write them in shared
/// transactions): each gets its own answer, a refusal among them refuses only its own write,
/// and the active-job limit still holds across them.
pub async fn concurrent_writes_each_get_their_own_answer(ledger: Arc<dyn Ledger>) {
    let key = crate::keys::mint();
    let record = ledger.insert_api_key(&tenant("a"), &key).await.unwrap();
    let submit = |owner: &'static str, key_id: Option<String>, max_active: Option<u32>| {
        let ledger = ledger.clone();
        async move {
            ledger
                .insert_job(NewJob {
                    max_active,
                    key_id,
                    ..job_of(owner)
                })
                .await
        }
    };
    // 40 submits on a key allowed 10 active jobs, alongside 10 of another tenant's.
    let limited = (0..40).map(|_| submit("a", Some(record.id.clone()), Some(10)));
    let free = (0..10).map(|_| submit("b", None, None));
    let (limited, free) = futures::join!(
        futures::future::join_all(limited),
        futures::future::join_all(free)
    );
    let admitted: Vec<_> = limited.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(
        admitted.len(),
        10,
        "the limit holds across concurrent submits"
    );
    assert!(limited
        .iter()
        .filter_map(|r| r.as_ref().err())
        .all(|e| matches!(e, LedgerError::ActiveJobLimit(10))));
    let free: Vec<_> = free.into_iter().map(|r| r.unwrap()).collect();
    let ids: Vec<JobId> = admitted
        .iter()
        .map(|j| j.id)
        .chain(free.iter().map(|j| j.id))
        .collect();

    let claims = futures::future::join_all(ids.iter().enumerate().map(|(i, id)| {
        let ledger = ledger.clone();
        async move {
            ledger
                .claim(*id, &format!("w{i}"), "demo", LEASE)
                .await
                .unwrap()
        }
    }))
    .await;
    let claims: Vec<_> = claims
        .into_iter()
        .map(|c| c.expect("each job claimed"))
        .collect();
    for (claim, id) in claims.iter().zip(&ids) {
        assert_eq!((claim.job.id, claim.attempt_number), (*id, 1));
        assert_eq!(claim.job.status, Status::Running);
        assert_eq!(claim.job.attempts.len(), 1);
    }

    let won = futures::future::join_all(claims.iter().map(|claim| {
        let ledger = ledger.clone();
        async move {
            let output = NewOutput {
                index: 0,
                object_key: format!("jobs/{}/0.png", claim.job.id),
                content_type: "image/png".into(),
                bytes: 10,
                expires_at: now() + chrono::Duration::days(7),
            };
            ledger.succeed(&claim.lease, &[output]).await.unwrap()
        }
    }))
    .await;
    assert!(won.iter().all(|w| *w));
    for id in &ids {
        let job = ledger.job_by_id(*id).await.unwrap().unwrap();
        assert_eq!(job.status, Status::Succeeded);
        assert_eq!(job.outputs.len(), 1);
        assert_eq!(job.outputs[0].object_key, format!("jobs/{id}/0.png"));
        assert_eq!(terminal_transitions(ledger.as_ref(), *id).await, 1);
    }
}

/// Many jobs renew their leases at once (the ledger may renew them in one statement): each
/// learns whether it alone still holds its job, and only held leases are extended.
pub async fn concurrent_renewals_each_learn_their_own_lease(ledger: Arc<dyn Ledger>) {
    let mut leases = vec![];
    for i in 0..20 {
        let id = new_job(ledger.as_ref(), "a").await;
        let claim = ledger
            .claim(id, &format!("w{i}"), "demo", LEASE)
            .await
            .unwrap()
            .unwrap();
        leases.push(claim.lease);
    }
    // One job canceled, one lease with a token that is not its job's.
    assert!(matches!(
        ledger
            .cancel_job(&tenant("a"), leases[3].job_id)
            .await
            .unwrap(),
        CancelOutcome::Canceled(_)
    ));
    leases[7].token = "not-the-token".into();
    // A job rescued and claimed again: its old attempt's lease and its new one, renewed at
    // once, must be told apart.
    let short = Duration::from_millis(50);
    let again = new_job(ledger.as_ref(), "a").await;
    let old = ledger
        .claim(again, "w-old", "demo", short)
        .await
        .unwrap()
        .unwrap()
        .lease;
    outlive(short).await;
    ledger.rescue_expired_leases(3, 10).await.unwrap();
    let new = ledger
        .claim(again, "w-new", "demo", LEASE)
        .await
        .unwrap()
        .unwrap()
        .lease;
    assert_ne!(old.token, new.token);
    leases.push(old);
    leases.push(new);
    let before = ledger.job_by_id(leases[7].job_id).await.unwrap().unwrap();
    let renewed = futures::future::join_all(leases.iter().map(|lease| {
        let ledger = ledger.clone();
        async move { ledger.renew_lease(lease, LEASE * 2).await.unwrap() }
    }))
    .await;
    for (i, renewed) in renewed.iter().enumerate() {
        // 3: canceled; 7: a wrong token; 20: the rescued attempt's; 21: its successor's.
        assert_eq!(*renewed, i != 3 && i != 7 && i != 20, "lease {i}");
    }
    let after = ledger.job_by_id(leases[7].job_id).await.unwrap().unwrap();
    assert_eq!(
        after.lease_expires_at, before.lease_expires_at,
        "a wrong token extends nothing"
    );
    let held = ledger.job_by_id(leases[0].job_id).await.unwrap().unwrap();
    assert!(
        held.lease_expires_at.unwrap() > now() + LEASE,
        "a held lease is extended"
    );
}

/// Several jobs read at once: each that exists comes once, whatever the list repeats.
pub async fn several_jobs_are_read_at_once(ledger: Arc<dyn Ledger>) {
    let a = new_job(ledger.as_ref(), "a").await;
    let b = new_job(ledger.as_ref(), "b").await;
    let _c = new_job(ledger.as_ref(), "a").await;
    let mut read: Vec<JobId> = ledger
        .jobs_by_ids(&[a, b, a, JobId::new()])
        .await
        .unwrap()
        .into_iter()
        .map(|job| job.id)
        .collect();
    read.sort_by_key(|id| id.to_string());
    let mut expected = vec![a, b];
    expected.sort_by_key(|id| id.to_string());
    assert_eq!(read, expected);
    assert!(ledger.jobs_by_ids(&[]).await.unwrap().is_empty());
}

/// A job's row holds its input as shown (inline data elided); the full input is kept once,
/// apart, for the worker: every read of the job sees the short form, `job_input` the whole.
pub async fn inline_data_is_kept_apart_from_the_job_row(ledger: Arc<dyn Ledger>) {
    let image = format!("data:image/png;base64,{}", "iVBORw0K".repeat(100_000));
    let mut wide = job_of("a");
    wide.input = serde_json::json!({"image": image, "scale": 2});
    let wide_id = wide.id;
    let inserted = ledger.insert_job(wide).await.unwrap();
    let shown = serde_json::json!({
        "image": format!("data:image/png;base64,<{} bytes elided>", image.len()),
        "scale": 2,
    });
    assert_eq!(
        inserted.input, shown,
        "the submit's answer is the short form too"
    );
    let read = ledger
        .get_job(&tenant("a"), wide_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.input, shown);
    let listed = ledger
        .list_jobs(
            &tenant("a"),
            &JobFilter {
                limit: 10,
                ..JobFilter::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(listed[0].input, shown);
    assert_eq!(
        ledger.job_input(wide_id).await.unwrap().unwrap()["image"],
        image.as_str(),
        "the worker gets every byte"
    );
    // A claim shows the short form as well; the worker asks for the rest.
    let claim = ledger
        .claim(wide_id, "w1", "demo", LEASE)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claim.job.input, shown);
    // A small input is kept whole in the row, and read back the same way.
    let narrow = new_job(ledger.as_ref(), "a").await;
    let job = ledger.job_by_id(narrow).await.unwrap().unwrap();
    assert_eq!(ledger.job_input(narrow).await.unwrap().unwrap(), job.input);
    assert!(ledger.job_input(JobId::new()).await.unwrap().is_none());
}

/// A job canceled while queued, whose last attempt was lost after the upstream took the work,
/// leaves that call to be stopped: written with the cancel, claimed by one worker at a time,
/// forgotten once finished. A job whose lost attempt never reached an upstream leaves nothing.
pub async fn a_queued_job_that_ends_leaves_its_lost_upstream_call_to_be_stopped(
    ledger: Arc<dyn Ledger>,
) {
    let short = Duration::from_millis(30);
    let mut ids = vec![];
    for handle in [Some("prediction-1"), None] {
        let id = new_job(ledger.as_ref(), "a").await;
        let claim = ledger
            .claim(id, "w1", "demo", short)
            .await
            .unwrap()
            .unwrap();
        let note = AttemptNote {
            route: Some("replicate:acme/painter"),
            upstream_id: handle,
            ..Default::default()
        };
        ledger.annotate_attempt(&claim.lease, note).await.unwrap();
        ids.push(id);
    }
    outlive(short).await;
    assert_eq!(ledger.rescue_expired_leases(3, 10).await.unwrap().len(), 2);
    assert!(
        ledger
            .claim_upstream_stops(10, LEASE)
            .await
            .unwrap()
            .is_empty(),
        "a rescued job will re-attach: nothing to stop yet"
    );
    for id in &ids {
        assert!(matches!(
            ledger.cancel_job(&tenant("a"), *id).await.unwrap(),
            CancelOutcome::Canceled(_)
        ));
    }
    let stops = ledger.claim_upstream_stops(10, short).await.unwrap();
    assert_eq!(
        stops,
        vec![UpstreamStop {
            job_id: ids[0],
            model: "demo/image".into(),
            route: "replicate:acme/painter".into(),
            upstream_id: "prediction-1".into(),
            tries: 1,
        }]
    );
    assert!(
        ledger
            .claim_upstream_stops(10, LEASE)
            .await
            .unwrap()
            .is_empty(),
        "a claimed stop is held"
    );
    // A claim that was not finished comes back once its hold has passed, counted again.
    outlive(short).await;
    let again = ledger.claim_upstream_stops(10, short).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].tries, 2);
    ledger.finish_upstream_stop(ids[0]).await.unwrap();
    outlive(short).await;
    assert!(ledger
        .claim_upstream_stops(10, short)
        .await
        .unwrap()
        .is_empty());
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

/// Runs every contract function, each on a fresh ledger from `fresh`.
#[macro_export]
macro_rules! ledger_contract_tests {
    ($fresh:expr) => {
        $crate::ledger_contract_tests!(@each $fresh;
            claims_are_exclusive,
            results_are_fenced_by_the_lease,
            cancel_fences_the_running_worker,
            terminal_states_never_change,
            the_rescue_limit_fails_a_job,
            retries_wait_until_due_and_releases_are_free,
            reads_are_scoped_by_tenant,
            due_jobs_are_rung_again_only_when_stale,
            expired_outputs_are_listed_until_marked,
            api_keys_are_looked_up_by_hash,
            worker_slots_are_unique_and_come_back,
            upstream_handles_and_callbacks_outlive_a_rescue,
            overdue_jobs_fail_with_the_limit_they_broke,
            webhook_events_are_written_with_their_transitions,
            pipelines_start_steps_as_their_inputs_exist_and_end_with_them,
            queued_jobs_know_their_place_and_running_ones_their_progress,
            a_place_deeper_than_the_cap_reads_as_the_cap,
            pipelines_are_listed_newest_first_within_their_tenant,
            idempotency_keys_replay_refuse_take_over_and_expire,
            tenant_windows_hold_a_burst_and_admit_it_as_places_free,
            a_job_back_in_the_window_does_not_widen_it,
            concurrent_writes_each_get_their_own_answer,
            concurrent_renewals_each_learn_their_own_lease,
            several_jobs_are_read_at_once,
            inline_data_is_kept_apart_from_the_job_row,
            a_queued_job_that_ends_leaves_its_lost_upstream_call_to_be_stopped,
            concurrent_submits_cannot_both_pass_the_spend_cap
        );
    };
    (@each $fresh:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread")]
            async fn $name() {
                let (ledger, _guard) = $fresh.await;
                $crate::ledger::contract::$name(ledger).await;
            }
        )*
    };
}
