//! Acceptance of commands, files and access on one real VM (TCG): exit codes and
//! streams, timeouts that kill the process group, output caps with bounded controller
//! memory, live streaming, literal env values, binary-safe files, policy refusals with
//! audit rows, short-lived and revoked SSH certificates refused by the VM's sshd, and a
//! client that disconnects mid-stream losing nothing.
//!
//! One VM is booted and shared by every check (a boot costs ~35 s under TCG).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command as Process;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use fluid_client::types::{
    AccessRequest, CreateSandboxRequest, EditFileRequest, HostState, ReadFileRequest,
    RunCommandRequest, WriteFileRequest,
};
use fluid_client::{Client, types::Command};
use integration_tests::stack::wait_ssh_banner;
use integration_tests::{AgentOptions, Stack, StoreKind};

const POLICY: &str = "[policy]\ncommand_deny = [\"^shutdown\", \"rm -rf /$\"]\n";

fn cmd(command: &str) -> RunCommandRequest {
    RunCommandRequest {
        command: command.to_owned(),
        ..Default::default()
    }
}

async fn run(client: &Client, id: &str, req: RunCommandRequest) -> Result<Command> {
    Ok(client.run_command(id, &req).await?.command)
}

/// `ssh … root@ip true` with a key and certificate; Ok(true) when it got in.
fn ssh_with_cert(key: &Path, cert: &Path, ip: &str) -> Result<bool> {
    let out = Process::new("ssh")
        .args(["-i", &key.to_string_lossy()])
        .args(["-o", &format!("CertificateFile={}", cert.display())])
        .args([
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
        ])
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args(["-o", "LogLevel=ERROR", &format!("root@{ip}"), "true"])
        .output()
        .context("running ssh")?;
    Ok(out.status.success())
}

/// A fresh ed25519 key pair for a human; returns (private key path, public key line).
fn keypair(dir: &Path, name: &str) -> Result<(std::path::PathBuf, String)> {
    let key = dir.join(name);
    let out = Process::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            name,
            "-f",
            &key.to_string_lossy(),
        ])
        .output()?;
    ensure!(out.status.success(), "ssh-keygen failed");
    let public = std::fs::read_to_string(key.with_extension("pub"))?;
    Ok((key, public.trim().to_owned()))
}

