//! The fal queue adapter. A route's upstream model is a fal model id (`fal-ai/flux/dev`):
//! `POST {base}/{model id}` with the input as the body and `Authorization: Key …` queues a
//! request and answers its `request_id` with `status_url`, `response_url` and `cancel_url`.
//! Kiln records the request id before waiting, polls the status URL until `COMPLETED`, then
//! reads the result from the response URL; cancel is `PUT` on the cancel URL.
//!
//! A rescued attempt re-attaches by rebuilding those URLs from the request id, as fal documents
//! them: `{base}/{owner}/{app}/requests/{id}/status` and `…/requests/{id}` (the app id is the
//! model id's first two segments). The result's files are the `url`s of its `images`, `image`,
//! `video` and `videos` fields, downloaded like any upstream output. fal takes no client-chosen
//! id, so as with Replicate a queue call that times out without an answer may have queued a
//! request Kiln cannot see.
//!
//! Classification: the shared HTTP reading; a result that answers an error (fal reports a
//! failed request at its response URL, 422 for a validation error) fails on 4xx and retries on
//! 5xx; content the model flagged (`has_nsfw_concepts`) is a content-policy failure.

use crate::provider::{AttemptContext, GeneratedOutput, Provider, ProviderError};
use crate::upstream::{self, classify, malformed, mapped_input};
use async_trait::async_trait;
use kiln_core::catalog::ModelInput;
use kiln_core::routes::RouteConfig;
use serde_json::Value;
use std::time::Duration;
use url::Url;

const WHAT: &str = "fal";

pub struct FalProvider {
    client: reqwest::Client,
    /// Downloads the outputs the upstream names (other hosts through the SSRF checks).
    outputs: upstream::OutputDownloads,
    base: Url,
    key: Option<String>,
    poll: Duration,
}

impl FalProvider {
    pub fn new(
        base: &Url,
        key: Option<String>,
        poll: Duration,
        outputs: upstream::OutputDownloads,
    ) -> Self {
        FalProvider {
            client: upstream::client(),
            outputs,
            base: base.clone(),
            key,
            poll,
        }
    }

    fn url(&self, path: &str, tail: &[&str]) -> Url {
        let segments = path.split('/').filter(|s| !s.is_empty());
        upstream::endpoint(&self.base, segments.chain(tail.iter().copied()))
    }

    /// The app part of a model id: `fal-ai/flux/dev` → `fal-ai/flux`.
    fn app(model: &str) -> String {
        model.split('/').take(2).collect::<Vec<_>>().join("/")
    }

    fn authorized(&self, call: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.key {
            Some(key) => call.header(reqwest::header::AUTHORIZATION, format!("Key {key}")),
            None => call,
        }
    }

    /// A URL fal answered, if it is one of this provider's (never follow one elsewhere).
    fn own_url(&self, value: &Value) -> Option<Url> {
        let url = Url::parse(value.as_str()?).ok()?;
        (url.origin() == self.base.origin()).then_some(url)
    }

    async fn call_json(
        &self,
        call: reqwest::RequestBuilder,
    ) -> Result<(u16, Value), ProviderError> {
        let answer =
            upstream::send(self.authorized(call).timeout(Duration::from_secs(30)), WHAT).await?;
        if !answer.status.is_success() {
            return Err(classify(&answer, WHAT));
        }
        let json = answer
            .json()
            .ok_or_else(|| malformed(WHAT, "the answer is not JSON"))?;
        Ok((answer.status.as_u16(), json))
    }

    fn result_files(result: &Value) -> Vec<String> {
        let mut urls = vec![];
        for field in ["images", "image", "video", "videos"] {
            let items = match &result[field] {
                Value::Array(items) => items.iter().collect(),
                Value::Object(_) => vec![&result[field]],
                _ => vec![],
            };
            urls.extend(
                items
                    .into_iter()
                    .filter_map(|i| i["url"].as_str().map(str::to_owned)),
            );
        }
        urls
    }
}

#[async_trait]
impl Provider for FalProvider {
    async fn generate(
        &self,
        attempt: &AttemptContext<'_>,
        input: &ModelInput,
    ) -> Result<Vec<GeneratedOutput>, ProviderError> {
        let model = attempt.route.model.as_str();
        let app = Self::app(model);
        let (status_url, response_url) = match attempt.resume {
            Some(id) => (
                self.url(&app, &["requests", id, "status"]),
                self.url(&app, &["requests", id]),
            ),
            None => {
                let body = mapped_input(attempt.route, input)?;
                let (_, queued) = self
                    .call_json(self.client.post(self.url(model, &[])).json(&body))
                    .await?;
                let id = queued["request_id"]
                    .as_str()
                    .ok_or_else(|| malformed(WHAT, "the queued request has no request_id"))?;
                attempt.record_upstream(id).await?;
                (
                    self.own_url(&queued["status_url"])
                        .unwrap_or_else(|| self.url(&app, &["requests", id, "status"])),
                    self.own_url(&queued["response_url"])
                        .unwrap_or_else(|| self.url(&app, &["requests", id])),
                )
            }
        };
        loop {
            let (_, status) = self.call_json(self.client.get(status_url.clone())).await?;
            match status["status"].as_str() {
                Some("COMPLETED") => break,
                Some("IN_QUEUE" | "IN_PROGRESS") => tokio::time::sleep(self.poll).await,
                other => return Err(malformed(WHAT, &format!("unknown queue status {other:?}"))),
            }
        }
        let answer = upstream::send(
            self.authorized(self.client.get(response_url))
                .timeout(Duration::from_secs(60)),
            WHAT,
        )
        .await?;
        if !answer.status.is_success() {
            return Err(classify(&answer, WHAT));
        }
        let result = answer
            .json()
            .ok_or_else(|| malformed(WHAT, "the result is not JSON"))?;
        if let Some(seconds) = result["timings"]["inference"].as_f64() {
            attempt.report_upstream_seconds(seconds);
        }
        let flagged = result["has_nsfw_concepts"]
            .as_array()
            .is_some_and(|flags| flags.iter().any(|f| f.as_bool() == Some(true)));
        if flagged {
            return Err(ProviderError::fail(
                "content_policy_violation",
                format!("{WHAT}: the model flagged its output as NSFW"),
            ));
        }
        let files = Self::result_files(&result);
        if files.is_empty() {
            return Err(malformed(WHAT, "the result holds no image or video"));
        }
        let mut outputs = Vec::with_capacity(files.len());
        for f in &files {
            outputs.push(upstream::fetch_output(&self.outputs, f, WHAT).await?);
        }
        Ok(outputs)
    }

    async fn cancel(&self, route: &RouteConfig, upstream_id: &str) -> Result<(), ProviderError> {
        let url = self.url(
            &Self::app(&route.model),
            &["requests", upstream_id, "cancel"],
        );
        let answer = upstream::send(
            self.authorized(self.client.put(url))
                .timeout(Duration::from_secs(10)),
            WHAT,
        )
        .await?;
        // 400 `ALREADY_COMPLETED`: nothing is left to stop.
        if answer.status.is_success() || answer.status == reqwest::StatusCode::BAD_REQUEST {
            Ok(())
        } else {
            Err(classify(&answer, WHAT))
        }
    }
}
