//! With the real ansible-playbook: generated playbooks pass `--syntax-check`, a
//! playbook with every task keyword does too, and runs against this machine
//! (`ansible_connection=local`) reproduce what the generator was given, byte for byte.
//!
//! Skipped (with a note) when ansible-playbook is not in PATH or
//! /opt/fluid-ansible/bin. Install it with
//! `python3 -m venv /opt/fluid-ansible && /opt/fluid-ansible/bin/pip install ansible-core`.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;
use fluid_ansible::model::unsafe_string;
use fluid_ansible::runner::{InventoryHost, RunOutcome, RunSpec};
use fluid_ansible::{GenerateOptions, PlaybookDoc, RunError, TaskSpec, generate, to_yaml};
use fluid_client::snapshots::{
    CommandEntry, DiffJson, FileEntry, FileMeta, PackageEntry, ServiceEntry,
};
use serde_json::{Value, json};
use tokio::sync::mpsc;

fn ansible() -> Option<PathBuf> {
    let found = fluid_ansible::find_ansible_playbook();
    let present = found.is_some();
    fluid_prereq::available(
        "ansible",
        present,
        "ansible-playbook not found in PATH or /opt/fluid-ansible/bin \
         (python3 -m venv /opt/fluid-ansible && /opt/fluid-ansible/bin/pip install ansible-core)",
    );
    found
}

/// Contents that must arrive exactly as written.
/// (Every YAML-level case is in `ansibles_loader_reads_back_every_string`; these are
/// about what the copy module and templating could do to content.)
const TRICKY: &[&str] = &[
    "yes",
    "",
    "0644",
    "multi\nline",
    "end\n\n\n",
    "crlf\r\nline\r\n",
    "  indented\nfirst\n",
    "trailing spaces  \nx\n",
    "unicodé ✓\n",
    "\u{1b}[0m esc\n",
    "quote ' and \" and \\",
    "{{ lookup('pipe', 'touch /tmp/fluid-ansible-pwned') }}\n",
    "{% if true %}x{% endif %}",
    "{# comment #}",
    "$HOME ${x} %(x)s\n",
];

