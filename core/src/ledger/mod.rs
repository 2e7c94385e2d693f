//! The `Ledger`: Kiln's source of truth (invariant 1). Every state change is a compare-and-set on
//! the job row (invariant 2) and is written with its audit record in one transaction. Worker-side
//! writes are fenced by the lease token taken at claim time (invariant 3): a worker whose lease
//! was taken over, or whose job was canceled, cannot commit anything.
//!
//! The trait is the seam between the domain and its storage engines: SQLite for the embedded
//! default and Postgres for production, both through one implementation (`sql`). Both pass the
//! same contract tests (`contract`).

#[cfg(any(test, feature = "contract"))]
pub mod contract;
mod deliveries;
mod files;
#[cfg(test)]
mod parity;
mod sql;

pub use deliveries::{
    Delivery, DeliveryId, DeliveryLedger, DeliveryNext, DeliveryStatus, DeliveryTry, DueDelivery,
    DELIVERY_HOLD,
};
pub use files::{FileLedger, StoredFile};
pub use sql::{Dialect, SqlLedger, DEFAULT_TENANT_WINDOW};

pub use crate::events::EventType;
use crate::job::{AttemptOutcome, ErrorInfo, Job, JobId, NewOutput, PipelineId, Status, TenantId};
pub use crate::keys::KeyId;
use crate::keys::MintedKey;
use crate::time::Timestamp;
use async_trait::async_trait;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger database error: {0}")]
    Database(#[from] sqlx::Error),
    /// An error of the embedded default's group writer (`sql::native`), which writes to the
    /// SQLite file on a connection of its own.
    #[error("ledger database error: {0}")]
    Embedded(String),
    #[error("ledger migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("ledger row is corrupt: {0}")]
    Corrupt(String),
    #[error("unsupported database URL '{0}': expected sqlite:// or postgres://")]
    UnsupportedUrl(String),
    #[error("the key already has {0} active jobs, its limit")]
    ActiveJobLimit(u32),
    #[error("the key's daily spend cap of {cap} would be passed: {committed} spent or committed, {more} more")]
    SpendCap { cap: i64, committed: i64, more: i64 },
    #[error("the ledger's group writer has stopped (its runtime is shutting down)")]
    WriterStopped,
}

impl LedgerError {
    /// Whether the ledger could not be reached in time (its pool exhausted or closed, the
    /// server gone, restarting or out of connections) rather than refusing the work itself:
    /// asking again shortly can succeed, and nothing was written.
    pub fn is_unavailable(&self) -> bool {
        match self {
            LedgerError::Database(e) => match e {
                sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
                sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                    // too_many_connections, admin_shutdown, crash_shutdown,
                    // cannot_connect_now, and the connection_exception class.
                    matches!(code.as_ref(), "53300" | "57P01" | "57P02" | "57P03")
                        || code.starts_with("08")
                }),
                _ => false,
            },
            LedgerError::WriterStopped => true,
            _ => false,
        }
    }
}

impl From<rusqlite::Error> for LedgerError {
    fn from(e: rusqlite::Error) -> Self {
        LedgerError::Embedded(e.to_string())
    }
}

pub type Result<T, E = LedgerError> = std::result::Result<T, E>;

/// An upstream call a job left running when it ended while queued (canceled, or past its
/// deadline) after its last attempt was lost or released: the upstream is to be told to stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamStop {
    pub job_id: JobId,
    pub model: String,
    /// The attempt's route label (`provider:model`).
    pub route: String,
    pub upstream_id: String,
    /// Claims so far, this one included.
    pub tries: u32,
}

