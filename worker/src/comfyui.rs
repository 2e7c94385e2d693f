//! The ComfyUI adapter. A route names a workflow file (ComfyUI's API format: node id →
//! `{class_type, inputs}`) and maps each Kiln input to the node field it fills with `rename`
//! (`prompt = "6.text"`, `seed = "3.seed"`); inputs mapped to no `node.field` are left out, so a
//! workflow with a fixed size simply does not map `width` and `height`. Kiln queues the filled
//! workflow with `POST {base}/prompt`, choosing the prompt id itself (the attempt id, recorded
//! before the request), polls `GET {base}/history/{prompt_id}` until the run is recorded, and
//! downloads each output file the run saved with `GET {base}/view`. Because the id is Kiln's, a
//! rescued attempt re-attaches by polling the same history entry, and a queue call that timed
//! out is never repeated blind. Cancel interrupts the prompt if it runs and deletes it from the
//! queue if it waits.
//!
//! Classification: the shared HTTP reading; a workflow ComfyUI refuses (400 with node errors)
//! means the route is misconfigured and falls back; a run that ends in an execution error is
//! the model's failure and falls back too.

use crate::provider::{AttemptContext, GeneratedOutput, Provider, ProviderError};
use crate::upstream::{self, classify, malformed, mapped_input};
use async_trait::async_trait;
use kiln_core::catalog::ModelInput;
use kiln_core::routes::RouteConfig;
use serde_json::{json, Map, Value};
use std::time::Duration;
use url::Url;

const WHAT: &str = "comfyui";

pub struct ComfyUiProvider {
    client: reqwest::Client,
    /// Downloads the outputs the upstream names (other hosts through the SSRF checks).
    outputs: upstream::OutputDownloads,
    base: Url,
    poll: Duration,
}

/// Reads a route's workflow and checks it is ComfyUI's API format (an object of nodes).
pub fn load_workflow(path: &std::path::Path) -> Result<Map<String, Value>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the workflow {}: {e}", path.display()))?;
    let workflow: Value = serde_json::from_str(&text)
        .map_err(|e| format!("the workflow {} is not JSON: {e}", path.display()))?;
    match workflow {
        Value::Object(nodes) if nodes.values().all(|n| n["inputs"].is_object()) => Ok(nodes),
        _ => Err(format!(
            "the workflow {} is not in ComfyUI's API format (node id → {{class_type, inputs}})",
            path.display()
        )),
    }
}

fn misconfigured(why: String) -> ProviderError {
    ProviderError::fall_back("route_misconfigured", format!("{WHAT}: {why}"))
}

impl ComfyUiProvider {
    pub fn new(base: &Url, poll: Duration, outputs: upstream::OutputDownloads) -> Self {
        ComfyUiProvider {
            client: upstream::client(),
            outputs,
            base: base.clone(),
            poll,
        }
    }

    fn url(&self, segments: &[&str]) -> Url {
        upstream::endpoint(&self.base, segments.iter().copied())
    }

    /// The route's workflow with the job's inputs written into the node fields they map to.
    fn filled_workflow(route: &RouteConfig, input: &ModelInput) -> Result<Value, ProviderError> {
        let path = route
            .workflow
            .as_ref()
            .ok_or_else(|| misconfigured("the route names no workflow".into()))?;
        let mut nodes = load_workflow(path).map_err(misconfigured)?;
        for (target, value) in mapped_input(route, input)? {
            let Some((node, field)) = target.split_once('.') else {
                continue;
            };
            let inputs = nodes
                .get_mut(node)
                .and_then(|n| n["inputs"].as_object_mut())
                .ok_or_else(|| misconfigured(format!("the workflow has no node '{node}'")))?;
            inputs.insert(field.to_owned(), value);
        }
        Ok(Value::Object(nodes))
    }

    async fn queue(&self, prompt_id: &str, workflow: Value) -> Result<String, ProviderError> {
        let call = self
            .client
            .post(self.url(&["prompt"]))
            .timeout(Duration::from_secs(30))
            .json(&json!({"prompt": workflow, "prompt_id": prompt_id, "client_id": "kiln"}));
        let answer = upstream::send(call, WHAT).await?;
        if answer.status == reqwest::StatusCode::BAD_REQUEST {
            return Err(misconfigured(format!(
                "the server refused the workflow: {}",
                answer.excerpt()
            )));
        }
        if !answer.status.is_success() {
            return Err(classify(&answer, WHAT));
        }
        answer
            .json()
            .and_then(|v| v["prompt_id"].as_str().map(str::to_owned))
            .ok_or_else(|| malformed(WHAT, "the queued prompt has no prompt_id"))
    }

