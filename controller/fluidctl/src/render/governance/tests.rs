//! Approvals, over-commit details, asks, audit events and tokens, rendered from
//! hand-made values.

use super::*;
use chrono::TimeZone;
use fluid_client::governance::Role;
use serde_json::json;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0)
        .single()
        .expect("valid time")
}

fn overcommit_details() -> Value {
    json!({
        "request": {"cpu": 4, "memory_mb": 8192, "source_vm_name": "ubuntu-24.04"},
        "hosts": [
            {"name": "host-a", "memory_mb_free": 4096, "cpus_free": 6, "reason": "not enough memory"},
            {"name": "host-b", "memory_mb_free": 16384, "cpus_free": 2, "reason": "not enough CPUs"}
        ],
        "target_host": "host-a"
    })
}

fn approval(id: &str, kind: ApprovalKind, details: Value) -> Approval {
    Approval {
        id: id.to_owned(),
        kind,
        requested_by: "ci-bot".to_owned(),
        agent_id: Some("agent-7".to_owned()),
        sandbox_id: Some("SBX-1".to_owned()),
        summary: "create SBX-1 (4 vCPUs, 8192 MiB) although no host has room".to_owned(),
        details,
        status: ApprovalStatus::Pending,
        decided_by: None,
        comment: None,
        created_at: t0(),
        decided_at: None,
        expires_at: t0() + chrono::Duration::minutes(5),
    }
}

#[test]
fn approval_table_layout() {
    let now = t0() + chrono::Duration::minutes(1);
    let mut done = approval("APR-2", ApprovalKind::Custom, json!({}));
    done.status = ApprovalStatus::Approved;
    done.agent_id = None;
    done.sandbox_id = None;
    done.summary = "may I\nrestart nginx?".to_owned();
    let out = approval_table(
        &[
            approval("APR-1", ApprovalKind::Overcommit, overcommit_details()),
            done,
        ],
        now,
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        [
            "ID",
            "KIND",
            "STATUS",
            "REQUESTED-BY",
            "AGENT/SANDBOX",
            "SUMMARY",
            "AGE",
            "EXPIRES"
        ]
    );
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        &row[..5],
        ["APR-1", "overcommit", "pending", "ci-bot", "agent-7/SBX-1"]
    );
    assert_eq!(row[row.len() - 3..], ["1m", "in", "4m"], "{out}");
    // Long summaries are cut to one line.
    assert!(lines[1].contains('…'), "{out}");
    assert!(lines[2].contains("may I restart nginx?"), "{out}");
    assert!(lines[2].ends_with(" -"), "{out}");
    let col = lines[0].find("SUMMARY").expect("SUMMARY header");
    assert_eq!(lines[1].find("create SBX-1"), Some(col));
    assert_eq!(approval_table(&[], now), "No approval requests.");
}

#[test]
fn expiry_wording() {
    let a = approval("APR-1", ApprovalKind::Custom, json!(null));
    assert_eq!(expires_in(&a, t0()), "in 5m");
    assert_eq!(
        expires_in(&a, t0() + chrono::Duration::minutes(6)),
        "overdue"
    );
    assert_eq!(approvals_footer(2, 2), None);
    assert!(approvals_footer(1, 9).is_some_and(|f| f.starts_with("(1 of 9 approval")));
}

#[test]
fn overcommit_details_are_a_table() {
    let out = overcommit_table(&overcommit_details()).expect("has the shape");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "Requested: 4 vCPUs, 8192 MiB from ubuntu-24.04");
    assert_eq!(lines[1], "Target host if approved: host-a");
    assert_eq!(lines[2], "");
    assert_eq!(
        lines[3].split_whitespace().collect::<Vec<_>>(),
        [
            "HOST",
            "CPUS(free/requested)",
            "MEM(free/requested",
            "MiB)",
            "REASON"
        ]
    );
    assert_eq!(
        lines[4].split_whitespace().collect::<Vec<_>>(),
        ["host-a", "6/4", "4096/8192", "not", "enough", "memory"]
    );
    assert_eq!(
        lines[5].split_whitespace().collect::<Vec<_>>(),
        ["host-b", "2/4", "16384/8192", "not", "enough", "CPUs"]
    );
    assert_eq!(lines.len(), 6, "{out}");
}

