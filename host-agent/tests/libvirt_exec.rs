//! Exec against a real sandbox: a user CA is given to the guest at create (SMBIOS OEM
//! strings), the agent's key gets a 5-minute certificate from it, and commands run over
//! the agent's SSH connection: output and exit codes, timeout kill of the whole
//! process group, output caps, streaming, literal env, users, stdin, concurrency, and
//! a client that goes away. (A stopped sandbox's refusal is `libvirt_lifecycle`'s.)
//!
//! One sandbox is booted (~35 s under TCG) and shared by every test of this file
//! (`fluid_prereq::shared`); each test is one scenario, and they take turns on it.
//!
//! Needs what `libvirt_lifecycle` needs, and a golden image with the `fluid-identity`
//! unit (the newest `/var/cache/fluid/images{-dev,}/debian-12-*/`, or
//! `FLUID_TEST_IMAGE_DIR`). `scripts/test.sh` runs it; by hand:
//!
//! ```text
//! source scripts/lib/netns.sh; fluid_libvirt_up fluid-test
//! ip netns exec fluid-test env PATH=$PATH FLUID_TEST_IMAGE_DIR=… \
//!   cargo test -p fluid-agent --test libvirt_exec -- --nocapture
//! ```

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use fluid_agent::Sandboxes;
use fluid_agent::hypervisor::libvirt::Libvirt;
use fluid_proto::model::{Exec, ExecEvent, ExecExit, SandboxId, WaitForIp};
use fluid_proto::pb;

use common::RealSandbox;
use fluid_prereq::shared::{Shared, Teardown};
use russh::keys::PrivateKey;
use russh::keys::ssh_key::private::Ed25519Keypair;

/// A 5-minute agent exec certificate for sandbox `id` (no extensions).
fn certificate(ca: &PrivateKey, subject: &str, id: &SandboxId) -> String {
    common::certificate(ca, subject, id, false)
}

/// What one Exec produced.
#[derive(Debug)]
struct Outcome {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    exit: ExecExit,
    /// From the call to the first output chunk, and to the exit event.
    first_chunk: Option<Duration>,
    total: Duration,
    events: usize,
}

impl Outcome {
    fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

struct Ctx {
    s: Arc<Sandboxes<Libvirt>>,
    id: SandboxId,
    cert: String,
}

impl Ctx {
    fn req(&self, command: &str) -> pb::ExecRequest {
        pb::ExecRequest {
            sandbox_id: self.id.to_string(),
            command_id: format!("CMD-{:016x}", rand::random::<u64>()),
            command: command.into(),
            output_cap_bytes: 4 * 1024 * 1024,
            ssh_certificate: self.cert.clone(),
            ..Default::default()
        }
    }

    async fn run(&self, req: pb::ExecRequest) -> Result<Outcome, fluid_agent::error::ServiceError> {
        let exec = Exec::try_from(req).expect("valid request");
        let t = Instant::now();
        let mut rx = self.s.exec(exec).await?;
        let mut o = Outcome {
            stdout: Vec::new(),
            stderr: Vec::new(),
            exit: ExecExit::default(),
            first_chunk: None,
            total: Duration::ZERO,
            events: 0,
        };
        let mut started = false;
        let mut exits = 0;
        while let Some(e) = rx.recv().await {
            o.events += 1;
            match e {
                ExecEvent::Started { .. } => {
                    assert!(!started && o.events == 1, "started comes first, once");
                    started = true;
                }
                ExecEvent::Stdout(b) => {
                    o.first_chunk.get_or_insert(t.elapsed());
                    o.stdout.extend_from_slice(&b);
                }
                ExecEvent::Stderr(b) => {
                    o.first_chunk.get_or_insert(t.elapsed());
                    o.stderr.extend_from_slice(&b);
                }
                ExecEvent::Exit(x) => {
                    exits += 1;
                    o.exit = x;
                }
            }
        }
        assert!(started);
        assert_eq!(exits, 1, "exactly one exit event, last");
        o.total = t.elapsed();
        Ok(o)
    }