async fn request_cert(
    stack: &Stack,
    id: &str,
    dir: &Path,
    name: &str,
    ttl: u32,
) -> Result<(std::path::PathBuf, std::path::PathBuf, String)> {
    let (key, public) = keypair(dir, name)?;
    let access = stack
        .client
        .request_access(&AccessRequest {
            sandbox_id: id.to_owned(),
            user_id: name.to_owned(),
            public_key: public,
            ttl_minutes: Some(ttl),
            username: None,
        })
        .await?;
    let cert = dir.join(format!("{name}-cert.pub"));
    std::fs::write(&cert, format!("{}\n", access.certificate.trim()))?;
    Ok((key, cert, access.certificate_id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_files_and_access_on_a_real_vm() -> Result<()> {
    let mut stack =
        Stack::start_with(StoreKind::Sqlite, vec![AgentOptions::new("a")], POLICY).await?;
    stack
        .wait_host("a", HostState::Online, Duration::from_secs(30))
        .await?;
    let created = stack
        .client
        .create_sandbox(&CreateSandboxRequest {
            source_vm_name: "debian-12".into(),
            agent_id: "integration".into(),
            vm_name: Some(format!("{}-exec", stack.prefix)),
            wait_for_ip: Some(true),
            ..Default::default()
        })
        .await?;
    let id = created.sandbox.id.clone();
    let ip = created.ip_address.context("no ip")?;
    wait_ssh_banner(&format!("{ip}:22"), Duration::from_secs(90)).await?;
    let client = stack.client.clone();
    let keys = stack.dir.path().join("human-keys");
    std::fs::create_dir_all(&keys)?;

    // A 1-minute certificate, checked again once it has expired (at the end).
    let (short_key, short_cert, _) = request_cert(&stack, &id, &keys, "short", 1).await?;
    let short_issued = Instant::now();
    ensure!(
        ssh_with_cert(&short_key, &short_cert, &ip)?,
        "a fresh 1-minute certificate was refused"
    );
    println!("access: fresh 1-minute certificate accepted by the VM's sshd");

    // 1. stdout, stderr, exit code.
    let t = Instant::now();
    let c = run(&client, &id, cmd("echo hi; echo err >&2; exit 3")).await?;
    println!(
        "run: stdout {:?} stderr {:?} exit {} ({} ms, first exec incl. SSH connect)",
        c.stdout,
        c.stderr,
        c.exit_code,
        t.elapsed().as_millis()
    );
    ensure!(
        c.stdout == "hi\n" && c.stderr == "err\n" && c.exit_code == 3,
        "got {c:?}"
    );
    let t = Instant::now();
    run(&client, &id, cmd("true")).await?;
    println!(
        "run: `true` on the warm connection in {} ms",
        t.elapsed().as_millis()
    );

    // 2. timeout kills the process group.
    let t = Instant::now();
    let c = run(
        &client,
        &id,
        RunCommandRequest {
            timeout_sec: Some(2),
            ..cmd("sleep 100")
        },
    )
    .await?;
    let took = t.elapsed();
    println!(
        "timeout: timed_out={} exit {} after {:.1}s",
        c.timed_out,
        c.exit_code,
        took.as_secs_f64()
    );
    ensure!(
        c.timed_out && took < Duration::from_secs(5),
        "got {c:?} after {took:?}"
    );
    let left = run(&client, &id, cmd("pgrep -x sleep || echo none")).await?;
    ensure!(
        left.stdout.trim() == "none",
        "sleep left running: {:?}",
        left.stdout
    );
    println!("timeout: no sleep left in the VM");

    // 3. output cap; the controller's memory stays bounded.
    let rss0 = stack.controller.rss_kib().context("controller rss")?;
    let c = run(&client, &id, cmd("head -c 50000000 /dev/zero | tr '\\0' a")).await?;
    let rss1 = stack.controller.rss_kib().context("controller rss")?;
    println!(
        "cap: stdout {} bytes kept, truncated={}, exit {}; controller RSS {} → {} KiB (+{} KiB)",
        c.stdout.len(),
        c.truncated,
        c.exit_code,
        rss0,
        rss1,
        rss1.saturating_sub(rss0)
    );
    ensure!(
        c.truncated && c.stdout.len() == 1024 * 1024,
        "got {} bytes, truncated={}",
        c.stdout.len(),
        c.truncated
    );
    ensure!(
        rss1.saturating_sub(rss0) < 20 * 1024,
        "controller RSS grew by {} KiB",
        rss1 - rss0
    );

    // 4. streamed output arrives as it happens.
    let t = Instant::now();
    let mut first = None;
    let rec = client
        .run_command_streaming(
            &id,
            &cmd("for i in 1 2 3; do echo $i; sleep 1; done"),
            |ev| {
                if ev.event == "stdout" && first.is_none() {
                    first = Some(t.elapsed());
                }
            },
        )
        .await?
        .command;
    let end = t.elapsed();
    let first = first.context("no stdout event")?;
    println!(
        "stream: first line at {:.2}s, exit at {:.2}s (lead {:.2}s)",
        first.as_secs_f64(),
        end.as_secs_f64(),
        (end - first).as_secs_f64()
    );
    ensure!(rec.stdout == "1\n2\n3\n" && end - first >= Duration::from_millis(1500));

    // 5. env values arrive literally; bad names are refused.
    let weird = [
        "it's \"quoted\"",
        "$(id)",
        "`id`",
        "line1\nline2",
        "a\\b ; rm -rf / #",
    ];
    for v in weird {
        let env = BTreeMap::from([("FLUID_V".to_owned(), v.to_owned())]);
        let c = run(
            &client,
            &id,
            RunCommandRequest {
                env: Some(env),
                ..cmd("printf '%s' \"$FLUID_V\"")
            },
        )
        .await?;
        ensure!(c.stdout == v, "env value {v:?} arrived as {:?}", c.stdout);
    }
    println!("env: {} tricky values arrived literally", weird.len());
    let bad = client
        .run_command(
            &id,
            &RunCommandRequest {
                env: Some(BTreeMap::from([("A;B".to_owned(), "x".to_owned())])),
                ..cmd("true")
            },
        )
        .await
        .expect_err("env name A;B must be refused");
    println!("env: name A;B → {bad}");
    ensure!(bad.status().map(|s| s.as_u16()) == Some(400));

    // 6. files: text and binary round trips, edit, refusals.
    let w = client
        .write_file(
            &id,
            &WriteFileRequest {
                path: "/root/notes.txt".into(),
                content: "alpha beta\n".into(),
                ..Default::default()
            },
        )
        .await?;
    ensure!(w.size == 11);
    let e = client
        .edit_file(
            &id,
            &EditFileRequest {
                path: "/root/notes.txt".into(),
                old_str: "beta".into(),
                new_str: "gamma".into(),
            },
        )
        .await?;
    ensure!(e.replaced == 1);
    let r = client
        .read_file(
            &id,
            &ReadFileRequest {
                path: "/root/notes.txt".into(),
                ..Default::default()
            },
        )
        .await?;
    ensure!(
        r.content == "alpha gamma\n" && r.encoding == "utf-8",
        "read back {r:?}"
    );
    let created_file = client
        .edit_file(
            &id,
            &EditFileRequest {
                path: "/root/new.txt".into(),
                old_str: String::new(),
                new_str: "fresh".into(),
            },
        )
        .await?;
    ensure!(created_file.replaced == 0);
    let bytes: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
    client
        .write_file(
            &id,
            &WriteFileRequest {
                path: "/root/blob.bin".into(),
                content: b64.clone(),
                encoding: Some("base64".into()),
                mode: Some("0600".into()),
            },
        )
        .await?;
    let r = client
        .read_file(
            &id,
            &ReadFileRequest {
                path: "/root/blob.bin".into(),
                ..Default::default()
            },
        )
        .await?;
    ensure!(
        r.encoding == "base64" && r.content == b64 && r.size == 4096,
        "binary read back differs"
    );
    let mode = run(&client, &id, cmd("stat -c %a /root/blob.bin")).await?;
    ensure!(mode.stdout.trim() == "600", "mode {:?}", mode.stdout);
    println!(
        "files: text write/edit/read, create-by-edit, 4096-byte binary round trip, mode 0600 — ok"
    );
    for (path, want) in [
        ("root/x", 400),
        ("/root/../etc/passwd", 400),
        ("/root/a\0b", 400),
        ("/etc/shadow", 403),
    ] {
        let err = client
            .read_file(
                &id,
                &ReadFileRequest {
                    path: path.into(),
                    ..Default::default()
                },
            )
            .await
            .expect_err("bad path accepted");
        println!("files: {path:?} → {err}");
        ensure!(
            err.status().map(|s| s.as_u16()) == Some(want),
            "{path:?}: {err}"
        );
    }

    // 7. a denied command: 403 and an audit row.
    let err = client
        .run_command(&id, &cmd("shutdown -h now"))
        .await
        .expect_err("denied command ran");
    println!("policy: `shutdown -h now` → {err}");
    ensure!(err.status().map(|s| s.as_u16()) == Some(403));
    let audit = client.list_commands(&id, "limit=100").await?;
    ensure!(
        audit
            .commands
            .iter()
            .any(|c| c.command == "shutdown -h now" && c.status == "denied"),
        "no audit row for the denied command"
    );

    // 8. several commands at once on one sandbox: each notes, inside the guest, when it
    // started and ended; they ran at the same time if every one started before any
    // ended (a fact about overlap, not a latency bound, which belongs to exec-bench).
    let t = Instant::now();
    let runs = (0..3).map(|i| {
        let client = client.clone();
        let id = id.clone();
        async move {
            run(
                &client,
                &id,
                cmd(&format!("date +%s.%N; sleep 2; echo run-{i}; date +%s.%N")),
            )
            .await
        }
    });
    let outs = futures::future::join_all(runs).await;
    let mut spans = Vec::new();
    for o in &outs {
        let c = match o {
            Ok(c) if c.exit_code == 0 => c,
            other => anyhow::bail!("parallel run failed: {other:?}"),
        };
        let times: Vec<f64> = c
            .stdout
            .lines()
            .filter_map(|l| l.trim().parse::<f64>().ok())
            .collect();
        ensure!(times.len() == 2, "start and end times: {:?}", c.stdout);
        spans.push((times[0], times[1]));
    }
    let last_start = spans.iter().map(|s| s.0).fold(f64::MIN, f64::max);
    let first_end = spans.iter().map(|s| s.1).fold(f64::MAX, f64::min);
    println!(
        "parallel: 3 × `sleep 2` took {:.1}s together; all three were running at once: {}",
        t.elapsed().as_secs_f64(),
        last_start < first_end
    );
    ensure!(
        last_start < first_end,
        "the commands ran one after another: {spans:?}"
    );

    // 9. a client that disconnects mid-stream loses nothing.
    let http = reqwest::Client::new();
    let mut resp = http
        .post(format!(
            "{}/v1/sandboxes/{id}/run?stream=true",
            stack.api_url
        ))
        .bearer_auth(&stack.admin_token)
        .json(&cmd("for i in 1 2 3 4; do echo $i; sleep 1; done; exit 7"))
        .send()
        .await?;
    let _first = resp.chunk().await?;
    drop(resp);
    // The command goes on without its client; wait (with a deadline) until its record
    // is finished.
    let deadline = Instant::now() + Duration::from_secs(60);
    let rec = loop {
        let audit = client.list_commands(&id, "limit=100").await?;
        let rec = audit
            .commands
            .into_iter()
            .find(|c| c.command.ends_with("exit 7"))
            .context("no record of the abandoned command")?;
        if rec.status != "running" {
            break rec;
        }
        ensure!(
            Instant::now() < deadline,
            "the abandoned command still runs after 60 s: {rec:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!(
        "disconnect: record after the client left: exit {} stdout {:?} status {}",
        rec.exit_code, rec.stdout, rec.status
    );
    ensure!(
        rec.exit_code == 7 && rec.stdout == "1\n2\n3\n4\n",
        "record {rec:?}"
    );

    // 10a. the public gRPC API streams the same command, with the same audit.
    let channel = tonic::transport::Channel::from_shared(stack.grpc_url.clone())?
        .connect()
        .await?;
    let bearer: tonic::metadata::AsciiMetadataValue =
        format!("Bearer {}", stack.admin_token).parse()?;
    let mut grpc = fluid_proto::api::sandboxes_client::SandboxesClient::with_interceptor(
        channel,
        move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert("authorization", bearer.clone());
            Ok(req)
        },
    );
    let mut stream = grpc
        .exec(fluid_proto::api::ExecCommandRequest {
            sandbox_id: id.clone(),
            command: "echo hi; echo err >&2; exit 3".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let (mut out, mut err_out, mut result) = (Vec::new(), Vec::new(), None);
    while let Some(ev) = stream.message().await? {
        use fluid_proto::api::command_event::Event;
        match ev.event {
            Some(Event::Stdout(b)) => out.extend(b),
            Some(Event::Stderr(b)) => err_out.extend(b),
            Some(Event::Exit(x)) => result = Some(x),
            _ => {}
        }
    }
    let result = result.context("gRPC exec ended without exit")?;
    println!(
        "grpc: stdout {:?} stderr {:?} exit {} status {}",
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&err_out),
        result.exit_code,
        result.status
    );
    ensure!(out == b"hi\n" && err_out == b"err\n" && result.exit_code == 3);
    let status = grpc
        .exec(fluid_proto::api::ExecCommandRequest {
            sandbox_id: id.clone(),
            command: "shutdown -h now".into(),
            ..Default::default()
        })
        .await
        .map(|_| ())
        .expect_err("policy must refuse over gRPC too");
    ensure!(
        status.code() == tonic::Code::PermissionDenied,
        "gRPC policy refusal: {status}"
    );

    // 10b. attach: an interactive PTY shell over a WebSocket, audited.
    {
        use futures::{SinkExt as _, StreamExt as _};
        use tokio_tungstenite::tungstenite::Message;
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        let mut req = client.attach_url(&id, 100, 30).into_client_request()?;
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {}", stack.admin_token).parse()?,
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await?;
        ws.send(Message::Binary(
            b"echo $((6*7)); tty; stty size; exit 5\n".to_vec().into(),
        ))
        .await?;
        let mut screen = Vec::new();
        let mut exit = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Ok(Some(msg)) = tokio::time::timeout_at(deadline.into(), ws.next()).await {
            match msg? {
                Message::Binary(b) => screen.extend_from_slice(&b),
                Message::Text(t) => {
                    exit = Some(serde_json::from_str::<serde_json::Value>(t.as_str())?)
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        let screen = String::from_utf8_lossy(&screen);
        let code = exit
            .as_ref()
            .and_then(|e| e.pointer("/exit/exit_code"))
            .and_then(serde_json::Value::as_i64);
        println!(
            "attach: exit {code:?}; the screen showed 42: {}, a pty: {}, size 30x100: {}",
            screen.contains("42"),
            screen.contains("/dev/pts/"),
            screen.contains("30 100")
        );
        ensure!(
            code == Some(5)
                && screen.contains("42")
                && screen.contains("/dev/pts/")
                && screen.contains("30 100"),
            "attach screen: {screen:?} exit {exit:?}"
        );
        let audit = client.list_commands(&id, "limit=100").await?;
        let session = audit
            .commands
            .iter()
            .find(|c| c.kind == "attach")
            .context("no audit row for the attach session")?;
        println!(
            "attach: audit row {} {:?} exit {} status {}",
            session.id, session.command, session.exit_code, session.status
        );
        ensure!(session.exit_code == 5 && session.stdout.contains("42"));
    }

    // 10. a revoked certificate is refused before its TTL.
    let (key, cert, cert_id) = request_cert(&stack, &id, &keys, "revoked", 10).await?;
    ensure!(
        ssh_with_cert(&key, &cert, &ip)?,
        "a fresh certificate was refused"
    );
    let revoked = client.revoke_certificate(&cert_id).await?;
    ensure!(
        revoked.revocation_applied == Some(true),
        "revocation not applied: {revoked:?}"
    );
    ensure!(
        !ssh_with_cert(&key, &cert, &ip)?,
        "a revoked certificate still gets in"
    );
    println!("access: revoked certificate refused by the VM's sshd (its TTL had 10 minutes left)");

    // 11. the 1-minute certificate, now past its TTL, is refused.
    let expire_at = short_issued + Duration::from_secs(62);
    if let Some(wait) = expire_at.checked_duration_since(Instant::now()) {
        tokio::time::sleep(wait).await;
    }
    ensure!(
        !ssh_with_cert(&short_key, &short_cert, &ip)?,
        "an expired certificate still gets in"
    );
    println!("access: certificate past its 1-minute TTL refused by the VM's sshd");

    stack.client.destroy_sandbox(&id).await?;
    Ok(())
}