#[test]
fn overcommit_details_tolerate_missing_and_extra_keys() {
    let out = overcommit_table(&json!({
        "request": {"cpu": 2},
        "hosts": [{"name": "host-a"}],
        "policy": "max 150%"
    }))
    .expect("has the shape");
    assert!(out.starts_with("Requested: 2 vCPUs, ? MiB\n\n"), "{out}");
    assert!(out.contains("host-a  ?/2"), "{out}");
    assert!(
        out.ends_with("Other details:\n{\n  \"policy\": \"max 150%\"\n}"),
        "{out}"
    );
    let out = overcommit_table(&json!({"request": {}, "hosts": []})).expect("shape");
    assert!(out.ends_with("No hosts to place it on."), "{out}");
    // Anything else is not the over-commit shape.
    for other in [
        json!(null),
        json!({"request": {"cpu": 1}}),
        json!({"hosts": []}),
        json!({"request": 1, "hosts": []}),
        json!([1, 2]),
    ] {
        assert_eq!(overcommit_table(&other), None, "{other}");
    }
}

#[test]
fn details_fall_back_to_json() {
    assert!(
        approval_details(ApprovalKind::Overcommit, &overcommit_details()).starts_with("Requested:")
    );
    // Only over-commits get the table.
    assert!(
        approval_details(ApprovalKind::Custom, &overcommit_details()).starts_with("{\n  \"hosts\"")
    );
    assert_eq!(
        approval_details(ApprovalKind::Overcommit, &json!({"odd": true})),
        "{\n  \"odd\": true\n}"
    );
    assert_eq!(approval_details(ApprovalKind::Custom, &json!({})), "none");
    assert_eq!(approval_details(ApprovalKind::Egress, &json!(null)), "none");
}

#[test]
fn approval_detail_has_what_a_human_needs() {
    let now = t0() + chrono::Duration::minutes(2);
    let out = approval_detail(
        &approval("APR-1", ApprovalKind::Overcommit, overcommit_details()),
        now,
    );
    for want in [
        "ID:           APR-1",
        "KIND:         overcommit",
        "STATUS:       pending",
        "SUMMARY:      create SBX-1 (4 vCPUs, 8192 MiB) although no host has room",
        "REQUESTED BY: ci-bot (agent agent-7)",
        "SANDBOX:      SBX-1",
        "CREATED:      2025-03-01T12:00:00Z (2m ago)",
        "EXPIRES:      2025-03-01T12:05:00Z (in 3m)",
        "\n\nDETAILS:\nRequested: 4 vCPUs",
    ] {
        assert!(out.contains(want), "missing {want:?} in\n{out}");
    }
    assert!(!out.contains("DECIDED"), "{out}");

    let mut a = approval(
        "APR-2",
        ApprovalKind::Custom,
        json!({"cmd": "rm -rf /tmp/x"}),
    );
    a.status = ApprovalStatus::Rejected;
    a.decided_by = Some("alice".to_owned());
    a.decided_at = Some(t0() + chrono::Duration::minutes(1));
    a.comment = Some("not today".to_owned());
    a.agent_id = None;
    let out = approval_detail(&a, now);
    for want in [
        "REQUESTED BY: ci-bot\n",
        "EXPIRES:      2025-03-01T12:05:00Z\n",
        "DECIDED:      by alice at 2025-03-01T12:01:00Z",
        "COMMENT:      not today",
        "DETAILS:\n{\n  \"cmd\": \"rm -rf /tmp/x\"\n}",
    ] {
        assert!(out.contains(want), "missing {want:?} in\n{out}");
    }
}

#[test]
fn ask_outcomes() {
    let mut r = AskResponse {
        request_id: "APR-1".to_owned(),
        approved: true,
        comment: Some("go ahead".to_owned()),
        approved_by: Some("alice".to_owned()),
        status: ApprovalStatus::Approved,
        reason: None,
    };
    assert_eq!(ask_outcome(&r), "approved by alice (APR-1): go ahead");
    r.approved = false;
    r.status = ApprovalStatus::Rejected;
    r.comment = None;
    assert_eq!(ask_outcome(&r), "rejected by alice (APR-1)");
    r.status = ApprovalStatus::Expired;
    r.approved_by = None;
    r.reason = Some("no decision within 300s".to_owned());
    assert_eq!(ask_outcome(&r), "expired (APR-1): no decision within 300s");
}

