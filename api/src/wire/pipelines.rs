//! A pipeline on the wire: what `POST /v1/pipelines` takes (`PipelineSubmission`, filled by the
//! handler's parser) and what every pipeline answer, event and `pipeline.*` webhook shows
//! (`PipelineView`: its steps with their jobs, the outputs of its final steps, its cost).

use super::{cost_in_units, Links, OutputView};
use crate::problem::Problem;
use chrono::{DateTime, Utc};
use kiln_core::dispatch::Lane;
use kiln_core::events::EventType;
use kiln_core::ledger::Pipeline;
use kiln_core::pipeline::StepSpec;
use kiln_core::{ErrorInfo, JobId, PipelineId, Status};
use serde::Serialize;
use utoipa::ToSchema;

/// `POST /v1/pipelines`.
#[derive(Debug, ToSchema)]
#[schema(example = json!({"steps": [
    {"name": "image", "model": "demo/image", "input": {"prompt": "a kiln", "width": 64, "height": 64}},
    {"name": "upscale", "model": "demo/upscale", "input": {"image": "$steps.image.outputs[0]", "scale": 2}},
    {"name": "video", "model": "demo/video", "input": {"image": "$steps.upscale.outputs[0]", "seconds": 1, "fps": 4}}
]}))]
pub struct PipelineSubmission {
    pub steps: Vec<StepSpec>,
    /// The dispatch lane of every step; `normal` when absent.
    #[schema(value_type = Option<Lane>)]
    pub priority: Lane,
    /// Where the pipeline's end is posted (Standard Webhooks).
    #[schema(value_type = Option<String>)]
    pub webhook: Option<url::Url>,
    /// `pipeline.succeeded`, `pipeline.failed`, `pipeline.canceled`; all when absent.
    pub webhook_events: Option<Vec<EventType>>,
}

/// A step of a pipeline, with its job once it has one.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Step)]
pub struct StepView {
    pub name: String,
    pub model: String,
    pub depends_on: Vec<String>,
    #[schema(value_type = Option<String>)]
    pub job_id: Option<JobId>,
    /// The step's job status; `pending` before it starts, `canceled` if its pipeline ended first.
    pub status: &'static str,
}

/// An output of one of a pipeline's final steps.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = PipelineOutput)]
pub struct PipelineOutputView {
    #[serde(flatten)]
    pub output: OutputView,
    /// The step that made it.
    pub step: String,
}

/// A pipeline as `GET /v1/pipelines/{id}` shows it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Pipeline)]
pub struct PipelineView {
    /// Always `pipeline`.
    #[schema(value_type = String)]
    pub object: &'static str,
    #[schema(value_type = String)]
    pub id: PipelineId,
    pub status: Status,
    pub steps: Vec<StepView>,
    /// The outputs of its final steps (those no other step depends on).
    pub outputs: Vec<PipelineOutputView>,
    /// The sum of its steps' costs.
    pub cost: f64,
    pub error: Option<ErrorInfo>,
    pub webhook: Option<String>,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub urls: Links,
}

impl PipelineView {
    /// The pipeline, reading each started step's job for its cost and, on a final step, its
    /// outputs (with fresh signed URLs).
    pub async fn of(
        ledger: &dyn kiln_core::Ledger,
        store: &dyn kiln_storage::ObjectStore,
        pipeline: &Pipeline,
    ) -> Result<Self, Problem> {
        let mut steps = Vec::with_capacity(pipeline.steps.len());
        let mut outputs = vec![];
        let mut cost_micros = 0i64;
        for step in &pipeline.steps {
            let job = match step.job_id {
                Some(id) => ledger.get_job(&pipeline.tenant, id).await?,
                None => None,
            };
            let is_final = !pipeline
                .steps
                .iter()
                .any(|s| s.depends_on.contains(&step.name));
            if let Some(job) = &job {
                cost_micros += job
                    .attempts
                    .iter()
                    .filter_map(|a| a.cost_micros)
                    .sum::<i64>();
                if is_final {
                    for output in &job.outputs {
                        outputs.push(PipelineOutputView {
                            output: OutputView::of(store, output).await?,
                            step: step.name.clone(),
                        });
                    }
                }
            }
            steps.push(StepView {
                name: step.name.clone(),
                model: step.model.clone(),
                depends_on: step.depends_on.clone(),
                job_id: step.job_id,
                status: step_status(step.job_status, pipeline.status),
            });
        }
        Ok(PipelineView {
            object: "pipeline",
            id: pipeline.id,
            status: pipeline.status,
            steps,
            outputs,
            cost: cost_in_units(cost_micros),
            error: pipeline.error.clone(),
            webhook: pipeline.webhook_url.clone(),
            created_at: pipeline.created_at,
            completed_at: pipeline.completed_at,
            urls: Links::under(format!("/v1/pipelines/{}", pipeline.id)),
        })
    }
}

/// A step's status: its job's, once it has one. A step that never started is `pending` while
/// its pipeline runs; once the pipeline has ended (failed or canceled) it never will start, and
/// reads `canceled`, so no step of an ended pipeline waits for ever.
fn step_status(job: Option<Status>, pipeline: Status) -> &'static str {
    match job {
        Some(status) => status.as_str(),
        None if pipeline.is_terminal() => Status::Canceled.as_str(),
        None => "pending",
    }
}

#[cfg(test)]
mod tests {
    use super::step_status;
    use kiln_core::Status;

    #[test]
    fn an_unstarted_step_of_an_ended_pipeline_is_canceled() {
        assert_eq!(step_status(None, Status::Running), "pending");
        assert_eq!(step_status(None, Status::Canceled), "canceled");
        assert_eq!(step_status(None, Status::Failed), "canceled");
        assert_eq!(step_status(Some(Status::Failed), Status::Failed), "failed");
    }
}
