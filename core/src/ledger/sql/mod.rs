//! The SQL ledger, one implementation for both engines through sqlx's `Any` driver: SQLite for
//! the embedded default, Postgres for production. The schemas match column for column (times are
//! Unix milliseconds, numbers are 64-bit), so rows decode alike and every statement is written
//! once, with `?` placeholders that `Dialect::sql` turns into `$n` for Postgres. The dialects
//! differ only where the engines do: SQLite write transactions start with `BEGIN IMMEDIATE` (take
//! the write lock up front and wait on `busy_timeout`, instead of failing on a read-to-write
//! upgrade); on Postgres the hot path's writes have connections of their own, which plan each
//! statement once, by index (`POSTGRES_HOT_SESSION`); Postgres reads the rows it is about to
//! change with `FOR UPDATE`, and the reconciler skips rows another reconciler holds (`SKIP
//! LOCKED`), so concurrent passes never collide.
//!
//! The writes every job makes are shaped for throughput (see BENCHMARKS.md): concurrent
//! inserts, claims and successes share transactions (`GroupCommit`), and the inserts, claims and
//! successes of a group share statements too (`insert_batch_in`, `claims`, `succeed_batch_in`);
//! running jobs' lease renewals go many to a statement (`LeaseRenewals`), and so do webhook
//! tries' results (`DeliveryResults`). On Postgres each of these is one or two statements of
//! data-modifying CTEs; SQLite, which has none, takes a few multi-row statements per batch
//! instead, counted per batch, never per job. On a SQLite file the groups are written by the
//! embedded writer (`native`): sqlx hands each SQLite statement to the connection's thread and
//! back, and the one writer spent most of a burst in those hand-offs. The hot path's statements
//! are written once for both executors (`statements`). The contract tests run every path on
//! both engines.
//!
//! Times come from the application clock. Leases are tens of seconds and hosts run NTP, so the
//! clock skew between workers is far below what a lease tolerates.
//!
//! One file per aggregate, each implementing that aggregate's trait: `jobs` (submit, reads,
//! cancel, dispatch bookkeeping; the claims' statements in `claims`), `attempts` (a running attempt's writes and its
//! outputs), `pipelines`, `deliveries`, `keys`, `idempotency`, `usage` and `maintenance`
//! (worker identities, rescues, overdue jobs). Beside them: `dialect` (placeholders, locks),
//! `rows` (row decoding), `group` (group commit), `native` (the embedded writer),
//! `statements` (the executors' common ground), `renewals` (batched lease renewals) and
//! `delivery_results` (batched webhook results). This
//! file holds the ledger's handle, its transactions and the transition record every state
//! change writes.

use super::*;
use crate::job::{Attempt, Output};
use crate::time::{from_millis, now, to_millis};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, Executor, Row, Transaction};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// The ledger on one database: its pool, its dialect and the writers that batch its hot path.
pub struct SqlLedger {
    /// Where reads go (and, on Postgres, every write but the hot path's: there `writer` is this
    /// same pool).
    pool: AnyPool,
    /// Where every write goes. On SQLite, one connection, and the embedded writer beside it
    /// for the hot path's groups, taking turns: writers queue in the process, first come first
    /// served, instead of contending for SQLite's write lock, whose busy handler waits by
    /// sleeping (1, 2, 5, 10 … 100 ms); that sleeping, not the work, bounded the embedded
    /// default (a single connection for writes took it from 380 to about 900 lifecycles/s on
    /// the side-by-side workload). Reads keep their own connections: in WAL mode they never
    /// wait for the writer.
    writer: Writer,
    /// Where the hot path writes: on Postgres, connections of its own that plan each statement
    /// once (`POSTGRES_HOT_SESSION`); on SQLite, `writer`.
    hot: Writer,
    dialect: Dialect,
    /// `dispatch.tenant_window`: a tenant's queued jobs admitted to the shared queue at once.
    window: Arc<AtomicU32>,
    /// On a SQLite file, where the hot path's point reads run (`native::NativeReads`).
    reads: Option<native::NativeReads>,
    /// Where every job's insert, claim and success are written (see `GroupCommit`).
    group: GroupCommit,
    /// Where running jobs' leases are renewed (see `LeaseRenewals`).
    renewals: LeaseRenewals,
    /// Where webhook tries' results are written (see `DeliveryResults`).
    delivery_results: DeliveryResults,
    /// Deliveries this process's successes wrote already claimed, for its deliverer
    /// (`DeliveryLedger::start_handing_deliveries`).
    handoff: Arc<std::sync::Mutex<Handoff>>,
}

