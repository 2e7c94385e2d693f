//! Uploads, on Replicate's files API: `POST /v1/files` stores a file in Kiln's object store
//! (with the outputs' expiry; the janitor deletes it after) and answers the file object
//! Replicate's clients parse, whose `urls.get` is a signed URL of the api's own, a valid input
//! for any job on either store. This is how `replicate.run(model, input={"image": open(…)})`
//! reaches Kiln, and how inputs larger than a request body's `data:` URI get in: an upload may
//! be as large as a worker fetches an input (`outputs.max_input_bytes`).
//!
//! The upload streams into the store as it arrives, hashed on the way, so memory stays bounded
//! whatever its size; the declared length is checked before a byte is read, and the stream is
//! cut at the limit whatever it declared. `GET` and `DELETE /v1/files/{id}` share their path
//! with the signed downloads (`/v1/files/{key}`, `crate::files`): a file id is one path segment,
//! an object key always more than one.

use crate::auth::Tenant;
use crate::problem::Problem;
use crate::ApiState;
use axum::body::Bytes;
use axum::extract::multipart::{Field, MultipartRejection};
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use kiln_core::ledger::StoredFile;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use utoipa::ToSchema;

/// The largest `metadata` part taken.
const MAX_METADATA_BYTES: usize = 64 * 1024;
/// Room in a request beyond the file itself: the multipart framing and the metadata.
const FRAMING_ALLOWANCE: u64 = 128 * 1024;
const PAGE: u32 = 100;

/// A file's checksums.
#[derive(Debug, Serialize, ToSchema)]
pub struct Checksums {
    pub sha256: String,
}

/// A file's links.
#[derive(Debug, Serialize, ToSchema)]
pub struct FileUrls {
    /// A signed download URL of the api's, until the file expires: pass it as a job's input.
    pub get: String,
}

/// An upload, as Replicate's clients parse a file.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = File)]
pub struct FileView {
    pub id: String,
    pub name: String,
    pub content_type: String,
    pub size: u64,
    /// The hex SHA-256 of its bytes.
    pub etag: String,
    pub checksums: Checksums,
    #[schema(value_type = Object)]
    pub metadata: Value,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub urls: FileUrls,
}

impl FileView {
    fn of(state: &ApiState, file: StoredFile) -> Result<Self, Problem> {
        Ok(FileView {
            urls: FileUrls {
                get: state
                    .downloads
                    .url(&file.object_key, file.expires_at)?
                    .to_string(),
            },
            etag: file.sha256.clone(),
            checksums: Checksums {
                sha256: file.sha256,
            },
            id: file.id,
            name: file.name,
            content_type: file.content_type,
            size: file.size,
            metadata: file.metadata,
            created_at: file.created_at,
            expires_at: file.expires_at,
        })
    }
}

/// A page of files, as Replicate's lists are.
#[derive(Debug, Serialize, ToSchema)]
pub struct FilePage {
    pub next: Option<String>,
    pub previous: Option<String>,
    pub results: Vec<FileView>,
}

fn file_not_found() -> Problem {
    Problem::not_found("file_not_found", "there is no file with this id")
}

/// A file name fit for an object key: its last path segment, in letters, digits, `.`, `_`
/// and `-` (anything else becomes `_`), at most 100 characters, never empty or dots alone.
pub(crate) fn safe_name(name: &str) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String = last
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    if cleaned.trim_matches('.').is_empty() {
        "file".into()
    } else {
        cleaned
    }
}

fn too_large(limit: u64) -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "file_too_large",
        format!("an upload may be at most {limit} bytes (outputs.max_input_bytes)"),
    )
    .with_field("content")
}

