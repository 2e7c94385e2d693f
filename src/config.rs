//! Kiln's configuration: one typed struct, loaded from defaults, then an optional `kiln.toml`,
//! then `KILN_*` environment variables (nested keys with `__`, e.g. `KILN_WORKER__CONCURRENCY`),
//! then command-line flags. It is validated once at start with messages that name the setting.
//! Secrets are wrapped in `Secret`, whose `Debug` never shows the value.

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use url::Url;

/// A value that must never reach a log.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the api listens on.
    pub listen: SocketAddr,
    /// Home of the embedded default: the SQLite ledger, outputs, the local signing key.
    pub data_dir: PathBuf,
    /// How clients reach this api (download URLs are built from it). Default: the listen address.
    pub public_url: Option<Url>,
    /// `sqlite://PATH` or `postgres://…`. Default: `sqlite://{data_dir}/kiln.db`.
    pub database_url: Option<Secret>,
    /// `redis://…`: the shared dispatch queue. Absent: the in-process doorbell.
    pub redis_url: Option<Secret>,
    /// Prefix of Kiln's keys in Redis, so several deployments can share one server.
    pub redis_prefix: String,
    /// Where outputs live: `file:///dir` or `s3://bucket/prefix`. Default: `{data_dir}/outputs`.
    pub storage_url: Option<String>,
    /// Endpoint of an S3-compatible store (MinIO, Garage, R2, …); absent for AWS S3.
    pub s3_endpoint: Option<String>,
    /// The S3 endpoint clients download from, when it differs from `s3_endpoint` (a private
    /// address for Kiln's processes, a public name for clients). Presigned URLs name it.
    pub s3_public_endpoint: Option<String>,
    /// Path-style S3 addressing, which most self-hosted stores need.
    pub s3_force_path_style: bool,
    /// S3 region; absent, the AWS environment and profile chain decide.
    pub s3_region: Option<String>,
    /// Static S3 credentials; absent, the AWS environment and profile chain provide them.
    pub s3_access_key_id: Option<Secret>,
    pub s3_secret_access_key: Option<Secret>,
    /// How upstreams that push results (Cog) reach this deployment's api; often a private
    /// address. Default: `public_url`.
    pub callback_url: Option<Url>,
    /// Key for signed download and callback URLs. Default: generated once into
    /// `{data_dir}/signing.key`; set it when api and workers run as separate processes.
    pub signing_secret: Option<Secret>,
    /// Key that seals webhook signing secrets in the ledger: 64 hex digits (32 bytes). Default:
    /// derived from `signing_secret` where that is set, else generated once into
    /// `{data_dir}/secrets.key`. Every process of a deployment needs the same one.
    pub secrets_key: Option<Secret>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// `Retry-After` hint on unfinished jobs.
    #[serde(with = "humantime_serde")]
    pub poll_hint: Duration,
    /// How long an `Idempotency-Key`'s answer is kept for replay.
    #[serde(with = "humantime_serde")]
    pub idempotency_keep: Duration,
    /// How many of one tenant's queued jobs may wait in the shared dispatch queue at once; the
    /// rest are held in the ledger and admitted as places free, fairly across tenants, so one
    /// tenant's burst cannot bury another's job.
    pub tenant_window: u32,
    /// Default per-key limits (`[limits]`).
    pub limits: LimitsConfig,
    /// Upstream providers that model routes may name (`[[providers]]` in kiln.toml).
    pub providers: Vec<kiln_core::routes::ProviderConfig>,
    /// Configured models and their route chains (`[[models]]` in kiln.toml).
    pub models: Vec<kiln_core::routes::ModelConfig>,
    pub worker: WorkerConfig,
    pub outputs: OutputsConfig,
    pub demo: DemoConfig,
    pub ssrf: SsrfConfig,
    pub webhooks: WebhooksConfig,
    /// Bounds on the api's connections (`[http]`).
    pub http: HttpConfig,
    /// Where this process serves `/metrics` (Prometheus text of every tenant's counts), apart
    /// from the public listener so that it can stay on a private network. Unset: not served.
    pub metrics_listen: Option<SocketAddr>,
}

/// Bounds on each connection to the api, so a slow or silent client holds nothing for long.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// For a request's header to arrive; also how long a keep-alive connection may sit idle.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// For each piece of a request body to arrive while it is read.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Connections open at once; more wait to be accepted.
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        let d = kiln_api::server::ConnectionLimits::default();
        HttpConfig {
            header_timeout: d.header_timeout,
            body_timeout: d.body_timeout,
            max_connections: d.max_connections,
        }
    }
}