/// The deepest queue position counted (`Ledger::queue_position`): a job further back reads
/// as this many ahead. Every read of a queued job (its submit's answer and each poll) counts
/// the jobs ahead, one index entry and one row visit each, so the cap bounds that read's cost;
/// at 1,000 the count was half of all the Postgres buffer reads of a job's whole life.
pub const QUEUE_POSITION_CAP: u32 = 100;

/// The default of `dispatch.tenant_window`.
pub const DEFAULT_TENANT_WINDOW: u32 = 100;

/// Where every write goes: on Postgres the pool; on a SQLite file its one writer connection,
/// shared with the embedded writer that writes the hot path's groups (`native`) under one
/// write turn. SQLite's own lock would make the two contend through its busy handler, which
/// sleeps (1, 2, 5 … 100 ms); the turn queues them in the process, first come first served.
#[derive(Clone)]
pub(super) struct Writer {
    pool: AnyPool,
    turn: Option<WriteTurn>,
}

/// The right to write to a SQLite file, held for one transaction or statement.
pub(super) type WriteTurn = Arc<tokio::sync::Mutex<()>>;

/// How long a write waits for a connection, or for its turn, before the ledger is reported
/// unavailable.
const WRITE_WAIT: Duration = Duration::from_secs(10);

/// A writer connection held with the write turn (see `Writer`).
pub(super) struct WriterConn {
    // Dropped first: the connection goes back to its pool before the turn is given up.
    conn: sqlx::pool::PoolConnection<Any>,
    _turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl std::ops::Deref for WriterConn {
    type Target = sqlx::AnyConnection;

    fn deref(&self) -> &Self::Target {
        &self.conn
    }
}

impl std::ops::DerefMut for WriterConn {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.conn
    }
}

impl Writer {
    /// The write turn, where there is one. Waited for as long as the pool waits for a
    /// connection: a writer stuck behind it hears that the ledger is unavailable (a 503 with
    /// `Retry-After`) rather than waiting for good.
    pub(super) async fn take_turn(&self) -> Result<Option<tokio::sync::OwnedMutexGuard<()>>> {
        let Some(turn) = &self.turn else {
            return Ok(None);
        };
        match tokio::time::timeout(WRITE_WAIT, turn.clone().lock_owned()).await {
            Ok(turn) => Ok(Some(turn)),
            Err(_) => Err(sqlx::Error::PoolTimedOut.into()),
        }
    }

    /// A connection to write one statement on, outside any transaction.
    pub(super) async fn conn(&self) -> Result<WriterConn> {
        let turn = self.take_turn().await?;
        Ok(WriterConn {
            conn: self.pool.acquire().await?,
            _turn: turn,
        })
    }
}

/// A transaction plus its dialect, so helpers can write statements once.
struct Tx {
    // Dropped first: the transaction ends (or its rollback is queued) before the turn is
    // given up.
    tx: Transaction<'static, Any>,
    _turn: Option<tokio::sync::OwnedMutexGuard<()>>,
    d: Dialect,
    /// The tenant dispatch window, for the jobs this transaction inserts.
    window: u32,
    /// Transitions written, counted only once the transaction commits: a group of writes that
    /// fails and is written again write by write must not count its transitions twice.
    transitions: Vec<&'static str>,
}

