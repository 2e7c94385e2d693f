//! The embedded default's group writer: a thread of its own that holds a SQLite connection to
//! the ledger's file and writes each group of the hot path's writes (`GroupCommit`) from
//! `BEGIN` to `COMMIT` in one go, with its statements prepared once and kept.
//!
//! Why a connection apart from sqlx's: sqlx runs each SQLite connection on a thread of its
//! own, and every statement is a message to that thread and a message back. A group took a
//! dozen or more of them, and on a busy machine each hand-off waited for a core, so the one
//! writer, which every submit, claim and success waits for, spent most of its time between
//! statements rather than in them (BENCHMARKS.md, issue 17). Here a group is one hand-off in
//! and one answer per write out. The statements are the ones every engine runs
//! (`statements::WriteTx`): this file only executes them.
//!
//! The pool's writer connection and this one take turns (`Writer`'s write turn): the group
//! task takes the turn before it hands a group over, and this thread gives it back after the
//! commit, so the two never meet in SQLite's lock, whose busy handler sleeps.
//!
//! The hot path's point reads (a job by id, a few jobs by id, a queued job's place) are run
//! where they are asked, on read-only connections of the same file (`NativeReads`): each is
//! a few index probes in a process-local file, so taking it to another thread and back (as
//! sqlx does) cost more than the read. Reads whose size a client chooses (lists, usage) stay
//! on sqlx's pool, off the runtime's threads.

use super::*;
use rusqlite::types::Value;
use std::path::Path;

/// How many prepared statements the writer keeps. A group's statements vary with its size
/// (a `VALUES` row per job), so this holds the shapes of many group sizes at once.
const STATEMENT_CACHE: usize = 512;

/// One group for the writer's thread, with the turn it writes under.
struct Work {
    group: Vec<Pending>,
    turn: Option<tokio::sync::OwnedMutexGuard<()>>,
    window: Arc<AtomicU32>,
    done: tokio::sync::oneshot::Sender<Written>,
}

/// What a group came to: each write's answer, and the transitions its commits wrote. Both go
/// back to the group's task, which counts the transitions and then answers, so that a writer
/// that hears its answer finds its transition counted (and counted by the recorder of the
/// runtime's thread, as sqlx's writes are).
struct Written {
    answers: Vec<Answer>,
    transitions: Vec<&'static str>,
}

/// The handle to the writer's thread. The thread ends once every handle is gone.
#[derive(Clone)]
pub(super) struct NativeWriter {
    work: std::sync::mpsc::Sender<Work>,
}

impl NativeWriter {
    /// Opens the ledger's file (its migrations already run) and starts the writer's thread.
    pub(super) fn open(path: &Path) -> Result<Self> {
        let conn = rusqlite::Connection::open(path)?;
        // The write turn keeps the pool's writer out while this one writes; the busy timeout
        // covers a rollback the pool's connection has not yet flushed, and another process
        // writing the same file (`kiln api` and `kiln worker` run apart).
        conn.busy_timeout(Duration::from_secs(10))?;
        // As the pool's connections are set up (`SqlLedger::open`): WAL + NORMAL is durable
        // across process crashes.
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
        )?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        let (work, queue) = std::sync::mpsc::channel::<Work>();
        std::thread::Builder::new()
            .name("kiln-ledger-writer".into())
            .spawn(move || write_groups(conn, queue))
            .map_err(|e| LedgerError::Embedded(format!("starting the writer's thread: {e}")))?;
        Ok(NativeWriter { work })
    }

    /// Writes `group` under `turn`, then answers each write; returns once the turn is given
    /// back and every write answered.
    pub(super) async fn write(
        &self,
        group: Vec<Pending>,
        turn: Option<tokio::sync::OwnedMutexGuard<()>>,
        window: Arc<AtomicU32>,
    ) {
        let (done, written) = tokio::sync::oneshot::channel();
        // If the thread is gone, the group is dropped with the message, and each writer hears
        // that the ledger's writer stopped.
        if self
            .work
            .send(Work {
                group,
                turn,
                window,
                done,
            })
            .is_ok()
        {
            if let Ok(Written {
                answers,
                transitions,
            }) = written.await
            {
                for status in transitions {
                    crate::metrics::transition(status);
                }
                for (reply, written) in answers {
                    let _ = reply.send(written);
                }
            }
        }
    }
}

