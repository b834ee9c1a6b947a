//! The audit events the store writes itself (sandbox state changes, commands), a
//! sandbox's read-only flag and approved over-commit reservations, on both dialects
//! like [`super::tests_trust`].

use std::sync::Arc;

use chrono::{Duration, Utc};
use fluid_client::types::SandboxState;

use super::tests::reservation;
use super::tests_trust::{Raw, all_audit, audit, both, online_host, sha256_hex, verify};
use super::*;

both!(
    state_changes_are_audited,
    commands_are_audited,
    read_only_flag,
    overcommit_reservation,
);

async fn state_changes_are_audited(store: Arc<dyn Store>, _raw: &Raw) {
    let s = &*store;
    online_host(s, 8, 8192).await;
    let sbx = s
        .reserve(&reservation(1, "h1", 2, 1024))
        .await
        .expect("reserve");
    let of_sandbox = || {
        audit(
            s,
            AuditFilter {
                sandbox_id: Some(sbx.id.clone()),
                limit: 100,
                ..Default::default()
            },
        )
    };
    let events = of_sandbox().await;
    assert_eq!(events.len(), 1);
    let created = &events[0];
    assert_eq!(
        (
            created.kind.as_str(),
            created.action.as_str(),
            created.outcome.as_str(),
            created.actor.as_str(),
            created.role.as_str(),
            created.target.as_deref(),
        ),
        (
            "state",
            "CREATED",
            "CREATED",
            "controller",
            "system",
            Some(sbx.id.as_str())
        )
    );
    assert_eq!(
        created.details,
        serde_json::json!({"host": "h1", "cpu": 2, "memory_mb": 1024, "agent_id": "odd",
            "allow_overcommit": false})
    );

    let up = |state: Option<SandboxState>, expect: Option<SandboxState>, error: Option<&str>| {
        let u = SandboxUpdate {
            state,
            expect_state: expect,
            error: error.map(|e| Some(e.to_owned())),
            ip_address: Some(Some("10.0.0.2".into())),
            ..Default::default()
        };
        let id = sbx.id.clone();
        async move { s.update_sandbox(&id, &u, Utc::now()).await.expect("update") }
    };
    let r = up(
        Some(SandboxState::Starting),
        Some(SandboxState::Created),
        None,
    )
    .await;
    assert_eq!(r.expect("row").state, SandboxState::Starting);
    // Same state, no state, a stale expectation: no event.
    assert!(up(Some(SandboxState::Starting), None, None).await.is_some());
    assert!(up(None, None, None).await.is_some());
    assert!(
        up(
            Some(SandboxState::Running),
            Some(SandboxState::Stopped),
            None
        )
        .await
        .is_none()
    );
    let missing = s
        .update_sandbox(
            "SBX-missing000",
            &SandboxUpdate {
                state: Some(SandboxState::Running),
                ..Default::default()
            },
            Utc::now(),
        )
        .await
        .expect("update");
    assert!(missing.is_none());
    let r = up(Some(SandboxState::Error), None, Some("disk full")).await;
    assert_eq!(r.expect("row").error.as_deref(), Some("disk full"));

    let events = of_sandbox().await;
    let summary: Vec<_> = events
        .iter()
        .map(|e| (e.action.as_str(), e.details.clone()))
        .collect();
    assert_eq!(
        summary,
        [
            ("CREATED", created.details.clone()),
            (
                "STARTING",
                serde_json::json!({"from": "CREATED", "to": "STARTING", "error": null})
            ),
            (
                "ERROR",
                serde_json::json!({"from": "STARTING", "to": "ERROR", "error": "disk full"})
            ),
        ]
    );
    assert_eq!(
        all_audit(s).await.len(),
        3,
        "nothing for the missing sandbox"
    );
    assert_eq!(verify(&all_audit(s).await), Ok(3));
}

