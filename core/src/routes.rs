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
    /// Calls to this provider at once, across all workers; absent, no cap.
    #[serde(default)]
    pub max_concurrency: Option<u32>,
    /// How long a call waits for a free slot under the cap before falling back.
    #[serde(default = "default_capacity_wait", with = "humantime_serde")]
    pub capacity_wait: Duration,
    /// Consecutive failures that open this provider's circuit.
    #[serde(default = "default_circuit_failures")]
    pub circuit_failures: u32,
    /// How long an open circuit waits before it lets one probe through.
    #[serde(default = "default_circuit_cooldown", with = "humantime_serde")]
    pub circuit_cooldown: Duration,
}

fn default_capacity_wait() -> Duration {
    Duration::from_secs(60)
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
            .field("max_concurrency", &self.max_concurrency)
            .field("circuit_failures", &self.circuit_failures)
            .field("circuit_cooldown", &self.circuit_cooldown)
            .finish()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
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
    pub routes: Vec<RouteConfig>,
}

/// Checks names and references; the message names what is wrong.
pub fn validate(providers: &[ProviderConfig], models: &[ModelConfig]) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for p in providers {
        if p.name == DEMO_PROVIDER || !seen.insert(p.name.as_str()) {
            return Err(format!("providers: the name '{}' is taken", p.name));
        }
    }
    let mut names = std::collections::HashSet::new();
    for m in models {
        if m.name.starts_with("demo/") || !names.insert(m.name.as_str()) {
            return Err(format!("models: the name '{}' is taken", m.name));
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
