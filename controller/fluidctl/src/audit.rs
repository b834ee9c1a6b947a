//! `fluidctl audit …`: read the audit trail, and verify its hash chain end to end
//! without trusting the controller's word for it.

use std::future::Future;
use std::process::ExitCode;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use fluid_client::audit_chain::ChainVerifier;
use fluid_client::client::AuditQuery;
use fluid_client::governance::{AuditEvent, ListAuditResponse};
use serde::Serialize;

use crate::progress::with_spinner;
use crate::{Ctx, emit, emit_json, render};

/// Events per page (the controller's maximum).
pub const PAGE_LIMIT: u32 = 1000;

/// How many characters of the head hash `verify` prints.
const HEAD_PREFIX: usize = 16;

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// List audit events, oldest first.
    #[command(visible_alias = "ls")]
    List(ListArgs),
    /// Read the whole trail and check its hash chain; exits 1 when it is broken.
    Verify,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only events about this sandbox.
    #[arg(long, value_name = "ID")]
    pub sandbox: Option<String>,
    /// Only events by this actor (a token name, or `controller`).
    #[arg(long, value_name = "NAME")]
    pub actor: Option<String>,
    /// Only events of this kind (api, state, approval, command, token, mode).
    #[arg(long, value_name = "KIND")]
    pub kind: Option<String>,
    /// Only events at or after this time (RFC 3339, e.g. 2025-03-01T12:00:00Z).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub since: Option<DateTime<Utc>>,
    /// Only events after this sequence number (to read on after a page).
    #[arg(long, value_name = "SEQ")]
    pub after_seq: Option<i64>,
    /// At most this many events (1-1000).
    #[arg(long, short = 'l', value_name = "N", value_parser = clap::value_parser!(u32).range(1..=i64::from(PAGE_LIMIT)))]
    pub limit: Option<u32>,
}

impl ListArgs {
    pub fn to_query(&self) -> AuditQuery {
        AuditQuery {
            sandbox_id: self.sandbox.clone(),
            actor: self.actor.clone(),
            kind: self.kind.clone(),
            since: self.since,
            after_seq: self.after_seq,
            limit: self.limit,
        }
    }
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("`{s}` is not an RFC 3339 time like 2025-03-01T12:00:00Z: {e}"))
}

/// What `audit verify` found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub ok: bool,
    /// Events whose link checked out.
    pub events_checked: u64,
    /// The hash of the last event that checked out (the chain's head when `ok`).
    pub head: String,
    /// The sequence number of the event where the chain breaks.
    pub broken_at: Option<i64>,
    pub reason: Option<String>,
    /// The event where the chain breaks.
    #[serde(skip)]
    pub event: Option<AuditEvent>,
}

impl Verdict {
    pub fn exit_code(&self) -> ExitCode {
        if self.ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }

    /// `audit chain OK: …` or `audit chain BROKEN at event …` with the event's fields.
    pub fn text(&self) -> String {
        match (self.broken_at, self.event.as_ref()) {
            (None, _) => format!(
                "audit chain OK: {} events, head {}",
                self.events_checked,
                prefix(&self.head, HEAD_PREFIX)
            ),
            (Some(seq), event) => {
                let mut out = format!(
                    "audit chain BROKEN at event {seq}: {}",
                    self.reason.as_deref().unwrap_or("unknown")
                );
                if let Some(e) = event {
                    out.push('\n');
                    out.push_str(&render::audit_event_fields(e));
                }
                out.push_str(&format!(
                    "\n({} events before it check out, up to hash {})",
                    self.events_checked,
                    prefix(&self.head, HEAD_PREFIX)
                ));
                out
            }
        }
    }
}

fn prefix(s: &str, n: usize) -> &str {
    s.char_indices().nth(n).map_or(s, |(i, _)| &s[..i])
}

/// Walks the whole trail: `fetch(after_seq)` reads one page (`None` for the first),
/// each event goes through a [`ChainVerifier`] and the walk follows `next_after_seq`
/// until the last page. Stops at the first broken link.
pub async fn verify_chain<F, Fut>(mut fetch: F) -> anyhow::Result<Verdict>
where
    F: FnMut(Option<i64>) -> Fut,
    Fut: Future<Output = anyhow::Result<ListAuditResponse>>,
{
    let mut verifier = ChainVerifier::default();
    let mut after: Option<i64> = None;
    loop {
        let page = fetch(after).await?;
        for e in &page.events {
            if let Err(b) = verifier.push(e) {
                let seq = b.seq();
                let text = b.to_string();
                // The messages start with "event N: "; the line already names it.
                let reason = text
                    .strip_prefix(&format!("event {seq}: "))
                    .map_or_else(|| text.clone(), str::to_owned);
                return Ok(Verdict {
                    ok: false,
                    events_checked: verifier.checked(),
                    head: verifier.head().to_owned(),
                    broken_at: Some(seq),
                    reason: Some(reason),
                    event: Some(e.clone()),
                });
            }
        }
        match page.next_after_seq {
            Some(next) if !page.events.is_empty() => {
                if let Some(prev) = after.filter(|&prev| next <= prev) {
                    anyhow::bail!(
                        "the controller's audit paging does not advance (next_after_seq {next} after {prev})"
                    );
                }
                after = Some(next);
            }
            _ => break,
        }
    }
    Ok(Verdict {
        ok: true,
        events_checked: verifier.checked(),
        head: verifier.head().to_owned(),
        broken_at: None,
        reason: None,
        event: None,
    })
}

pub async fn run(ctx: &Ctx, cmd: AuditCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCmd::List(args) => {
            let resp = ctx.client.list_audit(&args.to_query()).await?;
            if ctx.json {
                emit_json(&resp)?;
            } else {
                emit(&render::audit_table(&resp.events));
                if let Some(footer) = render::audit_footer(resp.next_after_seq) {
                    emit(&footer);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCmd::Verify => {
            let client = &ctx.client;
            let fetch = move |after_seq| async move {
                let query = AuditQuery {
                    after_seq,
                    limit: Some(PAGE_LIMIT),
                    ..AuditQuery::default()
                };
                client
                    .list_audit(&query)
                    .await
                    .with_context(|| match after_seq {
                        Some(seq) => format!("cannot read the audit trail after event {seq}"),
                        None => "cannot read the audit trail".to_owned(),
                    })
            };
            let verdict = with_spinner(
                ctx.interactive(),
                "verifying the audit chain".to_owned(),
                verify_chain(fetch),
            )
            .await?;
            if ctx.json {
                emit_json(&verdict)?;
            } else {
                emit(&verdict.text());
            }
            Ok(verdict.exit_code())
        }
    }
}

#[cfg(test)]
mod tests;