fn command(id: &str, sandbox_id: &str, status: &str, text: &str) -> CommandRecord {
    CommandRecord {
        id: id.into(),
        sandbox_id: sandbox_id.into(),
        agent_id: "odd".into(),
        kind: "command".into(),
        command: text.into(),
        user: "root".into(),
        workdir: None,
        env_json: "{}".into(),
        status: CommandStatus::parse(status).expect("a command status"),
        stdout: String::new(),
        stderr: if status == "denied" {
            "refused by policy".into()
        } else {
            String::new()
        },
        exit_code: None,
        timed_out: false,
        truncated: false,
        error: None,
        started_at: Utc::now(),
        ended_at: (status != "running").then(Utc::now),
        duration_ms: None,
        output_expired: false,
    }
}

async fn commands_are_audited(store: Arc<dyn Store>, _raw: &Raw) {
    let s = &*store;
    online_host(s, 8, 8192).await;
    let sbx = s
        .reserve(&reservation(1, "h1", 1, 512))
        .await
        .expect("reserve");
    let commands = || async {
        audit(
            s,
            AuditFilter {
                kind: Some("command".into()),
                limit: 100,
                ..Default::default()
            },
        )
        .await
    };
    let run = command("CMD-aaaaaaaaaa", &sbx.id, "running", "echo hi");
    s.insert_command(&run).await.expect("insert");
    assert!(
        commands().await.is_empty(),
        "a running command is audited when it ends"
    );
    let end = CommandEnd {
        status: CommandStatus::Completed,
        stdout: "hi\n".into(),
        stderr: "warn\n".into(),
        exit_code: Some(0),
        timed_out: false,
        truncated: true,
        error: None,
        ended_at: Utc::now(),
        duration_ms: Some(12),
    };
    s.finish_command(&run.id, &end)
        .await
        .expect("finish")
        .expect("was running");
    assert!(
        s.finish_command(&run.id, &end)
            .await
            .expect("again")
            .is_none()
    );

    let long: String = "é".repeat(600);
    let denied = command("CMD-bbbbbbbbbb", &sbx.id, "denied", &long);
    s.insert_command(&denied).await.expect("insert denied");
    let lost = command("CMD-cccccccccc", &sbx.id, "running", "sleep 1000");
    s.insert_command(&lost).await.expect("insert");
    assert_eq!(
        s.interrupt_running_commands(Utc::now())
            .await
            .expect("interrupt"),
        1
    );

    let events = commands().await;
    assert_eq!(events.len(), 3);
    let (done, refused, interrupted) = (&events[0], &events[1], &events[2]);
    assert_eq!(
        (
            done.action.as_str(),
            done.target.as_deref(),
            done.sandbox_id.as_deref(),
            done.outcome.as_str(),
            done.actor.as_str(),
            done.role.as_str()
        ),
        (
            "echo hi",
            Some(run.id.as_str()),
            Some(sbx.id.as_str()),
            "exit 0",
            "controller",
            "system"
        )
    );
    assert_eq!(
        done.details,
        serde_json::json!({
            "command_id": run.id, "kind": "command", "user": "root", "status": "completed",
            "exit_code": 0, "timed_out": false, "truncated": true, "duration_ms": 12,
            "stdout_sha256": sha256_hex("hi\n"), "stderr_sha256": sha256_hex("warn\n"),
        })
    );
    assert_eq!(refused.action.chars().count(), 512);
    assert!(long.starts_with(&refused.action));
    assert_eq!(refused.outcome, "denied");
    assert_eq!(refused.details["exit_code"], serde_json::Value::Null);
    assert_eq!(refused.details["stdout_sha256"], sha256_hex(""));
    assert_eq!(
        refused.details["stderr_sha256"],
        sha256_hex("refused by policy")
    );
    assert_eq!(
        (interrupted.action.as_str(), interrupted.outcome.as_str()),
        ("sleep 1000", "interrupted")
    );
    assert_eq!(interrupted.target.as_deref(), Some(lost.id.as_str()));
    // After the sandbox's CREATED event.
    assert_eq!(verify(&all_audit(s).await), Ok(4));
}

