//! The OpenAI-compatible images adapter: `POST {base_url}/v1/images/generations` with
//! `{model, prompt, size, n: 1, response_format: "b64_json"}` and a Bearer key. This reaches
//! OpenAI and the relays that speak its API. The attempt id goes out as `Idempotency-Key`, so a
//! relay that honours it does not bill a retried request twice.
//!
//! Classification follows the protocol's documented errors: 429 retries (honouring
//! `Retry-After`) unless the quota is exhausted, which falls back; 5xx, timeouts and resets
//! retry; 401/403/404 (bad key, no access, unknown model) fall back to the next route; other
//! 4xx are the input's fault and fail, a content-policy refusal included. A body that is not
//! the documented shape is a transient upstream fault, reported with a clear code.

use crate::provider::{AttemptContext, GeneratedOutput, Provider, ProviderError};
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
    endpoint: Url,
    api_key: Option<String>,
}

impl OpenAiProvider {
    pub fn new(base_url: &Url, api_key: Option<String>) -> Self {
        let endpoint = base_url
            .join("v1/images/generations")
            .expect("a base URL takes a relative path");
        OpenAiProvider {
            client: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .build()
                .expect("the HTTP client configuration is valid"),
            endpoint,
            api_key,
        }
    }
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
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
        let request = json!({
            "model": attempt.route.model,
            "prompt": input.prompt,
            "size": format!("{}x{}", input.width, input.height),
            "n": 1,
            "response_format": "b64_json",
        });
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
        items
            .iter()
            .map(|item| {
                let b64 = item["b64_json"]
                    .as_str()
                    .ok_or_else(|| malformed("no b64_json"))?;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|_| malformed("b64_json is not base64"))?;
                let (content_type, extension) = match image::guess_format(&bytes) {
                    Ok(image::ImageFormat::Png) => ("image/png", "png"),
                    Ok(image::ImageFormat::Jpeg) => ("image/jpeg", "jpg"),
                    Ok(image::ImageFormat::Gif) => ("image/gif", "gif"),
                    _ => return Err(malformed("the image is not PNG, JPEG or GIF")),
                };
                Ok(GeneratedOutput {
                    content_type,
                    extension,
                    bytes,
                })
            })
            .collect()
    }
}