impl HttpConfig {
    pub fn limits(&self) -> kiln_api::server::ConnectionLimits {
        kiln_api::server::ConnectionLimits {
            header_timeout: self.header_timeout,
            body_timeout: self.body_timeout,
            max_connections: self.max_connections,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Jobs one worker process runs at once.
    pub concurrency: usize,
    /// Threads of a `kiln worker` process's async runtime; 0: one per core. A worker's async
    /// work is waiting (on upstreams, the ledger, Redis, webhook receivers) and the CPU-bound
    /// work of a generator runs on blocking threads beside the runtime, so one runtime thread
    /// keeps up with hundreds of jobs at once and spares every job the wake-ups and task
    /// stealing between threads (BENCHMARKS.md, issue 17, twelfth pass). To use more cores,
    /// run more workers, or raise this. `kiln serve`, which answers the api in the same
    /// process, keeps one thread per core.
    pub threads: usize,
    /// The older name of the top-level `metrics_listen`, still read when that is unset.
    pub metrics_listen: Option<SocketAddr>,
    /// How long a claim holds a job without renewal before the reconciler may rescue it.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// How often a running job's lease is renewed; also how soon a cancel is noticed.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// Attempts per job for transient failures (the first run included).
    pub max_attempts: u32,
    /// Times a job may be rescued from a lost worker before it fails.
    pub max_rescues: u32,
    #[serde(with = "humantime_serde")]
    pub retry_base: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// Longest one attempt may run before it fails as a transient `timeout`.
    #[serde(with = "humantime_serde")]
    pub job_timeout: Duration,
    /// Grace period on SIGTERM before running jobs are released to other workers.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub reconcile_interval: Duration,
    /// A queued, due job not rung for this long is rung again.
    #[serde(with = "humantime_serde")]
    pub ring_stale_after: Duration,
    /// Base of the worker identity recorded on leases and attempts; a process takes the first
    /// free `{identity}-{n}`. Default: the host name.
    pub identity: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputsConfig {
    /// How long outputs are kept.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub janitor_interval: Duration,
    /// Largest input file a worker downloads.
    pub max_input_bytes: u64,
    /// Largest output: a file a generator uploads (Cog's `--upload-url`) or one a provider names
    /// by URL, counted as it streams into the store.
    pub max_output_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DemoConfig {
    /// Lets demo inputs ask the worker process to abort (fault tests only).
    pub allow_crash: bool,
    /// The most extra time a demo input's `latency_ms` may ask for (at most 10 minutes).
    #[serde(with = "humantime_serde")]
    pub max_latency: Duration,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            allow_crash: false,
            max_latency: Duration::from_millis(kiln_core::catalog::MAX_LATENCY_MS),
        }
    }
}

/// Every key's limits, where the key sets none of its own (`kiln keys limits`). Unset: none.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Requests per second per key, on every route (429 with `Retry-After` beyond).
    pub rate_per_second: Option<u32>,
    /// Jobs a key may have queued or running at once.
    pub max_active_jobs: Option<u32>,
    /// What a key's jobs may cost per UTC day, in the currency unit of the routes' prices.
    pub daily_spend: Option<f64>,
    /// The highest priority a key may submit at (`high`, `normal`, `low`).
    pub max_priority: Option<kiln_core::dispatch::Lane>,
}

impl LimitsConfig {
    pub fn key_limits(&self) -> kiln_core::ledger::KeyLimits {
        kiln_core::ledger::KeyLimits {
            rate_per_second: self.rate_per_second,
            max_active_jobs: self.max_active_jobs,
            daily_spend_micros: self.daily_spend.map(|d| (d * 1e6).round() as i64),
            max_priority: self.max_priority,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SsrfConfig {
    /// Private ranges that input and webhook URLs may reach anyway (local development).
    pub allow: Vec<ipnet::IpNet>,
    /// Whether webhooks may target loopback addresses. Unset: yes on the embedded default
    /// (SQLite, no Redis), so a receiver on the same machine works, with a warning at start;
    /// no anywhere else.
    pub loopback_webhooks: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Delays before each try of a delivery (the first usually zero); jittered by up to 10 %.
    #[serde(with = "humantime_serde_vec")]
    pub schedule: Vec<Duration>,
    /// How often a worker looks for due deliveries.
    #[serde(with = "humantime_serde")]
    pub poll: Duration,
    /// Largest payload; a larger job is sent without its input.
    pub max_payload_bytes: usize,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        let s = Duration::from_secs;
        WebhooksConfig {
            // Standard Webhooks' recommended schedule.
            schedule: vec![
                s(0),
                s(5),
                s(5 * 60),
                s(30 * 60),
                s(2 * 3600),
                s(5 * 3600),
                s(10 * 3600),
                s(10 * 3600),
            ],
            poll: Duration::from_millis(500),
            max_payload_bytes: 256 * 1024,
        }
    }
}

/// A list of durations written like `["0s", "5s", "5m"]`.
mod humantime_serde_vec {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(v: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        v.iter()
            .map(|d| humantime_serde::re::humantime::format_duration(*d).to_string())
            .collect::<Vec<_>>()
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|t| {
                humantime_serde::re::humantime::parse_duration(t).map_err(serde::de::Error::custom)
            })
            .collect()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".parse().expect("a valid address"),
            data_dir: PathBuf::from("./kiln-data"),
            public_url: None,
            database_url: None,
            redis_url: None,
            redis_prefix: "kiln".into(),
            storage_url: None,
            s3_endpoint: None,
            s3_public_endpoint: None,
            s3_force_path_style: false,
            s3_region: None,
            s3_access_key_id: None,
            s3_secret_access_key: None,
            callback_url: None,
            signing_secret: None,
            secrets_key: None,
            max_body_bytes: 8 * 1024 * 1024,
            poll_hint: Duration::from_secs(1),
            idempotency_keep: Duration::from_secs(24 * 3600),
            tenant_window: kiln_core::ledger::DEFAULT_TENANT_WINDOW,
            limits: LimitsConfig::default(),
            providers: vec![],
            models: vec![],
            worker: WorkerConfig::default(),
            outputs: OutputsConfig::default(),
            demo: DemoConfig::default(),
            ssrf: SsrfConfig::default(),
            webhooks: WebhooksConfig::default(),
            http: HttpConfig::default(),
            metrics_listen: None,
        }
    }
}

/// Most runtime threads a worker may ask for: past the cores of any machine Kiln runs on, each
/// thread only costs memory and wake-ups.
const MAX_RUNTIME_THREADS: usize = 1024;

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            concurrency: 4,
            threads: 1,
            metrics_listen: None,
            lease: Duration::from_secs(30),
            heartbeat: Duration::from_secs(5),
            max_attempts: 3,
            max_rescues: 3,
            retry_base: Duration::from_secs(2),
            retry_max: Duration::from_secs(60),
            job_timeout: Duration::from_secs(30 * 60),
            shutdown_timeout: Duration::from_secs(30),
            reconcile_interval: Duration::from_secs(5),
            // A safety net only: lost rings are otherwise recovered by a process's first pass, a
            // queue restart (new epoch), a failed ring (marked unrung) and Redis reclaiming.
            ring_stale_after: Duration::from_secs(300),
            identity: None,
        }
    }
}