async fn read_only_flag(store: Arc<dyn Store>, _raw: &Raw) {
    let s = &*store;
    online_host(s, 8, 8192).await;
    let sbx = s
        .reserve(&reservation(1, "h1", 1, 512))
        .await
        .expect("reserve");
    assert!(!sbx.read_only && !sbx.to_api().read_only);
    let later = sbx.updated_at + Duration::seconds(3);
    let r = s
        .set_sandbox_read_only(&sbx.id, true, later)
        .await
        .expect("set")
        .expect("exists");
    assert!(r.read_only && r.to_api().read_only);
    assert_eq!(r.updated_at, later);
    let got = s.get_sandbox(&sbx.id).await.expect("get").expect("exists");
    assert!(got.read_only);
    let (listed, _) = s
        .list_sandboxes(&SandboxFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("list");
    assert!(listed[0].read_only);
    // Other updates keep it.
    let up = s
        .update_sandbox(
            &sbx.id,
            &SandboxUpdate {
                state: Some(SandboxState::Running),
                ..Default::default()
            },
            Utc::now(),
        )
        .await
        .expect("update")
        .expect("row");
    assert!(up.read_only);
    let r = s
        .set_sandbox_read_only(&sbx.id, false, Utc::now())
        .await
        .expect("set")
        .expect("exists");
    assert!(!r.read_only);
    assert!(
        s.set_sandbox_read_only("SBX-missing000", true, Utc::now())
            .await
            .expect("set")
            .is_none()
    );
    // The JSON of a sandbox without the field (an older controller) reads as false.
    let mut json = serde_json::to_value(r.to_api()).expect("json");
    json.as_object_mut().expect("object").remove("read_only");
    let old: fluid_client::types::Sandbox = serde_json::from_value(json).expect("old shape");
    assert!(!old.read_only);
}

async fn overcommit_reservation(store: Arc<dyn Store>, _raw: &Raw) {
    let s = &*store;
    online_host(s, 1, 1024).await;
    s.reserve(&reservation(0, "h1", 1, 1024))
        .await
        .expect("fills the host");
    let e = s
        .reserve(&reservation(1, "h1", 1, 512))
        .await
        .expect_err("full");
    assert!(matches!(e, ReserveError::NoRoom(_)), "{e}");
    let approved = Reservation {
        allow_overcommit: true,
        max_owned: None,
        ..reservation(1, "h1", 8, 4096)
    };
    let r = s.reserve(&approved).await.expect("approved over-commit");
    assert_eq!((r.cpus, r.memory_mb), (8, 4096));
    let events = audit(
        s,
        AuditFilter {
            sandbox_id: Some(r.id.clone()),
            limit: 10,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(events[0].details["allow_overcommit"], true);
    assert_eq!(
        s.host_usage().await.expect("usage")["h1"],
        HostUsage {
            cpus: 9,
            memory_mb: 5120,
            sandboxes: 2
        }
    );

    // Still: a live name is unique, the host must exist and be online.
    let dup = Reservation {
        allow_overcommit: true,
        max_owned: None,
        ..reservation(2, "h1", 1, 128)
    };
    let dup = Reservation {
        name: r.name.clone(),
        ..dup
    };
    let e = s.reserve(&dup).await.expect_err("dup name");
    assert!(matches!(e, ReserveError::DuplicateName(_)), "{e}");
    let e = s
        .reserve(&Reservation {
            allow_overcommit: true,
            max_owned: None,
            ..reservation(3, "nope", 1, 128)
        })
        .await
        .expect_err("no host");
    assert!(matches!(e, ReserveError::NoRoom(_)), "{e}");
    s.record_missed_beat("h1", "down", 1)
        .await
        .expect("offline");
    let e = s
        .reserve(&Reservation {
            allow_overcommit: true,
            max_owned: None,
            ..reservation(4, "h1", 1, 128)
        })
        .await
        .expect_err("offline");
    assert!(e.to_string().contains("offline"), "{e}");
    assert_eq!(
        verify(&all_audit(s).await),
        Ok(2),
        "refused ones leave no event"
    );
}
