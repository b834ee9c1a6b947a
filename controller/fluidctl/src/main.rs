//! `fluidctl`: the command-line client of the fluid controller.
//!
//! Every command is one or two REST calls through [`fluid_client::Client`]; the output is
//! a table for people or, with `--json`, the API's own JSON shapes for scripts.

mod access;
mod ansible;
mod approvals;
mod attach;
mod audit;
mod encoding;
mod exec;
mod files;
mod hosts;
mod jobs;
mod mode;
mod net;
mod progress;
mod render;
mod sandboxes;
mod snapshots;
mod status;
mod tokens;
mod vms;
mod watch;

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fluid_client::Client;

/// Command-line client of the fluid controller.
#[derive(Debug, Parser)]
#[command(name = "fluidctl", version, about, propagate_version = true)]
pub struct Cli {
    /// Base URL of the controller's REST API.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "FLUID_URL",
        default_value = "http://127.0.0.1:8080",
        value_parser = parse_url
    )]
    pub url: String,

    /// Bearer token sent with every request.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "FLUID_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,

    /// A CA certificate (PEM) to trust for an https:// URL, besides the public roots:
    /// the fleet's ca.pem when the controller's [api_tls] certificate comes from
    /// `fluid-controller pki api`.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "FLUID_CA_CERT",
        value_name = "PEM_FILE"
    )]
    pub ca_cert: Option<std::path::PathBuf>,

    /// Print the API's JSON answers (pretty) instead of tables.
    #[arg(long, global = true, help_heading = "Global options")]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the controller's health and how many hosts it knows.
    Status,
    /// List and register host agents.
    #[command(subcommand, visible_alias = "host")]
    Hosts(hosts::HostsCmd),
    /// List source VMs / golden images on all hosts.
    #[command(visible_alias = "vm", visible_alias = "images")]
    Vms,
    /// Create, inspect and manage sandboxes.
    #[command(subcommand, visible_alias = "sb", visible_alias = "sandboxes")]
    Sandbox(sandboxes::SandboxCmd),
    /// Run a command in a sandbox (by `/bin/sh -c`), streaming its output; exits with
    /// its exit status (124 when it timed out).
    #[command(visible_alias = "exec")]
    Run(exec::RunArgs),
    /// Copy a file out of a sandbox (to stdout or -o FILE).
    #[command(visible_alias = "cat")]
    Read(files::ReadArgs),
    /// Write a file in a sandbox from --from FILE, --content TEXT or stdin.
    Write(files::WriteArgs),
    /// Replace a unique string in a file in a sandbox (empty --old creates the file).
    Edit(files::EditArgs),
    /// List the commands run in a sandbox, newest first.
    #[command(visible_alias = "history")]
    Commands(exec::CommandsArgs),
    /// Follow a sandbox's live activity: commands, their output and exits.
    #[command(visible_alias = "logs")]
    Watch(watch::WatchArgs),
    /// Open an interactive shell in a sandbox (over the controller's WebSocket); exits
    /// with the shell's exit status.
    Attach(attach::AttachArgs),
    /// Open an SSH session in a sandbox with a short-lived certificate.
    Ssh(access::SshArgs),
    /// SSH certificates: list, revoke, print the CA key.
    #[command(subcommand)]
    Access(access::AccessCmd),
    /// Show or set a sandbox's mode (read-only refuses every change to it).
    Mode(mode::ModeArgs),
    /// A sandbox's snapshots: create, list, restore, delete.
    #[command(subcommand, visible_alias = "snapshots", visible_alias = "snap")]
    Snapshot(snapshots::SnapshotCmd),
    /// Create a new sandbox from a sandbox's snapshot (on the same host).
    Fork(snapshots::ForkArgs),
    /// Show what changed in a sandbox between two snapshots, or a snapshot and now:
    /// files, packages, services, the commands run, then the text diffs.
    Diff(snapshots::DiffArgs),
    /// Ansible playbooks: list, show, create, delete, export, and their tasks.
    #[command(subcommand, visible_alias = "playbooks", visible_alias = "pb")]
    Playbook(ansible::PlaybookCmd),
    /// Generate a playbook from a sandbox's changes, or verify that one reproduces them.
    #[command(subcommand)]
    Ansible(ansible::AnsibleCmd),
    /// Run playbooks on sandboxes or production targets, and follow their output.
    #[command(subcommand, visible_alias = "jobs")]
    Job(jobs::JobCmd),
    /// A sandbox's network egress: show, allow, deny, or request a destination.
    #[command(subcommand, visible_alias = "network")]
    Net(net::NetCmd),
    /// Ask a human a question and wait for the answer; exits 0 when approved, 1 when
    /// rejected or expired.
    Ask(approvals::AskArgs),
    /// List, inspect, approve and reject requests for a human decision.
    #[command(subcommand, visible_alias = "approval")]
    Approvals(approvals::ApprovalsCmd),
    /// List the audit trail, or verify its hash chain.
    #[command(subcommand)]
    Audit(audit::AuditCmd),
    /// Create, list and revoke API tokens (admin).
    #[command(subcommand, visible_alias = "tokens")]
    Token(tokens::TokenCmd),
    /// Show the token this fluidctl uses: its name, role and agent.
    Whoami,
    /// What each role may do: its permissions (and their scope) and limits, the
    /// Ansible ones included (the table the controller enforces).
    Roles,
}

