//! The review loop with real VMs under TCG (issue 6): snapshots, restore and fork; the
//! out-of-band diff of what changed; an Ansible playbook generated from it, proven on a
//! fresh sandbox, and applied to a "production" host only after a human approved it.
//!
//! Packages come from a local Debian repository (`scripts/build-apt-mirror.sh nginx`)
//! served by the test's simulated internet, which the sandboxes reach only through an
//! approved egress rule.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use fluid_client::Client;
use fluid_client::types::{HostState, WriteFileRequest};
use integration_tests::api::Api;
use integration_tests::guest::{self, must, run};
use integration_tests::internet::Internet;
use integration_tests::stack::{AgentOptions, Stack, StoreKind};
use reqwest::Method;
use serde_json::{Value, json};

/// Port of the package mirror in the simulated internet.
mod jobs;

const MIRROR_PORT: u16 = 8082;
const SITE_CONF: &str = "server {\n    listen 8088;\n    root /srv/site;\n}\n";
const UNIT: &str = "[Unit]\nDescription=fluid review-loop demo\n\n[Service]\nExecStart=/bin/sleep infinity\n\n[Install]\nWantedBy=multi-user.target\n";

async fn create(c: &Client, name: &str) -> Result<String> {
    Ok(guest::create(c, "agent-rl", name).await?.0)
}

async fn ready(c: &Client, id: &str) -> Result<()> {
    guest::ready(c, id, Duration::from_secs(120)).await
}

/// Points apt at the test's mirror (before snapshot A: it is setup, not the work).
async fn use_mirror(c: &Client, id: &str, server: &str) -> Result<()> {
    must(
        c,
        id,
        &format!(
            "rm -f /etc/apt/sources.list.d/*; echo 'deb [trusted=yes] http://{server}:{MIRROR_PORT}/ ./' > /etc/apt/sources.list && apt-get update -q"
        ),
        180,
    )
    .await?;
    Ok(())
}

