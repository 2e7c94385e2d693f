//! Bearer API-key authentication. The extractors turn `Authorization: Bearer kiln_…` into the
//! key's tenant (`Tenant`), which every handler then scopes its reads and writes by (invariant
//! 5), or into the key itself (`Caller`), for routes that act on the key (its webhook secret) or
//! remember it (a job's webhooks are signed with its submitter's secret). Missing, malformed,
//! unknown and revoked keys all get the same 401, so the answer tells nothing about which keys
//! exist.

use crate::problem::Problem;
use crate::ApiState;
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use kiln_core::ledger::ApiKeyRecord;
use kiln_core::{keys, TenantId};
use std::sync::Arc;

pub struct Tenant(pub TenantId);

pub struct Caller {
    pub tenant: TenantId,
    pub key_id: String,
    pub default_webhook: Option<String>,
}

fn refused() -> Problem {
    Problem::unauthorized("a valid API key is required: Authorization: Bearer <key>")
}

/// The live key the request's bearer token names.
pub(crate) async fn live_key(parts: &Parts, state: &ApiState) -> Result<ApiKeyRecord, Problem> {
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
    state
        .ledger
        .key_by_hash(&keys::hash(key))
        .await?
        .ok_or_else(refused)
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
            tenant: record.tenant,
            key_id: record.id,
            default_webhook: record.default_webhook,
        })
    }
}
