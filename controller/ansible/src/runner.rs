//! Running `ansible-playbook`: a playbook against some hosts, a syntax check, the
//! version.
//!
//! A run writes its inventory and `ansible.cfg` into the caller's work directory,
//! starts ansible-playbook in its own process group (inherited `ANSIBLE_*` variables
//! removed, colour off), and streams stdout and stderr line by line. The child never
//! waits for the caller: lines go through a bounded buffer, and when the caller falls
//! behind by more than that, lines are dropped and a marker line says how many. At the
//! timeout the whole process group is terminated, then killed.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

pub use crate::error::RunError;

mod config;
pub mod confine;
#[cfg(test)]
mod tests;

pub use config::sh_quote;
pub use confine::Confinement;

/// Lines buffered between ansible-playbook and a slow receiver.
const BUFFER_LINES: usize = 4096;
/// Longest line passed on; the rest of a longer one is cut.
const MAX_LINE_BYTES: usize = 64 * 1024;
/// How long a terminated run gets before it is killed.
const TERM_GRACE: Duration = Duration::from_secs(5);
/// How long the output may keep flowing after the process ended (stragglers holding
/// the pipes are killed then).
const DRAIN_GRACE: Duration = Duration::from_secs(5);
/// How long `run` waits for the receiver to take the last lines.
const DELIVER_GRACE: Duration = Duration::from_secs(10);
/// Time limit of `--syntax-check` and `--version`.
const SHORT_TIMEOUT: Duration = Duration::from_secs(120);
/// Where `find_ansible_playbook` looks besides `PATH`.
pub const DEFAULT_VENV_BIN: &str = "/opt/fluid-ansible/bin/ansible-playbook";

/// A host of the inventory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InventoryHost {
    /// Inventory name (`[A-Za-z0-9._-]`).
    pub name: String,
    /// Address SSH connects to.
    pub address: String,
    /// SSH port.
    pub port: u16,
    /// Remote user.
    pub user: String,
    /// Private key file.
    pub private_key: Option<PathBuf>,
    /// OpenSSH certificate of that key (`-o CertificateFile=…`).
    pub certificate: Option<PathBuf>,
    /// More `ssh` arguments (`-o StrictHostKeyChecking=…`, `-o UserKnownHostsFile=…`,
    /// `-o ProxyCommand=…`); each one argument, quoted by the runner. Host keys are
    /// checked as these say.
    pub ssh_common_args: Vec<String>,
    /// `ansible_connection` (`ssh` when unset; `local` for the controller itself).
    pub connection: Option<String>,
    /// `ansible_python_interpreter` on the host (discovered when unset).
    pub python_interpreter: Option<String>,
}

/// One ansible-playbook run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSpec {
    /// The `ansible-playbook` binary.
    pub ansible_playbook: PathBuf,
    /// The playbook file.
    pub playbook_path: PathBuf,
    /// The hosts (the inventory's `all` group).
    pub hosts: Vec<InventoryHost>,
    /// `--check`.
    pub check: bool,
    /// `--diff`.
    pub diff: bool,
    /// A directory for the inventory, `ansible.cfg` and Ansible's local temp files
    /// (created if missing; the caller removes it).
    pub work_dir: PathBuf,
    /// The run is stopped after this long.
    pub timeout: Duration,
    /// More arguments before the playbook (`--tags`, `--limit`, `-v`, …).
    pub extra_args: Vec<String>,
    /// Run inside bubblewrap ([`confine`]); `None` runs unconfined.
    pub confine: Option<Confinement>,
    /// More files or directories the confined run sees, read-only, at the same path
    /// (artefacts a playbook copies, a production target's known_hosts).
    pub read_only: Vec<PathBuf>,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunOutcome {
    /// ansible-playbook's exit code (None when killed by a signal).
    pub exit_code: Option<i32>,
    /// It was stopped at the timeout.
    pub timed_out: bool,
    /// Output lines dropped because the receiver fell behind.
    pub dropped_lines: u64,
}

