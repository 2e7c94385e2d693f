//! Kiln's Redis doorbell on Redis Streams consumer groups. Each lane is a stream
//! (`{prefix}:dispatch:{lane}`) read by one consumer group shared by all workers. A ring is
//! `XADD … job <id>`; a worker reads with `XREADGROUP` (new entries) and `XAUTOCLAIM` (entries a
//! dead consumer held past `reclaim_idle`), and acknowledges with `XACK` + `XDEL` once the ledger
//! has decided the ring, which keeps the streams as short as the backlog. Acknowledgements
//! that arrive together (a read's rings are claimed together) go to Redis as one `XACK` and
//! one `XDEL` per lane, whatever is waiting when the previous pair returns. Lanes are read in a
//! weighted round (high, then half as many normal, then a quarter as many low), so high goes
//! first under load and low is never starved.
//!
//! Retries, leases and attempt counting live in the ledger and the executor, never here: the
//! doorbell only delivers at least once. A Redis restart is survived on both sides: the
//! connection manager reconnects producers, the consumer loop reconnects and re-creates its group,
//! and `epoch` (the server's run id) tells the reconciler to ring every due job again, since
//! rings held by a server without persistence are gone.

use super::{DispatchError, Doorbell, Lane, Receipt, Ring, RingStream};
use crate::job::JobId;
use async_trait::async_trait;
use futures::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use redis::{AsyncConnectionConfig, Client, RedisError};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The consumer group every Kiln worker joins.
pub const GROUP: &str = "kiln-workers";
/// Pending entries reclaimed per `XAUTOCLAIM`, and calls per lane per reclaim round.
const RECLAIM_BATCH: usize = 100;
const RECLAIM_ROUNDS: usize = 10;
/// How long a producer waits for Redis before reporting the queue unavailable.
const PRODUCER_TIMEOUT: Duration = Duration::from_secs(2);
/// Most acknowledgements one `XACK` carries.
const ACK_BATCH_MAX: usize = 256;

type PendingAck = (
    Receipt,
    tokio::sync::oneshot::Sender<Result<(), DispatchError>>,
);

#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// This consumer's name in the group: the worker's identity.
    pub consumer: String,
    /// New entries fetched per read, at most.
    pub batch: usize,
    /// The worker's free slots: a read fetches no more new entries than there are (at least
    /// one). Without them every read fetches `batch`.
    pub free_slots: Option<std::sync::Arc<super::FreeSlots>>,
    /// How long one blocking read waits for new rings.
    pub block: Duration,
    /// A pending ring idle this long belongs to a consumer presumed dead and is reclaimed.
    pub reclaim_idle: Duration,
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        ConsumerSettings {
            consumer: "kiln".into(),
            batch: 16,
            free_slots: None,
            block: Duration::from_secs(2),
            reclaim_idle: Duration::from_secs(60),
        }
    }
}

#[derive(Clone)]
pub struct RedisDoorbell {
    client: Client,
    conn: ConnectionManager,
    prefix: String,
    /// Where `ack` queues its receipt for the next batch (see `acknowledge_batches`).
    acks: tokio::sync::mpsc::UnboundedSender<PendingAck>,
}

fn unavailable(e: impl std::fmt::Display) -> DispatchError {
    DispatchError::Unavailable(e.to_string())
}

