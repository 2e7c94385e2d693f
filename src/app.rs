//! Wiring. `start` opens the ledger, the store and the doorbell the configuration names, then
//! starts the api, the worker, or both (`kiln serve`), and returns a handle that shuts them down
//! gracefully. The embedded default needs nothing but a data directory: SQLite, the in-process
//! doorbell, a local output directory, and a signing key generated on first start.

use crate::config::Config;
use anyhow::Context;
use kiln_core::catalog::Catalog;
use kiln_core::dispatch::redis::{ConsumerSettings, RedisDoorbell};
use kiln_core::dispatch::{self, Doorbell};
use kiln_core::permits::{LocalPermits, SharedPermits};
use kiln_core::routes::{ProviderKind, DEMO_PROVIDER};
use kiln_core::{keys, Ledger, TenantId};
use kiln_storage::{
    LocalStore, ObjectStore, S3Settings, S3Store, SignedDownloads, StorageUrl, UrlSigner,
};
use kiln_webhooks::{SafeClient, SsrfPolicy};
use kiln_worker::circuit::CircuitBreaker;
use kiln_worker::cog::{CallbackSettings, CogProvider};
use kiln_worker::comfyui::ComfyUiProvider;
use kiln_worker::demo_provider::DemoProvider;
use kiln_worker::executor::{ExecutorConfig, Providers};
use kiln_worker::fal::FalProvider;
use kiln_worker::inputs::InputResolver;
use kiln_worker::limit::{ConcurrencyLimit, RateLimited};
use kiln_worker::openai::OpenAiProvider;
use kiln_worker::provider::Provider;
use kiln_worker::replicate::ReplicateProvider;
use kiln_worker::upstream::OutputDownloads;
use kiln_worker::{WorkerHandle, WorkerRuntime, WorkerSettings};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use url::Url;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub api: bool,
    pub worker: bool,
}

/// The runtime threads a server process asks for: a worker alone (`kiln worker`) its
/// `worker.threads` (one by default: see `WorkerConfig::threads`; 0 is one per core); every
/// other role none, so one per core, as `kiln serve` (the api and a worker in one process)
/// measured fastest with two threads on two cores and slower with one.
pub fn runtime_threads(roles: Roles, config: &Config) -> Option<usize> {
    let worker_alone = roles
        == Roles {
            api: false,
            worker: true,
        };
    (worker_alone && config.worker.threads > 0).then_some(config.worker.threads)
}

/// The async runtime every process runs on, with `threads` threads (none: one per core). One
/// thread is tokio's current-thread runtime: the process's main thread runs the tasks itself.
/// A multi-threaded runtime of one thread runs them on a worker thread beside the main one,
/// and each wake-up from the I/O driver or the blocking pool then crossed threads: a
/// `kiln worker` (one thread by default) spent about 6 % less CPU on the current-thread
/// runtime (BENCHMARKS.md, issue 17, fourteenth pass).
pub fn runtime(threads: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    if threads == Some(1) {
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(threads) = threads {
        builder.worker_threads(threads);
    }
    builder.build()
}

pub struct Running {
    /// Where the api listens (when it runs).
    pub addr: Option<SocketAddr>,
    /// Where `/metrics` is served (when `metrics_listen` is set).
    pub metrics_addr: Option<SocketAddr>,
    pub public_url: Url,
    pub ledger: Arc<dyn Ledger>,
    /// This process's worker identity (when it runs a worker).
    pub worker_identity: Option<String>,
    stop_api: CancellationToken,
    stop_deliverer: CancellationToken,
    api: Option<JoinHandle<std::io::Result<()>>>,
    worker: Option<WorkerHandle>,
}

impl Running {
    /// Graceful shutdown: the api stops accepting and finishes its requests; the worker stops
    /// claiming, lets running jobs finish within the grace period and releases the rest.
    pub async fn shutdown(self) {
        self.stop_api.cancel();
        self.stop_deliverer.cancel();
        if let Some(worker) = self.worker {
            worker.shutdown().await;
        }
        if let Some(mut api) = self.api {
            // In-flight requests get a moment to finish; a slow download does not hold the
            // process hostage.
            if tokio::time::timeout(Duration::from_secs(10), &mut api)
                .await
                .is_err()
            {
                tracing::warn!("requests still open after 10 s; closing them");
                api.abort();
            }
        }
    }
}

/// Opens the ledger named by the configuration (creating the data directory if needed).
pub async fn open_ledger(config: &Config) -> anyhow::Result<Arc<dyn Ledger>> {
    private_dir(&config.data_dir)?;
    let url = config.database_url();
    if let Some(path) = url.strip_prefix("sqlite://") {
        private_file(Path::new(path.split('?').next().unwrap_or(path)))?;
    }
    kiln_core::ledger::connect(&url)
        .await
        .context("cannot open the ledger")
}

/// The data directory holds the ledger, the keys and the outputs: only its owner may enter it
/// (0700), whatever the umask, and an existing one is narrowed to that too.
fn private_dir(dir: &Path) -> anyhow::Result<()> {
    let context = || format!("cannot create the data directory {}", dir.display());
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        builder.mode(0o700);
        builder.create(dir).with_context(context)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private (0700)", dir.display()))?;
    }
    #[cfg(not(unix))]
    builder.create(dir).with_context(context)?;
    Ok(())
}

