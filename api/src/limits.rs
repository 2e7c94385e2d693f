//! Per-key guardrails at submit. The request rate is checked with the key itself
//! (`auth::live_key`); here are the checks that need the submission: the daily spend cap and the
//! active-job limit (the latter decided by the ledger in the inserting transaction, so
//! concurrent submits cannot overshoot it). A refusal is a `429` problem with `Retry-After`
//! and creates nothing.
//!
//! The spend cap compares what the key's attempts have cost since midnight UTC, plus what the
//! new work will cost at the least (each model's first route: its per-run and per-output
//! price), with the cap. Per-second prices are only known once a run ends, so the cap can be
//! passed by at most the compute of the jobs already running when it is reached.

use crate::auth::Caller;
use crate::problem::Problem;
use crate::ApiState;
use axum::http::StatusCode;
use chrono::{Duration, Utc};

/// The least the models' runs will cost, in millionths.
fn estimate(state: &ApiState, models: &[&str]) -> i64 {
    models
        .iter()
        .filter_map(|m| state.catalog.routes(m).into_iter().next())
        .map(|route| route.cost.micros(0.0, 1))
        .sum()
}

pub async fn check_spend(
    state: &ApiState,
    caller: &Caller,
    models: &[&str],
) -> Result<(), Problem> {
    let Some(cap) = caller.limits.daily_spend_micros else {
        return Ok(());
    };
    let now = Utc::now();
    let midnight = now
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .expect("midnight exists")
        .and_utc();
    let spent = state.ledger.spend_since(&caller.key_id, midnight).await?;
    let more = estimate(state, models);
    if spent + more > cap {
        let tomorrow = midnight + Duration::days(1);
        let wait = (tomorrow - now).num_seconds().max(1) as u64;
        return Err(Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "daily_spend_cap_reached",
            format!(
                "this key's daily spend cap is {:.6}; {:.6} is spent today and this would cost at least {:.6} more",
                cap as f64 / 1e6,
                spent as f64 / 1e6,
                more as f64 / 1e6
            ),
        )
        .with_retry_after(wait));
    }
    Ok(())
}

/// The ledger's refusal of a key at its active-job limit, as the problem the client sees.
pub fn active_job_limit(e: kiln_core::LedgerError) -> Problem {
    match e {
        kiln_core::LedgerError::ActiveJobLimit(max) => Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "active_job_limit",
            format!("this key may have {max} jobs queued or running at once; wait for one to end"),
        )
        .with_retry_after(1),
        other => other.into(),
    }
}
