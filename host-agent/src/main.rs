//! `fluid-agent`: parse the command line, load the config, run the agent until SIGINT
//! or SIGTERM. Sandboxes are left running when the agent exits.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use fluid_agent::AgentConfig;
use fluid_agent::config::DEFAULT_CONFIG_PATH;
use fluid_telemetry::Telemetry;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

impl From<LogFormat> for fluid_telemetry::LogFormat {
    fn from(f: LogFormat) -> Self {
        match f {
            LogFormat::Text => Self::Text,
            LogFormat::Json => Self::Json,
        }
    }
}

/// The fluid host-agent: runs sandboxes on this host for the fluid controller.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Config file (TOML); `FLUID_AGENT_*` environment variables override it.
    #[arg(long, default_value = DEFAULT_CONFIG_PATH, env = "FLUID_AGENT_CONFIG")]
    config: PathBuf,
    /// Log line format; overrides the config's `log_format` (default `text`). The
    /// level comes from `RUST_LOG` (default `info`).
    #[arg(long, value_enum, env = "FLUID_AGENT_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Builds the memory templates of the config's `[templates] shapes` now, in the
    /// foreground, and exits (the agent otherwise builds them in the background).
    BuildTemplates,
}

/// Logging (and span export, with `otlp_endpoint`) from the config; inside the runtime,
/// where the OTLP exporter's channel runs.
fn init_telemetry(config: &AgentConfig, cli: &Cli) -> anyhow::Result<Telemetry> {
    Ok(fluid_telemetry::init(&fluid_telemetry::Settings {
        service_name: "fluid-agent",
        instance: Some(config.host_name.to_string()),
        log_format: cli.log_format.map_or(config.log_format, Into::into),
        otlp_endpoint: config.otlp_endpoint.clone(),
    })?)
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
    // Before logging is set up (it comes from the config), errors go to stderr as is.
    let config = match AgentConfig::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fluid-agent: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fluid-agent: starting the tokio runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let telemetry = match runtime.block_on(async { init_telemetry(&config, &cli) }) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("fluid-agent: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let main = async {
        match cli.command {
            Some(Command::BuildTemplates) => {
                for line in fluid_agent::build_templates(config).await? {
                    println!("{line}");
                }
                Ok(())
            }
            None => agent_main(config).await,
        }
    };
    let code = match runtime.block_on(main) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    };
    // Buffered spans go out while the runtime (the exporter's channel) still runs.
    telemetry.shutdown();
    code
}

async fn agent_main(config: AgentConfig) -> anyhow::Result<()> {
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        anyhow::bail!("a rustls crypto provider was already installed");
    }

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
