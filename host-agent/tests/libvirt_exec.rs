//! Exec against a real sandbox: a user CA is given to the guest at create (SMBIOS OEM
//! strings), the agent's key gets a 5-minute certificate from it, and commands run over
//! the agent's SSH connection: output and exit codes, timeout kill of the whole
//! process group, output caps, streaming, literal env, users, stdin, concurrency, and
//! a client that goes away.
//!
//! Needs what `libvirt_lifecycle` needs, and a golden image with the `fluid-identity`
//! unit (the newest `/var/cache/fluid/images{-dev,}/debian-12-*/`, or
//! `FLUID_TEST_IMAGE_DIR`):
//!
//! ```text
//! ip netns exec fluid-dev cargo test -p fluid-agent --test libvirt_exec -- --nocapture
//! ```

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use fluid_agent::Sandboxes;
use fluid_agent::hypervisor::libvirt::Libvirt;
use fluid_proto::model::{Exec, ExecEvent, ExecExit, SandboxId, WaitForIp};
use fluid_proto::pb;

use common::RealSandbox;
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
}

#[tokio::test]
#[ignore = "not yet run in CI: being brought up to date with per-sandbox SSH principals and the exec scope; integration-tests (exec, lifecycle, review_loop, hostile) cover these paths meanwhile"]
async fn exec_in_a_real_sandbox() {
    if !common::real_host() {
        return;
    }
    let sb = RealSandbox::start("exec", "SBX-agentexec0001").await;
    let s = sb.s.clone();
    let ctx = Arc::new(Ctx {
        s: s.clone(),
        id: sb.id.clone(),
        cert: certificate(&sb.ca, s.ssh_public_key(), &sb.id),
    });
    let body = tokio::spawn({
        let ctx = ctx.clone();
        let created = sb.created;
        async move { checks(&ctx, created).await }
    });
    let result = body.await;
    drop(ctx);
    drop(s);
    sb.finish(result).await;
}

async fn checks(ctx: &Ctx, created: Instant) {
    let s = &ctx.s;
    let ip = s
        .wait_for_ip(WaitForIp {
            id: ctx.id.clone(),
            timeout_seconds: 240,
        })
        .await
        .expect("ip");
    println!(
        "create to DHCP lease: {:.1} s ({ip})",
        created.elapsed().as_secs_f64()
    );

    // sshd comes up a little after the lease. A certificate from a CA the guest does
    // not trust is refused (PERMISSION_DENIED) before any stream starts.
    let stranger = PrivateKey::from(Ed25519Keypair::from_seed(&rand::random()));
    let bad = Ctx {
        s: s.clone(),
        id: ctx.id.clone(),
        cert: certificate(&stranger, s.ssh_public_key(), &ctx.id),
    };
    loop {
        match bad.run(bad.req("true")).await {
            Err(fluid_agent::error::ServiceError::PermissionDenied(m)) => {
                println!("untrusted CA: {m}");
                break;
            }
            Err(fluid_agent::error::ServiceError::Unavailable(e))
                if created.elapsed() < Duration::from_secs(300) =>
            {
                println!("  not yet: {e}");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            other => panic!("expected PERMISSION_DENIED, got {other:?}"),
        }
    }
    let first = loop {
        match ctx.run(ctx.req("hostname")).await {
            Ok(o) => break o,
            Err(e) if created.elapsed() < Duration::from_secs(300) => {
                println!("  not yet: {e}");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => panic!("exec never worked: {e}"),
        }
    };
    println!(
        "first exec (connect + auth + `hostname`): {} ms, {:.1} s after create",
        first.total.as_millis(),
        created.elapsed().as_secs_f64()
    );
    assert_eq!(
        first.out(),
        "agentdev-exec\n",
        "hostname from the OEM strings"
    );
    let record = s.get(&ctx.id).await.expect("get").record;
    assert!(
        record
            .ssh_host_key
            .as_deref()
            .is_some_and(|k| k.starts_with("ssh-")),
        "host key remembered: {:?}",
        record.ssh_host_key
    );

    // Warm round trips.
    let mut rtts = Vec::new();
    for _ in 0..5 {
        let o = ctx.sh("true").await;
        assert_eq!(o.exit.exit_code, 0);
        rtts.push(o.total.as_millis());
    }
    println!("`true` on the warm connection: {rtts:?} ms");

    let o = ctx.sh("echo hi; echo err >&2; exit 3").await;
    assert_eq!(
        (o.out().as_str(), o.stderr.as_slice()),
        ("hi\n", &b"err\n"[..])
    );
    assert_eq!(o.exit.exit_code, 3);
    assert_eq!(o.exit.error, None);
    assert!(!o.exit.timed_out && !o.exit.stdout_truncated && !o.exit.stderr_truncated);

    // Timeout kills the whole process group.
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
    assert!(o.exit.timed_out);
    assert_eq!(o.out(), "");
    assert!(o.total >= Duration::from_secs(2) && o.total < Duration::from_secs(6));
    let o = ctx
        .sh(&format!(
            "pgrep -x sleep; test ! -e /run/fluid/cmd/{killed_id}.pid"
        ))
        .await;
    assert_eq!(o.out(), "", "no sleep left");
    assert_eq!(o.exit.exit_code, 0, "no pid file left");

    // Output cap.
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

    // Streaming: the first line arrives long before the end.
    let o = ctx.sh("for i in 1 2 3; do echo $i; sleep 1; done").await;
    let first = o.first_chunk.expect("output");
    println!(
        "streamed: first chunk after {} ms, exit after {} ms",
        first.as_millis(),
        o.total.as_millis()
    );
    assert_eq!(o.out(), "1\n2\n3\n");
    assert!(o.total >= first + Duration::from_millis(1500));

    // Literal env, workdir, stdin, another user.
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
    let o = ctx
        .run(pb::ExecRequest {
            user: "nobody".into(),
            ..ctx.req("id -un; pwd")
        })
        .await
        .expect("exec");
    assert_eq!(o.out(), "nobody\n/\n", "{:?}", o);

    // Several commands at once on the one connection.
    let t = Instant::now();
    let commands: Vec<String> = (0..4).map(|i| format!("sleep 3; echo {i}")).collect();
    let runs: Vec<_> = commands.iter().map(|c| ctx.sh(c)).collect();
    let outs = futures_join_all(runs).await;
    for (i, o) in outs.iter().enumerate() {
        assert_eq!(o.out(), format!("{i}\n"));
    }
    println!("4 concurrent `sleep 3`: {} ms", t.elapsed().as_millis());
    // One after the other would take over 12 s.
    assert!(t.elapsed() < Duration::from_secs(8));

    // A client that goes away does not stop the command.
    let exec = Exec::try_from(ctx.req("rm -f /tmp/m; sleep 2; echo done >/tmp/m")).expect("req");
    drop(s.exec(exec).await.expect("exec"));
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(ctx.sh("cat /tmp/m").await.out(), "done\n");

    // A stopped sandbox refuses before any stream starts.
    s.stop(fluid_proto::model::StopSandbox {
        id: ctx.id.clone(),
        force: true,
        timeout_seconds: None,
    })
    .await
    .expect("stop");
    let e = ctx.run(ctx.req("true")).await.expect_err("stopped");
    println!("exec on a stopped sandbox: {e}");
    assert!(matches!(
        e,
        fluid_agent::error::ServiceError::FailedPrecondition(_)
    ));
}

/// Awaits futures concurrently (no `futures` dependency).
async fn futures_join_all<F: std::future::Future>(fs: Vec<F>) -> Vec<F::Output> {
    let mut fs: Vec<_> = fs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = fs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in fs.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *o = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}