fn me() -> (String, String) {
    let id = |flag: &str| {
        let out = std::process::Command::new("id")
            .arg(flag)
            .output()
            .expect("id");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    (id("-un"), id("-gn"))
}

fn meta(kind: &str, mode: &str, size: u64, sha: Option<&str>) -> FileMeta {
    let (owner, group) = me();
    FileMeta {
        kind: kind.into(),
        mode: mode.into(),
        owner,
        group,
        uid: 0,
        gid: 0,
        size,
        sha256: sha.map(str::to_owned),
        link_target: None,
    }
}

fn entry(path: &Path, meta: FileMeta) -> FileEntry {
    FileEntry {
        path: path.to_string_lossy().into_owned(),
        meta,
        binary: false,
        package: None,
        conffile_modified: false,
        previous: None,
    }
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn local_host() -> InventoryHost {
    InventoryHost {
        name: "localhost".into(),
        address: "127.0.0.1".into(),
        port: 22,
        user: me().0,
        connection: Some("local".into()),
        python_interpreter: Some("/usr/bin/python3".into()),
        ..InventoryHost::default()
    }
}

async fn run_local(bin: &Path, playbook: &Path, work: &Path, check: bool) -> (RunOutcome, String) {
    let spec = RunSpec {
        ansible_playbook: bin.to_owned(),
        playbook_path: playbook.to_owned(),
        hosts: vec![local_host()],
        check,
        diff: true,
        work_dir: work.to_owned(),
        timeout: Duration::from_secs(300),
        extra_args: vec![],
        confine: None,
        read_only: Vec::new(),
    };
    let (tx, mut rx) = mpsc::channel(64);
    let collector = tokio::spawn(async move {
        let mut lines = Vec::new();
        while let Some(l) = rx.recv().await {
            lines.push(l);
        }
        lines.join("\n")
    });
    let outcome = fluid_ansible::run(&spec, tx).await.expect("run");
    (outcome, collector.await.expect("output"))
}

/// A diff of files under `root` (what a sandbox would show), the texts, and the
/// artefact directory holding the binary.
struct Fixture {
    diff: DiffJson,
    texts: BTreeMap<String, String>,
    opts: GenerateOptions,
    binary: Vec<u8>,
}

fn fixture(root: &Path) -> Fixture {
    let artefacts = root.join("artefacts");
    std::fs::create_dir_all(&artefacts).expect("artefacts");
    let binary: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
    let sha = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    std::fs::write(artefacts.join(sha), &binary).expect("artefact");

    let mut texts = BTreeMap::new();
    let mut added = vec![
        entry(&root.join("t"), meta("dir", "0750", 0, None)),
        entry(&root.join("etc"), meta("dir", "0755", 0, None)),
        entry(&root.join("etc/app"), meta("dir", "0700", 0, None)),
    ];
    for (i, s) in TRICKY.iter().enumerate() {
        let p = root.join(format!("t/{i:02}"));
        added.push(entry(&p, meta("file", "0640", s.len() as u64, Some(sha))));
        texts.insert(path_str(&p), (*s).to_owned());
    }
    let conf = root.join("etc/app/app.conf");
    added.push(entry(&conf, meta("file", "0600", 10, Some(sha))));
    texts.insert(path_str(&conf), "key = value\n".into());
    let mut link = entry(
        &root.join("etc/app/current"),
        meta("symlink", "0777", 0, None),
    );
    link.meta.link_target = Some(path_str(&conf));
    added.push(link);
    let mut bin = entry(
        &root.join("etc/app/tool"),
        meta("file", "0755", 5000, Some(sha)),
    );
    bin.binary = true;
    added.push(bin);

    let attrs = root.join("attrs.txt");
    let mut attrs_entry = entry(&attrs, meta("file", "0600", 3, Some(sha)));
    attrs_entry.previous = Some(meta("file", "0644", 3, Some(sha)));

    let diff = DiffJson {
        files_added: added,
        files_modified: vec![attrs_entry],
        files_removed: vec![
            entry(&root.join("old.txt"), meta("file", "0644", 1, Some(sha))),
            entry(&root.join("olddir"), meta("dir", "0755", 0, None)),
            entry(&root.join("olddir/x"), meta("file", "0644", 1, Some(sha))),
        ],
        commands_run: vec![CommandEntry {
            cmd: format!(
                "curl -s file:///dev/null > {}",
                root.join("review-ran").display()
            ),
            exit_code: Some(0),
            at: Utc::now(),
            id: Some("CMD-1".into()),
        }],
        ..DiffJson::default()
    };
    Fixture {
        diff,
        texts,
        opts: GenerateOptions {
            artefact_dir: artefacts,
            text_limit_bytes: 1024 * 1024,
        },
        binary,
    }
}

fn write_playbook(dir: &Path, name: &str, doc: &PlaybookDoc) -> PathBuf {
    let yaml = to_yaml(doc).expect("yaml");
    let p = dir.join(format!("{name}.yml"));
    std::fs::write(&p, yaml).expect("write playbook");
    p
}

fn prepare_target(root: &Path) {
    std::fs::write(root.join("old.txt"), "x").expect("old");
    std::fs::create_dir_all(root.join("olddir/deeper")).expect("olddir");
    std::fs::write(root.join("olddir/x"), "x").expect("olddir/x");
    std::fs::write(root.join("attrs.txt"), "abc").expect("attrs");
    std::fs::set_permissions(
        root.join("attrs.txt"),
        std::fs::Permissions::from_mode(0o644),
    )
    .expect("chmod");
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .expect("stat")
        .permissions()
        .mode()
        & 0o7777
}

#[tokio::test]
async fn version_is_reported() {
    let Some(bin) = ansible() else { return };
    let v = fluid_ansible::version(&bin).await.expect("version");
    assert!(v.starts_with("2."), "{v}");
    eprintln!("ansible-core {v}");
}

#[tokio::test]
async fn generated_playbooks_pass_the_syntax_check_and_reproduce_the_files() {
    let Some(bin) = ansible() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).expect("root");
    let _ = std::fs::remove_file("/tmp/fluid-ansible-pwned");
    let fx = fixture(&root);
    let g = generate(&fx.diff, &fx.texts, &fx.opts);
    assert_eq!(g.artefacts.len(), 1);
    let doc = PlaybookDoc::from_tasks(
        "files",
        "all",
        false,
        g.tasks.iter().chain(&g.handlers).cloned(),
    );
    let playbook = write_playbook(dir.path(), "files", &doc);
    fluid_ansible::syntax_check(&bin, &playbook)
        .await
        .expect("syntax check");

    // Check mode on a target where only the modified and removed files exist: the
    // copies into directories the playbook has not really created are ignored,
    // nothing is written.
    prepare_target(&root);
    let (outcome, out) = run_local(&bin, &playbook, &dir.path().join("work-check"), true).await;
    assert_eq!(outcome.exit_code, Some(0), "{out}");
    assert!(out.contains("PLAY RECAP"), "{out}");
    assert!(!root.join("t").exists(), "check mode wrote files");
    assert_eq!(mode(&root.join("attrs.txt")), 0o644);
    assert!(root.join("old.txt").exists());

    let (outcome, out) = run_local(&bin, &playbook, &dir.path().join("work-apply"), false).await;
    assert_eq!(outcome.exit_code, Some(0), "{out}");
    for (i, s) in TRICKY.iter().enumerate() {
        let p = root.join(format!("t/{i:02}"));
        let got = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}\n{out}", p.display()));
        assert_eq!(
            String::from_utf8_lossy(&got),
            *s,
            "content of {}",
            p.display()
        );
        assert_eq!(mode(&p), 0o640, "{}", p.display());
    }
    assert!(
        !Path::new("/tmp/fluid-ansible-pwned").exists(),
        "a template in content was evaluated"
    );
    assert_eq!(mode(&root.join("t")), 0o750);
    assert_eq!(mode(&root.join("etc/app")), 0o700);
    assert_eq!(
        std::fs::read_to_string(root.join("etc/app/app.conf")).expect("conf"),
        "key = value\n"
    );
    assert_eq!(mode(&root.join("etc/app/app.conf")), 0o600);
    assert_eq!(
        std::fs::read_link(root.join("etc/app/current")).expect("link"),
        root.join("etc/app/app.conf")
    );
    assert_eq!(
        std::fs::read(root.join("etc/app/tool")).expect("tool"),
        fx.binary
    );
    assert_eq!(mode(&root.join("etc/app/tool")), 0o755);
    assert_eq!(mode(&root.join("attrs.txt")), 0o600);
    assert!(!root.join("old.txt").exists() && !root.join("olddir").exists());
    assert!(
        !root.join("review-ran").exists(),
        "a review task ran without --tags fluid_review"
    );

    // Applied again: nothing changes.
    let (outcome, out) = run_local(&bin, &playbook, &dir.path().join("work-again"), false).await;
    assert_eq!(outcome.exit_code, Some(0), "{out}");
    assert!(out.contains("changed=0"), "not idempotent:\n{out}");
}