impl RedisDoorbell {
    /// Connects to `url`; streams are named under `prefix`.
    pub async fn connect(url: &str, prefix: &str) -> Result<RedisDoorbell, DispatchError> {
        let client = Client::open(url).map_err(unavailable)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(PRODUCER_TIMEOUT))
            .set_response_timeout(Some(PRODUCER_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let conn = tokio::time::timeout(
            PRODUCER_TIMEOUT * 3,
            client.get_connection_manager_with_config(config),
        )
        .await
        .map_err(|_| unavailable("timed out connecting to Redis"))?
        .map_err(unavailable)?;
        let (acks, waiting) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(acknowledge_batches(
            conn.clone(),
            prefix.to_owned(),
            waiting,
        ));
        Ok(RedisDoorbell {
            client,
            conn,
            prefix: prefix.to_owned(),
            acks,
        })
    }

    fn key(&self, lane: Lane) -> String {
        stream_key(&self.prefix, lane)
    }

    /// Provider permits on the same Redis, under the same prefix.
    pub fn permits(&self) -> crate::permits::RedisPermits {
        crate::permits::RedisPermits::new(self.conn.clone(), &self.prefix)
    }

    /// The rings of every lane for one consumer, as an apalis backend stream.
    pub fn consume(&self, settings: ConsumerSettings) -> RingStream {
        futures::stream::unfold(self.consumer(settings), |mut consumer| async move {
            loop {
                if let Some(ring) = consumer.buffer.pop_front() {
                    return Some((Ok(ring), consumer));
                }
                consumer.fill().await;
            }
        })
        .boxed()
    }

    /// A consumer's state before its first round: no connection, no groups made yet.
    fn consumer(&self, settings: ConsumerSettings) -> Consumer {
        Consumer {
            client: self.client.clone(),
            conn: None,
            keys: Lane::ALL.iter().map(|l| (*l, self.key(*l))).collect(),
            settings,
            buffer: VecDeque::new(),
            groups_ready: false,
            last_reclaim: None,
            backoff: Duration::from_millis(100),
            malformed: Vec::new(),
        }
    }
}

pub fn stream_key(prefix: &str, lane: Lane) -> String {
    format!("{prefix}:dispatch:{}", lane.as_str())
}

#[async_trait]
impl Doorbell for RedisDoorbell {
    async fn ring(&self, job: JobId, lane: Lane) -> Result<(), DispatchError> {
        let mut conn = self.conn.clone();
        let mut add = redis::cmd("XADD");
        add.arg(self.key(lane))
            .arg("*")
            .arg("job")
            .arg(job.to_string());
        tokio::time::timeout(PRODUCER_TIMEOUT, add.query_async::<String>(&mut conn))
            .await
            .map_err(|_| unavailable("timed out ringing Redis"))?
            .map_err(unavailable)?;
        Ok(())
    }

    async fn ack(&self, receipt: &Receipt) -> Result<(), DispatchError> {
        let (reply, done) = tokio::sync::oneshot::channel();
        let stopped = || unavailable("the acknowledgement batcher stopped");
        self.acks
            .send((receipt.clone(), reply))
            .map_err(|_| stopped())?;
        done.await.map_err(|_| stopped())?
    }

    async fn epoch(&self) -> Option<String> {
        let mut conn = self.conn.clone();
        let mut info = redis::cmd("INFO");
        info.arg("server");
        let info = tokio::time::timeout(PRODUCER_TIMEOUT, info.query_async::<String>(&mut conn))
            .await
            .ok()?
            .ok()?;
        info.lines()
            .find_map(|l| l.strip_prefix("run_id:"))
            .map(|id| id.trim().to_owned())
    }
}

/// Sends the acknowledgements waiting in `waiting` a batch at a time: each batch is one
/// pipeline of an `XACK` and an `XDEL` per lane that has receipts in it, and every receipt in
/// the batch gets that pipeline's answer. Ends when the last doorbell handle is dropped.
async fn acknowledge_batches(
    conn: ConnectionManager,
    prefix: String,
    mut waiting: tokio::sync::mpsc::UnboundedReceiver<PendingAck>,
) {
    while let Some(first) = waiting.recv().await {
        let batch = crate::batch::take_waiting(first, &mut waiting, ACK_BATCH_MAX);
        let mut pipe = redis::pipe();
        for lane in Lane::ALL {
            let ids: Vec<&str> = batch
                .iter()
                .filter(|(r, _)| r.lane == lane)
                .map(|(r, _)| r.message_id.as_str())
                .collect();
            if ids.is_empty() {
                continue;
            }
            let key = stream_key(&prefix, lane);
            pipe.cmd("XACK")
                .arg(&key)
                .arg(GROUP)
                .arg(&ids)
                .ignore()
                .cmd("XDEL")
                .arg(&key)
                .arg(&ids)
                .ignore();
        }
        let mut conn = conn.clone();
        let sent = tokio::time::timeout(PRODUCER_TIMEOUT, pipe.query_async::<()>(&mut conn)).await;
        let answer = match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out acknowledging in Redis".to_owned()),
        };
        for (_, reply) in batch {
            let _ = reply.send(answer.clone().map_err(DispatchError::Unavailable));
        }
    }
}

