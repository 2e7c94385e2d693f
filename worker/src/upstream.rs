//! What the HTTP adapters share: one way to send a call and read its answer within a size
//! bound, one reading of HTTP statuses as failure classes, one reading of `Retry-After`, and
//! one way to turn an upstream's output (a data URI or a URL) into bytes with a known media
//! type. Each adapter keeps only what its protocol says differently.

use crate::provider::{Elsewhere, GeneratedOutput, ProviderError};
use base64::Engine;
use bytes::Bytes;
use futures::StreamExt;
use kiln_core::catalog::{ModelInput, TextToImageInput};
use kiln_core::routes::RouteConfig;
use reqwest::header::HeaderMap;
use reqwest::{RequestBuilder, StatusCode};
use serde_json::{Map, Value};
use std::time::Duration;

/// Largest answer (a JSON body, a data URI, a downloaded output) read from an upstream.
pub const MAX_ANSWER_BYTES: usize = 256 * 1024 * 1024;

/// The HTTP client every adapter uses: no proxy from the environment (upstreams are named in
/// configuration), a bounded connect, no redirects for API calls.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .expect("the HTTP client configuration is valid")
}

/// `base` with path segments appended, each escaped (ids and model names are data, not paths).
pub fn endpoint<'a>(base: &url::Url, segments: impl IntoIterator<Item = &'a str>) -> url::Url {
    let mut url = base.clone();
    url.path_segments_mut()
        .expect("an http(s) base URL has a path")
        .pop_if_empty()
        .extend(segments);
    url
}

/// One upstream answer, read whole.
pub struct Answer {
    pub status: StatusCode,
    pub retry_after: Option<Duration>,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// A short, printable excerpt of the body for error messages.
    pub fn excerpt(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let message = self
            .json()
            .and_then(|v| {
                ["detail", "error", "message", "title"]
                    .iter()
                    .find_map(|k| match &v[*k] {
                        Value::String(s) => Some(s.clone()),
                        Value::Object(o) => {
                            o.get("message").and_then(|m| m.as_str()).map(str::to_owned)
                        }
                        _ => None,
                    })
            })
            .unwrap_or_else(|| text.into_owned());
        message.chars().take(300).collect()
    }
}

/// Sends a call and reads its answer. Connection failures and timeouts are transient.
pub async fn send(call: RequestBuilder, what: &str) -> Result<Answer, ProviderError> {
    let response = call.send().await.map_err(|e| {
        if e.is_timeout() {
            ProviderError::retry(
                "upstream_timeout",
                format!("{what}: the upstream did not answer in time"),
            )
        } else {
            ProviderError::retry(
                "upstream_unreachable",
                format!("{what}: could not reach the upstream: {}", e.without_url()),
            )
        }
    })?;
    let status = response.status();
    let retry_after = retry_after(response.headers());
    let body = read_bounded(response, what).await?;
    Ok(Answer {
        status,
        retry_after,
        body,
    })
}

async fn read_bounded(response: reqwest::Response, what: &str) -> Result<Bytes, ProviderError> {
    if response
        .content_length()
        .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
    {
        return Err(too_large(what));
    }
    let mut body = Vec::new();
    let mut chunks = response.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| {
            if e.is_timeout() {
                ProviderError::retry(
                    "upstream_timeout",
                    format!("{what}: the answer did not finish in time"),
                )
            } else {
                ProviderError::retry(
                    "upstream_unreachable",
                    format!("{what}: the answer broke off"),
                )
            }
        })?;
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(too_large(what));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.into())
}

fn too_large(what: &str) -> ProviderError {
    ProviderError::fail(
        "upstream_response_too_large",
        format!("{what}: the upstream's answer is larger than {MAX_ANSWER_BYTES} bytes"),
    )
}

/// `Retry-After` in seconds (the form upstreams use for rate limits).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
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