    /// The prompt's history entry once the run is over; `None` while it waits or runs.
    async fn history(&self, prompt_id: &str) -> Result<Option<Value>, ProviderError> {
        let call = self
            .client
            .get(self.url(&["history", prompt_id]))
            .timeout(Duration::from_secs(30));
        let answer = upstream::send(call, WHAT).await?;
        if !answer.status.is_success() {
            return Err(classify(&answer, WHAT));
        }
        let history = answer
            .json()
            .ok_or_else(|| malformed(WHAT, "the history is not JSON"))?;
        let entry = &history[prompt_id];
        let done = entry["status"]["completed"].as_bool() == Some(true)
            || entry["status"]["status_str"].as_str() == Some("error");
        Ok(done.then(|| entry.clone()))
    }

    async fn outputs(&self, entry: &Value) -> Result<Vec<GeneratedOutput>, ProviderError> {
        if entry["status"]["status_str"].as_str() == Some("error") {
            let reason = entry["status"]["messages"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|m| m[0] == "execution_error")
                .and_then(|m| m[1]["exception_message"].as_str())
                .unwrap_or("no reason given")
                .chars()
                .take(500)
                .collect::<String>();
            return Err(ProviderError::fall_back(
                "upstream_prediction_failed",
                format!("{WHAT}: the workflow failed: {reason}"),
            ));
        }
        let mut files = vec![];
        let nodes = entry["outputs"].as_object().cloned().unwrap_or_default();
        for node in nodes.values() {
            for kind in ["images", "gifs", "videos"] {
                for file in node[kind].as_array().into_iter().flatten() {
                    // `temp` files are previews; only `output` files are the run's results.
                    if file["type"].as_str().unwrap_or("output") == "output" {
                        files.push(file.clone());
                    }
                }
            }
        }
        if files.is_empty() {
            return Err(malformed(WHAT, "the run saved no output file"));
        }
        let mut outputs = Vec::with_capacity(files.len());
        for file in &files {
            let filename = file["filename"]
                .as_str()
                .ok_or_else(|| malformed(WHAT, "an output file has no filename"))?;
            let mut url = self.url(&["view"]);
            url.query_pairs_mut()
                .append_pair("filename", filename)
                .append_pair("subfolder", file["subfolder"].as_str().unwrap_or(""))
                .append_pair("type", "output");
            outputs.push(upstream::fetch_output(&self.outputs, url.as_str(), WHAT).await?);
        }
        Ok(outputs)
    }
}

#[async_trait]
impl Provider for ComfyUiProvider {
    async fn generate(
        &self,
        attempt: &AttemptContext<'_>,
        input: &ModelInput,
    ) -> Result<Vec<GeneratedOutput>, ProviderError> {
        let prompt_id = match attempt.resume {
            Some(id) => id.to_owned(),
            None => {
                let workflow = Self::filled_workflow(attempt.route, input)?;
                attempt.record_upstream(attempt.attempt_id).await?;
                let queued = self.queue(attempt.attempt_id, workflow).await?;
                if queued != attempt.attempt_id {
                    // A server too old to take a client's prompt id chose its own.
                    attempt.record_upstream(&queued).await?;
                }
                queued
            }
        };
        loop {
            if let Some(entry) = self.history(&prompt_id).await? {
                return self.outputs(&entry).await;
            }
            tokio::time::sleep(self.poll).await;
        }
    }

    async fn cancel(&self, _route: &RouteConfig, upstream_id: &str) -> Result<(), ProviderError> {
        // Interrupt it if it runs (naming it, so another prompt is never interrupted), and
        // take it off the queue if it waits.
        let interrupt = self
            .client
            .post(self.url(&["interrupt"]))
            .timeout(Duration::from_secs(10))
            .json(&json!({"prompt_id": upstream_id}));
        let answer = upstream::send(interrupt, WHAT).await?;
        if !answer.status.is_success() {
            return Err(classify(&answer, WHAT));
        }
        let delete = self
            .client
            .post(self.url(&["queue"]))
            .timeout(Duration::from_secs(10))
            .json(&json!({"delete": [upstream_id]}));
        let answer = upstream::send(delete, WHAT).await?;
        if !answer.status.is_success() {
            return Err(classify(&answer, WHAT));
        }
        Ok(())
    }
}
