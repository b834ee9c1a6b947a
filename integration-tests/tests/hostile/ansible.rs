//! Attacks: Ansible (issue 12, hole 1). An `agent` token writes playbooks and starts
//! jobs; nothing it writes may run on the controller host.
//!
//! - `agent_content_never_runs_on_the_controller` (one real sandbox under TCG, real
//!   ansible-core): every way of moving a task onto the controller or templating there
//!   is refused with a 400 naming the field, and none leaves its marker file on the
//!   controller host; a benign playbook still runs on the sandbox, through the confined
//!   runner; another agent cannot read, edit, export, delete or run the playbook
//!   (403); an agent's production job, a check run included, waits for an approval
//!   that shows the whole playbook and runs nothing when it is rejected, while an
//!   operator's check run starts at once.
//! - `confinement_holds_without_validation`: the runner itself, with validation out of
//!   the way (a playbook written straight to disk, run on the controller host with
//!   `connection: local`), inside bubblewrap as `fluid-ansible`: reading the SSH user CA
//!   key, the controller's TLS key and the SQLite database fails, and writing outside
//!   its directory fails; the same playbook unconfined reads them (so the test can fail).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use fluid_client::types::HostState;
use integration_tests::api::Api;
use integration_tests::guest;
use integration_tests::stack::{AgentOptions, Stack, StoreKind};
use reqwest::Method;
use serde_json::{Value, json};

const VENV_PLAYBOOK: &str = "/opt/fluid-ansible/bin/ansible-playbook";

fn rand_tag() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{:08x}", nanos ^ std::process::id())
}