fn event(seq: i64) -> AuditEvent {
    AuditEvent {
        seq,
        at: t0(),
        actor: "alice".to_owned(),
        role: "admin".to_owned(),
        kind: "api".to_owned(),
        action: "POST /v1/sandboxes".to_owned(),
        target: Some("SBX-1".to_owned()),
        sandbox_id: Some("SBX-1".to_owned()),
        outcome: "201".to_owned(),
        details: json!({}),
        prev_hash: String::new(),
        hash: String::new(),
    }
}

#[test]
fn audit_table_layout() {
    let mut second = event(2);
    second.target = None;
    second.actor = "controller".to_owned();
    second.role = "system".to_owned();
    second.kind = "state".to_owned();
    second.action = "RUNNING".to_owned();
    second.outcome = "ok".to_owned();
    let out = audit_table(&[event(1), second]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        [
            "SEQ", "AT", "ACTOR", "ROLE", "KIND", "ACTION", "TARGET", "OUTCOME"
        ]
    );
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        [
            "1",
            "2025-03-01T12:00:00Z",
            "alice",
            "admin",
            "api",
            "POST",
            "/v1/sandboxes",
            "SBX-1",
            "201"
        ]
    );
    assert_eq!(
        lines[2].split_whitespace().collect::<Vec<_>>(),
        [
            "2",
            "2025-03-01T12:00:00Z",
            "controller",
            "system",
            "state",
            "RUNNING",
            "-",
            "ok"
        ]
    );
    assert_eq!(audit_table(&[]), "No audit events.");
    assert_eq!(
        audit_footer(Some(1000)).as_deref(),
        Some("(more events: use --after-seq 1000)")
    );
    assert_eq!(audit_footer(None), None);
    let fields = audit_event_fields(&event(3));
    assert!(
        fields.starts_with("  at:      2025-03-01T12:00:00.000000Z\n"),
        "{fields}"
    );
    assert!(fields.contains("\n  target:  SBX-1\n"), "{fields}");
}

fn token(name: &str, role: Role, agent: Option<&str>) -> TokenInfo {
    TokenInfo {
        id: format!("TOK-{name}"),
        name: name.to_owned(),
        role,
        agent_id: agent.map(str::to_owned),
        created_at: t0(),
        revoked_at: None,
    }
}

#[test]
fn tokens_and_whoami() {
    let mut revoked = token("old", Role::Readonly, None);
    revoked.revoked_at = Some(t0() + chrono::Duration::hours(1));
    let out = token_table(
        &[token("ci", Role::Agent, Some("ci-7")), revoked.clone()],
        t0() + chrono::Duration::hours(2),
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["ID", "NAME", "ROLE", "AGENT", "CREATED", "REVOKED"]
    );
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        ["TOK-ci", "ci", "agent", "ci-7", "2h", "ago", "-"]
    );
    assert!(lines[2].ends_with("2025-03-01T13:00:00Z"), "{out}");
    assert_eq!(token_table(&[], t0()), "No API tokens.");
    assert_eq!(
        token_revoked(&revoked),
        "revoked TOK-old (old) role readonly at 2025-03-01T13:00:00Z"
    );
    let (before, after) = token_created_notes(&CreateTokenResponse {
        token: "s3cret".to_owned(),
        info: token("ci", Role::Agent, Some("ci-7")),
    });
    assert_eq!(before, "created token TOK-ci (ci) role agent, agent ci-7");
    assert!(after.contains("will not be shown again"), "{after}");
    let out = whoami(&WhoAmI {
        token_id: "TOK-1".to_owned(),
        name: "alice".to_owned(),
        role: Role::Operator,
        agent_id: None,
    });
    assert_eq!(out, "NAME:  alice\nTOKEN: TOK-1\nROLE:  operator\nAGENT: -");
}
