//! The executor runs one rung job id to its next state. It claims the job (compare-and-set, with
//! a lease and a fresh attempt), runs the generator while a heartbeat renews the lease, and
//! commits the result fenced by the lease token. The heartbeat is also how a worker learns of a
//! cancel or a takeover: a renewal that no longer matches means the job is not ours, and the
//! generator is stopped at once. On shutdown past the grace period the job is released, not
//! failed, so another worker runs it without counting it against the job.

use crate::deliverer::DelivererWake;
use crate::provider::{AttemptContext, FailureClass, Provider, ProviderError, UpstreamLink};
use futures::FutureExt;
use kiln_core::catalog::Catalog;
use kiln_core::dispatch::Doorbell;
use kiln_core::ledger::{AttemptNote, Claim, Lease, RouteChooser};
use kiln_core::routes::RouteConfig;
use kiln_core::{AttemptOutcome, ErrorInfo, JobId, Ledger, NewOutput, Status};
use kiln_storage::ObjectStore;
use rand::Rng;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// This process's worker identity, recorded on leases and attempts.
    pub identity: String,
    pub lease: Duration,
    /// How often a running job's lease is renewed (and cancel is noticed).
    pub heartbeat: Duration,
    pub max_attempts: u32,
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub output_ttl: Duration,
    /// Longest an attempt may run; past it the attempt fails as a transient `timeout`.
    pub job_timeout: Duration,
}

/// The route an attempt shows when its model has none (it then fails at once).
const UNROUTED: &str = "unrouted";
/// How long an ended attempt waits for its blocking work to notice the stop. Demo work checks
/// between frames and bands (milliseconds apart); this bound only guards against work that
/// never checks, and stays well inside the shutdown margin so a release is never cut short.
const BLOCKING_PATIENCE: Duration = Duration::from_secs(5);
/// How long a worker holds an upstream stop it is sending before another may try it.
const UPSTREAM_STOP_HOLD: Duration = Duration::from_secs(30);
/// Tries to stop one abandoned upstream call before giving up on it.
const UPSTREAM_STOP_TRIES: u32 = 5;

/// Providers by name (`demo` included).
pub type Providers = HashMap<String, Arc<dyn Provider>>;

pub struct Executor {
    pub(crate) ledger: Arc<dyn Ledger>,
    pub(crate) doorbell: Arc<dyn Doorbell>,
    store: Arc<dyn ObjectStore>,
    providers: Providers,
    catalog: Catalog,
    config: ExecutorConfig,
    /// Chooses each claimed attempt's route in the claim itself (`route_position`), so the
    /// attempt is opened with its route and no write of its own follows the claim.
    choose_route: RouteChooser,
    /// Fired when the shutdown grace period is over: running jobs are released.
    hard_stop: CancellationToken,
    /// Wakes this process's deliverer when a job with a webhook starts or ends (or a pipeline's
    /// step ends), so the event does not wait for the deliverer's next look (none: no
    /// deliverer runs here).
    wake_deliverer: Option<DelivererWake>,
}

enum Ending {
    Generated(Result<Vec<NewOutput>, ProviderError>),
    LeaseLost,
    ShuttingDown,
}

impl Executor {
    pub fn new(
        ledger: Arc<dyn Ledger>,
        doorbell: Arc<dyn Doorbell>,
        store: Arc<dyn ObjectStore>,
        providers: Providers,
        catalog: Catalog,
        config: ExecutorConfig,
        hard_stop: CancellationToken,
    ) -> Self {
        let choose_route: RouteChooser = {
            let (catalog, max_attempts) = (catalog.clone(), config.max_attempts);
            std::sync::Arc::new(move |job: &kiln_core::Job| {
                let routes = catalog.routes(&job.model);
                let (index, _) = route_position(&routes, max_attempts, job);
                routes
                    .get(index)
                    .map_or_else(|| UNROUTED.to_owned(), RouteConfig::label)
            })
        };
        Executor {
            ledger,
            doorbell,
            store,
            providers,
            catalog,
            config,
            choose_route,
            hard_stop,
            wake_deliverer: None,
        }
    }

    /// Wakes `wake` (this process's deliverer) when a job with a webhook starts or ends, or a
    /// pipeline's step ends.
    pub fn waking(mut self, wake: Option<DelivererWake>) -> Self {
        self.wake_deliverer = wake;
        self
    }

