//! Per-key guardrails at submit. The request rate is checked with the key itself
//! (`auth::live_key`); here are the checks that need the submission: the daily spend cap and the
//! active-job limit (the latter decided by the ledger in the inserting transaction, so
//! concurrent submits cannot overshoot it). A refusal is a `429` problem with `Retry-After`
//! and creates nothing.
//!
//! The spend cap compares what the key's attempts have cost since midnight UTC, plus the least
//! that its unfinished jobs and the new work will cost (each model's first route: its per-run
//! and per-output price), with the cap. So a burst cannot pass it by submitting faster than
//! jobs finish. Per-second prices are only known once a run ends, so the cap can still be
//! passed by the compute time of the jobs running when it is reached. A job's submit is checked
//! twice: here, early and cheaply, and again by the ledger in the inserting transaction with the
//! key's row locked (`NewJob::spend`), so two submits at the same instant cannot both pass. A
//! pipeline is checked here, at creation, for all its steps.

use crate::auth::Caller;
use crate::problem::Problem;
use crate::ApiState;
use axum::http::StatusCode;
use chrono::{Duration, Utc};
use kiln_core::ledger::SpendCheck;

/// The least one run of `model` will cost, in millionths.
fn least(state: &ApiState, model: &str) -> i64 {
    state
        .catalog
        .routes(model)
        .into_iter()
        .next()
        .map_or(0, |route| route.cost.micros(0.0, 1))
}

pub async fn check_spend(
    state: &ApiState,
    caller: &Caller,
    models: &[&str],
) -> Result<(), Problem> {
    let Some(cap) = caller.limits.daily_spend_micros else {
        return Ok(());
    };
    let spent = state
        .ledger
        .spend_since(&caller.key_id, day_began())
        .await?;
    let unfinished: i64 = state
        .ledger
        .active_jobs_by_model(&caller.key_id)
        .await?
        .iter()
        .map(|(model, n)| least(state, model) * *n as i64)
        .sum();
    let spent = spent + unfinished;
    let more: i64 = models.iter().map(|m| least(state, m)).sum();
    if spent + more > cap {
        return Err(spend_cap_reached(cap, spent, more));
    }
    Ok(())
}

/// The start of today (UTC), when the spend cap's day began.
fn day_began() -> chrono::DateTime<Utc> {
    Utc::now()
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .expect("midnight exists")
        .and_utc()
}

fn spend_cap_reached(cap: i64, spent: i64, more: i64) -> Problem {
    let wait = (day_began() + Duration::days(1) - Utc::now())
        .num_seconds()
        .max(1) as u64;
    Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        "daily_spend_cap_reached",
        format!(
            "this key's daily spend cap is {:.6}; {:.6} is spent or committed today and this would cost at least {:.6} more",
            cap as f64 / 1e6,
            spent as f64 / 1e6,
            more as f64 / 1e6
        ),
    )
    .with_retry_after(wait)
}

/// The spend cap as the ledger checks it again in the inserting transaction, with the key's row
/// locked: the check above answers early, this one is the one concurrent submits cannot both
/// pass. `None` for a key without a cap.
pub fn spend_check(state: &ApiState, caller: &Caller, model: &str) -> Option<SpendCheck> {
    let cap = caller.limits.daily_spend_micros?;
    Some(SpendCheck {
        cap_micros: cap,
        day_began: day_began(),
        new_cost_micros: least(state, model),
        least_by_model: state
            .catalog
            .models()
            .into_iter()
            .map(|m| {
                let least = least(state, &m.name);
                (m.name, least)
            })
            .filter(|(_, least)| *least > 0)
            .collect(),
    })
}

/// The ledger's refusal of a key at one of its limits, as the problem the client sees.
pub fn active_job_limit(e: kiln_core::LedgerError) -> Problem {
    match e {
        kiln_core::LedgerError::SpendCap {
            cap,
            committed,
            more,
        } => spend_cap_reached(cap, committed, more),
        kiln_core::LedgerError::ActiveJobLimit(max) => Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "active_job_limit",
            format!("this key may have {max} jobs queued or running at once; wait for one to end"),
        )
        .with_retry_after(1),
        other => other.into(),
    }
}
