//! The verify walk against a fake paging controller, and `audit list`'s flags.

use super::*;
use crate::{Cli, Command};
use chrono::TimeZone;
use clap::Parser;
use fluid_client::audit_chain::{GENESIS, HashInput, event_hash};

/// A valid chain of `n` events, one second apart.
fn chain(n: i64) -> Vec<AuditEvent> {
    let t0 = Utc
        .with_ymd_and_hms(2025, 3, 1, 12, 0, 0)
        .single()
        .expect("valid time");
    let mut prev = GENESIS.to_owned();
    (1..=n)
        .map(|seq| {
            let mut e = AuditEvent {
                seq,
                at: t0 + chrono::Duration::milliseconds(seq * 1_001),
                actor: "alice".into(),
                role: "operator".into(),
                kind: "api".into(),
                action: "POST /v1/sandboxes/{id}/stop".into(),
                target: Some(format!("SBX-{seq}")),
                sandbox_id: Some(format!("SBX-{seq}")),
                outcome: "200".into(),
                details: serde_json::json!({"n": seq}),
                prev_hash: prev.clone(),
                hash: String::new(),
            };
            let details = e.details.to_string();
            e.hash = event_hash(&HashInput::of(&e, &details));
            prev.clone_from(&e.hash);
            e
        })
        .collect()
}

/// A controller serving `events` `size` at a time, as `GET /v1/audit?after_seq=` does;
/// records the `after_seq` of every call in `calls`.
fn pages(
    events: Vec<AuditEvent>,
    size: usize,
    calls: &mut Vec<Option<i64>>,
) -> impl FnMut(Option<i64>) -> std::future::Ready<anyhow::Result<ListAuditResponse>> + '_ {
    move |after| {
        calls.push(after);
        let page: Vec<AuditEvent> = events
            .iter()
            .filter(|e| after.is_none_or(|a| e.seq > a))
            .take(size)
            .cloned()
            .collect();
        let more = events
            .iter()
            .any(|e| page.last().is_some_and(|last| e.seq > last.seq));
        let next_after_seq = if more {
            page.last().map(|e| e.seq)
        } else {
            None
        };
        std::future::ready(Ok(ListAuditResponse {
            events: page,
            next_after_seq,
        }))
    }
}

async fn verify(events: Vec<AuditEvent>, size: usize) -> (Verdict, Vec<Option<i64>>) {
    let mut calls = Vec::new();
    let verdict = verify_chain(pages(events, size, &mut calls))
        .await
        .expect("the fake controller answers");
    (verdict, calls)
}

#[tokio::test]
async fn an_intact_chain_verifies_across_pages() {
    let events = chain(5);
    let head = events[4].hash.clone();
    let (v, calls) = verify(events, 2).await;
    assert_eq!(calls, [None, Some(2), Some(4)]);
    assert!(v.ok);
    assert_eq!(v.events_checked, 5);
    assert_eq!(v.head, head);
    assert_eq!(v.broken_at, None);
    assert_eq!(v.exit_code(), ExitCode::SUCCESS);
    assert_eq!(
        v.text(),
        format!("audit chain OK: 5 events, head {}", &head[..HEAD_PREFIX])
    );
}

#[tokio::test]
async fn an_empty_trail_is_intact() {
    let (v, calls) = verify(Vec::new(), 1000).await;
    assert_eq!(calls, [None]);
    assert!(v.ok);
    assert_eq!(v.events_checked, 0);
    assert_eq!(v.head, GENESIS);
}

