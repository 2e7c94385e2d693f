//! The `kiln` command line: `serve` (api and worker in one process, the embedded default),
//! `api`, `worker`, `migrate`, and `keys` to manage API keys. Configuration comes from
//! `--config`/`kiln.toml`, `KILN_*` environment variables and flags (see `config`).

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use kiln::app::{self, Roles};
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
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
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
    Serve,
    /// Run the api only.
    Api,
    /// Run a worker only.
    Worker,
    /// Bring the ledger's schema up to date and exit.
    Migrate,
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
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

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
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

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let telemetry = kiln::telemetry::init();
    let overrides = Overrides {
        listen: cli.common.listen,
        data_dir: cli.common.data_dir.clone(),
    };
    let config = Config::load(cli.common.config.as_deref(), &overrides)?;
    let outcome = run_command(cli.command, &config).await;
    telemetry.shutdown();
    outcome
}

async fn run_command(command: Command, config: &Config) -> anyhow::Result<()> {
    let config = config.clone();
    match command {
        Command::Serve => {
            serve(
                &config,
                Roles {
                    api: true,
                    worker: true,
                },
            )
            .await
        }
        Command::Api => {
            serve(
                &config,
                Roles {
                    api: true,
                    worker: false,
                },
            )
            .await
        }
        Command::Worker => {
            serve(
                &config,
                Roles {
                    api: false,
                    worker: true,
                },
            )
            .await
        }
        Command::Migrate => {
            app::open_ledger(&config).await?;
            eprintln!("kiln: the ledger is up to date");
            Ok(())
        }
        Command::Keys { command } => manage_keys(&config, command).await,
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

async fn manage_keys(config: &Config, command: KeysCommand) -> anyhow::Result<()> {
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
            println!(
                "{:<40} {:<20} {:<12} {:<25} revoked",
                "id", "tenant", "prefix", "created"
            );
            for k in ledger.list_api_keys().await? {
                println!(
                    "{:<40} {:<20} {:<12} {:<25} {}",
                    k.id,
                    k.tenant,
                    k.prefix,
                    k.created_at.to_rfc3339(),
                    k.revoked_at
                        .map(|t| t.to_rfc3339())
                        .unwrap_or_else(|| "-".into())
                );
            }
        }
        KeysCommand::Revoke { key } => {
            let n = ledger.revoke_api_key(&key).await.context("cannot revoke")?;
            anyhow::ensure!(n > 0, "no live key has the id or prefix '{key}'");
            eprintln!("kiln: revoked {n} key(s)");
        }
    }
    Ok(())
}
