//! `fluidctl sandbox …`

use anyhow::Context as _;
use clap::{Args, Subcommand};
use fluid_client::client::CreateOutcome;
use fluid_client::encode_component;
use fluid_client::governance::PendingCreateResponse;
use fluid_client::types::{CreateSandboxRequest, SandboxState};

use crate::progress::with_spinner;
use crate::{Ctx, emit, emit_json, render};

#[derive(Debug, Subcommand)]
pub enum SandboxCmd {
    /// Create a sandbox from a golden image, start it and wait for its IP.
    #[command(
        visible_alias = "new",
        after_help = "\
When no host has room for the sandbox, the controller asks a human to approve an \
over-commit and holds the create until someone decides (fluidctl approvals list / \
approve / reject); a rejection fails the create (HTTP 409). With --no-wait-approval the \
create returns at once with the approval's id and the id the sandbox will have."
    )]
    Create(CreateArgs),
    /// List sandboxes.
    #[command(visible_alias = "ls")]
    List(ListArgs),
    /// Show one sandbox.
    #[command(visible_alias = "show")]
    Get {
        /// Sandbox id (`SBX-…`).
        id: String,
    },
    /// Start a stopped sandbox.
    Start {
        /// Sandbox id (`SBX-…`).
        id: String,
        /// Wait until the VM has a DHCP lease and print its IP.
        #[arg(long, short = 'w')]
        wait_for_ip: bool,
    },
    /// Stop a running sandbox.
    Stop {
        /// Sandbox id (`SBX-…`).
        id: String,
    },
    /// Destroy a sandbox and delete its VM.
    #[command(visible_alias = "rm", visible_alias = "delete")]
    Destroy {
        /// Sandbox id (`SBX-…`).
        id: String,
    },
    /// Print a sandbox's IP address.
    Ip {
        /// Sandbox id (`SBX-…`).
        id: String,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The golden image / source VM to clone.
    #[arg(long, short = 'i', value_name = "NAME")]
    pub image: String,
    /// Who owns the sandbox [default: $USER, else "fluidctl"].
    #[arg(long, value_name = "ID")]
    pub agent_id: Option<String>,
    /// Name of the VM on its host [default: chosen by the controller].
    #[arg(long, short = 'n', value_name = "VM_NAME")]
    pub name: Option<String>,
    /// vCPUs [default: the controller's].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub cpu: Option<u32>,
    /// Memory in MiB [default: the controller's].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub memory_mb: Option<u64>,
    /// Destroy the sandbox automatically after this many seconds.
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(i64).range(1..))]
    pub ttl: Option<i64>,
    /// Only define the VM; do not start it.
    #[arg(long)]
    pub no_start: bool,
    /// Wait for the VM's IP (the default when starting).
    #[arg(long, conflicts_with_all = ["no_wait", "no_start"])]
    pub wait_for_ip: bool,
    /// Return as soon as the VM is started, without waiting for its IP.
    #[arg(long)]
    pub no_wait: bool,
    /// When the create needs an over-commit approval, return at once with its id
    /// instead of waiting for a human to decide.
    #[arg(long)]
    pub no_wait_approval: bool,
}

impl CreateArgs {
    /// Waiting for the IP is on unless the VM is not started or `--no-wait` was given.
    pub fn wait(&self) -> bool {
        !self.no_start && !self.no_wait
    }

    pub fn to_request(&self, default_agent: impl FnOnce() -> String) -> CreateSandboxRequest {
        CreateSandboxRequest {
            source_vm_name: self.image.clone(),
            agent_id: self.agent_id.clone().unwrap_or_else(default_agent),
            vm_name: self.name.clone(),
            cpu: self.cpu,
            memory_mb: self.memory_mb,
            ttl_seconds: self.ttl,
            auto_start: Some(!self.no_start),
            wait_for_ip: Some(self.wait()),
        }
    }
}

/// What a create that waits for an over-commit approval prints.
pub fn pending_line(p: &PendingCreateResponse) -> String {
    format!(
        "{} waits for a human to approve the over-commit: {} ({})\n\
         see it with `fluidctl approvals show {}`; the sandbox is created once approved",
        p.sandbox_id,
        p.request_id,
        render::one_line(&p.approval.summary),
        p.request_id
    )
}

