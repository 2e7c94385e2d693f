//! A provider's concurrency cap and rate limit, as providers that wrap another. The cap: each call first takes one of
//! the provider's `max` permits (shared by all workers through `Permits`), renews it while the
//! call runs, and gives it back after. A call that finds every permit taken waits for one up to
//! `wait`, then falls back to the next route as `provider_at_capacity`. A permit whose holder
//! vanished (a cancel drops the call; a worker dies) is given back by the drop guard, or at the
//! latest expires with its lease. The rate limit: a call that would start more than
//! `requests` calls per `per` (across workers) waits for the window to slide, up to `wait`, then
//! falls back as `provider_rate_limited`. A re-attaching call starts nothing upstream and is
//! not counted.

use crate::provider::{AttemptContext, GeneratedOutput, Provider, ProviderError};
use async_trait::async_trait;
use kiln_core::catalog::ModelInput;
use kiln_core::permits::SharedPermits;
use kiln_core::routes::RouteConfig;
use rand::Rng;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct ConcurrencyLimit {
    inner: Arc<dyn Provider>,
    name: String,
    permits: SharedPermits,
    max: u32,
    wait: Duration,
    ttl: Duration,
}

impl ConcurrencyLimit {
    pub fn new(
        name: &str,
        inner: Arc<dyn Provider>,
        permits: SharedPermits,
        max: u32,
        wait: Duration,
    ) -> Self {
        ConcurrencyLimit {
            inner,
            name: name.to_owned(),
            permits,
            max: max.max(1),
            wait,
            ttl: Duration::from_secs(30),
        }
    }
}

/// Gives the permit back however the call ends, dropped futures included.
struct Held {
    permits: SharedPermits,
    name: String,
    holder: String,
    renewal: tokio::task::JoinHandle<()>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.renewal.abort();
        let (permits, name, holder) =
            (self.permits.clone(), self.name.clone(), self.holder.clone());
        tokio::spawn(async move {
            if let Err(e) = permits.release(&name, &holder).await {
                tracing::warn!(provider = %name, error = %e, "could not give a permit back; it expires by itself");
            }
        });
    }
}

#[async_trait]
impl Provider for ConcurrencyLimit {
    async fn generate(
        &self,
        attempt: &AttemptContext<'_>,
        input: &ModelInput,
    ) -> Result<Vec<GeneratedOutput>, ProviderError> {
        // A re-attached attempt takes over the permit of the call it resumes: the upstream is
        // still busy with that call, not with a new one.
        let holder = attempt.resume.unwrap_or(attempt.attempt_id).to_owned();
        let give_up = Instant::now() + self.wait;
        loop {
            match self
                .permits
                .try_acquire(&self.name, &holder, self.max, self.ttl)
                .await
            {
                Ok(true) => break,
                Ok(false) if Instant::now() >= give_up => {
                    return Err(ProviderError::fall_back(
                        "provider_at_capacity",
                        format!(
                            "provider '{}' stayed at its concurrency cap of {}",
                            self.name, self.max
                        ),
                    ))
                }
                // Polling with jitter: permits free up when other calls end, an event in
                // another process that nothing here can await.
                Ok(false) => {
                    let pause = Duration::from_millis(rand::thread_rng().gen_range(50..150));
                    tokio::time::sleep(pause).await
                }
                Err(e) => return Err(ProviderError::retry("permits_unavailable", e.to_string())),
            }
        }
        let renewal = {
            let (permits, name, holder, ttl) = (
                self.permits.clone(),
                self.name.clone(),
                holder.clone(),
                self.ttl,
            );
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(ttl / 3).await;
                    let _ = permits.renew(&name, &holder, ttl).await;
                }
            })
        };
        let _held = Held {
            permits: self.permits.clone(),
            name: self.name.clone(),
            holder,
            renewal,
        };
        self.inner.generate(attempt, input).await
    }

    async fn cancel(&self, route: &RouteConfig, upstream_id: &str) -> Result<(), ProviderError> {
        self.inner.cancel(route, upstream_id).await
    }
}

pub struct RateLimited {
    inner: Arc<dyn Provider>,
    name: String,
    permits: SharedPermits,
    limit: kiln_core::routes::RateLimit,
    wait: Duration,
}

impl RateLimited {
    pub fn new(
        name: &str,
        inner: Arc<dyn Provider>,
        permits: SharedPermits,
        limit: kiln_core::routes::RateLimit,
        wait: Duration,
    ) -> Self {
        RateLimited {
            inner,
            name: name.to_owned(),
            permits,
            limit,
            wait,
        }
    }
}

#[async_trait]
impl Provider for RateLimited {
    async fn generate(
        &self,
        attempt: &AttemptContext<'_>,
        input: &ModelInput,
    ) -> Result<Vec<GeneratedOutput>, ProviderError> {
        if attempt.resume.is_none() {
            let give_up = Instant::now() + self.wait;
            loop {
                let outcome = self
                    .permits
                    .try_start(&self.name, self.limit.requests, self.limit.per)
                    .await
                    .map_err(|e| ProviderError::retry("permits_unavailable", e.to_string()))?;
                let Some(pause) = outcome else { break };
                if Instant::now() + pause > give_up {
                    return Err(ProviderError::fall_back(
                        "provider_rate_limited",
                        format!(
                            "provider '{}' is at its rate limit of {} per {:?}",
                            self.name, self.limit.requests, self.limit.per
                        ),
                    ));
                }
                // Jitter, so waiting workers do not all retry at the same instant.
                let jitter = Duration::from_millis(rand::thread_rng().gen_range(0..20));
                tokio::time::sleep(pause + jitter).await;
            }
        }
        self.inner.generate(attempt, input).await
    }

    async fn cancel(&self, route: &RouteConfig, upstream_id: &str) -> Result<(), ProviderError> {
        self.inner.cancel(route, upstream_id).await
    }
}
