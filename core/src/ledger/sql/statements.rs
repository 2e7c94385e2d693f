//! The hot path's statements written once for two executors: a transaction of sqlx's `Any`
//! driver (`Tx`: Postgres, and SQLite in memory) and the embedded default's own writer
//! connection (`native::NativeTx`), which runs a whole group of writes on one thread without a
//! hand-off per statement. The writes every job makes (`insert_batch_in`, `claim_batch_in`,
//! `succeed_batch_in`) take any `WriteTx`; they bind their parameters as `Args` and decode rows
//! through `Columns`, so neither the statements nor their decoding exist twice.
//!
//! A `WriteTx`'s methods return futures so that sqlx can await its driver; the embedded
//! writer's are ready at once (its statements run as they are called), and the group it writes
//! is driven to its end on the writer's own thread.

use super::*;
use std::future::Future;

/// One bound parameter: a 64-bit integer or text, either possibly null. A null keeps its type,
/// which Postgres needs for the padding rows of a `VALUES` list.
#[derive(Debug, Clone)]
pub(super) enum Arg {
    Int(Option<i64>),
    Text(Option<String>),
}

/// A statement's parameters, in placeholder order.
#[derive(Debug, Default)]
pub(super) struct Args(pub(super) Vec<Arg>);

impl Args {
    pub(super) fn new() -> Self {
        Args(Vec::new())
    }

    pub(super) fn int(&mut self, value: i64) -> &mut Self {
        self.0.push(Arg::Int(Some(value)));
        self
    }

    pub(super) fn opt_int(&mut self, value: Option<i64>) -> &mut Self {
        self.0.push(Arg::Int(value));
        self
    }

    pub(super) fn text(&mut self, value: impl Into<String>) -> &mut Self {
        self.0.push(Arg::Text(Some(value.into())));
        self
    }

    pub(super) fn opt_text(&mut self, value: Option<impl Into<String>>) -> &mut Self {
        self.0.push(Arg::Text(value.map(Into::into)));
        self
    }

    /// A null row of `VALUES` for the columns `types` (as `padded_values` names them): the
    /// padding that no join keeps.
    pub(super) fn null_row(&mut self, types: &[&str]) -> &mut Self {
        for column in types {
            self.0.push(match *column {
                "bigint" => Arg::Int(None),
                _ => Arg::Text(None),
            });
        }
        self
    }

    /// `query` with these parameters bound, in order.
    pub(super) fn bind_to<'q>(
        self,
        mut query: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>,
    ) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>> {
        for arg in self.0 {
            query = match arg {
                Arg::Int(value) => query.bind(value),
                Arg::Text(value) => query.bind(value),
            };
        }
        query
    }
}

/// A row's columns by name, as the row decoders (`rows`) read them from either executor.
pub(super) trait Columns {
    fn text(&self, column: &str) -> Result<String>;
    fn opt_text(&self, column: &str) -> Result<Option<String>>;
    fn int(&self, column: &str) -> Result<i64>;
    fn opt_int(&self, column: &str) -> Result<Option<i64>>;
}

impl Columns for AnyRow {
    fn text(&self, column: &str) -> Result<String> {
        Ok(self.try_get(column)?)
    }

    fn opt_text(&self, column: &str) -> Result<Option<String>> {
        Ok(self.try_get(column)?)
    }

    fn int(&self, column: &str) -> Result<i64> {
        Ok(self.try_get(column)?)
    }

    fn opt_int(&self, column: &str) -> Result<Option<i64>> {
        Ok(self.try_get(column)?)
    }
}

/// A row of a point read (`SqlLedger::point_rows`): from sqlx's pool, or read in place on a
/// SQLite file.
pub(super) enum ReadRow {
    Pooled(AnyRow),
    Native(super::native::NativeRow),
}

impl ReadRow {
    fn columns(&self) -> &dyn Columns {
        match self {
            ReadRow::Pooled(row) => row,
            ReadRow::Native(row) => row,
        }
    }
}

impl Columns for ReadRow {
    fn text(&self, column: &str) -> Result<String> {
        self.columns().text(column)
    }

    fn opt_text(&self, column: &str) -> Result<Option<String>> {
        self.columns().opt_text(column)
    }

    fn int(&self, column: &str) -> Result<i64> {
        self.columns().int(column)
    }

    fn opt_int(&self, column: &str) -> Result<Option<i64>> {
        self.columns().opt_int(column)
    }
}

/// A write transaction the hot path's batch statements run in (see the module's doc).
pub(super) trait WriteTx: Send {
    type Row: Columns + Send;

    fn dialect(&self) -> Dialect;

    /// `dispatch.tenant_window` as it was when the transaction began.
    fn window(&self) -> u32;

    /// Notes `n` transitions to `status`, to be counted once the transaction commits.
    fn note_transitions(&mut self, status: Status, n: usize);

    /// Runs `sql` and returns its rows.
    fn rows(
        &mut self,
        sql: &str,
        args: Args,
    ) -> impl Future<Output = Result<Vec<Self::Row>>> + Send;

    /// Runs `sql` for its effect; returns the rows it changed.
    fn run(&mut self, sql: &str, args: Args) -> impl Future<Output = Result<u64>> + Send;

    /// A new job that is not `batchable` (a key's limits to check, an idempotency key to
    /// link, an input kept apart), written alone in this transaction.
    fn insert_alone(&mut self, job: &NewJob, at: i64) -> impl Future<Output = Result<bool>> + Send;
}

impl WriteTx for Tx {
    type Row = AnyRow;

    fn dialect(&self) -> Dialect {
        self.d
    }

    fn window(&self) -> u32 {
        self.window
    }

    fn note_transitions(&mut self, status: Status, n: usize) {
        self.transitions
            .extend(std::iter::repeat_n(status.as_str(), n));
    }

    async fn rows(&mut self, sql: &str, args: Args) -> Result<Vec<AnyRow>> {
        Ok(args
            .bind_to(sqlx::query(sql))
            .fetch_all(&mut *self.tx)
            .await?)
    }

    async fn run(&mut self, sql: &str, args: Args) -> Result<u64> {
        Ok(args
            .bind_to(sqlx::query(sql))
            .execute(&mut *self.tx)
            .await?
            .rows_affected())
    }

    async fn insert_alone(&mut self, job: &NewJob, at: i64) -> Result<bool> {
        insert_job_in(self, job, None, at).await
    }
}
