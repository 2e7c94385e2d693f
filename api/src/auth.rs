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
