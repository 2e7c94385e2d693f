//! Provider concurrency permits and rate limits, shared by every worker. Permits: at most `max`
//! calls to one provider at once. Rate: at most `limit` call starts in any window of `per`
//! (a sliding window, so there is no burst at a window's edge). With Redis the permits are members of a sorted set per provider, scored by their
//! expiry, taken and pruned atomically by a small script, so a permit held by a worker that died
//! frees itself when it expires; a live holder renews it. The embedded default has one process,
//! so a semaphore per provider does. Rate starts are a sorted set of start times per provider
//! in Redis (trimmed to the window by the same script that counts them), or a queue of instants
//! in one process.

use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum PermitError {
    #[error("the permit store is unavailable: {0}")]
    Unavailable(String),
}

/// Shared permits by provider name.
#[async_trait]
pub trait Permits: Send + Sync + 'static {
    /// Tries once to take a permit named `holder` for `provider`; `false` when all are taken.
    async fn try_acquire(
        &self,
        provider: &str,
        holder: &str,
        max: u32,
        ttl: Duration,
    ) -> Result<bool, PermitError>;
    /// Extends a held permit.
    async fn renew(&self, provider: &str, holder: &str, ttl: Duration) -> Result<(), PermitError>;
    async fn release(&self, provider: &str, holder: &str) -> Result<(), PermitError>;
    /// Records a call start for `provider` if fewer than `limit` started in the last `per`;
    /// otherwise takes nothing and says how long until the oldest start leaves the window.
    async fn try_start(
        &self,
        provider: &str,
        limit: u32,
        per: Duration,
    ) -> Result<Option<Duration>, PermitError>;
}

/// Permits within one process.
#[derive(Default)]
pub struct LocalPermits {
    held: Mutex<HashMap<String, Vec<String>>>,
    starts: Mutex<HashMap<String, std::collections::VecDeque<std::time::Instant>>>,
}

#[async_trait]
impl Permits for LocalPermits {
    async fn try_acquire(
        &self,
        provider: &str,
        holder: &str,
        max: u32,
        _ttl: Duration,
    ) -> Result<bool, PermitError> {
        let mut held = self
            .held
            .lock()
            .expect("the permits lock is never poisoned");
        let holders = held.entry(provider.to_owned()).or_default();
        if holders.iter().any(|h| h == holder) {
            return Ok(true);
        }
        if holders.len() as u32 >= max {
            return Ok(false);
        }
        holders.push(holder.to_owned());
        Ok(true)
    }

    async fn renew(
        &self,
        _provider: &str,
        _holder: &str,
        _ttl: Duration,
    ) -> Result<(), PermitError> {
        Ok(())
    }

    async fn release(&self, provider: &str, holder: &str) -> Result<(), PermitError> {
        let mut held = self
            .held
            .lock()
            .expect("the permits lock is never poisoned");
        if let Some(holders) = held.get_mut(provider) {
            holders.retain(|h| h != holder);
        }
        Ok(())
    }

    async fn try_start(
        &self,
        provider: &str,
        limit: u32,
        per: Duration,
    ) -> Result<Option<Duration>, PermitError> {
        if limit == 0 {
            // Nothing may start: say so, rather than look for the oldest of no starts.
            return Ok(Some(per));
        }
        let now = std::time::Instant::now();
        let mut starts = self.starts.lock().expect("the rate lock is never poisoned");
        let window = starts.entry(provider.to_owned()).or_default();
        while window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= per)
        {
            window.pop_front();
        }
        if (window.len() as u32) < limit {
            window.push_back(now);
            return Ok(None);
        }
        let oldest = *window.front().expect("a full window is not empty");
        Ok(Some(per.saturating_sub(now.duration_since(oldest))))
    }
}

/// Permits in Redis, shared by all workers.
pub struct RedisPermits {
    conn: redis::aio::ConnectionManager,
    prefix: String,
}

/// Drops expired permits, then takes one if fewer than ARGV[3] remain. Atomic in Redis.
const ACQUIRE: &str = r#"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZSCORE', KEYS[1], ARGV[4]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
  return 1
end
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
  return 1
end
return 0
"#;

/// Trims starts older than the window (ARGV[2]), then records one at ARGV[1] (member ARGV[4])
/// if fewer than ARGV[3] remain; otherwise answers the milliseconds until the oldest leaves.
const START: &str = r#"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  return -1
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return tonumber(oldest[2]) + tonumber(ARGV[5]) - tonumber(ARGV[1])
"#;

fn unavailable(e: impl std::fmt::Display) -> PermitError {
    PermitError::Unavailable(e.to_string())
}

fn now_ms() -> i64 {
    crate::time::to_millis(crate::time::now())
}

impl RedisPermits {
    pub fn new(conn: redis::aio::ConnectionManager, prefix: &str) -> Self {
        RedisPermits {
            conn,
            prefix: prefix.to_owned(),
        }
    }

    fn key(&self, provider: &str) -> String {
        format!("{}:permits:{provider}", self.prefix)
    }
}