/// What every command needs: the client and how to print.
#[derive(Debug)]
pub struct Ctx {
    pub client: Client,
    pub url: String,
    pub json: bool,
    /// The bearer token, for requests made without the client (the attach WebSocket).
    pub token: Option<String>,
}

impl Ctx {
    /// Whether to draw a spinner on stderr (people watching, not scripts).
    pub fn interactive(&self) -> bool {
        use std::io::IsTerminal;
        !self.json && std::io::stderr().is_terminal()
    }
}

/// `--url` must be an http(s) base URL; catching a missing scheme here gives a clearer
/// message than reqwest's "relative URL without a base".
fn parse_url(s: &str) -> Result<String, String> {
    let s = s.trim();
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
        .ok_or_else(|| format!("`{s}` must start with http:// or https://"))?;
    if rest.trim_end_matches('/').is_empty() {
        return Err(format!("`{s}` names no host"));
    }
    Ok(s.trim_end_matches('/').to_owned())
}

/// Prints `text` on stdout with a final newline. A closed pipe (`fluidctl … | head`) is
/// not an error worth a panic.
pub fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    let res = if text.ends_with('\n') {
        out.write_all(text.as_bytes())
    } else {
        writeln!(out, "{text}")
    };
    let _ = res.and_then(|()| out.flush());
}

