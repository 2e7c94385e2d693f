//! The provider seam: what a generator or upstream returns and how its failures are classified.
//! Every failure is worth retrying on the same route (a transient fault: timeout, reset, 5xx,
//! 429), worth falling back to the next route (capacity, quota, an unavailable model, a
//! misconfigured provider), or permanent (bad input, a content-policy refusal); the executor
//! decides from that class alone. Adapters live one per file beside this one.
//!
//! An adapter whose upstream keeps working after the call that started it (Cog, ComfyUI,
//! Replicate, fal) records the upstream's handle through its attempt's `UpstreamLink` before it
//! waits, so a worker that dies mid-call leaves the handle in the ledger; the next attempt gets
//! it as `resume` and re-attaches instead of starting (and paying for) the work again. The link
//! is the only way an adapter reaches the ledger: one row, one attempt, nothing else.

use async_trait::async_trait;
use kiln_core::catalog::ModelInput;
pub use kiln_core::job::FailureClass;
use kiln_core::ledger::{AttemptNote, Lease};
use kiln_core::routes::RouteConfig;
use kiln_core::{ErrorInfo, JobId, Ledger};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One finished output: in memory, which the executor writes into storage, or somewhere else
/// (`elsewhere`): already in the store, or at a URL the executor streams into the store. The
/// media type of an output elsewhere is read from its own first bytes.
#[derive(Debug, Clone)]
pub struct GeneratedOutput {
    pub content_type: &'static str,
    pub extension: &'static str,
    /// The output's bytes; empty when `elsewhere` says where they are.
    pub bytes: Vec<u8>,
    pub elsewhere: Option<Elsewhere>,
}

#[derive(Debug, Clone)]
pub enum Elsewhere {
    /// An object the generator wrote straight into the store (a Cog upload, see `kiln_api`'s
    /// `cog_uploads`), at this key.
    Uploaded(String),
    /// A URL the upstream named (a CDN, ComfyUI's `/view`), streamed into the store rather
    /// than held in memory, and downloaded again if the store fails mid-write.
    Remote(crate::upstream::RemoteOutput),
}

impl GeneratedOutput {
    /// An output the generator already wrote into the store at `key`.
    pub fn uploaded(key: String) -> GeneratedOutput {
        Self::elsewhere(Elsewhere::Uploaded(key))
    }

    pub fn elsewhere(elsewhere: Elsewhere) -> GeneratedOutput {
        GeneratedOutput {
            content_type: "application/octet-stream",
            extension: "bin",
            bytes: Vec::new(),
            elsewhere: Some(elsewhere),
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
    pub job_id: JobId,
    /// The job's tenant: inputs that name earlier outputs are read within it only.
    pub tenant: &'a kiln_core::TenantId,
    /// Unique per attempt; sent upstream as the idempotency key where the protocol allows.
    pub attempt_id: &'a str,
    pub route: &'a RouteConfig,
    /// A handle an earlier attempt on this route started and never saw end (its worker died
    /// or was stopped): re-attach to it rather than start again.
    pub resume: Option<&'a str>,
    pub link: &'a UpstreamLink,
    /// Runs the attempt's CPU-bound work so that it stops when the attempt ends.
    pub work: &'a crate::blocking::BlockingWork,
}

impl AttemptContext<'_> {
    /// Records the upstream's handle on the attempt. Call it before waiting on the upstream
    /// (before starting the call, where the handle is chosen by Kiln).
    pub async fn record_upstream(&self, upstream_id: &str) -> Result<(), ProviderError> {
        self.link.record(upstream_id).await
    }

    /// The terminal callback the upstream pushed for `upstream_id`, once it has come.
    pub async fn callback(&self, upstream_id: &str) -> Result<Option<String>, ProviderError> {
        self.link
            .ledger
            .callback(self.job_id, upstream_id)
            .await
            .map_err(ledger_unavailable)
    }

    /// The upstream's own measure of its compute time, where it reports one; billing per
    /// second uses it instead of the wall time.
    /// How far the generator has come, as a fraction; shown on the job. Advisory: written at
    /// most once a second (and whenever it reaches 100 %), and a failed write is let go.
    pub async fn report_progress(&self, fraction: f64) {
        if !fraction.is_finite() {
            return;
        }
        let percent = (fraction.clamp(0.0, 1.0) * 100.0).floor() as u8;
        {
            let mut last = self.link.progress.lock().expect("never poisoned");
            let recent = last
                .as_ref()
                .is_some_and(|(_, at)| at.elapsed() < Duration::from_secs(1));
            let same = last.as_ref().is_some_and(|(p, _)| *p == percent);
            if same || (recent && percent < 100) {
                return;
            }
            *last = Some((percent, std::time::Instant::now()));
        }
        let note = AttemptNote {
            progress_percent: Some(percent),
            ..Default::default()
        };
        if let Err(e) = self
            .link
            .ledger
            .annotate_attempt(&self.link.lease, note)
            .await
        {
            tracing::debug!(job = %self.job_id, error = %e, "could not record progress");
        }
    }

    pub fn report_upstream_seconds(&self, seconds: f64) {
        if seconds.is_finite() && seconds >= 0.0 {
            *self.link.seconds.lock().expect("never poisoned") = Some(seconds);
        }
    }
}

fn ledger_unavailable(e: kiln_core::LedgerError) -> ProviderError {
    ProviderError::retry("internal_error", format!("the ledger is unavailable: {e}"))
}

/// An attempt's narrow path to the ledger, and what the executor learns from it afterwards.
pub struct UpstreamLink {
    ledger: Arc<dyn Ledger>,
    lease: Lease,
    recorded: Mutex<Option<String>>,
    seconds: Mutex<Option<f64>>,
    /// The percentage last written, and when.
    progress: Mutex<Option<(u8, std::time::Instant)>>,
}

impl UpstreamLink {
    pub fn new(ledger: Arc<dyn Ledger>, lease: Lease) -> Self {
        UpstreamLink {
            ledger,
            lease,
            recorded: Mutex::new(None),
            seconds: Mutex::new(None),
            progress: Mutex::new(None),
        }
    }

    async fn record(&self, upstream_id: &str) -> Result<(), ProviderError> {
        let note = AttemptNote {
            upstream_id: Some(upstream_id),
            ..Default::default()
        };
        self.ledger
            .annotate_attempt(&self.lease, note)
            .await
            .map_err(ledger_unavailable)?;
        *self.recorded.lock().expect("never poisoned") = Some(upstream_id.to_owned());
        Ok(())
    }

    /// The handle the attempt recorded, if it got that far.
    pub fn recorded(&self) -> Option<String> {
        self.recorded.lock().expect("never poisoned").clone()
    }

    pub fn upstream_seconds(&self) -> Option<f64> {
        *self.seconds.lock().expect("never poisoned")
    }
}

#[async_trait]
pub trait Provider: Send + Sync + 'static {
    async fn generate(
        &self,
        attempt: &AttemptContext<'_>,
        input: &ModelInput,
    ) -> Result<Vec<GeneratedOutput>, ProviderError>;

    /// Asks the upstream to stop the work behind `upstream_id` (the job was canceled or ran
    /// out of time). Best effort: the job's state does not wait on it.
    async fn cancel(&self, _route: &RouteConfig, _upstream_id: &str) -> Result<(), ProviderError> {
        Ok(())
    }
}