impl Tx {
    /// Rolls back at once (a dropped transaction only queues its rollback on the connection,
    /// and the turn would be given up before it ran).
    async fn rollback(self) -> Result<()> {
        Ok(self.tx.rollback().await?)
    }

    /// Commits, then counts what was written.
    async fn commit(self) -> Result<()> {
        self.tx.commit().await?;
        for status in self.transitions {
            crate::metrics::transition(status);
        }
        Ok(())
    }
}

/// How each connection of the Postgres hot writer (`SqlLedger::hot`) plans, for its whole life.
///
/// The hot path's statements (the group commit's inserts, claims and successes, the
/// deliverer's claim, job read and results, lease renewals) find their rows through an index chosen for
/// them: by primary key (`= ANY (ARRAY(…))`, padded `IN` lists) or a partial index walked in its
/// order. Planned afresh on each execution (`plan_cache_mode = auto` kept custom plans for
/// them), planning was a quarter of Postgres's time on the hot path (BENCHMARKS.md, issue 17,
/// tenth pass). Here each is planned once per connection and kept (planned again only when
/// its tables' statistics change, or when it leaves sqlx's statement cache). A generic plan,
/// made without the parameters' values and, in a burst's first minutes, without statistics,
/// read whole tables by sequential scans and hash joins; with those weighed out, the one plan
/// kept is the index plan the custom plans chose. `enable_*` only weighs a plan: a statement
/// with no index to use still runs. The plan tests in `sql::tests` hold the claim, the
/// admissions, the holding probe and the delivery claim to their indexes under these settings.
///
/// The connections are the hot path's alone. A plan Postgres caches belongs to a connection's
/// prepared statement, so a statement also run elsewhere (a key's spend, read on the pool)
/// never brings a plan made under other settings, nor takes one away; and every other write
/// (the reconciler's sweeps, which do join and scan whole sets) plans as Postgres is configured.
pub(crate) const POSTGRES_HOT_SESSION: &str = "SET plan_cache_mode = force_generic_plan; \
     SET enable_seqscan = off; \
     SET enable_hashjoin = off; \
     SET enable_mergejoin = off";

/// Most connections of the Postgres hot writer: one each for the group commit's one group in
/// flight, the deliverer's claim and then its job read, the delivery results and the lease
/// renewals.
const HOT_CONNECTIONS: u32 = 4;

async fn begin_write(writer: &Writer, dialect: Dialect, window: &AtomicU32) -> Result<Tx> {
    let begin = match dialect {
        Dialect::Sqlite => "BEGIN IMMEDIATE",
        Dialect::Postgres => "BEGIN",
    };
    let turn = writer.take_turn().await?;
    Ok(Tx {
        tx: writer.pool.begin_with(begin).await?,
        _turn: turn,
        d: dialect,
        window: window.load(Ordering::Relaxed),
        transitions: Vec::new(),
    })
}