    /// Wakes the deliverer for what `job`'s first start just wrote (in the same transaction):
    /// a `job.started` delivery, if its webhook asks for that event.
    fn wake_deliverer_for_start(&self, claim: &Claim) {
        if claim.attempt_number == 1
            && claim
                .job
                .webhook_hears(kiln_core::events::EventType::JobStarted)
        {
            self.wake_deliverer();
        }
    }

    /// Wakes the deliverer for what `job`'s end, and its pipeline's advance after it, may just
    /// have written: its own event, if it has a webhook, or its pipeline's, if it is a step (a
    /// pipeline's webhook is its own).
    fn wake_deliverer_for_end(&self, job: &kiln_core::Job) {
        if job.webhook_url.is_some() || job.pipeline_id.is_some() {
            self.wake_deliverer();
        }
    }

    fn wake_deliverer(&self) {
        if let Some(wake) = &self.wake_deliverer {
            wake.wake();
        }
    }

    /// Claims `job_id` if it is claimable. A ring for a job that is not (already running,
    /// finished, canceled, not yet due) is a harmless duplicate: `None`, and nothing happens.
    pub async fn claim(&self, job_id: JobId) -> ExecResult<Option<Claim>> {
        if self.hard_stop.is_cancelled() {
            return Ok(None);
        }
        let claim = self
            .ledger
            .claim_routed(
                job_id,
                &self.config.identity,
                &self.choose_route,
                self.config.lease,
            )
            .await?;
        if let Some(claim) = &claim {
            tracing::info!(job = %job_id, attempt = claim.attempt_number, "claimed");
            self.wake_deliverer_for_start(claim);
            let waited = (kiln_core::time::now() - claim.job.run_after)
                .to_std()
                .unwrap_or_default();
            kiln_core::metrics::queue_wait(
                &claim.job.model,
                claim.job.priority.as_str(),
                waited.as_secs_f64(),
            );
            // The claim admitted the tenant's next held job to the queue, marked rung: ring it
            // now. The claim is ours whatever happens here: a failed ring marks the job
            // unrung for the reconciler's next pass, and if even that fails (or this process
            // dies first) the reconciler rings it once its mark is stale.
            if let Some((next, lane)) = claim.admitted {
                kiln_core::dispatch::ring_or_mark_unrung(
                    self.doorbell.as_ref(),
                    self.ledger.as_ref(),
                    next,
                    lane,
                )
                .await;
            }
        }
        Ok(claim)
    }

    /// Tells upstreams to stop the calls that jobs left running when they ended while queued
    /// (`Ledger::claim_upstream_stops`). A stop that fails is tried again once its claim has
    /// passed, up to `UPSTREAM_STOP_TRIES`. Returns how many were stopped.
    pub async fn stop_abandoned_upstreams(&self) -> Result<usize, kiln_core::LedgerError> {
        let stops = self
            .ledger
            .claim_upstream_stops(32, UPSTREAM_STOP_HOLD)
            .await?;
        let mut stopped = 0;
        for stop in stops {
            let route = self
                .catalog
                .routes(&stop.model)
                .into_iter()
                .find(|r| r.label() == stop.route);
            let provider = route.as_ref().and_then(|r| self.providers.get(&r.provider));
            let (Some(route), Some(provider)) = (route, provider) else {
                // The route is no longer configured: nothing here can reach that upstream.
                tracing::warn!(job = %stop.job_id, route = stop.route, "an abandoned upstream call's route is not configured; it is not stopped");
                self.ledger.finish_upstream_stop(stop.job_id).await?;
                continue;
            };
            match provider.cancel(&route, &stop.upstream_id).await {
                Ok(()) => {
                    tracing::info!(job = %stop.job_id, upstream = stop.upstream_id, "stopped an upstream call its job left running");
                    self.ledger.finish_upstream_stop(stop.job_id).await?;
                    stopped += 1;
                }
                Err(e) if stop.tries >= UPSTREAM_STOP_TRIES => {
                    tracing::warn!(job = %stop.job_id, upstream = stop.upstream_id, error = %e.error.message, "giving up stopping an upstream call");
                    self.ledger.finish_upstream_stop(stop.job_id).await?;
                }
                Err(e) => {
                    tracing::warn!(job = %stop.job_id, upstream = stop.upstream_id, error = %e.error.message, "could not stop an upstream call; trying again later");
                }
            }
        }
        Ok(stopped)
    }

