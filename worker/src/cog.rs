//! The Cog adapter. A Cog server runs one model; Kiln starts a prediction with
//! `PUT {base}/predictions/{id}` (`Prefer: respond-async`) and a webhook back to its own api,
//! then waits for that webhook to land in the ledger. The prediction id is Kiln's attempt id,
//! recorded on the attempt before the request goes out.
//!
//! Why a webhook and not the synchronous form: a prediction outlives the worker that started it.
//! If the worker dies, the prediction finishes anyway and its webhook reaches the api, which
//! keeps it for the job; the next attempt re-attaches to the recorded id and finds the result (or
//! keeps waiting), without a second `PUT`: a Cog server dedupes a `PUT` only while the prediction
//! runs, so a second one after it ends would run (and cost) the model twice. Cog does not sign
//! webhooks, so the callback URL carries a token bound to the job and the prediction
//! (`kiln_core::callbacks`). Only the terminal webhook is asked for; Cog retries only that one.
//!
//! Before a prediction starts, `GET /health-check` makes sure the server is not `SETUP_FAILED`
//! or `DEFUNCT` (either falls back to the next route).
//!
//! Classification: a busy server (409) is transient and retried after a pause; 422 is the
//! input's fault; a prediction that fails is the model's failure and falls back to the next
//! route; a prediction canceled by someone else is retried.

use crate::provider::{AttemptContext, GeneratedOutput, Provider, ProviderError};
use crate::upstream::{self, classify, malformed, mapped_input, output_references};
use async_trait::async_trait;
use kiln_core::callbacks::UploadHandle;
use kiln_core::catalog::ModelInput;
use kiln_core::routes::RouteConfig;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use url::Url;

const WHAT: &str = "cog";

/// Where upstreams post their results, and the key that signs those URLs.
#[derive(Clone)]
pub struct CallbackSettings {
    pub base: Url,
    pub secret: Arc<[u8]>,
}

pub struct CogProvider {
    client: reqwest::Client,
    outputs: upstream::OutputDownloads,
    base: Url,
    callbacks: CallbackSettings,
    poll: Duration,
}

impl CogProvider {
    pub fn new(
        base: &Url,
        callbacks: CallbackSettings,
        poll: Duration,
        outputs: upstream::OutputDownloads,
    ) -> Self {
        CogProvider {
            client: upstream::client(),
            outputs,
            base: base.clone(),
            callbacks,
            poll,
        }
    }

    fn prediction_url(&self, id: &str, tail: &[&str]) -> Url {
        let segments = ["predictions", id].into_iter().chain(tail.iter().copied());
        upstream::endpoint(&self.base, segments)
    }

    /// `GET /health-check`: a server whose model failed to load (`SETUP_FAILED`) or whose
    /// worker died (`DEFUNCT`) will not serve this route; anything else may take a prediction
    /// (a busy one answers 409 to the `PUT`).
    async fn check_health(&self) -> Result<(), ProviderError> {
        let url = upstream::endpoint(&self.base, ["health-check"]);
        let call = self.client.get(url).timeout(Duration::from_secs(10));
        let answer = upstream::send(call, WHAT).await?;
        if !answer.status.is_success() {
            return Err(classify(&answer, WHAT));
        }
        let health = answer.json().unwrap_or_default();
        match health["status"].as_str() {
            Some(status @ ("SETUP_FAILED" | "DEFUNCT")) => Err(ProviderError::fall_back(
                "upstream_unavailable",
                format!("{WHAT}: the server reports {status}"),
            )),
            _ => Ok(()),
        }
    }

    async fn start(
        &self,
        attempt: &AttemptContext<'_>,
        id: &str,
        input: &ModelInput,
    ) -> Result<(), ProviderError> {
        let webhook = kiln_core::callbacks::url(
            &self.callbacks.base,
            &self.callbacks.secret,
            attempt.job_id,
            id,
        );
        let body = json!({
            "id": id,
            "input": mapped_input(attempt.route, input)?,
            "webhook": webhook.as_str(),
            // `logs` too: Cog's log events carry the model's progress bar (throttled by Cog).
            "webhook_events_filter": ["logs", "completed"],
        });
        let call = self
            .client
            .put(self.prediction_url(id, &[]))
            .header("Prefer", "respond-async")
            .timeout(Duration::from_secs(30))
            .json(&body);
        let answer = upstream::send(call, WHAT).await?;
        match answer.status.as_u16() {
            200..=299 => Ok(()),
            // One prediction at a time per slot: the server is busy with someone else's.
            409 => Err(ProviderError::retry(
                "upstream_busy",
                format!("{WHAT}: every prediction slot is busy"),
            )
            .with_retry_after(answer.retry_after.or(Some(Duration::from_secs(1))))),
            422 => Err(ProviderError::fail(
                "upstream_rejected_input",
                format!("{WHAT}: the model refused the input: {}", answer.excerpt()),
            )),
            _ => Err(classify(&answer, WHAT)),
        }
    }