/// The writer's thread: each group is written to its end here. `written_group`'s futures never
/// wait on anything (every statement runs as it is called), so driving one is a plain call.
///
/// A group that panics is its own loss, not the ledger's: its transaction is rolled back as
/// the panic unwinds (`NativeTx`'s drop), its writers hear that the writer stopped (their
/// answers are dropped), and the thread goes on to the next group, as a panicking group task
/// did before this thread existed.
fn write_groups(mut conn: rusqlite::Connection, queue: std::sync::mpsc::Receiver<Work>) {
    while let Ok(work) = queue.recv() {
        let Work {
            group,
            turn,
            window,
            done,
        } = work;
        let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut target = NativeGroups {
                conn: &mut conn,
                window: &window,
                transitions: Vec::new(),
            };
            let answers = futures::executor::block_on(written_group(&mut target, group));
            Written {
                answers,
                transitions: target.transitions,
            }
        }));
        drop(turn);
        match written {
            Ok(written) => {
                let _ = done.send(written);
            }
            Err(_) => tracing::error!("a group of ledger writes panicked; its writers were told"),
        }
    }
}

/// `GroupTarget` on the writer's connection.
struct NativeGroups<'a> {
    conn: &'a mut rusqlite::Connection,
    window: &'a AtomicU32,
    /// The transitions of the transactions committed, to be counted by the group's task.
    transitions: Vec<&'static str>,
}

impl GroupTarget for NativeGroups<'_> {
    async fn write_in_one(&mut self, writes: &[&GroupWrite]) -> Result<Vec<GroupWritten>> {
        let mut tx = NativeTx::begin(self.conn, self.window.load(Ordering::Relaxed))?;
        let written = write_in(&mut tx, writes).await?;
        let committed = tx.commit()?;
        self.transitions.extend(committed);
        Ok(written)
    }
}

/// A write transaction on the writer's connection; rolled back if dropped uncommitted.
struct NativeTx<'c> {
    conn: &'c mut rusqlite::Connection,
    window: u32,
    transitions: Vec<&'static str>,
    open: bool,
}

impl<'c> NativeTx<'c> {
    fn begin(conn: &'c mut rusqlite::Connection, window: u32) -> Result<Self> {
        // A rollback that failed (logged in `drop`) left a transaction open: it ends here, or
        // every later group would fail to begin.
        if !conn.is_autocommit() {
            conn.execute_batch("ROLLBACK")?;
        }
        conn.execute_batch("BEGIN IMMEDIATE")?;
        Ok(NativeTx {
            conn,
            window,
            transitions: Vec::new(),
            open: true,
        })
    }

    /// Commits; returns the transitions written, to be counted.
    fn commit(mut self) -> Result<Vec<&'static str>> {
        self.conn.execute_batch("COMMIT")?;
        self.open = false;
        Ok(std::mem::take(&mut self.transitions))
    }
}

/// `sql` prepared on `conn` (or taken from its cache) with `args` bound, checked against its
/// placeholders: a statement bound short or long is an error here, not a wrong row.
fn prepared<'c>(
    conn: &'c rusqlite::Connection,
    sql: &str,
    args: Args,
) -> Result<rusqlite::CachedStatement<'c>> {
    let mut statement = conn.prepare_cached(sql)?;
    if statement.parameter_count() != args.0.len() {
        return Err(LedgerError::Embedded(format!(
            "a statement with {} parameters was given {}",
            statement.parameter_count(),
            args.0.len()
        )));
    }
    for (i, arg) in args.0.into_iter().enumerate() {
        match arg {
            Arg::Int(value) => statement.raw_bind_parameter(i + 1, value)?,
            Arg::Text(value) => statement.raw_bind_parameter(i + 1, value)?,
        }
    }
    Ok(statement)
}

/// The rows of `sql` run on `conn`.
fn rows_of(conn: &rusqlite::Connection, sql: &str, args: Args) -> Result<Vec<NativeRow>> {
    let mut statement = prepared(conn, sql, args)?;
    let names: Arc<[String]> = statement
        .column_names()
        .into_iter()
        .map(str::to_owned)
        .collect();
    let mut rows = statement.raw_query();
    let mut read = Vec::new();
    while let Some(row) = rows.next()? {
        let values = (0..names.len())
            .map(|i| owned_value(row.get_ref(i)?, &names[i]))
            .collect::<Result<Vec<Value>>>()?;
        read.push(NativeRow {
            names: names.clone(),
            values,
        });
    }
    Ok(read)
}

/// Most idle read connections kept; more are opened while reads overlap, and closed after.
const IDLE_READERS: usize = 4;

/// Read-only connections to the ledger's file for the hot path's point reads, run where they
/// are asked (see the module's doc).
pub(super) struct NativeReads {
    path: std::path::PathBuf,
    idle: std::sync::Mutex<Vec<rusqlite::Connection>>,
}

impl NativeReads {
    pub(super) fn open(path: &Path) -> Result<Self> {
        let reads = NativeReads {
            path: path.to_owned(),
            idle: std::sync::Mutex::new(Vec::new()),
        };
        // One opened now, so a file that cannot be read fails the ledger's opening.
        let first = reads.connect()?;
        reads.idle.lock().expect("never poisoned").push(first);
        Ok(reads)
    }