    /// Runs a claimed job to its next state.
    pub async fn run(&self, claim: Claim) -> ExecResult {
        let started = std::time::Instant::now();
        let (_, route) = self.current_route(&claim);
        let link = UpstreamLink::new(self.ledger.clone(), claim.lease.clone());
        let blocking = crate::blocking::BlockingWork::default();
        let lost = CancellationToken::new();
        let heartbeat = tokio::spawn(heartbeat(
            self.ledger.clone(),
            claim.lease.clone(),
            self.config.lease,
            self.config.heartbeat,
            lost.clone(),
        ));
        // A panic in a generator must not take the worker down with it; it fails the attempt.
        // A hung generator or store must not hold the job forever: the attempt has a deadline,
        // the job's own (`cancel_after`) where it comes sooner. The route's timeout bounds the
        // upstream call alone (`generate_and_store`).
        let job_deadline = claim.job.deadline_at.map(|at| {
            (at - kiln_core::time::now())
                .to_std()
                .unwrap_or(Duration::ZERO)
        });
        let (deadline, is_jobs) = match job_deadline {
            Some(left) if left < self.config.job_timeout => (left, true),
            _ => (self.config.job_timeout, false),
        };
        let (claimed, routed, linked, working) = (&claim, &route, &link, &blocking);
        let bounded = async move {
            tokio::time::timeout(
                deadline,
                self.generate_and_store(claimed, routed, linked, working),
            )
            .await
            .unwrap_or_else(|_| {
                Err(if is_jobs {
                    ProviderError::fail(
                        "deadline_exceeded",
                        "the job did not finish before its deadline (cancel_after)",
                    )
                } else {
                    ProviderError::retry(
                        "timeout",
                        format!(
                            "the attempt took longer than {:.1}s",
                            deadline.as_secs_f64()
                        ),
                    )
                })
            })
        };
        let work = std::panic::AssertUnwindSafe(bounded)
            .catch_unwind()
            .map(|r| {
                r.unwrap_or_else(|_| {
                    Err(ProviderError::retry(
                        "internal_error",
                        "the generator panicked",
                    ))
                })
            });
        let ending = tokio::select! {
            result = work => Ending::Generated(result),
            _ = lost.cancelled() => Ending::LeaseLost,
            _ = self.hard_stop.cancelled() => Ending::ShuttingDown,
        };
        // However the attempt ended, its CPU-bound work stops now, and the attempt keeps its
        // slot until it has: a canceled or timed-out job holds no hidden core.
        blocking.stop_and_wait(BLOCKING_PATIENCE).await;
        heartbeat.abort();
        let outcome = match &ending {
            Ending::Generated(Ok(_)) => "succeeded",
            Ending::Generated(Err(f)) => f.class.as_str(),
            Ending::LeaseLost => "lost",
            Ending::ShuttingDown => "released",
        };
        kiln_core::metrics::attempt_ended(
            &claim.job.model,
            &route.provider,
            outcome,
            started.elapsed().as_secs_f64(),
        );
        self.settle_upstream(&claim, &route, &link, &ending, started.elapsed())
            .await;
        self.finish(&claim, ending).await?;
        if let Some(pipeline) = claim.job.pipeline_id {
            // The step may have ended: the pipeline moves on (the reconciler does the same for
            // any pipeline this process dies before advancing).
            advance_pipeline(self.ledger.as_ref(), self.doorbell.as_ref(), pipeline).await?;
        }
        // After the pipeline's advance, which writes the pipeline's own event when it ends.
        self.wake_deliverer_for_end(&claim.job);
        Ok(())
    }

