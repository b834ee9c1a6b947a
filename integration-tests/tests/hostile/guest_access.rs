//! Attacks on access to guests (issue 12, holes 2 and 9), on two real VMs under TCG
//! with their real sshd:
//!
//! - an SSH certificate issued for sandbox A (through `/v1/access/request`, by A's
//!   tenant) is refused by sandbox B's sshd, B being a fork of A (its disk, identity
//!   files included, is a copy of A's) owned by another tenant; B's certificate is
//!   refused by A; a certificate with a bare `root` principal, signed by the real CA, is
//!   refused by both; a certificate for user `dev` does not log in as `root`;
//! - a revoked certificate stays refused after its tenant restores a snapshot taken
//!   before the revocation (the restore reverts the revoked-keys file on the disk);
//! - a `readonly` token cannot read `/etc/shadow` through its backup, `/proc/1/root`,
//!   `..`, a symlink, a symlinked directory or a hard link: each is refused (exact
//!   status and message, an audit row for each refusal made inside the guest), and the
//!   shadow file's content is in no answer.
//!
//! One test function: the two VMs (A, then B forked from A) boot once and serve every
//! scenario; each scenario runs even when an earlier one failed, and the test fails
//! naming every scenario that did.

use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use fluid_client::Client;
use fluid_client::snapshots::{CreateSnapshotRequest, ForkRequest};
use fluid_client::types::{AccessRequest, HostState};
use fluid_controller::work::ssh_ca::{CertSpec, SshCa, sandbox_principal};
use integration_tests::api::Api;
use integration_tests::{AgentOptions, Stack, StoreKind, guest};
use serde_json::json;

/// One VM of the test.
struct Vm {
    id: String,
    ip: String,
}

/// What ssh answered.
struct SshResult {
    ok: bool,
    stderr: String,
}

impl SshResult {
    /// Refused by sshd's authentication (not a network failure, which would prove
    /// nothing).
    fn refused(&self) -> bool {
        !self.ok && self.stderr.contains("Permission denied")
    }
}

/// `ssh -i key -o CertificateFile=cert user@ip true` (a real OpenSSH client).
fn ssh(key: &Path, cert: &Path, user: &str, ip: &str) -> Result<SshResult> {
    let out = Process::new("ssh")
        .args(["-i", &key.to_string_lossy()])
        .args(["-o", &format!("CertificateFile={}", cert.display())])
        .args(["-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"])
        .args(["-o", "ConnectTimeout=15", "-o", "ConnectionAttempts=2"])
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args(["-o", "LogLevel=ERROR", &format!("{user}@{ip}"), "true"])
        .output()
        .context("running ssh")?;
    Ok(SshResult {
        ok: out.status.success(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    })
}

/// A fresh ed25519 key pair; answers (private key path, public key line).
fn keypair(dir: &Path, name: &str) -> Result<(PathBuf, String)> {
    let key = dir.join(name);
    let out = Process::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&key)
        .output()?;
    ensure!(out.status.success(), "ssh-keygen failed: {out:?}");
    let public = std::fs::read_to_string(key.with_extension("pub"))?;
    Ok((key, public.trim().to_owned()))
}

/// Asks `client` for a certificate for a new key; answers (key, cert file, cert id).
async fn request_cert(
    client: &Client,
    vm: &Vm,
    dir: &Path,
    name: &str,
    username: Option<&str>,
) -> Result<(PathBuf, PathBuf, String)> {
    let (key, public) = keypair(dir, name)?;
    let access = client
        .request_access(&AccessRequest {
            sandbox_id: vm.id.clone(),
            user_id: name.to_owned(),
            public_key: public,
            ttl_minutes: Some(10),
            username: username.map(str::to_owned),
        })
        .await?;
    let cert = dir.join(format!("{name}-cert.pub"));
    std::fs::write(&cert, format!("{}\n", access.certificate.trim()))?;
    Ok((key, cert, access.certificate_id))
}