/// The SQLite ledger file, created (or narrowed) to 0600 before SQLite opens it: SQLite gives
/// its `-wal` and `-shm` files the database file's permissions, so they are private too.
fn private_file(path: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot create the ledger {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot make {} private (0600)", path.display()))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// The seal of webhook secrets at rest: `secrets_key`, else derived from `signing_secret`
/// (which split deployments already share), else a key generated once into the data directory.
fn secret_seal(config: &Config) -> anyhow::Result<kiln_webhooks::SecretSeal> {
    if let Some(key) = &config.secrets_key {
        let bytes: [u8; 32] = hex::decode(key.expose())
            .ok()
            .and_then(|k| k.try_into().ok())
            .context("secrets_key must be 64 hex digits")?;
        return Ok(kiln_webhooks::SecretSeal::new(&bytes));
    }
    if let Some(secret) = &config.signing_secret {
        return Ok(kiln_webhooks::SecretSeal::derive(
            secret.expose().as_bytes(),
        ));
    }
    let path = config.data_dir.join("secrets.key");
    let text = generated_key(&path)?;
    let key: [u8; 32] = hex::decode(&text)
        .ok()
        .and_then(|k| k.try_into().ok())
        .with_context(|| format!("{} is not 64 hex digits", path.display()))?;
    Ok(kiln_webhooks::SecretSeal::new(&key))
}

/// A key kept in the data directory: read if it is there, else 32 random bytes (hex) written
/// there first. Processes starting together on one directory agree on one key: the fresh key
/// is written whole to a file of its own and then linked into place, which fails if another
/// process linked first, and then that one's key is read. So no process ever reads a file
/// half written, and none keeps a key the others do not have.
fn generated_key(path: &Path) -> anyhow::Result<String> {
    if let Ok(existing) = std::fs::read_to_string(path) {
        return Ok(existing.trim().to_owned());
    }
    let fresh = hex::encode(rand::random::<[u8; 32]>());
    let staged = path.with_extension(format!("new-{}", uuid_like()));
    write_private(&staged, &fresh)?;
    let linked = std::fs::hard_link(&staged, path);
    let _ = std::fs::remove_file(&staged);
    match linked {
        Ok(()) => Ok(fresh),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Ok(std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?
                .trim()
                .to_owned())
        }
        Err(e) => Err(e).with_context(|| format!("cannot write {}", path.display())),
    }
}

/// The signing key for download URLs: configured, or generated once into the data directory.
fn signing_secret(config: &Config) -> anyhow::Result<Vec<u8>> {
    if let Some(secret) = &config.signing_secret {
        return Ok(secret.expose().as_bytes().to_vec());
    }
    Ok(generated_key(&config.data_dir.join("signing.key"))?.into_bytes())
}

fn uuid_like() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// A provider's API key: from its environment variable, else from its secret file.
fn api_key(p: &kiln_core::routes::ProviderConfig) -> anyhow::Result<Option<String>> {
    if let Some(key) = p
        .api_key_env
        .as_ref()
        .and_then(|var| std::env::var(var).ok())
    {
        return Ok(Some(key));
    }
    match &p.api_key_file {
        Some(path) => {
            let key = std::fs::read_to_string(path).with_context(|| {
                format!(
                    "providers.{}: cannot read api_key_file {}",
                    p.name,
                    path.display()
                )
            })?;
            Ok(Some(key.trim_end().to_owned()))
        }
        None => Ok(None),
    }
}

/// The providers routes can name: the built-in `demo`, and each configured upstream.
fn providers(
    config: &Config,
    inputs: InputResolver,
    permits: SharedPermits,
    callbacks: CallbackSettings,
) -> anyhow::Result<Providers> {
    let mut providers: Providers = HashMap::new();
    providers.insert(DEMO_PROVIDER.into(), Arc::new(DemoProvider::new(inputs)));
    for p in &config.providers {
        let api_key = api_key(p)?;
        // Output URLs off the upstream's own origin pass the same checks as users' URLs.
        let outputs = OutputDownloads::new(
            &p.base_url,
            SsrfPolicy::new(config.ssrf.allow.clone()),
            config.outputs.max_output_bytes,
        );
        let upstream: Arc<dyn Provider> = match p.kind {
            ProviderKind::Openai => Arc::new(OpenAiProvider::new(&p.base_url, api_key, outputs)),
            ProviderKind::Cog => Arc::new(CogProvider::new(
                &p.base_url,
                callbacks.clone(),
                p.poll_interval,
                outputs,
            )),
            ProviderKind::Comfyui => {
                Arc::new(ComfyUiProvider::new(&p.base_url, p.poll_interval, outputs))
            }
            ProviderKind::Replicate => Arc::new(ReplicateProvider::new(
                &p.base_url,
                api_key,
                p.poll_interval,
                p.prefer_wait,
                outputs,
            )),
            ProviderKind::Fal => Arc::new(FalProvider::new(
                &p.base_url,
                api_key,
                p.poll_interval,
                outputs,
            )),
        };
        let mut guarded: Arc<dyn Provider> = Arc::new(CircuitBreaker::new(
            &p.name,
            upstream,
            p.circuit_failures,
            p.circuit_cooldown,
        ));
        // The limits are outside the breaker, so waiting for capacity never counts against the
        // circuit; the rate limit is innermost of the two, so a call holding a concurrency
        // permit is the one that waits for a start.
        if let Some(rate) = p.rate_limit {
            guarded = Arc::new(RateLimited::new(
                &p.name,
                guarded,
                permits.clone(),
                rate,
                p.capacity_wait,
            ));
        }
        if let Some(max) = p.max_concurrency {
            guarded = Arc::new(ConcurrencyLimit::new(
                &p.name,
                guarded,
                permits.clone(),
                max,
                p.capacity_wait,
            ));
        }
        providers.insert(p.name.clone(), guarded);
    }
    // A workflow that cannot be read would fail every job on its route: refuse to start.
    for m in &config.models {
        for r in &m.routes {
            if let Some(path) = &r.workflow {
                kiln_worker::comfyui::load_workflow(path)
                    .map_err(|e| anyhow::anyhow!("models.{}: {e}", m.name))?;
            }
        }
    }
    Ok(providers)
}

/// Writes a file only its owner can read.
pub fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(contents.as_bytes())?;
    Ok(())
}