impl RunOutcome {
    /// Exit code 0 and not timed out.
    pub fn success(&self) -> bool {
        self.exit_code == Some(0) && !self.timed_out
    }
}

/// `ansible-playbook` from `PATH`, else [`DEFAULT_VENV_BIN`] if it exists.
pub fn find_ansible_playbook() -> Option<PathBuf> {
    let in_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("ansible-playbook"))
            .find(|p| p.is_file())
    });
    in_path.or_else(|| {
        let p = PathBuf::from(DEFAULT_VENV_BIN);
        p.is_file().then_some(p)
    })
}

/// Kills the process group when dropped while armed (the run was cancelled or failed).
struct GroupGuard(Option<Pid>);

impl GroupGuard {
    fn signal(&self, sig: Signal) {
        if let Some(pg) = self.0 {
            let _ = killpg(pg, sig);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.signal(Signal::SIGKILL);
    }
}

fn base_command(ansible_playbook: &Path, cfg: &Path, local_tmp: &Path) -> Command {
    let mut cmd = Command::new(ansible_playbook);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ANSIBLE_") {
            cmd.env_remove(&k);
        }
    }
    with_ansible_env(&mut cmd, cfg, local_tmp);
    cmd
}

/// ansible-playbook inside bubblewrap (`prefix` = bwrap's arguments, ending in `--`),
/// with an environment of its own: nothing of the controller's is passed on.
fn confined_command(
    c: &Confinement,
    prefix: Vec<std::ffi::OsString>,
    ansible_playbook: &Path,
    cfg: &Path,
    local_tmp: &Path,
) -> Command {
    let mut cmd = Command::new(&c.bwrap);
    cmd.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", "/tmp")
        .env("LANG", "C.UTF-8")
        .env("LC_ALL", "C.UTF-8")
        .args(prefix)
        .arg(ansible_playbook);
    with_ansible_env(&mut cmd, cfg, local_tmp);
    cmd
}

fn with_ansible_env(cmd: &mut Command, cfg: &Path, local_tmp: &Path) {
    cmd.env("ANSIBLE_CONFIG", cfg)
        .env("ANSIBLE_LOCAL_TEMP", local_tmp)
        .env("ANSIBLE_FORCE_COLOR", "0")
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_NOCOWS", "1")
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
}

fn spawn(mut cmd: Command, binary: &Path) -> Result<Child, RunError> {
    cmd.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
            RunError::NotInstalled {
                path: binary.to_owned(),
            }
        }
        _ => RunError::io(format!("starting {}", binary.display()), e),
    })
}

async fn write_file(path: &Path, content: &str) -> Result<(), RunError> {
    tokio::fs::write(path, content)
        .await
        .map_err(|e| RunError::io(format!("writing {}", path.display()), e))
}

