//! Bearer API-key authentication. The extractor turns `Authorization: Bearer kiln_…` into the
//! key's tenant, which every handler then scopes its reads and writes by (invariant 5). Missing,
//! malformed, unknown and revoked keys all get the same 401, so the answer tells nothing about
//! which keys exist.

use crate::problem::Problem;
use crate::ApiState;
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use kiln_core::{keys, TenantId};
use std::sync::Arc;

pub struct Tenant(pub TenantId);

impl FromRequestParts<Arc<ApiState>> for Tenant {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<ApiState>) -> Result<Self, Problem> {
        let refused =
            || Problem::unauthorized("a valid API key is required: Authorization: Bearer <key>");
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
        match state.ledger.tenant_for_key(&keys::hash(key)).await? {
            Some(tenant) => Ok(Tenant(tenant)),
            None => Err(refused()),
        }
    }
}

/// The caller's key itself, for routes that act on the key (its webhook secret) or remember
/// it (a job's webhooks are signed with its submitter's secret).
pub struct Caller {
    pub tenant: TenantId,
    pub key_id: String,
    pub default_webhook: Option<String>,
}

impl FromRequestParts<Arc<ApiState>> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<ApiState>) -> Result<Self, Problem> {
        let refused =
            || Problem::unauthorized("a valid API key is required: Authorization: Bearer <key>");
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
        match state.ledger.key_by_hash(&keys::hash(key)).await? {
            Some(record) => Ok(Caller {
                tenant: record.tenant,
                key_id: record.id,
                default_webhook: record.default_webhook,
            }),
            None => Err(refused()),
        }
    }
}