/// On an empty ledger, `kiln serve` mints a first key so a newcomer can call the api at once.
/// Returns the key and where it was saved.
pub async fn bootstrap_key(
    ledger: &dyn Ledger,
    data_dir: &Path,
) -> anyhow::Result<Option<(String, std::path::PathBuf)>> {
    if ledger.count_api_keys().await? > 0 {
        return Ok(None);
    }
    let minted = keys::mint();
    let tenant = TenantId::parse("default").expect("a valid tenant name");
    ledger.insert_api_key(&tenant, &minted).await?;
    let path = data_dir.join("api-key");
    write_private(&path, &format!("{}\n", minted.plaintext))?;
    Ok(Some((minted.plaintext, path)))
}

/// The base of this host's worker identities: configured, else the host name.
fn identity_base(config: &Config) -> String {
    config.worker.identity.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "kiln".into())
    })
}

/// This process's metrics, rendered as Prometheus text. The recorder is installed once per
/// process (the `metrics` facade has one global recorder); every Kiln started in the process
/// shares it.
pub fn metrics_render() -> kiln_api::MetricsRender {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    let handle = HANDLE
        .get_or_init(|| {
            let seconds = [
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
                300.0, 600.0,
            ];
            let builder = metrics_exporter_prometheus::PrometheusBuilder::new()
                .set_buckets(&seconds)
                .expect("the bucket list is not empty");
            match builder.install_recorder() {
                Ok(handle) => handle,
                // Another recorder is installed (an embedding program's): keep a private one
                // so `/metrics` still answers, with only what reaches it.
                Err(_) => metrics_exporter_prometheus::PrometheusBuilder::new()
                    .build_recorder()
                    .handle(),
            }
        })
        .clone();
    Arc::new(move || handle.render())
}