/// Runs the playbook on `spec.hosts`, sending each output line to `lines` (the
/// caller reads them concurrently). A missing binary is [`RunError::NotInstalled`];
/// a playbook that fails is an outcome with a non-zero exit code, not an error.
pub async fn run(spec: &RunSpec, lines: mpsc::Sender<String>) -> Result<RunOutcome, RunError> {
    let inventory = config::inventory_json(&spec.hosts)?;
    let work = &spec.work_dir;
    let local_tmp = work.join("tmp");
    tokio::fs::create_dir_all(&local_tmp)
        .await
        .map_err(|e| RunError::io(format!("creating {}", local_tmp.display()), e))?;
    let inventory_path = work.join("inventory.json");
    let cfg_path = work.join("ansible.cfg");
    write_file(&inventory_path, &inventory).await?;
    write_file(&cfg_path, config::ANSIBLE_CFG).await?;
    // SSH control sockets need a short path (sun_path is 108 bytes): a directory of
    // the confined run's private /tmp, else a temporary one.
    let mut cp_dir = None;
    let mut cmd = match &spec.confine {
        Some(c) => {
            let as_root = confine::is_root();
            let mut in_work: Vec<PathBuf> = vec![inventory_path.clone(), cfg_path.clone()];
            if spec.playbook_path.starts_with(work) {
                in_work.push(spec.playbook_path.clone());
            }
            in_work.extend(spec.hosts.iter().filter_map(|h| h.private_key.clone()));
            let mut read_only = spec.read_only.clone();
            if !spec.playbook_path.starts_with(work) {
                read_only.push(spec.playbook_path.clone());
            }
            let prefix = confine::bwrap_args(
                c,
                &spec.ansible_playbook,
                work,
                &in_work,
                &read_only,
                as_root,
            )?;
            if let (Some((uid, gid)), true) = (c.user, as_root) {
                confine::hand_over(work, uid, gid)?;
            }
            let mut cmd =
                confined_command(c, prefix, &spec.ansible_playbook, &cfg_path, &local_tmp);
            cmd.env("ANSIBLE_SSH_CONTROL_PATH_DIR", "/tmp/cp");
            cmd
        }
        None => {
            let dir = tempfile::Builder::new()
                .prefix("fluid-cp")
                .tempdir()
                .map_err(|e| RunError::io("creating the SSH control directory", e))?;
            let mut cmd = base_command(&spec.ansible_playbook, &cfg_path, &local_tmp);
            cmd.env("ANSIBLE_SSH_CONTROL_PATH_DIR", dir.path());
            cp_dir = Some(dir);
            cmd
        }
    };
    cmd.current_dir(work).arg("-i").arg(&inventory_path);
    if spec.check {
        cmd.arg("--check");
    }
    if spec.diff {
        cmd.arg("--diff");
    }
    cmd.args(&spec.extra_args).arg(&spec.playbook_path);

    let binary = spec
        .confine
        .as_ref()
        .map_or(&spec.ansible_playbook, |c| &c.bwrap);
    let mut child = spawn(cmd, binary)?;
    let group = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw);
    let guard = GroupGuard(group);

    let dropped = Arc::new(AtomicU64::new(0));
    let (tx, rx) = mpsc::channel::<String>(BUFFER_LINES);
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(tokio::spawn(read_lines(out, tx.clone(), dropped.clone())));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(tokio::spawn(read_lines(err, tx.clone(), dropped.clone())));
    }
    drop(tx);
    let forwarder = tokio::spawn(forward(rx, lines, dropped.clone()));

    let (exit_code, timed_out) = match tokio::time::timeout(spec.timeout, child.wait()).await {
        Ok(Ok(status)) => (status.code(), false),
        Ok(Err(e)) => return Err(RunError::io("waiting for ansible-playbook", e)),
        Err(_) => {
            tracing::warn!(playbook = %spec.playbook_path.display(), "ansible-playbook timed out; terminating it");
            guard.signal(Signal::SIGTERM);
            let status = match tokio::time::timeout(TERM_GRACE, child.wait()).await {
                Ok(r) => r,
                Err(_) => {
                    guard.signal(Signal::SIGKILL);
                    child.wait().await
                }
            };
            let code = status.ok().and_then(|s| s.code());
            (code, true)
        }
    };

    // Output still flowing from children of ansible-playbook: give it a moment, then
    // kill whatever still holds the pipes.
    let abort_handles: Vec<_> = readers.iter().map(|r| r.abort_handle()).collect();
    let all_read = futures_join(readers);
    if tokio::time::timeout(DRAIN_GRACE, all_read).await.is_err() {
        guard.signal(Signal::SIGKILL);
        for h in abort_handles {
            h.abort();
        }
    }
    drop(guard);

    let forwarder_abort = forwarder.abort_handle();
    if tokio::time::timeout(DELIVER_GRACE, forwarder)
        .await
        .is_err()
    {
        forwarder_abort.abort();
    }
    drop(cp_dir);
    Ok(RunOutcome {
        exit_code,
        timed_out,
        dropped_lines: dropped.load(Ordering::Relaxed),
    })
}