impl SqlLedger {
    /// Opens the database at `url` (a SQLite file is created if missing) and runs the migrations.
    pub async fn open(url: &str) -> Result<Self> {
        let dialect =
            Dialect::of_url(url).ok_or_else(|| LedgerError::UnsupportedUrl(redact(url)))?;
        sqlx::any::install_default_drivers();
        let (url, max) = match dialect {
            Dialect::Sqlite => (sqlite_url_creating(url), 8),
            Dialect::Postgres => (url.to_owned(), 16),
        };
        let options = move |max: u32| {
            AnyPoolOptions::new()
                .max_connections(max)
                .acquire_timeout(WRITE_WAIT)
                // A pooled Postgres connection is pinged before use: a restarted server leaves
                // the pool's connections dead, and the ping finds them before a request does
                // (the fault suite restarts it). A SQLite connection is a file this process
                // holds open; its ping was only a hand-off to its thread and back on every
                // acquire (sqlx still pings once on release).
                .test_before_acquire(dialect == Dialect::Postgres)
                .after_connect(move |conn, _| {
                    Box::pin(async move {
                        if dialect == Dialect::Sqlite {
                            // WAL + NORMAL is durable across process crashes (only an OS crash
                            // can lose the last transactions): the fault model of the embedded
                            // default.
                            conn.execute(
                                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                                 PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;",
                            )
                            .await?;
                        }
                        Ok(())
                    })
                })
        };
        let pool = options(max).connect(&url).await?;
        // An in-memory SQLite database is one per connection pool: it keeps one pool for both.
        // The embedded writer opens plain files, read-write, as sqlx does (in memory, read
        // only, or through another VFS, the two could open different databases).
        let on_file = dialect == Dialect::Sqlite
            && ![":memory:", "mode=memory", "mode=ro", "vfs="]
                .iter()
                .any(|special| url.contains(special));
        let writer = match on_file {
            true => options(1).connect(&url).await?,
            false => pool.clone(),
        };
        match dialect {
            Dialect::Sqlite => SQLITE_MIGRATIONS.run(&writer).await?,
            Dialect::Postgres => POSTGRES_MIGRATIONS.run(&writer).await?,
        }
        // A SQLite file's hot-path groups are written by the embedded writer, on a connection
        // of its own, taking turns with the pool's writer connection.
        let (native, reads) = match on_file {
            true => {
                let options: sqlx::sqlite::SqliteConnectOptions = url.parse()?;
                let path = options.get_filename();
                (
                    Some(native::NativeWriter::open(path)?),
                    Some(native::NativeReads::open(path)?),
                )
            }
            false => (None, None),
        };
        let writer = Writer {
            pool: writer,
            turn: native.as_ref().map(|_| WriteTurn::default()),
        };
        // On Postgres the hot path writes on connections of its own, planned once
        // (`POSTGRES_HOT_SESSION`); on SQLite it writes through the embedded writer, and any
        // write that falls back to sqlx takes the one writer's turn.
        let hot = match dialect {
            Dialect::Postgres => Writer {
                // The pool's own options (its wait, its ping), with the session's settings in
                // place of the SQLite pragmas.
                pool: options(HOT_CONNECTIONS)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            conn.execute(POSTGRES_HOT_SESSION).await?;
                            Ok(())
                        })
                    })
                    .connect(&url)
                    .await?,
                turn: None,
            },
            Dialect::Sqlite => writer.clone(),
        };
        let window = Arc::new(AtomicU32::new(DEFAULT_TENANT_WINDOW));
        // One group in flight per process on both engines: while it is written, the next one
        // gathers, so batches grow with the load. With four in flight on Postgres a free slot
        // was nearly always waiting, most groups held one write, and the side-by-side workload
        // ran about 10 % slower than with one (BENCHMARKS.md, issue 17).
        let slots = 1;
        Ok(SqlLedger {
            group: GroupCommit::start(hot.clone(), dialect, window.clone(), slots, native),
            reads,
            renewals: LeaseRenewals::start(hot.clone(), dialect),
            delivery_results: DeliveryResults::start(hot.clone(), dialect, window.clone()),
            handoff: Default::default(),
            hot,
            pool,
            writer,
            dialect,
            window,
        })
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    fn sql<'a>(&self, statement: &'a str) -> Cow<'a, str> {
        self.dialect.sql(statement)
    }

    async fn write_tx(&self) -> Result<Tx> {
        begin_write(&self.writer, self.dialect, &self.window).await
    }

    /// A transaction of the hot path's (`hot`): batched claims and successes handed over by a
    /// caller, and the deliverer's claim.
    async fn hot_tx(&self) -> Result<Tx> {
        begin_write(&self.hot, self.dialect, &self.window).await
    }

    /// `SELECT` of whole jobs: the job's columns and, from correlated subqueries, its attempts
    /// and outputs as JSON arrays, so a job is read in one statement (one round trip and one
    /// server wakeup instead of three, on every read of a job). `FROM jobs` follows.
    fn job_select(&self) -> &'static str {
        self.dialect.job_select()
    }

    fn load_job(&self, row: &impl Columns) -> Result<Job> {
        load_job(row)
    }

    /// The rows of a point read, `sql` written with `?`: a read whose cost the hot path bounds
    /// (rows by primary key, a count capped), never one whose size a client chooses. On a
    /// SQLite file it runs here and now (`native::NativeReads`), elsewhere on the pool.
    async fn point_rows(&self, sql: &str, args: Args) -> Result<Vec<ReadRow>> {
        self.point_rows_on(&self.pool, sql, args).await
    }

    /// `point_rows` for the hot path's own reads (the deliverer's jobs): on Postgres on the hot
    /// connections, where the read is planned once like the writes beside it
    /// (`POSTGRES_HOT_SESSION`).
    async fn hot_point_rows(&self, sql: &str, args: Args) -> Result<Vec<ReadRow>> {
        self.point_rows_on(&self.hot.pool, sql, args).await
    }

    async fn point_rows_on(&self, pool: &AnyPool, sql: &str, args: Args) -> Result<Vec<ReadRow>> {
        match &self.reads {
            Some(reads) => Ok(reads
                .rows(sql, args)?
                .into_iter()
                .map(ReadRow::Native)
                .collect()),
            None => Ok(args
                .bind_to(sqlx::query(&self.sql(sql)))
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(ReadRow::Pooled)
                .collect()),
        }
    }
}