#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: JobId,
    pub tenant: TenantId,
    pub model: String,
    pub input: serde_json::Value,
    /// Fail the job as `deadline_exceeded` if it has not finished by then.
    pub deadline_at: Option<Timestamp>,
    /// Fail the job as `queue_timeout` if no attempt has started by then.
    pub start_by: Option<Timestamp>,
    /// The API key that submitted it: its secret signs the job's webhooks.
    pub key_id: Option<KeyId>,
    pub webhook_url: Option<String>,
    /// Event types to deliver (`job.started`, …); `None` for all.
    pub webhook_events: Option<Vec<String>>,
    /// The idempotency key of the request that creates it, linked in the same transaction.
    pub idempotency: Option<IdempotencyRef>,
    pub priority: crate::dispatch::Lane,
    /// The API it is created through (Kiln's own but for Replicate's predictions).
    pub surface: crate::job::Surface,
    /// Refuse it (`LedgerError::ActiveJobLimit`) if its key already has this many jobs queued
    /// or running; checked in the inserting transaction, so concurrent submits cannot overshoot.
    pub max_active: Option<u32>,
    /// Refuse it (`LedgerError::SpendCap`) if its key's spend today, plus the least its
    /// unfinished jobs and this one will cost, would pass the key's cap; checked in the
    /// inserting transaction with the key's row locked, so concurrent submits cannot both pass.
    pub spend: Option<SpendCheck>,
}

/// What the daily spend cap needs to judge a new job: the cap, when the day began, what the
/// new work will cost at least, and the least one run of each model costs (in millionths).
#[derive(Debug, Clone)]
pub struct SpendCheck {
    pub cap_micros: i64,
    pub day_began: Timestamp,
    pub new_cost_micros: i64,
    pub least_by_model: Vec<(String, i64)>,
}

impl SpendCheck {
    /// The least one run of `model` costs (nothing for a model not priced).
    pub fn least(&self, model: &str) -> i64 {
        self.least_by_model
            .iter()
            .find(|(m, _)| m == model)
            .map_or(0, |(_, micros)| *micros)
    }
}

/// One attempt (or, for a job never attempted, none) of a job created in a usage window.
#[derive(Debug, Clone)]
pub struct UsageRow {
    pub job_id: JobId,
    pub model: String,
    pub status: Status,
    pub created_at: Timestamp,
    /// The attempt's route (`provider:model`), number, outcome and cost, if attempted.
    pub route: Option<String>,
    pub number: Option<u32>,
    pub outcome: Option<AttemptOutcome>,
    pub cost_micros: Option<i64>,
}

/// The queue as the ledger sees it, for the gauges.
#[derive(Debug, Clone, Default)]
pub struct QueueSnapshot {
    /// Jobs queued and running.
    pub jobs: Vec<(Status, u64)>,
    /// Admitted queued jobs per lane, and the age of the oldest due one.
    pub lanes: Vec<LaneSnapshot>,
    /// Queued jobs held back by their tenants' windows.
    pub held: u64,
}

/// A tenant's jobs in one lane: queued (held back by its window or admitted) and running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantLaneCount {
    pub lane: crate::dispatch::Lane,
    pub queued: u64,
    pub running: u64,
}

#[derive(Debug, Clone)]
pub struct LaneSnapshot {
    pub lane: crate::dispatch::Lane,
    pub depth: u64,
    pub oldest_age_seconds: f64,
}

/// A key's own limits; `None` leaves the configured default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyLimits {
    pub rate_per_second: Option<u32>,
    pub max_active_jobs: Option<u32>,
    /// Daily spend cap in millionths of the currency unit (UTC days).
    pub daily_spend_micros: Option<i64>,
    pub max_priority: Option<crate::dispatch::Lane>,
}

/// An `Idempotency-Key` as the ledger keeps it: scoped to the API key that sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRef {
    pub key_id: KeyId,
    pub key: String,
}

/// What the ledger knows of an idempotency key when a request arrives with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyBegin {
    /// First use (or the earlier one expired, or died before creating anything): run it.
    Started,
    /// Same key, same request, answered before: send the stored response again.
    Replay(StoredResponse),
    /// Same key, another request body or route.
    Mismatch,
    /// The first request with this key is still being answered.
    InFlight,
    /// The first request created this job or pipeline and its process died before answering.
    Created(JobId),
}

