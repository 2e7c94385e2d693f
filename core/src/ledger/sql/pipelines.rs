//! Pipelines: written with their steps in one transaction and moved on as steps end. Which
//! state a pipeline goes to is decided by `crate::pipeline` (pure, unit-tested); the SQL here
//! reads the steps and carries the decision out.

use super::*;
use crate::pipeline::{next_move, NextMove, StepState};

/// Ends a running pipeline with `status` and cancels its steps that have not ended.
pub(super) async fn end_pipeline(
    tx: &mut Tx,
    pid: &str,
    status: Status,
    code: &str,
    message: &str,
    at: i64,
) -> Result<()> {
    let (code, message) = match status {
        Status::Succeeded => (None, None),
        _ => (Some(code), Some(message)),
    };
    sqlx::query(&tx.d.sql(
        "UPDATE pipelines SET status = ?, error_code = ?, error_message = ?, completed_at = ? \
         WHERE id = ? AND status = 'running'",
    ))
    .bind(status.as_str())
    .bind(code)
    .bind(message)
    .bind(at)
    .bind(pid)
    .execute(&mut *tx.tx)
    .await?;
    // The pipeline's webhook hears `pipeline.{status}` once, in this transaction. A delivery
    // belongs to a job, so it hangs off the pipeline's most recently started step.
    if let Some(event) = EventType::of_pipeline_end(status) {
        let statement = delivery_insert(
            event,
            &DeliverySource {
                id: "?",
                job_id: "s.job_id",
                url: "p.webhook_url",
                events: "p.webhook_events",
                // A pipeline's end is no start.
                first_start: "FALSE",
                from_where: "FROM pipelines p JOIN pipeline_steps s ON s.pipeline_id = p.id \
                             WHERE p.id = ? AND s.job_id IS NOT NULL",
                tail: " ORDER BY s.job_id DESC LIMIT 1",
                handed_where: None,
            },
        );
        sqlx::query(&tx.d.sql(&statement))
            .bind(DeliveryId::new().0)
            .bind(at)
            .bind(at)
            .bind(pid)
            .execute(&mut *tx.tx)
            .await?;
    }
    let open: Vec<(String, String)> = sqlx::query(&tx.d.sql(&format!(
        "SELECT j.id, j.status FROM pipeline_steps s JOIN jobs j ON j.id = s.job_id \
         WHERE s.pipeline_id = ? AND j.status IN ('queued', 'running') ORDER BY j.id{}",
        tx.d.lock_rows()
    )))
    .bind(pid)
    .fetch_all(&mut *tx.tx)
    .await?
    .iter()
    .map(|r| Ok((r.try_get("id")?, r.try_get("status")?)))
    .collect::<Result<_>>()?;
    for (job, from) in open {
        cancel_in(tx, &job, &from, at).await?;
    }
    Ok(())
}