    async fn sh(&self, command: &str) -> Outcome {
        self.run(self.req(command)).await.expect("exec")
    }

    async fn sh_owned(&self, command: String) -> Outcome {
        self.sh(&command).await
    }
}

/// The shared sandbox, and what happened while it came up.
struct ExecVm {
    sb: RealSandbox,
    ctx: Ctx,
    /// Set by the first test: the boot's outcome (or why it failed).
    ready: Option<Result<Boot, String>>,
}

/// What the wait for the sandbox saw.
struct Boot {
    /// The refusal of a certificate from a CA the guest does not trust, on a new
    /// connection (before any exec succeeded, so nothing was pooled yet).
    untrusted: String,
    /// The first exec that worked (`hostname`).
    first: Outcome,
}

impl Teardown for ExecVm {
    async fn teardown(self) {
        drop(self.ctx);
        self.sb.teardown().await;
    }
}

static VM: Shared<ExecVm> = Shared::new();

async fn boot() -> Result<ExecVm, std::convert::Infallible> {
    let sb = RealSandbox::start("exec").await;
    let ctx = Ctx {
        s: sb.s.clone(),
        id: sb.id.clone(),
        cert: certificate(&sb.ca, sb.s.ssh_public_key(), &sb.id),
    };
    Ok(ExecVm {
        sb,
        ctx,
        ready: None,
    })
}

/// Waits (at most 300 s from create) for the lease, then for sshd: first a certificate
/// from a stranger's CA until it is refused, then the real one until `hostname` runs.
async fn wait_ready(ctx: &Ctx, created: Instant) -> Result<Boot, String> {
    let s = &ctx.s;
    let ip = s
        .wait_for_ip(WaitForIp {
            id: ctx.id.clone(),
            timeout_seconds: 240,
        })
        .await
        .map_err(|e| format!("no IP: {e}"))?;
    println!(
        "create to DHCP lease: {:.1} s ({ip})",
        created.elapsed().as_secs_f64()
    );
    let deadline = created + Duration::from_secs(300);
    let stranger = PrivateKey::from(Ed25519Keypair::from_seed(&rand::random()));
    let bad = Ctx {
        s: s.clone(),
        id: ctx.id.clone(),
        cert: certificate(&stranger, s.ssh_public_key(), &ctx.id),
    };
    let untrusted = loop {
        match bad.run(bad.req("true")).await {
            Err(fluid_agent::error::ServiceError::PermissionDenied(m)) => break m,
            Err(fluid_agent::error::ServiceError::Unavailable(e)) if Instant::now() < deadline => {
                println!("  not yet: {e}");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            other => {
                return Err(format!(
                    "untrusted CA: expected PERMISSION_DENIED, got {other:?}"
                ));
            }
        }
    };
    let first = loop {
        match ctx.run(ctx.req("hostname")).await {
            Ok(o) => break o,
            Err(e) if Instant::now() < deadline => {
                println!("  not yet: {e}");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => return Err(format!("exec never worked within 300 s of create: {e}")),
        }
    };
    println!(
        "first exec (connect + auth + `hostname`): {} ms, {:.1} s after create",
        first.total.as_millis(),
        created.elapsed().as_secs_f64()
    );
    Ok(Boot { untrusted, first })
}

/// Runs one scenario on the shared sandbox, once it runs commands.
fn scenario(test: impl AsyncFnOnce(&Ctx, &Boot, &str)) {
    if !common::real_host() {
        return;
    }
    VM.run(boot, async |vm| {
        if vm.ready.is_none() {
            vm.ready = Some(wait_ready(&vm.ctx, vm.sb.created).await);
        }
        match &vm.ready {
            Some(Ok(booted)) => test(&vm.ctx, booted, &vm.sb.name).await,
            Some(Err(why)) => panic!("the shared sandbox never ran commands: {why}"),
            None => unreachable!("set above"),
        }
    });
}

#[test]
fn a_certificate_from_an_untrusted_ca_is_refused_before_any_stream() {
    scenario(async |_, booted, _| {
        println!("untrusted CA: {}", booted.untrusted);
        assert!(
            booted.untrusted.contains("refused the certificate"),
            "{}",
            booted.untrusted
        );
    });
}

#[test]
fn the_guest_takes_its_hostname_from_the_oem_strings_and_its_host_key_is_kept() {
    scenario(async |ctx, booted, name| {
        assert_eq!(booted.first.out(), format!("{name}\n"), "hostname");
        assert_eq!(booted.first.exit.exit_code, 0);
        let record = ctx.s.get(&ctx.id).await.expect("get").record;
        assert!(
            record
                .ssh_host_key
                .as_deref()
                .is_some_and(|k| k.starts_with("ssh-")),
            "host key remembered: {:?}",
            record.ssh_host_key
        );
    });
}

#[test]
fn stdout_stderr_and_the_exit_code_come_back_apart() {
    scenario(async |ctx, _, _| {
        let o = ctx.sh("echo hi; echo err >&2; exit 3").await;
        println!(
            "`echo hi; echo err >&2; exit 3`: {} ms",
            o.total.as_millis()
        );
        assert_eq!(
            (o.out().as_str(), o.stderr.as_slice()),
            ("hi\n", &b"err\n"[..])
        );
        assert_eq!(o.exit.exit_code, 3);
        assert_eq!(o.exit.error, None);
        assert!(!o.exit.timed_out && !o.exit.stdout_truncated && !o.exit.stderr_truncated);
    });
}

#[test]
fn a_timeout_kills_everything_the_command_started() {
    scenario(async |ctx, _, _| {
        let req = pb::ExecRequest {
            timeout_seconds: 2,
            ..ctx.req("sleep 100 & sleep 100; echo never")
        };
        let killed_id = req.command_id.clone();
        let o = ctx.run(req).await.expect("exec");
        println!(
            "timeout 2 s: ended after {} ms, exit {:?}",
            o.total.as_millis(),
            o.exit
        );
        assert!(o.exit.timed_out, "{:?}", o.exit);
        assert_eq!(o.out(), "");
        // Not before its timeout, and not by running to its end (100 s).
        assert!(o.total >= Duration::from_secs(2), "{:?}", o.total);
        assert!(o.total < Duration::from_secs(100), "{:?}", o.total);
        let o = ctx
            .sh(&format!(
                "pgrep -x sleep; test ! -e /sys/fs/cgroup/fluid/{killed_id}"
            ))
            .await;
        assert_eq!(o.out(), "", "no sleep left");
        assert_eq!(o.exit.exit_code, 0, "the command's cgroup is left");
    });
}

#[test]
fn output_past_the_cap_is_cut_and_the_other_stream_still_arrives() {
    scenario(async |ctx, _, _| {
        let o = ctx
            .run(pb::ExecRequest {
                output_cap_bytes: 1024 * 1024,
                ..ctx.req("head -c 50000000 /dev/zero | tr '\\0' a; echo done >&2")
            })
            .await
            .expect("exec");
        println!(
            "50 MB of output, cap 1 MiB: {} ms, {} events",
            o.total.as_millis(),
            o.events
        );
        assert_eq!(o.stdout.len(), 1024 * 1024);
        assert!(o.stdout.iter().all(|&b| b == b'a'));
        assert!(o.exit.stdout_truncated && !o.exit.stderr_truncated);
        assert_eq!(o.stderr, b"done\n");
        assert_eq!(o.exit.exit_code, 0);
    });
}

#[test]
fn output_streams_while_the_command_runs() {
    scenario(async |ctx, _, _| {
        // The guest sleeps 2 s between the first line and the last: the first chunk
        // must have been delivered before the command ended.
        let o = ctx.sh("for i in 1 2 3; do echo $i; sleep 1; done").await;
        let first = o.first_chunk.expect("output");
        println!(
            "streamed: first chunk after {} ms, exit after {} ms",
            first.as_millis(),
            o.total.as_millis()
        );
        assert_eq!(o.out(), "1\n2\n3\n");
        assert!(o.total >= first + Duration::from_millis(1500));
    });
}

#[test]
fn env_values_workdir_and_stdin_arrive_literally() {
    scenario(async |ctx, _, _| {
        let nasty = "a'b\"c $(id) `id` $HOME \\ ;|& \n next '' *";
        let o = ctx
            .run(pb::ExecRequest {
                env: [("X".into(), nasty.into()), ("Y_2".into(), "".into())].into(),
                workdir: "/tmp".into(),
                stdin: b"line one\nline two\n".to_vec(),
                ..ctx.req("printf '%s|%s|' \"$X\" \"${Y_2-unset}\"; pwd; cat; id -un")
            })
            .await
            .expect("exec");
        assert_eq!(
            o.out(),
            format!("{nasty}||/tmp\nline one\nline two\nroot\n")
        );
    });
}

#[test]
fn a_command_runs_as_the_user_asked_for() {
    scenario(async |ctx, _, _| {
        let o = ctx
            .run(pb::ExecRequest {
                user: "nobody".into(),
                ..ctx.req("id -un; pwd")
            })
            .await
            .expect("exec");
        assert_eq!(o.out(), "nobody\n/\n", "{o:?}");
    });
}

#[test]
fn several_commands_run_at_once_on_one_sandbox() {
    scenario(async |ctx, _, _| {
        // Each notes, inside the guest, when it started and ended: they overlapped if
        // every one started before any ended (a fact, not a latency bound).
        let t = Instant::now();
        let runs = (0..4)
            .map(|i| ctx.sh_owned(format!("date +%s.%N; sleep 3; echo run-{i}; date +%s.%N")));
        let outs = futures::future::join_all(runs).await;
        let mut spans = Vec::new();
        for (i, o) in outs.iter().enumerate() {
            let lines: Vec<&str> = std::str::from_utf8(&o.stdout)
                .expect("utf-8")
                .lines()
                .collect();
            assert_eq!(lines.len(), 3, "{:?}", o.out());
            assert_eq!(lines[1], format!("run-{i}"));
            let time = |l: &str| l.parse::<f64>().expect("a date +%s.%N line");
            spans.push((time(lines[0]), time(lines[2])));
        }
        let last_start = spans.iter().map(|s| s.0).fold(f64::MIN, f64::max);
        let first_end = spans.iter().map(|s| s.1).fold(f64::MAX, f64::min);
        println!(
            "4 concurrent `sleep 3`: {} ms in all; all four running at once: {}",
            t.elapsed().as_millis(),
            last_start < first_end
        );
        assert!(last_start < first_end, "one after another: {spans:?}");
    });
}

#[test]
fn a_command_goes_on_when_its_client_goes_away() {
    scenario(async |ctx, _, _| {
        let req = ctx.req("");
        let mark = format!("/tmp/{}", req.command_id);
        let exec = Exec::try_from(pb::ExecRequest {
            command: format!("sleep 2; echo done >{mark}"),
            ..req
        })
        .expect("req");
        let t = Instant::now();
        drop(ctx.s.exec(exec).await.expect("exec"));
        // The file appears only if the command outlived its client (deadline 60 s).
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let o = ctx.sh(&format!("cat {mark} 2>/dev/null")).await;
            if o.out() == "done\n" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the abandoned command never finished: {:?}",
                o.out()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        println!(
            "abandoned command finished {} ms after its client left",
            t.elapsed().as_millis()
        );
    });
}
