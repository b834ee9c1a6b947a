use super::*;

fn create_req() -> pb::CreateSandboxRequest {
    pb::CreateSandboxRequest {
        id: "SBX-0123abcd".into(),
        name: "web-1".into(),
        image: "debian-12".into(),
        cpus: 1,
        memory_mb: 512,
        start: true,
        ssh_user_ca_keys: Vec::new(),
        egress: None,
        from_snapshot: None,
        fork_of_running: String::new(),
    }
}

#[test]
fn a_create_forks_a_snapshot_or_a_running_sandbox_not_both() {
    let live = pb::CreateSandboxRequest {
        fork_of_running: "SBX-0123abce".into(),
        ..create_req()
    };
    let c = CreateSandbox::try_from(live.clone()).expect("a live fork");
    assert_eq!(
        c.fork_of_running.as_ref().map(SandboxId::as_str),
        Some("SBX-0123abce")
    );
    assert_eq!(
        pb::CreateSandboxRequest::from(&c).fork_of_running,
        "SBX-0123abce",
        "round trip"
    );
    let bad = pb::CreateSandboxRequest {
        fork_of_running: "../etc".into(),
        ..create_req()
    };
    assert_eq!(
        CreateSandbox::try_from(bad).expect_err("bad id").field,
        "fork_of_running"
    );
    let both = pb::CreateSandboxRequest {
        from_snapshot: Some(pb::SnapshotRef {
            sandbox_id: "SBX-0123abce".into(),
            name: "base".into(),
        }),
        ..live
    };
    let e = CreateSandbox::try_from(both).expect_err("both");
    assert!(e.to_string().contains("not both"), "{e}");
}

#[test]
fn good_create_passes() {
    let c = CreateSandbox::try_from(create_req()).expect("valid");
    assert_eq!(c.id.as_str(), "SBX-0123abcd");
    assert_eq!(c.memory_mb, 512);
}

#[test]
fn bad_ids_are_refused() {
    for id in [
        "",
        "SBX-",
        "SBX-short",
        "sbx-0123abcd",
        "SBX-0123ABCD",
        "SBX-0123abc/",
        "../../etc",
    ] {
        let r = pb::CreateSandboxRequest {
            id: id.into(),
            ..create_req()
        };
        let e = CreateSandbox::try_from(r).expect_err(id);
        assert_eq!(e.field, "id");
    }
}

#[test]
fn bad_names_are_refused() {
    let long = "a".repeat(64);
    for name in [
        "",
        "-x",
        ".hidden",
        "a b",
        "a/b",
        "x;rm",
        long.as_str(),
        "ü",
    ] {
        let r = pb::CreateSandboxRequest {
            name: name.into(),
            ..create_req()
        };
        assert_eq!(CreateSandbox::try_from(r).expect_err(name).field, "name");
    }
}

#[test]
fn sizes_are_bounded() {
    for (cpus, mem, field) in [
        (0, 512, "cpus"),
        (129, 512, "cpus"),
        (1, 0, "memory_mb"),
        (1, 1_000_000_000, "memory_mb"),
        (1, 64, "memory_mb"),
    ] {
        let r = pb::CreateSandboxRequest {
            cpus,
            memory_mb: mem,
            ..create_req()
        };
        assert_eq!(CreateSandbox::try_from(r).expect_err(field).field, field);
    }
}

#[test]
fn unknown_state_is_refused() {
    assert!(ObservedState::try_from(0).is_err());
    assert!(ObservedState::try_from(99).is_err());
    assert_eq!(ObservedState::try_from(2), Ok(ObservedState::Running));
}

#[test]
fn reported_ip_must_parse() {
    let s = pb::Sandbox {
        id: "SBX-0123abcd".into(),
        name: "n".into(),
        image: "i".into(),
        state: 2,
        ip_address: "not-an-ip".into(),
        ..Default::default()
    };
    assert_eq!(
        SandboxInfo::try_from(s).expect_err("ip").field,
        "ip_address"
    );
}

#[test]
fn start_path_is_optional_and_checked() {
    let reported = |start_path: &str| {
        SandboxInfo::try_from(pb::Sandbox {
            id: "SBX-0123abcd".into(),
            name: "n".into(),
            image: "i".into(),
            state: 2,
            start_path: start_path.into(),
            ..Default::default()
        })
    };
    assert_eq!(reported("").expect("empty").start_path, None);
    for (wire, want) in [
        ("boot", StartPath::Boot),
        ("restore", StartPath::Restore),
        ("fork", StartPath::Fork),
        ("pool", StartPath::Pool),
    ] {
        assert_eq!(reported(wire).expect(wire).start_path, Some(want));
        assert_eq!(want.as_str(), wire);
        assert_eq!(StartPath::parse("start_path", wire), Ok(want));
    }
    for bad in ["Boot", "warm", " boot", "boot\n"] {
        let e = reported(bad).expect_err(bad);
        assert_eq!(e.field, "start_path", "{bad:?}");
        assert!(e.reason.contains("not a start path"), "{e}");
    }
}