impl Default for OutputsConfig {
    fn default() -> Self {
        OutputsConfig {
            ttl: Duration::from_secs(7 * 24 * 3600),
            janitor_interval: Duration::from_secs(60),
            max_input_bytes: 32 * 1024 * 1024,
            max_output_bytes: 4 * 1024 * 1024 * 1024,
        }
    }
}

/// Values given on the command line; they win over every other source.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
}

impl Config {
    /// defaults → `config_file` (or `./kiln.toml` if present) → `KILN_*` → flags, then validate.
    pub fn load(config_file: Option<&Path>, overrides: &Overrides) -> anyhow::Result<Config> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        match config_file {
            Some(path) => {
                anyhow::ensure!(
                    path.exists(),
                    "the configuration file {} does not exist",
                    path.display()
                );
                figment = figment.merge(Toml::file(path));
            }
            None if Path::new("kiln.toml").exists() => {
                figment = figment.merge(Toml::file("kiln.toml"))
            }
            None => {}
        }
        figment = figment.merge(
            // The client's variables (`kiln run` and the rest) are not server settings.
            Env::prefixed("KILN_")
                .ignore(&["config", "log", "log_format", "url", "api_key"])
                .split("__"),
        );
        if let Some(listen) = overrides.listen {
            figment = figment.merge(Serialized::default("listen", listen));
        }
        if let Some(dir) = &overrides.data_dir {
            figment = figment.merge(Serialized::default("data_dir", dir));
        }
        let config: Config = figment.extract().map_err(explain)?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        let w = &self.worker;
        anyhow::ensure!(w.concurrency >= 1, "worker.concurrency must be at least 1");
        anyhow::ensure!(
            w.threads <= MAX_RUNTIME_THREADS,
            "worker.threads must be at most {MAX_RUNTIME_THREADS} (0: one per core)"
        );
        anyhow::ensure!(
            self.limits.rate_per_second != Some(0) && self.limits.max_active_jobs != Some(0),
            "limits.rate_per_second and limits.max_active_jobs must be at least 1 (leave them out for no limit)"
        );
        anyhow::ensure!(
            self.limits
                .daily_spend
                .is_none_or(|d| d.is_finite() && d >= 0.0),
            "limits.daily_spend must be a non-negative amount"
        );
        anyhow::ensure!(self.tenant_window >= 1, "tenant_window must be at least 1");
        anyhow::ensure!(
            w.max_attempts >= 1,
            "worker.max_attempts must be at least 1"
        );
        anyhow::ensure!(!w.lease.is_zero(), "worker.lease must be longer than zero");
        anyhow::ensure!(
            !w.heartbeat.is_zero() && w.heartbeat < w.lease,
            "worker.heartbeat ({:?}) must be shorter than worker.lease ({:?})",
            w.heartbeat,
            w.lease
        );
        anyhow::ensure!(
            !w.reconcile_interval.is_zero(),
            "worker.reconcile_interval must be longer than zero"
        );
        anyhow::ensure!(
            !self.outputs.janitor_interval.is_zero(),
            "outputs.janitor_interval must be longer than zero"
        );
        anyhow::ensure!(
            !self.outputs.ttl.is_zero(),
            "outputs.ttl must be longer than zero"
        );
        anyhow::ensure!(
            !self.http.header_timeout.is_zero() && !self.http.body_timeout.is_zero(),
            "http.header_timeout and http.body_timeout must be longer than zero"
        );
        anyhow::ensure!(
            self.http.max_connections >= 1,
            "http.max_connections must be at least 1"
        );
        anyhow::ensure!(
            self.max_body_bytes >= 1024,
            "max_body_bytes must be at least 1024"
        );
        if let Some(key) = &self.secrets_key {
            anyhow::ensure!(
                hex::decode(key.expose()).is_ok_and(|k| k.len() == 32),
                "secrets_key must be 64 hex digits (32 bytes)"
            );
        }
        if let Some(url) = &self.public_url {
            anyhow::ensure!(
                matches!(url.scheme(), "http" | "https"),
                "public_url must be an http(s) URL"
            );
        }
        if let Some(redis) = &self.redis_url {
            anyhow::ensure!(
                redis.expose().starts_with("redis://") || redis.expose().starts_with("rediss://"),
                "redis_url must be a redis:// or rediss:// URL"
            );
        }
        anyhow::ensure!(
            !self.redis_prefix.is_empty() && !self.redis_prefix.contains(char::is_whitespace),
            "redis_prefix must be a non-empty word"
        );
        self.storage()?;
        kiln_core::routes::validate(&self.providers, &self.models)
            .map_err(|e| anyhow::anyhow!(e))?;
        anyhow::ensure!(
            self.s3_access_key_id.is_some() == self.s3_secret_access_key.is_some(),
            "s3_access_key_id and s3_secret_access_key are set together or not at all"
        );
        if let Some(db) = &self.database_url {
            anyhow::ensure!(
                kiln_core::ledger::Dialect::of_url(db.expose()).is_some(),
                "database_url must be a sqlite:// or postgres:// URL"
            );
        }
        Ok(())
    }

    /// The parsed `storage_url`, defaulting to the data directory.
    pub fn storage(&self) -> anyhow::Result<kiln_storage::StorageUrl> {
        match &self.storage_url {
            Some(url) => url.parse().map_err(|e| anyhow::anyhow!("storage_url: {e}")),
            None => Ok(kiln_storage::StorageUrl::Local(
                self.data_dir.join("outputs"),
            )),
        }
    }

    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.expose().to_owned(),
            None => format!("sqlite://{}", self.data_dir.join("kiln.db").display()),
        }
    }
}

