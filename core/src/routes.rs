//! Models and their route chains, as configured. A configured model maps to an ordered chain of
//! routes; each route names a provider (an upstream such as an OpenAI-compatible images API, or
//! the built-in `demo` generator) and the upstream model to ask for, with its own timeout and
//! attempt budget. The executor walks the chain: transient failures retry on the same route,
//! capacity and availability failures fall back to the next one.

use serde::{Deserialize, Serialize};
use std::time::Duration;
use url::Url;

/// The built-in provider that runs Kiln's demo generators.
pub const DEMO_PROVIDER: &str = "demo";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// `POST {base_url}/v1/images/generations`: OpenAI and the relays that speak its API.
    Openai,
    /// A Cog server: `PUT {base_url}/predictions/{id}`, its result pushed back to Kiln.
    Cog,
    /// A ComfyUI server: `POST {base_url}/prompt` with the route's workflow.
    Comfyui,
    /// Replicate's HTTP API: `POST {base_url}/v1/models/{owner}/{name}/predictions`.
    Replicate,
    /// fal's queue: `POST {base_url}/{model}` and the status, result and cancel URLs it answers.
    Fal,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: ProviderKind,
    pub base_url: Url,
    /// Environment variable holding the API key (never the key itself in configuration).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Or a file holding it (a mounted secret); read at start, trailing whitespace dropped.
    #[serde(default)]
    pub api_key_file: Option<std::path::PathBuf>,
    /// Calls to this provider at once, across all workers; absent, no cap.
    #[serde(default)]
    pub max_concurrency: Option<u32>,
    /// At most `requests` call starts per `per`, across all workers; absent, no limit.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    /// How long a call waits for a free slot under the cap (or the rate limit) before falling
    /// back.
    #[serde(default = "default_capacity_wait", with = "humantime_serde")]
    pub capacity_wait: Duration,
    /// How often a call that waits on the upstream looks for its result (a pushed callback in
    /// the ledger, or the upstream's status endpoint).
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Replicate only: ask for the result in the create call (`Prefer: wait=N`, N ≤ 60 s).
    /// Saves polling on short runs, but a worker that dies during the wait cannot re-attach.
    #[serde(default, with = "humantime_serde::option")]
    pub prefer_wait: Option<Duration>,
    /// Consecutive failures that open this provider's circuit.
    #[serde(default = "default_circuit_failures")]
    pub circuit_failures: u32,
    /// How long an open circuit waits before it lets one probe through.
    #[serde(default = "default_circuit_cooldown", with = "humantime_serde")]
    pub circuit_cooldown: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub requests: u32,
    #[serde(with = "humantime_serde")]
    pub per: Duration,
}

fn default_capacity_wait() -> Duration {
    Duration::from_secs(60)
}

fn default_poll_interval() -> Duration {
    Duration::from_millis(500)
}

fn default_circuit_failures() -> u32 {
    5
}

fn default_circuit_cooldown() -> Duration {
    Duration::from_secs(30)
}

impl std::fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("base_url", &self.base_url.as_str())
            .field("api_key_env", &self.api_key_env)
            .field("api_key_file", &self.api_key_file)
            .field("max_concurrency", &self.max_concurrency)
            .field("rate_limit", &self.rate_limit)
            .field("circuit_failures", &self.circuit_failures)
            .field("circuit_cooldown", &self.circuit_cooldown)
            .finish()
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub provider: String,
    /// The upstream model (for `demo`, a demo model name).
    pub model: String,
    /// Longest one attempt on this route may take.
    #[serde(default, with = "humantime_serde::option")]
    pub timeout: Option<Duration>,
    /// Attempts on this route before falling back (transient failures only).
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Fixed upstream inputs this route always sends (a scheduler, a step count); the job's
    /// own inputs override them.
    #[serde(default)]
    pub input: serde_json::Map<String, serde_json::Value>,
    /// Renames Kiln's input names to the upstream's (`prompt = "text"`); for ComfyUI, maps
    /// each input to the `node.field` of the workflow it fills.
    #[serde(default)]
    pub rename: std::collections::BTreeMap<String, String>,
    /// For ComfyUI, the workflow (API format, as JSON) this route queues.
    #[serde(default)]
    pub workflow: Option<std::path::PathBuf>,
    /// What one attempt on this route costs.
    #[serde(default)]
    pub cost: CostModel,
}

