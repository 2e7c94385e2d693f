//! The webhook deliverer. Deliveries are rows the ledger wrote in the same transaction as the
//! state change that caused them; each worker process claims the due ones (holding each for a
//! while, so a worker that dies mid-try leaves it due again), signs them with the submitting
//! key's secret (both secrets during a rotation) and posts them through the SSRF-safe client,
//! which checks the address again at send. Only a 2xx delivers; a 410 stops; anything else is
//! tried again on the schedule, honouring `Retry-After` within it, until the schedule runs out.
//!
//! The deliverer looks at the ledger every `poll`, and at once when this process's worker wakes
//! it (`DelivererWake`): a job with a webhook started or ended here (or a pipeline's step did),
//! so its event is due now. A lone job's webhook then leaves within milliseconds of its end,
//! not up to `poll` later; under load the deliverer looks again as soon as a pass finds work,
//! and wakes that come meanwhile fold into one more look.
//!
//! While it runs, this process's successes hand it their end events where they can
//! (`DeliveryLedger::start_handing_deliveries`: on Postgres, a job whose webhook hears its end
//! but not its start): written already claimed for it, so a pass takes them without a claim
//! statement and without a claimed version of each row, and claims only to fill its batch
//! (one pass tries up to 32). Before the wake, handing over measured slower: the claims it
//! spared took 32 deliveries every `poll`, where hand-offs came a few at a time. With the wake,
//! claims come as often and as small, and handing over measured faster (BENCHMARKS.md, issue
//! 17, thirteenth pass). As the deliverer stops, what was handed and not taken is made due
//! again for any deliverer.
//!
//! Why the ledger and not the dispatch queue: a delivery is due at a time (5 s, 5 min … 10 h
//! out), and the ledger's index on `next_try_at` is already a durable timer; the queue would need
//! a delay mechanism of its own and would still have to be reconciled against the ledger.

use futures::future::BoxFuture;
use kiln_core::ledger::{DeliveryNext, DeliveryTry, DueDelivery};
use kiln_core::{Job, Ledger};
use kiln_webhooks::{signature_header, SafeClient, WebhookSecret};
use rand::Rng;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Renders a job as `GET /v1/jobs/{id}` shows it (output URLs included); for a `pipeline.*`
/// event (`true`), the job's pipeline as `GET /v1/pipelines/{id}` shows it.
pub type JobView = Arc<dyn Fn(Job, bool) -> BoxFuture<'static, serde_json::Value> + Send + Sync>;

#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// Delays before each try: the first is usually zero.
    pub schedule: Vec<Duration>,
    /// How often the deliverer looks for due deliveries.
    pub poll: Duration,
    /// Largest payload; a bigger job is sent without its input.
    pub max_payload_bytes: usize,
}

/// Wakes a deliverer for a look at the ledger now. Wakes that come while it is busy fold into
/// one look after its pass.
#[derive(Clone, Default)]
pub struct DelivererWake(Arc<tokio::sync::Notify>);

impl DelivererWake {
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

/// The most deliveries a pass tries.
const PASS_BATCH: usize = 32;

pub struct Deliverer {
    pub ledger: Arc<dyn Ledger>,
    pub client: SafeClient,
    /// Opens the webhook secrets the ledger keeps sealed, and seals a key's first one.
    pub seal: kiln_webhooks::SecretSeal,
    pub view: JobView,
    pub settings: DeliverySettings,
    /// What wakes this deliverer between looks.
    pub wake: DelivererWake,
}

impl Deliverer {
    /// Runs until `stop`: a pass, then another at once if it found work, else one after `poll`
    /// or when woken, whichever comes first.
    pub async fn run(self, stop: CancellationToken) {
        // A handed-over delivery is tried as soon as a pass takes it: only a schedule whose
        // first try is immediate takes hand-offs (a first delay is kept by the claim's filter).
        let first_delay = self.settings.schedule.first().copied().unwrap_or_default();
        if first_delay.is_zero() {
            self.ledger.start_handing_deliveries();
        }
        // Handing stops as soon as `stop` comes, not after the pass in flight: successes written
        // from then on write their deliveries pending, for any deliverer, and those handed over
        // and not yet taken are made due again.
        let ledger = self.ledger.clone();
        let stopping = stop.clone();
        let stop_handing = async move {
            stopping.cancelled().await;
            if let Err(e) = ledger.stop_handing_deliveries().await {
                tracing::warn!(error = %e, "handed-over deliveries stay held until their hold ends");
            }
        };
        tokio::join!(self.run_until(&stop), stop_handing);
    }

