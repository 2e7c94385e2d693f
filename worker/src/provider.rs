//! What a generator returns and how its failures are classified. Every failure is either worth
//! retrying (a transient fault: the same call may succeed later) or permanent (bad input, a policy
//! refusal), and the executor decides from that class alone. Fallback across routes arrives with
//! the upstream providers; the class is where it will hook in.

use kiln_core::ErrorInfo;

/// One finished output, still in memory; the executor streams it into storage.
#[derive(Debug, Clone)]
pub struct GeneratedOutput {
    pub content_type: &'static str,
    pub extension: &'static str,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureClass {
    Retry,
    Fail,
}

#[derive(Debug, Clone)]
pub struct ProviderError {
    pub class: FailureClass,
    pub error: ErrorInfo,
}

impl ProviderError {
    pub fn retry(code: &str, message: impl Into<String>) -> Self {
        ProviderError {
            class: FailureClass::Retry,
            error: ErrorInfo::new(code, message),
        }
    }

    pub fn fail(code: &str, message: impl Into<String>) -> Self {
        ProviderError {
            class: FailureClass::Fail,
            error: ErrorInfo::new(code, message),
        }
    }
}
