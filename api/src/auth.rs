//! Bearer API-key authentication. The extractors turn `Authorization: Bearer kiln_…` into the
//! key's tenant (`Tenant`), which every handler then scopes its reads and writes by (invariant
//! 5), or into the key itself (`Caller`), for routes that act on the key (its webhook secret) or
//! remember it (a job's webhooks are signed with its submitter's secret). Missing, malformed,
//! unknown and revoked keys all get the same 401, so the answer tells nothing about which keys
//! exist.
//!
//! A key's request rate is limited here, for every route it calls: past `rate_per_second` the
//! answer is `429 rate_limited` with `Retry-After`, before the handler runs. The key looked up is
//! kept in the request's extensions, so a request that passes two extractors (or the
//! idempotency middleware and then one) is looked up and counted once.

use crate::problem::Problem;
use crate::ApiState;
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::StatusCode;
use kiln_core::ledger::{ApiKeyRecord, KeyLimits};
use kiln_core::{keys, TenantId};
use std::sync::Arc;

pub struct Tenant(pub TenantId);

pub struct Caller {
    pub tenant: TenantId,
    pub key_id: keys::KeyId,
    pub default_webhook: Option<String>,
    /// The key's limits, its own where set and the configured defaults elsewhere.
    pub limits: KeyLimits,
}

/// A key's effective limits: its own where set, else the deployment's defaults.
pub fn effective(own: &KeyLimits, defaults: &KeyLimits) -> KeyLimits {
    KeyLimits {
        rate_per_second: own.rate_per_second.or(defaults.rate_per_second),
        max_active_jobs: own.max_active_jobs.or(defaults.max_active_jobs),
        daily_spend_micros: own.daily_spend_micros.or(defaults.daily_spend_micros),
        max_priority: own.max_priority.or(defaults.max_priority),
    }
}

fn refused() -> Problem {
    Problem::unauthorized("a valid API key is required: Authorization: Bearer <key>")
}

/// The live key the request's bearer token names, within its request rate.
pub(crate) async fn live_key(parts: &mut Parts, state: &ApiState) -> Result<ApiKeyRecord, Problem> {
    if let Some(record) = parts.extensions.get::<ApiKeyRecord>() {
        return Ok(record.clone());
    }
    let header = parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(refused)?;
    let (scheme, key) = header.split_once(' ').ok_or_else(refused)?;
    let key = key.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || !keys::looks_like_key(key) {
        return Err(refused());
    }
    let record = state
        .ledger
        .key_by_hash(&keys::hash(key))
        .await?
        .ok_or_else(refused)?;
    let limits = effective(&record.limits, &state.limits);
    if let Some(rate) = limits.rate_per_second {
        let name = format!("key:{}", record.id);
        let wait = state
            .permits
            .try_start(&name, rate, std::time::Duration::from_secs(1))
            .await
            .map_err(|e| Problem::internal(&e))?;
        if let Some(wait) = wait {
            return Err(rate_limited(rate, wait));
        }
    }
    parts.extensions.insert(record.clone());
    Ok(record)
}

fn rate_limited(rate: u32, wait: std::time::Duration) -> Problem {
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("this key may make {rate} requests per second; retry after {secs} s"),
    )
    .with_retry_after(secs)
}

impl FromRequestParts<Arc<ApiState>> for Tenant {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<ApiState>) -> Result<Self, Problem> {
        Ok(Tenant(live_key(parts, state).await?.tenant))
    }
}

impl FromRequestParts<Arc<ApiState>> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<ApiState>) -> Result<Self, Problem> {
        let record = live_key(parts, state).await?;
        Ok(Caller {
            limits: effective(&record.limits, &state.limits),
            tenant: record.tenant,
            key_id: record.id,
            default_webhook: record.default_webhook,
        })
    }
}