/// The consumer loop's state. It owns a connection of its own, because a blocking read holds
/// its connection for the whole wait.
struct Consumer {
    client: Client,
    conn: Option<MultiplexedConnection>,
    keys: Vec<(Lane, String)>,
    settings: ConsumerSettings,
    buffer: VecDeque<Ring>,
    groups_ready: bool,
    last_reclaim: Option<Instant>,
    backoff: Duration,
    /// Entries that carry no job id: acknowledged and deleted so they are not reclaimed forever.
    malformed: Vec<(Lane, String)>,
}

impl Consumer {
    fn lane_of(&self, key: &str) -> Lane {
        self.keys
            .iter()
            .find(|(_, k)| k == key)
            .map(|(l, _)| *l)
            .unwrap_or(Lane::Normal)
    }

    fn push(&mut self, lane: Lane, entry: &StreamId) {
        let job = entry
            .get::<String>("job")
            .and_then(|s| s.parse::<JobId>().ok());
        match job {
            Some(job) => self.buffer.push_back(Ring {
                job,
                receipt: Some(Receipt {
                    lane,
                    message_id: entry.id.clone(),
                }),
            }),
            None => {
                tracing::warn!(id = %entry.id, "dropping a malformed ring");
                self.malformed.push((lane, entry.id.clone()));
            }
        }
    }

    async fn fault(&mut self, e: RedisError) {
        if e.code() == Some("NOGROUP") {
            // The server lost our group (a restart without persistence): make it again.
            self.groups_ready = false;
            return;
        }
        tracing::warn!(error = %e, retry_in = ?self.backoff, "reading the dispatch queue failed");
        self.conn = None;
        self.groups_ready = false;
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(Duration::from_secs(2));
    }

