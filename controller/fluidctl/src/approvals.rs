//! `fluidctl approvals …` and `fluidctl ask`: requests for a human decision.
//!
//! `ask` is the agent's side (a question that blocks until someone answers);
//! `approvals` the human's (list what waits, show one, approve or reject it).

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use fluid_client::client::{ApprovalQuery, DEFAULT_ASK_TIMEOUT_SECS};
use fluid_client::governance::{ApprovalKind, ApprovalStatus, AskRequest, DecideRequest};

use crate::progress::with_spinner;
use crate::sandboxes::check_id;
use crate::{Ctx, emit, emit_json, render};

/// The longest an ask may wait for a decision (the controller's limit).
const MAX_ASK_TIMEOUT_SECS: u64 = 3600;

#[derive(Debug, Subcommand)]
pub enum ApprovalsCmd {
    /// List approval requests, newest first (pending ones by default).
    #[command(visible_alias = "ls")]
    List(ListArgs),
    /// Show one request with everything needed to decide it.
    #[command(visible_alias = "get")]
    Show {
        /// Approval id (`APR-…`).
        id: String,
    },
    /// Approve a pending request.
    Approve(DecideArgs),
    /// Reject a pending request.
    Reject(DecideArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only requests in this status: pending, approved, rejected, expired or all.
    #[arg(long, short = 's', value_name = "STATUS", default_value = "pending", value_parser = parse_status)]
    pub status: StatusFilter,
    /// Only requests of this kind: custom, overcommit, egress or production_apply.
    #[arg(long, short = 'k', value_name = "KIND", value_parser = parse_kind)]
    pub kind: Option<ApprovalKind>,
    /// At most this many requests.
    #[arg(long, short = 'l', value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: Option<u32>,
    /// Skip this many requests.
    #[arg(long, value_name = "N")]
    pub offset: Option<u64>,
}

impl ListArgs {
    pub fn to_query(&self) -> ApprovalQuery {
        ApprovalQuery {
            status: self.status.0,
            kind: self.kind,
            limit: self.limit,
            offset: self.offset,
        }
    }
}

/// `--status`: one status, or all of them (`None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusFilter(pub Option<ApprovalStatus>);

fn parse_status(s: &str) -> Result<StatusFilter, String> {
    if s.eq_ignore_ascii_case("all") {
        return Ok(StatusFilter(None));
    }
    ApprovalStatus::parse(&s.to_ascii_lowercase())
        .map(|st| StatusFilter(Some(st)))
        .ok_or_else(|| {
            format!("unknown status `{s}` (one of pending, approved, rejected, expired, all)")
        })
}

fn parse_kind(s: &str) -> Result<ApprovalKind, String> {
    ApprovalKind::parse(&s.to_ascii_lowercase().replace('-', "_")).ok_or_else(|| {
        let all: Vec<&str> = ApprovalKind::ALL.iter().map(|k| k.as_str()).collect();
        format!("unknown kind `{s}` (one of {})", all.join(", "))
    })
}

#[derive(Debug, Args)]
pub struct DecideArgs {
    /// Approval id (`APR-…`).
    pub id: String,
    /// Why, for the asker and the audit trail.
    #[arg(long, short = 'c', value_name = "TEXT")]
    pub comment: Option<String>,
}

#[derive(Debug, Args)]
#[command(after_help = "\
Blocks until a human approves or rejects the request (fluidctl approvals approve|reject \
APR-…) or it times out. Exits 0 when approved, 1 when rejected or expired. A --context \
that is a JSON object or array is sent as JSON, anything else as text.")]
pub struct AskArgs {
    /// The question for the human.
    pub prompt: String,
    /// What the human should know to decide (text, or a JSON object / array).
    #[arg(long, value_name = "TEXT")]
    pub context: Option<String>,
    /// Give up after this many seconds (1-3600) [default: the controller's, 300].
    #[arg(long, short = 't', value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=MAX_ASK_TIMEOUT_SECS))]
    pub timeout: Option<u64>,
    /// The sandbox the question is about (`SBX-…`).
    #[arg(long, value_name = "ID")]
    pub sandbox: Option<String>,
}

impl AskArgs {
    pub fn to_request(&self) -> anyhow::Result<AskRequest> {
        let sandbox_id = match &self.sandbox {
            Some(s) => Some(check_id(s)?.to_owned()),
            None => None,
        };
        Ok(AskRequest {
            prompt: self.prompt.clone(),
            context: self.context.as_deref().map(context_value),
            action_type: None,
            urgency: None,
            timeout_secs: self.timeout,
            sandbox_id,
        })
    }
}

/// `--context`: a JSON object or array as itself, anything else as a string.
fn context_value(text: &str) -> serde_json::Value {
    let trimmed = text.trim_start();
    if (trimmed.starts_with('{') || trimmed.starts_with('['))
        && let Ok(v) = serde_json::from_str(text)
    {
        return v;
    }
    serde_json::Value::String(text.to_owned())
}

/// Approval ids go into URL paths; give a clear message for anything else.
fn check_approval_id(id: &str) -> anyhow::Result<&str> {
    check_id(id).map_err(|_| anyhow::anyhow!("`{id}` is not an approval id (expected APR-…)"))
}

pub async fn run(ctx: &Ctx, cmd: ApprovalsCmd) -> anyhow::Result<()> {
    let now = chrono::Utc::now;
    match cmd {
        ApprovalsCmd::List(args) => {
            let resp = ctx.client.list_approvals(&args.to_query()).await?;
            if ctx.json {
                return emit_json(&resp);
            }
            emit(&render::approval_table(&resp.approvals, now()));
            if let Some(footer) = render::approvals_footer(resp.approvals.len(), resp.total) {
                emit(&footer);
            }
        }
        ApprovalsCmd::Show { id } => {
            let resp = ctx.client.get_approval(check_approval_id(&id)?).await?;
            if ctx.json {
                return emit_json(&resp);
            }
            emit(&render::approval_detail(&resp.approval, now()));
        }
        ApprovalsCmd::Approve(args) => return decide(ctx, &args, true).await,
        ApprovalsCmd::Reject(args) => return decide(ctx, &args, false).await,
    }
    Ok(())
}

/// Approves or rejects a request and prints it as decided.
async fn decide(ctx: &Ctx, args: &DecideArgs, approve: bool) -> anyhow::Result<()> {
    let id = check_approval_id(&args.id)?;
    let req = DecideRequest {
        comment: args.comment.clone(),
    };
    let resp = if approve {
        ctx.client.approve(id, &req).await
    } else {
        ctx.client.reject(id, &req).await
    }
    .with_context(|| format!("cannot {} {id}", if approve { "approve" } else { "reject" }))?;
    if ctx.json {
        return emit_json(&resp);
    }
    emit(&render::approval_detail(&resp.approval, chrono::Utc::now()));
    Ok(())
}

/// `fluidctl ask`: 0 when approved, 1 otherwise.
pub async fn ask(ctx: &Ctx, args: AskArgs) -> anyhow::Result<ExitCode> {
    let req = args.to_request()?;
    let wait = req.timeout_secs.unwrap_or(DEFAULT_ASK_TIMEOUT_SECS);
    let msg = format!(
        "waiting up to {} for a human to decide (fluidctl approvals list)",
        render::human_duration(i64::try_from(wait).unwrap_or(i64::MAX))
    );
    let resp = with_spinner(ctx.interactive(), msg, ctx.client.ask(&req))
        .await
        .context("cannot ask a human")?;
    if ctx.json {
        emit_json(&resp)?;
    } else {
        emit(&render::ask_outcome(&resp));
    }
    Ok(if resp.approved {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cli, Command};
    use clap::Parser;

    fn parse(args: &[&str]) -> Command {
        let mut full = vec!["fluidctl"];
        full.extend_from_slice(args);
        match Cli::try_parse_from(&full) {
            Ok(cli) => cli.command,
            Err(e) => panic!("{full:?} should parse: {e}"),
        }
    }

    fn list(args: &[&str]) -> ListArgs {
        let mut full = vec!["approvals", "list"];
        full.extend_from_slice(args);
        match parse(&full) {
            Command::Approvals(ApprovalsCmd::List(a)) => a,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn list_defaults_to_pending() {
        let q = list(&[]).to_query();
        assert_eq!(q.status, Some(ApprovalStatus::Pending));
        assert_eq!(q.to_query(), "status=pending");
    }

    #[test]
    fn list_all_and_filters() {
        let q = list(&["--status", "all", "--kind", "overcommit", "--limit", "5"]).to_query();
        assert_eq!(q.to_query(), "status=all&kind=overcommit&limit=5");
        let q = list(&["-s", "Rejected", "-k", "production-apply"]).to_query();
        assert_eq!(q.to_query(), "status=rejected&kind=production_apply");
        for bad in [
            ["approvals", "list", "--status", "done"],
            ["approvals", "list", "--kind", "money"],
        ] {
            assert!(Cli::try_parse_from(std::iter::once("fluidctl").chain(bad)).is_err());
        }
    }

    #[test]
    fn decide_commands_parse() {
        match parse(&["approvals", "approve", "APR-1", "--comment", "ok"]) {
            Command::Approvals(ApprovalsCmd::Approve(a)) => {
                assert_eq!(a.id, "APR-1");
                assert_eq!(a.comment.as_deref(), Some("ok"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            parse(&["approval", "reject", "APR-1"]),
            Command::Approvals(ApprovalsCmd::Reject(DecideArgs { comment: None, .. }))
        ));
        assert!(matches!(
            parse(&["approvals", "show", "APR-1"]),
            Command::Approvals(ApprovalsCmd::Show { .. })
        ));
        assert!(check_approval_id("APR-1/approve").is_err());
    }

    #[test]
    fn ask_builds_the_request() {
        let Command::Ask(a) = parse(&[
            "ask",
            "may I drop the table?",
            "--context",
            r#"{"table":"users"}"#,
            "--timeout",
            "60",
            "--sandbox",
            "SBX-1",
        ]) else {
            panic!("ask")
        };
        let req = a.to_request().expect("valid");
        assert_eq!(req.prompt, "may I drop the table?");
        assert_eq!(req.context, Some(serde_json::json!({"table": "users"})));
        assert_eq!(req.timeout_secs, Some(60));
        assert_eq!(req.sandbox_id.as_deref(), Some("SBX-1"));
        // Only the fields given are sent (the API rejects unknown ones, not absent ones).
        let Command::Ask(a) = parse(&["ask", "ok?"]) else {
            panic!("ask")
        };
        let body = serde_json::to_value(a.to_request().expect("valid")).expect("json");
        assert_eq!(body, serde_json::json!({"prompt": "ok?"}));
    }

    #[test]
    fn ask_context_and_limits() {
        assert_eq!(
            context_value("plain words"),
            serde_json::json!("plain words")
        );
        assert_eq!(context_value("{not json"), serde_json::json!("{not json"));
        assert_eq!(context_value("[1, 2]"), serde_json::json!([1, 2]));
        assert_eq!(context_value("42"), serde_json::json!("42"));
        for bad in ["0", "3601", "soon"] {
            assert!(Cli::try_parse_from(["fluidctl", "ask", "q", "--timeout", bad]).is_err());
        }
        let Command::Ask(a) = parse(&["ask", "q", "--sandbox", "../x"]) else {
            panic!("ask")
        };
        assert!(a.to_request().is_err());
    }
}
