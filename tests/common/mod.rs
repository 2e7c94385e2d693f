//! The end-to-end harness. `Kiln::start` runs the real wiring (`kiln::start`) in-process on a
//! random loopback port with its own temporary data directory; `KilnProcess` runs the real binary
//! for the fault tests that kill it. Nothing is shared between tests. Waiting is done by polling
//! the api (its documented contract) against a deadline, never by sleeping a fixed time.
#![allow(dead_code)]

pub mod browser;
pub mod clients;
pub mod cluster;

use kiln::config::Config;
use kiln::{Roles, Running};
use kiln_core::{keys, TenantId};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const DEADLINE: Duration = Duration::from_secs(60);

/// A configuration for tests: fast leases and passes, random port.
pub fn test_config(dir: &Path) -> Config {
    let mut c = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    c.worker.lease = Duration::from_secs(2);
    c.worker.heartbeat = Duration::from_millis(200);
    c.worker.reconcile_interval = Duration::from_millis(200);
    c.worker.ring_stale_after = Duration::from_secs(2);
    c.worker.retry_base = Duration::from_millis(50);
    c.worker.retry_max = Duration::from_millis(200);
    c.worker.shutdown_timeout = Duration::from_secs(5);
    c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    c
}

pub struct Kiln {
    pub base: String,
    pub dir: tempfile::TempDir,
    pub config: Config,
    pub running: Option<Running>,
    pub http: reqwest::Client,
    /// Servers this instance uses (Redis, a Postgres database), stopped with it.
    pub services: Vec<Box<dyn std::any::Any + Send>>,
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

impl Kiln {
    pub async fn start() -> Kiln {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Kiln {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        adjust(&mut config);
        let running = kiln::start(
            &config,
            Roles {
                api: true,
                worker: true,
            },
        )
        .await
        .unwrap();
        let base = format!("http://{}", running.addr.unwrap());
        Kiln {
            base,
            dir,
            config,
            running: Some(running),
            http: http(),
            services: vec![],
        }
    }

    /// Kiln on production backends of its own: a fresh Postgres database, a redis-server and
    /// an S3 server (services[0] is the Redis server, services[2] the S3 server).
    pub async fn start_production(adjust: impl FnOnce(&mut Config)) -> Kiln {
        let backends = Backends::start().await;
        let mut kiln = Self::start_with(|c| {
            backends.apply(c);
            adjust(c);
        })
        .await;
        kiln.services.push(Box::new(backends.redis));
        kiln.services.push(Box::new(backends.db));
        kiln.services.push(Box::new(backends.s3));
        kiln
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `POST /v1/files` of `form` as the holder of `key`.
    pub async fn post_file(&self, key: &str, form: reqwest::multipart::Form) -> reqwest::Response {
        self.http
            .post(self.url("/v1/files"))
            .bearer_auth(key)
            .multipart(form)
            .send()
            .await
            .unwrap()
    }

    /// `/metrics` on the private metrics listener.
    pub fn metrics_url(&self) -> String {
        let addr = self.running.as_ref().unwrap().metrics_addr.unwrap();
        format!("http://{addr}/metrics")
    }

    /// Mints a key for `tenant` straight into the ledger.
    pub async fn key(&self, tenant: &str) -> String {
        let minted = keys::mint();
        let ledger = &self.running.as_ref().unwrap().ledger;
        ledger
            .insert_api_key(&TenantId::parse(tenant).unwrap(), &minted)
            .await
            .unwrap();
        minted.plaintext
    }

    /// A key of `tenant` with limits of its own.
    pub async fn key_with(&self, tenant: &str, limits: kiln_core::ledger::KeyLimits) -> String {
        let minted = keys::mint();
        let ledger = &self.running.as_ref().unwrap().ledger;
        let record = ledger
            .insert_api_key(&TenantId::parse(tenant).unwrap(), &minted)
            .await
            .unwrap();
        assert_eq!(
            ledger
                .set_key_limits(record.id.as_str(), &limits)
                .await
                .unwrap(),
            1
        );
        minted.plaintext
    }

    pub async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
        // Servers stop only after Kiln has let go of them.
        self.services.clear();
    }

    /// `POST /v1/jobs` as `key`.
    pub async fn submit(&self, key: &str, body: Value) -> reqwest::Response {
        submit(&self.http, &self.base, key, body).await
    }

    /// Submits as `key` and returns the job id, asserting the 202.
    pub async fn submit_ok(&self, key: &str, body: Value) -> String {
        submit_ok(&self.http, &self.base, key, body).await
    }

    /// `GET /v1/jobs/{id}` as `key`, asserting the 200.
    pub async fn get_job(&self, key: &str, id: &str) -> Value {
        get_job(&self.http, &self.base, key, id).await
    }

    /// Polls the job until `done` holds, failing the test at the deadline.
    pub async fn wait_for(
        &self,
        key: &str,
        id: &str,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        wait_for(&self.http, &self.base, key, id, what, done).await
    }

    /// Waits for the job to end and returns it.
    pub async fn wait_terminal(&self, key: &str, id: &str) -> Value {
        wait_terminal(&self.http, &self.base, key, id).await
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("kiln.db")
    }
}

/// Production backends of a test's own.
pub struct Backends {
    pub db: kiln_core::testing::PostgresDatabase,
    pub redis: kiln_core::testing::RedisServer,
    pub s3: kiln_core::testing::S3Server,
}

impl Backends {
    pub async fn start() -> Backends {
        Backends {
            db: kiln_core::testing::PostgresDatabase::create().await,
            redis: kiln_core::testing::RedisServer::start(),
            s3: kiln_core::testing::S3Server::start(),
        }
    }

