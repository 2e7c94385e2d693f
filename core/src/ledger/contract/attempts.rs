//! Attempts under a lease: fencing, cancel, terminal states, retries and releases, upstream
//! handles and callbacks, renewals, and outputs until they expire.

use super::*;

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
        media: crate::OutputMedia {
            width: Some(64),
            height: Some(48),
            duration_seconds: Some(2.0),
            fps: Some(12.0),
            preview: Some(crate::Preview::Stored),
        },
    };
    let media = output.media.clone();
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
    assert_eq!(job.outputs[0].media, media, "the output's metadata is kept");
    assert_eq!(terminal_transitions(ledger.as_ref(), id).await, 1);
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

/// A job's history holds every transition, in order, though its creation, its claims and its
/// success are implied by its rows rather than written (`Transition::is_implied`): here through
/// a retry, a release and a success, each claim at its attempt's start.
pub async fn a_jobs_history_is_whole_though_its_plain_steps_are_implied(ledger: Arc<dyn Ledger>) {
    let id = new_job(ledger.as_ref(), "a").await;
    let first = ledger
        .claim(id, "w1", "demo", LEASE)
        .await
        .unwrap()
        .unwrap();
    // Due at once, so that it is claimed again.
    assert!(ledger
        .retry_later(
            &first.lease,
            &ErrorInfo::new("upstream_429", "slow down"),
            now()
        )
        .await
        .unwrap());
    let second = ledger
        .claim(id, "w1", "demo", LEASE)
        .await
        .unwrap()
        .unwrap();
    assert!(ledger.release(&second.lease).await.unwrap());
    let third = ledger
        .claim(id, "w2", "demo", LEASE)
        .await
        .unwrap()
        .unwrap();
    assert!(ledger.succeed(&third.lease, &[]).await.unwrap());

    let job = ledger.job_by_id(id).await.unwrap().unwrap();
    let history = ledger.transitions(id).await.unwrap();
    let steps: Vec<_> = history
        .iter()
        .map(|t| (t.from, t.to, t.reason.as_deref()))
        .collect();
    use Status::{Queued, Running, Succeeded};
    assert_eq!(
        steps,
        vec![
            (None, Queued, None),
            (Some(Queued), Running, None),
            (Some(Running), Queued, Some("upstream_429")),
            (Some(Queued), Running, None),
            (Some(Running), Queued, Some("released")),
            (Some(Queued), Running, None),
            (Some(Running), Succeeded, None),
        ]
    );
    assert_eq!(history[0].at, job.created_at);
    let claimed_at: Vec<_> = [1, 3, 5].iter().map(|&i| history[i].at).collect();
    let started_at: Vec<_> = job.attempts.iter().map(|a| a.started_at).collect();
    assert_eq!(claimed_at, started_at, "each claim at its attempt's start");
    assert_eq!(Some(history[6].at), job.completed_at);
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
            media: crate::OutputMedia::default(),
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