#[tokio::test]
async fn a_full_generated_playbook_passes_the_syntax_check_and_check_mode() {
    let Some(bin) = ansible() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut fx = fixture(&dir.path().join("root"));
    fx.diff.packages_added = vec![PackageEntry {
        name: "nginx".into(),
        version: "1.22.1-9".into(),
        auto_installed: false,
    }];
    let (owner, group) = me();
    let mut conf = entry(
        Path::new("/etc/fluid-test-nginx/conf.d/site.conf"),
        meta("file", "0644", 10, Some("ab")),
    );
    conf.meta.owner = owner;
    conf.meta.group = group;
    fx.texts.insert(conf.path.clone(), "server {}\n".into());
    for d in ["/etc/fluid-test-nginx", "/etc/fluid-test-nginx/conf.d"] {
        let mut e = entry(Path::new(d), meta("dir", "0755", 0, None));
        e.package = Some("nginx".into());
        fx.diff.files_added.push(e);
    }
    fx.diff.files_added.push(conf);
    fx.diff.services_changed = vec![ServiceEntry {
        name: "fluid-test-nginx.service".into(),
        enabled: true,
        state: "active".into(),
        enablement: "enabled".into(),
        previous_enablement: "absent".into(),
        previous_state: "unknown".into(),
    }];
    let g = generate(&fx.diff, &fx.texts, &fx.opts);
    assert_eq!(g.handlers.len(), 1);
    let doc = PlaybookDoc::from_tasks(
        "full",
        "all",
        true,
        g.tasks.iter().chain(&g.handlers).cloned(),
    );
    let playbook = write_playbook(dir.path(), "full", &doc);
    fluid_ansible::syntax_check(&bin, &playbook)
        .await
        .expect("syntax check");

    // Without the apt task (no package index here), in check mode: the service does
    // not exist and the configuration directory neither, and that is fine.
    let mut no_apt = doc.clone();
    no_apt.r#become = false;
    no_apt.tasks.retain(|t| t.module != "ansible.builtin.apt");
    let playbook = write_playbook(dir.path(), "no-apt", &no_apt);
    prepare_target(&dir.path().join("root"));
    let (outcome, out) = run_local(&bin, &playbook, &dir.path().join("work"), true).await;
    assert_eq!(outcome.exit_code, Some(0), "{out}");
    assert!(out.contains("...ignoring"), "{out}");
    assert!(!Path::new("/etc/fluid-test-nginx").exists());
}