#[utoipa::path(
    post,
    path = "/v1/files",
    operation_id = "createFile",
    tag = "replicate",
    request_body(content_type = "multipart/form-data", content = Object, description = "`content`: the file (its filename and content type are kept); `metadata`: optional JSON"),
    responses(
        (status = 201, description = "Stored", body = FileView),
        (status = 400, description = "Not a multipart body, or no `content` part", body = Problem, content_type = "application/problem+json"),
        crate::responses::KeyRefusals,
        (status = 413, description = "Larger than an upload may be", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`metadata` is not JSON", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn create(
    State(state): State<Arc<ApiState>>,
    Tenant(tenant): Tenant,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, Problem> {
    let mut multipart = open_multipart(&state, &headers, multipart)?;
    let mut stored: Option<StoredPart> = None;
    let mut metadata = Value::Object(Default::default());
    while let Some(field) = multipart.next_field().await.map_err(invalid_multipart)? {
        match field.name() {
            Some("content") if stored.is_none() => {
                stored = Some(store_part(&state, field).await?);
            }
            Some("metadata") => {
                let text = read_text_part(field, MAX_METADATA_BYTES, "metadata").await?;
                metadata = match serde_json::from_str(&text) {
                    Ok(object @ Value::Object(_)) => object,
                    _ => {
                        return Err(Problem::unprocessable(
                            "invalid_metadata",
                            "metadata",
                            "metadata must be a JSON object",
                        ))
                    }
                };
            }
            other => {
                let name = other.unwrap_or_default().to_owned();
                return Err(Problem::unprocessable(
                    "unknown_field",
                    name.as_str(),
                    format!("'{name}' is not a part of an upload: content (once) and metadata"),
                ));
            }
        }
    }
    let Some(stored) = stored else {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "missing_field",
            "the file goes in a part named content",
        )
        .with_field("content"));
    };
    let file = record(&state, tenant, stored, metadata).await?;
    Ok((StatusCode::CREATED, Json(FileView::of(&state, file)?)).into_response())
}

pub(crate) fn invalid_multipart(e: axum::extract::multipart::MultipartError) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, "invalid_multipart", e.body_text())
}

/// The request as multipart parts, once its declared length is within an upload's bound.
pub(crate) fn open_multipart(
    state: &ApiState,
    headers: &HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Multipart, Problem> {
    let limit = state.max_upload_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit + FRAMING_ALLOWANCE) {
        return Err(too_large(limit));
    }
    multipart.map_err(|e| Problem::new(StatusCode::BAD_REQUEST, "invalid_multipart", e.body_text()))
}

/// A text part, read whole up to `max` bytes (`field` names it in a refusal).
pub(crate) async fn read_text_part(
    mut field: Field<'_>,
    max: usize,
    name: &str,
) -> Result<String, Problem> {
    let mut text = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(invalid_multipart)? {
        if text.len() + chunk.len() > max {
            return Err(Problem::unprocessable(
                "field_too_large",
                name,
                format!("{name} may be at most {max} bytes"),
            ));
        }
        text.extend_from_slice(&chunk);
    }
    String::from_utf8(text).map_err(|_| {
        Problem::unprocessable("invalid_type", name, format!("{name} must be UTF-8 text"))
    })
}

/// A file part stored in the object store, not yet recorded.
pub(crate) struct StoredPart {
    id: String,
    key: String,
    name: String,
    content_type: String,
    size: u64,
    sha256: String,
}

/// Streams a file part into the store under a new upload's key, hashing it on the way and
/// cutting it off past the upload limit (storing nothing then).
pub(crate) async fn store_part(state: &ApiState, field: Field<'_>) -> Result<StoredPart, Problem> {
    let limit = state.max_upload_bytes;
    let id = uuid::Uuid::now_v7().to_string();
    let name = safe_name(field.file_name().unwrap_or("file"));
    let content_type = field
        .content_type()
        .map(str::to_owned)
        .unwrap_or_else(|| "application/octet-stream".into());
    let key = format!("uploads/{id}/{name}");
    // The part borrows the request while the store wants a stream of its own: the part is
    // pumped into a short channel the store reads, both in this task.
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
    .boxed();
    let pump = async move {
        let mut field = field;
        let (mut hasher, mut size) = (Sha256::new(), 0u64);
        loop {
            match field.chunk().await {
                Ok(Some(chunk)) => {
                    size += chunk.len() as u64;
                    if size > limit {
                        let _ = tx.send(Err(std::io::Error::other("over the limit"))).await;
                        return Err(too_large(limit));
                    }
                    hasher.update(&chunk);
                    if tx.send(Ok(chunk)).await.is_err() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.send(Err(std::io::Error::other(e.body_text()))).await;
                    return Err(invalid_multipart(e));
                }
            }
        }
        Ok((hex::encode(hasher.finalize()), size))
    };
    let (put, pumped) = tokio::join!(state.store.put(&key, &content_type, body), pump);
    let (sha256, size) = pumped?;
    put.map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "upload_failed",
            format!("the upload did not arrive whole: {e}"),
        )
        .with_field("content")
    })?;
    Ok(StoredPart {
        id,
        key,
        name,
        content_type,
        size,
        sha256,
    })
}