    fn connect(&self) -> Result<rusqlite::Connection> {
        let conn = rusqlite::Connection::open_with_flags(
            &self.path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // In WAL mode a reader waits only while the file is recovered or its log restarted.
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.set_prepared_statement_cache_capacity(64);
        Ok(conn)
    }

    /// The rows of `sql`, read now on this thread.
    pub(super) fn rows(&self, sql: &str, args: Args) -> Result<Vec<NativeRow>> {
        let idle = self.idle.lock().expect("never poisoned").pop();
        let conn = match idle {
            Some(conn) => conn,
            None => self.connect()?,
        };
        let read = rows_of(&conn, sql, args);
        let mut idle = self.idle.lock().expect("never poisoned");
        if idle.len() < IDLE_READERS {
            idle.push(conn);
        }
        read
    }
}

impl Drop for NativeTx<'_> {
    fn drop(&mut self) {
        if self.open {
            // A failed group is written again write by write, on this same connection.
            if let Err(e) = self.conn.execute_batch("ROLLBACK") {
                tracing::warn!(error = %e, "the ledger writer could not roll a group back");
            }
        }
    }
}

impl WriteTx for NativeTx<'_> {
    type Row = NativeRow;

    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn window(&self) -> u32 {
        self.window
    }

    fn note_transitions(&mut self, status: Status, n: usize) {
        self.transitions
            .extend(std::iter::repeat_n(status.as_str(), n));
    }

    // Each runs its statement when first polled, which is at once: nothing here waits.
    async fn rows(&mut self, sql: &str, args: Args) -> Result<Vec<NativeRow>> {
        rows_of(self.conn, sql, args)
    }

    async fn run(&mut self, sql: &str, args: Args) -> Result<u64> {
        Ok(prepared(self.conn, sql, args)?.raw_execute()? as u64)
    }

    async fn insert_alone(&mut self, job: &NewJob, _at: i64) -> Result<bool> {
        // The group task sends these through sqlx (`GroupCommit::start`).
        Err(LedgerError::Embedded(format!(
            "job {} has checks of its own and is written through the pool",
            job.id
        )))
    }
}

/// A row the writer read: its values by column, named once per statement.
pub(super) struct NativeRow {
    names: Arc<[String]>,
    values: Vec<Value>,
}

impl NativeRow {
    fn value(&self, column: &str) -> Result<&Value> {
        self.names
            .iter()
            .position(|name| name == column)
            .map(|i| &self.values[i])
            .ok_or_else(|| LedgerError::Corrupt(format!("no column '{column}' in the row")))
    }
}

/// A column's value, owned. Text that is not UTF-8 is a corrupt row, the one row's error
/// (rusqlite's own conversion panics on it).
fn owned_value(value: rusqlite::types::ValueRef<'_>, column: &str) -> Result<Value> {
    use rusqlite::types::ValueRef;
    Ok(match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(n) => Value::Integer(n),
        ValueRef::Real(x) => Value::Real(x),
        ValueRef::Text(text) => Value::Text(
            std::str::from_utf8(text)
                .map_err(|_| LedgerError::Corrupt(format!("column '{column}' is not UTF-8")))?
                .to_owned(),
        ),
        ValueRef::Blob(bytes) => Value::Blob(bytes.to_vec()),
    })
}

fn mistyped(column: &str, value: &Value) -> LedgerError {
    LedgerError::Corrupt(format!("column '{column}' holds {:?}", value.data_type()))
}

impl NativeRow {
    /// The column's value as `pick` takes it; `None` if it is null, an error if it holds
    /// another type (as sqlx's decoding refuses one).
    fn nullable<T>(&self, column: &str, pick: fn(&Value) -> Option<T>) -> Result<Option<T>> {
        match self.value(column)? {
            Value::Null => Ok(None),
            value => pick(value).map(Some).ok_or_else(|| mistyped(column, value)),
        }
    }

    fn required<T>(&self, column: &str, pick: fn(&Value) -> Option<T>) -> Result<T> {
        self.nullable(column, pick)?
            .ok_or_else(|| mistyped(column, &Value::Null))
    }
}

fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::Text(text) => Some(text.clone()),
        _ => None,
    }
}

fn int_of(value: &Value) -> Option<i64> {
    match value {
        Value::Integer(n) => Some(*n),
        _ => None,
    }
}

impl Columns for NativeRow {
    fn text(&self, column: &str) -> Result<String> {
        self.required(column, text_of)
    }

    fn opt_text(&self, column: &str) -> Result<Option<String>> {
        self.nullable(column, text_of)
    }

    fn int(&self, column: &str) -> Result<i64> {
        self.required(column, int_of)
    }

    fn opt_int(&self, column: &str) -> Result<Option<i64>> {
        self.nullable(column, int_of)
    }
}
