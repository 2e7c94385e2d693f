//! Kiln's benchmark harness. It starts the production shape on loopback — Postgres, Redis, an
//! S3 server (or a local directory), one `kiln api` and N `kiln worker` processes, an
//! OpenAI-compatible upstream that answers at once and a webhook receiver — or the embedded
//! default (`kiln serve` on SQLite), and measures:
//!
//! - submit rate (202s per second, many clients at once);
//! - full lifecycle rate: submit → succeeded, output stored, webhook delivered;
//! - dispatch latency (committed → running) p50 and p99, at half the lifecycle rate;
//! - `GET /v1/jobs/{id}` rate;
//! - one worker holding N in-flight 60-second upstream calls: its RSS and CPU.
//!
//! It prints a table and, with `--write`, records it in `BENCHMARKS.md`. The processes are the
//! release `kiln` binary next to this one: `cargo build --release -p kiln -p kiln-bench`.
//! Benchmarks are run apart from the test suite; nothing here asserts.

use anyhow::{bail, Context, Result};
use clap::Parser;
use futures::StreamExt;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Readers step through the ids by this much, so they do not all read the same job.
const READ_STRIDE: usize = 97;

#[derive(Parser)]
struct Args {
    /// `postgres-local` (Postgres + Redis + a local directory), `postgres-s3` (… + s3s-fs) or
    /// `embedded` (kiln serve: SQLite, in-process queue, local directory).
    #[arg(long, default_value = "postgres-local")]
    stack: String,
    /// Jobs for the submit and lifecycle runs.
    #[arg(long, default_value_t = 5000)]
    jobs: usize,
    /// Worker processes (postgres stacks).
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Jobs one worker runs at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// In-flight 60-second upstream calls held by one worker (0 skips the run).
    #[arg(long, default_value_t = 10_000)]
    inflight: usize,
    /// Record the figures in this BENCHMARKS.md.
    #[arg(long)]
    write: Option<PathBuf>,
    /// (Internal: the harness runs itself so to measure the floor of the in-flight run.) Hold
    /// `--inflight` calls to this URL with a bare HTTP client, and nothing else.
    #[arg(long, hide = true)]
    held_calls: Option<String>,
}

/// A tiny PNG, as the fake upstream's answer.
fn png_b64() -> String {
    use base64::Engine;
    let mut png = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_pixel(8, 8, image::Rgb([200, 80, 40]))
        .write_to(&mut png, image::ImageFormat::Png)
        .unwrap();
    base64::engine::general_purpose::STANDARD.encode(png.into_inner())
}

/// Holds `calls` requests to `url` at once with a client built as the workers' is
/// (`kiln_worker::upstream::client`: bounded connect, no redirects, no proxy), until they end.
async fn hold_bare_calls(url: &str, calls: usize) -> Result<()> {
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()?;
    let held = (0..calls).map(|_| {
        let request = client
            .post(url)
            .json(&json!({"model": "bench-model", "prompt": "hold", "n": 1}));
        tokio::spawn(async move {
            if let Ok(response) = request.send().await {
                let _ = response.bytes().await;
            }
        })
    });
    futures::future::join_all(held.collect::<Vec<_>>()).await;
    Ok(())
}

