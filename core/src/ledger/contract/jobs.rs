//! Jobs and claims: exclusive claims, tenant scoping, dispatch bookkeeping (rings, windows,
//! places), reads, and concurrent writes sharing a transaction.

use super::*;

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
    let submit = |owner: &'static str, key_id: Option<KeyId>, max_active: Option<u32>| {
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
                media: crate::OutputMedia::default(),
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

/// A job keeps the API it was created through on every read: the insert's answer, a read by
/// tenant, the claim's answer and a list; Kiln's own is the default.
pub async fn a_job_keeps_the_surface_it_was_created_through(ledger: Arc<dyn Ledger>) {
    let prediction = ledger
        .insert_job(NewJob {
            surface: crate::job::Surface::Replicate,
            ..job_of("a")
        })
        .await
        .unwrap();
    assert_eq!(prediction.surface, crate::job::Surface::Replicate);
    let plain = new_job(ledger.as_ref(), "a").await;
    let read = ledger.get_job(&tenant("a"), prediction.id).await.unwrap();
    assert_eq!(read.unwrap().surface, crate::job::Surface::Replicate);
    let claimed = ledger
        .claim(prediction.id, "w", "demo", LEASE)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.job.surface, crate::job::Surface::Replicate);
    let plain = ledger.get_job(&tenant("a"), plain).await.unwrap().unwrap();
    assert_eq!(plain.surface, crate::job::Surface::Kiln);
}

pub async fn a_tenants_queue_counts_only_its_own_active_jobs_per_lane(ledger: Arc<dyn Ledger>) {
    let empty = ledger.tenant_queue(&tenant("a")).await.unwrap();
    assert_eq!(
        empty.len(),
        Lane::ALL.len(),
        "every lane is named, empty or not"
    );
    assert!(empty.iter().all(|l| l.queued == 0 && l.running == 0));
    let high = || NewJob {
        priority: Lane::High,
        ..job_of("a")
    };
    ledger.insert_job(high()).await.unwrap();
    let running = ledger.insert_job(high()).await.unwrap().id;
    let done = new_job(ledger.as_ref(), "a").await;
    new_job(ledger.as_ref(), "a").await;
    new_job(ledger.as_ref(), "b").await;
    ledger
        .claim(running, "w", "demo", LEASE)
        .await
        .unwrap()
        .unwrap();
    let claim = ledger
        .claim(done, "w", "demo", LEASE)
        .await
        .unwrap()
        .unwrap();
    assert!(ledger.succeed(&claim.lease, &[]).await.unwrap());
    let lanes = ledger.tenant_queue(&tenant("a")).await.unwrap();
    let of = |lane: Lane| lanes.iter().find(|l| l.lane == lane).unwrap();
    assert_eq!((of(Lane::High).queued, of(Lane::High).running), (1, 1));
    assert_eq!(
        (of(Lane::Normal).queued, of(Lane::Normal).running),
        (1, 0),
        "the finished job and the other tenant's are not counted"
    );
    assert_eq!((of(Lane::Low).queued, of(Lane::Low).running), (0, 0));
}
