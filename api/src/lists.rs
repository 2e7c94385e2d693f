//! Lists of jobs and pipelines: the filters a list takes (statuses, model, creation window,
//! page size), the page fetched with one item more to learn whether more follow, and the
//! cursor that continues a list. Shared by `GET /v1/jobs` and `GET /v1/pipelines`.

use crate::problem::Problem;
use crate::wire::Page;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use kiln_core::ledger::JobFilter;
use kiln_core::{JobId, Status};
use std::collections::HashMap;

pub const DEFAULT_PAGE: u32 = 20;
pub const MAX_PAGE: u32 = 100;

/// The filter with room for one item more, to learn whether more follow the page.
pub(crate) fn probe(filter: &JobFilter) -> JobFilter {
    JobFilter {
        limit: filter.limit + 1,
        ..filter.clone()
    }
}

/// The page out of what `probe` fetched, and whether more follow.
pub(crate) fn page<T>(mut items: Vec<T>, filter: &JobFilter) -> (Vec<T>, bool) {
    let has_more = items.len() > filter.limit as usize;
    items.truncate(filter.limit as usize);
    (items, has_more)
}

/// A list response: the page, and the cursor when more follow.
pub(crate) fn list_body<T: utoipa::ToSchema>(
    data: Vec<T>,
    has_more: bool,
    last: Option<uuid::Uuid>,
    filter: &JobFilter,
) -> Page<T> {
    let next_cursor = last
        .filter(|_| has_more)
        .map(|id| ListCursor::continuing(filter, id).encode());
    Page {
        object: "list",
        data,
        has_more,
        next_cursor,
    }
}

/// Where the next page of a list starts, and the filters of the list it continues: a page asked
/// for with only `cursor` is the same list, and a cursor sent with other filters than its own is
/// refused rather than silently mixing two lists. Opaque to clients (base64url JSON).
#[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
struct ListCursor {
    before: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    statuses: Vec<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    created_after: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    created_before: Option<DateTime<Utc>>,
    /// The page size, kept unless the next request names its own.
    #[serde(default)]
    limit: Option<u32>,
}

impl ListCursor {
    fn continuing(filter: &JobFilter, last: uuid::Uuid) -> Self {
        ListCursor {
            before: last.to_string(),
            statuses: filter.statuses.clone(),
            model: filter.model.clone(),
            created_after: filter.created_after,
            created_before: filter.created_before,
            limit: Some(filter.limit),
        }
    }

    fn encode(&self) -> String {
        use base64::Engine;
        let json = serde_json::to_vec(self).expect("a cursor serializes");
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    fn decode(raw: &str) -> Option<Self> {
        use base64::Engine;
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(raw)
            .ok()?;
        serde_json::from_slice(&json).ok()
    }
}

/// A list's `status` filter as the document publishes it: one or more statuses, comma-separated.
/// Empty means no status filter, as leaving the parameter out does.
pub const STATUS_LIST_PATTERN: &str = "^(?:(?:queued|running|succeeded|failed|canceled)(?:,(?:queued|running|succeeded|failed|canceled))*)?$";

pub(crate) fn parse_filter(params: &HashMap<String, String>) -> Result<JobFilter, Problem> {
    let bad = |field: &str, detail: String| {
        Problem::new(StatusCode::BAD_REQUEST, "invalid_parameter", detail).with_field(field)
    };
    let time = |field: &str, raw: &str| {
        DateTime::parse_from_rfc3339(raw)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| {
                bad(
                    field,
                    format!("{field} must be an RFC 3339 time such as 2026-01-31T12:00:00Z"),
                )
            })
    };
    let mut filter = JobFilter {
        limit: DEFAULT_PAGE,
        ..JobFilter::default()
    };
    for (name, value) in params {
        match name.as_str() {
            "status" => {
                // Exactly `STATUS_LIST_PATTERN`: nothing (no filter), or names separated by
                // commas, none of them empty.
                let names = (!value.is_empty()).then(|| value.split(','));
                for s in names.into_iter().flatten() {
                    let status: Status = s.parse().map_err(|e: String| bad("status", e))?;
                    filter.statuses.push(status);
                }
            }
            "model" => filter.model = Some(value.clone()),
            "created_after" => filter.created_after = Some(time("created_after", value)?),
            "created_before" => filter.created_before = Some(time("created_before", value)?),
            "limit" => {
                filter.limit = value
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| {
                        bad("limit", format!("limit must be between 1 and {MAX_PAGE}"))
                    })?;
            }
            "cursor" => {}
            other => {
                return Err(Problem::new(
                    StatusCode::BAD_REQUEST,
                    "unknown_parameter",
                    format!("'{other}' is not a filter of this list"),
                )
                .with_field(other))
            }
        }
    }
    let Some(raw) = params.get("cursor") else {
        return Ok(filter);
    };
    let not_issued = || bad("cursor", "cursor is not one this server issued".into());
    // A cursor from before cursors carried their filters is a bare job id: the request's
    // filters are the list's, as they were then.
    if let Ok(before) = raw.parse::<JobId>() {
        filter.before = Some(before.0);
        return Ok(filter);
    }
    let cursor = ListCursor::decode(raw).ok_or_else(not_issued)?;
    // The cursor's filters are the list's; a filter sent beside it must say the same.
    let mismatch = |field: &str| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "cursor_mismatch",
            format!(
                "{field} differs from the list this cursor continues; send the cursor alone, or start a new list without it"
            ),
        )
        .with_field(field)
    };
    if params.contains_key("status") && filter.statuses != cursor.statuses {
        return Err(mismatch("status"));
    }
    if params.contains_key("model") && filter.model != cursor.model {
        return Err(mismatch("model"));
    }
    if params.contains_key("created_after") && filter.created_after != cursor.created_after {
        return Err(mismatch("created_after"));
    }
    if params.contains_key("created_before") && filter.created_before != cursor.created_before {
        return Err(mismatch("created_before"));
    }
    filter.before = Some(
        cursor
            .before
            .parse::<uuid::Uuid>()
            .map_err(|_| not_issued())?,
    );
    filter.statuses = cursor.statuses;
    filter.model = cursor.model;
    filter.created_after = cursor.created_after;
    filter.created_before = cursor.created_before;
    if !params.contains_key("limit") {
        if let Some(limit) = cursor.limit.filter(|n| (1..=MAX_PAGE).contains(n)) {
            filter.limit = limit;
        }
    }
    Ok(filter)
}