/// A response kept for replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    /// `[(name, value)]`, as JSON.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// A pipeline to create: its steps in the order given (checked with `pipeline::plan`).
#[derive(Debug, Clone)]
pub struct NewPipeline {
    pub id: PipelineId,
    pub tenant: TenantId,
    pub key_id: Option<KeyId>,
    pub webhook_url: Option<String>,
    pub webhook_events: Option<Vec<String>>,
    pub steps: Vec<crate::pipeline::StepSpec>,
    pub idempotency: Option<IdempotencyRef>,
    /// The dispatch lane of its steps.
    pub priority: crate::dispatch::Lane,
    /// The key's active-job limit, checked when its first steps start.
    pub max_active: Option<u32>,
}

/// A step as the pipeline shows it: its job once it has started.
#[derive(Debug, Clone)]
pub struct PipelineStep {
    pub name: String,
    pub model: String,
    pub depends_on: Vec<String>,
    pub job_id: Option<JobId>,
    pub job_status: Option<Status>,
}

#[derive(Debug, Clone)]
pub struct Pipeline {
    pub id: PipelineId,
    pub tenant: TenantId,
    pub status: Status,
    pub error: Option<ErrorInfo>,
    pub created_at: Timestamp,
    pub completed_at: Option<Timestamp>,
    pub webhook_url: Option<String>,
    pub webhook_events: Option<Vec<String>>,
    pub steps: Vec<PipelineStep>,
}

/// An API key's webhook secrets: the current one, and during a rotation the previous one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSecrets {
    pub current: String,
    pub previous: Option<String>,
}

/// Filters of `GET /v1/jobs` and `GET /v1/pipelines`. Items come newest first; `before` is the
/// cursor (the last id of the previous page, a job's or a pipeline's), which works because both
/// kinds of id are time-ordered UUIDv7.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub statuses: Vec<Status>,
    pub model: Option<String>,
    pub created_after: Option<Timestamp>,
    pub created_before: Option<Timestamp>,
    pub before: Option<uuid::Uuid>,
    pub limit: u32,
}

/// What a worker holds while it runs a job: the id and the token that fences its writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub job_id: JobId,
    pub token: String,
    pub attempt_id: String,
}

/// How a claim names the route of the attempt it opens, from the claimed job: its model, and
/// for a later attempt the attempts before it (which the claim reads in its transaction).
pub type RouteChooser = std::sync::Arc<dyn Fn(&Job) -> String + Send + Sync>;

#[derive(Debug, Clone)]
pub struct Claim {
    pub job: Job,
    pub lease: Lease,
    pub attempt_number: u32,
    /// The same tenant's next held job, admitted to the queue in the claim's transaction (the
    /// claim freed a place in its tenant's window): the claimer rings it.
    pub admitted: Option<(JobId, crate::dispatch::Lane)>,
}

/// What a worker records on its running attempt; a field left `None` keeps its value.
#[derive(Debug, Clone, Copy, Default)]
pub struct AttemptNote<'a> {
    /// The route the attempt runs on (`provider:model`), decided just after the claim.
    pub route: Option<&'a str>,
    /// How its failure was classified.
    pub error_class: Option<crate::job::FailureClass>,
    /// The upstream's handle (prediction, prompt or request id), recorded before waiting on it.
    pub upstream_id: Option<&'a str>,
    /// What the attempt cost, in millionths of the configured currency unit.
    pub cost_micros: Option<i64>,
    /// How far the generator says it has come, 0–100.
    pub progress_percent: Option<u8>,
}

