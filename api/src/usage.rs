//! `GET /v1/usage`: what the caller's tenant ran and what it cost, over a window of job creation
//! times, grouped by model, provider or day. Cost counts every attempt, failed ones included, so
//! `cost_per_success` is the true price of one successful task.
//!
//! Grouped by model or by day, a row counts jobs (and their statuses), their attempts, the
//! fallbacks among them (an attempt on another route than the attempt before it) and their
//! cost. Grouped by provider, a row counts what happened there: the jobs that tried it, its
//! succeeded and failed attempts, the fallbacks that landed on it, its cost. The sums are made
//! here from one ledger read of the window's jobs and attempts. `split=model` or `split=provider`
//! adds each group's parts in the same pass (by day and model: a stacked chart's bars).
//!
//! `GET /v1/queue` is here too: the tenant's own jobs queued and running per lane.

use crate::auth::Tenant;
use crate::problem::Problem;
use crate::wire::{QueueLaneView, QueueView, UsageGroupView, UsageView};
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
            group: None,
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
        ("split" = inline(Option<GroupBy>), Query, description = "model, provider or day: adds each group's parts, split so (`parts`)"),
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
        .find(|k| !matches!(k.as_str(), "from" | "to" | "group_by" | "split"))
    {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "unknown_parameter",
            format!("'{other}' is not a parameter of usage (from, to, group_by, split)"),
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
    let split = match params.get("split").map(String::as_str) {
        None => None,
        Some("model") => Some(GroupBy::Model),
        Some("provider") => Some(GroupBy::Provider),
        Some("day") => Some(GroupBy::Day),
        Some(_) => return Err(bad("split", "split must be model, provider or day")),
    };
    let mut tally = Tally::new(group_by);
    let mut parts = split.map(|split| Tally::within(group_by, split));
    let mut after = None;
    loop {
        let rows = state
            .ledger
            .usage_rows(&tenant, from, to, after, PAGE_JOBS)
            .await?;
        for row in &rows {
            tally.add(row);
            if let Some(parts) = parts.as_mut() {
                parts.add(row);
            }
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
        parts: parts.map(|parts| {
            parts
                .groups
                .iter()
                .map(|(k, s)| {
                    let (group, key) = k.split_once(PART_SEPARATOR).unwrap_or(("", k));
                    UsageGroupView {
                        group: Some(group.to_owned()),
                        ..s.view(key)
                    }
                })
                .collect()
        }),
        total: total.view("total"),
    }))
}

#[utoipa::path(
    get,
    path = "/v1/queue",
    operation_id = "getQueue",
    tag = "usage",
    responses(
        (status = 200, description = "The caller's jobs queued and running, per lane", body = QueueView),
        crate::responses::KeyRefusals,
    ),
)]
pub async fn queue(
    State(state): State<Arc<ApiState>>,
    Tenant(tenant): Tenant,
) -> Result<Json<QueueView>, Problem> {
    let lanes = state.ledger.tenant_queue(&tenant).await?;
    Ok(Json(QueueView {
        object: "queue",
        lanes: lanes
            .into_iter()
            .map(|l| QueueLaneView {
                lane: l.lane,
                queued: l.queued,
                running: l.running,
            })
            .collect(),
    }))
}

/// Between a group and its part in a split tally's keys: a character no day, model or provider
/// name holds.
const PART_SEPARATOR: char = '\u{1f}';

/// Usage summed row by row, in the ledger's order (by job, then attempt).
struct Tally {
    group_by: GroupBy,
    /// Each key is within a group of this kind (`{group}\u{1f}{key}`): the parts of a split.
    within: Option<GroupBy>,
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
            within: None,
            groups: BTreeMap::new(),
            total: Sums::default(),
            previous: None,
        }
    }

    /// Each group of `outer` split by `split`.
    fn within(outer: GroupBy, split: GroupBy) -> Self {
        Tally {
            within: Some(outer),
            ..Tally::new(split)
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
        // A job never attempted has no provider: it is counted in the total only.
        let Some(mut key) = key_of(self.group_by, row, provider) else {
            return;
        };
        if let Some(outer) = self.within {
            let Some(group) = key_of(outer, row, provider) else {
                return;
            };
            key = format!("{group}{PART_SEPARATOR}{key}");
        }
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

/// The group a row falls in, grouped by `group_by`; none by provider before any attempt.
fn key_of(group_by: GroupBy, row: &UsageRow, provider: Option<&str>) -> Option<String> {
    Some(match group_by {
        GroupBy::Model => row.model.clone(),
        GroupBy::Day => row.created_at.format("%Y-%m-%d").to_string(),
        GroupBy::Provider => provider?.to_owned(),
    })
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
    fn a_day_split_by_model_keeps_each_days_parts_apart() {
        let day = |d: u32| {
            chrono::NaiveDate::from_ymd_opt(2026, 12, d)
                .unwrap()
                .and_hms_opt(12, 0, 0)
                .unwrap()
                .and_utc()
        };
        let row = |created: DateTime<Utc>, model: &str, cost: i64| UsageRow {
            model: model.into(),
            created_at: created,
            ..attempt(JobId::new(), 1, "demo:x", AttemptOutcome::Succeeded, cost)
        };
        let rows = [
            row(day(1), "acme/a", 100),
            row(day(1), "acme/b", 200),
            row(day(2), "acme/a", 300),
            row(day(2), "acme/a", 400),
        ];
        let mut parts = Tally::within(GroupBy::Day, GroupBy::Model);
        rows.iter().for_each(|r| parts.add(r));
        let costs: Vec<(String, i64, u64)> = parts
            .groups
            .iter()
            .map(|(k, s)| (k.replace(PART_SEPARATOR, " "), s.cost_micros, s.jobs))
            .collect();
        assert_eq!(
            costs,
            vec![
                ("2026-12-01 acme/a".to_owned(), 100, 1),
                ("2026-12-01 acme/b".to_owned(), 200, 1),
                ("2026-12-02 acme/a".to_owned(), 700, 2),
            ]
        );
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