/// A configuration error as a person reads it: which setting, where it came from (a
/// `KILN_…` variable or a line of the file), and for a misspelt one the closest real one.
fn explain(error: figment::Error) -> anyhow::Error {
    let lines: Vec<String> = error.into_iter().map(|e| one_error(&e)).collect();
    anyhow::anyhow!("invalid configuration:\n  {}", lines.join("\n  "))
}

/// The line of a TOML file where the setting at `path` (`["worker", "lease"]`) is written: its
/// key at the start of a line, inside its table's section for a nested one.
fn line_of(file: &Path, path: &[String]) -> Option<usize> {
    let text = std::fs::read_to_string(file).ok()?;
    let (key, tables) = path.split_last()?;
    let section = tables.join(".");
    let mut current = String::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = header.trim().to_owned();
            continue;
        }
        let written = line
            .split('=')
            .next()
            .unwrap_or("")
            .trim()
            .trim_matches('"');
        if current == section && written == key && line.contains('=') {
            return Some(n + 1);
        }
    }
    None
}

fn one_error(e: &figment::Error) -> String {
    let from_env = e
        .metadata
        .as_ref()
        .is_some_and(|m| m.name.contains("environment"));
    let file = e
        .metadata
        .as_ref()
        .and_then(|m| m.source.as_ref())
        .and_then(|s| s.file_path());
    let source = match file {
        Some(path) => match line_of(path, &e.path) {
            Some(line) => format!(" in {} line {line}", path.display()),
            None => format!(" in {}", path.display()),
        },
        None => String::new(),
    };
    // How a setting is named where it was set: `KILN_WORKER__LEASE` or `worker.lease`.
    let name = |path: &[String]| {
        if from_env {
            format!("KILN_{}", path.join("__").to_uppercase())
        } else {
            path.join(".")
        }
    };
    match &e.kind {
        figment::error::Kind::UnknownField(field, expected) => {
            // The error's path ends with the unknown field itself.
            let mut path = e.path.clone();
            if path.last() != Some(field) {
                path.push(field.clone());
            }
            let closest = expected
                .iter()
                .map(|candidate| (strsim::jaro_winkler(field, candidate), candidate))
                .filter(|(score, _)| *score > 0.8)
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, candidate)| {
                    let mut near = path.clone();
                    *near.last_mut().expect("the field") = (*candidate).to_owned();
                    format!("; did you mean {}?", name(&near))
                })
                .unwrap_or_default();
            format!("{} is not a setting{source}{closest}", name(&path))
        }
        _ => {
            let kind = e.kind.to_string();
            // Durations are humantime's: say what one looks like.
            let hint = if kind.contains("duration") {
                " (a duration such as 500ms, 30s, 5m or 1h 30m)"
            } else {
                ""
            };
            if e.path.is_empty() {
                format!("{kind}{source}{hint}")
            } else {
                format!("{}{source}: {kind}{hint}", name(&e.path))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_secrets_are_redacted() {
        let mut c = Config::default();
        c.validate().unwrap();
        c.signing_secret = Some(Secret::new("hunter2"));
        c.database_url = Some(Secret::new("sqlite://secret-path.db"));
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"));
        assert!(!shown.contains("secret-path"));
    }

    #[test]
    fn a_worker_runs_on_one_runtime_thread_unless_told_otherwise() {
        assert_eq!(Config::default().worker.threads, 1);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kiln.toml");
        std::fs::write(&file, "[worker]\nthreads = 3\n").unwrap();
        let c = Config::load(Some(&file), &Overrides::default()).unwrap();
        assert_eq!(c.worker.threads, 3);
        std::fs::write(&file, "[worker]\nthreads = 100000\n").unwrap();
        let err = format!(
            "{:#}",
            Config::load(Some(&file), &Overrides::default()).unwrap_err()
        );
        assert!(err.contains("worker.threads"), "{err}");
    }

    #[test]
    fn validation_names_the_setting() {
        let mut c = Config::default();
        c.worker.heartbeat = c.worker.lease;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("worker.heartbeat"), "{err}");
    }

    #[test]
    fn a_file_error_names_the_setting_its_line_and_the_closest_real_one() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kiln.toml");
        std::fs::write(&file, "# Kiln\nlistne = \"127.0.0.1:9000\"\n").unwrap();
        let err = Config::load(Some(&file), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!(
                "listne is not a setting in {} line 2; did you mean listen?",
                file.display()
            )),
            "{err}"
        );
        std::fs::write(&file, "[worker]\nconcurrency = 2\nlease = \"5 parsecs\"\n").unwrap();
        let err = Config::load(Some(&file), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("worker.lease in") && err.contains("line 3"),
            "{err}"
        );
        assert!(err.contains("a duration such as 500ms, 30s"), "{err}");
        assert!(
            !err.contains("default."),
            "no internal profile names: {err}"
        );
    }

    #[test]
    fn file_then_flags_take_precedence() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kiln.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9000\"\n[worker]\nconcurrency = 7\nlease = \"45s\"\n",
        )
        .unwrap();
        let c = Config::load(Some(&file), &Overrides::default()).unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.worker.concurrency, 7);
        assert_eq!(c.worker.lease, Duration::from_secs(45));
        let flags = Overrides {
            listen: Some("127.0.0.1:9100".parse().unwrap()),
            data_dir: None,
        };
        assert_eq!(
            Config::load(Some(&file), &flags).unwrap().listen.port(),
            9100
        );
        std::fs::write(&file, "[worker]\nconcurency = 7\n").unwrap();
        let err = Config::load(Some(&file), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("concurency"), "{err}");
    }
}