#[tokio::test]
async fn every_task_keyword_passes_the_syntax_check() {
    let Some(bin) = ansible() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let all = TaskSpec::new(
        "Every keyword",
        "ansible.builtin.command",
        json!({"cmd": "echo {{ item }}"}),
    )
    .with_option("notify", json!(["Say hello"]))
    .with_option("tags", json!(["a", "b"]))
    .with_option("when", json!("ansible_check_mode or true"))
    .with_option("become", json!(false))
    .with_option("become_user", json!("root"))
    .with_option("delegate_to", json!("localhost"))
    .with_option("run_once", json!(true))
    .with_option("environment", json!({"LANG": "C.UTF-8", "on": "yes"}))
    .with_option(
        "vars",
        json!({"greeting": "hi", "n": 3, "flags": [true, null]}),
    )
    .with_option("loop", json!(["one", "two"]))
    .with_option("register", json!("out"))
    .with_option("check_mode", json!(false))
    .with_option("diff", json!(true))
    .with_option("no_log", json!(false))
    .with_option("changed_when", json!("out.rc == 0"))
    .with_option("failed_when", json!("out.rc != 0"))
    .with_option("ignore_errors", json!("{{ ansible_check_mode }}"))
    .with_option("any_errors_fatal", json!(true))
    .with_option("until", json!("out.rc == 0"))
    .with_option("retries", json!(2))
    .with_option("delay", json!(1))
    .with_option("timeout", json!(60));
    let tasks = vec![
        all,
        TaskSpec::new(
            "yes",
            "ansible.builtin.debug",
            json!({"msg": unsafe_string("{{ not evaluated }}")}),
        ),
        TaskSpec::new("Ping", "ansible.builtin.ping", Value::Null),
        TaskSpec::new(
            "Say hello",
            "ansible.builtin.debug",
            json!({"msg": "hello"}),
        )
        .with_option("listen", json!("greet"))
        .into_handler(),
    ];
    let doc = PlaybookDoc::from_tasks("keywords", "all:!nothing", false, tasks);
    let playbook = write_playbook(dir.path(), "keywords", &doc);
    fluid_ansible::syntax_check(&bin, &playbook)
        .await
        .expect("syntax check");
    let (outcome, out) = run_local(&bin, &playbook, &dir.path().join("work"), false).await;
    assert_eq!(outcome.exit_code, Some(0), "{out}");
    assert!(out.contains("{{ not evaluated }}"), "{out}");
    assert!(out.contains("RUNNING HANDLER [Say hello]"), "{out}");
}