/// `sqlite://path` with the file created if missing (`mode=rwc`).
fn sqlite_url_creating(url: &str) -> String {
    if url.contains("mode=") || url.contains(":memory:") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    }
}

/// A database URL without its password, for error messages.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.split('?').next().unwrap_or_default().to_owned(),
    }
}

async fn record_transition(
    tx: &mut Tx,
    job_id: &str,
    from: Option<Status>,
    to: Status,
    reason: Option<&str>,
    at: i64,
) -> Result<()> {
    tx.transitions.push(to.as_str());
    // One the job's own rows record is not written again (`Transition::is_implied`).
    if !Transition::is_implied(from, to, reason) {
        sqlx::query(&tx.d.sql(
            "INSERT INTO job_transitions (job_id, from_status, to_status, reason, at) VALUES (?, ?, ?, ?, ?)",
        ))
        .bind(job_id)
        .bind(from.map(Status::as_str))
        .bind(to.as_str())
        .bind(reason)
        .bind(at)
        .execute(&mut *tx.tx)
        .await?;
    }
    enqueue_webhook(tx, job_id, to, at).await
}

/// Whether a tenant's dispatch window has room: its admitted queued jobs, counted up to the
/// window, are fewer than the window. Binds the tenant, then the window twice. A macro so that
/// the submit's literal statement and the claim's formatted one share the one text.
macro_rules! window_has_room {
    () => {
        "(SELECT COUNT(*) FROM (SELECT 1 FROM jobs WHERE tenant = ? AND status = 'queued' AND rung_at >= 0 LIMIT ?) w) < ?"
    };
}

mod attempts;
mod claims;
mod deliveries;
mod delivery_results;
mod dialect;
mod files;
mod group;
mod idempotency;
mod jobs;
mod keys;
mod maintenance;
mod native;
mod pipelines;
mod renewals;
mod rows;
mod statements;
mod usage;

use attempts::*;
use claims::*;
use deliveries::*;
use delivery_results::*;
pub use dialect::Dialect;
use group::*;
use idempotency::*;
use jobs::*;
use renewals::*;
use rows::*;
use statements::*;
use usage::*;

#[async_trait]
impl Ledger for SqlLedger {
    async fn ping(&self) -> Result<()> {
        sqlx::query(&self.sql("SELECT 1"))
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