/// The common reading of a non-success status: 429, 408, 409 and 5xx are transient; 401, 403
/// and 404 mean this route cannot serve (bad key, no access, unknown model) and fall back; any
/// other 4xx is the input's fault.
pub fn classify(answer: &Answer, what: &str) -> ProviderError {
    let detail = format!(
        "{what}: the upstream answered {}: {}",
        answer.status,
        answer.excerpt()
    );
    let after = answer.retry_after;
    match answer.status.as_u16() {
        429 => ProviderError::retry("upstream_rate_limited", detail).with_retry_after(after),
        408 | 409 => ProviderError::retry("upstream_conflict", detail).with_retry_after(after),
        401 | 403 => ProviderError::fall_back("upstream_unauthorized", detail),
        404 => ProviderError::fall_back("upstream_model_unavailable", detail),
        400..=499 => ProviderError::fail("upstream_rejected_input", detail),
        _ => ProviderError::retry("upstream_error", detail).with_retry_after(after),
    }
}

/// An answer that is not the protocol's documented shape: a transient upstream fault.
pub fn malformed(what: &str, why: &str) -> ProviderError {
    ProviderError::retry(
        "upstream_malformed_response",
        format!("{what}: the upstream's answer is not the documented shape: {why}"),
    )
}

/// The media type and file extension of an output, from its first bytes.
pub fn sniff(bytes: &[u8]) -> Option<(&'static str, &'static str)> {
    let format = match image::guess_format(bytes) {
        Ok(image::ImageFormat::Png) => Some(("image/png", "png")),
        Ok(image::ImageFormat::Jpeg) => Some(("image/jpeg", "jpg")),
        Ok(image::ImageFormat::Gif) => Some(("image/gif", "gif")),
        Ok(image::ImageFormat::WebP) => Some(("image/webp", "webp")),
        _ => None,
    };
    format.or_else(|| {
        if bytes.len() > 12 && &bytes[4..8] == b"ftyp" {
            Some(("video/mp4", "mp4"))
        } else if bytes.starts_with(&[0x1a, 0x45, 0xdf, 0xa3]) {
            Some(("video/webm", "webm"))
        } else {
            None
        }
    })
}

/// How a provider downloads the outputs its upstream names. A URL on the upstream's own origin
/// (ComfyUI's `/view`, a fake or self-hosted server) is fetched like any call to that configured
/// upstream; any other URL (a CDN such as Replicate's or fal's) is the upstream's say-so, not the
/// operator's, so it goes through the SSRF-safe client with the users' own address checks: a
/// misbehaving or compromised provider cannot make a worker fetch an internal address.
#[derive(Clone)]
pub struct OutputDownloads {
    upstream: reqwest::Client,
    origin: url::Origin,
    elsewhere: kiln_webhooks::SafeClient,
    max_bytes: u64,
}

/// The longest one output download may take: outputs can be long videos.
const OUTPUT_DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(600);

impl OutputDownloads {
    /// Downloads for the upstream at `base`, each at most `max_bytes`
    /// (`outputs.max_output_bytes`); other hosts as `policy` allows.
    pub fn new(base: &url::Url, policy: kiln_webhooks::SsrfPolicy, max_bytes: u64) -> Self {
        OutputDownloads {
            upstream: client(),
            origin: base.origin(),
            elsewhere: kiln_webhooks::SafeClient::new(policy, OUTPUT_DOWNLOAD_TIMEOUT),
            max_bytes,
        }
    }

    /// The most bytes one output may have.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Starts downloading an output: its answer, checked (status, a declared length) but with
    /// its body unread, for the caller to stream into the store.
    pub async fn open(
        &self,
        url: &url::Url,
        what: &str,
    ) -> Result<reqwest::Response, ProviderError> {
        let response = if url.origin() == self.origin {
            let response = self
                .upstream
                .get(url.clone())
                .timeout(OUTPUT_DOWNLOAD_TIMEOUT)
                .send()
                .await
                .map_err(|e| {
                    ProviderError::retry(
                        "upstream_output_unavailable",
                        format!("{what}: downloading an output failed: {}", e.without_url()),
                    )
                })?;
            if !response.status().is_success() {
                return Err(ProviderError::retry(
                    "upstream_output_unavailable",
                    format!(
                        "{what}: downloading an output answered {}",
                        response.status()
                    ),
                ));
            }
            response
        } else {
            self.elsewhere
                .open(url, self.max_bytes, &[])
                .await
                .map_err(|e| download_error(e, what, self.max_bytes))?
        };
        if response
            .content_length()
            .is_some_and(|n| n > self.max_bytes)
        {
            return Err(output_too_large(what, self.max_bytes));
        }
        Ok(response)
    }
}

