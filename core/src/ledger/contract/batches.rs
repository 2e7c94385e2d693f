//! Batches: many claims in one claim's writes, many successes in one success's, many webhook
//! results in one write, and what each member of a batch is owed alone: a job claimed once, a
//! route of its own, a held job admitted for each place freed, and every success (every
//! result) fenced by its own lease (claim), so that a stale one in a batch is refused while its
//! neighbours commit.

use super::*;
use crate::ledger::RouteChooser;

/// How a test's claims or successes reach the ledger: as one batch call, or as single calls
/// made at once, which the ledger's group commit writes together (on a SQLite file, through
/// its embedded writer), so both paths answer to the same rules.
#[derive(Clone, Copy)]
enum Together {
    Batch,
    AtOnce,
}

async fn claim_together(
    ledger: &Arc<dyn Ledger>,
    ids: &[JobId],
    worker: &str,
    how: Together,
) -> Vec<Claim> {
    match how {
        Together::Batch => ledger
            .claim_batch(ids, worker, &route_by_model(), LEASE)
            .await
            .unwrap(),
        Together::AtOnce => {
            let claims = ids
                .iter()
                .map(|id| ledger.claim(*id, worker, "route-demo/image-1", LEASE));
            futures::future::join_all(claims)
                .await
                .into_iter()
                .filter_map(|claim| claim.unwrap())
                .collect()
        }
    }
}

async fn succeed_together(
    ledger: &Arc<dyn Ledger>,
    successes: &[(Lease, Vec<NewOutput>)],
    how: Together,
) -> Vec<bool> {
    match how {
        Together::Batch => ledger.succeed_batch(successes).await.unwrap(),
        Together::AtOnce => {
            let writes = successes
                .iter()
                .map(|(lease, outputs)| ledger.succeed(lease, outputs));
            futures::future::join_all(writes)
                .await
                .into_iter()
                .map(|won| won.unwrap())
                .collect()
        }
    }
}

fn route_by_model() -> RouteChooser {
    Arc::new(|job: &crate::job::Job| format!("route-{}-{}", job.model, job.attempts.len() + 1))
}

fn output(name: &str) -> NewOutput {
    NewOutput {
        index: 0,
        object_key: name.to_owned(),
        content_type: "image/png".into(),
        bytes: 3,
        expires_at: now() + chrono::Duration::days(7),
        media: crate::OutputMedia::default(),
    }
}

/// A new job of `owner`'s whose webhook asks for `event` alone.
async fn watched_job(ledger: &dyn Ledger, owner: &str, event: &str) -> JobId {
    ledger
        .insert_job(NewJob {
            webhook_url: Some("https://hooks.example/kiln".into()),
            webhook_events: Some(vec![event.into()]),
            ..job_of(owner)
        })
        .await
        .unwrap()
        .id
}

pub async fn a_batch_claims_each_claimable_job_once(ledger: Arc<dyn Ledger>) {
    claims_each_claimable_job_once(ledger, Together::Batch).await
}

pub async fn claims_made_at_once_take_each_claimable_job_once(ledger: Arc<dyn Ledger>) {
    claims_each_claimable_job_once(ledger, Together::AtOnce).await
}