#[tokio::test]
async fn a_broken_playbook_fails_the_syntax_check_with_ansibles_words() {
    let Some(bin) = ansible() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let doc = PlaybookDoc::from_tasks(
        "broken",
        "all",
        true,
        vec![TaskSpec::new(
            "x",
            "no_such_collection.nope.module",
            json!({"a": 1}),
        )],
    );
    let playbook = write_playbook(dir.path(), "broken", &doc);
    let e = fluid_ansible::syntax_check(&bin, &playbook)
        .await
        .expect_err("must fail");
    match e {
        RunError::SyntaxCheck { output } => assert!(
            output.contains("no_such_collection.nope.module"),
            "{output}"
        ),
        other => panic!("{other}"),
    }
}

/// Every string YAML 1.1 could misread, as keys and values, read back by Ansible's own
/// YAML loader (PyYAML) exactly as written.
#[tokio::test]
async fn ansibles_loader_reads_back_every_string() {
    let Some(bin) = ansible() else { return };
    let python = bin.with_file_name("python3");
    let why = format!("no python3 beside {}", bin.display());
    if !fluid_prereq::available("ansible", python.is_file(), &why) {
        return;
    }
    let strings: &[&str] = &[
        "yes",
        "no",
        "on",
        "off",
        "Yes",
        "NO",
        "On",
        "OFF",
        "y",
        "n",
        "true",
        "False",
        "null",
        "Null",
        "~",
        "",
        "1:20",
        "190:20:30",
        "2024-01-01",
        "2001-12-14t21:59:43.10-05:00",
        "2001-12-14 21:59:43.10 -5",
        "1_000",
        "0b101",
        "0x1F",
        "0o17",
        "0644",
        "0755",
        "017",
        "07_1",
        "1e3",
        "1.5",
        "6.8523015e+5",
        "-.inf",
        ".NaN",
        ".5",
        "1_0.5",
        "+12",
        "-0",
        "=",
        "<<",
        "- x",
        "a: b",
        "#c",
        "@x",
        "`x",
        "%x",
        "!x",
        "*x",
        "&x",
        "|x",
        ">x",
        "{x}",
        "[x]",
        "x #y",
        "? x",
        ": x",
        " lead",
        "trail ",
        "tab\there",
        "multi\nline\n",
        "multi\nline",
        "  indented\nfirst\n",
        "trailing spaces  \nx\n",
        "crlf\r\nline\r\n",
        "cr\ronly",
        "\n\nblank-start\n",
        "end\n\n\n",
        "unicodé ✓\n",
        "\u{1b}[0m esc\n",
        "nel\u{85}x",
        "ls\u{2028}ps\u{2029}",
        "bom\u{feff}x",
        "\u{e000}q0\u{e000}",
        "quote ' and \" and \\",
        "'single'",
        "\"double\"",
        "\t\tleading tabs\n",
        "#!/bin/sh\necho hi\n",
        "emoji 🦀",
        "{{ x }}",
        "{% raw %}",
        "long ".repeat(100).leak(),
    ];
    let mut params = serde_json::Map::new();
    let mut expected = serde_json::Map::new();
    for (i, s) in strings.iter().enumerate() {
        params.insert(format!("v{i:03}"), json!(s));
        expected.insert(format!("v{i:03}"), json!(s));
        if !s.is_empty() && s.len() <= 256 && !s.chars().any(char::is_control) {
            params.insert((*s).to_owned(), json!(i));
            expected.insert((*s).to_owned(), json!(i));
        }
    }
    params.insert(
        "unsafe".into(),
        unsafe_string("{{ lookup('pipe', 'id') }}\nyes"),
    );
    expected.insert("unsafe".into(), json!("{{ lookup('pipe', 'id') }}\nyes"));
    let doc = PlaybookDoc::from_tasks(
        "strings",
        "all",
        true,
        vec![TaskSpec::new(
            "yes",
            "ansible.builtin.debug",
            Value::Object(params),
        )],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let playbook = write_playbook(dir.path(), "strings", &doc);
    let out = std::process::Command::new(&python)
        .arg("-c")
        .arg(
            "import json, sys\n\
             from ansible.parsing.yaml.loader import AnsibleLoader\n\
             d = AnsibleLoader(open(sys.argv[1], encoding='utf-8').read()).get_single_data()\n\
             print(json.dumps(d))",
        )
        .arg(&playbook)
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let back: Value = serde_json::from_slice(&out.stdout).expect("json");
    let task = &back[0]["tasks"][0];
    assert_eq!(task["name"], json!("yes"));
    let got = task["ansible.builtin.debug"].as_object().expect("params");
    for (k, v) in &expected {
        assert_eq!(got.get(k), Some(v), "key {k:?}");
    }
    assert_eq!(got.len(), expected.len());
}

/// Over SSH (to a closed port on loopback: unreachable, exit 4), ansible runs ssh with
/// the key, the certificate and every argument of `ssh_common_args` intact.
#[tokio::test]
async fn ssh_arguments_reach_ssh_intact() {
    let Some(bin) = ansible() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let doc = PlaybookDoc::from_tasks(
        "ssh",
        "all",
        false,
        vec![TaskSpec::new("Ping", "ansible.builtin.ping", Value::Null)],
    );
    let playbook = write_playbook(dir.path(), "ssh", &doc);
    let spec = RunSpec {
        ansible_playbook: bin.clone(),
        playbook_path: playbook,
        hosts: vec![InventoryHost {
            name: "sbx".into(),
            address: "127.0.0.1".into(),
            port: 1,
            user: "root".into(),
            private_key: Some(dir.path().join("id_ed25519")),
            certificate: Some(dir.path().join("id_ed25519-cert.pub")),
            ssh_common_args: vec![
                "-o".into(),
                "StrictHostKeyChecking=no".into(),
                "-o".into(),
                "UserKnownHostsFile=/dev/null".into(),
                "-o".into(),
                "SetEnv=FLUID_TEST=it's two words".into(),
            ],
            ..InventoryHost::default()
        }],
        check: true,
        diff: true,
        work_dir: dir.path().join("work"),
        timeout: Duration::from_secs(120),
        extra_args: vec!["-vvv".into()],
        confine: None,
        read_only: Vec::new(),
    };
    let (tx, mut rx) = mpsc::channel(64);
    let collector = tokio::spawn(async move {
        let mut lines = Vec::new();
        while let Some(l) = rx.recv().await {
            lines.push(l);
        }
        lines.join("\n")
    });
    let outcome = fluid_ansible::run(&spec, tx).await.expect("run");
    let out = collector.await.expect("output");
    assert_eq!(outcome.exit_code, Some(4), "unreachable:\n{out}");
    let exec = out
        .lines()
        .find(|l| l.contains("SSH: EXEC ssh"))
        .unwrap_or_else(|| panic!("no ssh command in:\n{out}"));
    for expected in [
        "-o Port=1",
        "-o 'User=\"root\"'",
        &format!(
            "-o IdentitiesOnly=yes -o CertificateFile={}/id_ed25519-cert.pub",
            dir.path().display()
        ),
        "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
        "-o 'SetEnv=FLUID_TEST=it'\"'\"'s two words'",
    ] {
        assert!(exec.contains(expected), "{expected:?} not in {exec}");
    }
}
