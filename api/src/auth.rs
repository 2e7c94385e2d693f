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
//!
//! A live key is also kept for at most `KEY_CACHE_TTL` (one second) in this process
//! (`KeyCache`), so a client polling a job costs one ledger read per request, not two. The price
//! is bounded and stated: a key revoked (or given new limits) by another process — `kiln keys`,
//! another api — stops working (or takes its new limits) within that second. Only live keys are
//! kept, so an unknown or revoked key is read from the ledger every time and a stream of made-up
//! keys cannot fill the cache.

use crate::fresh::FreshCache;
use crate::problem::Problem;
use crate::ApiState;
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::StatusCode;
use kiln_core::ledger::{ApiKeyRecord, KeyLimits};
use kiln_core::{keys, TenantId};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a live key is trusted without reading the ledger again.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(1);

/// Past this many keys the stale ones are dropped (and, if every one is fresh, all of them):
/// the cache holds the keys used within its TTL, so it only grows with the live keys in use.
const KEY_CACHE_MAX: usize = 10_000;

/// Live keys by hash, each for at most `KEY_CACHE_TTL` after it was read.
pub struct KeyCache(FreshCache<String, ApiKeyRecord>);

impl KeyCache {
    pub fn new(ttl: Duration) -> Self {
        KeyCache(FreshCache::new(ttl, KEY_CACHE_MAX))
    }

    fn get(&self, hash: &str) -> Option<ApiKeyRecord> {
        self.0.get(hash)
    }

    /// Keeps `record`, read from the ledger at `read_at`.
    fn put(&self, hash: String, record: ApiKeyRecord, read_at: Instant) {
        self.0.put(hash, record, 1, read_at, None);
    }
}

pub struct Tenant(pub TenantId);

#[derive(Clone)]
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
    let hash = keys::hash(key);
    let record = match state.key_cache.get(&hash) {
        Some(record) => record,
        None => {
            let read_at = Instant::now();
            let record = state.ledger.key_by_hash(&hash).await?.ok_or_else(refused)?;
            state.key_cache.put(hash, record.clone(), read_at);
            record
        }
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(tenant: &str) -> ApiKeyRecord {
        ApiKeyRecord {
            id: keys::KeyId("key-1".into()),
            tenant: TenantId(tenant.into()),
            prefix: "kiln_test".into(),
            created_at: kiln_core::time::now(),
            revoked_at: None,
            default_webhook: None,
            limits: KeyLimits::default(),
        }
    }

    #[test]
    fn a_live_key_is_kept_for_its_ttl_and_never_without_one() {
        let cache = KeyCache::new(Duration::from_secs(3600));
        assert!(cache.get("h").is_none());
        cache.put("h".into(), record("acme"), Instant::now());
        assert_eq!(cache.get("h").unwrap().tenant.0, "acme");
        let off = KeyCache::new(Duration::ZERO);
        off.put("h".into(), record("acme"), Instant::now());
        assert!(off.get("h").is_none());
    }

    #[test]
    fn the_cache_stays_bounded_whatever_the_number_of_keys() {
        let cache = KeyCache::new(Duration::from_secs(3600));
        for i in 0..KEY_CACHE_MAX + 10 {
            cache.put(format!("h{i}"), record("acme"), Instant::now());
        }
        assert!(cache.0.len() <= KEY_CACHE_MAX);
    }
}
