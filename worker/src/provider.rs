//! The provider seam: what a generator or upstream returns and how its failures are classified.
//! Every failure is worth retrying on the same route (a transient fault: timeout, reset, 5xx,
//! 429), worth falling back to the next route (capacity, quota, an unavailable model, a
//! misconfigured provider), or permanent (bad input, a content-policy refusal); the executor
//! decides from that class alone. Adapters live one per file beside this one.

use async_trait::async_trait;
use kiln_core::catalog::ModelInput;
use kiln_core::routes::RouteConfig;
use kiln_core::ErrorInfo;
use std::time::Duration;

/// One finished output, still in memory; the executor streams it into storage.
#[derive(Debug, Clone)]
pub struct GeneratedOutput {
    pub content_type: &'static str,
    pub extension: &'static str,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    Retry,
    FallBack,
    Fail,
}

impl FailureClass {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Retry => "retry",
            FailureClass::FallBack => "fall_back",
            FailureClass::Fail => "fail",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ProviderError {
    pub class: FailureClass,
    pub error: ErrorInfo,
    /// The upstream's `Retry-After`, honoured within the executor's bounds.
    pub retry_after: Option<Duration>,
}

impl ProviderError {
    fn new(class: FailureClass, code: &str, message: impl Into<String>) -> Self {
        ProviderError {
            class,
            error: ErrorInfo::new(code, message),
            retry_after: None,
        }
    }

    pub fn retry(code: &str, message: impl Into<String>) -> Self {
        Self::new(FailureClass::Retry, code, message)
    }

    pub fn fall_back(code: &str, message: impl Into<String>) -> Self {
        Self::new(FailureClass::FallBack, code, message)
    }

    pub fn fail(code: &str, message: impl Into<String>) -> Self {
        Self::new(FailureClass::Fail, code, message)
    }

    pub fn with_retry_after(mut self, after: Option<Duration>) -> Self {
        self.retry_after = after;
        self
    }
}

/// What an adapter knows about the attempt it runs.
pub struct AttemptContext<'a> {
    /// Stable across a rescue; sent upstream as the idempotency key where the protocol allows.
    pub attempt_id: &'a str,
    pub route: &'a RouteConfig,
}

#[async_trait]
pub trait Provider: Send + Sync + 'static {
    async fn generate(
        &self,
        attempt: &AttemptContext<'_>,
        input: &ModelInput,
    ) -> Result<Vec<GeneratedOutput>, ProviderError>;
}
