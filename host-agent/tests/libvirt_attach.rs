//! Attach against a real sandbox: an interactive shell on a PTY. The agent's pooled
//! connection is first made with an exec certificate (no extensions), so the session
//! must fall back to a dedicated connection with its own `permit-pty` certificate.
//! Checks output, the terminal (`tty`, TERM), the exit status, resizes, another user
//! (`runuser -l`), a certificate without `permit-pty`, and the hang-up.
//!
//! Needs what `libvirt_exec` needs:
//!
//! ```text
//! ip netns exec fluid-dev cargo test -p fluid-agent --test libvirt_attach -- --nocapture
//! ```

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use fluid_agent::Sandboxes;
use fluid_agent::exec::shell::{Shell, ShellInput, ShellOutput};
use fluid_agent::hypervisor::libvirt::Libvirt;
use fluid_proto::model::{AttachOpen, Exec, ExecEvent, SandboxId, WaitForIp};
use fluid_proto::pb;
use tokio::sync::mpsc;

use common::{RealSandbox, certificate};

struct Ctx {
    s: Arc<Sandboxes<Libvirt>>,
    id: SandboxId,
    /// Agent exec certificate (no extensions).
    exec_cert: String,
    /// A person's certificate (`permit-pty`).
    pty_cert: String,
}

/// What one session produced.
#[derive(Debug)]
struct Session {
    output: String,
    exit_code: i32,
    error: Option<String>,
}

impl Ctx {
    fn open(&self, user: &str, cert: &str) -> AttachOpen {
        AttachOpen::try_from(pb::AttachOpen {
            sandbox_id: self.id.to_string(),
            session_id: format!("SES-{:016x}", rand::random::<u64>()),
            user: user.into(),
            size: Some(pb::TerminalSize { cols: 80, rows: 24 }),
            term: String::new(),
            ssh_certificate: cert.into(),
        })
        .expect("valid open")
    }

    async fn exec(&self, command: &str) -> (String, i32) {
        let exec = Exec::try_from(pb::ExecRequest {
            sandbox_id: self.id.to_string(),
            command_id: format!("CMD-{:016x}", rand::random::<u64>()),
            command: command.into(),
            output_cap_bytes: 1024 * 1024,
            ssh_certificate: self.exec_cert.clone(),
            ..Default::default()
        })
        .expect("valid exec");
        let mut rx = self.s.exec(exec).await.expect("exec");
        let (mut out, mut code) = (Vec::new(), -2);
        while let Some(e) = rx.recv().await {
            match e {
                ExecEvent::Stdout(b) | ExecEvent::Stderr(b) => out.extend_from_slice(&b),
                ExecEvent::Exit(x) => code = x.exit_code,
                ExecEvent::Started { .. } => {}
            }
        }
        (String::from_utf8_lossy(&out).into_owned(), code)
    }

