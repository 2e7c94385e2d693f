//! RFC 9457 problem details, Kiln's one error shape on the wire (invariant 7). Every problem has a
//! stable `code` that clients can branch on, a human `detail`, and, for input errors, the `field`
//! at fault. Internal errors are logged with their cause and answered with a body that reveals
//! nothing: no SQL, no path, no stack.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

// Its `type` is derived from its code when it is made (`Problem::new`), so the two are never
// set apart.
/// An RFC 9457 problem: every error Kiln answers.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// `urn:kiln:problem:{code}`.
    // Boxed: a problem travels in every handler's `Err`, so it is kept small.
    #[serde(rename = "type")]
    #[schema(value_type = String)]
    kind: Box<str>,
    #[schema(value_type = String)]
    pub title: &'static str,
    pub status: u16,
    /// Stable and machine-readable: branch on this.
    pub code: String,
    pub detail: String,
    /// The input field at fault, for input errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Sent as `Retry-After`, for limits that lift with time; not part of the body.
    #[serde(skip)]
    #[schema(ignore)]
    pub retry_after: Option<u32>,
}

impl Problem {
    pub fn new(status: StatusCode, code: impl Into<String>, detail: impl Into<String>) -> Self {
        let code = code.into();
        Problem {
            kind: format!("urn:kiln:problem:{code}").into(),
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            code,
            detail: detail.into(),
            field: None,
            retry_after: None,
        }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        let seconds = u32::try_from(seconds).unwrap_or(u32::MAX);
        self.retry_after = Some(seconds);
        self
    }

    /// An input error: 422 with the field at fault.
    pub fn unprocessable(
        code: impl Into<String>,
        field: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Problem::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail).with_field(field)
    }

    pub fn unauthorized(detail: &str) -> Self {
        Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    pub fn not_found(code: &str, detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::NOT_FOUND, code, detail)
    }

    /// An unexpected failure. The cause goes to the log only.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "an internal error occurred; it has been logged",
        )
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, axum::Json(&self)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<kiln_core::LedgerError> for Problem {
    fn from(e: kiln_core::LedgerError) -> Self {
        // A ledger that cannot be reached in time (a pool held full by slow statements, a
        // restarting server) is a 503 the client may retry, not a 500; the cause is logged.
        if e.is_unavailable() {
            tracing::warn!(error = %e, "the ledger is unavailable");
            return Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ledger_unavailable",
                "the service is busy or restarting; try again shortly",
            )
            .with_retry_after(2);
        }
        Problem::internal(&e)
    }
}

impl From<kiln_storage::StorageError> for Problem {
    fn from(e: kiln_storage::StorageError) -> Self {
        Problem::internal(&e)
    }
}