#[derive(Debug, Clone)]
pub enum CancelOutcome {
    Canceled(Job),
    AlreadyTerminal(Job),
    NotFound,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rescue {
    /// The job went back to `queued`; it must be rung.
    Requeued(JobId, crate::dispatch::Lane),
    /// The job had been rescued too often and is now `failed`.
    GaveUp(JobId),
}

#[derive(Debug, Clone)]
pub struct ApiKeyRecord {
    pub id: KeyId,
    pub tenant: TenantId,
    pub prefix: String,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
    /// Where its jobs' webhooks go when a job names none.
    pub default_webhook: Option<String>,
    pub limits: KeyLimits,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiredOutput {
    pub job_id: JobId,
    pub index: u32,
    pub object_key: String,
}

/// One row of a job's transition history.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub from: Option<Status>,
    pub to: Status,
    pub reason: Option<String>,
    pub at: Timestamp,
}

impl Transition {
    /// Whether a transition is one the job's own rows already record, so the ledger writes no
    /// row of `job_transitions` for it: the job's creation (`→ queued`, at its `created_at`)
    /// and each claim (`queued → running`, at its attempt's `started_at`; every claim opens one
    /// attempt, and nothing else does). Those were two rows and four WAL records of each job's
    /// 59 on Postgres (BENCHMARKS.md, issue 17, fourteenth pass). Every other transition (a
    /// retry, a release, a rescue, a cancel, an end) carries a reason or leaves `running`, and
    /// is written as before: a job's terminal transition stays a row of its own, so a job ended
    /// twice would show as two.
    pub fn is_implied(from: Option<Status>, to: Status, reason: Option<&str>) -> bool {
        reason.is_none()
            && matches!(
                (from, to),
                (None, Status::Queued) | (Some(Status::Queued), Status::Running)
            )
    }