    /// One round: (re)connect, make groups, reclaim from dead consumers, read new rings.
    async fn fill(&mut self) {
        let block = self.settings.block;
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(PRODUCER_TIMEOUT))
                    .set_response_timeout(Some(block + PRODUCER_TIMEOUT));
                match self
                    .client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                {
                    Ok(conn) => self.conn.insert(conn),
                    Err(e) => return self.fault(e).await,
                }
            }
        };
        let mut conn = conn.clone();
        if !self.groups_ready {
            for (_, key) in &self.keys {
                let created = redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(key)
                    .arg(GROUP)
                    .arg("0")
                    .arg("MKSTREAM")
                    .query_async::<()>(&mut conn)
                    .await;
                match created {
                    Ok(()) => {}
                    Err(e) if e.code() == Some("BUSYGROUP") => {}
                    Err(e) => return self.fault(e).await,
                }
            }
            self.groups_ready = true;
        }
        for (lane, id) in std::mem::take(&mut self.malformed) {
            let key = self
                .keys
                .iter()
                .find(|(l, _)| *l == lane)
                .map(|(_, k)| k.clone())
                .unwrap_or_default();
            let mut drop_it = redis::pipe();
            drop_it
                .cmd("XACK")
                .arg(&key)
                .arg(GROUP)
                .arg(&id)
                .ignore()
                .cmd("XDEL")
                .arg(&key)
                .arg(&id)
                .ignore();
            if let Err(e) = drop_it.query_async::<()>(&mut conn).await {
                self.malformed.push((lane, id));
                return self.fault(e).await;
            }
        }
        let reclaim_due = self
            .last_reclaim
            .is_none_or(|at| at.elapsed() >= self.settings.reclaim_idle / 2);
        if reclaim_due {
            self.last_reclaim = Some(Instant::now());
            for i in 0..self.keys.len() {
                let (lane, key) = self.keys[i].clone();
                // Follow the cursor, boundedly: a large pending list (after a long outage) is
                // worked off over several rounds without one round taking forever.
                let mut cursor = "0-0".to_owned();
                for _ in 0..RECLAIM_ROUNDS {
                    let reply = redis::cmd("XAUTOCLAIM")
                        .arg(&key)
                        .arg(GROUP)
                        .arg(&self.settings.consumer)
                        .arg(self.settings.reclaim_idle.as_millis() as u64)
                        .arg(&cursor)
                        .arg("COUNT")
                        .arg(RECLAIM_BATCH)
                        .query_async::<StreamAutoClaimReply>(&mut conn)
                        .await;
                    match reply {
                        Ok(reply) => {
                            if !reply.claimed.is_empty() {
                                tracing::info!(
                                    count = reply.claimed.len(),
                                    lane = lane.as_str(),
                                    "reclaimed rings from a dead consumer"
                                );
                            }
                            for entry in &reply.claimed {
                                self.push(lane, entry);
                            }
                            if reply.next_stream_id == "0-0" {
                                break;
                            }
                            cursor = reply.next_stream_id;
                        }
                        Err(e) => return self.fault(e).await,
                    }
                }
            }
            if !self.buffer.is_empty() {
                return;
            }
        }
        // Weighted by lane: each round takes up to `batch` high rings, half as many normal and
        // a quarter as many low (at least one each), highest first, without waiting; only when
        // every lane is empty does one blocking read wait for the next ring in any lane. The
        // lanes' reads go as one pipeline: one round trip a round instead of one per lane
        // (BENCHMARKS.md, issue 17, twelfth pass). `batch` is bounded by the worker's free
        // slots: a worker with room takes what is waiting in one read (one read per ring cost
        // a round trip per job, sixteenth pass), and a busy one takes no ring it cannot start.
        let batch = match &self.settings.free_slots {
            Some(slots) => self.settings.batch.min(slots.free().max(1)),
            None => self.settings.batch,
        };
        let mut round = redis::pipe();
        let lanes: Vec<Lane> = self.keys.iter().map(|(lane, _)| *lane).collect();
        for ((_, key), divisor) in self.keys.iter().zip([1usize, 2, 4]) {
            let count = (batch / divisor).max(1);
            round.add_command(read_group_cmd(&self.settings.consumer, &[key], count, None));
        }
        let mut taken = 0;
        match round
            .query_async::<Vec<Option<StreamReadReply>>>(&mut conn)
            .await
        {
            Ok(replies) => {
                for (lane, reply) in lanes.into_iter().zip(replies) {
                    for stream in reply.map(|r| r.keys).unwrap_or_default() {
                        for entry in &stream.ids {
                            self.push(lane, entry);
                            taken += 1;
                        }
                    }
                }
            }
            Err(e) => return self.fault(e).await,
        }
        if taken > 0 {
            self.backoff = Duration::from_millis(100);
            return;
        }
        let keys: Vec<String> = self.keys.iter().map(|(_, k)| k.clone()).collect();
        match read_group(&mut conn, &self.settings.consumer, &keys, 1, Some(block)).await {
            Ok(reply) => {
                self.backoff = Duration::from_millis(100);
                for stream in reply {
                    let lane = self.lane_of(&stream.key);
                    for entry in &stream.ids {
                        self.push(lane, entry);
                    }
                }
            }
            Err(e) => self.fault(e).await,
        }
    }
}

/// `XREADGROUP` of new rings from `keys`, up to `count` per stream, waiting up to `block`.
async fn read_group(
    conn: &mut MultiplexedConnection,
    consumer: &str,
    keys: &[String],
    count: usize,
    block: Option<Duration>,
) -> Result<Vec<redis::streams::StreamKey>, RedisError> {
    let reply = read_group_cmd(consumer, keys, count, block)
        .query_async::<Option<StreamReadReply>>(conn)
        .await?;
    Ok(reply.map(|r| r.keys).unwrap_or_default())
}

