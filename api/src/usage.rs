//! `GET /v1/usage`: what the caller's tenant ran and what it cost, over a window of job creation
//! times, grouped by model, provider or day. Cost counts every attempt, failed ones included, so
//! `cost_per_success` is the true price of one successful task.
//!
//! Grouped by model or by day, a row counts jobs (and their statuses), their attempts, the
//! fallbacks among them (an attempt on another route than the attempt before it) and their
//! cost. Grouped by provider, a row counts what happened there: the jobs that tried it, its
//! succeeded and failed attempts, the fallbacks that landed on it, its cost. The sums are made
//! here from one ledger read of the window's jobs and attempts.

use crate::auth::Tenant;
use crate::problem::Problem;
use crate::wire::{UsageGroupView, UsageView};
use crate::ApiState;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Duration, Utc};
use kiln_core::ledger::UsageRow;
use kiln_core::{AttemptOutcome, JobId, Status};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Jobs read from the ledger at a time: a window of any width is summed in bounded memory.
const PAGE_JOBS: u32 = 1_000;

#[derive(Default)]
struct Sums {
    /// Distinct jobs: rows come ordered by job, so a job is new when it differs from the last
    /// one counted here.
    jobs: u64,
    last_job: Option<JobId>,
    succeeded: u64,
    failed: u64,
    attempts: u64,
    fallbacks: u64,
    cost_micros: i64,
}

impl Sums {
    /// Counts `job` once; whether this was its first row here.
    fn count_job(&mut self, job: JobId) -> bool {
        if self.last_job == Some(job) {
            return false;
        }
        self.last_job = Some(job);
        self.jobs += 1;
        true
    }

    fn view(&self, key: &str) -> UsageGroupView {
        let cost = crate::wire::cost_in_units(self.cost_micros);
        UsageGroupView {
            key: key.to_owned(),
            jobs: self.jobs,
            succeeded: self.succeeded,
            failed: self.failed,
            attempts: self.attempts,
            fallbacks: self.fallbacks,
            cost,
            cost_per_success: (self.succeeded > 0).then(|| cost / self.succeeded as f64),
        }
    }
}

/// How usage is grouped.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    Model,
    Provider,
    Day,
}

fn bad(field: &str, detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, "invalid_parameter", detail).with_field(field)
}

#[utoipa::path(
    get,
    path = "/v1/usage",
    operation_id = "getUsage",
    tag = "usage",
    params(
        ("from" = Option<chrono::DateTime<chrono::Utc>>, Query, description = "RFC 3339 (default: 30 days before `to`)"),
        ("to" = Option<chrono::DateTime<chrono::Utc>>, Query, description = "RFC 3339 (default: now)"),
        ("group_by" = inline(Option<GroupBy>), Query, description = "model (default), provider or day"),
    ),
    responses(
        (status = 200, description = "Jobs, outcomes, attempts and cost per group", body = UsageView),
        (status = 400, description = "A bad parameter (named in `field`)", body = crate::problem::Problem, content_type = "application/problem+json"),
        crate::responses::KeyRefusals,
    ),
)]
pub async fn usage(
    State(state): State<Arc<ApiState>>,
    Tenant(tenant): Tenant,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<UsageView>, Problem> {
    let time = |field: &str| -> Result<Option<DateTime<Utc>>, Problem> {
        params
            .get(field)
            .map(|raw| {
                DateTime::parse_from_rfc3339(raw)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| bad(field, format!("{field} must be an RFC 3339 time")))
            })
            .transpose()
    };
    if let Some(other) = params
        .keys()
        .find(|k| !matches!(k.as_str(), "from" | "to" | "group_by"))
    {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "unknown_parameter",
            format!("'{other}' is not a parameter of usage (from, to, group_by)"),
        )
        .with_field(other.as_str()));
    }
    let to = time("to")?.unwrap_or_else(Utc::now);
    let from = time("from")?.unwrap_or(to - Duration::days(30));
    // A window that ends before it starts holds no jobs: its sums are zero (the ledger finds
    // nothing in it), which is an answer, not an error.
    let group_by = match params.get("group_by").map(String::as_str) {
        None | Some("model") => GroupBy::Model,
        Some("provider") => GroupBy::Provider,
        Some("day") => GroupBy::Day,
        Some(_) => return Err(bad("group_by", "group_by must be model, provider or day")),
    };
    let mut tally = Tally::new(group_by);
    let mut after = None;
    loop {
        let rows = state
            .ledger
            .usage_rows(&tenant, from, to, after, PAGE_JOBS)
            .await?;
        for row in &rows {
            tally.add(row);
        }
        // Rows come by job: a job starts wherever the id changes.
        let jobs_read = rows
            .windows(2)
            .filter(|pair| pair[0].job_id != pair[1].job_id)
            .count()
            + usize::from(!rows.is_empty());
        match rows.last() {
            Some(last) if jobs_read as u32 >= PAGE_JOBS => after = Some(last.job_id),
            _ => break,
        }
    }
    let Tally { groups, total, .. } = tally;
    Ok(Json(UsageView {
        object: "usage",
        from,
        to,
        group_by,
        data: groups.iter().map(|(k, s)| s.view(k)).collect(),
        total: total.view("total"),
    }))
}