/// The pipeline's next move, inside the caller's transaction (see `Ledger::advance_pipeline`).
/// `max_active`: the key's active-job limit, checked for the steps started now (a new
/// pipeline's first steps); steps that start later belong to a pipeline already admitted.
pub(super) async fn advance_in(
    tx: &mut Tx,
    pid: &str,
    at: i64,
    max_active: Option<u32>,
) -> Result<Vec<(JobId, crate::dispatch::Lane)>> {
    let Some(row) = sqlx::query(&tx.d.sql(&format!(
        "SELECT tenant, key_id, status, priority FROM pipelines WHERE id = ?{}",
        tx.d.lock_rows()
    )))
    .bind(pid)
    .fetch_optional(&mut *tx.tx)
    .await?
    else {
        return Ok(vec![]);
    };
    let status: String = row.try_get("status")?;
    if status != "running" {
        return Ok(vec![]);
    }
    let tenant = TenantId(row.try_get("tenant")?);
    let key_id: Option<KeyId> = row.try_get::<Option<String>, _>("key_id")?.map(KeyId);
    let priority: crate::dispatch::Lane = row
        .try_get::<String, _>("priority")?
        .parse()
        .map_err(LedgerError::Corrupt)?;
    struct StepRow {
        name: String,
        model: String,
        input: String,
        depends_on: Vec<String>,
        job_id: Option<String>,
        job_status: Option<String>,
        job_error: Option<String>,
    }
    let steps: Vec<StepRow> = sqlx::query(&tx.d.sql(
        "SELECT s.name, s.model, s.input, s.depends_on, s.job_id, j.status AS job_status, j.error_message AS job_error \
         FROM pipeline_steps s LEFT JOIN jobs j ON j.id = s.job_id \
         WHERE s.pipeline_id = ? ORDER BY s.position",
    ))
    .bind(pid)
    .fetch_all(&mut *tx.tx)
    .await?
    .iter()
    .map(|r| {
        let depends_on: String = r.try_get("depends_on")?;
        Ok(StepRow {
            name: r.try_get("name")?,
            model: r.try_get("model")?,
            input: r.try_get("input")?,
            depends_on: depends_on
                .split(',')
                .filter(|d| !d.is_empty())
                .map(str::to_owned)
                .collect(),
            job_id: r.try_get("job_id")?,
            job_status: r.try_get("job_status")?,
            job_error: r.try_get("job_error")?,
        })
    })
    .collect::<Result<_>>()?;
    let statuses = steps
        .iter()
        .map(|s| {
            s.job_status
                .as_deref()
                .map(str::parse::<Status>)
                .transpose()
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(LedgerError::Corrupt)?;
    let states: Vec<StepState> = steps
        .iter()
        .zip(&statuses)
        .map(|(s, status)| StepState {
            name: &s.name,
            depends_on: &s.depends_on,
            status: *status,
            error: s.job_error.as_deref(),
        })
        .collect();
    let ready = match next_move(&states) {
        NextMove::End {
            status,
            code,
            message,
        } => {
            end_pipeline(tx, pid, status, code, &message, at).await?;
            return Ok(vec![]);
        }
        NextMove::Succeed => {
            end_pipeline(tx, pid, Status::Succeeded, "", "", at).await?;
            return Ok(vec![]);
        }
        NextMove::Start(ready) => ready,
    };
    // Every step a ready one depends on has succeeded, so has a job whose outputs it reads.
    let succeeded: BTreeMap<&str, &str> = steps
        .iter()
        .zip(&statuses)
        .filter(|(_, status)| **status == Some(Status::Succeeded))
        .filter_map(|(s, _)| Some((s.name.as_str(), s.job_id.as_deref()?)))
        .collect();
    let mut started = vec![];
    for step in ready.into_iter().map(|i| &steps[i]) {
        let template: serde_json::Value = serde_json::from_str(&step.input)
            .map_err(|e| LedgerError::Corrupt(format!("pipeline {pid} step input: {e}")))?;
        let input = crate::pipeline::substitute(&template, &|dep, index| {
            format!("kiln://jobs/{}/outputs/{index}", succeeded[dep])
        });
        let job = NewJob {
            idempotency: None,
            id: JobId::new(),
            tenant: tenant.clone(),
            model: step.model.clone(),
            input,
            deadline_at: None,
            start_by: None,
            key_id: key_id.clone(),
            webhook_url: None,
            webhook_events: None,
            priority,
            surface: crate::job::Surface::Kiln,
            max_active,
            spend: None,
        };
        let admitted = insert_job_in(tx, &job, Some(pid), at).await?;
        sqlx::query(&tx.d.sql(
            "UPDATE pipeline_steps SET job_id = ? WHERE pipeline_id = ? AND name = ? AND job_id IS NULL",
        ))
        .bind(job.id.to_string())
        .bind(pid)
        .bind(&step.name)
        .execute(&mut *tx.tx)
        .await?;
        if admitted {
            started.push((job.id, priority));
        }
    }
    Ok(started)
}

#[async_trait]
impl PipelineLedger for SqlLedger {
    async fn insert_pipeline(
        &self,
        pipeline: NewPipeline,
    ) -> Result<(Pipeline, Vec<(JobId, crate::dispatch::Lane)>)> {
        let deps = crate::pipeline::plan(&pipeline.steps).map_err(|e| {
            LedgerError::Corrupt(format!(
                "an unchecked pipeline reached the ledger: {}",
                e.message
            ))
        })?;
        let at = to_millis(now());
        let pid = pipeline.id.to_string();
        let mut tx = self.write_tx().await?;
        sqlx::query(&self.sql(
            "INSERT INTO pipelines (id, tenant, key_id, status, webhook_url, webhook_events, created_at, priority) \
             VALUES (?, ?, ?, 'running', ?, ?, ?, ?)",
        ))
        .bind(&pid)
        .bind(&pipeline.tenant.0)
        .bind(pipeline.key_id.as_ref().map(KeyId::as_str))
        .bind(pipeline.webhook_url.as_deref())
        .bind(pipeline.webhook_events.as_ref().map(|e| e.join(",")))
        .bind(at)
        .bind(pipeline.priority.as_str())
        .execute(&mut *tx.tx)
        .await?;
        if let Some(key) = &pipeline.idempotency {
            link_idempotent(&mut tx, key, &pid).await?;
        }
        for (position, (step, depends_on)) in pipeline.steps.iter().zip(&deps).enumerate() {
            sqlx::query(&self.sql(
                "INSERT INTO pipeline_steps (pipeline_id, name, position, model, input, depends_on) VALUES (?, ?, ?, ?, ?, ?)",
            ))
            .bind(&pid)
            .bind(&step.name)
            .bind(position as i64)
            .bind(&step.model)
            .bind(step.input.to_string())
            .bind(depends_on.iter().cloned().collect::<Vec<_>>().join(","))
            .execute(&mut *tx.tx)
            .await?;
        }
        let started = advance_in(&mut tx, &pid, at, pipeline.max_active).await?;
        tx.commit().await?;
        let created = self
            .get_pipeline(&pipeline.tenant, pipeline.id)
            .await?
            .ok_or_else(|| LedgerError::Corrupt(format!("pipeline {pid} vanished after insert")))?;
        Ok((created, started))
    }

    async fn advance_pipeline(
        &self,
        id: PipelineId,
    ) -> Result<Vec<(JobId, crate::dispatch::Lane)>> {
        let mut tx = self.write_tx().await?;
        let started = advance_in(&mut tx, &id.to_string(), to_millis(now()), None).await?;
        tx.commit().await?;
        Ok(started)
    }

    async fn get_pipeline(&self, tenant: &TenantId, id: PipelineId) -> Result<Option<Pipeline>> {
        let pid = id.to_string();
        let Some(row) = sqlx::query(&self.sql(
            "SELECT id, tenant, status, error_code, error_message, created_at, completed_at, webhook_url, webhook_events \
             FROM pipelines WHERE id = ? AND tenant = ?",
        ))
        .bind(&pid)
        .bind(&tenant.0)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let steps = sqlx::query(&self.sql(
            "SELECT s.name, s.model, s.depends_on, s.job_id, j.status AS job_status \
             FROM pipeline_steps s LEFT JOIN jobs j ON j.id = s.job_id \
             WHERE s.pipeline_id = ? ORDER BY s.position",
        ))
        .bind(&pid)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            let depends_on: String = r.try_get("depends_on")?;
            Ok(PipelineStep {
                name: r.try_get("name")?,
                model: r.try_get("model")?,
                depends_on: depends_on
                    .split(',')
                    .filter(|d| !d.is_empty())
                    .map(str::to_owned)
                    .collect(),
                job_id: r
                    .try_get::<Option<String>, _>("job_id")?
                    .map(|j| {
                        j.parse()
                            .map_err(|_| LedgerError::Corrupt(format!("job id '{j}'")))
                    })
                    .transpose()?,
                job_status: r
                    .try_get::<Option<String>, _>("job_status")?
                    .map(|s| s.parse().map_err(LedgerError::Corrupt))
                    .transpose()?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
        let code: Option<String> = row.try_get("error_code")?;
        let message: Option<String> = row.try_get("error_message")?;
        let status: String = row.try_get("status")?;
        Ok(Some(Pipeline {
            id,
            tenant: TenantId(row.try_get("tenant")?),
            status: status.parse().map_err(LedgerError::Corrupt)?,
            error: code.map(|c| ErrorInfo::new(c, message.unwrap_or_default())),
            created_at: from_millis(row.try_get("created_at")?),
            completed_at: row
                .try_get::<Option<i64>, _>("completed_at")?
                .map(from_millis),
            webhook_url: row.try_get("webhook_url")?,
            webhook_events: row
                .try_get::<Option<String>, _>("webhook_events")?
                .map(|l| l.split(',').map(str::to_owned).collect()),
            steps,
        }))
    }

    async fn list_pipelines(&self, tenant: &TenantId, filter: &JobFilter) -> Result<Vec<Pipeline>> {
        let filter = JobFilter {
            model: None,
            ..filter.clone()
        };
        let sql = self
            .sql(&page_sql("SELECT id FROM pipelines", &filter))
            .into_owned();
        let ids: Vec<String> = bind_page(sqlx::query(&sql), tenant, &filter)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.try_get("id"))
            .collect::<std::result::Result<_, _>>()?;
        let mut pipelines = Vec::with_capacity(ids.len());
        for id in ids {
            let id = id
                .parse()
                .map_err(|_| LedgerError::Corrupt(format!("pipeline id '{id}'")))?;
            // A pipeline is never deleted, so one listed a moment ago is still there.
            if let Some(p) = self.get_pipeline(tenant, id).await? {
                pipelines.push(p);
            }
        }
        Ok(pipelines)
    }

    async fn cancel_pipeline(&self, tenant: &TenantId, id: PipelineId) -> Result<Option<Pipeline>> {
        let pid = id.to_string();
        let at = to_millis(now());
        let mut tx = self.write_tx().await?;
        let status: Option<String> = sqlx::query_scalar(&self.sql(&format!(
            "SELECT status FROM pipelines WHERE id = ? AND tenant = ?{}",
            self.dialect.lock_rows()
        )))
        .bind(&pid)
        .bind(&tenant.0)
        .fetch_optional(&mut *tx.tx)
        .await?;
        let Some(status) = status else {
            return Ok(None);
        };
        if status == "running" {
            end_pipeline(
                &mut tx,
                &pid,
                Status::Canceled,
                "canceled",
                "the pipeline was canceled",
                at,
            )
            .await?;
        }
        tx.commit().await?;
        self.get_pipeline(tenant, id).await
    }

    async fn active_pipelines(&self, limit: u32) -> Result<Vec<PipelineId>> {
        let ids: Vec<String> = sqlx::query_scalar(&self.sql(&format!(
            "SELECT id FROM pipelines WHERE status = 'running' ORDER BY id LIMIT {limit}"
        )))
        .fetch_all(&self.pool)
        .await?;
        ids.iter()
            .map(|i| {
                i.parse()
                    .map_err(|_| LedgerError::Corrupt(format!("pipeline id '{i}'")))
            })
            .collect()
    }
}
