//! Webhook deliveries: written with the transitions that cause them, claimed, tried and sent
//! again.

use super::*;

pub async fn webhook_events_are_written_with_their_transitions(ledger: Arc<dyn Ledger>) {
    let insert = |events: Option<Vec<String>>| {
        let ledger = ledger.clone();
        async move {
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
    assert_eq!(
        types(all).await,
        [EventType::JobStarted, EventType::JobSucceeded]
    );
    assert_eq!(types(only_end).await, [EventType::JobSucceeded]);
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
    assert_eq!(d.status, DeliveryStatus::Delivered);
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