async fn futures_join(handles: Vec<tokio::task::JoinHandle<()>>) {
    for h in handles {
        let _ = h.await;
    }
}

/// Reads `r` line by line into `tx` without ever waiting on it (a full buffer drops
/// the line and counts it).
async fn read_lines<R: AsyncRead + Unpin>(r: R, tx: mpsc::Sender<String>, dropped: Arc<AtomicU64>) {
    let mut r = BufReader::new(r);
    let mut line: Vec<u8> = Vec::new();
    let mut cut = false;
    let emit = |line: &mut Vec<u8>, cut: &mut bool| {
        let mut s = String::from_utf8_lossy(line)
            .trim_end_matches('\r')
            .to_owned();
        if *cut {
            s.push_str(" … [line cut]");
        }
        line.clear();
        *cut = false;
        if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(s) {
            dropped.fetch_add(1, Ordering::Relaxed);
        }
    };
    loop {
        let (used, newline) = match r.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(chunk) => {
                let (part, newline) = match chunk.iter().position(|b| *b == b'\n') {
                    Some(p) => (&chunk[..p], Some(p)),
                    None => (chunk, None),
                };
                let room = MAX_LINE_BYTES.saturating_sub(line.len());
                if part.len() > room {
                    cut = true;
                }
                line.extend_from_slice(&part[..part.len().min(room)]);
                (newline.map_or(chunk.len(), |p| p + 1), newline.is_some())
            }
        };
        r.consume(used);
        if newline {
            emit(&mut line, &mut cut);
        }
    }
    if !line.is_empty() {
        emit(&mut line, &mut cut);
    }
}

/// Passes lines on to the caller, saying when some were dropped; keeps draining
/// (and discarding) when the caller has gone.
async fn forward(
    mut rx: mpsc::Receiver<String>,
    out: mpsc::Sender<String>,
    dropped: Arc<AtomicU64>,
) {
    let mut reported = 0;
    let mut open = true;
    let marker = |n: u64| format!("[fluid: {n} lines of output dropped: the reader fell behind]");
    while let Some(line) = rx.recv().await {
        if !open {
            continue;
        }
        let d = dropped.load(Ordering::Relaxed);
        if d > reported {
            open = out.send(marker(d - reported)).await.is_ok();
            reported = d;
        }
        open = open && out.send(line).await.is_ok();
    }
    let d = dropped.load(Ordering::Relaxed);
    if open && d > reported {
        let _ = out.send(marker(d - reported)).await;
    }
}

/// Output of a short run (`--syntax-check`, `--version`), stdout then stderr. Confined,
/// the run sees its temporary directory (with `in_dir`, its files written there first:
/// name and content) and nothing of the controller's.
async fn run_short(
    binary: &Path,
    args: &[&std::ffi::OsStr],
    confine: Option<&Confinement>,
    in_dir: &[(&str, &[u8])],
) -> Result<(bool, String, String), RunError> {
    let dir = tempfile::tempdir().map_err(|e| RunError::io("creating a temporary directory", e))?;
    let cfg = dir.path().join("ansible.cfg");
    write_file(&cfg, config::ANSIBLE_CFG).await?;
    let mut files = vec![cfg.clone()];
    for (name, content) in in_dir {
        let p = dir.path().join(name);
        tokio::fs::write(&p, content)
            .await
            .map_err(|e| RunError::io(format!("writing {}", p.display()), e))?;
        files.push(p);
    }
    let mut cmd = match confine {
        Some(c) => {
            let as_root = confine::is_root();
            let prefix = confine::bwrap_args(c, binary, dir.path(), &files, &[], as_root)?;
            if let (Some((uid, gid)), true) = (c.user, as_root) {
                confine::hand_over(dir.path(), uid, gid)?;
            }
            confined_command(c, prefix, binary, &cfg, &dir.path().join("tmp"))
        }
        None => base_command(binary, &cfg, dir.path()),
    };
    cmd.current_dir(dir.path()).args(args);
    let launcher = confine.map_or(binary, |c| c.bwrap.as_path());
    let child = spawn(cmd, launcher)?;
    let group = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw);
    let guard = GroupGuard(group);
    let what = args
        .iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let out = match tokio::time::timeout(SHORT_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => return Err(RunError::io(format!("running ansible-playbook {what}"), e)),
        Err(_) => {
            return Err(RunError::Command {
                what: format!("ansible-playbook {what}"),
                status: "timed out".into(),
                output: String::new(),
            });
        }
    };
    drop(guard);
    let cap = |b: &[u8]| {
        let s = String::from_utf8_lossy(b);
        cap_text(&s, 64 * 1024)
    };
    Ok((out.status.success(), cap(&out.stdout), cap(&out.stderr)))
}