    /// The settings as `KILN_*` environment, for processes.
    pub fn env(&self) -> Vec<(String, String)> {
        use kiln_core::testing::S3Server;
        [
            ("KILN_DATABASE_URL", self.db.url.clone()),
            ("KILN_REDIS_URL", self.redis.url()),
            (
                "KILN_STORAGE_URL",
                format!("s3://{}/outputs", S3Server::BUCKET),
            ),
            ("KILN_S3_ENDPOINT", self.s3.endpoint()),
            ("KILN_S3_FORCE_PATH_STYLE", "true".into()),
            ("KILN_S3_REGION", "us-east-1".into()),
            ("KILN_S3_ACCESS_KEY_ID", S3Server::ACCESS_KEY.into()),
            ("KILN_S3_SECRET_ACCESS_KEY", S3Server::SECRET_KEY.into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// The same settings, applied to an in-process configuration.
    pub fn apply(&self, c: &mut Config) {
        use kiln::config::Secret;
        use kiln_core::testing::S3Server;
        c.database_url = Some(Secret::new(self.db.url.clone()));
        c.redis_url = Some(Secret::new(self.redis.url()));
        c.storage_url = Some(format!("s3://{}/outputs", S3Server::BUCKET));
        c.s3_endpoint = Some(self.s3.endpoint());
        c.s3_force_path_style = true;
        c.s3_region = Some("us-east-1".into());
        c.s3_access_key_id = Some(Secret::new(S3Server::ACCESS_KEY));
        c.s3_secret_access_key = Some(Secret::new(S3Server::SECRET_KEY));
    }
}

pub async fn submit(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    body: Value,
) -> reqwest::Response {
    http.post(format!("{base}/v1/jobs"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// Submits and returns the job id, asserting the 202.
pub async fn submit_ok(http: &reqwest::Client, base: &str, key: &str, body: Value) -> String {
    let res = submit(http, base, key, body).await;
    assert_eq!(res.status(), 202, "{:?}", res.text().await);
    let job: Value = res.json().await.unwrap();
    job["id"].as_str().unwrap().to_owned()
}

pub async fn get_job(http: &reqwest::Client, base: &str, key: &str, id: &str) -> Value {
    let res = http
        .get(format!("{base}/v1/jobs/{id}"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

/// Like `get_job`, but `None` when the server is unreachable (it may be dying on purpose).
pub async fn try_get_job(http: &reqwest::Client, base: &str, key: &str, id: &str) -> Option<Value> {
    let res = http
        .get(format!("{base}/v1/jobs/{id}"))
        .bearer_auth(key)
        .send()
        .await
        .ok()?;
    res.json().await.ok()
}

/// Polls the job until `done` holds, failing the test at the deadline.
pub async fn wait_for(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    id: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let start = Instant::now();
    loop {
        let job = get_job(http, base, key, id).await;
        if done(&job) {
            return job;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "job {id} never became {what}: {job:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn is_terminal(job: &Value) -> bool {
    matches!(
        job["status"].as_str(),
        Some("succeeded" | "failed" | "canceled")
    )
}

/// A configured model, `acme/priced`, whose one route (the demo generator) costs 0.5 a run.
pub fn priced_model() -> kiln_core::routes::ModelConfig {
    kiln_core::routes::ModelConfig {
        name: "acme/priced".into(),
        description: String::new(),
        params: vec![],
        fallback_on_refusal: false,
        routes: vec![kiln_core::routes::RouteConfig {
            provider: "demo".into(),
            model: "demo/image".into(),
            cost: kiln_core::routes::CostModel {
                per_run: 0.5,
                per_second: 0.0,
                per_output: 0.0,
            },
            ..Default::default()
        }],
    }
}

/// How many jobs the key's tenant has (up to 100).
pub async fn job_count(kiln: &Kiln, key: &str) -> usize {
    let list: Value = kiln
        .http
        .get(kiln.url("/v1/jobs?limit=100"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    list["data"].as_array().unwrap().len()
}

/// Waits for the job to end by asking the server to hold the answer (`Prefer: wait`), not by
/// polling, failing the test at the deadline.
pub async fn wait_terminal(http: &reqwest::Client, base: &str, key: &str, id: &str) -> Value {
    let start = Instant::now();
    loop {
        let res = http
            .get(format!("{base}/v1/jobs/{id}"))
            .bearer_auth(key)
            .header("Prefer", "wait=10")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let job: Value = res.json().await.unwrap();
        if is_terminal(&job) {
            return job;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "job {id} never became terminal: {job:#}"
        );
    }
}

/// Follows a resource's server-sent events (`GET …/events`) until one satisfies `done`, and
/// returns it; fails the test if the stream ends first or the deadline passes.
pub async fn follow_events(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let follow = async {
        let mut res = http.get(url).bearer_auth(key).send().await.unwrap();
        assert_eq!(res.status(), 200, "{url}");
        let mut buffer = String::new();
        let mut last = Value::Null;
        while let Some(chunk) = res.chunk().await.unwrap() {
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let event: String = buffer.drain(..end + 2).collect();
                for data in event.lines().filter_map(|l| l.strip_prefix("data: ")) {
                    last = serde_json::from_str(data).unwrap();
                    if done(&last) {
                        return last;
                    }
                }
            }
        }
        panic!("the event stream at {url} ended before the awaited change; last: {last:#}");
    };
    tokio::time::timeout(DEADLINE, follow)
        .await
        .expect("the awaited change did not come before the deadline")
}

/// Serves `app` on a free loopback port for the rest of the test; its base URL.
pub async fn serve_on_loopback(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

/// A webhook receiver on loopback that hands over every body it gets, in order.
pub struct Receiver {
    pub url: String,
    bodies: tokio::sync::mpsc::UnboundedReceiver<Value>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let (tx, bodies) = tokio::sync::mpsc::unbounded_channel();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |body: axum::Json<Value>| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(body.0);
                    axum::http::StatusCode::NO_CONTENT
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { url, bodies }
    }

    /// The next body, waiting for it up to the deadline.
    pub async fn next(&mut self) -> Value {
        tokio::time::timeout(DEADLINE, self.bodies.recv())
            .await
            .expect("no webhook arrived before the deadline")
            .expect("the receiver is running")
    }

    /// Every body that has arrived and not been taken yet.
    pub fn arrived(&mut self) -> Vec<Value> {
        std::iter::from_fn(|| self.bodies.try_recv().ok()).collect()
    }
}

pub fn image_job(width: u32, height: u32) -> Value {
    serde_json::json!({"model": "demo/image", "input": {"prompt": "a kiln at dusk", "width": width, "height": height, "seed": 42}})
}

/// Reads the ledger file directly (read-only), for assertions the api does not expose.
pub async fn ledger_pool(db: &Path) -> sqlx::SqlitePool {
    use sqlx::sqlite::SqliteConnectOptions;
    let options = SqliteConnectOptions::new().filename(db).read_only(true);
    sqlx::SqlitePool::connect_with(options).await.unwrap()
}

pub async fn count(pool: &sqlx::SqlitePool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// The real `kiln` binary, for tests that kill or signal it.
pub struct KilnProcess {
    pub child: Child,
    /// The api's base URL (`serve` and `api`).
    pub base: String,
    /// The worker's identity (`serve` and `worker`).
    pub identity: Option<String>,
}

pub fn kiln_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kiln")
}

/// Runs `kiln keys create` against `dir` (and the ledger `env` names) and returns the key.
pub fn create_key_with(dir: &Path, tenant: &str, env: &[(String, String)]) -> String {
    let out = Command::new(kiln_bin())
        .args([
            "keys",
            "create",
            "--create-ledger",
            "--tenant",
            tenant,
            "--data-dir",
        ])
        .arg(dir)
        .env("KILN_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

pub fn create_key(dir: &Path, tenant: &str) -> String {
    create_key_with(dir, tenant, &[])
}

impl KilnProcess {
    /// Starts `kiln serve` on `dir` with `env` and waits for its listening line.
    pub fn serve(dir: &Path, env: &[(&str, &str)]) -> KilnProcess {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self::start("serve", dir, &env)
    }

    /// Starts `kiln ROLE` (`serve`, `api` or `worker`) and waits until it reports ready.
    pub fn start(role: &str, dir: &Path, env: &[(String, String)]) -> KilnProcess {
        Self::start_logging_to(role, dir, env, Stdio::inherit())
    }

    /// Like `start`, with the process's log (stderr) going to `log`.
    pub fn start_logging_to(
        role: &str,
        dir: &Path,
        env: &[(String, String)],
        log: Stdio,
    ) -> KilnProcess {
        let mut cmd = Command::new(kiln_bin());
        // Run from the data directory, so a test's `kiln.toml` there is the configuration.
        cmd.args([role, "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            .current_dir(dir)
            .env("KILN_LOG", "warn")
            .env("KILN_WORKER__LEASE", "1s")
            .env("KILN_WORKER__HEARTBEAT", "200ms")
            .env("KILN_WORKER__RECONCILE_INTERVAL", "200ms")
            .env("KILN_WORKER__RING_STALE_AFTER", "2s")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::piped())
            .stderr(log);
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let (mut base, mut identity) = (String::new(), None);
        loop {
            let line = lines
                .next()
                .expect("kiln exited before it was ready")
                .unwrap();
            if let Some(id) = line
                .strip_prefix("kiln worker ")
                .and_then(|l| l.strip_suffix(" running"))
            {
                identity = Some(id.to_owned());
                if role == "worker" {
                    break;
                }
            }
            if let Some(addr) = line.strip_prefix("kiln listening on ") {
                base = addr.to_owned();
                break;
            }
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        KilnProcess {
            child,
            base,
            identity,
        }
    }

    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for KilnProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real Cog server (the `cog` package from PyPI) running the fixture predictor in
/// `tests/fixtures/cog` on a free loopback port. The test command installs `cog` into a venv and
/// names its Python in `TEST_KILN_PYTHON`.
pub struct CogServer {
    child: Child,
    pub url: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl CogServer {
    pub async fn start() -> CogServer {
        Self::start_in("cog", kiln_core::testing::free_port(), None).await
    }

    /// The predictor in `tests/fixtures/{fixture}` on `port`, uploading its file outputs to
    /// `upload_url` when one is given (Cog's `--upload-url`) instead of inlining them.
    pub async fn start_in(fixture: &str, port: u16, upload_url: Option<&str>) -> CogServer {
        let python = test_python();
        let bin = Path::new(&python).parent().unwrap().to_path_buf();
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("predictions.log");
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(fixture);
        let mut cmd = Command::new(&python);
        cmd.args(["-m", "cog.server.http", "--host", "127.0.0.1"]);
        if let Some(url) = upload_url {
            cmd.args(["--upload-url", url]);
        }
        cmd.current_dir(&fixture)
            .env("PATH", path)
            .env("PORT", port.to_string())
            .env("COG_PREDICT_TYPE_STUB", "predict.py:Predictor")
            .env("COG_FIXTURE_LOG", &log)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Its own process group, so dropping the server also stops the worker it spawns.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().expect("cannot start the Cog server");
        let server = CogServer {
            child,
            url: format!("http://127.0.0.1:{port}/"),
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + DEADLINE;
        while server.health().await.as_deref() != Some("READY") {
            assert!(
                Instant::now() < deadline,
                "the Cog server never became ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        server
    }

    /// `READY`, `BUSY`, `STARTING`…, or `None` while it does not answer.
    pub async fn health(&self) -> Option<String> {
        let answer = http()
            .get(format!("{}health-check", self.url))
            .send()
            .await
            .ok()?;
        let body: Value = answer.json().await.ok()?;
        body["status"].as_str().map(str::to_owned)
    }

    /// The events the predictor logged for `prompt` (`start`, `done`, `failed`), in order.
    pub fn events(&self, prompt: &str) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .filter(|(p, _)| *p == prompt)
            .map(|(_, e)| e.to_owned())
            .collect()
    }

    /// Waits until the predictor has logged `event` for `prompt`.
    pub async fn wait_event(&self, prompt: &str, event: &str) {
        let deadline = Instant::now() + DEADLINE;
        while !self.events(prompt).iter().any(|e| e == event) {
            assert!(
                Instant::now() < deadline,
                "the predictor never logged {event} for {prompt}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for CogServer {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.wait();
    }
}

/// A Cog server at `url` as a Kiln provider named `cog`.
pub fn cog_provider(url: &str) -> kiln_core::routes::ProviderConfig {
    kiln_core::routes::ProviderConfig {
        name: "cog".into(),
        kind: kiln_core::routes::ProviderKind::Cog,
        base_url: url.parse().unwrap(),
        api_key_env: None,
        api_key_file: None,
        // One prediction at a time, as the server has one slot.
        max_concurrency: Some(1),
        rate_limit: None,
        capacity_wait: Duration::from_secs(60),
        poll_interval: Duration::from_millis(100),
        prefer_wait: None,
        circuit_failures: 5,
        circuit_cooldown: Duration::from_secs(30),
    }
}

/// The Python of the test tools' venv (`cog`, `standardwebhooks`), which the test command
/// installs and names in `TEST_KILN_PYTHON`.
pub fn test_python() -> String {
    std::env::var("TEST_KILN_PYTHON").expect(
        "TEST_KILN_PYTHON must name a Python with cog and standardwebhooks (scripts/test.sh sets it)",
    )
}

/// Downloads an output and reads its width and height: an image's, or an MP4's video track's.
pub async fn output_size(http: &reqwest::Client, url: &str) -> (u32, u32) {
    let bytes = http.get(url).send().await.unwrap().bytes().await.unwrap();
    if bytes.get(4..8) == Some(b"ftyp") {
        let len = bytes.len() as u64;
        let mp4 = mp4::Mp4Reader::read_header(std::io::Cursor::new(bytes), len).unwrap();
        let track = mp4.tracks().values().next().expect("a video track");
        return (u32::from(track.width()), u32::from(track.height()));
    }
    let image = image::load_from_memory(&bytes).unwrap();
    (image.width(), image.height())
}

/// The objects a local store under `root` holds: each is one file in a shard directory.
pub fn local_objects(root: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|shard| {
            std::fs::read_dir(shard.path())
                .into_iter()
                .flatten()
                .flatten()
        })
        .map(|object| object.path())
        .collect()
}
