//! `fluid-controller`: plain wiring. Parse the CLI, load the configuration, serve under
//! a cancellation token that SIGINT / SIGTERM fire; or manage the fleet PKI.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use fluid_controller::config::{Config, DEFAULT_CONFIG_PATH};
use fluid_controller::pki;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "fluid-controller",
    version,
    about = "fluid control plane for sandbox VMs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the REST API and run the scheduler, heartbeat, reconciler and janitor.
    Serve {
        /// TOML configuration (FLUID_* environment variables override it).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Manage the fleet's certificates.
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
}

#[derive(Debug, Subcommand)]
enum PkiCommand {
    /// Create the fleet CA (ca.pem, ca.key) and the controller's client certificate
    /// (controller.pem, controller.key).
    Init {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue a server certificate for one agent (agent-NAME.pem, agent-NAME.key).
    Agent {
        #[arg(long)]
        dir: PathBuf,
        /// The agent's host name in the fleet.
        #[arg(long)]
        name: String,
        /// DNS names or IP addresses the controller dials (repeatable).
        #[arg(long = "san", required = true, num_args = 1..)]
        sans: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        bail!("a rustls crypto provider was already installed");
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match cli.command {
        Command::Serve { config } => serve(config),
        Command::Pki {
            command: PkiCommand::Init { dir },
        } => {
            let (ca, controller) = pki::init(&dir)?;
            for f in [ca.cert, ca.key, controller.cert, controller.key] {
                println!("wrote {}", f.display());
            }
            Ok(())
        }
        Command::Pki {
            command: PkiCommand::Agent { dir, name, sans },
        } => {
            let out = pki::issue_agent(&dir, &name, &sans)?;
            println!("wrote {}", out.cert.display());
            println!("wrote {}", out.key.display());
            Ok(())
        }
    }
}

fn serve(config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let path = match config_path {
        Some(p) if !p.exists() => bail!("{}: no such file", p.display()),
        Some(p) => p,
        None => PathBuf::from(DEFAULT_CONFIG_PATH),
    };
    let config = Config::load(&path)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let mut sigint = signal(SignalKind::interrupt()).context("SIGINT handler")?;
        let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let token = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = sigint.recv() => tracing::info!("SIGINT: shutting down"),
                _ = sigterm.recv() => tracing::info!("SIGTERM: shutting down"),
            }
            token.cancel();
            // A second signal stops at once.
            tokio::select! {
                _ = sigint.recv() => {},
                _ = sigterm.recv() => {},
            }
            tracing::warn!("second signal: exiting now");
            std::process::exit(130);
        });
        fluid_controller::serve(config, shutdown).await
    })
}
