//! What the two creates (`POST /v1/jobs`, `POST /v1/pipelines`) share: the body read as one JSON
//! object, fields outside the submission refused by name, and the fields both take (`priority`,
//! `webhook`, `webhook_events`) parsed with one rule each. Each refusal is a problem naming the
//! field at fault; nothing here writes anything, so a refused create changed nothing.

use crate::auth::Caller;
use crate::problem::Problem;
use crate::ApiState;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use kiln_core::dispatch::Lane;
use kiln_core::events::{parse_event_filter, EventType};
use serde_json::{Map, Value};

/// What a webhook URL must be (`kiln_core::catalog::HTTP_URL_PATTERN`).
const WEBHOOK_URL_RULE: &str =
    "webhook must be an http(s) URL with a DNS name or an IP address, and no user info";

/// The body as a JSON object whose fields are all among `fields` (`what` names the submission
/// in the refusal).
pub(crate) fn json_object(
    body: Result<Bytes, BytesRejection>,
    fields: &[&str],
    what: &str,
) -> Result<Map<String, Value>, Problem> {
    let request = any_json_object(body)?;
    if let Some(extra) = request.keys().find(|k| !fields.contains(&k.as_str())) {
        return Err(Problem::unprocessable(
            "unknown_field",
            extra.as_str(),
            format!("'{extra}' is not a field of {what}"),
        ));
    }
    Ok(request)
}

/// The body as one JSON object, whatever its fields (the caller judges them).
pub(crate) fn any_json_object(
    body: Result<Bytes, BytesRejection>,
) -> Result<Map<String, Value>, Problem> {
    let body = body.map_err(body_problem)?;
    let invalid_json =
        |detail: String| Problem::new(StatusCode::BAD_REQUEST, "invalid_json", detail);
    let request: Value = serde_json::from_slice(&body)
        .map_err(|e| invalid_json(format!("the body is not valid JSON: {e}")))?;
    match request {
        Value::Object(request) => Ok(request),
        _ => Err(invalid_json("the body must be a JSON object".into())),
    }
}

fn body_problem(rejection: BytesRejection) -> Problem {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "the request body is larger than this server accepts",
        )
    } else {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            rejection.body_text(),
        )
    }
}

/// A `priority` field: high, normal (the default) or low; refused above the key's highest.
pub(crate) fn priority(request: &Map<String, Value>, caller: &Caller) -> Result<Lane, Problem> {
    let priority = match request.get("priority") {
        None | Some(Value::Null) => Lane::Normal,
        Some(Value::String(p)) => p
            .parse()
            .map_err(|e: String| Problem::unprocessable("invalid_priority", "priority", e))?,
        Some(_) => {
            return Err(Problem::unprocessable(
                "invalid_type",
                "priority",
                "priority must be one of high, normal, low",
            ))
        }
    };
    match caller.limits.max_priority {
        // Lanes order from high to low: a priority "less" than the key's highest is above it.
        Some(highest) if priority < highest => Err(Problem::new(
            StatusCode::FORBIDDEN,
            "priority_not_allowed",
            format!(
                "this key may submit at priority {} or lower",
                highest.as_str()
            ),
        )
        .with_field("priority")),
        _ => Ok(priority),
    }
}

/// A `webhook` field: an http(s) URL.
pub(crate) fn webhook(request: &Map<String, Value>) -> Result<Option<url::Url>, Problem> {
    match request.get("webhook") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => kiln_core::catalog::parse_http_url(s)
            .map(Some)
            .ok_or_else(|| Problem::unprocessable("invalid_url", "webhook", WEBHOOK_URL_RULE)),
        Some(_) => Err(Problem::unprocessable(
            "invalid_type",
            "webhook",
            "webhook must be a URL",
        )),
    }
}

/// The webhook must pass the webhook SSRF policy with every address its name resolves to now
/// (and passes it again when a delivery connects).
pub(crate) async fn check_webhook_target(state: &ApiState, url: &url::Url) -> Result<(), Problem> {
    state
        .webhook_ssrf
        .check_url_resolving(url)
        .await
        .map_err(|e| {
            Problem::unprocessable("webhook_url_forbidden", "webhook", format!("webhook: {e}"))
        })
}

/// A `webhook_events` field: a non-empty list of the events this kind of resource emits.
pub(crate) fn webhook_events(
    request: &Map<String, Value>,
    allowed: &[EventType],
) -> Result<Option<Vec<EventType>>, Problem> {
    match request.get("webhook_events") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => parse_event_filter(items.iter().map(Value::as_str), allowed)
            .map(Some)
            .map_err(|message| Problem::unprocessable("unknown_event", "webhook_events", message)),
        Some(_) => Err(Problem::unprocessable(
            "invalid_type",
            "webhook_events",
            "webhook_events must be a list of event types",
        )),
    }
}

/// Event filters as the ledger keeps them.
pub(crate) fn event_names(events: Option<Vec<EventType>>) -> Option<Vec<String>> {
    events.map(|e| e.into_iter().map(|e| e.as_str().to_owned()).collect())
}