/// An output larger than `outputs.max_output_bytes`.
pub fn output_too_large(what: &str, max_bytes: u64) -> ProviderError {
    ProviderError::fail(
        "upstream_output_too_large",
        format!("{what}: an output is larger than {max_bytes} bytes (outputs.max_output_bytes)"),
    )
}

fn download_error(e: kiln_webhooks::FetchError, what: &str, max_bytes: u64) -> ProviderError {
    use kiln_webhooks::FetchError;
    match e {
        FetchError::Forbidden(why) => ProviderError::fail(
            "upstream_output_url_forbidden",
            format!("{what}: the upstream named an output URL Kiln may not fetch: {why}"),
        ),
        FetchError::TooLarge(_) => output_too_large(what, max_bytes),
        // A redirect is not followed (it could lead anywhere); asking again would be
        // answered the same, so the attempt fails with the reason.
        FetchError::Status(code) => ProviderError::retry(
            "upstream_output_unavailable",
            format!("{what}: downloading an output answered {code}"),
        ),
        other if other.is_transient() => ProviderError::retry(
            "upstream_output_unavailable",
            format!("{what}: downloading an output failed: {other}"),
        ),
        other => ProviderError::fail(
            "upstream_output_unavailable",
            format!("{what}: downloading an output failed: {other}"),
        ),
    }
}

/// An output an upstream named by URL: `crate::outputs` streams it into the store.
#[derive(Clone)]
pub struct RemoteOutput {
    pub downloads: OutputDownloads,
    pub url: url::Url,
    /// The upstream's kind, for messages.
    pub what: String,
}

impl std::fmt::Debug for RemoteOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteOutput")
            .field("url", &self.url.as_str())
            .finish()
    }
}

/// One output as an upstream gives it: a `data:` URI inline, or an http(s) URL to download
/// (streamed into the store by the executor, never held whole).
pub async fn fetch_output(
    downloads: &OutputDownloads,
    reference: &str,
    what: &str,
) -> Result<GeneratedOutput, ProviderError> {
    let Some(rest) = reference.strip_prefix("data:") else {
        let url = url::Url::parse(reference)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| malformed(what, "an output is neither a data URI nor an http(s) URL"))?;
        // Not read here: the executor streams it into the store.
        return Ok(GeneratedOutput::elsewhere(Elsewhere::Remote(
            RemoteOutput {
                downloads: downloads.clone(),
                url,
                what: what.to_owned(),
            },
        )));
    };
    // A data URI arrived inside the upstream's answer, so it is in memory already.
    let (meta, data) = rest
        .split_once(',')
        .ok_or_else(|| malformed(what, "an output data URI has no comma"))?;
    if !meta.ends_with(";base64") {
        return Err(malformed(what, "an output data URI is not base64"));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|_| malformed(what, "an output data URI is not valid base64"))?;
    let (content_type, extension) = sniff(&bytes)
        .ok_or_else(|| malformed(what, "an output is not a known image or video format"))?;
    Ok(GeneratedOutput {
        content_type,
        extension,
        bytes,
        elsewhere: None,
    })
}

/// The outputs of a prediction-style answer: a string or a list of strings.
pub fn output_references(output: &Value) -> Option<Vec<String>> {
    match output {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(|i| i.as_str().map(str::to_owned))
            .collect(),
        _ => None,
    }
}

/// The upstream input for a route: the route's fixed inputs, then the job's (prompt, size,
/// seed and the model's own parameters), each under the name the route renames it to.
pub fn mapped_input(
    route: &RouteConfig,
    input: &ModelInput,
) -> Result<Map<String, Value>, ProviderError> {
    let ModelInput::TextToImage(TextToImageInput {
        prompt,
        width,
        height,
        seed,
        params,
    }) = input
    else {
        return Err(ProviderError::fail(
            "unsupported_input",
            "this route takes a configured model's input only",
        ));
    };
    let mut out = route.input.clone();
    let mut put = |name: &str, value: Value| {
        let target = route.rename.get(name).map(String::as_str).unwrap_or(name);
        out.insert(target.to_owned(), value);
    };
    put("prompt", prompt.clone().into());
    put("width", (*width).into());
    put("height", (*height).into());
    if let Some(seed) = seed {
        put("seed", (*seed).into());
    }
    for (name, value) in params {
        put(name, value.clone());
    }
    Ok(out)
}