    /// What the upstream side of an attempt needs once it ends: its cost recorded (an attempt
    /// the upstream accepted costs money, failed or not), and the upstream told to stop when the
    /// job was canceled or the attempt ran out of time. A job released at shutdown or taken
    /// over keeps its upstream call running: the next attempt re-attaches to it.
    async fn settle_upstream(
        &self,
        claim: &Claim,
        route: &RouteConfig,
        link: &UpstreamLink,
        ending: &Ending,
        elapsed: Duration,
    ) {
        let handle = link.recorded();
        let outputs = match ending {
            Ending::Generated(Ok(outputs)) => Some(outputs.len()),
            _ => None,
        };
        let accepted = outputs.is_some() || handle.is_some();
        if accepted && !route.cost.is_free() {
            let seconds = link.upstream_seconds().unwrap_or(elapsed.as_secs_f64());
            let note = AttemptNote {
                cost_micros: Some(route.cost.micros(seconds, outputs.unwrap_or(0))),
                ..Default::default()
            };
            if let Err(e) = self.ledger.annotate_attempt(&claim.lease, note).await {
                tracing::warn!(job = %claim.lease.job_id, error = %e, "could not record the attempt's cost");
            }
        }
        let Some(handle) = handle else { return };
        let stop = match ending {
            Ending::Generated(Err(e)) => {
                matches!(
                    e.error.code.as_str(),
                    "timeout" | "upstream_timeout" | "deadline_exceeded"
                )
            }
            Ending::LeaseLost => matches!(
                self.job_status(claim.lease.job_id).await,
                Ok(Some(Status::Canceled))
            ),
            _ => false,
        };
        if !stop {
            return;
        }
        let Some(provider) = self.providers.get(&route.provider) else {
            return;
        };
        match provider.cancel(route, &handle).await {
            Ok(()) => {
                tracing::info!(job = %claim.lease.job_id, upstream = %handle, "upstream call stopped")
            }
            Err(e) => {
                tracing::warn!(job = %claim.lease.job_id, upstream = %handle, error = %e.error.message, "could not stop the upstream call")
            }
        }
    }

    async fn finish(&self, claim: &Claim, ending: Ending) -> ExecResult {
        let lease = &claim.lease;
        let job_id = lease.job_id;
        match ending {
            Ending::Generated(Ok(outputs)) => {
                if self.ledger.succeed(lease, &outputs).await? {
                    tracing::info!(job = %job_id, "succeeded");
                    let bytes = outputs.iter().map(|o| o.bytes).sum();
                    kiln_core::metrics::stored(outputs.len(), bytes);
                } else {
                    // Canceled or taken over while we stored: our objects must not outlive it.
                    self.note_lost_lease(lease).await?;
                    if self.job_status(job_id).await? == Some(Status::Canceled) {
                        for o in &outputs {
                            let _ = self.store.delete(&o.object_key).await;
                        }
                    }
                }
            }
            Ending::Generated(Err(failure)) => self.record_failure(claim, failure).await?,
            Ending::LeaseLost => self.note_lost_lease(lease).await?,
            Ending::ShuttingDown => {
                if self.ledger.release(lease).await? {
                    tracing::info!(job = %job_id, "released at shutdown");
                    // Another process's reconciler rings it; in-process rings die with us.
                }
            }
        }
        Ok(())
    }

