//! The `kiln` command line: `serve` (api and worker in one process, the embedded default),
//! `api`, `worker`, `migrate`, and `keys` to manage API keys; and the client of any Kiln's API
//! (`run`, `jobs`, `pipelines`, `models`, `usage`, `deliveries`, `completions`; `kiln::client`). Configuration comes from
//! `--config`/`kiln.toml`, `KILN_*` environment variables and flags (see `config`).

use anyhow::Context;

/// The allocator every role runs on. With the system's (glibc) allocator, `malloc`, `free` and
/// their consolidation of freed chunks were about a third of a worker's own CPU on the
/// side-by-side benchmark: a job's life allocates and frees many buffers across the runtime's
/// threads (HTTP bodies, rows, JSON), which mimalloc's per-thread pages serve without the
/// arena locks and chunk merging (BENCHMARKS.md, issue 17, tenth pass).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use clap::{Args, Parser, Subcommand};
use kiln::app::{self, Roles};
use kiln::client;
use kiln::config::{Config, Overrides};
use kiln_core::{keys, TenantId};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Async media-generation job orchestrator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where a server's configuration comes from: the options of `serve`, `api`, `worker`,
/// `migrate` and `keys` (the client's commands take `Connect` instead).
#[derive(Args, Clone)]
struct Common {
    /// Configuration file (default: ./kiln.toml if it exists).
    #[arg(long, global = true, env = "KILN_CONFIG")]
    config: Option<PathBuf>,
    /// Address the api listens on [default: 127.0.0.1:8080] (KILN_LISTEN).
    #[arg(long, global = true)]
    listen: Option<SocketAddr>,
    /// Data directory of the embedded default [default: ./kiln-data] (KILN_DATA_DIR).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the api and a worker in one process (the embedded default needs nothing else).
    Serve(Common),
    /// Run the api only.
    Api(Common),
    /// Run a worker only.
    Worker(Common),
    /// Bring the ledger's schema up to date and exit.
    Migrate(Common),
    /// Manage API keys (in the ledger the configuration names; see `--create-ledger`).
    Keys {
        #[command(flatten)]
        common: Common,
        /// Create the embedded ledger, and its data directory, where neither exists yet (by
        /// default `kiln keys` starts a ledger only in a data directory that already exists, so
        /// a key is never made in a ledger no server reads).
        #[arg(long, global = true)]
        create_ledger: bool,
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Run a model: `kiln run demo/image prompt="a kiln" width=64 --wait`.
    Run(client::RunArgs),
    /// List, read, cancel, follow and download jobs.
    Jobs {
        #[command(subcommand)]
        command: client::JobsCommand,
    },
    /// Run, list, read, cancel and follow pipelines.
    Pipelines {
        #[command(subcommand)]
        command: client::PipelinesCommand,
    },
    /// The models this Kiln offers and their inputs.
    Models {
        #[command(flatten)]
        connect: client::Connect,
    },
    /// What your jobs ran and cost over a window (the last 30 days by default).
    Usage {
        /// Group by model, provider or day.
        #[arg(long, default_value = "model", value_parser = ["model", "provider", "day"])]
        by: String,
        /// Start of the window, RFC 3339 [default: 30 days before --to].
        #[arg(long)]
        from: Option<String>,
        /// End of the window, RFC 3339 [default: now].
        #[arg(long)]
        to: Option<String>,
        #[command(flatten)]
        connect: client::Connect,
    },
    /// A job's webhook deliveries and their tries; `--redeliver ID` sends one again.
    Deliveries {
        job: String,
        #[arg(long)]
        redeliver: Option<String>,
        #[command(flatten)]
        connect: client::Connect,
    },
    /// Print a shell completion script: `kiln completions bash > /etc/bash_completion.d/kiln`.
    Completions { shell: clap_complete::Shell },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key for a tenant and print it (alone) on stdout. It is shown only this once.
    Create {
        #[arg(long)]
        tenant: String,
        /// The key's default webhook: where its jobs' events go when a job names no webhook.
        #[arg(long)]
        webhook: Option<url::Url>,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Set a key's default webhook (by id or prefix); `none` clears it.
    Webhook { key: String, url: String },
    /// Set a key's limits (by id or prefix); a limit left out returns to the configured default.
    Limits {
        key: String,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// List keys (never the keys themselves: only their prefixes).
    List,
    /// Revoke a key by its id or prefix.
    Revoke { key: String },
}

/// A key's own limits; each one left out falls back to `[limits]` in the configuration.
#[derive(clap::Args)]
struct LimitArgs {
    /// Requests per second, on every route.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    rps: Option<u32>,
    /// Jobs queued or running at once.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    max_active: Option<u32>,
    /// Spend per UTC day, in the currency unit of the routes' prices.
    #[arg(long)]
    daily_spend: Option<f64>,
    /// The highest priority it may submit at: high, normal or low.
    #[arg(long)]
    max_priority: Option<kiln_core::dispatch::Lane>,
}

impl LimitArgs {
    fn limits(&self) -> kiln_core::ledger::KeyLimits {
        kiln_core::ledger::KeyLimits {
            rate_per_second: self.rps,
            max_active_jobs: self.max_active,
            daily_spend_micros: self.daily_spend.map(|d| (d * 1e6).round() as i64),
            max_priority: self.max_priority,
        }
    }
}

fn main() {
    let cli = Cli::parse();
    // A server's configuration is read before its runtime is built: a worker's runtime is
    // built to its settings (`worker.threads`). A configuration that does not load is
    // reported once the server has started its telemetry, as before.
    let loaded = server_common(&cli.command).map(|common| {
        Config::load(
            common.config.as_deref(),
            &Overrides {
                listen: common.listen,
                data_dir: common.data_dir.clone(),
            },
        )
    });
    let threads = match (&cli.command, &loaded) {
        (Command::Worker(_), Some(Ok(config))) => app::runtime_threads(
            Roles {
                api: false,
                worker: true,
            },
            config,
        ),
        _ => None,
    };
    let runtime = app::runtime(threads).expect("the async runtime starts");
    if let Err(e) = runtime.block_on(run(cli, loaded)) {
        // A fatal error: a JSON log line where logs are JSON (so they stay parseable), else a
        // plain sentence for whoever ran it.
        if std::env::var("KILN_LOG_FORMAT").as_deref() == Ok("json") {
            tracing::error!(error = %format!("{e:#}"), "kiln stopped");
        } else {
            eprintln!("kiln: {e:#}");
        }
        std::process::exit(1);
    }
}

/// The options a server command reads its configuration from; `None` for a client command.
fn server_common(command: &Command) -> Option<&Common> {
    match command {
        Command::Serve(c) | Command::Api(c) | Command::Worker(c) | Command::Migrate(c) => Some(c),
        Command::Keys { common, .. } => Some(common),
        _ => None,
    }
}

async fn run(cli: Cli, loaded: Option<anyhow::Result<Config>>) -> anyhow::Result<()> {
    // The client talks to a Kiln over its API: no configuration of a server is read, so the
    // client's own variables (KILN_URL, KILN_API_KEY) and a server's settings never meet.
    let client_command = match cli.command {
        Command::Run(args) => Some(client::run(args).await),
        Command::Jobs { command } => Some(client::jobs(command).await),
        Command::Pipelines { command } => Some(client::pipelines(command).await),
        Command::Models { connect } => Some(client::models(connect).await),
        Command::Usage {
            by,
            from,
            to,
            connect,
        } => Some(client::usage(connect, by, from, to).await),
        Command::Deliveries {
            job,
            redeliver,
            connect,
        } => Some(client::deliveries(connect, job, redeliver).await),
        Command::Completions { shell } => {
            // Written whole, then sent: a reader that stops early (`| head`) is not an error.
            let mut script = Vec::new();
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "kiln",
                &mut script,
            );
            let _ = std::io::Write::write_all(&mut std::io::stdout(), &script);
            Some(Ok(client::Exit::Ok))
        }
        command => {
            let loaded = loaded.expect("a server command's configuration was read");
            return run_server(command, loaded).await;
        }
    };
    let code = match client_command.expect("a client command") {
        Ok(exit) => exit,
        Err(e) => {
            eprintln!("kiln: {e:#}");
            client::exit_of(&e)
        }
    };
    std::process::exit(code as i32);
}

async fn run_server(command: Command, loaded: anyhow::Result<Config>) -> anyhow::Result<()> {
    let telemetry = kiln::telemetry::init();
    let config = loaded?;
    let outcome = run_command(command, &config).await;
    telemetry.shutdown();
    outcome
}

async fn run_command(command: Command, config: &Config) -> anyhow::Result<()> {
    let config = config.clone();
    match command {
        Command::Serve(_) => {
            serve(
                &config,
                Roles {
                    api: true,
                    worker: true,
                },
            )
            .await
        }
        Command::Api(_) => {
            serve(
                &config,
                Roles {
                    api: true,
                    worker: false,
                },
            )
            .await
        }
        Command::Worker(_) => {
            serve(
                &config,
                Roles {
                    api: false,
                    worker: true,
                },
            )
            .await
        }
        Command::Migrate(_) => {
            app::open_ledger(&config).await?;
            eprintln!("kiln: the ledger is up to date");
            Ok(())
        }
        Command::Keys {
            command,
            create_ledger,
            ..
        } => manage_keys(&config, command, create_ledger).await,
        _ => unreachable!("client commands are run by `run`"),
    }
}

async fn serve(config: &Config, roles: Roles) -> anyhow::Result<()> {
    tracing::debug!(?config, "configuration");
    let running = app::start(config, roles).await?;
    if roles.api {
        if let Some((key, path)) =
            app::bootstrap_key(running.ledger.as_ref(), &config.data_dir).await?
        {
            println!("Created the first API key (tenant 'default'); it is shown only once:");
            println!("  {key}");
            println!("Saved for local use in {}", path.display());
        }
    }
    if let Some(identity) = &running.worker_identity {
        println!("kiln worker {identity} running");
    }
    if let Some(addr) = running.metrics_addr {
        println!("kiln metrics on http://{addr}/metrics");
    }
    if let Some(addr) = running.addr {
        println!("kiln listening on http://{addr}");
    }
    shutdown_signal().await;
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler can be installed");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn manage_keys(
    config: &Config,
    command: KeysCommand,
    create_ledger: bool,
) -> anyhow::Result<()> {
    // Say which ledger is read, and never make an empty one by accident: a key minted in a
    // ledger no server reads is unknown to the running one. The accident is a data directory
    // that is not there (the default one, from the wrong working directory; a mistyped path);
    // a directory that exists was made for Kiln, and scripts that set one up before the first
    // `kiln serve` mint their key there.
    match &config.database_url {
        None => {
            let path = config.data_dir.join("kiln.db");
            anyhow::ensure!(
                create_ledger || path.exists() || config.data_dir.is_dir(),
                "there is no ledger at {}: run `kiln keys` where `kiln serve` runs (or pass its \
                 --data-dir or KILN_DATABASE_URL), or pass --create-ledger to start a new one there",
                path.display()
            );
            eprintln!("kiln: the ledger at {}", path.display());
        }
        Some(url) => {
            let shown = url::Url::parse(url.expose())
                .map(|u| {
                    format!(
                        "{}://{}{}",
                        u.scheme(),
                        u.host_str().unwrap_or(""),
                        u.path()
                    )
                })
                .unwrap_or_else(|_| "the configured database".into());
            eprintln!("kiln: the ledger at {shown}");
        }
    }
    let ledger = app::open_ledger(config).await?;
    match command {
        KeysCommand::Create {
            tenant,
            webhook,
            limits,
        } => {
            let tenant = TenantId::parse(&tenant).map_err(|e| anyhow::anyhow!("--tenant: {e}"))?;
            let minted = keys::mint();
            let record = ledger.insert_api_key(&tenant, &minted).await?;
            if let Some(url) = webhook {
                ledger
                    .set_default_webhook(record.id.as_str(), Some(url.as_str()))
                    .await?;
            }
            ledger
                .set_key_limits(record.id.as_str(), &limits.limits())
                .await?;
            println!("{}", minted.plaintext);
        }
        KeysCommand::Webhook { key, url } => {
            let url = match url.as_str() {
                "none" => None,
                other => Some(
                    kiln_core::catalog::parse_http_url(other)
                        .ok_or_else(|| {
                            anyhow::anyhow!(
                                "the webhook must be an http(s) URL with a DNS name or an IP address"
                            )
                        })?
                        .to_string(),
                ),
            };
            let n = ledger.set_default_webhook(&key, url.as_deref()).await?;
            anyhow::ensure!(n > 0, "no live key has the id or prefix '{key}'");
            eprintln!("kiln: set the default webhook of {n} key(s)");
        }
        KeysCommand::Limits { key, limits } => {
            let n = ledger.set_key_limits(&key, &limits.limits()).await?;
            anyhow::ensure!(n > 0, "no live key has the id or prefix '{key}'");
            eprintln!("kiln: set the limits of {n} key(s)");
        }
        KeysCommand::List => {
            let keys = ledger.list_api_keys().await?;
            let rows: Vec<Vec<String>> = keys
                .iter()
                .map(|k| {
                    let l = &k.limits;
                    let limits = [
                        l.rate_per_second.map(|r| format!("{r}/s")),
                        l.max_active_jobs.map(|n| format!("{n} active")),
                        l.daily_spend_micros
                            .map(|m| format!("{} a day", m as f64 / 1e6)),
                        l.max_priority.map(|p| format!("up to {}", p.as_str())),
                    ]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(", ");
                    vec![
                        k.id.to_string(),
                        k.tenant.to_string(),
                        k.prefix.clone(),
                        k.created_at.format("%Y-%m-%d %H:%M").to_string(),
                        k.revoked_at
                            .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
                            .unwrap_or_else(|| "-".into()),
                        if limits.is_empty() {
                            "-".into()
                        } else {
                            limits
                        },
                        k.default_webhook.clone().unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            client::table(
                &[
                    "id", "tenant", "prefix", "created", "revoked", "limits", "webhook",
                ],
                &rows,
            );
        }
        KeysCommand::Revoke { key } => {
            let n = ledger.revoke_api_key(&key).await.context("cannot revoke")?;
            anyhow::ensure!(n > 0, "no live key has the id or prefix '{key}'");
            eprintln!("kiln: revoked {n} key(s)");
        }
    }
    Ok(())
}