/// The OpenAI-compatible upstream: answers at once, or after `hold` for prompts that ask for it.
async fn upstream() -> Result<String> {
    let b64 = png_b64();
    let app = axum::Router::new().route(
        "/v1/images/generations",
        axum::routing::post(move |body: axum::Json<Value>| {
            let b64 = b64.clone();
            async move {
                if body["prompt"] == "hold" {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
                axum::Json(json!({"created": 1, "data": [{"b64_json": b64}]}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}/", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(base)
}

/// The webhook receiver: counts deliveries.
async fn receiver() -> Result<(String, Arc<AtomicUsize>)> {
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::Relaxed);
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, count))
}

fn kiln_binary() -> Result<PathBuf> {
    let path = std::env::current_exe()?
        .parent()
        .context("the harness has a directory")?
        .join("kiln");
    if !path.exists() {
        bail!(
            "no kiln binary at {}: cargo build --release -p kiln -p kiln-bench",
            path.display()
        );
    }
    Ok(path)
}

struct Process {
    child: Child,
    base: Option<String>,
}

impl Process {
    fn start(role: &str, dir: &Path, env: &[(String, String)]) -> Result<Process> {
        let mut child = Command::new(kiln_binary()?)
            .args([role, "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            .current_dir(dir)
            .env("KILN_LOG", "warn")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut base = None;
        for line in lines.by_ref() {
            let line = line?;
            if let Some(addr) = line.strip_prefix("kiln listening on ") {
                base = Some(addr.to_owned());
                break;
            }
            if role == "worker" && line.ends_with(" running") {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        Ok(Process { child, base })
    }

    /// Resident memory (KiB) and CPU seconds so far, from /proc.
    fn usage(&self) -> Result<(u64, f64)> {
        let pid = self.child.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let rss = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .context("VmRSS")?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .context("stat")?
            .1
            .split_whitespace()
            .collect();
        let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
        Ok((rss, ticks / 100.0))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Everything a run needs, stopped on drop.
struct Stack {
    api: Process,
    _workers: Vec<Process>,
    key: String,
    _dir: tempfile::TempDir,
    _db: Option<kiln_core::testing::PostgresDatabase>,
    _redis: Option<kiln_core::testing::RedisServer>,
    _s3: Option<kiln_core::testing::S3Server>,
}

fn config_toml(upstream: &str, concurrency: usize) -> String {
    format!(
        "[[providers]]\nname = \"fast\"\nkind = \"openai\"\nbase_url = \"{upstream}\"\n\n\
         [[models]]\nname = \"bench/img\"\nroutes = [{{ provider = \"fast\", model = \"img-1\", timeout = \"120s\" }}]\n\n\
         [worker]\nconcurrency = {concurrency}\n\n\
         [webhooks]\npoll = \"20ms\"\n\n[ssrf]\nloopback_webhooks = true\n"
    )
}

async fn stack(args: &Args, upstream: &str, concurrency: usize, workers: usize) -> Result<Stack> {
    use kiln_core::testing::{PostgresDatabase, RedisServer, S3Server};
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("kiln.toml"),
        config_toml(upstream, concurrency),
    )?;
    let mut env = vec![];
    let (mut db, mut redis, mut s3) = (None, None, None);
    if args.stack != "embedded" {
        let d = PostgresDatabase::create().await;
        let r = RedisServer::start();
        env.push(("KILN_DATABASE_URL".to_owned(), d.url.clone()));
        env.push(("KILN_REDIS_URL".to_owned(), r.url()));
        if args.stack == "postgres-s3" {
            let s = S3Server::start();
            env.extend(
                [
                    (
                        "KILN_STORAGE_URL",
                        format!("s3://{}/outputs", S3Server::BUCKET),
                    ),
                    ("KILN_S3_ENDPOINT", s.endpoint()),
                    ("KILN_S3_FORCE_PATH_STYLE", "true".into()),
                    ("KILN_S3_REGION", "us-east-1".into()),
                    ("KILN_S3_ACCESS_KEY_ID", S3Server::ACCESS_KEY.into()),
                    ("KILN_S3_SECRET_ACCESS_KEY", S3Server::SECRET_KEY.into()),
                ]
                .map(|(k, v)| (k.to_owned(), v)),
            );
            s3 = Some(s);
        }
        db = Some(d);
        redis = Some(r);
    }
    let out = Command::new(kiln_binary()?)
        .args([
            "keys",
            "create",
            "--create-ledger",
            "--tenant",
            "bench",
            "--data-dir",
        ])
        .arg(dir.path())
        .current_dir(dir.path())
        .env("KILN_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()?;
    if !out.status.success() {
        bail!("kiln keys create: {}", String::from_utf8_lossy(&out.stderr));
    }
    let key = String::from_utf8(out.stdout)?.trim().to_owned();
    let (api, workers) = if args.stack == "embedded" {
        (Process::start("serve", dir.path(), &env)?, vec![])
    } else {
        let api = Process::start("api", dir.path(), &env)?;
        let workers = (0..workers)
            .map(|_| Process::start("worker", dir.path(), &env))
            .collect::<Result<Vec<_>>>()?;
        (api, workers)
    };
    Ok(Stack {
        api,
        _workers: workers,
        key,
        _dir: dir,
        _db: db,
        _redis: redis,
        _s3: s3,
    })
}

fn job(prompt: &str, webhook: Option<&str>) -> Value {
    let mut body =
        json!({"model": "bench/img", "input": {"prompt": prompt, "width": 16, "height": 16}});
    if let Some(url) = webhook {
        body["webhook"] = json!(url);
        body["webhook_events"] = json!(["job.succeeded"]);
    }
    body
}

async fn submit_all(
    http: &reqwest::Client,
    stack: &Stack,
    bodies: Vec<Value>,
    clients: usize,
) -> Result<Vec<String>> {
    let base = stack.api.base.clone().unwrap();
    let results: Vec<Result<String>> = futures::stream::iter(bodies)
        .map(|body| {
            let (http, url, key) = (http.clone(), format!("{base}/v1/jobs"), stack.key.clone());
            async move {
                let res = http.post(url).bearer_auth(key).json(&body).send().await?;
                if res.status() != 202 {
                    bail!("submit answered {}", res.status());
                }
                let job: Value = res.json().await?;
                Ok(job["id"].as_str().unwrap_or_default().to_owned())
            }
        })
        .buffer_unordered(clients)
        .collect()
        .await;
    results.into_iter().collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(url) = &args.held_calls {
        return hold_bare_calls(url, args.inflight).await;
    }
    let upstream = upstream().await?;
    let (hook, delivered) = receiver().await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()?;
    let mut rows: Vec<(String, String)> = vec![];

    // Submit and lifecycle: all jobs at once, as fast as the clients go.
    let s = stack(&args, &upstream, args.concurrency, args.workers).await?;
    let bodies = (0..args.jobs)
        .map(|i| job(&format!("job {i}"), Some(&hook)))
        .collect();
    let started = Instant::now();
    let ids = submit_all(&http, &s, bodies, args.clients).await?;
    let submit_secs = started.elapsed().as_secs_f64();
    while delivered.load(Ordering::Relaxed) < ids.len() {
        if started.elapsed() > Duration::from_secs(900) {
            bail!("the lifecycle run did not finish in 15 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let life_secs = started.elapsed().as_secs_f64();
    let submit_rate = ids.len() as f64 / submit_secs;
    let life_rate = ids.len() as f64 / life_secs;
    rows.push((
        "submit rate".into(),
        format!(
            "{submit_rate:.0} jobs/s ({} jobs, {} clients)",
            ids.len(),
            args.clients
        ),
    ));
    rows.push((
        "full lifecycle rate (stored + webhook delivered)".into(),
        format!("{life_rate:.0} jobs/s"),
    ));

    // GET rate: every client reads jobs for 5 s.
    let base = s.api.base.clone().unwrap();
    let reads = Arc::new(AtomicUsize::new(0));
    let until = Instant::now() + Duration::from_secs(5);
    let readers: Vec<_> = (0..args.clients)
        .map(|c| {
            let (http, base, key, ids, reads) = (
                http.clone(),
                base.clone(),
                s.key.clone(),
                ids.clone(),
                reads.clone(),
            );
            tokio::spawn(async move {
                let mut i = c;
                while Instant::now() < until {
                    let id = &ids[i % ids.len()];
                    if let Ok(res) = http
                        .get(format!("{base}/v1/jobs/{id}"))
                        .bearer_auth(&key)
                        .send()
                        .await
                    {
                        if res.status() == 200 && res.bytes().await.is_ok() {
                            reads.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    i += READ_STRIDE;
                }
            })
        })
        .collect();
    for r in readers {
        r.await?;
    }
    rows.push((
        "GET /v1/jobs/{id} rate".into(),
        format!(
            "{:.0} requests/s",
            reads.load(Ordering::Relaxed) as f64 / 5.0
        ),
    ));

    // Dispatch latency at half the lifecycle rate, paced, for 10 s.
    let rate = (life_rate / 2.0).max(1.0);
    let count = (rate * 10.0) as usize;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let mut paced = vec![];
    for i in 0..count {
        tick.tick().await;
        let (http, url, key) = (http.clone(), format!("{base}/v1/jobs"), s.key.clone());
        let body = job(&format!("paced {i}"), None);
        paced.push(tokio::spawn(async move {
            let res = http
                .post(url)
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .ok()?;
            let job: Value = res.json().await.ok()?;
            job["id"].as_str().map(str::to_owned)
        }));
    }
    let mut latencies = vec![];
    for p in paced {
        let Some(id) = p.await? else { continue };
        let done: Value = http
            .get(format!("{base}/v1/jobs/{id}"))
            .bearer_auth(&s.key)
            .header("Prefer", "wait=30")
            .send()
            .await?
            .json()
            .await?;
        let time = |f: &str| {
            chrono::DateTime::parse_from_rfc3339(done[f].as_str().unwrap_or_default()).ok()
        };
        if let (Some(created), Some(started)) = (time("created_at"), time("started_at")) {
            latencies.push((started - created).num_microseconds().unwrap_or(0) as f64 / 1000.0);
        }
    }
    latencies.sort_by(f64::total_cmp);
    rows.push((
        format!("dispatch latency at {rate:.0} jobs/s (half of peak)"),
        format!(
            "p50 {:.1} ms, p99 {:.1} ms ({} jobs)",
            percentile(&latencies, 50.0),
            percentile(&latencies, 99.0),
            latencies.len()
        ),
    ));
    drop(s);

    // One worker holding N in-flight 60-second upstream calls.
    if args.inflight > 0 && args.stack != "embedded" {
        let s = stack(&args, &upstream, args.inflight, 1).await?;
        let worker = &s._workers[0];
        let (idle_rss, _) = worker.usage()?;
        let bodies = (0..args.inflight).map(|_| job("hold", None)).collect();
        submit_all(&http, &s, bodies, args.clients).await?;
        // Wait until every call is in flight, then measure over 20 s of holding.
        tokio::time::sleep(Duration::from_secs(25)).await;
        let (_, cpu_before) = worker.usage()?;
        let window = Instant::now();
        tokio::time::sleep(Duration::from_secs(20)).await;
        let (rss, cpu_after) = worker.usage()?;
        let cores = (cpu_after - cpu_before) / window.elapsed().as_secs_f64();
        rows.push((
            format!(
                "one worker, {} in-flight 60 s upstream calls",
                args.inflight
            ),
            format!(
                "RSS {} MiB (idle {} MiB), CPU {cores:.2} core",
                rss / 1024,
                idle_rss / 1024
            ),
        ));
        drop(s);
        // The floor under that figure: the same calls from a bare client with the workers'
        // HTTP settings, holding nothing but the calls.
        let floor = Process {
            child: Command::new(std::env::current_exe()?)
                .args(["--inflight", &args.inflight.to_string(), "--held-calls"])
                .arg(format!("{upstream}v1/images/generations"))
                .stdout(Stdio::null())
                .spawn()?,
            base: None,
        };
        tokio::time::sleep(Duration::from_secs(25)).await;
        let (floor_rss, _) = floor.usage()?;
        rows.push((
            format!(
                "floor: a bare HTTP client holding the same {} calls",
                args.inflight
            ),
            format!("RSS {} MiB", floor_rss / 1024),
        ));
    }

    let date = chrono::Utc::now().format("%Y-%m-%d");
    let command = format!(
        "cargo build --release -p kiln -p kiln-bench && target/release/kiln-bench --stack {} --jobs {} --workers {} --concurrency {} --clients {} --inflight {}",
        args.stack, args.jobs, args.workers, args.concurrency, args.clients, args.inflight
    );
    let mut table = format!(
        "### {} ({date})\n\n`{command}`\n\n| measure | figure |\n| --- | --- |\n",
        args.stack
    );
    for (k, v) in &rows {
        table.push_str(&format!("| {k} | {v} |\n"));
    }
    println!("{table}");
    if let Some(path) = &args.write {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let begin = format!("<!-- bench:{} -->", args.stack);
        let end = format!("<!-- /bench:{} -->", args.stack);
        let block = format!("{begin}\n{table}{end}");
        let text = match (text.find(&begin), text.find(&end)) {
            (Some(a), Some(b)) => format!("{}{block}{}", &text[..a], &text[b + end.len()..]),
            _ => format!("{text}\n{block}\n"),
        };
        std::fs::write(path, text)?;
    }
    Ok(())
}