/// `$USER`, else `fluidctl`.
pub(crate) fn default_agent_id() -> String {
    std::env::var("USER")
        .ok()
        .map(|u| u.trim().to_owned())
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "fluidctl".to_owned())
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only sandboxes in this state (CREATED STARTING RUNNING STOPPED DESTROYED ERROR).
    #[arg(long, short = 's', value_name = "STATE", value_parser = parse_state)]
    pub state: Option<SandboxState>,
    /// Only sandboxes of this agent.
    #[arg(long, value_name = "ID")]
    pub agent_id: Option<String>,
    /// Only sandboxes cloned from this image.
    #[arg(long, value_name = "NAME")]
    pub image: Option<String>,
    /// At most this many sandboxes.
    #[arg(long, short = 'l', value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: Option<u32>,
    /// Skip this many sandboxes.
    #[arg(long, value_name = "N")]
    pub offset: Option<u32>,
}

impl ListArgs {
    /// The query string of `GET /v1/sandboxes`.
    pub fn query(&self) -> String {
        let mut parts = Vec::new();
        if let Some(a) = &self.agent_id {
            parts.push(format!("agent_id={}", encode_component(a)));
        }
        if let Some(i) = &self.image {
            parts.push(format!("base_image={}", encode_component(i)));
        }
        if let Some(s) = self.state {
            parts.push(format!("state={}", s.as_str()));
        }
        if let Some(l) = self.limit {
            parts.push(format!("limit={l}"));
        }
        if let Some(o) = self.offset {
            parts.push(format!("offset={o}"));
        }
        parts.join("&")
    }
}

fn parse_state(s: &str) -> Result<SandboxState, String> {
    SandboxState::parse(s).ok_or_else(|| {
        let all: Vec<&str> = SandboxState::ALL.iter().map(|s| s.as_str()).collect();
        format!("unknown state `{s}` (one of {})", all.join(", "))
    })
}

/// Sandbox ids go into URL paths; refuse anything that would change the path.
pub(crate) fn check_id(id: &str) -> anyhow::Result<&str> {
    let id = id.trim();
    if id.is_empty()
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        anyhow::bail!("`{id}` is not a sandbox id (expected SBX-…)");
    }
    Ok(id)
}

