//! What sqlx's `Any` driver costs the client against sqlx's own Postgres driver, on statements
//! shaped like the ledger's hot path. Kiln writes every statement once for both engines through
//! `Any`, which copies each row it receives into values of its own (`AnyRow`) and each
//! argument into arguments of its own before the Postgres driver encodes them; the issue asks
//! what that costs before deciding to keep it.
//!
//! On one connection per driver, on a database migrated as Kiln migrates it and holding
//! `JOBS` jobs, it runs two statements alternately through each driver, `rounds` times each:
//!
//! - the read: 16 jobs by id, every column of `jobs` decoded (the deliverer's and the claim's
//!   rows are these columns);
//! - the batch: a `VALUES` list of 16 rows of 8 bound values (128 arguments), as the batched
//!   writes bind their rows, answered with 16 rows of 3 columns (nothing is written, so every
//!   round finds the table as the last).
//!
//! It reports this process's CPU per statement and per row for each driver: the server's work
//! is the same statement either way, so the difference is the driver's. A current-thread
//! runtime keeps every client cost on the one thread measured.
//!
//! Usage: `driver-cost POSTGRES_URL [ROUNDS=2000]`, e.g.
//! `cargo run --release -p kiln-bench --bin driver-cost -- postgres://postgres@127.0.0.1:5432 2000`.
//! It creates a database of its own on that server and drops it at the end.

use anyhow::{Context, Result};
use sqlx::{Connection, Executor, Row};
use std::time::{Duration, Instant};

const JOBS: usize = 10_000;
const BATCH: usize = 16;

/// `jobs`' columns as the ledger reads a job, with whether each is a number (else text).
const COLUMNS: &[(&str, bool)] = &[
    ("id", false),
    ("tenant", false),
    ("model", false),
    ("input", false),
    ("status", false),
    ("error_code", false),
    ("error_message", false),
    ("created_at", true),
    ("started_at", true),
    ("completed_at", true),
    ("run_after", true),
    ("lease_owner", false),
    ("lease_expires_at", true),
    ("attempt_count", true),
    ("rescue_count", true),
    ("deadline_at", true),
    ("start_by", true),
    ("webhook_url", false),
    ("webhook_events", false),
    ("pipeline_id", false),
    ("priority", false),
    ("rung_at", true),
    ("surface", false),
];

/// This thread's CPU time so far, in seconds: the scheduler's own count of the time it ran
/// (`schedstat`'s first field, in nanoseconds), not the 10 ms ticks of `stat`.
fn thread_cpu() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1e9
}

fn read_sql() -> String {
    let columns: Vec<&str> = COLUMNS.iter().map(|(name, _)| *name).collect();
    let ids: Vec<String> = (1..=BATCH).map(|i| format!("${i}")).collect();
    format!(
        "SELECT {} FROM jobs WHERE id IN ({})",
        columns.join(", "),
        ids.join(", ")
    )
}

fn batch_sql() -> String {
    let rows: Vec<String> = (0..BATCH)
        .map(|r| {
            let p = |c: usize| r * 8 + c + 1;
            format!(
                "(${}::text, ${}::text, ${}::text, ${}::bigint, ${}::bigint, ${}::text, ${}::bigint, ${}::text)",
                p(0), p(1), p(2), p(3), p(4), p(5), p(6), p(7)
            )
        })
        .collect();
    format!(
        "SELECT v.a, v.d, v.h FROM (VALUES {}) AS v (a, b, c, d, e, f, g, h)",
        rows.join(", ")
    )
}

/// The ids of one round's read: 16 of the jobs, a different stretch each round.
fn ids_of(round: usize) -> Vec<String> {
    (0..BATCH)
        .map(|i| format!("{:036}", (round * 97 + i * 613) % JOBS + 1))
        .collect()
}