/// The confined runs' user exists (the package and install-deps create it).
fn ensure_sandbox_user() -> Result<()> {
    let have = std::process::Command::new("getent")
        .args(["passwd", "fluid-ansible"])
        .output()?;
    if have.status.success() {
        return Ok(());
    }
    let out = std::process::Command::new("adduser")
        .args([
            "--system",
            "--quiet",
            "--group",
            "--home",
            "/nonexistent",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "fluid-ansible",
        ])
        .output()?;
    ensure!(
        out.status.success(),
        "adduser fluid-ansible: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

async fn job_until(
    api: &Api,
    token: &str,
    id: &str,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let deadline = Instant::now() + within;
    loop {
        let (status, body) = api
            .send(token, Method::GET, &format!("/v1/ansible/jobs/{id}"), None)
            .await?;
        ensure!(status == 200, "job {id}: {status} {body}");
        let j = body["job"].clone();
        if done(&j) {
            return Ok(j);
        }
        ensure!(
            Instant::now() < deadline,
            "job {id}: not there within {within:?}: {j}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn is_final(j: &Value) -> bool {
    j["status"] == "finished" || j["status"] == "failed"
}

#[tokio::test]
async fn agent_content_never_runs_on_the_controller() -> Result<()> {
    let started = Instant::now();
    ensure_sandbox_user()?;
    ensure!(
        Path::new(VENV_PLAYBOOK).exists(),
        "{VENV_PLAYBOOK} is missing: scripts/install-deps.sh installs ansible-core"
    );
    let keys = tempfile::tempdir()?;
    let key = keys.path().join("prod_key");
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .output()?;
    ensure!(out.status.success(), "ssh-keygen failed");
    let tables = format!(
        "[ansible]\nansible_playbook = {VENV_PLAYBOOK:?}\nproduction_approval_timeout_secs = 600\n\
         [[ansible.targets]]\nname = \"prod-it\"\nhosts = [\"127.0.0.1:9\"]\nuser = \"root\"\n\
         private_key = {:?}\nssh_common_args = [\"-o\", \"StrictHostKeyChecking=no\", \"-o\", \"UserKnownHostsFile=/dev/null\", \"-o\", \"ConnectTimeout=5\"]\n",
        key.to_string_lossy()
    );
    let mut stack =
        Stack::start_with(StoreKind::Sqlite, vec![AgentOptions::new("a")], &tables).await?;
    stack
        .wait_host("a", HostState::Online, Duration::from_secs(30))
        .await?;
    let api = Api::new(&stack.api_url);
    let agent_a = stack.token_cli("it-agent-a", "agent", Some("agent-a"))?;
    let agent_b = stack.token_cli("it-agent-b", "agent", Some("agent-b"))?;
    let operator = stack.token_cli("it-operator", "operator", None)?;
    let a = stack.client_with(&agent_a)?;
    let (sb, _) = guest::create(&a, "agent-a", "ans-hostile").await?;
    guest::ready(&a, &sb, Duration::from_secs(180)).await?;
    println!("sandbox {sb} ready after {:?}", started.elapsed());

    let tag = rand_tag();
    let pb = format!("pa-{tag}");
    let (s, body) = api
        .send(
            &agent_a,
            Method::POST,
            "/v1/ansible/playbooks",
            Some(json!({"name": pb, "hosts": "all", "become": false})),
        )
        .await?;
    ensure!(s == 201, "create playbook: {s} {body}");
    ensure!(body["playbook"]["owner_agent_id"] == "agent-a", "{body}");

    // Each payload tries to leave /tmp/fluid-pwned-<tag>-<n> on the controller host.
    let marker = |n: usize| PathBuf::from(format!("/tmp/fluid-pwned-{tag}-{n}"));
    let touch = |n: usize| format!("touch {}", marker(n).display());
    let attacks: Vec<(&str, Value, &str)> = vec![
        (
            "delegate_to localhost",
            json!({"name": "x", "module": "ansible.builtin.shell", "params": {"cmd": touch(0)},
                   "options": {"delegate_to": "localhost"}}),
            "options.delegate_to",
        ),
        (
            "local_action",
            json!({"name": "x", "module": "ansible.builtin.debug", "params": {"msg": "x"},
                   "options": {"local_action": {"module": "ansible.builtin.shell", "cmd": touch(1)}}}),
            "options.local_action",
        ),
        (
            "when with a templated pipe lookup",
            json!({"name": "x", "module": "ansible.builtin.ping", "params": {},
                   "options": {"when": format!("{{{{ lookup('pipe', '{}') }}}}", touch(2))}}),
            "options.when",
        ),
        (
            "when with a bare pipe lookup",
            json!({"name": "x", "module": "ansible.builtin.ping", "params": {},
                   "options": {"when": format!("lookup('pipe', '{}') == ''", touch(3))}}),
            "options.when",
        ),
        (
            "check_mode: false",
            json!({"name": "x", "module": "ansible.builtin.shell", "params": {"cmd": "true"},
                   "options": {"check_mode": false}}),
            "options.check_mode",
        ),
        (
            "connection: local",
            json!({"name": "x", "module": "ansible.builtin.shell", "params": {"cmd": touch(5)},
                   "options": {"connection": "local"}}),
            "options.connection",
        ),
        (
            "ansible_connection in vars",
            json!({"name": "x", "module": "ansible.builtin.shell", "params": {"cmd": touch(6)},
                   "options": {"vars": {"ansible_connection": "local"}}}),
            "options.vars.ansible_connection",
        ),
        (
            "a task name with a lookup",
            json!({"name": format!("{{{{ lookup('pipe', '{}') }}}}{{{{ lookup('file', '/etc/fluid/pki/controller.key') }}}}", touch(7)),
                   "module": "ansible.builtin.ping", "params": {}}),
            "name",
        ),
        (
            "a template in a module argument",
            json!({"name": "x", "module": "ansible.builtin.copy",
                   "params": {"dest": "/root/x", "content": format!("{{{{ lookup('pipe', '{}') }}}}", touch(8))}}),
            "params.content",
        ),
        (
            "copy from a controller path",
            json!({"name": "x", "module": "ansible.builtin.copy",
                   "params": {"src": "/etc/fluid/pki/controller.key", "dest": "/root/k"}}),
            "params.src",
        ),
    ];
    let path = format!("/v1/ansible/playbooks/{pb}/tasks");
    for (what, task, field) in &attacks {
        let (s, body) = api
            .send(&agent_a, Method::POST, &path, Some(task.clone()))
            .await?;
        let msg = body["error"].as_str().unwrap_or_default();
        println!("{what}: {s} {msg}");
        ensure!(s == 400, "{what}: expected 400, got {s} {body}");
        ensure!(
            msg.starts_with(&format!("{field}:")),
            "{what}: the error should name {field}: {msg}"
        );
    }
    // The same keyword through an edit of an accepted task.
    let (s, body) = api
        .send(
            &agent_a,
            Method::POST,
            &path,
            Some(
                json!({"name": "Write a file in the sandbox", "module": "ansible.builtin.shell",
                        "params": {"cmd": format!("echo {tag} > /root/fluid-ansible-ok")}}),
            ),
        )
        .await?;
    ensure!(s == 201, "benign task: {s} {body}");
    let task_id = body["task"]["id"].as_str().context("task id")?.to_owned();
    let (s, body) = api
        .send(
            &agent_a,
            Method::PUT,
            &format!("{path}/{task_id}"),
            Some(json!({"options": {"delegate_to": "localhost"}, "params": {"cmd": touch(9)}})),
        )
        .await?;
    println!("edit to delegate_to: {s} {}", body["error"]);
    ensure!(
        s == 400
            && body["error"]
                .as_str()
                .unwrap_or_default()
                .starts_with("options.delegate_to:"),
        "{s} {body}"
    );

    // A check job and an apply job of what was accepted run on the sandbox, confined.
    for check in [true, false] {
        let (s, body) = api
            .send(
                &agent_a,
                Method::POST,
                "/v1/ansible/jobs",
                Some(json!({"vm_name": sb, "playbook": pb, "check": check})),
            )
            .await?;
        ensure!(s == 201, "job: {s} {body}");
        let id = body["job_id"].as_str().context("job_id")?.to_owned();
        let j = job_until(&api, &agent_a, &id, Duration::from_secs(300), is_final).await?;
        println!(
            "sandbox job (check={check}): {} exit {} in {:?}",
            j["status"],
            j["exit_code"],
            started.elapsed()
        );
        ensure!(
            j["status"] == "finished" && j["exit_code"] == 0,
            "the benign job failed: {}",
            j["output"]
        );
    }
    let out = guest::must(&a, &sb, "cat /root/fluid-ansible-ok", 20).await?;
    ensure!(out == tag, "the apply did not run in the sandbox: {out}");
    for n in 0..10 {
        ensure!(
            !marker(n).exists(),
            "{} exists on the controller host",
            marker(n).display()
        );
    }

    // Another agent's token: 403 on every operation, and the playbook is not listed.
    let calls: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, format!("/v1/ansible/playbooks/{pb}"), None),
        (
            Method::GET,
            format!("/v1/ansible/playbooks/{pb}/export"),
            None,
        ),
        (
            Method::POST,
            path.clone(),
            Some(json!({"name": "y", "module": "ansible.builtin.ping"})),
        ),
        (
            Method::PUT,
            format!("{path}/{task_id}"),
            Some(json!({"name": "renamed"})),
        ),
        (Method::DELETE, format!("{path}/{task_id}"), None),
        (Method::DELETE, format!("/v1/ansible/playbooks/{pb}"), None),
    ];
    for (m, p, b) in calls {
        let (s, body) = api.send(&agent_b, m.clone(), &p, b).await?;
        println!("agent-b {m} {p}: {s} {}", body["error"]);
        ensure!(s == 403, "agent-b {m} {p}: expected 403, got {s} {body}");
    }
    let (s, body) = api
        .send(&agent_b, Method::GET, "/v1/ansible/playbooks", None)
        .await?;
    ensure!(s == 200, "{s} {body}");
    ensure!(
        !body.to_string().contains(&pb),
        "agent-b lists agent-a's playbook: {body}"
    );
    // agent-b's own sandbox target does not matter: the playbook is not its own.
    let (s, body) = api
        .send(
            &agent_b,
            Method::POST,
            "/v1/ansible/jobs",
            Some(json!({"vm_name": "prod-it", "playbook": pb, "check": true})),
        )
        .await?;
    println!("agent-b runs agent-a's playbook: {s} {}", body["error"]);
    ensure!(s == 403, "agent-b job: {s} {body}");
    let (s, _) = api
        .send(
            &operator,
            Method::GET,
            &format!("/v1/ansible/playbooks/{pb}"),
            None,
        )
        .await?;
    ensure!(s == 200, "the operator reads every playbook: {s}");

    // Production: the agent's check run waits for an approval showing the whole playbook.
    let (_, export) = api
        .send(
            &agent_a,
            Method::GET,
            &format!("/v1/ansible/playbooks/{pb}/export"),
            None,
        )
        .await?;
    let yaml = export["yaml"].as_str().context("yaml")?.to_owned();
    let (s, body) = api
        .send(
            &agent_a,
            Method::POST,
            "/v1/ansible/jobs",
            Some(json!({"vm_name": "prod-it", "playbook": pb, "check": true})),
        )
        .await?;
    ensure!(s == 201, "agent production job: {s} {body}");
    let id = body["job_id"].as_str().context("job_id")?.to_owned();
    let j = job_until(&api, &agent_a, &id, Duration::from_secs(60), |j| {
        j["phase"] == "awaiting_check_approval" || is_final(j)
    })
    .await?;
    ensure!(j["phase"] == "awaiting_check_approval", "{j}");
    let approval = j["approval_id"].as_str().context("approval_id")?.to_owned();
    ensure!(
        !j["output"]
            .as_str()
            .unwrap_or_default()
            .contains("=== check:"),
        "the check ran before its approval: {}",
        j["output"]
    );
    let (s, body) = api
        .send(
            &operator,
            Method::GET,
            &format!("/v1/approvals/{approval}"),
            None,
        )
        .await?;
    ensure!(s == 200, "approval: {s} {body}");
    let d = &body["approval"]["details"];
    ensure!(
        d["playbook_yaml"] == json!(yaml) && d["playbook_yaml_truncated"] == json!(false),
        "the approval does not show the whole playbook: {d}"
    );
    println!(
        "agent's production check job {id} waits for {approval}: {}",
        body["approval"]["summary"]
    );
    let (s, body) = api
        .send(
            &operator,
            Method::POST,
            &format!("/v1/approvals/{approval}/reject"),
            Some(json!({"comment": "no"})),
        )
        .await?;
    ensure!(s == 200, "reject: {s} {body}");
    let j = job_until(&api, &agent_a, &id, Duration::from_secs(60), is_final).await?;
    println!("after the rejection: {} {}", j["status"], j["error"]);
    ensure!(j["status"] == "failed", "{j}");
    ensure!(
        !j["output"]
            .as_str()
            .unwrap_or_default()
            .contains("=== check:"),
        "the check ran: {}",
        j["output"]
    );

    // The operator's own check run starts at once (the host is unreachable: exit 4).
    let opb = format!("po-{tag}");
    let (s, body) = api
        .send(
            &operator,
            Method::POST,
            "/v1/ansible/playbooks",
            Some(json!({"name": opb, "hosts": "all"})),
        )
        .await?;
    ensure!(
        s == 201 && body["playbook"]["owner_agent_id"].is_null(),
        "{s} {body}"
    );
    api.send(
        &operator,
        Method::POST,
        &format!("/v1/ansible/playbooks/{opb}/tasks"),
        Some(json!({"name": "ping", "module": "ansible.builtin.ping"})),
    )
    .await?;
    let (s, body) = api
        .send(
            &operator,
            Method::POST,
            "/v1/ansible/jobs",
            Some(json!({"vm_name": "prod-it", "playbook": opb, "check": true})),
        )
        .await?;
    ensure!(s == 201, "operator production job: {s} {body}");
    let id = body["job_id"].as_str().context("job_id")?.to_owned();
    let j = job_until(&api, &operator, &id, Duration::from_secs(180), is_final).await?;
    println!(
        "operator's production check job: {} exit {} approval {}",
        j["status"], j["exit_code"], j["approval_id"]
    );
    ensure!(
        j["approval_id"].is_null()
            && j["output"]
                .as_str()
                .unwrap_or_default()
                .contains("=== check:"),
        "{j}"
    );
    let (s, _) = api
        .send(
            &agent_b,
            Method::GET,
            &format!("/v1/ansible/playbooks/{opb}"),
            None,
        )
        .await?;
    ensure!(s == 403, "an agent reads an operator's playbook: {s}");
    println!("done in {:?}", started.elapsed());
    Ok(())
}

/// Output of a run of `playbook` on the controller host itself (`connection: local`),
/// confined or not.
async fn run_local(
    work: &Path,
    playbook: &Path,
    confine: Option<fluid_ansible::Confinement>,
) -> Result<(Option<i32>, String)> {
    let spec = fluid_ansible::RunSpec {
        ansible_playbook: VENV_PLAYBOOK.into(),
        playbook_path: playbook.to_owned(),
        hosts: vec![fluid_ansible::InventoryHost {
            name: "controller".into(),
            address: "127.0.0.1".into(),
            port: 22,
            user: "root".into(),
            connection: Some("local".into()),
            python_interpreter: Some("/usr/bin/python3".into()),
            ..Default::default()
        }],
        check: false,
        diff: false,
        work_dir: work.to_owned(),
        timeout: Duration::from_secs(300),
        extra_args: vec![],
        confine,
        read_only: vec![],
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel(4096);
    let (out, lines) = tokio::join!(fluid_ansible::run(&spec, tx), async {
        let mut all = Vec::new();
        while let Some(l) = rx.recv().await {
            all.push(l);
        }
        all
    });
    Ok((out?.exit_code, lines.join("\n")))
}

#[tokio::test]
async fn confinement_holds_without_validation() -> Result<()> {
    ensure_sandbox_user()?;
    ensure!(
        Path::new(VENV_PLAYBOOK).exists(),
        "{VENV_PLAYBOOK} is missing: scripts/install-deps.sh installs ansible-core"
    );
    let stack = Stack::start(StoreKind::Sqlite, vec![]).await?;
    let data_dir = stack.dir.path().join("controller");
    let secrets = [
        ("the SSH user CA key", data_dir.join("ssh_user_ca")),
        ("the controller's TLS key", stack.pki.controller().key),
        ("the SQLite database", data_dir.join("fluid.db")),
    ];
    let mut probes = Vec::new();
    for (what, p) in &secrets {
        ensure!(p.is_file(), "{what} is not at {}", p.display());
        let bytes = std::fs::read(p)?;
        // A line of the secret that must not show up in the output.
        let probe = match what {
            w if w.contains("database") => "SQLite format 3".to_owned(),
            _ => {
                // A line from the middle of the PEM text: key material, not a header.
                let text = String::from_utf8_lossy(&bytes).into_owned();
                let lines: Vec<&str> = text.lines().collect();
                lines
                    .get(lines.len() / 2)
                    .context("a key line")?
                    .to_string()
            }
        };
        probes.push(probe);
    }
    let tag = rand_tag();
    let outside = PathBuf::from(format!("/tmp/fluid-pwned-{tag}"));
    let outside_var = data_dir.join(format!("pwned-{tag}"));
    let mut tasks = String::new();
    for (i, (what, p)) in secrets.iter().enumerate() {
        // The database is binary: its header is enough (and stays valid UTF-8).
        let read = if what.contains("database") {
            format!("head -c 15 {}", p.display())
        } else {
            format!("cat {}", p.display())
        };
        tasks += &format!(
            "    - name: read {what}\n      ansible.builtin.shell: \"{read}\"\n      delegate_to: localhost\n      register: r{i}\n      ignore_errors: true\n    - ansible.builtin.debug:\n        var: r{i}\n"
        );
    }
    tasks += &format!(
        "    - name: write outside\n      ansible.builtin.shell: \"touch {} {}\"\n      delegate_to: localhost\n      ignore_errors: true\n    - name: whoami\n      ansible.builtin.shell: \"id; ls -la /var/lib /var/tmp / 2>&1 | head -n 40\"\n      delegate_to: localhost\n      register: rw\n    - ansible.builtin.debug:\n        var: rw.stdout_lines\n",
        outside.display(),
        outside_var.display()
    );
    let playbook = format!(
        "- name: bypass\n  hosts: all\n  gather_facts: false\n  vars:\n    ansible_remote_tmp: /tmp/.ansible-remote\n  tasks:\n{tasks}"
    );

    // Unconfined (the control): the same playbook reads the secrets.
    let plain = tempfile::Builder::new()
        .prefix("JOB-plain-")
        .tempdir_in(&data_dir)?;
    let pb = plain.path().join("playbook.yml");
    std::fs::write(&pb, &playbook)?;
    let (code, out) = run_local(plain.path(), &pb, None).await?;
    println!("unconfined: exit {code:?}");
    for (i, probe) in probes.iter().enumerate() {
        ensure!(
            out.contains(probe.as_str()),
            "unconfined, {} should be readable (else this test proves nothing): {}",
            secrets[i].0,
            tail(&out, 30)
        );
    }
    for p in [&outside, &outside_var] {
        ensure!(
            p.exists(),
            "unconfined, {} should have been written",
            p.display()
        );
        std::fs::remove_file(p)?;
    }

    // Confined: nothing of it.
    let bwrap = PathBuf::from("/usr/bin/bwrap");
    ensure!(
        bwrap.exists(),
        "bubblewrap is not installed (scripts/install-deps.sh)"
    );
    let user = std::process::Command::new("id")
        .args(["-u", "fluid-ansible"])
        .output()?;
    let uid: u32 = String::from_utf8(user.stdout)?.trim().parse()?;
    let group = std::process::Command::new("id")
        .args(["-g", "fluid-ansible"])
        .output()?;
    let gid: u32 = String::from_utf8(group.stdout)?.trim().parse()?;
    let jobs = data_dir.join("jobs");
    std::fs::create_dir_all(&jobs)?;
    let work = tempfile::Builder::new()
        .prefix("JOB-bypass-")
        .tempdir_in(&jobs)?;
    let pb = work.path().join("playbook.yml");
    std::fs::write(&pb, &playbook)?;
    let (code, out) = run_local(
        work.path(),
        &pb,
        Some(fluid_ansible::Confinement {
            bwrap,
            user: Some((uid, gid)),
        }),
    )
    .await?;
    println!("confined: exit {code:?}\n{}", tail(&out, 60));
    ensure!(
        out.contains("uid=") && out.contains("fluid-ansible"),
        "the confined run did not run as fluid-ansible: {}",
        tail(&out, 40)
    );
    for (i, probe) in probes.iter().enumerate() {
        let (what, p) = &secrets[i];
        ensure!(
            !out.contains(probe.as_str()),
            "confined, {what} leaked into the output"
        );
        let path = p.display().to_string();
        ensure!(
            out.lines().any(|l| l.contains(&path)
                && (l.contains("No such file or directory") || l.contains("Permission denied"))),
            "confined, reading {what} did not fail as expected: {}",
            tail(&out, 40)
        );
    }
    for p in [&outside, &outside_var] {
        ensure!(!p.exists(), "confined, {} was written", p.display());
    }
    Ok(())
}

/// A generated playbook holds text from a guest's disk: its `--syntax-check` runs in
/// the same confinement as a job. A stand-in for ansible-playbook reports who runs it
/// and whether a world-readable secret outside the run's directory is in reach;
/// unconfined it is (so the test can fail), confined it is not. Then the real
/// ansible-playbook, confined, still tells a good playbook from a broken one.
#[tokio::test]
async fn the_syntax_check_of_a_generated_playbook_is_confined() -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    ensure_sandbox_user()?;
    let secret_dir = tempfile::Builder::new()
        .prefix("fluid-secret-")
        .tempdir_in("/var/tmp")?;
    let secret = secret_dir.path().join("ca.key");
    std::fs::write(&secret, "not for playbooks\n")?;
    for p in [secret_dir.path(), secret.as_path()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))?;
    }
    // A Python installation of its own (bound read-only into the sandbox), whose
    // ansible-playbook is the probe.
    let venv = tempfile::Builder::new()
        .prefix("fluid-probe-")
        .tempdir_in("/var/tmp")?;
    let bin = venv.path().join("bin");
    std::fs::create_dir(&bin)?;
    let probe = bin.join("ansible-playbook");
    std::fs::write(
        &probe,
        format!(
            "#!/bin/sh\necho \"probe: user $(id -un) args $*\"\n\
             if [ -r {s} ]; then echo 'probe: secret in reach'; else echo 'probe: secret out of reach'; fi\n\
             exit 1\n",
            s = secret.display()
        ),
    )?;
    for (p, m) in [
        (venv.path(), 0o755),
        (bin.as_path(), 0o755),
        (probe.as_path(), 0o755),
    ] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m))?;
    }
    let (uid, gid) = fluid_ansible::runner::confine::lookup_user("fluid-ansible")?
        .context("the fluid-ansible user")?;
    let confine = fluid_ansible::Confinement {
        bwrap: PathBuf::from("/usr/bin/bwrap"),
        user: Some((uid, gid)),
    };
    let playbook = "- hosts: all\n  tasks:\n    - ansible.builtin.ping: {}\n";
    let said = |r: Result<(), fluid_ansible::RunError>| match r {
        Err(fluid_ansible::RunError::SyntaxCheck { output }) => Ok(output),
        other => Err(anyhow::anyhow!("the probe did not run: {other:?}")),
    };

    let unconfined = said(fluid_ansible::syntax_check_text(&probe, playbook, None).await)?;
    println!("unconfined: {unconfined}");
    ensure!(
        unconfined.contains("probe: secret in reach") && unconfined.contains("--syntax-check"),
        "unconfined, the probe should reach the secret (else this test proves nothing): {unconfined}"
    );
    let confined = said(fluid_ansible::syntax_check_text(&probe, playbook, Some(&confine)).await)?;
    println!("confined: {confined}");
    ensure!(
        confined.contains("probe: user fluid-ansible")
            && confined.contains("probe: secret out of reach"),
        "the confined syntax check ran as someone else or reached the secret: {confined}"
    );

    ensure!(
        Path::new(VENV_PLAYBOOK).exists(),
        "{VENV_PLAYBOOK} is missing: scripts/install-deps.sh installs ansible-core"
    );
    fluid_ansible::syntax_check_text(Path::new(VENV_PLAYBOOK), playbook, Some(&confine))
        .await
        .context("a good playbook, confined")?;
    let broken =
        "- hosts: all\n  tasks:\n    - ansible.builtin.ping: {}\n      no_such_keyword: 1\n";
    let e = said(
        fluid_ansible::syntax_check_text(Path::new(VENV_PLAYBOOK), broken, Some(&confine)).await,
    )?;
    ensure!(e.contains("no_such_keyword"), "ansible's words: {e}");
    Ok(())
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
