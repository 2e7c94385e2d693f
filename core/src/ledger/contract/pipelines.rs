//! Pipelines: steps start as their inputs exist, the pipeline ends with them, lists are per
//! tenant.

use super::*;

pub async fn pipelines_start_steps_as_their_inputs_exist_and_end_with_them(
    ledger: Arc<dyn Ledger>,
) {
    use crate::pipeline::StepSpec;
    let chain = |id: PipelineId| NewPipeline {
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
    let (pipeline, started) = ledger
        .insert_pipeline(chain(PipelineId::new()))
        .await
        .unwrap();
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
        media: crate::OutputMedia::default(),
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
    let (other, started) = ledger
        .insert_pipeline(chain(PipelineId::new()))
        .await
        .unwrap();
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

pub async fn pipelines_are_listed_newest_first_within_their_tenant(ledger: Arc<dyn Ledger>) {
    use crate::pipeline::StepSpec;
    let one_step = |owner: &str| NewPipeline {
        priority: Default::default(),
        max_active: None,
        idempotency: None,
        id: PipelineId::new(),
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
    let page = |before: Option<PipelineId>, statuses: Vec<Status>| JobFilter {
        statuses,
        before: before.map(|id| id.0),
        limit: 2,
        ..JobFilter::default()
    };
    let listed: Vec<PipelineId> = ledger
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