    async fn record_failure(&self, claim: &Claim, failure: ProviderError) -> ExecResult {
        let lease = &claim.lease;
        let routes = self.catalog.routes(&claim.job.model);
        let (index, failed_here) = self.route_position(claim);
        let has_next = index + 1 < routes.len();
        let mut failure = failure;
        // An upstream's refusal of the input (validation, content policy) ends the job, unless
        // the model says another route may judge it differently.
        let refusal = matches!(
            failure.error.code.as_str(),
            "upstream_rejected_input" | "content_policy_violation"
        );
        if failure.class == FailureClass::Fail
            && refusal
            && has_next
            && self.catalog.falls_back_on_refusal(&claim.job.model)
        {
            failure.class = FailureClass::FallBack;
        }
        let note = AttemptNote {
            error_class: Some(failure.class),
            ..Default::default()
        };
        self.ledger.annotate_attempt(lease, note).await?;
        let failures = failed_here + 1;
        let budget = routes[index]
            .max_attempts
            .unwrap_or(self.config.max_attempts);
        // Retry on this route while its budget lasts; then, or at once for capacity and
        // availability failures, fall back to the next route; permanent failures end the job.
        let next = match failure.class {
            FailureClass::Retry if failures < budget => {
                Some(self.retry_delay(failures, failure.retry_after))
            }
            FailureClass::Retry | FailureClass::FallBack if has_next => Some(Duration::ZERO),
            _ => None,
        };
        let won = if let Some(delay) = next {
            let run_after =
                kiln_core::time::now() + chrono::Duration::from_std(delay).unwrap_or_default();
            let won = self
                .ledger
                .retry_later(lease, &failure.error, run_after)
                .await?;
            if won {
                tracing::info!(job = %lease.job_id, code = %failure.error.code, class = failure.class.as_str(), ?delay, "next attempt scheduled");
                let fallback = !(failure.class == FailureClass::Retry && failures < budget);
                let provider = routes[if fallback { index + 1 } else { index }]
                    .provider
                    .as_str();
                kiln_core::metrics::next_attempt(&claim.job.model, provider, fallback);
                let doorbell = self.doorbell.clone();
                let job_id = lease.job_id;
                let lane = claim.job.priority;
                let ledger = self.ledger.clone();
                // If this process dies first, the reconciler rings the job once it is due (the
                // retry left it marked unrung).
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let rung = kiln_core::dispatch::ring_or_mark_unrung(
                        doorbell.as_ref(),
                        ledger.as_ref(),
                        job_id,
                        lane,
                    )
                    .await;
                    if rung {
                        let _ = ledger.mark_rung(job_id).await;
                    }
                });
            }
            won
        } else {
            let mut error = failure.error.clone();
            if failure.class != FailureClass::Fail {
                let tried = claim.job.attempts.len();
                error.message = format!("{} (every route failed; {tried} attempts)", error.message);
            }
            let won = self.ledger.fail(lease, &error).await?;
            if won {
                tracing::info!(job = %lease.job_id, code = %error.code, "failed");
            }
            won
        };
        if !won {
            self.note_lost_lease(lease).await?;
        }
        Ok(())
    }

    /// Closes the attempt of a job that stopped being ours, saying why.
    async fn note_lost_lease(&self, lease: &Lease) -> ExecResult {
        let (outcome, error) = match self.job_status(lease.job_id).await? {
            Some(Status::Canceled) => (
                AttemptOutcome::Canceled,
                ErrorInfo::new("canceled", "the job was canceled while this attempt ran"),
            ),
            _ => (
                AttemptOutcome::Lost,
                ErrorInfo::new("lease_lost", "the worker's lease on the job was taken over"),
            ),
        };
        tracing::info!(job = %lease.job_id, outcome = outcome.as_str(), "stopped");
        self.ledger
            .close_attempt(lease, outcome, Some(&error))
            .await?;
        Ok(())
    }

    async fn job_status(&self, id: JobId) -> ExecResult<Option<Status>> {
        Ok(self.ledger.job_by_id(id).await?.map(|j| j.status))
    }

    /// The route this attempt runs on, derived from the job's attempt history (so it needs no
    /// state of its own): walk the chain, moving on after a route's budget of failures or at
    /// its first fall-back failure. Returns the route's index and its failures so far.
    fn current_route(&self, claim: &Claim) -> (usize, RouteConfig) {
        let (index, _) = self.route_position(claim);
        (index, self.catalog.routes(&claim.job.model)[index].clone())
    }

    fn route_position(&self, claim: &Claim) -> (usize, u32) {
        let routes = self.catalog.routes(&claim.job.model);
        route_position(&routes, self.config.max_attempts, &claim.job)
    }

    /// Honours the upstream's `Retry-After` within `retry_max`; otherwise backoff.
    fn retry_delay(&self, failures: u32, retry_after: Option<Duration>) -> Duration {
        match retry_after {
            Some(after) => after.min(self.config.retry_max),
            None => self.backoff(failures),
        }
    }

    /// Exponential backoff with full jitter (anywhere from zero to the capped step), so
    /// workers that failed together on one upstream do not come back together.
    fn backoff(&self, attempt: u32) -> Duration {
        let step = self
            .config
            .retry_base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.config.retry_max);
        step.mul_f64(rand::thread_rng().gen_range(0.0..=1.0))
    }

    /// The upstream handle this attempt should re-attach to: the one the attempt just before it
    /// started on the same route, if that attempt never saw it end (its worker died, lost its
    /// lease, or released the job at shutdown).
    fn resumable<'c>(claim: &'c Claim, route: &RouteConfig) -> Option<&'c str> {
        let previous = claim
            .job
            .attempts
            .iter()
            .rev()
            .find(|a| a.number < claim.attempt_number)?;
        let unfinished = matches!(
            previous.outcome,
            Some(AttemptOutcome::Lost | AttemptOutcome::Released)
        );
        (unfinished && previous.route == route.label())
            .then_some(previous.upstream_id.as_deref())
            .flatten()
    }

    async fn generate_and_store(
        &self,
        claim: &Claim,
        route: &RouteConfig,
        link: &UpstreamLink,
        work: &crate::blocking::BlockingWork,
    ) -> Result<Vec<NewOutput>, ProviderError> {
        let job = &claim.job;
        // The claimed row shows the input with inline data elided; the full one is read apart,
        // only when there is something elided, and only here.
        let full_input = if kiln_core::job::has_elided_data(&job.input) {
            let read = self.ledger.job_input(job.id).await.map_err(|e| {
                ProviderError::retry("internal_error", format!("the ledger is unavailable: {e}"))
            })?;
            std::borrow::Cow::Owned(read.unwrap_or_else(|| job.input.clone()))
        } else {
            std::borrow::Cow::Borrowed(&job.input)
        };
        let input = self
            .catalog
            .validate(&job.model, &full_input)
            .map_err(|e| ProviderError::fail(e.code, format!("{}: {}", e.field, e.message)))?;
        // The claim opened the attempt on the route it chose from the same job; a catalog
        // changed in between (a reload) is the only way they differ.
        let label = route.label();
        let opened_on = job
            .attempts
            .iter()
            .find(|a| a.number == claim.attempt_number);
        if opened_on.is_none_or(|a| a.route != label) {
            let note = AttemptNote {
                route: Some(&label),
                ..Default::default()
            };
            self.ledger
                .annotate_attempt(&claim.lease, note)
                .await
                .map_err(|e| {
                    ProviderError::retry(
                        "internal_error",
                        format!("the ledger is unavailable: {e}"),
                    )
                })?;
        }
        let provider = self.providers.get(&route.provider).ok_or_else(|| {
            ProviderError::fall_back(
                "provider_unknown",
                format!("no provider named '{}' is configured", route.provider),
            )
        })?;
        let attempt = AttemptContext {
            job_id: job.id,
            tenant: &job.tenant,
            attempt_id: &claim.lease.attempt_id,
            route,
            resume: Self::resumable(claim, route),
            link,
            work,
        };
        let call = provider.generate(&attempt, &input);
        let outputs = match route.timeout {
            Some(limit) => tokio::time::timeout(limit, call)
                .await
                .unwrap_or_else(|_| {
                    Err(ProviderError::retry(
                        "upstream_timeout",
                        format!(
                            "the upstream did not finish within the route's timeout of {:.1}s",
                            limit.as_secs_f64()
                        ),
                    ))
                })?,
            None => call.await?,
        };
        let expires_at = kiln_core::time::now()
            + chrono::Duration::from_std(self.config.output_ttl).unwrap_or_default();
        crate::outputs::store_all(&self.store, job.id, outputs, expires_at).await
    }
}