    async fn run_until(&self, stop: &CancellationToken) {
        loop {
            if stop.is_cancelled() {
                return;
            }
            match self.pass().await {
                Ok(n) if n > 0 => continue,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "webhook pass failed"),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.settings.poll) => {}
                _ = self.wake.0.notified() => {}
            }
        }
    }

    /// One pass: claims due deliveries and tries each once. Returns how many it tried.
    pub async fn pass(&self) -> Result<usize, kiln_core::LedgerError> {
        let first_delay = self.settings.schedule.first().copied().unwrap_or_default();
        // What this process's successes handed over (written claimed) goes first; a claim
        // fills the batch from the ledger's due deliveries.
        let mut due = self.ledger.take_handed_deliveries(PASS_BATCH).await?;
        if due.len() < PASS_BATCH {
            due.extend(
                self.ledger
                    .claim_deliveries(
                        kiln_core::time::now(),
                        first_delay,
                        kiln_core::ledger::DELIVERY_HOLD,
                        (PASS_BATCH - due.len()) as u32,
                    )
                    .await?,
            );
        }
        let n = due.len();
        // Jobs in parallel; one job's events in order (they come oldest first), so a receiver
        // sees `job.started` before `job.succeeded` when both are due at once.
        let mut by_job: Vec<Vec<DueDelivery>> = vec![];
        for d in due {
            match by_job.iter_mut().find(|g| g[0].job_id == d.job_id) {
                Some(group) => group.push(d),
                None => by_job.push(vec![d]),
            }
        }
        // The pass's jobs are read at once, for their payloads.
        let ids: Vec<_> = by_job.iter().map(|group| group[0].job_id).collect();
        let mut jobs: std::collections::HashMap<_, _> = self
            .ledger
            .jobs_by_ids(&ids)
            .await?
            .into_iter()
            .map(|job| (job.id, job))
            .collect();
        let groups = by_job.into_iter().map(|group| {
            let job = jobs.remove(&group[0].job_id);
            async move {
                for d in group {
                    self.try_once(d, job.clone()).await?;
                }
                Ok::<(), kiln_core::LedgerError>(())
            }
        });
        for result in futures::future::join_all(groups).await {
            result?;
        }
        Ok(n)
    }

    /// Tries `delivery` once; `job` is its job as the pass read it (`None`: it is gone).
    async fn try_once(
        &self,
        delivery: DueDelivery,
        job: Option<Job>,
    ) -> Result<(), kiln_core::LedgerError> {
        let number = delivery.tries + 1;
        let at = kiln_core::time::now();
        let Some(job) = job else {
            let tried = DeliveryTry {
                number,
                at,
                status_code: None,
                latency_ms: 0,
                error: Some("the job is gone".into()),
            };
            self.ledger
                .finish_delivery_try(
                    &delivery.id,
                    &delivery.claim_token,
                    &tried,
                    DeliveryNext::Failed,
                )
                .await?;
            return Ok(());
        };
        let body = self.payload(&delivery, job).await;
        let secrets = match (&delivery.key_id, delivery.secrets.clone()) {
            (Some(_), Some(stored)) => Some(stored),
            // The key's first delivery: its secret is made now (a concurrent first delivery
            // may make it first; both then sign with the one kept).
            (Some(key_id), None) => Some(
                self.ledger
                    .webhook_secrets(key_id, &self.seal.seal(&WebhookSecret::generate()))
                    .await?,
            ),
            (None, _) => None,
        };
        let secrets: Vec<_> = secrets
            .into_iter()
            .flat_map(|stored| std::iter::once(stored.current).chain(stored.previous))
            .filter_map(|s| {
                let opened = self.seal.open(&s);
                if opened.is_none() {
                    tracing::error!(delivery = %delivery.id, "a webhook secret does not open with this process's secrets_key; the delivery goes unsigned by it");
                }
                opened
            })
            .collect();
        // The signed timestamp is this try's, not the event's: verifiers refuse messages older
        // than a few minutes, and a retry hours later is still genuine. The event's own time is
        // the payload's `timestamp`.
        let timestamp = at.timestamp();
        let mut headers = vec![
            ("webhook-id", delivery.id.to_string()),
            ("webhook-timestamp", timestamp.to_string()),
        ];
        if !secrets.is_empty() {
            headers.push((
                "webhook-signature",
                signature_header(&secrets, delivery.id.as_str(), timestamp, &body),
            ));
        }
        let started = Instant::now();
        // A key whose secret this process cannot open (its `secrets_key` differs from the one
        // that sealed it) must not send the event unsigned: the try fails and is retried on the
        // schedule, where a correctly configured worker may take it.
        let unsignable = delivery.key_id.is_some() && secrets.is_empty();
        let result = match url::Url::parse(&delivery.url) {
            _ if unsignable => Err(kiln_webhooks::FetchError::Transport(
                "the key's signing secret does not open with this worker's secrets_key; not sent unsigned".into(),
            )),
            Ok(url) => self.client.post_json(&url, &headers, body.into()).await,
            Err(e) => Err(kiln_webhooks::FetchError::Forbidden(format!(
                "bad URL: {e}"
            ))),
        };
        let latency_ms = started.elapsed().as_millis() as u64;
        let (status_code, error, retry_after, next) = match result {
            Ok(answer) if (200..300).contains(&answer.status) => (
                Some(answer.status),
                None,
                None,
                Some(DeliveryNext::Delivered),
            ),
            Ok(answer) if answer.status == 410 => (
                Some(410),
                Some("the receiver answered 410 Gone".to_owned()),
                None,
                Some(DeliveryNext::Gone),
            ),
            Ok(answer) => (
                Some(answer.status),
                Some(format!("the receiver answered {}", answer.status)),
                answer.retry_after,
                None,
            ),
            // A forbidden address stays forbidden: no point in trying again.
            Err(kiln_webhooks::FetchError::Forbidden(why)) => {
                (None, Some(why), None, Some(DeliveryNext::Failed))
            }
            Err(e) => (None, Some(e.to_string()), None, None),
        };
        let next =
            next.unwrap_or_else(|| self.next_after(number - delivery.schedule_base, retry_after));
        kiln_core::metrics::delivery(match next {
            DeliveryNext::Delivered => "delivered",
            DeliveryNext::RetryAt(_) => "retry",
            DeliveryNext::Failed => "failed",
            DeliveryNext::Gone => "gone",
        });
        tracing::info!(delivery = %delivery.id, job = %delivery.job_id, try_number = number, ?status_code, ?next, "webhook try");
        let tried = DeliveryTry {
            number,
            at,
            status_code,
            latency_ms,
            error,
        };
        let recorded = self
            .ledger
            .finish_delivery_try(&delivery.id, &delivery.claim_token, &tried, next)
            .await?;
        if !recorded {
            tracing::info!(delivery = %delivery.id, "another claim took this delivery over; this try is not recorded");
        }
        Ok(())
    }

    /// The next try on the schedule (with up to 10 % jitter), or the end of it; `tries` counts
    /// since the event (or its last redelivery). The schedule's first entry is the delay of the
    /// first try, applied when deliveries are claimed. A receiver's
    /// `Retry-After` moves the try later, never earlier, and never past the schedule's end.
    fn next_after(&self, tries: u32, retry_after: Option<Duration>) -> DeliveryNext {
        let Some(step) = self.settings.schedule.get(tries as usize).copied() else {
            return DeliveryNext::Failed;
        };
        let jitter = step.mul_f64(rand::thread_rng().gen_range(0.0..0.1));
        let longest = self.settings.schedule.iter().max().copied().unwrap_or(step);
        let delay = retry_after.map_or(step, |after| after.clamp(step, longest.max(step))) + jitter;
        DeliveryNext::RetryAt(
            kiln_core::time::now() + chrono::Duration::from_std(delay).unwrap_or_default(),
        )
    }

    /// `{type, timestamp, data}` with the job as `GET` shows it, bounded in size; for a
    /// Replicate prediction, the prediction itself (the body its clients' handlers parse).
    async fn payload(&self, delivery: &DueDelivery, job: Job) -> Vec<u8> {
        let pipeline_event = delivery.event_type.is_pipeline_event();
        let bare = job.surface == kiln_core::Surface::Replicate && !pipeline_event;
        let mut data = (self.view)(job, pipeline_event).await;
        if bare {
            let mut bytes = serde_json::to_vec(&data).expect("JSON values serialize");
            if bytes.len() > self.settings.max_payload_bytes {
                data["input"] = serde_json::json!({"elided": "the input is too large for a webhook; GET the prediction"});
                bytes = serde_json::to_vec(&data).expect("JSON values serialize");
            }
            return bytes;
        }
        let mut body = serde_json::json!({
            "type": delivery.event_type,
            "timestamp": delivery.created_at,
            "data": data,
        });
        let mut bytes = serde_json::to_vec(&body).expect("JSON values serialize");
        if bytes.len() > self.settings.max_payload_bytes {
            data["input"] =
                serde_json::json!({"elided": "the input is too large for a webhook; GET the job"});
            body["data"] = data;
            bytes = serde_json::to_vec(&body).expect("JSON values serialize");
        }
        bytes
    }
}
