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
//! passed by the compute time of the jobs running when it is reached, and two submits checked
//! at the same instant may both pass.

use crate::auth::Caller;
use crate::problem::Problem;
use crate::ApiState;
use axum::http::StatusCode;
use chrono::{Duration, Utc};

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
    let now = Utc::now();
    let midnight = now
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .expect("midnight exists")
        .and_utc();
    let spent = state.ledger.spend_since(&caller.key_id, midnight).await?;
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
        let tomorrow = midnight + Duration::days(1);
        let wait = (tomorrow - now).num_seconds().max(1) as u64;
        return Err(Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "daily_spend_cap_reached",
            format!(
                "this key's daily spend cap is {:.6}; {:.6} is spent or committed today and this would cost at least {:.6} more",
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