/// Records a stored part as the tenant's file, kept with the outputs' expiry.
pub(crate) async fn record(
    state: &ApiState,
    tenant: kiln_core::TenantId,
    part: StoredPart,
    metadata: Value,
) -> Result<StoredFile, Problem> {
    let created_at = Utc::now();
    let file = StoredFile {
        id: part.id,
        tenant,
        object_key: part.key,
        name: part.name,
        content_type: part.content_type,
        size: part.size,
        sha256: part.sha256,
        metadata,
        created_at,
        expires_at: created_at + chrono::Duration::from_std(state.upload_ttl).unwrap_or_default(),
    };
    state.ledger.insert_file(&file).await?;
    Ok(file)
}

/// The OpenAPI media type of `POST /v1/files`: a `content` part (the file), and an optional
/// `metadata` part holding JSON; any other part is refused.
pub(crate) fn request_body() -> Value {
    serde_json::json!({
        "schema": {
            "type": "object",
            "required": ["content"],
            "additionalProperties": false,
            "properties": {
                "content": {"type": "string", "format": "binary", "description": "The file; its filename and content type are kept"},
                "metadata": {"type": "object", "description": "Your own JSON, kept with the file"},
            },
        },
        "encoding": {"metadata": {"contentType": "application/json"}},
    })
}

/// `GET /v1/files/{id}`: the caller's file.
pub(crate) async fn get(
    state: &ApiState,
    tenant: &kiln_core::TenantId,
    id: &str,
) -> Result<Response, Problem> {
    let file = state
        .ledger
        .get_file(tenant, id)
        .await?
        .ok_or_else(file_not_found)?;
    Ok(Json(FileView::of(state, file)?).into_response())
}

#[utoipa::path(
    delete,
    path = "/v1/files/{key}",
    operation_id = "deleteFile",
    tag = "replicate",
    params(("key" = String, Path, description = "The file's id")),
    responses(
        (status = 204, description = "Deleted: its object is gone and its URL answers 410"),
        crate::responses::KeyRefusals,
        (status = 404, description = "No such file (or another tenant's)", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn delete(
    State(state): State<Arc<ApiState>>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let file = state
        .ledger
        .get_file(&tenant, &id)
        .await?
        .ok_or_else(file_not_found)?;
    // Object first: a crash between the two leaves a row the janitor deletes again.
    state.store.delete(&file.object_key).await?;
    if !state.ledger.mark_file_deleted(Some(&tenant), &id).await? {
        return Err(file_not_found());
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(
    get,
    path = "/v1/files",
    operation_id = "listFiles",
    tag = "replicate",
    params(("cursor" = Option<String>, Query, description = "From the previous page's `next`")),
    responses(
        (status = 200, description = "The caller's files, newest first", body = FilePage),
        crate::responses::KeyRefusals,
    ),
)]
pub async fn list(
    State(state): State<Arc<ApiState>>,
    Tenant(tenant): Tenant,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, Problem> {
    // The cursor is the last id of the previous page; anything else simply lists nothing older.
    let before = params.get("cursor").map(String::as_str);
    let mut files = state.ledger.list_files(&tenant, before, PAGE + 1).await?;
    let more = files.len() > PAGE as usize;
    files.truncate(PAGE as usize);
    let next = match (more, files.last()) {
        (true, Some(last)) => {
            let mut url = state
                .public_url
                .join("v1/files")
                .map_err(|e| Problem::internal(&e))?;
            url.query_pairs_mut().append_pair("cursor", &last.id);
            Some(url.to_string())
        }
        _ => None,
    };
    let results = files
        .into_iter()
        .map(|f| FileView::of(&state, f))
        .collect::<Result<_, _>>()?;
    Ok(Json(FilePage {
        next,
        previous: None,
        results,
    })
    .into_response())
}