    /// A job's whole history from its creation time, its attempts' start times (`claims`, in
    /// attempt order) and its `written` transitions (in the order they were written), all read
    /// at one moment. Rows written before implied transitions were left out are recognised and
    /// replaced by their implied copies, which carry the same times.
    ///
    /// The order needs no clocks, so processes whose clocks disagree cannot reorder it: the
    /// creation comes first; a running spell is opened by a claim and closed by the next
    /// written transition that leaves `running`, so the claims go just before those; a claim
    /// left over opened the last spell, which is still running.
    pub fn history(
        created_at: Timestamp,
        claims: Vec<Timestamp>,
        written: Vec<Transition>,
    ) -> Vec<Transition> {
        let mut claims = claims.into_iter().map(|at| Transition {
            from: Some(Status::Queued),
            to: Status::Running,
            reason: None,
            at,
        });
        let mut history = vec![Transition {
            from: None,
            to: Status::Queued,
            reason: None,
            at: created_at,
        }];
        for t in written {
            if Transition::is_implied(t.from, t.to, t.reason.as_deref()) {
                continue;
            }
            if t.from == Some(Status::Running) {
                history.extend(claims.next());
            }
            history.push(t);
        }
        history.extend(claims);
        history
    }
}

/// API keys: minting, lookup by hash, revocation, per-key limits and webhook secrets.
#[async_trait]
pub trait KeyLedger: Send + Sync {
    async fn insert_api_key(&self, tenant: &TenantId, key: &MintedKey) -> Result<ApiKeyRecord>;
    /// A live (not revoked) key's record, by the key's hash.
    async fn key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>>;
    /// Sets (or clears) a live key's default webhook, by id or prefix; returns how many keys.
    async fn set_default_webhook(&self, id_or_prefix: &str, url: Option<&str>) -> Result<u64>;
    /// Sets a key's limits (all four: `None` returns one to the default); how many keys matched.
    async fn set_key_limits(&self, id_or_prefix: &str, limits: &KeyLimits) -> Result<u64>;
    /// A key's webhook secrets; `candidate` becomes its secret if it has none yet.
    async fn webhook_secrets(&self, key_id: &KeyId, candidate: &str) -> Result<WebhookSecrets>;
    /// Makes `new` the key's secret; the current one keeps signing until `previous_until`.
    async fn rotate_webhook_secret(
        &self,
        key_id: &KeyId,
        new: &str,
        previous_until: Timestamp,
    ) -> Result<()>;
    async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>>;
    /// Revokes by id or by display prefix; returns how many keys were revoked.
    async fn revoke_api_key(&self, id_or_prefix: &str) -> Result<u64>;
    async fn count_api_keys(&self) -> Result<u64>;
}

/// What keys spend and what the queue holds: usage rows, spend, active jobs, gauges.
#[async_trait]
pub trait UsageLedger: Send + Sync {
    /// Up to `jobs` of the tenant's jobs created in `[from, to)` with ids after `after`, with
    /// their attempts: one row per attempt (one per job never attempted), ordered by job and
    /// attempt number. What usage is summed from, a page at a time, so a window of any width
    /// is read in bounded memory.
    async fn usage_rows(
        &self,
        tenant: &TenantId,
        from: Timestamp,
        to: Timestamp,
        after: Option<JobId>,
        jobs: u32,
    ) -> Result<Vec<UsageRow>>;
    /// Jobs queued and running, and the queue per lane (for the metrics gauges).
    async fn queue_snapshot(&self) -> Result<QueueSnapshot>;
    /// One tenant's jobs queued and running, counted per lane: what its dashboard shows of the
    /// queue (the ledger-wide gauges are for operators, on the private metrics listener).
    async fn tenant_queue(&self, tenant: &TenantId) -> Result<Vec<TenantLaneCount>>;
    /// The key's jobs still queued or running, counted per model (what they will cost is not
    /// known yet, but at least each model's least price).
    async fn active_jobs_by_model(&self, key_id: &KeyId) -> Result<Vec<(String, u64)>>;
    /// What the key's jobs' attempts started since `since` cost, in millionths.
    async fn spend_since(&self, key_id: &KeyId, since: Timestamp) -> Result<i64>;
}

/// Jobs and claims: the api submits, reads, lists and cancels jobs; dispatch rings and admits them; a worker claims one.
#[async_trait]
pub trait JobLedger: Send + Sync {
    async fn insert_job(&self, job: NewJob) -> Result<Job>;
    async fn get_job(&self, tenant: &TenantId, id: JobId) -> Result<Option<Job>>;
    async fn list_jobs(&self, tenant: &TenantId, filter: &JobFilter) -> Result<Vec<Job>>;
    /// `queued|running → canceled`. A running job's worker notices at its next lease renewal.
    async fn cancel_job(&self, tenant: &TenantId, id: JobId) -> Result<CancelOutcome>;
    /// How many queued jobs, of every tenant, were submitted before this queued one and wait
    /// with it; `None` once it is not queued. Dispatch drains in submit order within a lane, so
    /// this is the count a client waits behind. Counted up to `QUEUE_POSITION_CAP` (a deeper queue
    /// reads as the cap: "at least").
    async fn queue_position(&self, id: JobId) -> Result<Option<u64>>;
    /// Records that the doorbell was rung, so the reconciler leaves the job alone for a while.
    async fn mark_rung(&self, id: JobId) -> Result<()>;
    /// Records that a ring failed, so the reconciler's next pass rings the job.
    async fn mark_unrung(&self, id: JobId) -> Result<()>;
    /// Queued jobs that are due and were last rung before `rung_before`.
    async fn due_unrung(
        &self,
        rung_before: Timestamp,
        limit: u32,
    ) -> Result<Vec<(JobId, crate::dispatch::Lane)>>;
    /// Admits held jobs to the queue where their tenants' windows have room, round-robin across
    /// tenants (each tenant's highest priority, oldest first); the caller rings them.
    async fn admit_held(&self, limit: u32) -> Result<Vec<(JobId, crate::dispatch::Lane)>>;
    /// How many of a tenant's queued jobs may be in the shared queue at once (default 100).
    fn set_dispatch_window(&self, window: u32);
    /// `queued → running` if the job is queued and due; takes a lease for `lease_for` and opens
    /// the next attempt in the same transaction. `None` when someone else has it, it is not
    /// due yet, or it is gone.
    ///
    /// `route` names the attempt's route; a worker, which learns the job only from the claim,
    /// uses `claim_routed`.
    async fn claim(
        &self,
        id: JobId,
        worker: &str,
        route: &str,
        lease_for: Duration,
    ) -> Result<Option<Claim>> {
        let route = route.to_owned();
        let chooser: RouteChooser = std::sync::Arc::new(move |_: &Job| route.clone());
        self.claim_routed(id, worker, &chooser, lease_for).await
    }
    /// `claim`, with the attempt's route chosen from the claimed job (its model and its earlier
    /// attempts) as it is claimed, so the attempt is opened with its route in the claim's own
    /// writes. Concurrent claims share their statements (see `claim_batch`).
    async fn claim_routed(
        &self,
        id: JobId,
        worker: &str,
        route: &RouteChooser,
        lease_for: Duration,
    ) -> Result<Option<Claim>>;
    /// `claim_routed` for many jobs at once, in one transaction whose statements each carry the
    /// whole batch: the claims that won, in no particular order (a job not claimable, or named
    /// twice, is claimed at most once and otherwise left out).
    async fn claim_batch(
        &self,
        ids: &[JobId],
        worker: &str,
        route: &RouteChooser,
        lease_for: Duration,
    ) -> Result<Vec<Claim>>;
    /// Unscoped read, for workers and operators.
    async fn job_by_id(&self, id: JobId) -> Result<Option<Job>>;
    /// A job's full input, inline data included (a `Job` holds it elided): for the worker that
    /// runs the job, and nothing else.
    async fn job_input(&self, id: JobId) -> Result<Option<serde_json::Value>>;
    /// Unscoped read of several jobs at once (those that exist, in no particular order).
    async fn jobs_by_ids(&self, ids: &[JobId]) -> Result<Vec<Job>>;
    async fn transitions(&self, id: JobId) -> Result<Vec<Transition>>;
}

/// Idempotency keys: a request takes one, answers it or lets it go.
#[async_trait]
pub trait IdempotencyLedger: Send + Sync {
    /// Takes an idempotency key for one request: `fingerprint` identifies the request (route
    /// and body); `lock_for` bounds how long a request may hold it before a retry may take over;
    /// `keep_for` is how long the answer is kept.
    async fn begin_idempotent(
        &self,
        key: &IdempotencyRef,
        fingerprint: &str,
        lock_for: Duration,
        keep_for: Duration,
    ) -> Result<IdempotencyBegin>;
    /// Stores the answer of the request holding `key`, for replay.
    async fn complete_idempotent(
        &self,
        key: &IdempotencyRef,
        response: &StoredResponse,
    ) -> Result<()>;
    /// Lets `key` go unanswered (the request was refused or failed): a retry runs again, or,
    /// if the request created something first, is answered with it.
    async fn abandon_idempotent(&self, key: &IdempotencyRef) -> Result<()>;
    /// Deletes idempotency keys past their keeping time; how many.
    async fn purge_idempotency(&self, now: Timestamp, limit: u32) -> Result<u64>;
}

/// A running attempt, fenced by its lease: notes, upstream callbacks, renewals, its end, and the outputs it left.
#[async_trait]
pub trait AttemptLedger: Send + Sync {
    /// Records what the worker learned about its running attempt (see `AttemptNote`).
    async fn annotate_attempt(&self, lease: &Lease, note: AttemptNote<'_>) -> Result<()>;
    /// Stores an upstream's terminal callback for one of a running job's upstream handles.
    /// `false` when one is already stored (the first wins) or the job is no longer in flight.
    async fn record_callback(&self, job_id: JobId, upstream_id: &str, body: &str) -> Result<bool>;
    /// Records the progress an upstream pushed for one of a running job's handles (Cog's log
    /// events), on the open attempt waiting on it. Advisory: nothing else changes.
    async fn record_progress(&self, job_id: JobId, upstream_id: &str, percent: u8) -> Result<()>;
    /// The stored callback for an upstream handle, if it has come.
    async fn callback(&self, job_id: JobId, upstream_id: &str) -> Result<Option<String>>;
    /// Whether an open attempt of the job is waiting on this upstream handle: what a
    /// generator's file upload must find, so that a replay after the attempt ended stores
    /// nothing.
    async fn awaits_upstream(&self, job_id: JobId, upstream_id: &str) -> Result<bool>;
    /// Extends the lease; `false` when the lease is no longer ours (canceled, rescued).
    async fn renew_lease(&self, lease: &Lease, lease_for: Duration) -> Result<bool>;
    /// `running → succeeded` with the outputs, fenced by the lease. Concurrent successes share
    /// their statement (see `succeed_batch`).
    async fn succeed(&self, lease: &Lease, outputs: &[NewOutput]) -> Result<bool>;
    /// `succeed` for many jobs at once, in one transaction and (on Postgres) one statement,
    /// each fenced by its own lease: one answer per success, in order, `false` where the lease
    /// no longer held the job (its outputs are then not recorded).
    async fn succeed_batch(&self, successes: &[(Lease, Vec<NewOutput>)]) -> Result<Vec<bool>>;
    /// `running → failed`, fenced by the lease.
    async fn fail(&self, lease: &Lease, error: &ErrorInfo) -> Result<bool>;
    /// `running → queued` not before `run_after`, recording the attempt's error.
    async fn retry_later(
        &self,
        lease: &Lease,
        error: &ErrorInfo,
        run_after: Timestamp,
    ) -> Result<bool>;
    /// `running → queued` at once without blaming the job (graceful shutdown).
    async fn release(&self, lease: &Lease) -> Result<bool>;
    /// Closes an attempt that ended without a transition of ours (canceled or lease lost).
    async fn close_attempt(
        &self,
        lease: &Lease,
        outcome: AttemptOutcome,
        error: Option<&ErrorInfo>,
    ) -> Result<()>;
    /// Up to `limit` upstream calls to stop, each claimed for `hold` (a claim that is not
    /// finished comes back once it has passed).
    async fn claim_upstream_stops(&self, limit: u32, hold: Duration) -> Result<Vec<UpstreamStop>>;
    /// Forgets an upstream call to stop: it was stopped, or will not be.
    async fn finish_upstream_stop(&self, job_id: JobId) -> Result<()>;
    async fn expired_outputs(&self, now: Timestamp, limit: u32) -> Result<Vec<ExpiredOutput>>;
    async fn mark_output_deleted(&self, job_id: JobId, index: u32) -> Result<()>;
}

/// Pipelines: steps written together, moved on as their steps end.
#[async_trait]
pub trait PipelineLedger: Send + Sync {
    /// Writes a pipeline and its steps, and starts the steps that depend on nothing, in one
    /// transaction. Returns the pipeline and the jobs started (to be rung).
    async fn insert_pipeline(
        &self,
        pipeline: NewPipeline,
    ) -> Result<(Pipeline, Vec<(JobId, crate::dispatch::Lane)>)>;
    /// Moves a running pipeline on: starts the steps whose inputs now exist, fails it (and
    /// cancels its other steps) when a step failed or was canceled, succeeds it when every step
    /// did. Idempotent; returns the jobs it started.
    async fn advance_pipeline(&self, id: PipelineId)
        -> Result<Vec<(JobId, crate::dispatch::Lane)>>;
    async fn get_pipeline(&self, tenant: &TenantId, id: PipelineId) -> Result<Option<Pipeline>>;
    /// The tenant's pipelines, newest first. Of the filter, statuses, the creation window,
    /// the cursor and the limit apply (a pipeline has no single model).
    async fn list_pipelines(&self, tenant: &TenantId, filter: &JobFilter) -> Result<Vec<Pipeline>>;
    /// `running → canceled`, canceling the steps that have not ended; `None` when the tenant
    /// has no such pipeline.
    async fn cancel_pipeline(&self, tenant: &TenantId, id: PipelineId) -> Result<Option<Pipeline>>;
    /// Running pipelines, for the reconciler's safety-net pass.
    async fn active_pipelines(&self, limit: u32) -> Result<Vec<PipelineId>>;
}

/// Worker identities and the reconciler's repairs: expired leases rescued, overdue jobs failed.
#[async_trait]
pub trait MaintenanceLedger: Send + Sync {
    /// Takes the lowest free identity `{base}-{n}` for `holder` (a slot is free when nobody
    /// holds it or its holder stopped renewing it) and returns it.
    async fn acquire_worker_slot(&self, base: &str, holder: &str, ttl: Duration) -> Result<String>;
    /// Extends the slot; `false` when it is no longer `holder`'s.
    async fn renew_worker_slot(&self, identity: &str, holder: &str, ttl: Duration) -> Result<bool>;
    async fn release_worker_slot(&self, identity: &str, holder: &str) -> Result<()>;
    /// Expires the leases of jobs still running under `identity`, so the next reconciler pass
    /// rescues them at once. Called by an identity's new holder: the old one is gone.
    async fn expire_leases_of(&self, identity: &str) -> Result<u64>;
    /// Running jobs whose lease expired go back to `queued` (counting a rescue), or to `failed`
    /// once they have been rescued `max_rescues` times.
    async fn rescue_expired_leases(&self, max_rescues: u32, limit: u32) -> Result<Vec<Rescue>>;
    /// Queued jobs past their deadline, or never started by their `start_by`, become `failed`
    /// (`deadline_exceeded`, `queue_timeout`). Returns them with their error code.
    async fn fail_overdue(&self, now: Timestamp, limit: u32) -> Result<Vec<(JobId, String)>>;
}

/// The whole ledger: every aggregate's trait. Callers hold `Arc<dyn Ledger>` and call any
/// aggregate's methods through it (a trait object carries its supertraits' methods).
#[async_trait]
pub trait Ledger:
    KeyLedger
    + UsageLedger
    + JobLedger
    + IdempotencyLedger
    + AttemptLedger
    + PipelineLedger
    + DeliveryLedger
    + MaintenanceLedger
    + FileLedger
    + Send
    + Sync
    + 'static
{
    /// Cheap liveness check for `/readyz`.
    async fn ping(&self) -> Result<()>;
}

/// Opens the ledger a database URL names (`sqlite://…` or `postgres://…`) and brings its schema
/// up to date.
pub async fn connect(url: &str) -> Result<std::sync::Arc<dyn Ledger>> {
    Ok(std::sync::Arc::new(SqlLedger::open(url).await?))
}

#[cfg(test)]
mod history_tests {
    use super::*;
    use crate::time::from_millis;

