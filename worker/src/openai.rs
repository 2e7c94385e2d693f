//! The OpenAI-compatible images adapter: `POST {base_url}/v1/images/generations` with
//! `{model, prompt, size, n: 1, response_format: "b64_json"}` (plus the route's fixed inputs
//! and the model's parameters) and a Bearer key; items come back as `b64_json` or as a `url`
//! to download. This reaches
//! OpenAI and the relays that speak its API. The attempt id goes out as `Idempotency-Key`, so a
//! relay that honours it does not bill a retried request twice.
//!
//! Classification follows the protocol's documented errors: 429 retries (honouring
//! `Retry-After`) unless the quota is exhausted, which falls back; 5xx, timeouts and resets
//! retry; 401/403/404 (bad key, no access, unknown model) fall back to the next route; other
//! 4xx are the input's fault and fail, a content-policy refusal included. A body that is not
//! the documented shape is a transient upstream fault, reported with a clear code.

use crate::provider::{AttemptContext, GeneratedOutput, Provider, ProviderError};
use crate::upstream::{self, retry_after};
use async_trait::async_trait;
use base64::Engine;
use kiln_core::catalog::ModelInput;
use serde_json::{json, Value};
use std::time::Duration;
use url::Url;

/// Largest image body accepted from the upstream.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

pub struct OpenAiProvider {
    client: reqwest::Client,
    /// Downloads the outputs the upstream names (other hosts through the SSRF checks).
    outputs: upstream::OutputDownloads,
    endpoint: Url,
    api_key: Option<String>,
}

impl OpenAiProvider {
    pub fn new(
        base_url: &Url,
        api_key: Option<String>,
        outputs: upstream::OutputDownloads,
    ) -> Self {
        let endpoint = base_url
            .join("v1/images/generations")
            .expect("a base URL takes a relative path");
        OpenAiProvider {
            outputs,
            client: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .build()
                .expect("the HTTP client configuration is valid"),
            endpoint,
            api_key,
        }
    }
}

fn upstream_message(body: &Value) -> (String, String) {
    let error = &body["error"];
    let code = error["code"]
        .as_str()
        .or(error["type"].as_str())
        .unwrap_or("")
        .to_owned();
    let message = error["message"]
        .as_str()
        .unwrap_or("")
        .chars()
        .take(500)
        .collect();
    (code, message)
}

#[async_trait]
impl Provider for OpenAiProvider {
    async fn generate(
        &self,
        attempt: &AttemptContext<'_>,
        input: &ModelInput,
    ) -> Result<Vec<GeneratedOutput>, ProviderError> {
        let ModelInput::TextToImage(input) = input else {
            return Err(ProviderError::fail(
                "unsupported_input",
                "this route takes text-to-image input only",
            ));
        };
        let mut request = json!({
            "model": attempt.route.model,
            "prompt": input.prompt,
            "size": format!("{}x{}", input.width, input.height),
            "n": 1,
            "response_format": "b64_json",
        });
        // The route's fixed inputs (quality, style, `response_format = "url"`…) and the
        // model's own parameters go into the request as they are.
        let body = request.as_object_mut().expect("an object");
        body.extend(attempt.route.input.clone());
        body.extend(input.params.clone());
        let mut call = self
            .client
            .post(self.endpoint.clone())
            .header("Idempotency-Key", attempt.attempt_id)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(request.to_string());
        if let Some(key) = &self.api_key {
            call = call.bearer_auth(key);
        }
        if let Some(timeout) = attempt.route.timeout {
            call = call.timeout(timeout);
        }
        let response = call.send().await.map_err(|e| {
            if e.is_timeout() {
                ProviderError::retry("upstream_timeout", "the upstream did not answer in time")
            } else {
                ProviderError::retry(
                    "upstream_unreachable",
                    format!("could not reach the upstream: {}", e.without_url()),
                )
            }
        })?;
        let status = response.status();
        let after = retry_after(response.headers());
        let body = response.bytes().await.map_err(|e| {
            if e.is_timeout() {
                ProviderError::retry(
                    "upstream_timeout",
                    "the upstream did not finish its answer in time",
                )
            } else {
                ProviderError::retry("upstream_unreachable", "the upstream's answer broke off")
            }
        })?;
        if body.len() > MAX_RESPONSE_BYTES {
            return Err(ProviderError::fail(
                "upstream_response_too_large",
                "the upstream's answer is too large",
            ));
        }
        let parsed: Option<Value> = serde_json::from_slice(&body).ok();
        if !status.is_success() {
            let (code, message) = parsed.as_ref().map(upstream_message).unwrap_or_default();
            let detail = format!(
                "the upstream answered {status}{}{}",
                if message.is_empty() { "" } else { ": " },
                message
            );
            return Err(match status.as_u16() {
                429 if code == "insufficient_quota" => {
                    ProviderError::fall_back("upstream_quota_exhausted", detail)
                }
                429 => {
                    ProviderError::retry("upstream_rate_limited", detail).with_retry_after(after)
                }
                401 | 403 => ProviderError::fall_back("upstream_unauthorized", detail),
                404 => ProviderError::fall_back("upstream_model_unavailable", detail),
                408 | 409 => {
                    ProviderError::retry("upstream_conflict", detail).with_retry_after(after)
                }
                400..=499 if code == "content_policy_violation" => {
                    ProviderError::fail("content_policy_violation", detail)
                }
                400..=499 => ProviderError::fail("upstream_rejected_input", detail),
                _ => ProviderError::retry("upstream_error", detail).with_retry_after(after),
            });
        }
        let malformed = |why: &str| {
            ProviderError::retry(
                "upstream_malformed_response",
                format!("the upstream's answer is not a valid images response: {why}"),
            )
        };
        let parsed = parsed.ok_or_else(|| malformed("not JSON"))?;
        let items = parsed["data"]
            .as_array()
            .filter(|d| !d.is_empty())
            .ok_or_else(|| malformed("no data"))?;
        let mut outputs = Vec::with_capacity(items.len());
        for item in items {
            // `b64_json` inline, or a `url` to download (what `response_format: url` answers).
            if let Some(b64) = item["b64_json"].as_str() {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|_| malformed("b64_json is not base64"))?;
                let (content_type, extension) = upstream::sniff(&bytes)
                    .filter(|(t, _)| t.starts_with("image/"))
                    .ok_or_else(|| malformed("the image is not PNG, JPEG, GIF or WebP"))?;
                outputs.push(GeneratedOutput {
                    content_type,
                    extension,
                    bytes,
                    elsewhere: None,
                });
            } else if let Some(url) = item["url"].as_str() {
                outputs.push(upstream::fetch_output(&self.outputs, url, "openai").await?);
            } else {
                return Err(malformed("an item has neither b64_json nor url"));
            }
        }
        Ok(outputs)
    }
}