pub async fn run(ctx: &Ctx, cmd: SandboxCmd) -> anyhow::Result<()> {
    let now = chrono::Utc::now;
    match cmd {
        SandboxCmd::Create(args) => {
            let req = args.to_request(default_agent_id);
            let msg = if req.wait_for_ip == Some(true) {
                format!(
                    "creating a sandbox from {} and waiting for its IP",
                    req.source_vm_name
                )
            } else {
                format!("creating a sandbox from {}", req.source_vm_name)
            };
            let create = async {
                if args.no_wait_approval {
                    ctx.client.create_sandbox_nowait(&req).await
                } else {
                    ctx.client
                        .create_sandbox(&req)
                        .await
                        .map(CreateOutcome::Created)
                }
            };
            let outcome = with_spinner(ctx.interactive(), msg, create)
                .await
                .with_context(|| format!("cannot create a sandbox from {}", req.source_vm_name))?;
            let resp = match outcome {
                CreateOutcome::Created(resp) => resp,
                CreateOutcome::Pending(pending) => {
                    if ctx.json {
                        return emit_json(&pending);
                    }
                    emit(&pending_line(&pending));
                    return Ok(());
                }
            };
            if ctx.json {
                return emit_json(&resp);
            }
            emit(&render::sandbox_detail(
                &resp.sandbox,
                resp.ip_address.as_deref(),
                now(),
            ));
        }
        SandboxCmd::List(args) => {
            let resp = ctx.client.list_sandboxes(&args.query()).await?;
            if ctx.json {
                return emit_json(&resp);
            }
            emit(&render::sandbox_table(&resp.sandboxes, now()));
            if let Some(footer) = render::list_footer(resp.sandboxes.len(), resp.total) {
                emit(&footer);
            }
        }
        SandboxCmd::Get { id } => {
            let resp = ctx.client.get_sandbox(check_id(&id)?).await?;
            if ctx.json {
                return emit_json(&resp);
            }
            emit(&render::sandbox_detail(&resp.sandbox, None, now()));
        }
        SandboxCmd::Start { id, wait_for_ip } => {
            let id = check_id(&id)?;
            let msg = if wait_for_ip {
                format!("starting {id} and waiting for its IP")
            } else {
                format!("starting {id}")
            };
            let resp = with_spinner(
                ctx.interactive(),
                msg,
                ctx.client.start_sandbox(id, wait_for_ip),
            )
            .await
            .with_context(|| format!("cannot start {id}"))?;
            if ctx.json {
                return emit_json(&resp);
            }
            match resp.ip_address.as_deref() {
                Some(ip) => emit(&format!("{id} started, IP {ip}")),
                None => emit(&format!("{id} started")),
            }
        }
        SandboxCmd::Stop { id } => {
            let id = check_id(&id)?;
            let resp = ctx
                .client
                .stop_sandbox(id)
                .await
                .with_context(|| format!("cannot stop {id}"))?;
            if ctx.json {
                return emit_json(&resp);
            }
            emit(&format!("{id} {}", resp.sandbox.state));
        }
        SandboxCmd::Destroy { id } => {
            let id = check_id(&id)?;
            let resp = ctx
                .client
                .destroy_sandbox(id)
                .await
                .with_context(|| format!("cannot destroy {id}"))?;
            if ctx.json {
                return emit_json(&resp);
            }
            emit(&format!(
                "{id} {} (VM {}, image {})",
                resp.state, resp.sandbox_name, resp.base_image
            ));
        }
        SandboxCmd::Ip { id } => {
            let id = check_id(&id)?;
            let resp = ctx.client.sandbox_ip(id).await?;
            if ctx.json {
                return emit_json(&resp);
            }
            match resp.ip_address.filter(|ip| !ip.is_empty()) {
                Some(ip) => emit(&ip),
                None => anyhow::bail!("sandbox {id} has no IP address yet"),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cli, Command};
    use clap::Parser;

    fn parse(args: &[&str]) -> SandboxCmd {
        let mut full = vec!["fluidctl", "sandbox"];
        full.extend_from_slice(args);
        match Cli::try_parse_from(&full) {
            Ok(Cli {
                command: Command::Sandbox(cmd),
                ..
            }) => cmd,
            Ok(other) => panic!("{full:?} parsed as {other:?}"),
            Err(e) => panic!("{full:?} should parse: {e}"),
        }
    }

    fn rejects(args: &[&str]) -> clap::error::ErrorKind {
        let mut full = vec!["fluidctl", "sandbox"];
        full.extend_from_slice(args);
        match Cli::try_parse_from(&full) {
            Ok(cli) => panic!("{full:?} should not parse: {cli:?}"),
            Err(e) => e.kind(),
        }
    }

    fn create(args: &[&str]) -> CreateArgs {
        let mut full = vec!["create"];
        full.extend_from_slice(args);
        match parse(&full) {
            SandboxCmd::Create(a) => a,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn create_defaults_start_and_wait() {
        let a = create(&["--image", "ubuntu-24.04"]);
        let req = a.to_request(|| "bob".to_owned());
        assert_eq!(
            req,
            CreateSandboxRequest {
                source_vm_name: "ubuntu-24.04".to_owned(),
                agent_id: "bob".to_owned(),
                auto_start: Some(true),
                wait_for_ip: Some(true),
                ..Default::default()
            }
        );
    }

    #[test]
    fn create_all_flags() {
        let a = create(&[
            "-i",
            "debian-12",
            "--agent-id",
            "agent-7",
            "--name",
            "web-1",
            "--cpu",
            "4",
            "--memory-mb",
            "8192",
            "--ttl",
            "600",
            "--no-wait",
        ]);
        let req = a.to_request(|| panic!("agent id was given"));
        assert_eq!(
            req,
            CreateSandboxRequest {
                source_vm_name: "debian-12".to_owned(),
                agent_id: "agent-7".to_owned(),
                vm_name: Some("web-1".to_owned()),
                cpu: Some(4),
                memory_mb: Some(8192),
                ttl_seconds: Some(600),
                auto_start: Some(true),
                wait_for_ip: Some(false),
            }
        );
        // The request body is what the API documents.
        let body = serde_json::to_value(&req).expect("serialise");
        assert_eq!(body["source_vm_name"], "debian-12");
        assert_eq!(body["ttl_seconds"], 600);
    }

    #[test]
    fn create_no_start_does_not_wait() {
        let req = create(&["--image", "x", "--no-start"]).to_request(|| "a".to_owned());
        assert_eq!(req.auto_start, Some(false));
        assert_eq!(req.wait_for_ip, Some(false));
        let a = create(&["--image", "x", "--wait-for-ip"]);
        assert!(a.wait());
    }

    #[test]
    fn create_rejects_bad_input() {
        use clap::error::ErrorKind;
        assert_eq!(rejects(&["create"]), ErrorKind::MissingRequiredArgument);
        assert_eq!(
            rejects(&["create", "--image", "x", "--no-start", "--wait-for-ip"]),
            ErrorKind::ArgumentConflict
        );
        assert_eq!(
            rejects(&["create", "--image", "x", "--no-wait", "--wait-for-ip"]),
            ErrorKind::ArgumentConflict
        );
        assert_eq!(
            rejects(&["create", "--image", "x", "--cpu", "0"]),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            rejects(&["create", "--image", "x", "--memory-mb", "lots"]),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            rejects(&["create", "--image", "x", "--ttl", "-5"]),
            ErrorKind::UnknownArgument
        );
    }

    #[test]
    fn create_can_skip_waiting_for_an_approval() {
        assert!(!create(&["--image", "x"]).no_wait_approval);
        assert!(create(&["--image", "x", "--no-wait-approval"]).no_wait_approval);
        let approval: fluid_client::governance::Approval =
            serde_json::from_value(serde_json::json!({
                "id": "APR-1",
                "kind": "overcommit",
                "requested_by": "alice",
                "summary": "over-commit host-a\nby 2 vCPUs",
                "details": {},
                "status": "pending",
                "created_at": "2025-03-01T12:00:00Z",
                "expires_at": "2025-03-01T12:05:00Z"
            }))
            .expect("an approval");
        let line = pending_line(&PendingCreateResponse {
            request_id: "APR-1".to_owned(),
            sandbox_id: "SBX-1".to_owned(),
            status: fluid_client::governance::ApprovalStatus::Pending,
            approval,
        });
        assert_eq!(
            line,
            "SBX-1 waits for a human to approve the over-commit: APR-1 (over-commit host-a by 2 vCPUs)\n\
             see it with `fluidctl approvals show APR-1`; the sandbox is created once approved"
        );
    }

    #[test]
    fn default_agent_is_never_empty() {
        assert!(!default_agent_id().is_empty());
    }

    #[test]
    fn list_filters_build_the_query() {
        let SandboxCmd::List(a) = parse(&["ls"]) else {
            panic!("ls is list")
        };
        assert_eq!(a.query(), "");
        let SandboxCmd::List(a) = parse(&[
            "list",
            "--state",
            "running",
            "--agent-id",
            "me & you",
            "--image",
            "ubuntu-24.04",
            "--limit",
            "10",
            "--offset",
            "20",
        ]) else {
            panic!("list")
        };
        assert_eq!(a.state, Some(SandboxState::Running));
        assert_eq!(
            a.query(),
            "agent_id=me%20%26%20you&base_image=ubuntu-24.04&state=RUNNING&limit=10&offset=20"
        );
    }

    #[test]
    fn list_rejects_unknown_state_and_zero_limit() {
        use clap::error::ErrorKind;
        assert_eq!(
            rejects(&["list", "--state", "paused"]),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            rejects(&["list", "--limit", "0"]),
            ErrorKind::ValueValidation
        );
    }

    #[test]
    fn id_commands_and_aliases() {
        assert!(matches!(parse(&["get", "SBX-1"]), SandboxCmd::Get { id } if id == "SBX-1"));
        assert!(matches!(
            parse(&["start", "SBX-1"]),
            SandboxCmd::Start {
                wait_for_ip: false,
                ..
            }
        ));
        assert!(matches!(
            parse(&["start", "SBX-1", "--wait-for-ip"]),
            SandboxCmd::Start {
                wait_for_ip: true,
                ..
            }
        ));
        assert!(matches!(parse(&["stop", "SBX-1"]), SandboxCmd::Stop { .. }));
        assert!(matches!(
            parse(&["destroy", "SBX-1"]),
            SandboxCmd::Destroy { .. }
        ));
        assert!(matches!(
            parse(&["rm", "SBX-1"]),
            SandboxCmd::Destroy { .. }
        ));
        assert!(matches!(parse(&["ip", "SBX-1"]), SandboxCmd::Ip { id } if id == "SBX-1"));
        assert_eq!(
            rejects(&["get"]),
            clap::error::ErrorKind::MissingRequiredArgument
        );
        // `sb` is the short form of `sandbox`.
        let cli = Cli::try_parse_from(["fluidctl", "sb", "rm", "SBX-9"]).expect("parses");
        assert!(matches!(
            cli.command,
            Command::Sandbox(SandboxCmd::Destroy { id }) if id == "SBX-9"
        ));
    }

    #[test]
    fn ids_cannot_escape_the_path() {
        assert_eq!(check_id(" SBX-1a2b ").ok(), Some("SBX-1a2b"));
        for bad in ["", "../hosts", "SBX-1/stop", "SBX-1?x=1", "a b"] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn percent_encoding() {
        assert_eq!(fluid_client::encode_component("a-b_c.d~e"), "a-b_c.d~e");
        assert_eq!(fluid_client::encode_component("ü/?"), "%C3%BC%2F%3F");
    }
}
