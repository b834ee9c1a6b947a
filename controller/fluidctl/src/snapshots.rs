//! `fluidctl snapshot …`, `fluidctl fork` and `fluidctl diff`: a sandbox's snapshots,
//! a new sandbox from one, and what changed between two disk states.

use anyhow::Context as _;
use clap::{Args, Subcommand};
use fluid_client::snapshots::{CreateSnapshotRequest, DiffRequest, ForkRequest, NOW};

use crate::progress::with_spinner;
use crate::sandboxes::check_id;
use crate::{Ctx, emit, emit_json, render};

#[derive(Debug, Subcommand)]
#[command(after_help = "\
A snapshot of a running sandbox includes its memory (restoring it resumes the VM as it \
was); a stopped sandbox's is disk-only. Names: a letter or digit, then letters, digits, \
'.', '_' or '-' (at most 63; not `now`, not `fluid-…`).")]
pub enum SnapshotCmd {
    /// Take a snapshot of a sandbox.
    #[command(visible_alias = "take")]
    Create {
        /// Sandbox id (`SBX-…`).
        sandbox: String,
        /// The snapshot's name (unique in the sandbox).
        name: String,
        /// Disk only (the sandbox must be stopped: a running one is snapshotted with
        /// its memory).
        #[arg(long)]
        no_memory: bool,
    },
    /// List a sandbox's snapshots, oldest first.
    #[command(visible_alias = "ls")]
    List {
        /// Sandbox id (`SBX-…`).
        sandbox: String,
    },
    /// Revert a sandbox to a snapshot (a running sandbox runs again afterwards).
    #[command(visible_alias = "revert")]
    Restore {
        /// Sandbox id (`SBX-…`).
        sandbox: String,
        /// The snapshot's name.
        name: String,
    },
    /// Delete a snapshot.
    #[command(visible_alias = "rm")]
    Delete {
        /// Sandbox id (`SBX-…`).
        sandbox: String,
        /// The snapshot's name.
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct ForkArgs {
    /// The source sandbox (`SBX-…`).
    pub sandbox: String,
    /// Its snapshot to start from; none: fork it live, as it runs now (memory and
    /// disk; it pauses for the copy, then runs on).
    pub snapshot: Option<String>,
    /// Name of the new VM [default: chosen by the controller].
    #[arg(long, short = 'n', value_name = "VM_NAME")]
    pub name: Option<String>,
    /// Owner of the new sandbox [default: the source's].
    #[arg(long, value_name = "ID")]
    pub agent_id: Option<String>,
    /// Wait until the new VM has a DHCP lease and print its IP.
    #[arg(long, short = 'w')]
    pub wait_for_ip: bool,
}

impl ForkArgs {
    pub fn to_request(&self) -> ForkRequest {
        ForkRequest {
            snapshot: self.snapshot.clone(),
            agent_id: self.agent_id.clone(),
            vm_name: self.name.clone(),
            wait_for_ip: self.wait_for_ip.then_some(true),
            ..ForkRequest::default()
        }
    }
}

#[derive(Debug, Args)]
#[command(after_help = "\
The sandbox's agent reads both disk states from the images (not through the guest). \
Paths that always churn (/proc, /tmp, /var/cache, apt lists, …) are left out; text files \
up to the controller's limit come with a unified diff, others are compared by hash.")]
pub struct DiffArgs {
    /// Sandbox id (`SBX-…`).
    pub sandbox: String,
    /// The earlier snapshot.
    pub from: String,
    /// The later snapshot, or `now` (the sandbox's disk now).
    #[arg(default_value = NOW)]
    pub to: String,
}

impl DiffArgs {
    pub fn to_request(&self) -> DiffRequest {
        DiffRequest {
            from_snapshot: self.from.clone(),
            to_snapshot: Some(self.to.clone()),
        }
    }
}

/// Snapshot names go into URL paths; refuse what the controller would refuse anyway
/// (and what would change the path, like `..`).
pub(crate) fn check_name(name: &str) -> anyhow::Result<&str> {
    let ok = name.len() <= 63
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !name.contains("..");
    if !ok {
        anyhow::bail!(
            "`{name}` is not a snapshot name (a letter or digit, then letters, digits, '.', '_' or '-'; at most 63; no '..')"
        );
    }
    Ok(name)
}

pub async fn run(ctx: &Ctx, cmd: SnapshotCmd) -> anyhow::Result<()> {
    match cmd {
        SnapshotCmd::Create {
            sandbox,
            name,
            no_memory,
        } => {
            let id = check_id(&sandbox)?;
            let req = CreateSnapshotRequest {
                name: check_name(&name)?.to_owned(),
                external: None,
                memory: no_memory.then_some(false),
            };
            let resp = with_spinner(
                ctx.interactive(),
                format!("taking snapshot {name} of {id}"),
                ctx.client.create_snapshot(id, &req),
            )
            .await
            .with_context(|| format!("cannot snapshot {id}"))?;
            if ctx.json {
                return emit_json(&resp);
            }
            emit(&render::snapshot_taken(&resp.snapshot));
        }
        SnapshotCmd::List { sandbox } => {
            let resp = ctx.client.list_snapshots(check_id(&sandbox)?).await?;
            if ctx.json {
                return emit_json(&resp);
            }
            emit(&render::snapshot_table(&resp.snapshots, chrono::Utc::now()));
        }
        SnapshotCmd::Restore { sandbox, name } => {
            let id = check_id(&sandbox)?;
            let name = check_name(&name)?;
            let resp = with_spinner(
                ctx.interactive(),
                format!("restoring {id} to {name}"),
                ctx.client.restore_snapshot(id, name),
            )
            .await
            .with_context(|| format!("cannot restore {id} to {name}"))?;
            if ctx.json {
                return emit_json(&resp);
            }
            emit(&format!("{id} restored to snapshot {name}"));
        }
        SnapshotCmd::Delete { sandbox, name } => {
            let id = check_id(&sandbox)?;
            let name = check_name(&name)?;
            ctx.client
                .delete_snapshot(id, name)
                .await
                .with_context(|| format!("cannot delete snapshot {name} of {id}"))?;
            if ctx.json {
                return emit_json(&serde_json::json!({"sandbox_id": id, "deleted": name}));
            }
            emit(&format!("snapshot {name} of {id} deleted"));
        }
    }
    Ok(())
}

/// `fluidctl fork`: prints the new sandbox.
pub async fn fork(ctx: &Ctx, args: ForkArgs) -> anyhow::Result<()> {
    let id = check_id(&args.sandbox)?;
    if let Some(snapshot) = &args.snapshot {
        check_name(snapshot)?;
    }
    let req = args.to_request();
    let at = match &args.snapshot {
        Some(snapshot) => format!("at {snapshot}"),
        None => "live".to_owned(),
    };
    let msg = if args.wait_for_ip {
        format!("forking {id} {at} and waiting for its IP")
    } else {
        format!("forking {id} {at}")
    };
    let resp = with_spinner(ctx.interactive(), msg, ctx.client.fork_sandbox(id, &req))
        .await
        .with_context(|| format!("cannot fork {id} {at}"))?;
    if ctx.json {
        return emit_json(&resp);
    }
    emit(&render::sandbox_detail(
        &resp.sandbox,
        resp.ip_address.as_deref(),
        chrono::Utc::now(),
    ));
    Ok(())
}

/// `fluidctl diff`: the summary, then the text diffs (or the API's JSON).
pub async fn diff(ctx: &Ctx, args: DiffArgs) -> anyhow::Result<()> {
    let id = check_id(&args.sandbox)?;
    for n in [&args.from, &args.to] {
        if n != NOW {
            check_name(n)?;
        }
    }
    let resp = with_spinner(
        ctx.interactive(),
        format!("comparing {} with {} in {id}", args.from, args.to),
        ctx.client.diff_sandbox(id, &args.to_request()),
    )
    .await
    .with_context(|| format!("cannot diff {id}"))?;
    if ctx.json {
        return emit_json(&resp);
    }
    emit(&render::diff_view(&resp.diff));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cli, Command};
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        let mut full = vec!["fluidctl"];
        full.extend_from_slice(args);
        Cli::try_parse_from(full).map(|c| c.command)
    }

