//! The runner's mechanics, with small shell scripts standing in for ansible-playbook.
//! (The real one is exercised in `tests/ansible_cli.rs`.)

use std::os::unix::fs::PermissionsExt;
use std::time::Instant;

use super::config::inventory_json;
use super::*;

fn script(dir: &Path, body: &str) -> PathBuf {
    let p = dir.join("fake-ansible-playbook");
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    p
}

fn host() -> InventoryHost {
    InventoryHost {
        name: "sbx-1".into(),
        address: "192.168.122.10".into(),
        port: 22,
        user: "root".into(),
        private_key: Some("/var/lib/fluid/keys/id_ed25519".into()),
        certificate: Some("/var/lib/fluid/keys/id_ed25519-cert.pub".into()),
        ssh_common_args: vec![
            "-o".into(),
            "StrictHostKeyChecking=no".into(),
            "-o".into(),
            "ProxyCommand=ip netns exec fluid-test nc %h %p".into(),
        ],
        ..InventoryHost::default()
    }
}

fn spec(dir: &Path, binary: PathBuf, timeout: Duration) -> RunSpec {
    RunSpec {
        ansible_playbook: binary,
        playbook_path: dir.join("site.yml"),
        hosts: vec![host()],
        check: true,
        diff: true,
        work_dir: dir.join("work"),
        timeout,
        extra_args: vec!["--tags".into(), "fluid_review".into()],
        confine: None,
        read_only: Vec::new(),
    }
}

async fn collect(mut rx: mpsc::Receiver<String>) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(l) = rx.recv().await {
        out.push(l);
    }
    out
}

#[test]
fn inventory_is_json_with_quoted_ssh_args() {
    let text = inventory_json(&[host()]).expect("inventory");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    let h = &v["all"]["hosts"]["sbx-1"];
    assert_eq!(h["ansible_host"], "192.168.122.10");
    assert_eq!(h["ansible_port"], 22);
    assert_eq!(h["ansible_user"], "root");
    assert_eq!(
        h["ansible_ssh_private_key_file"],
        "/var/lib/fluid/keys/id_ed25519"
    );
    assert_eq!(
        h["ansible_ssh_common_args"],
        "-o IdentitiesOnly=yes -o CertificateFile=/var/lib/fluid/keys/id_ed25519-cert.pub \
         -o StrictHostKeyChecking=no -o 'ProxyCommand=ip netns exec fluid-test nc %h %p'"
    );
    assert!(h.get("ansible_connection").is_none());

    let local = InventoryHost {
        name: "localhost".into(),
        address: "127.0.0.1".into(),
        port: 22,
        user: "root".into(),
        connection: Some("local".into()),
        python_interpreter: Some("/usr/bin/python3".into()),
        ..InventoryHost::default()
    };
    let v: serde_json::Value =
        serde_json::from_str(&inventory_json(&[local]).expect("inventory")).expect("json");
    assert_eq!(
        v["all"]["hosts"]["localhost"]["ansible_connection"],
        "local"
    );
    assert!(
        v["all"]["hosts"]["localhost"]
            .get("ansible_ssh_common_args")
            .is_none()
    );
}

#[test]
fn inventory_refuses_unsafe_values() {
    type Change = Box<dyn Fn(&mut InventoryHost)>;
    let cases: Vec<Change> = vec![
        Box::new(|h| h.name = "a b".into()),
        Box::new(|h| h.name = String::new()),
        Box::new(|h| h.address = "{{ lookup('pipe','id') }}".into()),
        Box::new(|h| h.address = "host\nx".into()),
        Box::new(|h| h.user = "root;id".into()),
        Box::new(|h| h.ssh_common_args = vec!["-oProxyCommand={{ x }}".into()]),
        Box::new(|h| h.ssh_common_args = vec!["a\nb".into()]),
        Box::new(|h| h.private_key = Some("/k/{% x %}".into())),
        Box::new(|h| h.connection = Some("local; id".into())),
    ];
    for (i, change) in cases.iter().enumerate() {
        let mut h = host();
        change(&mut h);
        assert!(
            matches!(inventory_json(&[h]), Err(RunError::Invalid(_))),
            "case {i}"
        );
    }
    assert!(matches!(inventory_json(&[]), Err(RunError::Invalid(_))));
    assert!(matches!(
        inventory_json(&[host(), host()]),
        Err(RunError::Invalid(_))
    ));
}

#[test]
fn shell_quoting() {
    assert_eq!(
        sh_quote("StrictHostKeyChecking=no"),
        "StrictHostKeyChecking=no"
    );
    assert_eq!(sh_quote(""), "''");
    assert_eq!(sh_quote("a b"), "'a b'");
    assert_eq!(sh_quote("it's"), r#"'it'"'"'s'"#);
    assert_eq!(sh_quote("$HOME"), "'$HOME'");
}

#[tokio::test]
async fn streams_both_outputs_and_reports_the_exit_code() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = script(
        dir.path(),
        r#"echo "args: $*"
echo "config: $ANSIBLE_CONFIG nocolor=$ANSIBLE_NOCOLOR force=$ANSIBLE_FORCE_COLOR"
echo "cwd: $(pwd)"
echo "to stderr" >&2
printf 'no newline at the end'
exit 3"#,
    );
    let (tx, rx) = mpsc::channel(16);
    let s = spec(dir.path(), bin, Duration::from_secs(30));
    let collector = tokio::spawn(collect(rx));
    let outcome = run(&s, tx).await.expect("run");
    let lines = collector.await.expect("lines");
    assert_eq!(
        outcome,
        RunOutcome {
            exit_code: Some(3),
            timed_out: false,
            dropped_lines: 0
        }
    );
    assert!(!outcome.success());
    let work = dir.path().join("work");
    let inv = work.join("inventory.json");
    let all = lines.join("\n");
    assert!(
        all.contains(&format!(
            "args: -i {} --check --diff --tags fluid_review {}",
            inv.display(),
            dir.path().join("site.yml").display()
        )),
        "{all}"
    );
    assert!(
        all.contains(&format!(
            "config: {} nocolor=1 force=0",
            work.join("ansible.cfg").display()
        )),
        "{all}"
    );
    assert!(all.contains(&format!("cwd: {}", work.display())), "{all}");
    assert!(lines.contains(&"to stderr".to_owned()), "{all}");
    assert!(lines.contains(&"no newline at the end".to_owned()), "{all}");
    let cfg = std::fs::read_to_string(work.join("ansible.cfg")).expect("cfg");
    assert!(cfg.contains("retry_files_enabled = False") && cfg.contains("nocows = 1"));
    assert!(inv.is_file());
}

