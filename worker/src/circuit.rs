//! A circuit breaker per provider, as a provider that wraps another. After `threshold`
//! consecutive upstream failures the circuit opens: attempts on that provider fail at once as
//! `circuit_open` (a fall-back failure, so jobs move to their next route) without calling the
//! upstream. After `cooldown` one attempt is let through as a probe; its success closes the
//! circuit, its failure opens it for another cooldown. Input and policy refusals (`fail`) say
//! nothing about the provider's health and do not count, nor do 429s (a busy upstream is a
//! healthy one). The state is per worker process: each
//! worker learns a provider's health from its own calls.

use crate::provider::{AttemptContext, FailureClass, GeneratedOutput, Provider, ProviderError};
use async_trait::async_trait;
use kiln_core::catalog::ModelInput;
use kiln_core::routes::RouteConfig;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
struct State {
    consecutive_failures: u32,
    open_until: Option<Instant>,
    probing: bool,
}

pub struct CircuitBreaker {
    inner: Arc<dyn Provider>,
    name: String,
    threshold: u32,
    cooldown: Duration,
    state: Mutex<State>,
}

impl CircuitBreaker {
    pub fn new(name: &str, inner: Arc<dyn Provider>, threshold: u32, cooldown: Duration) -> Self {
        CircuitBreaker {
            inner,
            name: name.to_owned(),
            threshold: threshold.max(1),
            cooldown,
            state: Mutex::new(State::default()),
        }
    }

    /// Whether this call may go upstream (and whether it is the half-open probe).
    fn admit(&self) -> Result<bool, ProviderError> {
        let mut s = self
            .state
            .lock()
            .expect("the breaker lock is never poisoned");
        match s.open_until {
            None => Ok(false),
            Some(until) if Instant::now() < until || s.probing => Err(ProviderError::fall_back(
                "circuit_open",
                format!("provider '{}' is failing; its circuit is open", self.name),
            )),
            Some(_) => {
                s.probing = true;
                Ok(true)
            }
        }
    }

    fn record(&self, result: &Result<Vec<GeneratedOutput>, ProviderError>, probe: bool) {
        let mut s = self
            .state
            .lock()
            .expect("the breaker lock is never poisoned");
        if probe {
            s.probing = false;
        }
        let was_open = s.open_until.is_some();
        match result {
            Ok(_) => *s = State::default(),
            // A refusal says nothing of the provider's health, and a 429 says it is healthy
            // and busy: pacing is the rate limit's job, and a storm of 429s must not open the
            // circuit and fail jobs that only had to wait.
            Err(e) if e.class == FailureClass::Fail || e.error.code == "upstream_rate_limited" => {}
            Err(_) => {
                s.consecutive_failures += 1;
                if probe || s.consecutive_failures >= self.threshold {
                    tracing::warn!(provider = %self.name, failures = s.consecutive_failures, "circuit opened");
                    s.open_until = Some(Instant::now() + self.cooldown);
                }
            }
        }
        let open = s.open_until.is_some();
        if open != was_open || probe {
            kiln_core::metrics::circuit(&self.name, open);
        }
    }
}

#[async_trait]
impl Provider for CircuitBreaker {
    async fn generate(
        &self,
        attempt: &AttemptContext<'_>,
        input: &ModelInput,
    ) -> Result<Vec<GeneratedOutput>, ProviderError> {
        let probe = self.admit()?;
        let result = self.inner.generate(attempt, input).await;
        self.record(&result, probe);
        result
    }

    async fn cancel(&self, route: &RouteConfig, upstream_id: &str) -> Result<(), ProviderError> {
        self.inner.cancel(route, upstream_id).await
    }
}
