//! `fluid-agent`: parse the command line, load the config, run the agent until SIGINT
//! or SIGTERM. Sandboxes are left running when the agent exits.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use fluid_agent::AgentConfig;
use fluid_agent::config::DEFAULT_CONFIG_PATH;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// The fluid host-agent: runs sandboxes on this host for the fluid controller.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Config file (TOML); `FLUID_AGENT_*` environment variables override it.
    #[arg(long, default_value = DEFAULT_CONFIG_PATH, env = "FLUID_AGENT_CONFIG")]
    config: PathBuf,
    /// Log line format. The level comes from `RUST_LOG` (default `info`).
    #[arg(
        long,
        value_enum,
        default_value = "text",
        env = "FLUID_AGENT_LOG_FORMAT"
    )]
    log_format: LogFormat,
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn shutdown_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("starting the tokio runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(agent_main(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn agent_main(cli: Cli) -> anyhow::Result<()> {
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        anyhow::bail!("a rustls crypto provider was already installed");
    }
    let config = AgentConfig::load(&cli.config)?;

    let shutdown = CancellationToken::new();
    let agent = tokio::spawn(fluid_agent::run(config, shutdown.clone()));
    tokio::pin!(agent);
    tokio::select! {
        signal = shutdown_signal() => {
            tracing::info!("{}; shutting down", signal?);
            shutdown.cancel();
            // In-flight calls get a few seconds; sandboxes are not touched.
            match tokio::time::timeout(std::time::Duration::from_secs(10), &mut agent).await {
                Ok(joined) => joined.context("agent task")??,
                Err(_) => tracing::warn!("the agent did not stop within 10 s; exiting"),
            }
        }
        joined = &mut agent => joined.context("agent task")??,
    }
    Ok(())
}