#[async_trait]
impl Permits for RedisPermits {
    async fn try_acquire(
        &self,
        provider: &str,
        holder: &str,
        max: u32,
        ttl: Duration,
    ) -> Result<bool, PermitError> {
        let mut conn = self.conn.clone();
        let now = now_ms();
        let taken: i64 = redis::Script::new(ACQUIRE)
            .key(self.key(provider))
            .arg(now)
            .arg(now + ttl.as_millis() as i64)
            .arg(max)
            .arg(holder)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(taken == 1)
    }

    async fn renew(&self, provider: &str, holder: &str, ttl: Duration) -> Result<(), PermitError> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("ZADD");
        cmd.arg(self.key(provider))
            .arg("XX")
            .arg(now_ms() + ttl.as_millis() as i64)
            .arg(holder);
        cmd.query_async::<i64>(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn release(&self, provider: &str, holder: &str) -> Result<(), PermitError> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("ZREM");
        cmd.arg(self.key(provider)).arg(holder);
        cmd.query_async::<i64>(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn try_start(
        &self,
        provider: &str,
        limit: u32,
        per: Duration,
    ) -> Result<Option<Duration>, PermitError> {
        if limit == 0 {
            return Ok(Some(per));
        }
        let mut conn = self.conn.clone();
        let now = now_ms();
        let per_ms = per.as_millis().max(1) as i64;
        let member = format!("{now}-{:016x}", rand::random::<u64>());
        let wait_ms: i64 = redis::Script::new(START)
            .key(format!("{}:rate:{provider}", self.prefix))
            .arg(now)
            .arg(now - per_ms)
            .arg(limit)
            .arg(member)
            .arg(per_ms)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok((wait_ms >= 0).then(|| Duration::from_millis(wait_ms.max(1) as u64)))
    }
}

/// Shared handle type.
pub type SharedPermits = Arc<dyn Permits>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::redis::RedisDoorbell;
    use crate::testing::RedisServer;

    async fn caps_and_frees(permits: &dyn Permits, ttl: Duration) {
        assert!(permits.try_acquire("p", "a", 2, ttl).await.unwrap());
        assert!(permits.try_acquire("p", "b", 2, ttl).await.unwrap());
        assert!(
            !permits.try_acquire("p", "c", 2, ttl).await.unwrap(),
            "the cap holds"
        );
        assert!(
            permits.try_acquire("p", "a", 2, ttl).await.unwrap(),
            "a holder may take its own again"
        );
        assert!(
            permits.try_acquire("other", "c", 2, ttl).await.unwrap(),
            "caps are per provider"
        );
        permits.release("p", "a").await.unwrap();
        assert!(permits.try_acquire("p", "c", 2, ttl).await.unwrap());
    }

    async fn rates_slide(permits: &dyn Permits) {
        let per = Duration::from_millis(400);
        assert_eq!(permits.try_start("r", 2, per).await.unwrap(), None);
        assert_eq!(permits.try_start("r", 2, per).await.unwrap(), None);
        let wait = permits
            .try_start("r", 2, per)
            .await
            .unwrap()
            .expect("the window is full");
        assert!(wait <= per, "{wait:?}");
        assert_eq!(
            permits.try_start("other", 2, per).await.unwrap(),
            None,
            "per provider"
        );
        tokio::time::sleep(wait + Duration::from_millis(20)).await;
        assert_eq!(
            permits.try_start("r", 2, per).await.unwrap(),
            None,
            "the oldest left"
        );
    }

    #[tokio::test]
    async fn local_permits_cap_and_free() {
        caps_and_frees(&LocalPermits::default(), Duration::from_secs(30)).await;
    }

    #[tokio::test]
    async fn local_rates_slide() {
        rates_slide(&LocalPermits::default()).await;
    }

    #[tokio::test]
    async fn redis_rates_slide_across_clients() {
        let redis = RedisServer::start();
        let permits = RedisDoorbell::connect(&redis.url(), "t")
            .await
            .unwrap()
            .permits();
        rates_slide(&permits).await;
        // Another client (another worker) sees the same window.
        let other = RedisDoorbell::connect(&redis.url(), "t")
            .await
            .unwrap()
            .permits();
        let per = Duration::from_secs(5);
        assert_eq!(permits.try_start("shared", 1, per).await.unwrap(), None);
        assert!(other.try_start("shared", 1, per).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn redis_permits_cap_free_and_expire_with_dead_holders() {
        let redis = RedisServer::start();
        let permits = RedisDoorbell::connect(&redis.url(), "t")
            .await
            .unwrap()
            .permits();
        caps_and_frees(&permits, Duration::from_secs(30)).await;
        // A holder that stops renewing loses its permit when it expires.
        let short = Duration::from_millis(50);
        assert!(permits.try_acquire("q", "dead", 1, short).await.unwrap());
        assert!(!permits.try_acquire("q", "live", 1, short).await.unwrap());
        tokio::time::sleep(short * 2).await; // expiry is the behaviour under test
        assert!(permits.try_acquire("q", "live", 1, short).await.unwrap());
    }
}
