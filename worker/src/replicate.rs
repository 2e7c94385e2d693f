//! The Replicate adapter. A route's upstream model is `owner/name` (the model's latest version,
//! `POST {base}/v1/models/{owner}/{name}/predictions`) or `owner/name:version`
//! (`POST {base}/v1/predictions` with the version). Bearer auth. The prediction's id comes back
//! in the create answer and is recorded on the attempt before Kiln waits; Kiln then polls
//! `GET {base}/v1/predictions/{id}` until the prediction is terminal, and a rescued attempt
//! re-attaches to the recorded id by polling it.
//!
//! `Prefer: wait=N` (the provider's `prefer_wait`) lets a short run answer in the create call,
//! saving the polls; it is off by default because the id only arrives with that answer, so a
//! worker that dies during the wait leaves no handle to re-attach to. Replicate takes no
//! client-chosen id or idempotency key: a create call that times out without an answer may have
//! started a prediction Kiln cannot see, which is the one case where a retry can pay twice.
//!
//! Classification: the shared HTTP reading (429 with `Retry-After`, 5xx retry; 401/403/404 fall
//! back; other 4xx fail); a failed prediction falls back, unless Replicate flagged the output
//! as NSFW, which is a content-policy failure; a canceled or aborted one is retried.

use crate::provider::{AttemptContext, GeneratedOutput, Provider, ProviderError};
use crate::upstream::{self, classify, malformed, mapped_input, output_references};
use async_trait::async_trait;
use kiln_core::catalog::ModelInput;
use kiln_core::routes::RouteConfig;
use serde_json::{json, Value};
use std::time::Duration;
use url::Url;

const WHAT: &str = "replicate";

pub struct ReplicateProvider {
    client: reqwest::Client,
    /// Downloads the outputs the upstream names (other hosts through the SSRF checks).
    outputs: upstream::OutputDownloads,
    base: Url,
    token: Option<String>,
    poll: Duration,
    prefer_wait: Option<Duration>,
}

impl ReplicateProvider {
    pub fn new(
        base: &Url,
        token: Option<String>,
        poll: Duration,
        prefer_wait: Option<Duration>,
        outputs: upstream::OutputDownloads,
    ) -> Self {
        ReplicateProvider {
            client: upstream::client(),
            outputs,
            base: base.clone(),
            token,
            poll,
            prefer_wait,
        }
    }

    fn url(&self, segments: &[&str]) -> Url {
        upstream::endpoint(&self.base, segments.iter().copied())
    }

    fn authorized(&self, call: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => call.bearer_auth(token),
            None => call,
        }
    }

    async fn create(
        &self,
        attempt: &AttemptContext<'_>,
        input: &ModelInput,
    ) -> Result<Value, ProviderError> {
        let input = mapped_input(attempt.route, input)?;
        let (url, body) = match attempt.route.model.split_once(':') {
            Some((_, version)) => (
                self.url(&["v1", "predictions"]),
                json!({"version": version, "input": input}),
            ),
            None => {
                let (owner, name) = attempt.route.model.split_once('/').ok_or_else(|| {
                    ProviderError::fall_back(
                        "route_misconfigured",
                        format!("{WHAT}: the route's model must be owner/name[:version]"),
                    )
                })?;
                (
                    self.url(&["v1", "models", owner, name, "predictions"]),
                    json!({"input": input}),
                )
            }
        };
        let mut call = self
            .authorized(self.client.post(url))
            .timeout(Duration::from_secs(30))
            .json(&body);
        if let Some(wait) = self.prefer_wait {
            let secs = wait.as_secs().clamp(1, 60);
            call = call
                .header("Prefer", format!("wait={secs}"))
                .timeout(Duration::from_secs(30 + secs));
        }
        let answer = upstream::send(call, WHAT).await?;
        if !answer.status.is_success() {
            return Err(classify(&answer, WHAT));
        }
        answer
            .json()
            .filter(|p| p["id"].is_string())
            .ok_or_else(|| malformed(WHAT, "the created prediction has no id"))
    }

    async fn fetch(&self, id: &str) -> Result<Value, ProviderError> {
        let call = self
            .authorized(self.client.get(self.url(&["v1", "predictions", id])))
            .timeout(Duration::from_secs(30));
        let answer = upstream::send(call, WHAT).await?;
        if !answer.status.is_success() {
            return Err(classify(&answer, WHAT));
        }
        answer
            .json()
            .ok_or_else(|| malformed(WHAT, "the prediction is not JSON"))
    }

    async fn outcome(
        &self,
        attempt: &AttemptContext<'_>,
        prediction: &Value,
    ) -> Option<Result<Vec<GeneratedOutput>, ProviderError>> {
        let status = prediction["status"].as_str().unwrap_or_default();
        if !matches!(status, "succeeded" | "failed" | "canceled" | "aborted") {
            return None;
        }
        if let Some(seconds) = prediction["metrics"]["predict_time"].as_f64() {
            attempt.report_upstream_seconds(seconds);
        }
        let error: String = match &prediction["error"] {
            Value::String(s) => s.chars().take(500).collect(),
            Value::Null => "no reason given".into(),
            other => other.to_string().chars().take(500).collect(),
        };
        Some(match status {
            "succeeded" => self.outputs(&prediction["output"]).await,
            "failed" if error.to_ascii_lowercase().contains("nsfw") => Err(ProviderError::fail(
                "content_policy_violation",
                format!("{WHAT}: {error}"),
            )),
            "failed" => Err(ProviderError::fall_back(
                "upstream_prediction_failed",
                format!("{WHAT}: the prediction failed: {error}"),
            )),
            _ => Err(ProviderError::retry(
                "upstream_canceled",
                format!("{WHAT}: the prediction was {status} upstream"),
            )),
        })
    }

    async fn outputs(&self, output: &Value) -> Result<Vec<GeneratedOutput>, ProviderError> {
        let references = output_references(output)
            .ok_or_else(|| malformed(WHAT, "a succeeded prediction has no file output"))?;
        let mut outputs = Vec::with_capacity(references.len());
        for r in &references {
            outputs.push(upstream::fetch_output(&self.outputs, r, WHAT).await?);
        }
        Ok(outputs)
    }
}

#[async_trait]
impl Provider for ReplicateProvider {
    async fn generate(
        &self,
        attempt: &AttemptContext<'_>,
        input: &ModelInput,
    ) -> Result<Vec<GeneratedOutput>, ProviderError> {
        let (id, mut prediction) = match attempt.resume {
            Some(id) => (id.to_owned(), self.fetch(id).await?),
            None => {
                let created = self.create(attempt, input).await?;
                let id = created["id"]
                    .as_str()
                    .expect("checked at create")
                    .to_owned();
                attempt.record_upstream(&id).await?;
                (id, created)
            }
        };
        loop {
            if let Some(result) = self.outcome(attempt, &prediction).await {
                return result;
            }
            if let Some(fraction) = prediction["logs"]
                .as_str()
                .and_then(kiln_core::progress::from_logs)
            {
                attempt.report_progress(fraction).await;
            }
            tokio::time::sleep(self.poll).await;
            prediction = self.fetch(&id).await?;
        }
    }

    async fn cancel(&self, _route: &RouteConfig, upstream_id: &str) -> Result<(), ProviderError> {
        let call = self
            .authorized(
                self.client
                    .post(self.url(&["v1", "predictions", upstream_id, "cancel"])),
            )
            .timeout(Duration::from_secs(10));
        let answer = upstream::send(call, WHAT).await?;
        if answer.status.is_success() {
            Ok(())
        } else {
            Err(classify(&answer, WHAT))
        }
    }
}