async fn claims_each_claimable_job_once(ledger: Arc<dyn Ledger>, how: Together) {
    ledger.set_dispatch_window(3);
    let mut queued = Vec::new();
    for _ in 0..3 {
        queued.push(new_job(ledger.as_ref(), "a").await);
    }
    // Two of the tenant's jobs wait behind its window of three.
    let held_first = new_job(ledger.as_ref(), "a").await;
    let held_second = new_job(ledger.as_ref(), "a").await;
    let watched = watched_job(ledger.as_ref(), "b", "job.started").await;
    let running = new_job(ledger.as_ref(), "c").await;
    let taken = ledger
        .claim(running, "w0", "demo", LEASE)
        .await
        .unwrap()
        .unwrap();
    let unknown = JobId::new();

    let mut asked = queued.clone();
    asked.extend([watched, running, unknown]);
    // Within one batch the claims come before the admissions they make room for, so a held job
    // in the batch is not claimed. Claims made at once are written one after another, and a
    // held job asked for after an earlier claim admitted it would rightly be claimed.
    if let Together::Batch = how {
        asked.push(held_first);
    }
    asked.push(queued[0]);
    let claims = claim_together(&ledger, &asked, "w1", how).await;

    let mut claimed: Vec<JobId> = claims.iter().map(|c| c.job.id).collect();
    claimed.sort();
    let mut expected = queued.clone();
    expected.push(watched);
    expected.sort();
    assert_eq!(
        claimed, expected,
        "the queued and admitted jobs, once each; not the running, unknown or held ones"
    );
    let tokens: std::collections::HashSet<_> = claims.iter().map(|c| &c.lease.token).collect();
    assert_eq!(tokens.len(), claims.len(), "each claim its own lease");
    assert!(!tokens.contains(&taken.lease.token));
    for claim in &claims {
        assert_eq!(claim.attempt_number, 1);
        assert_eq!(claim.job.status, Status::Running);
        assert_eq!(claim.job.attempts.len(), 1);
        assert_eq!(claim.job.attempts[0].route, "route-demo/image-1");
        assert!(ledger.renew_lease(&claim.lease, LEASE).await.unwrap());
        let stored = ledger.job_by_id(claim.job.id).await.unwrap().unwrap();
        assert_eq!(stored.status, Status::Running);
        assert_eq!(stored.lease_owner.as_deref(), Some("w1"));
        assert_eq!(stored.attempts.len(), 1, "one attempt opened");
        assert_eq!(stored.attempts[0].route, "route-demo/image-1");
        assert_eq!(stored.attempts[0].id, claim.lease.attempt_id);
        let path: Vec<_> = ledger
            .transitions(claim.job.id)
            .await
            .unwrap()
            .iter()
            .map(|t| t.to)
            .collect();
        assert_eq!(path, vec![Status::Queued, Status::Running]);
    }
    // The running job kept its own lease.
    assert!(ledger.renew_lease(&taken.lease, LEASE).await.unwrap());
    // Three of tenant a's admitted jobs were claimed: its two held jobs took two of the places,
    // in their order, each handed to one claim to ring.
    let mut admitted: Vec<(JobId, Lane)> = claims.iter().filter_map(|c| c.admitted).collect();
    admitted.sort();
    assert_eq!(
        admitted,
        vec![(held_first, Lane::Normal), (held_second, Lane::Normal)]
    );
    for held in [held_first, held_second] {
        let job = ledger.job_by_id(held).await.unwrap().unwrap();
        assert!(!job.held, "admitted");
    }
    // The watched job's webhook hears that it started, once.
    let deliveries = ledger
        .deliveries(&tenant("b"), watched)
        .await
        .unwrap()
        .unwrap();
    let started: Vec<_> = deliveries
        .iter()
        .filter(|d| d.event_type == EventType::JobStarted)
        .collect();
    assert_eq!(started.len(), 1, "{deliveries:?}");
    assert!(crate::ledger::DeliveryId::parse(started[0].id.as_str()).is_some());
    // A batch of nothing claims nothing.
    assert!(claim_together(&ledger, &[], "w1", how).await.is_empty());
}

pub async fn a_batch_of_successes_refuses_only_its_stale_leases(ledger: Arc<dyn Ledger>) {
    successes_refuse_only_their_stale_leases(ledger, Together::Batch).await
}

pub async fn successes_made_at_once_refuse_only_their_stale_leases(ledger: Arc<dyn Ledger>) {
    successes_refuse_only_their_stale_leases(ledger, Together::AtOnce).await
}

