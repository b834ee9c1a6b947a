//! Rendering of the human-in-the-loop API: approval requests (with a table for
//! over-commit details), asks, the audit trail, tokens and the caller. Pure, like the
//! rest of [`super`].

use chrono::{DateTime, Utc};
use fluid_client::governance::{
    Approval, ApprovalKind, ApprovalStatus, AskResponse, AuditEvent, CreateTokenResponse,
    RolesResponse, TokenInfo, WhoAmI,
};
use serde_json::Value;

use super::{NONE, age, human_duration, key_values, one_line, opt, rfc3339, table, truncate};

/// Longest summary shown in the approvals table.
const SUMMARY_WIDTH: usize = 50;

/// Longest action shown in the audit table.
const ACTION_WIDTH: usize = 60;

/// The keys of an over-commit request's details that [`overcommit_table`] shows.
const OVERCOMMIT_KEYS: [&str; 3] = ["request", "hosts", "target_host"];

/// `in 4m` for a pending request, `overdue` once past its deadline, `-` once decided.
fn expires_in(a: &Approval, now: DateTime<Utc>) -> String {
    if a.status != ApprovalStatus::Pending {
        NONE.to_owned()
    } else if a.expires_at <= now {
        "overdue".to_owned()
    } else {
        format!("in {}", human_duration((a.expires_at - now).num_seconds()))
    }
}

/// `agent-7/SBX-1`, `agent-7/-`, `-/SBX-1` or `-`.
fn agent_and_sandbox(a: &Approval) -> String {
    match (a.agent_id.as_deref(), a.sandbox_id.as_deref()) {
        (None, None) => NONE.to_owned(),
        (agent, sandbox) => format!("{}/{}", opt(agent), opt(sandbox)),
    }
}

/// `ID KIND STATUS REQUESTED-BY AGENT/SANDBOX SUMMARY AGE EXPIRES`
pub fn approval_table(approvals: &[Approval], now: DateTime<Utc>) -> String {
    if approvals.is_empty() {
        return "No approval requests.".to_owned();
    }
    let rows = approvals
        .iter()
        .map(|a| {
            vec![
                a.id.clone(),
                a.kind.as_str().to_owned(),
                a.status.as_str().to_owned(),
                a.requested_by.clone(),
                agent_and_sandbox(a),
                truncate(&a.summary, SUMMARY_WIDTH),
                age(a.created_at, now),
                expires_in(a, now),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "KIND",
            "STATUS",
            "REQUESTED-BY",
            "AGENT/SANDBOX",
            "SUMMARY",
            "AGE",
            "EXPIRES",
        ],
        rows,
    )
}

/// The footer of a limited approvals listing.
pub fn approvals_footer(shown: usize, total: u64) -> Option<String> {
    (u64::try_from(shown).unwrap_or(u64::MAX) < total).then(|| {
        format!("({shown} of {total} approval requests shown; use --limit/--offset for more)")
    })
}

/// Everything a human needs to decide: who asks what about which sandbox, until when,
/// and the kind-specific details (a table for an over-commit).
pub fn approval_detail(a: &Approval, now: DateTime<Utc>) -> String {
    let asker = match a.agent_id.as_deref().filter(|s| !s.is_empty()) {
        Some(agent) => format!("{} (agent {agent})", a.requested_by),
        None => a.requested_by.clone(),
    };
    let expires = match expires_in(a, now) {
        e if e == NONE => rfc3339(a.expires_at),
        e => format!("{} ({e})", rfc3339(a.expires_at)),
    };
    let mut fields = vec![
        ("ID", a.id.clone()),
        ("KIND", a.kind.as_str().to_owned()),
        ("STATUS", a.status.as_str().to_owned()),
        ("SUMMARY", one_line(&a.summary)),
        ("REQUESTED BY", asker),
        ("SANDBOX", opt(a.sandbox_id.as_deref())),
        (
            "CREATED",
            format!("{} ({} ago)", rfc3339(a.created_at), age(a.created_at, now)),
        ),
        ("EXPIRES", expires),
    ];
    if a.decided_by.is_some() || a.decided_at.is_some() {
        let by = opt(a.decided_by.as_deref());
        let decided = match a.decided_at {
            Some(at) => format!("by {by} at {}", rfc3339(at)),
            None => format!("by {by}"),
        };
        fields.push(("DECIDED", decided));
    }
    if let Some(c) = a.comment.as_deref().filter(|c| !c.is_empty()) {
        fields.push(("COMMENT", one_line(c)));
    }
    format!(
        "{}\n\nDETAILS:\n{}",
        key_values(&fields),
        approval_details(a.kind, &a.details)
    )
}

/// The details of a request: the over-commit table when they have its shape, else
/// pretty JSON.
pub fn approval_details(kind: ApprovalKind, details: &Value) -> String {
    if kind == ApprovalKind::Overcommit
        && let Some(t) = overcommit_table(details)
    {
        return t;
    }
    match details {
        Value::Null => "none".to_owned(),
        Value::Object(m) if m.is_empty() => "none".to_owned(),
        other => serde_json::to_string_pretty(other).unwrap_or_else(|_| other.to_string()),
    }
}

/// A JSON number (or anything else) as a table cell; `?` when absent.
fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "?".to_owned(),
        Some(Value::String(s)) => one_line(s),
        Some(other) => other.to_string(),
    }
}