/// The `XREADGROUP` command `read_group` sends.
fn read_group_cmd(
    consumer: &str,
    keys: &[impl redis::ToRedisArgs],
    count: usize,
    block: Option<Duration>,
) -> redis::Cmd {
    let mut read = redis::cmd("XREADGROUP");
    read.arg("GROUP")
        .arg(GROUP)
        .arg(consumer)
        .arg("COUNT")
        .arg(count);
    if let Some(block) = block {
        read.arg("BLOCK").arg(block.as_millis() as u64);
    }
    read.arg("STREAMS");
    for key in keys {
        read.arg(key);
    }
    for _ in keys {
        read.arg(">");
    }
    read
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::RedisServer;

    fn settings(consumer: &str, reclaim_idle: Duration) -> ConsumerSettings {
        ConsumerSettings {
            consumer: consumer.into(),
            batch: 8,
            free_slots: None,
            block: Duration::from_millis(200),
            reclaim_idle,
        }
    }

    async fn next(rings: &mut RingStream) -> Ring {
        tokio::time::timeout(Duration::from_secs(10), rings.next())
            .await
            .expect("a ring arrives")
            .expect("the stream goes on")
            .unwrap()
    }

    #[tokio::test]
    async fn rings_are_delivered_once_and_acknowledged_rings_are_gone() {
        let redis = RedisServer::start();
        let bell = RedisDoorbell::connect(&redis.url(), "t").await.unwrap();
        let mut a = bell.consume(settings("a", Duration::from_secs(60)));
        let mut b = bell.consume(settings("b", Duration::from_secs(60)));
        let jobs: Vec<JobId> = (0..4).map(|_| JobId::new()).collect();
        for j in &jobs {
            bell.ring(*j, Lane::Normal).await.unwrap();
        }
        let mut seen = vec![];
        while seen.len() < jobs.len() {
            let ring = tokio::select! { r = next(&mut a) => r, r = next(&mut b) => r };
            bell.ack(ring.receipt.as_ref().unwrap()).await.unwrap();
            seen.push(ring.job);
        }
        seen.sort();
        let mut expected = jobs.clone();
        expected.sort();
        assert_eq!(seen, expected, "each ring once, across consumers");
        let mut conn = bell.conn.clone();
        let len: usize = redis::cmd("XLEN")
            .arg(stream_key("t", Lane::Normal))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(len, 0, "acknowledged rings are deleted");
    }

    #[tokio::test]
    async fn each_read_takes_every_lane_highest_first() {
        let redis = RedisServer::start();
        let bell = RedisDoorbell::connect(&redis.url(), "t").await.unwrap();
        let lows: Vec<JobId> = (0..3).map(|_| JobId::new()).collect();
        for j in &lows {
            bell.ring(*j, Lane::Low).await.unwrap();
        }
        let high = JobId::new();
        bell.ring(high, Lane::High).await.unwrap();
        // Rung before anyone reads: the first read holds both lanes, the high one first.
        let mut rings = bell.consume(settings("a", Duration::from_secs(60)));
        let first = next(&mut rings).await;
        assert_eq!(first.job, high);
        assert_eq!(first.receipt.as_ref().unwrap().lane, Lane::High);
        for j in &lows {
            let ring = next(&mut rings).await;
            assert_eq!(ring.job, *j);
            assert_eq!(ring.receipt.as_ref().unwrap().lane, Lane::Low);
        }
    }

    /// Redis's count of the reads it has processed from all its clients (a read event takes
    /// whatever a client's socket holds at once: one pipeline, or one lone command).
    async fn reads_processed(conn: &mut impl redis::aio::ConnectionLike) -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("stats")
            .query_async(conn)
            .await
            .unwrap();
        info.lines()
            .find_map(|line| line.strip_prefix("total_reads_processed:"))
            .expect("INFO stats names its reads")
            .trim()
            .parse()
            .unwrap()
    }

    #[tokio::test]
    async fn a_round_reads_every_lane_in_one_round_trip() {
        let redis = RedisServer::start();
        let bell = RedisDoorbell::connect(&redis.url(), "t").await.unwrap();
        let mut consumer = bell.consumer(settings("a", Duration::from_secs(60)));
        // The first round makes the groups and looks for rings to reclaim, each its own
        // command; it finds nothing to read and waits its block out.
        consumer.fill().await;
        assert!(consumer.buffer.is_empty());
        for lane in Lane::ALL {
            bell.ring(JobId::new(), lane).await.unwrap();
        }
        let mut observer = bell.conn.clone();
        let before = reads_processed(&mut observer).await;
        consumer.fill().await;
        let after = reads_processed(&mut observer).await;
        assert_eq!(
            consumer.buffer.len(),
            Lane::ALL.len(),
            "one ring of each lane"
        );
        // The second `INFO` is a read of its own: one more is the round's three reads together.
        assert_eq!(
            after - before,
            2,
            "the round's three lane reads arrive as one"
        );
    }

    /// A round takes no more new rings than the worker can start now: a ring taken early would
    /// wait in this worker's buffer behind its running jobs while another worker idled. With
    /// room, one round takes everything waiting (up to `batch`), not one ring per read.
    #[tokio::test]
    async fn a_round_takes_no_more_rings_than_the_worker_has_free_slots() {
        let redis = RedisServer::start();
        let bell = RedisDoorbell::connect(&redis.url(), "t").await.unwrap();
        for _ in 0..10 {
            bell.ring(JobId::new(), Lane::High).await.unwrap();
        }
        let slots = super::super::FreeSlots::new(4);
        let busy = slots.hold();
        let mut consumer = bell.consumer(ConsumerSettings {
            batch: 16,
            free_slots: Some(slots.clone()),
            ..settings("a", Duration::from_secs(60))
        });
        consumer.fill().await;
        assert_eq!(consumer.buffer.len(), 3, "three of four slots are free");
        consumer.buffer.clear();
        drop(busy);
        assert_eq!(
            slots.free(),
            4,
            "a slot is free again once its guard is dropped"
        );
        consumer.settings.free_slots = Some(super::super::FreeSlots::new(100));
        consumer.fill().await;
        assert_eq!(consumer.buffer.len(), 7, "the other seven, in one round");
    }

    #[tokio::test]
    async fn under_a_backlog_each_round_takes_high_four_to_one_over_low() {
        let redis = RedisServer::start();
        let bell = RedisDoorbell::connect(&redis.url(), "t").await.unwrap();
        for _ in 0..40 {
            bell.ring(JobId::new(), Lane::High).await.unwrap();
        }
        for _ in 0..10 {
            bell.ring(JobId::new(), Lane::Low).await.unwrap();
        }
        let mut rings = bell.consume(settings("a", Duration::from_secs(60)));
        let mut lanes = vec![];
        for _ in 0..20 {
            lanes.push(next(&mut rings).await.receipt.unwrap().lane);
        }
        let low = lanes.iter().filter(|l| **l == Lane::Low).count();
        // Batch 8: each round is 8 high and 2 low.
        assert_eq!(low, 4, "{lanes:?}");
        assert_eq!(lanes[0], Lane::High);
    }

    #[tokio::test]
    async fn a_dead_consumers_rings_are_reclaimed() {
        let redis = RedisServer::start();
        let bell = RedisDoorbell::connect(&redis.url(), "t").await.unwrap();
        let job = JobId::new();
        {
            // This consumer takes the ring and dies without acknowledging it.
            let mut dying = bell.consume(settings("dying", Duration::from_millis(100)));
            bell.ring(job, Lane::Normal).await.unwrap();
            assert_eq!(next(&mut dying).await.job, job);
        }
        let mut survivor = bell.consume(settings("survivor", Duration::from_millis(100)));
        let ring = next(&mut survivor).await;
        assert_eq!(ring.job, job);
        bell.ack(ring.receipt.as_ref().unwrap()).await.unwrap();
    }

    #[tokio::test]
    async fn consumers_and_producers_survive_a_redis_restart() {
        let mut redis = RedisServer::start();
        let bell = RedisDoorbell::connect(&redis.url(), "t").await.unwrap();
        let mut rings = bell.consume(settings("w", Duration::from_secs(60)));
        let before = JobId::new();
        bell.ring(before, Lane::Normal).await.unwrap();
        assert_eq!(next(&mut rings).await.job, before);
        let epoch = bell.epoch().await.unwrap();

        redis.kill();
        assert!(
            bell.ring(JobId::new(), Lane::Normal).await.is_err(),
            "a ring with Redis down fails fast"
        );
        redis.restart();

        // Producers reconnect on their own; the consumer re-creates its group and reads on.
        let after = JobId::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while bell.ring(after, Lane::Normal).await.is_err() {
            assert!(Instant::now() < deadline, "the producer never reconnected");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(next(&mut rings).await.job, after);
        assert_ne!(
            bell.epoch().await.unwrap(),
            epoch,
            "the restart shows as a new epoch"
        );
    }
}