/// Usage summed row by row, in the ledger's order (by job, then attempt).
struct Tally {
    group_by: GroupBy,
    groups: BTreeMap<String, Sums>,
    total: Sums,
    /// The previous row's job and route: an attempt on another route than the one before it,
    /// in the same job, is a fallback.
    previous: Option<(JobId, Option<String>)>,
}

impl Tally {
    fn new(group_by: GroupBy) -> Self {
        Tally {
            group_by,
            groups: BTreeMap::new(),
            total: Sums::default(),
            previous: None,
        }
    }

    fn add(&mut self, row: &UsageRow) {
        // An attempt lost before its route was chosen ran nowhere: no provider, no fallback.
        let route = row.route.as_deref().filter(|r| *r != "unrouted");
        let fallback = matches!(
            (&self.previous, route),
            (Some((job, Some(before))), Some(now)) if *job == row.job_id && before != now
        );
        self.previous = Some((row.job_id, route.map(str::to_owned)));
        let provider = route.map(|r| r.split_once(':').map_or(r, |(p, _)| p));
        let first_of_job = self.total.count_job(row.job_id);
        if first_of_job {
            count_status(&mut self.total, row.status);
        }
        let key = match self.group_by {
            GroupBy::Model => row.model.clone(),
            GroupBy::Day => row.created_at.format("%Y-%m-%d").to_string(),
            GroupBy::Provider => match provider {
                Some(p) => p.to_owned(),
                // Never attempted: counted in the total only.
                None => return,
            },
        };
        let group = self.groups.entry(key).or_default();
        group.count_job(row.job_id);
        if route.is_some() {
            for sums in [&mut *group, &mut self.total] {
                sums.attempts += 1;
                sums.fallbacks += u64::from(fallback);
                sums.cost_micros += row.cost_micros.unwrap_or(0);
            }
        }
        if self.group_by == GroupBy::Provider {
            match row.outcome {
                Some(AttemptOutcome::Succeeded) => group.succeeded += 1,
                Some(AttemptOutcome::Failed) => group.failed += 1,
                _ => {}
            }
        } else if first_of_job {
            count_status(group, row.status);
        }
    }
}

fn count_status(sums: &mut Sums, status: Status) {
    match status {
        Status::Succeeded => sums.succeeded += 1,
        Status::Failed => sums.failed += 1,
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(rows: &[UsageRow], group_by: GroupBy) -> (BTreeMap<String, Sums>, Sums) {
        let mut tally = Tally::new(group_by);
        rows.iter().for_each(|r| tally.add(r));
        (tally.groups, tally.total)
    }

    fn attempt(
        job: JobId,
        number: u32,
        route: &str,
        outcome: AttemptOutcome,
        cost: i64,
    ) -> UsageRow {
        UsageRow {
            job_id: job,
            model: "acme/img".into(),
            status: Status::Succeeded,
            created_at: Utc::now(),
            route: Some(route.into()),
            number: Some(number),
            outcome: Some(outcome),
            cost_micros: Some(cost),
        }
    }

    #[test]
    fn a_fallback_is_an_attempt_on_another_route_than_the_one_before() {
        let job = JobId::new();
        let rows = vec![
            attempt(job, 1, "replicate:a", AttemptOutcome::Failed, 100),
            attempt(job, 2, "replicate:a", AttemptOutcome::Failed, 100),
            attempt(job, 3, "fal:b", AttemptOutcome::Succeeded, 300),
        ];
        let (by_model, total) = sum(&rows, GroupBy::Model);
        let model = &by_model["acme/img"];
        assert_eq!((model.jobs, model.succeeded, model.attempts), (1, 1, 3));
        assert_eq!(model.fallbacks, 1);
        assert_eq!(model.cost_micros, 500, "failed attempts cost too");
        assert_eq!(total.fallbacks, 1);
        let (by_provider, _) = sum(&rows, GroupBy::Provider);
        assert_eq!(by_provider["replicate"].failed, 2);
        assert_eq!(by_provider["replicate"].fallbacks, 0);
        assert_eq!(by_provider["fal"].succeeded, 1);
        assert_eq!(
            by_provider["fal"].fallbacks, 1,
            "the fallback landed on fal"
        );
        assert_eq!(by_provider["fal"].cost_micros, 300);
    }
}