#[tokio::test]
async fn a_slow_receiver_never_blocks_the_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = script(
        dir.path(),
        "i=0; while [ $i -lt 20000 ]; do echo \"line $i\"; i=$((i+1)); done",
    );
    let (tx, mut rx) = mpsc::channel(1);
    let s = spec(dir.path(), bin, Duration::from_secs(60));
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Some(l) = rx.recv().await {
            got.push(l);
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        got
    });
    let started = Instant::now();
    let outcome = run(&s, tx).await.expect("run");
    let got = reader.await.expect("reader");
    assert_eq!(outcome.exit_code, Some(0));
    let markers: Vec<&String> = got.iter().filter(|l| l.starts_with("[fluid: ")).collect();
    let real = got.len() - markers.len();
    if outcome.dropped_lines > 0 {
        assert!(!markers.is_empty());
    }
    assert_eq!(
        real as u64 + outcome.dropped_lines,
        20000,
        "{:?}",
        started.elapsed()
    );
    assert_eq!(got.first().map(String::as_str), Some("line 0"));
}

#[tokio::test]
async fn a_receiver_that_is_gone_does_not_block_either() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = script(dir.path(), "seq 1 50000; echo done");
    let (tx, rx) = mpsc::channel(1);
    drop(rx);
    let s = spec(dir.path(), bin, Duration::from_secs(60));
    let outcome = run(&s, tx).await.expect("run");
    assert_eq!(outcome.exit_code, Some(0));
}

#[tokio::test]
async fn the_timeout_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pidfile = dir.path().join("child.pid");
    let bin = script(
        dir.path(),
        &format!(
            "echo started; sleep 300 & echo $! > {}; wait",
            pidfile.display()
        ),
    );
    let (tx, rx) = mpsc::channel(16);
    let collector = tokio::spawn(collect(rx));
    let started = Instant::now();
    let outcome = run(&spec(dir.path(), bin, Duration::from_millis(1500)), tx)
        .await
        .expect("run");
    assert!(outcome.timed_out);
    assert!(!outcome.success());
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(collector.await.expect("lines"), vec!["started".to_owned()]);
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .expect("pid")
        .trim()
        .parse()
        .expect("pid");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The grandchild (`sleep 300`) is gone too (a zombie at most, until init reaps it).
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(stat.is_empty() || stat.contains(") Z "), "{stat}");
}

#[tokio::test]
async fn long_lines_are_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = script(
        dir.path(),
        "head -c 200000 /dev/zero | tr '\\0' x; echo; echo after",
    );
    let (tx, rx) = mpsc::channel(16);
    let collector = tokio::spawn(collect(rx));
    run(&spec(dir.path(), bin, Duration::from_secs(30)), tx)
        .await
        .expect("run");
    let lines = collector.await.expect("lines");
    assert_eq!(
        lines.len(),
        2,
        "{:?}",
        lines.iter().map(String::len).collect::<Vec<_>>()
    );
    assert!(lines[0].starts_with("xxx") && lines[0].ends_with("[line cut]"));
    assert!(lines[0].len() < MAX_LINE_BYTES + 32);
    assert_eq!(lines[1], "after");
}

#[tokio::test]
async fn a_missing_binary_is_not_installed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (tx, _rx) = mpsc::channel(16);
    let s = spec(
        dir.path(),
        dir.path().join("no-such-ansible-playbook"),
        Duration::from_secs(5),
    );
    let e = run(&s, tx).await.expect_err("missing");
    assert!(matches!(e, RunError::NotInstalled { .. }), "{e}");
    assert!(e.to_string().contains("pip install ansible-core"), "{e}");
    let e = version(Path::new("/nonexistent/ansible-playbook"))
        .await
        .expect_err("missing");
    assert!(matches!(e, RunError::NotInstalled { .. }));
    let e = syntax_check(
        Path::new("/nonexistent/ansible-playbook"),
        Path::new("/x.yml"),
    )
    .await
    .expect_err("missing");
    assert!(matches!(e, RunError::NotInstalled { .. }));
}

#[tokio::test]
async fn version_and_syntax_check_read_the_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = script(
        dir.path(),
        r#"case "$1" in
--version) echo "ansible-playbook [core 2.19.4]"; echo "  config file = None";;
--syntax-check) if [ "$4" = /good.yml ]; then echo "playbook: /good.yml"; else echo "ERROR! bad YAML" >&2; exit 4; fi;;
esac"#,
    );
    assert_eq!(version(&bin).await.expect("version"), "2.19.4");
    syntax_check(&bin, Path::new("/good.yml"))
        .await
        .expect("good");
    let e = syntax_check(&bin, Path::new("/bad.yml"))
        .await
        .expect_err("bad");
    match e {
        RunError::SyntaxCheck { output } => assert_eq!(output, "ERROR! bad YAML"),
        other => panic!("{other}"),
    }
}