/// `s` cut to at most `max` bytes (on a character boundary).
fn cap_text(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}\n… [cut]", &s[..end])
}

/// `ansible-playbook --syntax-check` of `playbook_path`, unconfined; on failure the
/// error holds what ansible said. The controller checks what it generated with
/// [`syntax_check_text`], confined.
pub async fn syntax_check(ansible_playbook: &Path, playbook_path: &Path) -> Result<(), RunError> {
    let (ok, stdout, stderr) = run_short(
        ansible_playbook,
        &[
            "--syntax-check".as_ref(),
            "-i".as_ref(),
            "localhost,".as_ref(),
            playbook_path.as_os_str(),
        ],
        None,
        &[],
    )
    .await?;
    syntax_outcome(ok, &stdout, &stderr)
}

/// `ansible-playbook --syntax-check` of `playbook` (its YAML text), written into the
/// run's own directory first. With `confine`, inside bubblewrap: nothing of the
/// controller's files is in reach (a generated playbook's content comes from a guest).
pub async fn syntax_check_text(
    ansible_playbook: &Path,
    playbook: &str,
    confine: Option<&Confinement>,
) -> Result<(), RunError> {
    let (ok, stdout, stderr) = run_short(
        ansible_playbook,
        &[
            "--syntax-check".as_ref(),
            "-i".as_ref(),
            "localhost,".as_ref(),
            "playbook.yml".as_ref(),
        ],
        confine,
        &[("playbook.yml", playbook.as_bytes())],
    )
    .await?;
    syntax_outcome(ok, &stdout, &stderr)
}

fn syntax_outcome(ok: bool, stdout: &str, stderr: &str) -> Result<(), RunError> {
    if ok {
        Ok(())
    } else {
        Err(RunError::SyntaxCheck {
            output: format!("{stdout}{stderr}").trim().to_owned(),
        })
    }
}

/// The ansible-core version (`2.19.4`), from `ansible-playbook --version`.
pub async fn version(ansible_playbook: &Path) -> Result<String, RunError> {
    let (ok, stdout, stderr) =
        run_short(ansible_playbook, &["--version".as_ref()], None, &[]).await?;
    let first = stdout.lines().next().unwrap_or_default().trim().to_owned();
    if !ok || first.is_empty() {
        return Err(RunError::Command {
            what: "ansible-playbook --version".into(),
            status: if ok {
                "no output".into()
            } else {
                "failed".into()
            },
            output: format!("{stdout}{stderr}").trim().to_owned(),
        });
    }
    // `ansible-playbook [core 2.19.4]`
    let version = first
        .split_once("[core ")
        .and_then(|(_, rest)| rest.split_once(']'))
        .map(|(v, _)| v.trim().to_owned());
    Ok(version.unwrap_or(first))
}