/// Binds and decodes through either driver: the same calls, so only the driver differs.
macro_rules! measure {
    ($conn:expr, $rounds:expr, $read:expr, $batch:expr) => {{
        let (mut read_cpu, mut batch_cpu, mut rows) = (0.0, 0.0, 0usize);
        let started = Instant::now();
        for round in 0..$rounds {
            let before = thread_cpu();
            let mut query = sqlx::query($read);
            for id in ids_of(round) {
                query = query.bind(id);
            }
            for row in query.fetch_all(&mut $conn).await? {
                for (i, (_, number)) in COLUMNS.iter().enumerate() {
                    if *number {
                        std::hint::black_box(row.try_get::<Option<i64>, _>(i)?);
                    } else {
                        std::hint::black_box(row.try_get::<Option<String>, _>(i)?);
                    }
                }
                rows += 1;
            }
            let between = thread_cpu();
            let mut query = sqlx::query($batch);
            for r in 0..BATCH {
                query = query
                    .bind(format!("{round:036}"))
                    .bind(format!("tok{r:029}"))
                    .bind(format!("att-{round}-{r}"))
                    .bind((round * BATCH + r) as i64)
                    .bind(1_i64)
                    .bind("jobs/x/0.png")
                    .bind(4096_i64)
                    .bind("image/png");
            }
            for row in query.fetch_all(&mut $conn).await? {
                std::hint::black_box(row.try_get::<String, _>(0)?);
                std::hint::black_box(row.try_get::<i64, _>(1)?);
                std::hint::black_box(row.try_get::<String, _>(2)?);
            }
            let after = thread_cpu();
            read_cpu += between - before;
            batch_cpu += after - between;
        }
        (read_cpu, batch_cpu, rows, started.elapsed())
    }};
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let server = args
        .next()
        .context("usage: driver-cost POSTGRES_URL [ROUNDS]")?;
    let rounds: usize = args.next().map(|r| r.parse()).transpose()?.unwrap_or(2000);
    let server = server.trim_end_matches('/').to_owned();
    let database = format!("kiln_driver_cost_{}", std::process::id());
    let mut admin = sqlx::PgConnection::connect(&format!("{server}/postgres")).await?;
    admin
        .execute(format!("CREATE DATABASE {database}").as_str())
        .await?;
    let url = format!("{server}/{database}");
    let outcome = run(&url, rounds).await;
    admin
        .execute(format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)").as_str())
        .await?;
    outcome
}

/// One row of the table: a driver's pass, as CPU per statement and per row read.
fn report(shown: bool, driver: &str, rounds: usize, pass: (f64, f64, usize, Duration)) {
    let (read, batch, rows, wall) = pass;
    if shown {
        println!(
            "| {driver} | {:.1} | {:.2} | {:.1} | {:.2} |",
            read * 1e6 / rounds as f64,
            read * 1e6 / rows as f64,
            batch * 1e6 / rounds as f64,
            wall.as_secs_f64()
        );
    }
}

async fn run(url: &str, rounds: usize) -> Result<()> {
    // Kiln's own migrations, as a deployment has them.
    drop(kiln_core::ledger::SqlLedger::open(url).await?);
    let mut native = sqlx::PgConnection::connect(url).await?;
    native
        .execute(
            format!(
                "INSERT INTO jobs (id, tenant, model, input, status, created_at, started_at, \
                   completed_at, run_after, rung_at, attempt_count, webhook_url, webhook_events) \
                 SELECT lpad(g::text, 36, '0'), 'bench', 'bench/image', \
                   '{{\"prompt\": \"p' || g || '\", \"width\": 32, \"height\": 32}}', 'succeeded', \
                   g, g, g, g, g, 1, 'http://127.0.0.1:9/hook', 'job.succeeded' \
                 FROM generate_series(1, {JOBS}) g"
            )
            .as_str(),
        )
        .await?;
    native.execute("ANALYZE jobs").await?;
    sqlx::any::install_default_drivers();
    let mut any = sqlx::AnyConnection::connect(url).await?;
    let (read, batch) = (read_sql(), batch_sql());
    println!(
        "rounds of {BATCH} rows each; CPU of this process's one thread, per statement and per row"
    );
    println!("| driver | read: µs/statement | read: µs/row | batch of 128 arguments: µs/statement | wall s |");
    println!("| --- | --- | --- | --- | --- |");
    for pass in 0..4 {
        // A first pass of each warms both connections' statement caches and is not shown.
        let shown = pass > 0;
        report(shown, "Any", rounds, measure!(any, rounds, &read, &batch));
        report(
            shown,
            "Postgres",
            rounds,
            measure!(native, rounds, &read, &batch),
        );
    }
    any.close().await?;
    native.close().await?;
    Ok(())
}