fn paths(diff: &Value, list: &str) -> Vec<String> {
    diff["diff_json"][list]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["path"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn names(diff: &Value, list: &str) -> Vec<String> {
    diff["diff_json"][list]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Paths a package install writes besides the package's own files (dpkg and apt
/// state, logs, maintainer scripts' work): they belong to "package nginx".
fn package_machinery(path: &str) -> bool {
    [
        "/var/lib/dpkg/",
        "/var/lib/apt/",
        "/var/log/",
        "/var/lib/nginx",
        "/var/lib/systemd/deb-systemd-helper",
        "/etc/systemd/system/multi-user.target.wants/nginx.service",
        // SysV links update-rc.d makes for the package's init script.
        "/etc/rc0.d/",
        "/etc/rc1.d/",
        "/etc/rc2.d/",
        "/etc/rc3.d/",
        "/etc/rc4.d/",
        "/etc/rc5.d/",
        "/etc/rc6.d/",
        "/etc/ld.so.cache",
        "/var/www",
        "/etc/nginx",
        "/etc/logrotate.d",
        "/etc/ufw",
        "/usr/share/nginx",
    ]
    .iter()
    .any(|p| path.starts_with(p))
}

const VOLATILE: &[&str] = &[
    "/proc",
    "/sys",
    "/run",
    "/tmp",
    "/dev",
    "/var/cache",
    "/var/log/journal",
    "/var/lib/apt/lists",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_restore_fork_generate_verify_and_apply_with_approval() -> Result<()> {
    let started = Instant::now();
    let env = integration_tests::TestEnv::load()?;
    let mirror = env
        .apt_mirror_dir
        .clone()
        .context("FLUID_APT_MIRROR_DIR is unset: scripts/test.sh builds the mirror (scripts/build-apt-mirror.sh nginx)")?;
    let tag = format!("{:04x}", std::process::id() & 0xffff);
    let mut inet = Internet::start(&tag, 78, &[])?;
    inet.serve(MIRROR_PORT, &mirror)?;
    let server = inet.server.to_string();
    println!(
        "mirror: http://{server}:{MIRROR_PORT}/ ({})",
        mirror.display()
    );

    let mut stack = Stack::start(
        StoreKind::Sqlite,
        vec![
            AgentOptions::new("a")
                .memory_mb(4096)
                .network(&format!("dns_upstream = {:?}", inet.dns)),
        ],
    )
    .await?;
    stack
        .wait_host("a", HostState::Online, Duration::from_secs(30))
        .await?;
    let admin = stack.client.clone();
    let admin_token = stack.admin_token.clone();
    let agent_token = stack.token_cli("rl-bot", "agent", Some("agent-rl"))?;
    let operator_token = stack.token_cli("rl-op", "operator", None)?;
    let agent = stack.client_with(&agent_token)?;
    let api = Api::new(&stack.api_url);

    // A sandbox to work in, and one standing in as production.
    let (work_name, prod_name) = (
        format!("{}-work", stack.prefix),
        format!("{}-prod", stack.prefix),
    );
    let (s, p) = tokio::try_join!(create(&agent, &work_name), create(&admin, &prod_name))?;
    println!(
        "sandboxes: work {s}, production {p} ({:.0?})",
        started.elapsed()
    );
    tokio::try_join!(ready(&admin, &s), ready(&admin, &p))?;

    // The mirror is reachable only through an approved egress rule.
    let fetch = format!(
        "python3 -c 'import urllib.request; urllib.request.urlopen(\"http://{server}:{MIRROR_PORT}/Packages\", timeout=4)'"
    );
    let (code, out) = run(&admin, &s, &fetch, 30).await?;
    println!(
        "before approval: fetching from the mirror exits {code}: {}",
        out.lines().last().unwrap_or("")
    );
    ensure!(
        code != 0,
        "the mirror was reachable without an approved rule"
    );
    let (status, pending) = api
        .send(
            &agent_token,
            Method::POST,
            &format!("/v1/sandboxes/{s}/network/requests?wait=false"),
            Some(json!({"destination": server, "port": MIRROR_PORT, "protocol": "tcp", "reason": "install nginx from the package mirror"})),
        )
        .await?;
    ensure!(status == 202, "egress request: {status} {pending}");
    let request_id = pending["request_id"]
        .as_str()
        .context("request_id")?
        .to_owned();
    let (status, decided) = api
        .send(
            &operator_token,
            Method::POST,
            &format!("/v1/approvals/{request_id}/approve"),
            Some(json!({"comment": "mirror only"})),
        )
        .await?;
    ensure!(status == 200, "approve egress: {status} {decided}");
    // Production gets the same rule from the admin directly.
    let (status, body) = api
        .send(&admin_token, Method::PUT, &format!("/v1/sandboxes/{p}/network"), Some(json!({"allow": [{"cidr": format!("{server}/32"), "protocol": "tcp", "port": MIRROR_PORT}]})))
        .await?;
    ensure!(status == 200, "PUT network: {status} {body}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (s_ok, _) = run(&admin, &s, &fetch, 30).await?;
        if s_ok == 0 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the approved rule did not open the mirror"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::try_join!(
        use_mirror(&admin, &s, &server),
        use_mirror(&admin, &p, &server)
    )?;
    println!(
        "egress approved ({request_id}); apt uses the mirror ({:.0?})",
        started.elapsed()
    );

    // Snapshot A, the work, snapshot B.
    let snap = |name: &'static str| {
        let api = api.clone();
        let token = agent_token.clone();
        let s = s.clone();
        async move {
            let t = Instant::now();
            let (status, body) = api
                .send(
                    &token,
                    Method::POST,
                    &format!("/v1/sandboxes/{s}/snapshots"),
                    Some(json!({"name": name})),
                )
                .await?;
            ensure!(status == 201, "snapshot {name}: {status} {body}");
            println!(
                "snapshot {name}: {} in {:.1?}: {}",
                body["snapshot"]["id"],
                t.elapsed(),
                body["snapshot"]["meta_json"]
            );
            Ok::<_, anyhow::Error>(body)
        }
    };
    snap("A").await?;
    let t = Instant::now();
    must(
        &agent,
        &s,
        // The oldest nginx of the mirror's, not the newest: a playbook that does not
        // pin it installs another one (verify and production check the version).
        "v=$(apt-cache madison nginx | awk '{print $3}' | sort -V | head -n1) && \
         DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx=$v nginx-common=$v",
        600,
    )
    .await?;
    println!("apt-get install nginx: {:.1?}", t.elapsed());
    let versions = must(
        &agent,
        &s,
        "dpkg-query -W -f '${Version}' nginx; echo; apt-cache policy nginx | awk '/Candidate:/ {print $2}'",
        30,
    )
    .await?;
    let (v, c) = versions
        .trim()
        .split_once('\n')
        .context("dpkg-query, apt-cache")?;
    let (nginx_version, candidate) = (v.trim().to_owned(), c.trim().to_owned());
    println!("nginx {nginx_version} installed; the mirror's newest is {candidate}");
    ensure!(
        nginx_version.starts_with("1.22.1-") && nginx_version != candidate,
        "nginx from the mirror: {nginx_version:?} (newest {candidate:?}): the sandbox must hold an older one"
    );
    agent
        .write_file(
            &s,
            &WriteFileRequest {
                path: "/etc/nginx/conf.d/site.conf".into(),
                content: SITE_CONF.into(),
                encoding: None,
                mode: None,
            },
        )
        .await?;
    agent
        .write_file(
            &s,
            &WriteFileRequest {
                path: "/etc/systemd/system/fluid-hello.service".into(),
                content: UNIT.into(),
                encoding: None,
                mode: None,
            },
        )
        .await?;
    must(
        &agent,
        &s,
        "systemctl daemon-reload && systemctl enable --now fluid-hello.service && rm /etc/motd",
        60,
    )
    .await?;
    snap("B").await?;

    // diff(A, B): exactly the work.
    let t = Instant::now();
    let (status, body) = api
        .send(
            &agent_token,
            Method::POST,
            &format!("/v1/sandboxes/{s}/diff"),
            Some(json!({"from_snapshot": "A", "to_snapshot": "B"})),
        )
        .await?;
    ensure!(status == 200, "diff: {status} {body}");
    let diff = &body["diff"];
    let added = paths(diff, "files_added");
    let modified = paths(diff, "files_modified");
    let removed = paths(diff, "files_removed");
    let packages = names(diff, "packages_added");
    let services = names(diff, "services_changed");
    println!(
        "diff(A,B) {} in {:.1?}: {} added, {} modified, {} removed files; packages added {:?}; services {:?}; {} commands",
        diff["id"],
        t.elapsed(),
        added.len(),
        modified.len(),
        removed.len(),
        packages,
        services,
        diff["diff_json"]["commands_run"]
            .as_array()
            .map_or(0, Vec::len)
    );
    ensure!(
        packages.iter().any(|p| p == "nginx"),
        "nginx not among added packages: {packages:?}"
    );
    ensure!(
        added.iter().any(|p| p == "/etc/nginx/conf.d/site.conf"),
        "site.conf not added"
    );
    ensure!(removed == ["/etc/motd"], "removed: {removed:?}");
    ensure!(
        services.iter().any(|s| s == "fluid-hello.service"),
        "services: {services:?}"
    );
    let hello = diff["diff_json"]["services_changed"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == "fluid-hello.service")
        .context("fluid-hello")?;
    ensure!(hello["enabled"] == json!(true), "{hello}");
    let site = diff["text_diffs"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["path"] == "/etc/nginx/conf.d/site.conf")
        .context("no text diff of site.conf")?;
    println!("text diff:\n{}", site["unified"].as_str().unwrap_or(""));
    ensure!(
        site["unified"]
            .as_str()
            .unwrap_or("")
            .contains("+    root /srv/site;")
    );
    let all: Vec<&Value> = ["files_added", "files_modified", "files_removed"]
        .iter()
        .flat_map(|l| diff["diff_json"][l].as_array().into_iter().flatten())
        .collect();
    for e in &all {
        let path = e["path"].as_str().unwrap_or("");
        ensure!(
            !VOLATILE
                .iter()
                .any(|v| path == *v || path.starts_with(&format!("{v}/"))),
            "volatile path in the diff: {path}"
        );
    }
    let unexplained: Vec<&str> = all
        .iter()
        .filter(|e| e["package"].is_null())
        .filter_map(|e| e["path"].as_str())
        .filter(|p| !package_machinery(p))
        .filter(|p| {
            ![
                "/etc/nginx/conf.d/site.conf",
                "/etc/systemd/system/fluid-hello.service",
                "/etc/systemd/system/multi-user.target.wants/fluid-hello.service",
                "/etc/motd",
            ]
            .contains(p)
        })
        .collect();
    ensure!(
        unexplained.is_empty(),
        "changes the work does not explain: {unexplained:?}"
    );
    let entry = all
        .iter()
        .find(|e| e["path"] == "/etc/nginx/conf.d/site.conf")
        .context("site.conf entry")?;
    println!("site.conf entry: {entry}");
    ensure!(
        entry["mode"] == "0644"
            && entry["owner"] == "root"
            && entry["size"] == json!(SITE_CONF.len()),
        "{entry}"
    );

    // Restore A: nginx gone, /etc/motd back.
    let t = Instant::now();
    let (status, body) = api
        .send(
            &agent_token,
            Method::POST,
            &format!("/v1/sandboxes/{s}/snapshots/A/restore"),
            None,
        )
        .await?;
    ensure!(status == 200, "restore: {status} {body}");
    ready(&admin, &s).await?;
    let (nginx, _) = run(&admin, &s, "dpkg -s nginx >/dev/null 2>&1", 30).await?;
    let motd = must(&admin, &s, "cat /etc/motd | head -c 40; echo", 30).await?;
    println!(
        "restore A in {:.1?}: dpkg -s nginx exit {nginx}; /etc/motd: {motd:?}",
        t.elapsed()
    );
    ensure!(nginx != 0, "nginx still installed after restoring A");

    // A fork from B has nginx.
    let t = Instant::now();
    let (status, body) = api
        .send(
            &agent_token,
            Method::POST,
            &format!("/v1/sandboxes/{s}/fork"),
            Some(json!({"snapshot": "B", "vm_name": format!("{}-fork", stack.prefix), "wait_for_ip": true})),
        )
        .await?;
    ensure!(status == 201, "fork: {status} {body}");
    // B was taken while the sandbox ran: the fork resumes its memory.
    let resumed = body["sandbox"]["start_path"] == "fork";
    ensure!(resumed, "the fork from B booted: {body}");
    let fork = body["sandbox"]["id"]
        .as_str()
        .context("fork id")?
        .to_owned();
    ready(&admin, &fork).await?;
    let version = must(&admin, &fork, "dpkg-query -W -f '${Version}' nginx && test ! -e /etc/motd && cat /etc/nginx/conf.d/site.conf | head -n1", 30).await?;
    println!("fork {fork} from B in {:.1?}: nginx {version}", t.elapsed());
    // The fork carries B's disk: the very nginx build B installed from the mirror.
    ensure!(
        version.starts_with(&nginx_version) && version.contains("server {"),
        "fork {fork} has nginx {version:?}, B had {nginx_version:?}"
    );
    admin.destroy_sandbox(&fork).await?;

    // Bad input: 4xx with a message, never a 500.
    for (what, method, path, body, want) in [
        (
            "unknown snapshot",
            Method::POST,
            format!("/v1/sandboxes/{s}/snapshots/nope/restore"),
            None,
            404,
        ),
        (
            "diff against itself",
            Method::POST,
            format!("/v1/sandboxes/{s}/diff"),
            Some(json!({"from_snapshot": "A", "to_snapshot": "A"})),
            400,
        ),
        (
            "duplicate snapshot",
            Method::POST,
            format!("/v1/sandboxes/{s}/snapshots"),
            Some(json!({"name": "A"})),
            409,
        ),
        (
            "playbook name with /",
            Method::POST,
            "/v1/ansible/playbooks".to_owned(),
            Some(json!({"name": "a/b"})),
            400,
        ),
        (
            "playbook name with ..",
            Method::POST,
            "/v1/ansible/playbooks".to_owned(),
            Some(json!({"name": "a..b"})),
            400,
        ),
    ] {
        let (status, body) = api.send(&admin_token, method, &path, body).await?;
        println!(
            "bad input: {what:<22} → {status} {}",
            body["error"].as_str().unwrap_or("")
        );
        ensure!(
            status == want && body["error"].is_string(),
            "{what}: {status} {body}"
        );
    }

    // A playbook from diff(A, B), syntax-checked by ansible itself.
    let t = Instant::now();
    let (status, generated) = api
        .send(
            &agent_token,
            Method::POST,
            &format!("/v1/sandboxes/{s}/generate/ansible"),
            Some(json!({"from_snapshot": "A", "to_snapshot": "B", "name": "web-site"})),
        )
        .await?;
    ensure!(status == 201, "generate: {status} {generated}");
    let yaml = generated["yaml"].as_str().context("yaml")?.to_owned();
    println!(
        "generated playbook web-site in {:.1?} ({} tasks; review: {}):\n{yaml}",
        t.elapsed(),
        generated["tasks"].as_array().map_or(0, Vec::len),
        generated["review"]
    );
    let modules: Vec<&str> = generated["tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["handler"] != json!(true))
        .filter_map(|t| t["module"].as_str())
        .collect();
    let first = |m: &str| modules.iter().position(|x| x.ends_with(m));
    ensure!(
        first("apt") < first("copy") && first("copy") < first("systemd"),
        "task order: {modules:?}"
    );
    let file = stack.dir.path().join("web-site.yml");
    std::fs::write(&file, &yaml)?;
    let check = std::process::Command::new(ansible_playbook())
        .arg("--syntax-check")
        .arg(&file)
        .arg("-i")
        .arg("localhost,")
        .output()?;
    println!(
        "ansible-playbook --syntax-check: exit {:?} {}",
        check.status.code(),
        String::from_utf8_lossy(&check.stdout).trim()
    );
    ensure!(
        check.status.success(),
        "syntax check: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let (status, body) = api
        .send(
            &admin_token,
            Method::POST,
            "/v1/ansible/playbooks/web-site/tasks",
            Some(json!({"name": "bad", "module": "Not A Module!"})),
        )
        .await?;
    println!(
        "bad input: invalid module name     → {status} {}",
        body["error"].as_str().unwrap_or("")
    );
    ensure!(status == 400, "{status} {body}");

    // Production: a target in the controller's config, reached with its own key.
    jobs::add_target(&mut stack, &api, &admin_token, &p).await?;

    // Verify (a fresh sandbox, the playbook applied over SSH, diffed against B) and,
    // beside it, an operator's deploy to production: its check run goes at once, its
    // real run waits for a human (an agent's production job waits for an approval even
    // before its check run: hostile::ansible), who approves it once verify has passed
    // and the approval shows the check run's diff.
    let t = Instant::now();
    let (status, body) = api
        .send(
            &agent_token,
            Method::POST,
            "/v1/ansible/playbooks/web-site/verify",
            Some(json!({"wait": false})),
        )
        .await?;
    ensure!(status == 201, "verify: {status} {body}");
    let verify_id = body["job_id"].as_str().context("job_id")?.to_owned();
    let id = jobs::start(&api, &operator_token, "web-site").await?;
    let verified = jobs::ended(&api, &agent_token, &verify_id).await?;
    let v = &verified["verification"];
    println!(
        "verify in {:.1?}: reproduces: {} differences: {}",
        t.elapsed(),
        if v["reproduces"] == json!(true) {
            "yes"
        } else {
            "no"
        },
        v["differences"]
    );
    if v["reproduces"] != json!(true) {
        println!(
            "verify output:\n{}",
            verified["output"].as_str().unwrap_or("")
        );
        bail!("the playbook does not reproduce the sandbox");
    }
    let (approval_id, shown) = jobs::approval(&api, &operator_token, &id).await?;
    println!(
        "job {id}: approval {approval_id} after {:.1?}; the check run shows nginx: {}, site.conf: {}",
        t.elapsed(),
        shown.contains("nginx"),
        shown.contains("site.conf")
    );
    ensure!(
        shown.contains("nginx") && shown.contains("site.conf"),
        "the approval does not show the check-mode diff: {shown}"
    );
    jobs::decide(&api, &operator_token, &approval_id, "approve").await?;
    let j = jobs::ended(&api, &admin_token, &id).await?;
    println!(
        "approved: job {id} {} exit {} in {:.1?}; output tail:\n{}",
        j["status"],
        j["exit_code"],
        t.elapsed(),
        tail(j["output"].as_str().unwrap_or(""), 8)
    );
    ensure!(j["status"] == "finished", "the approved job failed: {j}");
    let state = must(&admin, &p, "dpkg-query -W -f '${Version}' nginx; echo; cat /etc/nginx/conf.d/site.conf | head -n2; systemctl is-enabled fluid-hello.service; test ! -e /etc/motd && echo motd-removed", 30).await?;
    println!("production now: {}", state.replace('\n', " | "));
    ensure!(
        state.lines().any(|l| l.trim() == "enabled")
            && state.starts_with(&nginx_version)
            && state.contains("motd-removed")
            && state.contains("listen 8088"),
        "{state}"
    );

    // Rejected: production untouched. A one-task playbook, so that its check run is
    // short; the approval shows the change it would have made.
    let (status, body) = api
        .send(
            &operator_token,
            Method::POST,
            "/v1/ansible/playbooks",
            Some(json!({"name": "rejected-change"})),
        )
        .await?;
    ensure!(status == 201, "playbook: {status} {body}");
    let (status, body) = api
        .send(
            &operator_token,
            Method::POST,
            "/v1/ansible/playbooks/rejected-change/tasks",
            Some(json!({"name": "mark production", "module": "ansible.builtin.copy",
                        "params": {"dest": "/etc/fluid-rejected", "content": "rejected\n", "mode": "0644"}})),
        )
        .await?;
    ensure!(status == 201, "task: {status} {body}");
    let rejected = jobs::start(&api, &operator_token, "rejected-change").await?;
    let (approval_id, shown) = jobs::approval(&api, &operator_token, &rejected).await?;
    ensure!(
        shown.contains("/etc/fluid-rejected"),
        "the approval does not show the check-mode diff: {shown}"
    );
    jobs::decide(&api, &operator_token, &approval_id, "reject").await?;
    let j = jobs::ended(&api, &admin_token, &rejected).await?;
    let (marked, _) = run(&admin, &p, "test -e /etc/fluid-rejected", 30).await?;
    println!(
        "rejected: job {rejected} {} ({}); production: /etc/fluid-rejected present: {}",
        j["status"],
        j["error"],
        marked == 0
    );
    ensure!(
        j["status"] == "failed" && marked != 0,
        "production changed after a rejection"
    );

    // The whole story is in the audit trail.
    let (_, audit) = api
        .send(&admin_token, Method::GET, "/v1/audit?limit=1000", None)
        .await?;
    let events = audit.to_string();
    ensure!(
        events.contains(&id) && events.contains("production_apply"),
        "the job is not in the audit trail"
    );

    for id in [&s, &p] {
        admin.destroy_sandbox(id).await?;
    }
    println!("review loop done in {:.0?}", started.elapsed());
    drop(inet);
    Ok(())
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn ansible_playbook() -> String {
    let venv = "/opt/fluid-ansible/bin/ansible-playbook";
    let found = std::path::Path::new(venv).exists();
    if found { venv } else { "ansible-playbook" }.to_owned()
}