    async fn finish(
        &self,
        attempt: &AttemptContext<'_>,
        prediction_id: &str,
        body: &str,
    ) -> Result<Vec<GeneratedOutput>, ProviderError> {
        let prediction: Value = serde_json::from_str(body)
            .map_err(|_| malformed(WHAT, "the webhook body is not JSON"))?;
        if let Some(seconds) = prediction["metrics"]["predict_time"].as_f64() {
            attempt.report_upstream_seconds(seconds);
        }
        let error = || {
            prediction["error"]
                .as_str()
                .unwrap_or("no reason given")
                .chars()
                .take(500)
                .collect::<String>()
        };
        match prediction["status"].as_str() {
            Some("succeeded") => {
                let references = output_references(&prediction["output"])
                    .ok_or_else(|| malformed(WHAT, "a succeeded prediction has no file output"))?;
                let uploads = UploadHandle::verify(&self.callbacks.secret, prediction_id)
                    .map(|handle| handle.key_prefix());
                let mut outputs = Vec::with_capacity(references.len());
                for r in &references {
                    outputs.push(match uploaded_key(r, uploads.as_deref()) {
                        Some(key) => GeneratedOutput::uploaded(key),
                        None => upstream::fetch_output(&self.outputs, r, WHAT).await?,
                    });
                }
                Ok(outputs)
            }
            Some("failed") => Err(ProviderError::fall_back(
                "upstream_prediction_failed",
                format!("{WHAT}: the prediction failed: {}", error()),
            )),
            Some("canceled") => Err(ProviderError::retry(
                "upstream_canceled",
                format!("{WHAT}: the prediction was canceled upstream"),
            )),
            other => Err(malformed(
                WHAT,
                &format!("unexpected terminal status {other:?}"),
            )),
        }
    }
}

/// The object key of an output Cog uploaded to Kiln for this prediction: its URL is Kiln's
/// download path of a key under the prediction's own upload prefix (`Location` of the upload,
/// see `kiln_api`'s `cog_uploads`). Any other URL, another attempt's upload included, is not
/// ours to take from the store and is fetched like any upstream output.
fn uploaded_key(reference: &str, prefix: Option<&str>) -> Option<String> {
    let url = Url::parse(reference).ok()?;
    let key = url.path().strip_prefix(kiln_storage::FILES_PATH)?;
    let rest = key.strip_prefix(prefix?)?;
    (!rest.is_empty() && !rest.contains('/') && kiln_storage::validate_key(key).is_ok())
        .then(|| key.to_owned())
}

#[async_trait]
impl Provider for CogProvider {
    async fn generate(
        &self,
        attempt: &AttemptContext<'_>,
        input: &ModelInput,
    ) -> Result<Vec<GeneratedOutput>, ProviderError> {
        // The prediction id is the credential of its file uploads (see `UploadHandle`).
        let id = match attempt.resume {
            Some(id) => id.to_owned(),
            None => UploadHandle::mint(&self.callbacks.secret, attempt.attempt_id),
        };
        if attempt.resume.is_none() {
            self.check_health().await?;
        }
        // Recorded before the request: if this worker dies after Cog accepted the prediction,
        // the ledger already says which prediction the job is waiting on.
        attempt.record_upstream(&id).await?;
        match attempt.resume {
            Some(_) => {
                tracing::info!(job = %attempt.job_id, prediction = %id, "re-attaching to a running prediction")
            }
            None => self.start(attempt, &id, input).await?,
        }
        // The result arrives at the api as a webhook and lands in the ledger; the executor's
        // deadline bounds the wait.
        loop {
            if let Some(body) = attempt.callback(&id).await? {
                return self.finish(attempt, &id, &body).await;
            }
            tokio::time::sleep(self.poll).await;
        }
    }

    async fn cancel(&self, _route: &RouteConfig, upstream_id: &str) -> Result<(), ProviderError> {
        let call = self
            .client
            .post(self.prediction_url(upstream_id, &["cancel"]))
            .timeout(Duration::from_secs(10));
        let answer = upstream::send(call, WHAT).await?;
        // 404: the prediction already ended (or never started); nothing is left to stop.
        if answer.status.is_success() || answer.status == reqwest::StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(classify(&answer, WHAT))
        }
    }
}
