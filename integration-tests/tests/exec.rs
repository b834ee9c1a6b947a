//! Acceptance of commands, files and access on one real VM (TCG): exit codes and
//! streams, timeouts that kill the process group, output caps with bounded controller
//! memory, live streaming, literal env values, binary-safe files, policy refusals with
//! audit rows, short-lived and revoked SSH certificates refused by the VM's sshd, and a
//! client that disconnects mid-stream losing nothing.
//!
//! One controller stack with one VM is started and shared by every test of this file (a
//! boot costs ~35 s under TCG): `fluid_prereq::shared` makes it for the first test,
//! lends it to one test at a time, and tears it down when the binary exits. Each test
//! is one scenario, named after what it proves.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use fluid_client::types::{
    AccessRequest, CreateSandboxRequest, EditFileRequest, HostState, ReadFileRequest,
    RunCommandRequest, WriteFileRequest,
};
use fluid_client::{Client, types::Command};
use fluid_prereq::shared::{Shared, Teardown};
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

/// The shared stack: a controller, an agent, and one running sandbox.
struct Vm {
    stack: Stack,
    id: String,
    ip: String,
    /// Where the humans' keys and certificates are written.
    keys: PathBuf,
    /// A 1-minute certificate issued (and accepted by the VM's sshd) at setup.
    short: ShortCert,
}

struct ShortCert {
    key: PathBuf,
    cert: PathBuf,
    issued: Instant,
}

impl Vm {
    fn client(&self) -> &Client {
        &self.stack.client
    }
}

impl Teardown for Vm {
    async fn teardown(self) {
        if let Err(e) = self.stack.client.destroy_sandbox(&self.id).await {
            eprintln!("teardown: destroying {}: {e}", self.id);
        }
        // Dropping the stack kills its processes and removes whatever is left (domains,
        // leases, nftables tables, files).
        drop(self.stack);
        println!("teardown: the shared stack is gone");
    }
}

static VM: Shared<Vm> = Shared::new();

async fn setup() -> Result<Vm> {
    // The create waits for the lease: 300 s, not the default 180, on a loaded host.
    let mut stack = Stack::start_configured(
        StoreKind::Sqlite,
        vec![AgentOptions::new("a")],
        "wait_for_ip_timeout_secs = 300\n",
        POLICY,
    )
    .await?;
    stack
        .wait_host("a", HostState::Online, Duration::from_secs(30))
        .await?;
    let t = Instant::now();
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
    wait_ssh_banner(&format!("{ip}:22"), Duration::from_secs(180)).await?;
    println!(
        "setup: sandbox {id} at {ip}, sshd up {:.1} s after the create",
        t.elapsed().as_secs_f64()
    );
    let keys = stack.dir.path().join("human-keys");
    std::fs::create_dir_all(&keys)?;
    // A 1-minute certificate, accepted now; `sshd_refuses_a_certificate_past_its_ttl`
    // tries it again once it has expired.
    let (key, cert, _) = request_cert(&stack, &id, &keys, "short", 1).await?;
    let issued = Instant::now();
    ensure!(
        ssh_with_cert(&key, &cert, &ip)?,
        "a fresh 1-minute certificate was refused"
    );
    Ok(Vm {
        stack,
        id,
        ip,
        keys,
        short: ShortCert { key, cert, issued },
    })
}

/// Runs one scenario on the shared stack.
fn scenario(test: impl AsyncFnOnce(&mut Vm) -> Result<()>) -> Result<()> {
    VM.run(setup, test)
}

#[test]
fn stdout_stderr_and_the_exit_code_come_back_apart() -> Result<()> {
    scenario(async |vm| {
        let t = Instant::now();
        let c = run(vm.client(), &vm.id, cmd("echo hi; echo err >&2; exit 3")).await?;
        println!(
            "run: stdout {:?} stderr {:?} exit {} ({} ms)",
            c.stdout,
            c.stderr,
            c.exit_code,
            t.elapsed().as_millis()
        );
        ensure!(
            c.stdout == "hi\n" && c.stderr == "err\n" && c.exit_code == 3,
            "got {c:?}"
        );
        ensure!(!c.timed_out && !c.truncated, "got {c:?}");
        Ok(())
    })
}

