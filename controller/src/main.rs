//! `fluid-controller`: plain wiring. Parse the CLI, load the configuration, serve under
//! a cancellation token that SIGINT / SIGTERM fire; or manage the fleet PKI.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use fluid_client::governance::Role;
use fluid_controller::cli::pki;
use fluid_controller::config::{Config, DEFAULT_CONFIG_PATH};
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
    /// Manage API tokens (directly in the controller's database).
    Token {
        /// TOML configuration (its database_url / data_dir name the database).
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token and print its secret (shown only once; only a hash is stored).
    Create {
        /// admin, operator, agent or readonly.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// A unique name: it is the actor the audit trail shows.
        #[arg(long)]
        name: String,
        /// The agent id an agent token is confined to (optional for readonly).
        #[arg(long)]
        agent_id: Option<String>,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token by id or name; it stops working at once.
    Revoke { id_or_name: String },
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or_else(|| format!("{s:?} is not one of admin operator agent readonly"))
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
    /// Issue the API listeners' server certificate (api.pem, api.key) for `[api_tls]`;
    /// clients trust it with ca.pem (`fluidctl --ca-cert`, FLUID_CA_CERT).
    Api {
        #[arg(long)]
        dir: PathBuf,
        /// DNS names or IP addresses clients dial (repeatable).
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
    if !matches!(cli.command, Command::Serve { .. }) {
        // The one-shot commands log plain text; `serve` sets up logging from its config.
        fluid_telemetry::init(&telemetry_settings(fluid_telemetry::LogFormat::Text, ""))?;
    }
    match cli.command {
        Command::Serve { config } => serve(config),
        Command::Token { config, command } => token(config, command),
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
        Command::Pki {
            command: PkiCommand::Api { dir, sans },
        } => {
            let out = pki::issue_api(&dir, &sans)?;
            println!("wrote {}", out.cert.display());
            println!("wrote {}", out.key.display());
            Ok(())
        }
    }
}

fn load_config(config_path: Option<PathBuf>) -> anyhow::Result<Config> {
    let path = match config_path {
        Some(p) if !p.exists() => bail!("{}: no such file", p.display()),
        Some(p) => p,
        None => PathBuf::from(DEFAULT_CONFIG_PATH),
    };
    Ok(Config::load(&path)?)
}

fn token(config_path: Option<PathBuf>, command: TokenCommand) -> anyhow::Result<()> {
    let config = load_config(config_path)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(async {
        let store = fluid_controller::store::open(config.database_url.as_deref(), &config.data_dir)
            .await
            .context("opening the store")?;
        let r =
            fluid_controller::governance::auth::token_command(store.clone(), command.into()).await;
        store.close().await;
        r
    })
}

impl From<TokenCommand> for fluid_controller::governance::auth::TokenAction {
    fn from(c: TokenCommand) -> Self {
        match c {
            TokenCommand::Create {
                role,
                name,
                agent_id,
            } => Self::Create {
                role,
                name,
                agent_id,
            },
            TokenCommand::List => Self::List,
            TokenCommand::Revoke { id_or_name } => Self::Revoke { id_or_name },
        }
    }
}

fn telemetry_settings(
    log_format: fluid_telemetry::LogFormat,
    otlp_endpoint: &str,
) -> fluid_telemetry::Settings {
    fluid_telemetry::Settings {
        service_name: "fluid-controller",
        instance: None,
        log_format,
        otlp_endpoint: Some(otlp_endpoint.to_owned()),
    }
}

fn serve(config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = load_config(config_path)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    // Inside the runtime: the OTLP exporter's channel lives on it.
    let telemetry = runtime.block_on(async {
        fluid_telemetry::init(&telemetry_settings(
            config.log_format,
            &config.otlp_endpoint,
        ))
    })?;
    let served = runtime.block_on(async {
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
    });
    // Spans still buffered are sent while the runtime (and the exporter's channel) runs.
    telemetry.shutdown();
    served
}
