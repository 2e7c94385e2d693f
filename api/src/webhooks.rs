//! Webhook routes: the calling key's signing secret (at Replicate's path, so receivers written
//! for Replicate fetch it unchanged) and its rotation, and a job's delivery log with redelivery.
//! A rotation keeps the previous secret signing beside the new one for an overlap window, so
//! receivers can switch without dropping a delivery.

use crate::auth::{Caller, Tenant};
use crate::problem::Problem;
use crate::wire::{List, WebhookSecretView};
use crate::ApiState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use kiln_core::ledger::Delivery;
use kiln_core::ledger::DeliveryId;
use kiln_core::JobId;
use kiln_webhooks::WebhookSecret;
use std::sync::Arc;

/// How long a rotated-out secret keeps signing.
pub const ROTATION_OVERLAP: chrono::Duration = chrono::Duration::hours(24);

#[utoipa::path(
    get,
    path = "/v1/webhooks/default/secret",
    operation_id = "getWebhookSecret",
    tag = "webhooks",
    responses(
        (status = 200, description = "The calling key's signing secret", body = WebhookSecretView),
        crate::responses::KeyRefusals,
    ),
)]
pub async fn secret(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
) -> Result<Json<WebhookSecretView>, Problem> {
    let secrets = secrets_of(&state, &caller).await?;
    let current = opened(&state, &secrets.current)?;
    Ok(Json(WebhookSecretView {
        key: current.expose(),
        previous_valid_until: None,
    }))
}

#[utoipa::path(
    post,
    path = "/v1/webhooks/default/secret/rotate",
    operation_id = "rotateWebhookSecret",
    tag = "webhooks",
    responses(
        (status = 200, description = "A new secret; the previous one signs beside it for 24 h", body = WebhookSecretView),
        crate::responses::KeyRefusals,
        (status = 409, description = "A rotation's overlap is still running", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn rotate(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
) -> Result<Json<WebhookSecretView>, Problem> {
    // A key that never had a secret gets one first, so there is something to rotate out.
    let secrets = secrets_of(&state, &caller).await?;
    // A second rotation during the overlap would cut the first one's promise short.
    if secrets.previous.is_some() {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "rotation_in_progress",
            "the previous secret is still valid; rotate again once its overlap has ended",
        ));
    }
    let fresh = WebhookSecret::generate();
    let until = kiln_core::time::now() + ROTATION_OVERLAP;
    state
        .ledger
        .rotate_webhook_secret(&caller.key_id, &state.secret_seal.seal(&fresh), until)
        .await?;
    Ok(Json(WebhookSecretView {
        key: fresh.expose(),
        previous_valid_until: Some(until),
    }))
}

/// The calling key's secrets, sealed as stored; a key that has none is given one first.
async fn secrets_of(
    state: &ApiState,
    caller: &Caller,
) -> Result<kiln_core::ledger::WebhookSecrets, Problem> {
    let fresh = state.secret_seal.seal(&WebhookSecret::generate());
    Ok(state.ledger.webhook_secrets(&caller.key_id, &fresh).await?)
}

/// A stored secret opened with this deployment's key. One that does not open was sealed under
/// another key (`secrets_key` differs between processes): the operator's fault, logged, and a
/// 500 that says nothing of it to the client.
fn opened(state: &ApiState, stored: &str) -> Result<WebhookSecret, Problem> {
    state.secret_seal.open(stored).ok_or_else(|| {
        Problem::internal(&"a webhook secret does not open with this process's secrets_key")
    })
}

fn not_found() -> Problem {
    Problem::not_found("job_not_found", "there is no job with this id")
}

#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/deliveries",
    operation_id = "listJobDeliveries",
    tag = "webhooks",
    params(("id" = String, Path)),
    responses(
        (status = 200, description = "The job's webhook deliveries and their tries", body = List<Delivery>),
        crate::responses::KeyRefusals,
        crate::responses::NoSuchJob,
    ),
)]
pub async fn deliveries(
    State(state): State<Arc<ApiState>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Json<List<Delivery>>, Problem> {
    let id: JobId = id.parse().map_err(|_| not_found())?;
    let deliveries = state
        .ledger
        .deliveries(&tenant, id)
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(List::of(deliveries)))
}

#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/deliveries/{delivery}/redeliver",
    operation_id = "redeliver",
    tag = "webhooks",
    params(("id" = String, Path), ("delivery" = String, Path)),
    responses(
        (status = 202, description = "Scheduled again, with the same webhook-id"),
        crate::responses::KeyRefusals,
        (status = 404, description = "No such job or delivery (or another tenant's)", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn redeliver(
    State(state): State<Arc<ApiState>>,
    Tenant(tenant): Tenant,
    Path((id, delivery)): Path<(String, String)>,
) -> Result<StatusCode, Problem> {
    let id: JobId = id.parse().map_err(|_| not_found())?;
    let delivery = DeliveryId::parse(&delivery)
        .ok_or_else(|| Problem::not_found("delivery_not_found", "this job has no such delivery"))?;
    if state.ledger.redeliver(&tenant, id, &delivery).await? {
        Ok(StatusCode::ACCEPTED)
    } else {
        Err(Problem::not_found(
            "delivery_not_found",
            "this job has no such delivery",
        ))
    }
}