/// A route's price list, in the operator's currency unit. An attempt the upstream accepted costs
/// `per_run + per_second × upstream seconds + per_output × outputs`, failed ones included: the
/// honest figure is the cost per successful task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostModel {
    #[serde(default)]
    pub per_run: f64,
    #[serde(default)]
    pub per_second: f64,
    #[serde(default)]
    pub per_output: f64,
}

impl CostModel {
    /// In millionths of the unit, so sums are exact.
    pub fn micros(&self, seconds: f64, outputs: usize) -> i64 {
        let cost =
            self.per_run + self.per_second * seconds.max(0.0) + self.per_output * outputs as f64;
        (cost * 1e6).round() as i64
    }

    pub fn is_free(&self) -> bool {
        *self == CostModel::default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamKind {
    String,
    Integer,
    Number,
    Boolean,
}

impl ParamKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ParamKind::String => "string",
            ParamKind::Integer => "integer",
            ParamKind::Number => "number",
            ParamKind::Boolean => "boolean",
        }
    }
}

/// A model's own input beyond prompt, width, height and seed, passed through to its routes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamConfig {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ParamKind,
    /// Lower bound of a number, or shortest length of a string.
    #[serde(default)]
    pub minimum: Option<f64>,
    #[serde(default)]
    pub maximum: Option<f64>,
    #[serde(default)]
    pub description: String,
}

impl RouteConfig {
    /// How the route appears on attempts: `provider:model`.
    pub fn label(&self) -> String {
        format!("{}:{}", self.provider, self.model)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Inputs of its own, beyond prompt, width, height and seed.
    #[serde(default)]
    pub params: Vec<ParamConfig>,
    /// When an upstream refuses the input (validation, content policy), try the next route
    /// rather than fail the job: for chains whose providers judge differently.
    #[serde(default)]
    pub fallback_on_refusal: bool,
    pub routes: Vec<RouteConfig>,
}

/// Checks names and references; the message names what is wrong.
pub fn validate(providers: &[ProviderConfig], models: &[ModelConfig]) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for p in providers {
        if p.name == DEMO_PROVIDER || !seen.insert(p.name.as_str()) {
            return Err(format!("providers: the name '{}' is taken", p.name));
        }
        if let Some(rate) = p.rate_limit {
            if rate.requests == 0 || rate.per.is_zero() {
                return Err(format!(
                    "providers.{}: rate_limit needs requests ≥ 1 and a non-zero per",
                    p.name
                ));
            }
        }
    }
    let mut names = std::collections::HashSet::new();
    for m in models {
        if m.name.starts_with("demo/") || !names.insert(m.name.as_str()) {
            return Err(format!("models: the name '{}' is taken", m.name));
        }
        for p in &m.params {
            if ["prompt", "width", "height", "seed", "crash"].contains(&p.name.as_str()) {
                return Err(format!(
                    "models.{}: the parameter name '{}' is taken",
                    m.name, p.name
                ));
            }
        }
        if m.routes.is_empty() {
            return Err(format!("models.{}: needs at least one route", m.name));
        }
        for r in &m.routes {
            if r.provider != DEMO_PROVIDER && !seen.contains(r.provider.as_str()) {
                return Err(format!(
                    "models.{}: route names unknown provider '{}'",
                    m.name, r.provider
                ));
            }
            let kind = providers
                .iter()
                .find(|p| p.name == r.provider)
                .map(|p| p.kind);
            if kind == Some(ProviderKind::Comfyui) && r.workflow.is_none() {
                return Err(format!(
                    "models.{}: a comfyui route needs a workflow file",
                    m.name
                ));
            }
            if r.provider == DEMO_PROVIDER && r.model != crate::catalog::DEMO_IMAGE {
                return Err(format!(
                    "models.{}: a demo route must use {}",
                    m.name,
                    crate::catalog::DEMO_IMAGE
                ));
            }
        }
    }
    Ok(())
}
