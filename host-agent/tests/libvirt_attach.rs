//! Attach against a real sandbox: an interactive shell on a PTY. The agent's pooled
//! connection is first made with an exec certificate (no extensions), so the session
//! must fall back to a dedicated connection with its own `permit-pty` certificate.
//! Checks output, the terminal (`tty`, TERM), the exit status, resizes, another user
//! (`runuser -l`), a certificate without `permit-pty`, and the hang-up.
//!
//! One sandbox is booted (~35 s under TCG) and shared by every test of this file
//! (`fluid_prereq::shared`); each test is one scenario, and they take turns on it.
//!
//! Needs what `libvirt_exec` needs; `scripts/test.sh` runs it; by hand:
//!
//! ```text
//! ip netns exec fluid-test env PATH=$PATH FLUID_TEST_IMAGE_DIR=… \
//!   cargo test -p fluid-agent --test libvirt_attach -- --nocapture
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
use fluid_prereq::shared::{Shared, Teardown};

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

/// The shared sandbox.
struct AttachVm {
    sb: RealSandbox,
    ctx: Ctx,
    /// Set by the first test: whether the sandbox came up (or why not).
    ready: Option<Result<(), String>>,
}

impl Teardown for AttachVm {
    async fn teardown(self) {
        drop(self.ctx);
        self.sb.teardown().await;
    }
}

static VM: Shared<AttachVm> = Shared::new();

async fn boot() -> Result<AttachVm, std::convert::Infallible> {
    let sb = RealSandbox::start("attach").await;
    let ctx = Ctx {
        s: sb.s.clone(),
        id: sb.id.clone(),
        exec_cert: certificate(&sb.ca, sb.s.ssh_public_key(), &sb.id, false),
        pty_cert: certificate(&sb.ca, sb.s.ssh_public_key(), &sb.id, true),
    };
    Ok(AttachVm {
        sb,
        ctx,
        ready: None,
    })
}

/// Waits (at most 300 s from create) for the lease, then for sshd with Execs: the
/// pooled connection then has an exec certificate (no `permit-pty`), so every session
/// below needs its own connection.
async fn wait_ready(ctx: &Ctx, created: Instant) -> Result<(), String> {
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
            Err(e) if Instant::now() < deadline => {
                println!("  not yet: {e}");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => return Err(format!("exec never worked within 300 s of create: {e}")),
        }
    }
    println!(
        "sshd ready {:.1} s after create",
        created.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Runs one scenario on the shared sandbox, once it runs commands.
fn scenario(test: impl AsyncFnOnce(&Ctx)) {
    if !common::real_host() {
        return;
    }
    VM.run(boot, async |vm| {
        if vm.ready.is_none() {
            vm.ready = Some(wait_ready(&vm.ctx, vm.sb.created).await);
        }
        match &vm.ready {
            Some(Ok(())) => test(&vm.ctx).await,
            Some(Err(why)) => panic!("the shared sandbox never ran commands: {why}"),
            None => unreachable!("set above"),
        }
    });
}

#[test]
fn a_certificate_without_permit_pty_gets_no_terminal() {
    // Neither on the pooled connection nor on a dedicated one.
    scenario(
        async |ctx| match ctx.s.attach(ctx.open("root", &ctx.exec_cert)).await {
            Err(fluid_agent::error::ServiceError::PermissionDenied(m)) => {
                println!("no permit-pty: {m}");
            }
            other => panic!("expected PERMISSION_DENIED, got {other:?}"),
        },
    );
}

#[test]
fn a_session_has_a_terminal_and_ends_with_the_shells_exit_status() {
    scenario(async |ctx| {
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
    });
}

#[test]
fn a_resize_reaches_the_terminal() {
    scenario(async |ctx| {
        // Sent once the first size was printed, or the typed-ahead line could run
        // after it.
        let mut shell = ctx
            .s
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
    });
}

#[test]
fn another_user_gets_a_login_shell() {
    scenario(async |ctx| {
        let (out, code) = ctx
            .exec("id app >/dev/null 2>&1 || useradd -m -s /bin/bash app; id -un app")
            .await;
        assert_eq!((out.as_str(), code), ("app\n", 0));
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
    });
}

#[test]
fn hanging_up_ends_the_shell_and_what_runs_in_it() {
    scenario(async |ctx| {
        let mut shell = ctx
            .s
            .attach(ctx.open("root", &ctx.pty_cert))
            .await
            .expect("attach");
        shell
            .input
            .send(stdin("echo st''arted; sleep 4242\n"))
            .await
            .expect("input");
        read_until(&mut shell, |o| o.contains("started\r\n")).await;
        // Hang up only once the shell has started its child: a hang-up that lands between
        // the echo and the fork ends the shell before it has a job to pass SIGHUP to.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let running = ctx.exec("pgrep -fx 'sleep 4242' || true").await.0;
            assert!(
                Instant::now() < deadline,
                "the shell never started its child"
            );
            if !running.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        drop(shell.input);
        let exit = exit_of(&mut shell.output).await;
        println!("hang-up: {exit:?}");
        assert_eq!(exit.0, -1);
        assert!(exit.1.is_some_and(|e| e.contains("hung up")));
        // SIGHUP reaches the child a moment after the session ends: poll with a deadline
        // (60 s: each probe is an exec over SSH, seconds apiece on a loaded TCG host).
        let deadline = Instant::now() + Duration::from_secs(60);
        let left = loop {
            let left = ctx.exec("pgrep -fx 'sleep 4242' || true").await.0;
            if left.is_empty() || Instant::now() > deadline {
                break left;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        assert_eq!(left, "", "the hung-up shell's child is gone");
    });
}