async fn successes_refuse_only_their_stale_leases(ledger: Arc<dyn Ledger>, how: Together) {
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(new_job(ledger.as_ref(), "a").await);
    }
    let watched = watched_job(ledger.as_ref(), "a", "job.succeeded").await;
    ids.push(watched);
    let claims = ledger
        .claim_batch(&ids, "w1", &route_by_model(), LEASE)
        .await
        .unwrap();
    let lease_of = |id: JobId| {
        claims
            .iter()
            .find(|c| c.job.id == id)
            .expect("claimed")
            .lease
            .clone()
    };
    let (live, canceled, released, empty) = (ids[0], ids[1], ids[2], ids[3]);
    // One job was canceled under its worker; another was released and claimed again, so its
    // first lease is stale while its second holds.
    ledger.cancel_job(&tenant("a"), canceled).await.unwrap();
    assert!(ledger.release(&lease_of(released)).await.unwrap());
    let again = ledger
        .claim(released, "w2", "demo", LEASE)
        .await
        .unwrap()
        .unwrap();

    let won = succeed_together(
        &ledger,
        &[
            (lease_of(live), vec![output("live.png")]),
            (lease_of(canceled), vec![output("canceled.png")]),
            (lease_of(released), vec![output("stale.png")]),
            (again.lease.clone(), vec![output("again.png")]),
            (lease_of(empty), vec![]),
            (lease_of(watched), vec![output("watched.png")]),
        ],
        how,
    )
    .await;
    assert_eq!(won, vec![true, false, false, true, true, true]);

    let outputs = |id: JobId| {
        let ledger = ledger.clone();
        async move {
            let job = ledger.job_by_id(id).await.unwrap().unwrap();
            let keys: Vec<String> = job.outputs.iter().map(|o| o.object_key.clone()).collect();
            (job, keys)
        }
    };
    let (job, keys) = outputs(live).await;
    assert_eq!(job.status, Status::Succeeded);
    assert_eq!(keys, vec!["live.png"]);
    assert_eq!(job.attempts[0].outcome, Some(AttemptOutcome::Succeeded));
    assert!(job.lease_owner.is_none());
    let (job, keys) = outputs(canceled).await;
    assert_eq!(job.status, Status::Canceled);
    assert!(keys.is_empty(), "a refused success stores nothing");
    let (job, keys) = outputs(released).await;
    assert_eq!(job.status, Status::Succeeded);
    assert_eq!(keys, vec!["again.png"], "only the live lease's outputs");
    let outcomes: Vec<_> = job.attempts.iter().map(|a| a.outcome).collect();
    assert_eq!(
        outcomes,
        vec![
            Some(AttemptOutcome::Released),
            Some(AttemptOutcome::Succeeded)
        ]
    );
    let (job, keys) = outputs(empty).await;
    assert_eq!(job.status, Status::Succeeded);
    assert!(keys.is_empty());
    for id in [live, canceled, released, empty, watched] {
        assert_eq!(terminal_transitions(ledger.as_ref(), id).await, 1);
    }
    let deliveries = ledger
        .deliveries(&tenant("a"), watched)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        deliveries
            .iter()
            .filter(|d| d.event_type == EventType::JobSucceeded)
            .count(),
        1
    );
    // Committed once: a second batch of the same leases loses every one.
    let again = succeed_together(
        &ledger,
        &[(lease_of(live), vec![]), (lease_of(watched), vec![])],
        how,
    )
    .await;
    assert_eq!(again, vec![false, false]);
}