/// Prints `value` as pretty JSON.
pub fn emit_json<T: serde::Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    emit(&render::json(value)?);
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let ca = match &cli.ca_cert {
        Some(p) => {
            Some(std::fs::read(p).map_err(|e| anyhow::anyhow!("--ca-cert {}: {e}", p.display()))?)
        }
        None => None,
    };
    let client = Client::with_ca(&cli.url, ca.as_deref())?.with_token(cli.token.clone());
    let ctx = Ctx {
        client,
        url: cli.url,
        json: cli.json,
        token: cli.token,
    };
    match cli.command {
        Command::Status => status::run(&ctx).await,
        Command::Hosts(cmd) => hosts::run(&ctx, cmd).await,
        Command::Vms => vms::run(&ctx).await,
        Command::Sandbox(cmd) => sandboxes::run(&ctx, cmd).await,
        // The commands whose exit status is not just success or failure.
        Command::Run(args) => return exec::run(&ctx, args).await,
        Command::Attach(args) => return attach::run(&ctx, args).await,
        Command::Ask(args) => return approvals::ask(&ctx, args).await,
        Command::Audit(cmd) => return audit::run(&ctx, cmd).await,
        Command::Net(cmd) => return net::run(&ctx, cmd).await,
        Command::Ansible(cmd) => return ansible::ansible(&ctx, cmd).await,
        Command::Job(cmd) => return jobs::run(&ctx, cmd).await,
        Command::Playbook(cmd) => ansible::playbook(&ctx, cmd).await,
        Command::Read(args) => files::read(&ctx, args).await,
        Command::Write(args) => files::write(&ctx, args).await,
        Command::Edit(args) => files::edit(&ctx, args).await,
        Command::Commands(args) => exec::commands(&ctx, args).await,
        Command::Watch(args) => watch::run(&ctx, args).await,
        Command::Ssh(args) => access::ssh(&ctx, args).await,
        Command::Access(cmd) => access::access(&ctx, cmd).await,
        Command::Mode(args) => mode::run(&ctx, args).await,
        Command::Snapshot(cmd) => snapshots::run(&ctx, cmd).await,
        Command::Fork(args) => snapshots::fork(&ctx, args).await,
        Command::Diff(args) => snapshots::diff(&ctx, args).await,
        Command::Approvals(cmd) => approvals::run(&ctx, cmd).await,
        Command::Token(cmd) => tokens::run(&ctx, cmd).await,
        Command::Whoami => tokens::whoami(&ctx).await,
        Command::Roles => tokens::roles(&ctx).await,
    }
    .map(|()| ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let url = cli.url.clone();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", render::error_message(&e, &url));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Cli {
        let mut full = vec!["fluidctl"];
        full.extend_from_slice(args);
        match Cli::try_parse_from(full) {
            Ok(cli) => cli,
            Err(e) => panic!("{args:?} should parse: {e}"),
        }
    }

    fn parse_err(args: &[&str]) -> clap::Error {
        let mut full = vec!["fluidctl"];
        full.extend_from_slice(args);
        match Cli::try_parse_from(full) {
            Ok(cli) => panic!("{args:?} should not parse, got {cli:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_anywhere() {
        let cli = parse(&[
            "--url",
            "http://ctl:9000/",
            "sandbox",
            "list",
            "--json",
            "--token",
            "s3cret",
        ]);
        assert_eq!(cli.url, "http://ctl:9000");
        assert_eq!(cli.token.as_deref(), Some("s3cret"));
        assert!(cli.json);
        assert!(matches!(
            cli.command,
            Command::Sandbox(sandboxes::SandboxCmd::List(_))
        ));
    }

    #[test]
    fn default_url_when_env_unset() {
        if std::env::var_os("FLUID_URL").is_some() {
            return;
        }
        let cli = parse(&["status"]);
        assert_eq!(cli.url, "http://127.0.0.1:8080");
        assert!(!cli.json);
        assert!(matches!(cli.command, Command::Status));
    }

    #[test]
    fn url_needs_a_scheme() {
        let e = parse_err(&["--url", "localhost:8080", "status"]);
        assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation);
        assert!(e.to_string().contains("http://"), "{e}");
        assert!(parse_url("https://").is_err());
        assert_eq!(
            parse_url("https://fluid.example/").as_deref(),
            Ok("https://fluid.example")
        );
    }

    #[test]
    fn version_and_missing_command() {
        assert_eq!(
            parse_err(&["--version"]).kind(),
            clap::error::ErrorKind::DisplayVersion
        );
        assert_eq!(
            parse_err(&[]).kind(),
            clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
        );
        assert_eq!(
            parse_err(&["bogus"]).kind(),
            clap::error::ErrorKind::InvalidSubcommand
        );
    }

    #[test]
    fn vms_and_aliases() {
        assert!(matches!(parse(&["vms"]).command, Command::Vms));
        assert!(matches!(parse(&["vm"]).command, Command::Vms));
        assert!(matches!(parse(&["images"]).command, Command::Vms));
        assert!(matches!(
            parse(&["sb", "ls"]).command,
            Command::Sandbox(sandboxes::SandboxCmd::List(_))
        ));
        assert!(matches!(
            parse(&["host", "ls"]).command,
            Command::Hosts(hosts::HostsCmd::List)
        ));
    }
}
