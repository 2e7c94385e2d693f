//! `POST /v1/images/edits`: OpenAI's edit of an image, for the models that take one. The
//! `image` part is stored as an upload (`crate::uploads`, kept with the outputs' expiry) and its
//! signed URL goes into the model's image field; the other parts are the generation's fields,
//! sent as text by the SDKs and read here by the type the model's schema gives each. Then it
//! runs as a generation does (`super::run`). A mask, or more than one image, is refused: no
//! Kiln model takes them.

use super::{parse, refused, run};
use crate::auth::Caller;
use crate::problem::Problem;
use crate::ApiState;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, State};
use axum::http::HeaderMap;
use axum::response::Response;
use kiln_core::ledger::IdempotencyRef;
use serde_json::{Map, Value};
use std::sync::Arc;

/// The largest text part of an edit (a prompt, say).
const MAX_TEXT_PART: usize = 64 * 1024;

#[utoipa::path(
    post,
    path = "/v1/images/edits",
    operation_id = "editImage",
    tag = "openai",
    request_body(content_type = "multipart/form-data", content = Object, description = "`image` (a file), `prompt`, `model`, and `n`, `size`, `response_format` and any input field of the model, as text"),
    responses(
        (status = 200, description = "The images, once every job succeeded", body = super::ImagesResponse),
        (status = 400, description = "Refused (OpenAI's error shape; `param` names the field)", body = Object),
        (status = 401, description = "No valid API key (OpenAI's error shape)", body = Object),
        (status = 404, description = "No such model (OpenAI's error shape)", body = Object),
        (status = 409, description = "A request with this Idempotency-Key is still being answered (OpenAI's error shape; retry)", body = Object),
        (status = 429, description = "The key's request rate is spent (OpenAI's error shape; `Retry-After`)", body = Object),
        (status = 413, description = "The image is larger than an upload may be (OpenAI's error shape)", body = Object),
        (status = 500, description = "A job failed; `code` is its error code (OpenAI's error shape, not to be retried)", body = Object),
        (status = 504, description = "Not finished within the wait; the jobs go on (OpenAI's error shape)", body = Object),
    ),
)]
pub async fn edit(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    idempotency: Option<axum::Extension<IdempotencyRef>>,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, Problem> {
    let mut multipart = crate::uploads::open_multipart(&state, &headers, multipart)?;
    let mut image = None;
    let mut texts: Vec<(String, String)> = Vec::new();
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(crate::uploads::invalid_multipart)?
    {
        let name = field.name().unwrap_or_default().to_owned();
        match name.as_str() {
            "image" | "image[]" if image.is_none() => {
                image = Some(crate::uploads::store_part(&state, field).await?);
            }
            "image" | "image[]" => {
                return Err(refused(
                    "unsupported_parameter",
                    "image",
                    "one image at a time: no Kiln model takes several",
                ))
            }
            "mask" | "markup" => {
                return Err(refused(
                    "unsupported_parameter",
                    &name,
                    "no Kiln model takes a mask",
                ))
            }
            _ => {
                let text = crate::uploads::read_text_part(field, MAX_TEXT_PART, &name).await?;
                texts.push((name, text));
            }
        }
    }
    let Some(image) = image else {
        return Err(refused(
            "missing_field",
            "image",
            "the image to edit goes in a part named image",
        ));
    };
    let request = typed(&state, texts);
    let file = crate::uploads::record(
        &state,
        caller.tenant.clone(),
        image,
        Value::Object(Map::new()),
    )
    .await?;
    let url = state.downloads.url(&file.object_key, file.expires_at)?;
    let generation = parse(&state, &request, Some(url.as_str()))?;
    run(
        state,
        caller,
        idempotency.map(|e| e.0),
        &headers,
        generation,
    )
    .await
}

/// The text parts as the JSON a generation takes: `n` as a number, and each field of the named
/// model as the type its schema gives (a part that does not read as that type stays text, and
/// the model's own check names it).
fn typed(state: &ApiState, texts: Vec<(String, String)>) -> Map<String, Value> {
    let model = texts
        .iter()
        .find(|(name, _)| name == "model")
        .and_then(|(_, m)| state.catalog.model(m));
    let kind = |name: &str| -> Option<String> {
        if name == "n" {
            return Some("integer".into());
        }
        let rule = model.as_ref()?.input_schema["properties"].get(name)?;
        rule["type"].as_str().map(str::to_owned)
    };
    texts
        .into_iter()
        .map(|(name, text)| {
            let value = match kind(&name).as_deref() {
                Some("integer") => text.trim().parse::<i64>().map(Value::from).ok(),
                Some("number") => text
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .and_then(|f| serde_json::Number::from_f64(f).map(Value::Number)),
                Some("boolean") => text.trim().parse::<bool>().map(Value::from).ok(),
                _ => None,
            }
            .unwrap_or(Value::String(text));
            (name, value)
        })
        .collect()
}