pub async fn a_burst_of_submits_fills_each_window_exactly(ledger: Arc<dyn Ledger>) {
    ledger.set_dispatch_window(3);
    // Twenty submits of two tenants at once: however they are grouped into statements, each
    // tenant's window admits exactly three and holds the rest.
    let submits = (0..20).map(|i| {
        let ledger = ledger.clone();
        async move {
            let owner = if i % 2 == 0 { "a" } else { "b" };
            ledger.insert_job(job_of(owner)).await.unwrap()
        }
    });
    let jobs = futures::future::join_all(submits).await;
    for owner in ["a", "b"] {
        let admitted = jobs
            .iter()
            .filter(|j| j.tenant == tenant(owner) && !j.held)
            .count();
        assert_eq!(admitted, 3, "tenant {owner}'s window");
    }
    for job in &jobs {
        let stored = ledger.job_by_id(job.id).await.unwrap().unwrap();
        assert_eq!(stored.held, job.held, "the answer is what was written");
        assert_eq!(stored.status, Status::Queued);
        let path: Vec<_> = ledger
            .transitions(job.id)
            .await
            .unwrap()
            .iter()
            .map(|t| t.to)
            .collect();
        assert_eq!(path, vec![Status::Queued]);
    }
    // A claim frees a place, and one held job takes it.
    let first = jobs
        .iter()
        .find(|j| j.tenant == tenant("a") && !j.held)
        .unwrap();
    let claim = ledger
        .claim(first.id, "w1", "demo", LEASE)
        .await
        .unwrap()
        .unwrap();
    assert!(claim.admitted.is_some());
}

pub async fn a_batch_of_delivery_results_refuses_only_its_stale_claims(ledger: Arc<dyn Ledger>) {
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(watched_job(ledger.as_ref(), "a", "job.succeeded").await);
    }
    let claims = ledger
        .claim_batch(&ids, "w1", &route_by_model(), LEASE)
        .await
        .unwrap();
    let successes: Vec<_> = claims.iter().map(|c| (c.lease.clone(), vec![])).collect();
    assert_eq!(
        ledger.succeed_batch(&successes).await.unwrap(),
        vec![true; 4]
    );
    let due = ledger
        .claim_deliveries(now(), Duration::ZERO, LEASE, 10)
        .await
        .unwrap();
    assert_eq!(due.len(), 4);
    let tried = |number: u32, status_code: u16| DeliveryTry {
        number,
        at: now(),
        status_code: Some(status_code),
        latency_ms: 2,
        error: (status_code != 200).then(|| format!("the receiver answered {status_code}")),
    };
    // Four results at once, however the ledger groups them: one under a claim that is not its
    // delivery's, one retried later, two delivered.
    let results = [
        (due[0].claim_token.clone(), 200, DeliveryNext::Delivered),
        ("not-the-claim".to_owned(), 200, DeliveryNext::Delivered),
        (
            due[2].claim_token.clone(),
            500,
            DeliveryNext::RetryAt(now() + chrono::Duration::minutes(5)),
        ),
        (due[3].claim_token.clone(), 200, DeliveryNext::Delivered),
    ];
    let written =
        futures::future::join_all(due.iter().zip(&results).map(|(d, (token, code, next))| {
            let ledger = ledger.clone();
            async move {
                ledger
                    .finish_delivery_try(&d.id, token, &tried(1, *code), *next)
                    .await
                    .unwrap()
            }
        }))
        .await;
    assert_eq!(written, vec![true, false, true, true]);
    let expected = [
        (DeliveryStatus::Delivered, 1),
        (DeliveryStatus::Pending, 0),
        (DeliveryStatus::Pending, 1),
        (DeliveryStatus::Delivered, 1),
    ];
    for (d, (status, tries)) in due.iter().zip(expected) {
        let log = ledger
            .deliveries(&tenant("a"), d.job_id)
            .await
            .unwrap()
            .unwrap();
        let stored = log.iter().find(|l| l.id == d.id).unwrap();
        assert_eq!(
            (stored.status, stored.tries.len()),
            (status, tries),
            "{}",
            d.id
        );
        if tries == 1 {
            assert_eq!(stored.tries[0].number, 1);
        }
    }
    // The refused one is still held by its claim, and its real holder still records.
    assert!(ledger
        .finish_delivery_try(
            &due[1].id,
            &due[1].claim_token,
            &tried(1, 200),
            DeliveryNext::Delivered
        )
        .await
        .unwrap());
}