/// Starts the roles asked for and returns once the api is listening.
pub async fn start(config: &Config, roles: Roles) -> anyhow::Result<Running> {
    let ledger = open_ledger(config).await?;
    ledger.set_dispatch_window(config.tenant_window);
    let listener = if roles.api {
        Some(
            tokio::net::TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("cannot listen on {}", config.listen))?,
        )
    } else {
        None
    };
    let addr = listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let public_url = match (&config.public_url, addr) {
        (Some(url), _) => url.clone(),
        (None, Some(addr)) if !addr.ip().is_unspecified() => {
            Url::parse(&format!("http://{addr}/"))?
        }
        (None, Some(addr)) => Url::parse(&format!("http://127.0.0.1:{}/", addr.port()))?,
        (None, None) => Url::parse(&format!("http://{}/", config.listen))?,
    };

    let secret: Arc<[u8]> = signing_secret(config)?.into();
    let seal = secret_seal(config)?;
    let pushes_results = config.providers.iter().any(|p| p.kind == ProviderKind::Cog);
    anyhow::ensure!(
        !(roles.worker && !roles.api && pushes_results)
            || config.callback_url.is_some()
            || config.public_url.is_some(),
        "a worker without an api of its own needs callback_url (or public_url): Cog servers post their results to the api there"
    );
    // The api's own download URLs: every local output's, and on S3 the relay for clients that
    // cannot use a presigned URL (`kiln_storage::SignedDownloads`).
    let downloads = SignedDownloads::new(public_url.clone(), UrlSigner::new(secret.to_vec()));
    let store: Arc<dyn ObjectStore> = match config.storage()? {
        StorageUrl::Local(dir) => Arc::new(LocalStore::new(
            dir,
            public_url.clone(),
            UrlSigner::new(secret.to_vec()),
        )),
        StorageUrl::S3 { bucket, prefix } => {
            let s3 = S3Store::connect(&S3Settings {
                bucket,
                prefix,
                endpoint: config.s3_endpoint.clone(),
                public_endpoint: config.s3_public_endpoint.clone(),
                force_path_style: config.s3_force_path_style,
                region: config.s3_region.clone(),
                credentials: config
                    .s3_access_key_id
                    .as_ref()
                    .zip(config.s3_secret_access_key.as_ref())
                    .map(|(id, secret)| (id.expose().to_owned(), secret.expose().to_owned())),
            })
            .await?
            .relayed_by(downloads.clone());
            s3.check()
                .await
                .context("cannot reach the S3 bucket (storage_url)")?;
            // S3 expires outputs by itself where it can; the janitor deletes them either way.
            match s3.ensure_lifecycle(config.outputs.ttl).await {
                Ok(()) => {
                    tracing::info!("the bucket's lifecycle rule expires outputs after outputs.ttl")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the store does not take a lifecycle rule; the janitor alone deletes expired outputs")
                }
            }
            Arc::new(s3)
        }
    };
    // Worker identities are slots in the ledger (`{base}-{n}`): unique among live processes,
    // and the same again after a restart once the old slot is free. Whatever the identity's
    // previous holder still had running is rescued at once.
    let slot_holder = uuid_like();
    let identity = if roles.worker {
        let identity = ledger
            .acquire_worker_slot(&identity_base(config), &slot_holder, config.worker.lease)
            .await?;
        let orphaned = ledger.expire_leases_of(&identity).await?;
        if orphaned > 0 {
            tracing::warn!(
                identity,
                orphaned,
                "rescuing the jobs a previous holder of this identity left running"
            );
        }
        identity
    } else {
        identity_base(config)
    };
    let worker_identity_for_report = identity.clone();
    // The worker's slots, each held while a ring is handled.
    let free_slots = kiln_core::dispatch::FreeSlots::new(config.worker.concurrency.max(1));
    let (doorbell, rings, poll_ledger, permits): (Arc<dyn Doorbell>, _, _, SharedPermits) =
        match &config.redis_url {
            Some(url) => {
                let bell = RedisDoorbell::connect(url.expose(), &config.redis_prefix)
                    .await
                    .context("cannot reach Redis (redis_url)")?;
                let rings = bell.consume(ConsumerSettings {
                    consumer: identity.clone(),
                    // No more rings a read than the worker has free slots: a ring fetched
                    // beyond them would wait behind a long job while another worker idles.
                    // Reading one at a time instead cost a round trip per job under load
                    // (BENCHMARKS.md, issue 17, sixteenth pass).
                    free_slots: Some(free_slots.clone()),
                    ..ConsumerSettings::default()
                });
                let permits = Arc::new(bell.permits());
                (Arc::new(bell), rings, false, permits)
            }
            None => {
                // The in-process doorbell only reaches a worker in this same process. Split into
                // separate api and worker processes without a shared queue, the api's rings do
                // nothing and the worker polls the ledger instead.
                let (in_process, rings) = dispatch::in_process();
                let doorbell: Arc<dyn Doorbell> = if roles.worker {
                    Arc::new(in_process)
                } else {
                    Arc::new(dispatch::LedgerPolling)
                };
                let permits = Arc::new(LocalPermits::default());
                (doorbell, rings, !(roles.api && roles.worker), permits)
            }
        };
    let catalog = Catalog::new(config.demo.allow_crash)
        .with_models(config.models.clone())
        .with_max_latency(config.demo.max_latency);
    let ssrf = SsrfPolicy::new(config.ssrf.allow.clone());
    let embedded = config.redis_url.is_none()
        && kiln_core::ledger::Dialect::of_url(&config.database_url())
            == Some(kiln_core::ledger::Dialect::Sqlite);
    let webhook_ssrf = if config.ssrf.loopback_webhooks.unwrap_or(embedded) {
        tracing::warn!("webhooks may target loopback addresses (the embedded default's allowance for local receivers); set ssrf.loopback_webhooks = false to refuse them");
        let mut allow = config.ssrf.allow.clone();
        allow.extend(
            ["127.0.0.0/8", "::1/128"].map(|n| n.parse::<ipnet::IpNet>().expect("a valid range")),
        );
        SsrfPolicy::new(allow)
    } else {
        ssrf.clone()
    };

    // A worker wakes the deliverer of its own process when a job with a webhook starts or ends,
    // or a pipeline's step ends.
    let wake_deliverer = kiln_worker::deliverer::DelivererWake::default();
    let worker = if roles.worker {
        let runtime = WorkerRuntime {
            ledger: ledger.clone(),
            doorbell: doorbell.clone(),
            store: store.clone(),
            providers: providers(
                config,
                InputResolver::new(
                    ledger.clone(),
                    store.clone(),
                    SafeClient::new(ssrf.clone(), Duration::from_secs(60)),
                    config.outputs.max_input_bytes,
                ),
                permits.clone(),
                CallbackSettings {
                    base: config
                        .callback_url
                        .clone()
                        .unwrap_or_else(|| public_url.clone()),
                    secret: secret.clone(),
                },
            )?,
            catalog: catalog.clone(),
            executor: ExecutorConfig {
                identity,
                lease: config.worker.lease,
                heartbeat: config.worker.heartbeat,
                max_attempts: config.worker.max_attempts,
                retry_base: config.worker.retry_base,
                retry_max: config.worker.retry_max,
                output_ttl: config.outputs.ttl,
                job_timeout: config.worker.job_timeout,
            },
            settings: WorkerSettings {
                concurrency: config.worker.concurrency,
                shutdown_timeout: config.worker.shutdown_timeout,
                reconcile_interval: config.worker.reconcile_interval,
                ring_stale_after: config.worker.ring_stale_after,
                max_rescues: config.worker.max_rescues,
                janitor_interval: config.outputs.janitor_interval,
                poll_ledger,
                slot_holder,
            },
            wake_deliverer: Some(wake_deliverer.clone()),
            free_slots,
        };
        Some(runtime.start(rings))
    } else {
        None
    };
    // Metrics go out on a listener of their own (never the public one): every tenant's counts,
    // with no key asked. A worker without the api keeps to its own counters.
    let stop_api = CancellationToken::new();
    let stop_metrics = stop_api.clone();
    let metrics_listen = config.metrics_listen.or(config.worker.metrics_listen);
    let metrics_addr = match metrics_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (metrics_listen)"))?;
            let bound = listener.local_addr()?;
            let app = kiln_api::metrics_router(roles.api.then(|| ledger.clone()), metrics_render());
            let limits = config.http.limits();
            let stop = stop_metrics.clone();
            tokio::spawn(async move {
                kiln_api::server::serve(
                    listener,
                    app,
                    limits,
                    async move { stop.cancelled().await },
                )
                .await
            });
            Some(bound)
        }
        None => None,
    };

    // Webhook deliveries go out from worker processes, through the SSRF-safe client.
    let stop_deliverer = CancellationToken::new();
    if roles.worker {
        let view_store = store.clone();
        let view_ledger = ledger.clone();
        let prediction = (catalog.clone(), downloads.clone(), public_url.clone());
        let view: kiln_worker::deliverer::JobView = Arc::new(move |job, pipeline_event| {
            let (store, ledger) = (view_store.clone(), view_ledger.clone());
            let (catalog, downloads, public_url) = prediction.clone();
            Box::pin(async move {
                let fallback = serde_json::json!({"id": job.id, "status": job.status});
                // A prediction's webhook carries the prediction, as Replicate's clients expect.
                if job.surface == kiln_core::Surface::Replicate {
                    return kiln_api::webhook_prediction(&catalog, &downloads, &public_url, &job)
                        .unwrap_or(fallback);
                }
                let view = match (pipeline_event, job.pipeline_id) {
                    (true, Some(pipeline)) => kiln_api::view_pipeline(
                        ledger.as_ref(),
                        store.as_ref(),
                        &job.tenant,
                        pipeline,
                    )
                    .await
                    .ok()
                    .flatten()
                    .and_then(|view| serde_json::to_value(view).ok()),
                    _ => kiln_api::wire::JobView::of(store.as_ref(), &job)
                        .await
                        .ok()
                        .and_then(|view| serde_json::to_value(view).ok()),
                };
                view.unwrap_or(fallback)
            })
        });
        let deliverer = kiln_worker::deliverer::Deliverer {
            ledger: ledger.clone(),
            client: SafeClient::new(webhook_ssrf.clone(), Duration::from_secs(15)),
            seal: seal.clone(),
            view,
            settings: kiln_worker::deliverer::DeliverySettings {
                schedule: config.webhooks.schedule.clone(),
                poll: config.webhooks.poll,
                max_payload_bytes: config.webhooks.max_payload_bytes,
            },
            wake: wake_deliverer,
        };
        tokio::spawn(deliverer.run(stop_deliverer.clone()));
    }

    let api = listener.map(|listener| {
        let state = Arc::new(kiln_api::ApiState {
            ledger: ledger.clone(),
            doorbell: doorbell.clone(),
            store: store.clone(),
            downloads: downloads.clone(),
            catalog,
            ssrf,
            webhook_ssrf,
            max_body_bytes: config.max_body_bytes,
            poll_hint: config.poll_hint,
            idempotency_keep: config.idempotency_keep,
            limits: config.limits.key_limits(),
            permits: permits.clone(),
            callback_secret: secret,
            secret_seal: seal,
            key_cache: kiln_api::KeyCache::new(kiln_api::KEY_CACHE_TTL),
            finished_jobs: kiln_api::FinishedJobs::new(kiln_api::FINISHED_JOB_TTL),
            public_url: public_url.clone(),
            max_upload_bytes: config.outputs.max_input_bytes,
            max_output_bytes: config.outputs.max_output_bytes,
            upload_ttl: config.outputs.ttl,
        });
        let app = kiln_api::router(state);
        let stop = stop_api.clone();
        let limits = config.http.limits();
        tokio::spawn(async move {
            kiln_api::server::serve(listener, app, limits, async move { stop.cancelled().await })
                .await
        })
    });

    Ok(Running {
        addr,
        metrics_addr,
        public_url,
        ledger,
        worker_identity: roles.worker.then_some(worker_identity_for_report),
        stop_api,
        stop_deliverer,
        api,
        worker,
    })
}

#[cfg(test)]
mod runtime_tests {
    use super::*;

    fn threads(roles: Roles, config: &Config) -> usize {
        runtime(runtime_threads(roles, config))
            .unwrap()
            .metrics()
            .num_workers()
    }

    #[test]
    fn a_lone_worker_runs_on_its_configured_threads_and_every_other_role_on_one_per_core() {
        let cores = std::thread::available_parallelism().unwrap().get();
        let worker = Roles {
            api: false,
            worker: true,
        };
        let mut config = Config::default();
        assert_eq!(threads(worker, &config), 1);
        config.worker.threads = 3;
        assert_eq!(threads(worker, &config), 3);
        config.worker.threads = 0;
        assert_eq!(threads(worker, &config), cores);
        config.worker.threads = 1;
        for roles in [
            Roles {
                api: true,
                worker: true,
            },
            Roles {
                api: true,
                worker: false,
            },
        ] {
            assert_eq!(threads(roles, &config), cores, "{roles:?}");
        }
    }
}