/// The principals `ssh-keygen -L` reads from a certificate file.
fn principals(cert: &Path) -> Result<Vec<String>> {
    let out = Process::new("ssh-keygen")
        .arg("-L")
        .arg("-f")
        .arg(cert)
        .output()?;
    ensure!(out.status.success(), "ssh-keygen -L: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text
        .lines()
        .skip_while(|l| l.trim() != "Principals:")
        .skip(1);
    let mut found = Vec::new();
    for l in lines.by_ref() {
        if !l.starts_with("                ") {
            break;
        }
        found.push(l.trim().to_owned());
    }
    Ok(found)
}

fn expect_in(what: &str, r: &SshResult) -> Result<()> {
    ensure!(r.ok, "{what}: refused: {}", r.stderr);
    println!("  {what}: logged in");
    Ok(())
}

fn expect_refused(what: &str, r: &SshResult) -> Result<()> {
    ensure!(
        r.refused(),
        "{what}: expected sshd to refuse it, got ok={} stderr={:?}",
        r.ok,
        r.stderr
    );
    println!("  {what}: refused ({})", r.stderr);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_access_attacks_fail() -> Result<()> {
    let t0 = Instant::now();
    let mut stack = Stack::start(StoreKind::Sqlite, vec![AgentOptions::new("a")]).await?;
    stack
        .wait_host("a", HostState::Online, Duration::from_secs(30))
        .await?;
    let admin = stack.client.clone();
    let (a_id, a_ip) = guest::create(&admin, "tenant-a", &format!("{}-ga-a", stack.prefix))
        .await
        .context("creating sandbox A")?;
    guest::ready(&admin, &a_id, Duration::from_secs(180)).await?;
    // `base`: A before anything below; B is forked from it (A's disk and identity
    // files, for another tenant), and A's tenant later restores it.
    admin
        .create_snapshot(
            &a_id,
            &CreateSnapshotRequest {
                name: "base".into(),
                external: None,
                memory: None,
            },
        )
        .await
        .context("snapshot base of A")?;
    let fork = admin
        .fork_sandbox(
            &a_id,
            &ForkRequest {
                snapshot: Some("base".into()),
                agent_id: Some("tenant-b".into()),
                vm_name: Some(format!("{}-ga-b", stack.prefix)),
                cpu: Some(1),
                memory_mb: Some(512),
                ttl_seconds: None,
                wait_for_ip: Some(true),
            },
        )
        .await
        .context("forking B from A")?;
    let b = Vm {
        id: fork.sandbox.id.clone(),
        ip: fork.ip_address.clone().context("B has no IP")?,
    };
    let a = Vm {
        id: a_id,
        ip: a_ip.to_string(),
    };
    guest::ready(&admin, &b.id, Duration::from_secs(180)).await?;
    println!(
        "A {} ({}) and its fork B {} ({}) run commands after {:.0?}",
        a.id,
        a.ip,
        b.id,
        b.ip,
        t0.elapsed()
    );
    let keys = stack.dir.path().join("guest-access-keys");
    std::fs::create_dir_all(&keys)?;

    let mut failed = Vec::new();
    let t = Instant::now();
    println!("== certificates are bound to their sandbox");
    if let Err(e) = certificates_are_bound_to_their_sandbox(&stack, &a, &b, &keys).await {
        println!("FAILED: {e:#}");
        failed.push(format!("certificates_are_bound_to_their_sandbox: {e:#}"));
    }
    println!("   ({:.1?})", t.elapsed());
    let t = Instant::now();
    println!("== a revoked certificate stays revoked after a snapshot restore");
    if let Err(e) = revocation_survives_a_restore(&stack, &a, &keys).await {
        println!("FAILED: {e:#}");
        failed.push(format!("revocation_survives_a_restore: {e:#}"));
    }
    println!("   ({:.1?})", t.elapsed());
    let t = Instant::now();
    println!("== a readonly token cannot read denied files through path tricks");
    if let Err(e) = readonly_path_tricks_are_refused(&stack, &b).await {
        println!("FAILED: {e:#}");
        failed.push(format!("readonly_path_tricks_are_refused: {e:#}"));
    }
    println!("   ({:.1?})", t.elapsed());
    for id in [&a.id, &b.id] {
        if let Err(e) = admin.destroy_sandbox(id).await {
            println!("destroying {id}: {e}");
        }
    }
    println!("guest_access: {:.0?} in all", t0.elapsed());
    if !failed.is_empty() {
        bail!("{}", failed.join("\n"));
    }
    Ok(())
}

/// Hole 2: a certificate names its sandbox (and user), and only that sandbox's sshd
/// takes it.
async fn certificates_are_bound_to_their_sandbox(
    stack: &Stack,
    a: &Vm,
    b: &Vm,
    keys: &Path,
) -> Result<()> {
    let tenant_a =
        stack.client_with(&stack.token_cli("ga-tenant-a", "agent", Some("tenant-a"))?)?;
    let tenant_b =
        stack.client_with(&stack.token_cli("ga-tenant-b", "agent", Some("tenant-b"))?)?;

    let (key, cert, _) = request_cert(&tenant_a, a, keys, "alice", None).await?;
    let p = principals(&cert)?;
    println!("  A's certificate (tenant-a) names {p:?}");
    ensure!(p == [sandbox_principal(&a.id, "root")], "principals {p:?}");
    expect_in("A's certificate on A", &ssh(&key, &cert, "root", &a.ip)?)?;
    expect_refused(
        "A's certificate on B (a fork of A)",
        &ssh(&key, &cert, "root", &b.ip)?,
    )?;

    let (bkey, bcert, _) = request_cert(&tenant_b, b, keys, "bob", None).await?;
    expect_in("B's certificate on B", &ssh(&bkey, &bcert, "root", &b.ip)?)?;
    expect_refused("B's certificate on A", &ssh(&bkey, &bcert, "root", &a.ip)?)?;

    // What every certificate was before: the Unix user alone, signed by the real CA.
    let ca = SshCa::load_or_create(&stack.dir.path().join("controller").join("ssh_user_ca"))?;
    let (okey, opublic) = keypair(keys, "old-style")?;
    let old = ca.sign(&CertSpec {
        public_key: &opublic,
        principals: &["root".to_owned()],
        ttl: Duration::from_secs(300),
        key_id: "bare-root",
        permit_pty: false,
    })?;
    let ocert = keys.join("old-style-cert.pub");
    std::fs::write(&ocert, format!("{}\n", old.openssh))?;
    expect_refused(
        "a bare `root` certificate from the CA on A",
        &ssh(&okey, &ocert, "root", &a.ip)?,
    )?;
    expect_refused(
        "a bare `root` certificate from the CA on B",
        &ssh(&okey, &ocert, "root", &b.ip)?,
    )?;

    // A user made after boot logs in with a certificate for it, which does not open
    // root.
    guest::must(
        &stack.client,
        &a.id,
        "id dev >/dev/null 2>&1 || useradd -m -s /bin/sh dev",
        60,
    )
    .await?;
    let (dkey, dcert, _) = request_cert(&tenant_a, a, keys, "dana", Some("dev")).await?;
    ensure!(principals(&dcert)? == [sandbox_principal(&a.id, "dev")]);
    expect_in(
        "A's certificate for dev, as dev on A",
        &ssh(&dkey, &dcert, "dev", &a.ip)?,
    )?;
    expect_refused(
        "A's certificate for dev, as root on A",
        &ssh(&dkey, &dcert, "root", &a.ip)?,
    )?;

    // The agent's own exec certificates name their sandbox too: commands run on both.
    let (code, out) = guest::run(
        &stack.client,
        &b.id,
        "cat /run/fluid-identity/sandbox_id",
        30,
    )
    .await?;
    ensure!(code == 0 && out == b.id, "B's identity: {code} {out:?}");
    println!("  B's sshd takes principals for {out} only (its own id, not A's)");
    Ok(())
}

/// Hole 2: revocation reaches the sandbox, and a restore (which reverts its disk) does
/// not bring the revoked key back.
async fn revocation_survives_a_restore(stack: &Stack, a: &Vm, keys: &Path) -> Result<()> {
    let tenant_a =
        stack.client_with(&stack.token_cli("ga-tenant-a2", "agent", Some("tenant-a"))?)?;
    let (key, cert, cert_id) = request_cert(&tenant_a, a, keys, "carol", None).await?;
    expect_in(
        "carol's certificate on A",
        &ssh(&key, &cert, "root", &a.ip)?,
    )?;
    guest::must(&stack.client, &a.id, "touch /root/after-base", 30).await?;
    let revoked = stack.client.revoke_certificate(&cert_id).await?;
    ensure!(
        revoked.revocation_applied == Some(true),
        "revocation not applied: {revoked:?}"
    );
    expect_refused(
        "carol's revoked certificate on A",
        &ssh(&key, &cert, "root", &a.ip)?,
    )?;

    // The tenant restores a snapshot from before the revocation.
    let t = Instant::now();
    tenant_a.restore_snapshot(&a.id, "base").await?;
    println!("  tenant-a restored A to `base` in {:.1?}", t.elapsed());
    let (code, _) = guest::run(&stack.client, &a.id, "test -e /root/after-base", 60).await?;
    ensure!(
        code == 1,
        "the restore did not revert A's disk (exit {code})"
    );
    let public = std::fs::read_to_string(key.with_extension("pub"))?;
    let body = public.split_whitespace().nth(1).context("key")?;
    let listed = guest::must(
        &stack.client,
        &a.id,
        &format!("grep -c -F -- '{body}' /etc/ssh/fluid_revoked_keys"),
        30,
    )
    .await?;
    println!(
        "  A's disk is back at `base` (a file made after it is gone); its revoked keys list carol's key again ({listed} line)"
    );
    // A certificate issued now is accepted: the guest's clock and principals take
    // carol's (older, still valid) certificate too, so only the revocation refuses it.
    let (fkey, fcert, _) = request_cert(&tenant_a, a, keys, "carol2", None).await?;
    let fresh = ssh(&fkey, &fcert, "root", &a.ip)?;
    if !fresh.ok {
        let log = guest::run(
            &stack.client,
            &a.id,
            "date -u; journalctl -u ssh --no-pager -n 15",
            30,
        )
        .await;
        bail!(
            "a fresh certificate was refused after the restore: {}; guest: {log:?}",
            fresh.stderr
        );
    }
    println!("  a certificate issued after the restore logs in");
    expect_refused(
        "carol's revoked certificate on A after the restore",
        &ssh(&key, &cert, "root", &a.ip)?,
    )?;
    // sshd says why: the key is in the revoked-keys file (the restore lost the log
    // lines from before it).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, n) = guest::run(
            &stack.client,
            &a.id,
            "journalctl -u ssh --no-pager | grep -c 'revoked by file /etc/ssh/fluid_revoked_keys'",
            30,
        )
        .await?;
        if n.parse::<u32>().is_ok_and(|n| n > 0) {
            println!("  A's sshd logged {n} refusal(s) of a revoked key since the restore");
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "sshd logged no refusal of a revoked key: {n}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Hole 9: the path policy holds against what a path really reaches.
async fn readonly_path_tricks_are_refused(stack: &Stack, vm: &Vm) -> Result<()> {
    let shadow = guest::must(
        &stack.client,
        &vm.id,
        "ln -sfn /etc/shadow /tmp/ga-link && ln -sfn /etc /tmp/ga-etc && \
         ln -sfn /proc/1/root /tmp/ga-root && rm -f /root/ga-hard && \
         ln /etc/shadow /root/ga-hard && cat /etc/shadow",
        30,
    )
    .await?;
    let secrets: Vec<&str> = shadow.lines().filter(|l| l.len() > 8).collect();
    ensure!(
        secrets.iter().any(|l| l.starts_with("root:")),
        "shadow: {shadow:?}"
    );
    let reader = stack.token_cli("ga-reader", "readonly", None)?;
    let api = Api::new(&stack.api_url);
    let read = |path: &str| {
        let api = api.clone();
        let reader = reader.clone();
        let uri = format!("/v1/sandboxes/{}/files/read", vm.id);
        let body = json!({ "path": path });
        async move {
            api.send(&reader, reqwest::Method::POST, &uri, Some(body))
                .await
        }
    };
    // The token can read: what follows is the policy, not a missing permission.
    let (s, v) = read("/etc/passwd").await?;
    ensure!(
        s == 200
            && v["content"]
                .as_str()
                .is_some_and(|c| c.starts_with("root:x:0:0")),
        "readonly reading /etc/passwd: {s} {v}"
    );
    let in_guest = |p: &str, reached: &str| {
        format!("{p} resolves to {reached}, which is under policy.denied_paths entry {reached}")
    };
    let proc = |p: &str| {
        format!(
            "{p} goes through /proc/<pid>/root, cwd, fd or map_files, or /dev/fd: the files API refuses those paths"
        )
    };
    let cases: Vec<(&str, u16, String)> = vec![
        ("/etc/shadow", 403, "/etc/shadow is under policy.denied_paths entry /etc/shadow".into()),
        ("/etc/shadow-", 403, "/etc/shadow- is under policy.denied_paths entry /etc/shadow-".into()),
        ("/etc/gshadow-", 403, "/etc/gshadow- is under policy.denied_paths entry /etc/gshadow-".into()),
        ("/proc/1/root/etc/shadow", 403, proc("/proc/1/root/etc/shadow")),
        ("/proc/self/cwd/etc/shadow", 403, proc("/proc/self/cwd/etc/shadow")),
        ("/dev/fd/3", 403, proc("/dev/fd/3")),
        (
            "/etc/../etc/shadow",
            400,
            "path: \"/etc/../etc/shadow\": must be normalised (no '.' or '..')".into(),
        ),
        ("/tmp/ga-link", 403, in_guest("/tmp/ga-link", "/etc/shadow")),
        ("/tmp/ga-etc/shadow", 403, in_guest("/tmp/ga-etc/shadow", "/etc/shadow")),
        ("/tmp/ga-root/etc/shadow", 403, in_guest("/tmp/ga-root/etc/shadow", "/etc/shadow")),
        (
            "/root/ga-hard",
            403,
            "/root/ga-hard is a hard link to /etc/shadow, which is under policy.denied_paths entry /etc/shadow".into(),
        ),
    ];
    let mut bodies = Vec::new();
    for (path, want, message) in &cases {
        let (s, v) = read(path).await?;
        println!("  readonly read {path:?} → {s} {}", v["error"]);
        ensure!(
            s == *want && v["error"].as_str() == Some(message.as_str()),
            "{path}: got {s} {v}, want {want} {message:?}"
        );
        bodies.push(v.to_string());
    }
    // The shadow file's lines are in no answer, and in no audit row of the reads (the
    // admin's own `cat` above is audited with its output, as every command is).
    let audit = stack.client.list_commands(&vm.id, "limit=500").await?;
    let reads: Vec<_> = audit
        .commands
        .iter()
        .filter(|c| c.kind == "file_read")
        .collect();
    ensure!(reads.len() >= cases.len(), "{} read rows", reads.len());
    let audit_text = serde_json::to_string(&reads)?;
    for line in &secrets {
        ensure!(
            !bodies.iter().any(|b| b.contains(line)),
            "a shadow line reached an answer"
        );
        ensure!(
            !audit_text.contains(line),
            "a shadow line reached the audit"
        );
    }
    // Each refusal made inside the guest has its audit row (status denied, the reason).
    for (path, _, message) in cases
        .iter()
        .filter(|c| c.0.starts_with("/tmp/") || c.0.starts_with("/root/"))
    {
        ensure!(
            audit
                .commands
                .iter()
                .any(|c| c.status == "denied" && c.error.as_deref() == Some(message.as_str())),
            "no denied audit row for {path}"
        );
    }
    println!(
        "  {} refusals, each with its exact message; {} shadow lines in no answer and no audit row",
        cases.len(),
        secrets.len()
    );
    Ok(())
}