/// Over-commit details (`{"request": {"cpu", "memory_mb", "source_vm_name"}, "hosts":
/// [{"name", "cpus_free", "memory_mb_free", "reason"}], "target_host"}`) as what was
/// requested against what each host has free. `None` when they do not have that shape.
/// Other keys follow as JSON.
pub fn overcommit_table(details: &Value) -> Option<String> {
    let obj = details.as_object()?;
    let request = obj.get("request")?.as_object()?;
    let hosts = obj.get("hosts")?.as_array()?;
    let cpu = cell(request.get("cpu"));
    let mem = cell(request.get("memory_mb"));
    let mut out = format!("Requested: {cpu} vCPUs, {mem} MiB");
    if let Some(image) = request.get("source_vm_name").and_then(Value::as_str) {
        out.push_str(&format!(" from {image}"));
    }
    if let Some(target) = obj.get("target_host").and_then(Value::as_str) {
        out.push_str(&format!("\nTarget host if approved: {target}"));
    }
    let rows: Vec<Vec<String>> = hosts
        .iter()
        .map(|h| {
            let name = h.get("name").and_then(Value::as_str).unwrap_or("?");
            vec![
                name.to_owned(),
                format!("{}/{cpu}", cell(h.get("cpus_free"))),
                format!("{}/{mem}", cell(h.get("memory_mb_free"))),
                h.get("reason")
                    .and_then(Value::as_str)
                    .map_or_else(|| NONE.to_owned(), one_line),
            ]
        })
        .collect();
    out.push_str("\n\n");
    if rows.is_empty() {
        out.push_str("No hosts to place it on.");
    } else {
        out.push_str(&table(
            &[
                "HOST",
                "CPUS(free/requested)",
                "MEM(free/requested MiB)",
                "REASON",
            ],
            rows,
        ));
    }
    let rest: serde_json::Map<String, Value> = obj
        .iter()
        .filter(|(k, _)| !OVERCOMMIT_KEYS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !rest.is_empty()
        && let Ok(text) = serde_json::to_string_pretty(&Value::Object(rest))
    {
        out.push_str("\n\nOther details:\n");
        out.push_str(&text);
    }
    Some(out)
}

/// How an ask ended, e.g. `approved by alice (APR-1): go ahead`.
pub fn ask_outcome(r: &AskResponse) -> String {
    let who = r
        .approved_by
        .as_deref()
        .filter(|s| !s.is_empty())
        .map_or_else(String::new, |b| format!(" by {b}"));
    let mut out = match r.status {
        ApprovalStatus::Approved | ApprovalStatus::Rejected => {
            format!("{}{who} ({})", r.status.as_str(), r.request_id)
        }
        ApprovalStatus::Expired => format!("expired ({})", r.request_id),
        // A pending answer should not happen; say what the flag says.
        ApprovalStatus::Pending if r.approved => format!("approved ({})", r.request_id),
        ApprovalStatus::Pending => format!("not approved ({})", r.request_id),
    };
    for note in [r.comment.as_deref(), r.reason.as_deref()]
        .into_iter()
        .flatten()
        .filter(|s| !s.is_empty())
    {
        out.push_str(": ");
        out.push_str(&one_line(note));
    }
    out
}

/// `SEQ AT ACTOR ROLE KIND ACTION TARGET OUTCOME`, oldest first as the API sends them.
pub fn audit_table(events: &[AuditEvent]) -> String {
    if events.is_empty() {
        return "No audit events.".to_owned();
    }
    let rows = events
        .iter()
        .map(|e| {
            vec![
                e.seq.to_string(),
                rfc3339(e.at),
                e.actor.clone(),
                e.role.clone(),
                e.kind.clone(),
                truncate(&e.action, ACTION_WIDTH),
                opt(e.target.as_deref()),
                e.outcome.clone(),
            ]
        })
        .collect();
    table(
        &[
            "SEQ", "AT", "ACTOR", "ROLE", "KIND", "ACTION", "TARGET", "OUTCOME",
        ],
        rows,
    )
}

/// The footer of an audit page the controller has more after.
pub fn audit_footer(next_after_seq: Option<i64>) -> Option<String> {
    next_after_seq.map(|n| format!("(more events: use --after-seq {n})"))
}

/// One event's fields, indented (what `audit verify` shows of a broken link).
pub fn audit_event_fields(e: &AuditEvent) -> String {
    let fields = [
        (
            "at",
            e.at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        ),
        ("actor", format!("{} ({})", e.actor, e.role)),
        ("kind", e.kind.clone()),
        ("action", one_line(&e.action)),
        ("target", opt(e.target.as_deref())),
        ("outcome", e.outcome.clone()),
    ];
    key_values(&fields)
        .lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `ID NAME ROLE AGENT CREATED REVOKED`
pub fn token_table(tokens: &[TokenInfo], now: DateTime<Utc>) -> String {
    if tokens.is_empty() {
        return "No API tokens.".to_owned();
    }
    let rows = tokens
        .iter()
        .map(|t| {
            vec![
                t.id.clone(),
                t.name.clone(),
                t.role.as_str().to_owned(),
                opt(t.agent_id.as_deref()),
                format!("{} ago", age(t.created_at, now)),
                t.revoked_at.map_or_else(|| NONE.to_owned(), rfc3339),
            ]
        })
        .collect();
    table(&["ID", "NAME", "ROLE", "AGENT", "CREATED", "REVOKED"], rows)
}

/// `TOK-1 (ci) role agent, agent agent-7`.
fn token_line(t: &TokenInfo) -> String {
    let mut out = format!("{} ({}) role {}", t.id, t.name, t.role);
    if let Some(a) = t.agent_id.as_deref() {
        out.push_str(&format!(", agent {a}"));
    }
    out
}

/// The lines around a new token's secret: before it and after it (for stderr).
pub fn token_created_notes(r: &CreateTokenResponse) -> (String, String) {
    (
        format!("created token {}", token_line(&r.info)),
        "This secret will not be shown again: store it now (e.g. as FLUID_TOKEN).".to_owned(),
    )
}

/// `revoked TOK-1 (ci) role agent at …`.
pub fn token_revoked(t: &TokenInfo) -> String {
    match t.revoked_at {
        Some(at) => format!("revoked {} at {}", token_line(t), rfc3339(at)),
        None => format!("revoked {}", token_line(t)),
    }
}

/// The caller's token as `KEY: value` lines.
pub fn whoami(w: &WhoAmI) -> String {
    key_values(&[
        ("NAME", w.name.clone()),
        ("TOKEN", w.token_id.clone()),
        ("ROLE", w.role.as_str().to_owned()),
        ("AGENT", opt(w.agent_id.as_deref())),
    ])
}

/// The role table: each role, who it is for, its permissions (with their scope) and
/// its limits.
pub fn roles(r: &RolesResponse) -> String {
    let mut out = String::new();
    for (i, role) in r.roles.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&format!(
            "{} — {}\n",
            role.role.as_str().to_uppercase(),
            role.description
        ));
        let width = role
            .permissions
            .iter()
            .map(|p| p.permission.len())
            .max()
            .unwrap_or(0);
        for p in &role.permissions {
            let scope = if p.scope == "all" {
                String::new()
            } else {
                format!(" ({})", p.scope)
            };
            out.push_str(&format!(
                "  {:<width$}  {}{scope}\n",
                p.permission, p.description
            ));
        }
        for l in &role.limits {
            out.push_str(&format!("  limit: {l}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests;