    #[test]
    fn snapshot_commands_parse() {
        let Ok(Command::Snapshot(SnapshotCmd::Create {
            sandbox,
            name,
            no_memory,
        })) = parse(&["snapshot", "create", "SBX-1", "before", "--no-memory"])
        else {
            panic!("create")
        };
        assert_eq!(
            (sandbox.as_str(), name.as_str(), no_memory),
            ("SBX-1", "before", true)
        );
        assert!(matches!(
            parse(&["snapshot", "ls", "SBX-1"]),
            Ok(Command::Snapshot(SnapshotCmd::List { .. }))
        ));
        assert!(matches!(
            parse(&["snapshot", "restore", "SBX-1", "a"]),
            Ok(Command::Snapshot(SnapshotCmd::Restore { .. }))
        ));
        assert!(matches!(
            parse(&["snapshot", "delete", "SBX-1", "a"]),
            Ok(Command::Snapshot(SnapshotCmd::Delete { .. }))
        ));
        assert!(parse(&["snapshot", "create", "SBX-1"]).is_err());
    }

    #[test]
    fn fork_and_diff_parse_into_requests() {
        let Ok(Command::Fork(f)) = parse(&["fork", "SBX-1", "b", "--name", "exp-1", "-w"]) else {
            panic!("fork")
        };
        assert_eq!(
            serde_json::to_value(f.to_request()).expect("json"),
            serde_json::json!({"snapshot": "b", "vm_name": "exp-1", "wait_for_ip": true})
        );
        let Ok(Command::Diff(d)) = parse(&["diff", "SBX-1", "a"]) else {
            panic!("diff")
        };
        assert_eq!(
            serde_json::to_value(d.to_request()).expect("json"),
            serde_json::json!({"from_snapshot": "a", "to_snapshot": "now"})
        );
        let Ok(Command::Diff(d)) = parse(&["diff", "SBX-1", "a", "b", "--json"]) else {
            panic!("diff")
        };
        assert_eq!(d.to, "b");
    }

    #[test]
    fn names_are_checked_before_they_reach_a_path() {
        assert!(check_name("before-nginx.1").is_ok());
        for bad in ["", "..", "a/b", "-x", "a..b", &"x".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