    fn written(from: Status, to: Status, reason: &str, at: i64) -> Transition {
        Transition {
            from: Some(from),
            to,
            reason: Some(reason.into()),
            at: from_millis(at),
        }
    }

    /// The claims go where the spells they open are closed, whatever the clocks say: here the
    /// api's clock, which wrote the cancel, runs behind the worker's, which claimed.
    #[test]
    fn implied_claims_go_before_what_leaves_running_whatever_the_clocks() {
        use Status::{Canceled, Queued, Running};
        let history = Transition::history(
            from_millis(1_000),
            vec![from_millis(2_000), from_millis(5_000)],
            vec![
                written(Running, Queued, "released", 3_000),
                written(Running, Canceled, "canceled", 4_000),
            ],
        );
        let steps: Vec<_> = history
            .iter()
            .map(|t| (t.from, t.to, t.at.timestamp_millis()))
            .collect();
        assert_eq!(
            steps,
            vec![
                (None, Queued, 1_000),
                (Some(Queued), Running, 2_000),
                (Some(Running), Queued, 3_000),
                (Some(Queued), Running, 5_000),
                (Some(Running), Canceled, 4_000),
            ]
        );
    }

    /// Rows an earlier version wrote for implied steps are dropped for their implied copies;
    /// a job still running ends its history with its last claim.
    #[test]
    fn rows_written_for_implied_steps_are_read_once() {
        let created = Transition {
            from: None,
            to: Status::Queued,
            reason: None,
            at: from_millis(1),
        };
        let claimed = Transition {
            from: Some(Status::Queued),
            to: Status::Running,
            reason: None,
            at: from_millis(2),
        };
        let history = Transition::history(
            from_millis(1),
            vec![from_millis(2)],
            vec![created.clone(), claimed.clone()],
        );
        assert_eq!(history, vec![created, claimed]);
    }
}
