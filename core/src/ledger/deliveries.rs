//! Webhook deliveries in the ledger: a delivery (one event to one URL, the same `webhook-id` on
//! every try), its tries, what follows a try, and the trait its engines implement. Kept apart
//! from the job aggregates like `files`: the deliverer claims and finishes deliveries on its own
//! schedule, after the transition that wrote them has committed.

use super::{Result, WebhookSecrets};
use crate::events::EventType;
use crate::job::{JobId, TenantId};
use crate::keys::KeyId;
use crate::time::Timestamp;
use async_trait::async_trait;
use std::time::Duration;

/// A webhook delivery that is due, claimed for one try.
#[derive(Debug, Clone)]
pub struct DueDelivery {
    /// The `webhook-id`: the same on every try.
    pub id: DeliveryId,
    pub job_id: JobId,
    pub event_type: EventType,
    pub url: String,
    /// When the event happened: the payload's `timestamp`.
    pub created_at: Timestamp,
    /// Tries made before this one.
    pub tries: u32,
    /// Tries made before the last redelivery: the schedule counts from there.
    pub schedule_base: u32,
    pub key_id: Option<KeyId>,
    /// The key's webhook secrets as the claim read them; `None` when it has none yet (the
    /// deliverer then has one made, `Ledger::webhook_secrets`) or the job has no key.
    pub secrets: Option<WebhookSecrets>,
    /// This claim's token: only its holder's result is recorded.
    pub claim_token: String,
}

// The ledger's record is also the wire view (the api's delivery log serializes it as it is),
// so the two cannot differ.
/// One try of a delivery, as the log shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct DeliveryTry {
    pub number: u32,
    pub at: chrono::DateTime<chrono::Utc>,
    pub status_code: Option<u16>,
    pub latency_ms: u64,
    pub error: Option<String>,
}

/// What follows a try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryNext {
    Delivered,
    RetryAt(Timestamp),
    /// The schedule ran out.
    Failed,
    /// The receiver answered 410: it wants no more.
    Gone,
}

impl DeliveryNext {
    /// The state the delivery is left in.
    pub fn status(self) -> DeliveryStatus {
        match self {
            DeliveryNext::Delivered => DeliveryStatus::Delivered,
            DeliveryNext::RetryAt(_) => DeliveryStatus::Pending,
            DeliveryNext::Failed => DeliveryStatus::Failed,
            DeliveryNext::Gone => DeliveryStatus::Gone,
        }
    }
}

/// A delivery's state: `pending` until it is delivered, its schedule runs out (`failed`) or
/// its receiver answers 410 (`gone`). A redelivery makes any of them `pending` again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    Failed,
    Gone,
}

impl DeliveryStatus {
    pub const ALL: [DeliveryStatus; 4] = [
        DeliveryStatus::Pending,
        DeliveryStatus::Delivered,
        DeliveryStatus::Failed,
        DeliveryStatus::Gone,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
            DeliveryStatus::Gone => "gone",
        }
    }
}

impl std::str::FromStr for DeliveryStatus {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        DeliveryStatus::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| format!("unknown delivery status '{s}'"))
    }
}

/// A delivery's id, the `webhook-id` a receiver deduplicates on: `msg_` and a UUIDv7, the same
/// on every try and redelivery.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct DeliveryId(pub String);

impl DeliveryId {
    pub fn new() -> Self {
        DeliveryId(format!("msg_{}", uuid::Uuid::now_v7().simple()))
    }

    /// A client's path segment, if it has a delivery id's shape.
    pub fn parse(s: &str) -> Option<Self> {
        let hex = s.strip_prefix("msg_")?;
        (hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| DeliveryId(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for DeliveryId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

// Like `DeliveryTry`, also the wire view; its times are spelled out as `DateTime<Utc>`, which
// the schema derive recognizes and the `Timestamp` alias hides.
/// A webhook delivery of one event, with the log of its tries.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Delivery {
    /// The `webhook-id`, the same on every try.
    #[schema(value_type = String)]
    pub id: DeliveryId,
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub url: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub status: DeliveryStatus,
    pub next_try_at: Option<chrono::DateTime<chrono::Utc>>,
    pub delivered_at: Option<chrono::DateTime<chrono::Utc>>,
    pub tries: Vec<DeliveryTry>,
}

/// How long a claim holds a delivery from other deliverers: longer than a try can take (its
/// receiver has 15 s), so a delivery is tried again only once its holder has died.
pub const DELIVERY_HOLD: Duration = Duration::from_secs(60);

/// Webhook deliveries: claimed, tried, listed and sent again.
#[async_trait]
pub trait DeliveryLedger: Send + Sync {
    /// From now on, a success this process writes for a job whose webhook hears its end but not
    /// its start writes its `job.succeeded` delivery already claimed (held for
    /// `DELIVERY_HOLD`), for this process's deliverer to take (`take_handed_deliveries`)
    /// instead of claiming it. Called by the deliverer as it starts. An engine that cannot
    /// (SQLite, whose deliverer shares the process with everything else) ignores it.
    fn start_handing_deliveries(&self) {}
    /// Stops handing deliveries over, and makes those handed but not yet taken due again at
    /// once, for any deliverer to claim. Called by the deliverer as it stops.
    async fn stop_handing_deliveries(&self) -> Result<()> {
        Ok(())
    }
    /// Up to `limit` of the deliveries handed over and not yet taken, oldest first, each
    /// claimed under its own token. One handed over more than half its hold ago is made due
    /// again instead: tried now, its hold could lapse mid-try and another deliverer send it too.
    async fn take_handed_deliveries(&self, limit: usize) -> Result<Vec<DueDelivery>> {
        let _ = limit;
        Ok(Vec::new())
    }
    /// Pending deliveries due by `now` (a first try only once `first_delay` has passed since
    /// the event), oldest first, each held for `hold` (a worker that dies mid-try leaves it due
    /// again after that).
    async fn claim_deliveries(
        &self,
        now: Timestamp,
        first_delay: Duration,
        hold: Duration,
        limit: u32,
    ) -> Result<Vec<DueDelivery>>;
    /// Logs a try and moves the delivery on, if `claim_token` still holds it; `false` when
    /// another claim has taken it over (the result is then not recorded).
    async fn finish_delivery_try(
        &self,
        id: &DeliveryId,
        claim_token: &str,
        tried: &DeliveryTry,
        next: DeliveryNext,
    ) -> Result<bool>;
    /// A job's deliveries with their tries; `None` when the tenant has no such job.
    async fn deliveries(&self, tenant: &TenantId, job_id: JobId) -> Result<Option<Vec<Delivery>>>;
    /// Sends a delivery again (same `webhook-id`, the schedule from its start); `false` when
    /// there is no such delivery or a worker is trying it right now.
    async fn redeliver(
        &self,
        tenant: &TenantId,
        job_id: JobId,
        delivery_id: &DeliveryId,
    ) -> Result<bool>;
}