    /// Opens a session, sends `inputs` (keeping the input open), reads until the exit.
    async fn session(&self, open: AttachOpen, inputs: Vec<ShellInput>) -> Session {
        let mut shell = self.s.attach(open).await.expect("attach");
        for i in inputs {
            shell.input.send(i).await.expect("input");
        }
        let keep = shell.input;
        let mut output = Vec::new();
        let mut exit = None;
        let read = async {
            while let Some(o) = shell.output.recv().await {
                match o {
                    ShellOutput::Data(b) => {
                        assert!(exit.is_none(), "data after the exit");
                        output.extend_from_slice(&b);
                    }
                    ShellOutput::Exit { exit_code, error } => {
                        assert!(exit.is_none(), "one exit");
                        exit = Some((exit_code, error));
                    }
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(60), read)
            .await
            .expect("the session ends within 60 s");
        drop(keep);
        let (exit_code, error) = exit.expect("an exit");
        Session {
            output: String::from_utf8_lossy(&output).into_owned(),
            exit_code,
            error,
        }
    }
}

/// Whether the terminal output has `line` as a line of its own (between CR/LF).
fn has_line(output: &str, line: &str) -> bool {
    output.split(['\r', '\n']).any(|l| l == line)
}

/// Reads the shell's output until `done` holds for all of it so far (30 s at most).
async fn read_until(shell: &mut Shell, done: impl Fn(&str) -> bool) -> String {
    let mut seen = Vec::new();
    let read = async {
        while let Some(o) = shell.output.recv().await {
            match o {
                ShellOutput::Data(b) => {
                    seen.extend_from_slice(&b);
                    if done(&String::from_utf8_lossy(&seen)) {
                        return;
                    }
                }
                ShellOutput::Exit { exit_code, error } => {
                    panic!("the session ended early: {exit_code} {error:?}")
                }
            }
        }
        panic!("the session ended early");
    };
    let r = tokio::time::timeout(Duration::from_secs(30), read).await;
    let text = String::from_utf8_lossy(&seen).into_owned();
    assert!(r.is_ok(), "not seen within 30 s: {text:?}");
    text
}

/// Reads the rest of the output; the exit (30 s at most).
async fn exit_of(output: &mut mpsc::Receiver<ShellOutput>) -> (i32, Option<String>) {
    let read = async {
        loop {
            match output.recv().await {
                Some(ShellOutput::Exit { exit_code, error }) => break (exit_code, error),
                Some(ShellOutput::Data(_)) => {}
                None => panic!("no exit"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("the exit within 30 s")
}

fn stdin(s: &str) -> ShellInput {
    ShellInput::Stdin(s.as_bytes().to_vec())
}

#[tokio::test]
#[ignore = "not yet run in CI: being brought up to date with per-sandbox SSH principals and the exec scope; integration-tests (exec, lifecycle, review_loop, hostile) cover these paths meanwhile"]
async fn attach_to_a_real_sandbox() {
    if !common::real_host() {
        return;
    }
    let sb = RealSandbox::start("attach", "SBX-agentattach0001").await;
    let s = sb.s.clone();
    let ctx = Arc::new(Ctx {
        s: s.clone(),
        id: sb.id.clone(),
        exec_cert: certificate(&sb.ca, s.ssh_public_key(), &sb.id, false),
        pty_cert: certificate(&sb.ca, s.ssh_public_key(), &sb.id, true),
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
    // Wait for sshd with Execs: the pooled connection then has an exec certificate.
    loop {
        let exec = Exec::try_from(pb::ExecRequest {
            sandbox_id: ctx.id.to_string(),
            command_id: format!("CMD-{:016x}", rand::random::<u64>()),
            command: "true".into(),
            output_cap_bytes: 1024,
            ssh_certificate: ctx.exec_cert.clone(),
            ..Default::default()
        })
        .expect("valid exec");
        match s.exec(exec).await {
            Ok(_) => break,
            Err(e) if created.elapsed() < Duration::from_secs(300) => {
                println!("  not yet: {e}");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => panic!("exec never worked: {e}"),
        }
    }
    println!(
        "sshd ready {:.1} s after create",
        created.elapsed().as_secs_f64()
    );

    // A certificate without permit-pty gets no terminal, on the pooled connection or
    // a dedicated one.
    match s.attach(ctx.open("root", &ctx.exec_cert)).await {
        Err(fluid_agent::error::ServiceError::PermissionDenied(m)) => {
            println!("no permit-pty: {m}");
        }
        other => panic!("expected PERMISSION_DENIED, got {other:?}"),
    }

    // The session: output, the terminal, TERM, the exit status.
    let t = Instant::now();
    let o = ctx
        .session(
            ctx.open("root", &ctx.pty_cert),
            vec![stdin("echo $((6*7)); tty; echo T=$TERM; exit 5\n")],
        )
        .await;
    println!(
        "session ({} ms): exit {} {:?}\n{}",
        t.elapsed().as_millis(),
        o.exit_code,
        o.error,
        o.output
    );
    assert!(has_line(&o.output, "42"), "{:?}", o.output);
    assert!(o.output.contains("/dev/pts/"), "{:?}", o.output);
    assert!(o.output.contains("T=xterm-256color"), "{:?}", o.output);
    assert_eq!((o.exit_code, o.error), (5, None));

    // A resize reaches the terminal (sent once the first size was printed, or the
    // typed-ahead line could run after it).
    let mut shell = s
        .attach(ctx.open("root", &ctx.pty_cert))
        .await
        .expect("attach");
    shell.input.send(stdin("stty size\n")).await.expect("input");
    let before = read_until(&mut shell, |o| has_line(o, "24 80")).await;
    shell
        .input
        .send(ShellInput::Resize {
            cols: 132,
            rows: 43,
        })
        .await
        .expect("resize");
    shell
        .input
        .send(stdin("stty size; exit 0\n"))
        .await
        .expect("input");
    let after = read_until(&mut shell, |o| has_line(o, "43 132")).await;
    println!("resize: {before:?} then {after:?}");
    assert_eq!(exit_of(&mut shell.output).await, (0, None));

    // Another user: a login shell through runuser -l.
    let (out, code) = ctx.exec("useradd -m -s /bin/bash app && echo made").await;
    assert_eq!((out.as_str(), code), ("made\n", 0));
    let o = ctx
        .session(
            ctx.open("app", &ctx.pty_cert),
            vec![stdin("echo U=$(id -un) H=$PWD; tty; exit 3\n")],
        )
        .await;
    println!("as app: {:?}", o.output);
    assert!(o.output.contains("U=app H=/home/app"), "{:?}", o.output);
    assert!(o.output.contains("/dev/pts/"), "{:?}", o.output);
    assert_eq!(o.exit_code, 3);

    // Hanging up: the shell and what runs in it get SIGHUP.
    let mut shell = s
        .attach(ctx.open("root", &ctx.pty_cert))
        .await
        .expect("attach");
    shell
        .input
        .send(stdin("echo st''arted; sleep 4242\n"))
        .await
        .expect("input");
    read_until(&mut shell, |o| o.contains("started\r\n")).await;
    drop(shell.input);
    let exit = exit_of(&mut shell.output).await;
    println!("hang-up: {exit:?}");
    assert_eq!(exit.0, -1);
    assert!(exit.1.is_some_and(|e| e.contains("hung up")));
    let mut left = String::new();
    for _ in 0..10 {
        left = ctx.exec("pgrep -fx 'sleep 4242' || true").await.0;
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(left, "", "the hung-up shell's child is gone");
}