#[test]
fn a_command_past_its_timeout_is_killed_with_its_process_group() -> Result<()> {
    scenario(async |vm| {
        let (client, id) = (vm.client(), &vm.id);
        let t = Instant::now();
        let c = run(
            client,
            id,
            RunCommandRequest {
                timeout_sec: Some(2),
                ..cmd("sleep 100 & sleep 100; echo never")
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
        // Killed at its timeout: flagged, no output, and not run to its end (100 s).
        ensure!(
            c.timed_out && c.stdout.is_empty() && took < Duration::from_secs(100),
            "got {c:?} after {took:?}"
        );
        let left = run(client, id, cmd("pgrep -x sleep || echo none")).await?;
        ensure!(
            left.stdout.trim() == "none",
            "sleep left running: {:?}",
            left.stdout
        );
        println!("timeout: no sleep left in the VM");
        Ok(())
    })
}

#[test]
fn output_past_the_cap_is_cut_and_the_controller_stays_small() -> Result<()> {
    scenario(async |vm| {
        let rss0 = vm.stack.controller.rss_kib().context("controller rss")?;
        let c = run(
            vm.client(),
            &vm.id,
            cmd("head -c 50000000 /dev/zero | tr '\\0' a"),
        )
        .await?;
        let rss1 = vm.stack.controller.rss_kib().context("controller rss")?;
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
            c.stdout.bytes().all(|b| b == b'a'),
            "the kept output is not the command's"
        );
        ensure!(
            rss1.saturating_sub(rss0) < 20 * 1024,
            "controller RSS grew by {} KiB",
            rss1 - rss0
        );
        Ok(())
    })
}

#[test]
fn output_streams_while_the_command_runs() -> Result<()> {
    scenario(async |vm| {
        // The guest sleeps 2 s between the first line and the last: the first line
        // must have reached the client before the command ended.
        let t = Instant::now();
        let mut first = None;
        let rec = vm
            .client()
            .run_command_streaming(
                &vm.id,
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
        ensure!(rec.stdout == "1\n2\n3\n", "{rec:?}");
        ensure!(
            end - first >= Duration::from_millis(1500),
            "the first line came with the end"
        );
        Ok(())
    })
}

#[test]
fn env_values_arrive_literally_and_bad_names_are_refused() -> Result<()> {
    scenario(async |vm| {
        let (client, id) = (vm.client(), &vm.id);
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
                client,
                id,
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
                id,
                &RunCommandRequest {
                    env: Some(BTreeMap::from([("A;B".to_owned(), "x".to_owned())])),
                    ..cmd("true")
                },
            )
            .await
            .expect_err("env name A;B must be refused");
        println!("env: name A;B → {bad}");
        ensure!(bad.status().map(|s| s.as_u16()) == Some(400), "{bad}");
        Ok(())
    })
}

#[test]
fn files_round_trip_text_and_binary_and_edits_apply() -> Result<()> {
    scenario(async |vm| {
        let (client, id) = (vm.client(), &vm.id);
        let w = client
            .write_file(
                id,
                &WriteFileRequest {
                    path: "/root/notes.txt".into(),
                    content: "alpha beta\n".into(),
                    ..Default::default()
                },
            )
            .await?;
        ensure!(w.size == 11, "{w:?}");
        let e = client
            .edit_file(
                id,
                &EditFileRequest {
                    path: "/root/notes.txt".into(),
                    old_str: "beta".into(),
                    new_str: "gamma".into(),
                },
            )
            .await?;
        ensure!(e.replaced == 1, "{e:?}");
        let r = client
            .read_file(
                id,
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
                id,
                &EditFileRequest {
                    path: "/root/new.txt".into(),
                    old_str: String::new(),
                    new_str: "fresh".into(),
                },
            )
            .await?;
        ensure!(created_file.replaced == 0, "{created_file:?}");
        let new = run(client, id, cmd("cat /root/new.txt")).await?;
        ensure!(new.stdout == "fresh", "{:?}", new.stdout);
        let bytes: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
        client
            .write_file(
                id,
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
                id,
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
        let mode = run(client, id, cmd("stat -c %a /root/blob.bin")).await?;
        ensure!(mode.stdout.trim() == "600", "mode {:?}", mode.stdout);
        println!(
            "files: text write/edit/read, create-by-edit, 4096-byte binary round trip, mode 0600 — ok"
        );
        Ok(())
    })
}

#[test]
fn file_paths_that_are_malformed_or_denied_are_refused() -> Result<()> {
    scenario(async |vm| {
        for (path, want) in [
            ("root/x", 400),
            ("/root/../etc/passwd", 400),
            ("/root/a\0b", 400),
            ("/etc/shadow", 403),
        ] {
            let err = vm
                .client()
                .read_file(
                    &vm.id,
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
        Ok(())
    })
}

/// The audit rows of `command` with status `status`.
async fn rows(client: &Client, id: &str, command: &str, status: &str) -> Result<usize> {
    let audit = client.list_commands(id, "limit=100").await?;
    Ok(audit
        .commands
        .iter()
        .filter(|c| c.command == command && c.status == status)
        .count())
}

#[test]
fn a_denied_command_is_refused_and_audited() -> Result<()> {
    scenario(async |vm| {
        let (client, id) = (vm.client(), &vm.id);
        let denied = "shutdown -h now";
        let before = rows(client, id, denied, "denied").await?;
        let err = client
            .run_command(id, &cmd(denied))
            .await
            .expect_err("denied command ran");
        println!("policy: `{denied}` → {err}");
        ensure!(err.status().map(|s| s.as_u16()) == Some(403), "{err}");
        let after = rows(client, id, denied, "denied").await?;
        ensure!(
            after == before + 1,
            "denied rows for {denied:?}: {before} before, {after} after"
        );
        let up = run(client, id, cmd("echo up")).await?;
        ensure!(up.stdout == "up\n", "the VM is not up: {up:?}");
        Ok(())
    })
}

#[test]
fn several_commands_run_at_once_on_one_sandbox() -> Result<()> {
    scenario(async |vm| {
        // Each notes, inside the guest, when it started and ended; they ran at the same
        // time if every one started before any ended (a fact about overlap, not a
        // latency bound, which belongs to exec-bench).
        let t = Instant::now();
        let runs = (0..3).map(|i| {
            let client = vm.client().clone();
            let id = vm.id.clone();
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
        Ok(())
    })
}

#[test]
fn a_client_that_disconnects_mid_stream_loses_nothing() -> Result<()> {
    scenario(async |vm| {
        let (client, id) = (vm.client(), &vm.id);
        let command = "for i in 1 2 3 4; do echo $i; sleep 1; done; exit 7";
        let mut resp = reqwest::Client::new()
            .post(format!(
                "{}/v1/sandboxes/{id}/run?stream=true",
                vm.stack.api_url
            ))
            .bearer_auth(&vm.stack.admin_token)
            .json(&cmd(command))
            .send()
            .await?;
        let _first = resp.chunk().await?;
        drop(resp);
        // The command goes on without its client; wait (with a deadline) until its
        // record is finished.
        let deadline = Instant::now() + Duration::from_secs(60);
        let rec = loop {
            let audit = client.list_commands(id, "limit=100").await?;
            let rec = audit
                .commands
                .into_iter()
                .find(|c| c.command == command)
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
        Ok(())
    })
}

#[test]
fn grpc_exec_streams_like_rest_and_obeys_the_same_policy() -> Result<()> {
    scenario(async |vm| {
        let channel = tonic::transport::Channel::from_shared(vm.stack.grpc_url.clone())?
            .connect()
            .await?;
        let bearer: tonic::metadata::AsciiMetadataValue =
            format!("Bearer {}", vm.stack.admin_token).parse()?;
        let mut grpc = fluid_proto::api::sandboxes_client::SandboxesClient::with_interceptor(
            channel,
            move |mut req: tonic::Request<()>| {
                req.metadata_mut().insert("authorization", bearer.clone());
                Ok(req)
            },
        );
        let command = "echo hi; echo err >&2; exit 3 # grpc";
        let mut stream = grpc
            .exec(fluid_proto::api::ExecCommandRequest {
                sandbox_id: vm.id.clone(),
                command: command.into(),
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
        // The same audit as REST: one finished row with the command's exit code.
        let audit = vm.client().list_commands(&vm.id, "limit=100").await?;
        let row = audit
            .commands
            .iter()
            .find(|c| c.command == command)
            .context("no audit row for the gRPC command")?;
        ensure!(row.exit_code == 3 && row.stdout == "hi\n", "{row:?}");
        let status = grpc
            .exec(fluid_proto::api::ExecCommandRequest {
                sandbox_id: vm.id.clone(),
                command: "shutdown -r now".into(),
                ..Default::default()
            })
            .await
            .map(|_| ())
            .expect_err("policy must refuse over gRPC too");
        ensure!(
            status.code() == tonic::Code::PermissionDenied,
            "gRPC policy refusal: {status}"
        );
        Ok(())
    })
}

#[test]
fn attach_gives_an_interactive_shell_and_audits_it() -> Result<()> {
    use futures::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    scenario(async |vm| {
        let mut req = vm
            .client()
            .attach_url(&vm.id, 100, 30)
            .into_client_request()?;
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {}", vm.stack.admin_token).parse()?,
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
        let audit = vm.client().list_commands(&vm.id, "limit=100").await?;
        let session = audit
            .commands
            .iter()
            .find(|c| c.kind == "attach")
            .context("no audit row for the attach session")?;
        println!(
            "attach: audit row {} {:?} exit {} status {}",
            session.id, session.command, session.exit_code, session.status
        );
        ensure!(
            session.exit_code == 5 && session.stdout.contains("42"),
            "{session:?}"
        );
        Ok(())
    })
}

#[test]
fn sshd_accepts_a_fresh_certificate_and_refuses_it_once_revoked() -> Result<()> {
    scenario(async |vm| {
        let (key, cert, cert_id) = request_cert(&vm.stack, &vm.id, &vm.keys, "revoked", 10).await?;
        ensure!(
            ssh_with_cert(&key, &cert, &vm.ip)?,
            "a fresh certificate was refused"
        );
        let revoked = vm.client().revoke_certificate(&cert_id).await?;
        ensure!(
            revoked.revocation_applied == Some(true),
            "revocation not applied: {revoked:?}"
        );
        ensure!(
            !ssh_with_cert(&key, &cert, &vm.ip)?,
            "a revoked certificate still gets in"
        );
        println!(
            "access: revoked certificate refused by the VM's sshd (its TTL had 10 minutes left)"
        );
        Ok(())
    })
}

#[test]
fn sshd_refuses_a_certificate_past_its_ttl() -> Result<()> {
    scenario(async |vm| {
        // The certificate was accepted at setup; its end of validity (1 minute after it
        // was issued, 2 s of margin for the clocks) is what this test waits for.
        let ShortCert { key, cert, issued } = &vm.short;
        let expired = *issued + Duration::from_secs(62);
        if let Some(wait) = expired.checked_duration_since(Instant::now()) {
            println!(
                "access: {:.0} s until the 1-minute certificate has expired",
                wait.as_secs_f64()
            );
            tokio::time::sleep(wait).await;
        }
        ensure!(
            !ssh_with_cert(key, cert, &vm.ip)?,
            "an expired certificate still gets in"
        );
        println!("access: certificate past its 1-minute TTL refused by the VM's sshd");
        Ok(())
    })
}