#[test]
fn waits_are_bounded() {
    let r = pb::WaitForIpRequest {
        id: "SBX-0123abcd".into(),
        timeout_seconds: 100_000,
    };
    assert!(WaitForIp::try_from(r).is_err());
}

fn exec_req() -> pb::ExecRequest {
    pb::ExecRequest {
        sandbox_id: "SBX-0123abcd".into(),
        command_id: "CMD-0123abcd".into(),
        command: "echo hi".into(),
        output_cap_bytes: 1024,
        ssh_certificate: "ssh-ed25519-cert-v01@openssh.com AAAA".into(),
        ..Default::default()
    }
}

#[test]
fn good_exec_defaults_to_root() {
    let e = Exec::try_from(exec_req()).expect("valid");
    assert_eq!(e.user, "root");
    assert_eq!(e.timeout_seconds, None);
}

#[test]
fn bad_execs_are_refused() {
    let cases: Vec<(pb::ExecRequest, &str)> = vec![
        (
            pb::ExecRequest {
                command: " ".into(),
                ..exec_req()
            },
            "command",
        ),
        (
            pb::ExecRequest {
                command: "a\0b".into(),
                ..exec_req()
            },
            "command",
        ),
        (
            pb::ExecRequest {
                command_id: "x".into(),
                ..exec_req()
            },
            "command_id",
        ),
        (
            pb::ExecRequest {
                user: "Root".into(),
                ..exec_req()
            },
            "user",
        ),
        (
            pb::ExecRequest {
                user: "a;b".into(),
                ..exec_req()
            },
            "user",
        ),
        (
            pb::ExecRequest {
                workdir: "tmp".into(),
                ..exec_req()
            },
            "workdir",
        ),
        (
            pb::ExecRequest {
                env: [("A;B".into(), "x".into())].into(),
                ..exec_req()
            },
            "env",
        ),
        (
            pb::ExecRequest {
                env: [("1A".into(), "x".into())].into(),
                ..exec_req()
            },
            "env",
        ),
        (
            pb::ExecRequest {
                output_cap_bytes: 0,
                ..exec_req()
            },
            "output_cap_bytes",
        ),
        (
            pb::ExecRequest {
                timeout_seconds: 100_000,
                ..exec_req()
            },
            "timeout_seconds",
        ),
        (
            pb::ExecRequest {
                ssh_certificate: String::new(),
                ..exec_req()
            },
            "ssh_certificate",
        ),
    ];
    for (req, field) in cases {
        assert_eq!(Exec::try_from(req).expect_err(field).field, field);
    }
}

#[test]
fn env_values_are_kept_literally() {
    let weird = "a'b\"c $(id) `id`\nnext";
    let r = pb::ExecRequest {
        env: [("X".into(), weird.into())].into(),
        ..exec_req()
    };
    let e = Exec::try_from(r).expect("valid");
    assert_eq!(e.env, vec![("X".to_owned(), weird.to_owned())]);
}

#[test]
fn paths_must_be_absolute_and_normal() {
    for ok in ["/", "/etc/hosts", "/a b/c"] {
        assert!(check_abs_path("path", ok).is_ok(), "{ok}");
    }
    for bad in [
        "", "etc", "/etc/", "/a//b", "/a/./b", "/a/../b", "/..", "/a\0b",
    ] {
        assert!(check_abs_path("path", bad).is_err(), "{bad:?}");
    }
}

#[test]
fn ca_keys_are_checked() {
    let good =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl fluid-ca";
    let r = pb::CreateSandboxRequest {
        ssh_user_ca_keys: vec![good.into()],
        ..create_req()
    };
    assert!(CreateSandbox::try_from(r).is_ok());
    for bad in [
        "",
        "ssh-ed25519",
        "ssh-ed25519 AAAA\nssh-rsa AAAA",
        "rsa AAAA",
        "ssh-ed25519 $(id)",
    ] {
        let r = pb::CreateSandboxRequest {
            ssh_user_ca_keys: vec![bad.into()],
            ..create_req()
        };
        assert_eq!(
            CreateSandbox::try_from(r).expect_err(bad).field,
            "ssh_user_ca_keys"
        );
    }
}

#[test]
fn attach_open_is_checked() {
    let good = pb::AttachOpen {
        sandbox_id: "SBX-0123abcd".into(),
        session_id: "SES-0123abcd".into(),
        ssh_certificate: "cert".into(),
        ..Default::default()
    };
    let a = AttachOpen::try_from(good.clone()).expect("valid");
    assert_eq!((a.cols, a.rows, a.user.as_str()), (80, 24, "root"));
    let bad = [
        (
            pb::AttachOpen {
                session_id: "x".into(),
                ..good.clone()
            },
            "session_id",
        ),
        (
            pb::AttachOpen {
                term: "x;y".into(),
                ..good.clone()
            },
            "term",
        ),
        (
            pb::AttachOpen {
                size: Some(pb::TerminalSize { cols: 0, rows: 5 }),
                ..good.clone()
            },
            "size",
        ),
        (
            pb::AttachOpen {
                user: "A".into(),
                ..good.clone()
            },
            "user",
        ),
    ];
    for (req, field) in bad {
        assert_eq!(AttachOpen::try_from(req).expect_err(field).field, field);
    }
}