/// Moves a pipeline on and rings the steps it started. A failed ring is left to the reconciler
/// (the step is marked unrung), as for any submitted job.
pub async fn advance_pipeline(
    ledger: &dyn Ledger,
    doorbell: &dyn Doorbell,
    pipeline: kiln_core::PipelineId,
) -> ExecResult {
    for (job, lane) in ledger.advance_pipeline(pipeline).await? {
        kiln_core::dispatch::ring_or_mark_unrung(doorbell, ledger, job, lane).await;
    }
    Ok(())
}

/// Renews the lease every `every`; fires `lost` as soon as the lease is no longer ours. A ledger
/// error is not a loss (the database may be briefly away); only an expired lease is, and the
/// reconciler decides that from the ledger.
async fn heartbeat(
    ledger: Arc<dyn Ledger>,
    lease: Lease,
    lease_for: Duration,
    every: Duration,
    lost: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        match ledger.renew_lease(&lease, lease_for).await {
            Ok(true) => {}
            Ok(false) => {
                lost.cancel();
                return;
            }
            Err(e) => tracing::warn!(job = %lease.job_id, error = %e, "lease renewal failed"),
        }
    }
}

/// The executor's error is a ledger failure. The job then stays as the ledger has it, and the
/// reconciler's rules (lease expiry, re-ringing) carry it on.
pub type ExecResult<T = ()> = Result<T, kiln_core::LedgerError>;

/// Which of `routes` (a model's, in order) a job's next attempt runs on, and how many attempts
/// have failed on it: each route is retried up to its budget (`max_attempts` where it sets
/// none), and the job falls back to the next after that or at once on a `FallBack` failure.
fn route_position(routes: &[RouteConfig], max_attempts: u32, job: &kiln_core::Job) -> (usize, u32) {
    let (mut index, mut failed) = (0usize, 0u32);
    for attempt in &job.attempts {
        if attempt.outcome != Some(AttemptOutcome::Failed)
            || routes.get(index).is_none_or(|r| attempt.route != r.label())
        {
            continue;
        }
        failed += 1;
        let budget = routes[index].max_attempts.unwrap_or(max_attempts);
        if (attempt.error_class == Some(FailureClass::FallBack) || failed >= budget)
            && index + 1 < routes.len()
        {
            index += 1;
            failed = 0;
        }
    }
    (index, failed)
}