#[tokio::test]
async fn an_edited_event_is_reported_with_its_seq() {
    let mut events = chain(7);
    events[3].outcome = "403".into();
    let (v, calls) = verify(events, 3).await;
    // The walk stops on the page that holds the edit.
    assert_eq!(calls, [None, Some(3)]);
    assert!(!v.ok);
    assert_eq!(v.broken_at, Some(4));
    assert_eq!(v.events_checked, 3);
    assert_eq!(v.exit_code(), ExitCode::FAILURE);
    let reason = v.reason.clone().expect("a reason");
    assert!(reason.starts_with("its hash does not match"), "{reason}");
    let text = v.text();
    let first = text.lines().next().expect("a line");
    assert_eq!(first, format!("audit chain BROKEN at event 4: {reason}"));
    assert!(text.contains("outcome: 403"), "{text}");
    assert!(text.contains("target:  SBX-4"), "{text}");
    assert!(text.contains("actor:   alice (operator)"), "{text}");
    assert!(
        text.contains("action:  POST /v1/sandboxes/{id}/stop"),
        "{text}"
    );
    let json = serde_json::to_value(&v).expect("json");
    assert_eq!(
        json,
        serde_json::json!({
            "ok": false,
            "events_checked": 3,
            "head": v.head,
            "broken_at": 4,
            "reason": reason,
        })
    );
}

#[tokio::test]
async fn a_rehashed_edit_and_a_removed_event_break_the_links() {
    let mut events = chain(4);
    events[1].actor = "mallory".into();
    let details = events[1].details.to_string();
    events[1].hash = event_hash(&HashInput::of(&events[1], &details));
    let (v, _) = verify(events, 1000).await;
    assert_eq!(v.broken_at, Some(3));
    assert!(
        v.reason
            .as_deref()
            .is_some_and(|r| r.starts_with("prev_hash does not match event 2")),
        "{v:?}"
    );

    let mut events = chain(4);
    events.remove(2);
    let (v, _) = verify(events, 2).await;
    assert_eq!(v.broken_at, Some(4));
    assert_eq!(
        v.reason.as_deref(),
        Some("event 4 follows event 2: events are missing")
    );
}

#[tokio::test]
async fn paging_that_does_not_advance_is_an_error() {
    let events = chain(2);
    // The second page says to read on after event 1 again: a loop, not a trail.
    let err = verify_chain(|after| {
        let events = match after {
            None => events[..1].to_vec(),
            Some(_) => events[1..].to_vec(),
        };
        std::future::ready(Ok(ListAuditResponse {
            events,
            next_after_seq: Some(1),
        }))
    })
    .await
    .expect_err("the walk must stop");
    assert!(err.to_string().contains("does not advance"), "{err}");

    // An empty page ends the walk, whatever it says about more.
    let v = verify_chain(|after| {
        std::future::ready(Ok(ListAuditResponse {
            events: if after.is_none() {
                chain(1)
            } else {
                Vec::new()
            },
            next_after_seq: Some(1),
        }))
    })
    .await
    .expect("ends");
    assert!(v.ok);
    assert_eq!(v.events_checked, 1);

    // A failed page read is the command's error, not a verdict.
    let failed = verify_chain(|_| {
        std::future::ready(Err::<ListAuditResponse, _>(anyhow::anyhow!("HTTP 403")))
    })
    .await;
    assert!(failed.is_err());
}

#[test]
fn list_flags_build_the_query() {
    let cli = Cli::try_parse_from([
        "fluidctl",
        "audit",
        "list",
        "--sandbox",
        "SBX-1",
        "--actor",
        "ci",
        "--kind",
        "api",
        "--since",
        "2025-03-01T13:00:00+01:00",
        "--limit",
        "1000",
    ])
    .expect("parses");
    let Command::Audit(AuditCmd::List(a)) = cli.command else {
        panic!("audit list")
    };
    assert_eq!(
        a.to_query().to_query(),
        "sandbox_id=SBX-1&actor=ci&kind=api&since=2025-03-01T12%3A00%3A00Z&limit=1000"
    );
    for bad in [
        ["--limit", "1001"],
        ["--limit", "0"],
        ["--since", "yesterday"],
    ] {
        let args = ["fluidctl", "audit", "list"].into_iter().chain(bad);
        assert!(Cli::try_parse_from(args).is_err(), "{bad:?}");
    }
    let cli = Cli::try_parse_from(["fluidctl", "audit", "verify", "--json"]).expect("parses");
    assert!(matches!(cli.command, Command::Audit(AuditCmd::Verify)));
}

#[test]
fn head_prefixes_are_short() {
    assert_eq!(prefix(GENESIS, 4), "0000");
    assert_eq!(prefix("ab", 16), "ab");
}
