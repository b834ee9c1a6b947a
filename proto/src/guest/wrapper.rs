//! The shell script the agent runs over SSH for one command (pure functions): every
//! Exec's command, the controller's guest scripts included, runs inside it.
//!
//! The guest's sshd runs it with root's login shell (`sh -c`/`bash -c`), so it is plain
//! POSIX sh. Every value that comes from a request is single-quoted ([`quote`]); names
//! (user, environment variables, command id) were validated by [`crate::model`] and
//! are quoted anyway. The script:
//!
//! 1. makes the pid directory (`/run/fluid/cmd`) and changes to the working directory
//!    (the user's home by default);
//! 2. on a guest run by systemd, puts the command in a transient scope of its own,
//!    `fluid-cmd-<command_id>.scope` (`systemd-run --scope --collect`: the scope holds
//!    the command's cgroup, so everything it starts — `setsid`, double forks, `nohup` —
//!    stays in it; standard input, output and the exit status pass straight through,
//!    since `systemd-run --scope` execs the command);
//! 3. starts the command in a new session (`setsid`): a tiny `sh` writes its pid — the
//!    new process group's id — to `/run/fluid/cmd/<command_id>.pid`, then `exec`s
//!    `[runuser -u USER --] env -- 'NAME=value'… /bin/sh -c 'COMMAND'`;
//! 4. removes the pid file when the command ends and exits with its status.
//!
//! On a timeout the agent runs [`kill_script`] over another channel: it SIGKILLs the
//! whole scope (`systemctl kill`), stops it, and also kills the process group (the only
//! handle on a guest without systemd). A command that ends normally keeps what it left
//! running in the background (a server it started, say).

use crate::model::Exec;

/// Where the pid files of running commands live in the guest.
pub const RUN_DIR: &str = "/run/fluid/cmd";
/// Present when the guest runs systemd (as `sd_booted()` checks).
pub const SYSTEMD_DIR: &str = "/run/systemd/system";

/// Exit status of the wrapper when the pid directory cannot be made.
pub const EXIT_NO_RUN_DIR: i32 = 125;
/// Exit status of the wrapper when the working directory cannot be entered.
pub const EXIT_NO_WORKDIR: i32 = 126;

/// POSIX single-quoting: the result is one shell word whose value is `s`, whatever
/// it contains (`'` becomes `'\''`; nothing else is special between single quotes).
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// The pid file of a command, under `run_dir`.
pub fn pid_file(run_dir: &str, command_id: &str) -> String {
    format!("{run_dir}/{command_id}.pid")
}

/// The transient scope a command runs in.
pub fn scope_unit(command_id: &str) -> String {
    format!("fluid-cmd-{command_id}.scope")
}

/// The wrapper script for `exec` (pid files under [`RUN_DIR`], a scope when
/// [`SYSTEMD_DIR`] exists).
pub fn build(exec: &Exec) -> String {
    build_in(exec, RUN_DIR, SYSTEMD_DIR)
}

/// The wrapper script for `exec`, with pid files under `run_dir`, in a scope when
/// the directory `systemd_dir` exists.
pub fn build_in(exec: &Exec, run_dir: &str, systemd_dir: &str) -> String {
    let pid = quote(&pid_file(run_dir, &exec.command_id));
    let mut s = String::new();
    // `test` is the shell's own: after the first command no program runs for this.
    s.push_str(&format!(
        "[ -d {dir} ] || mkdir -p -- {dir} || exit {EXIT_NO_RUN_DIR}\n",
        dir = quote(run_dir)
    ));
    s.push_str(&format!("f={pid}\n"));
    match (&exec.workdir, exec.user.as_str()) {
        (Some(dir), _) => s.push_str(&format!("cd -- {} || exit {EXIT_NO_WORKDIR}\n", quote(dir))),
        // sshd starts root's commands in root's home already.
        (None, "root") => {}
        // The user name was validated ([a-z_][a-z0-9_-]*), so `~name` is safe unquoted.
        (None, user) => s.push_str(&format!("cd ~{user} 2>/dev/null || cd /\n")),
    }
    s.push_str(&format!(
        "set --\nif [ -d {sd} ] && command -v systemd-run >/dev/null 2>&1; then\n  \
         set -- systemd-run --quiet --scope --collect --unit={unit} --\nfi\n",
        sd = quote(systemd_dir),
        unit = quote(&scope_unit(&exec.command_id)),
    ));
    s.push_str("\"$@\" setsid -w /bin/sh -c 'echo $$ >\"$0\" && exec \"$@\"' \"$f\"");
    if exec.user != "root" {
        s.push_str(&format!(" runuser -u {} --", quote(&exec.user)));
    }
    s.push_str(" env --");
    for (name, value) in &exec.env {
        s.push(' ');
        s.push_str(&quote(&format!("{name}={value}")));
    }
    s.push_str(" /bin/sh -c ");
    s.push_str(&quote(&exec.command));
    s.push_str("\nrc=$?\nrm -f -- \"$f\"\nexit $rc\n");
    s
}

/// What [`kill_script`] prints: how the command was killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Killed {
    /// Its whole cgroup scope (everything it started).
    Scope,
    /// Its process group (a guest without systemd).
    Group,
    /// Nothing was left to kill (it had just ended).
    Nothing,
}

impl Killed {
    pub fn parse(out: &str) -> Option<Self> {
        match out.trim() {
            "scope" => Some(Self::Scope),
            "group" => Some(Self::Group),
            "none" => Some(Self::Nothing),
            _ => None,
        }
    }
}

/// SIGKILLs the command's scope (everything in its cgroup) and stops it, kills its
/// process group too, removes its pid file, and prints `scope`, `group` or `none`.
pub fn kill_script(command_id: &str) -> String {
    kill_script_in(command_id, RUN_DIR, SYSTEMD_DIR)
}

/// [`kill_script`] with pid files under `run_dir` and systemd detected by `systemd_dir`.
pub fn kill_script_in(command_id: &str, run_dir: &str, systemd_dir: &str) -> String {
    format!(
        "u={unit}\nf={pid}\nhow=none\n\
         if [ -d {sd} ] && systemctl kill --signal=SIGKILL -- \"$u\" 2>/dev/null; then\n  \
         how=scope\n  systemctl stop -- \"$u\" 2>/dev/null\nfi\n\
         if [ -s \"$f\" ] && kill -s KILL -- -\"$(cat -- \"$f\")\" 2>/dev/null && [ \"$how\" = none ]; then\n  \
         how=group\nfi\n\
         rm -f -- \"$f\"\necho \"$how\"\n",
        unit = quote(&scope_unit(command_id)),
        pid = quote(&pid_file(run_dir, command_id)),
        sd = quote(systemd_dir),
    )
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};

    use crate::model::SandboxId;

    use super::*;

    fn exec(command: &str) -> Exec {
        Exec {
            sandbox_id: SandboxId::parse("id", "SBX-0123abcd").expect("id"),
            command_id: "CMD-0123abcd".into(),
            command: command.into(),
            user: "root".into(),
            workdir: None,
            env: Vec::new(),
            timeout_seconds: None,
            output_cap_bytes: 1024,
            stdin: Vec::new(),
            ssh_certificate: "x".into(),
        }
    }

    /// Runs `script` with the local `sh`, as sshd would, feeding `stdin`.
    fn run(script: &str, stdin: &[u8]) -> (i32, String, String) {
        use std::io::Write as _;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sh");
        let mut input = child.stdin.take().expect("stdin");
        input.write_all(stdin).expect("write stdin");
        drop(input);
        let out = child.wait_with_output().expect("wait");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// A directory that does not exist: the scripts take the no-systemd path.
    const NO_SYSTEMD: &str = "/nonexistent/fluid-test-no-systemd";

    const NASTY: &str = "a'b\"c $(id) `id` $HOME \\ ; | & \n next line '' \t*";

    #[test]
    fn quoting_keeps_every_value_literal() {
        for v in [
            "",
            "plain",
            "'",
            "''",
            "it's",
            NASTY,
            "$(touch /tmp/pwned)",
            "ünïcödé",
        ] {
            let (code, out, _) = run(&format!("printf '%s' {}", quote(v)), b"");
            assert_eq!(code, 0);
            assert_eq!(out, v, "value {v:?}");
        }
        assert_eq!(quote("it's"), "'it'\\''s'");
    }

    #[test]
    fn the_wrapper_runs_the_command_with_literal_env_workdir_and_stdin() {
        let tmp = tempfile::tempdir().expect("tmp");
        let run_dir = tmp.path().join("run/cmd");
        let run_dir = run_dir.to_str().expect("utf-8");
        let work = tmp.path().join("work dir 'q'");
        std::fs::create_dir(&work).expect("mkdir");
        let mut e = exec(
            "printf '%s|%s|' \"$A\" \"$B\"; pwd; cat; test -s \"$PIDF\" && echo pidfile; \
             echo err >&2; exit 7",
        );
        e.env = vec![
            ("A".into(), NASTY.into()),
            ("B".into(), "$(id)`id`".into()),
            (
                "PIDF".into(),
                pid_file(run_dir, &e.command_id).replace('\'', ""),
            ),
        ];
        e.workdir = Some(work.to_str().expect("utf-8").into());
        let script = build_in(&e, run_dir, NO_SYSTEMD);
        let (code, out, err) = run(&script, b"from stdin\n");
        assert_eq!(code, 7, "{script}\n{err}");
        assert_eq!(
            out,
            format!(
                "{NASTY}|$(id)`id`|{}\nfrom stdin\npidfile\n",
                work.display()
            )
        );
        assert_eq!(err, "err\n");
        // The pid file is gone after a normal exit.
        assert!(!std::path::Path::new(&pid_file(run_dir, &e.command_id)).exists());
    }

    #[test]
    fn the_command_runs_in_its_own_process_group_recorded_in_the_pid_file() {
        let tmp = tempfile::tempdir().expect("tmp");
        let run_dir = tmp.path().to_str().expect("utf-8").to_owned();
        // The command prints its process group and the pid file's content.
        let e = exec(&format!(
            "ps -o pgid= -p $$ | tr -d ' '; cat {}",
            quote(&pid_file(&run_dir, "CMD-0123abcd"))
        ));
        let (code, out, err) = run(&build_in(&e, &run_dir, NO_SYSTEMD), b"");
        assert_eq!(code, 0, "{err}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert_eq!(lines[0], lines[1], "pgid = pid in the pid file");
    }

    #[test]
    fn the_kill_script_kills_the_whole_group() {
        let tmp = tempfile::tempdir().expect("tmp");
        let run_dir = tmp.path().to_str().expect("utf-8").to_owned();
        let e = exec("sleep 30 & sleep 30; echo not-killed");
        let script = build_in(&e, &run_dir, NO_SYSTEMD);
        let child = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .stdout(Stdio::piped())
            .spawn()
            .expect("sh");
        let pid = pid_file(&run_dir, &e.command_id);
        for _ in 0..100 {
            if std::fs::read_to_string(&pid).is_ok_and(|s| s.ends_with('\n')) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let pgid = std::fs::read_to_string(&pid).expect("pid file");
        let (code, how, _) = run(&kill_script_in(&e.command_id, &run_dir, NO_SYSTEMD), b"");
        assert_eq!(code, 0);
        assert_eq!(Killed::parse(&how), Some(Killed::Group), "{how}");
        let started = std::time::Instant::now();
        let out = child.wait_with_output().expect("wait");
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        assert_eq!(out.status.code(), Some(137));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "");
        assert!(!std::path::Path::new(&pid).exists());
        // No live process of the group is left (the background sleep too; a zombie
        // may wait a moment for init to reap it).
        let (_, left, _) = run(
            &format!(
                "sleep 0.2; ps -eo pgid=,stat= | awk '$1 == {} && $2 !~ /^Z/'",
                pgid.trim()
            ),
            b"",
        );
        assert_eq!(left, "");
    }

    #[test]
    fn with_systemd_the_command_runs_through_a_transient_scope() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().expect("tmp");
        let bin = tmp.path().join("bin");
        std::fs::create_dir(&bin).expect("mkdir");
        // A stand-in for systemd-run: records its arguments, then execs the command
        // after `--` (as `systemd-run --scope` does once the scope exists).
        let fake = bin.join("systemd-run");
        std::fs::write(
            &fake,
            "#!/bin/sh\nprintf '%s\\n' \"$@\" >\"$(dirname \"$0\")/args\"\n\
             while [ \"$1\" != -- ]; do shift; done\nshift\nexec \"$@\"\n",
        )
        .expect("write");
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let run_dir = tmp.path().join("run");
        let run_dir = run_dir.to_str().expect("utf-8");
        let systemd_dir = tmp.path().to_str().expect("utf-8");
        let script = build_in(
            &exec("cat; echo out; echo err >&2; exit 5"),
            run_dir,
            systemd_dir,
        );
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .env("PATH", path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sh");
        {
            use std::io::Write as _;
            let mut input = child.stdin.take().expect("stdin");
            input.write_all(b"in\n").expect("stdin");
        }
        let out = child.wait_with_output().expect("wait");
        // Standard streams and the exit status pass straight through the scope.
        assert_eq!(out.status.code(), Some(5), "{script}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "in\nout\n");
        assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
        let args = std::fs::read_to_string(bin.join("args")).expect("systemd-run was used");
        let args: Vec<&str> = args.lines().collect();
        assert_eq!(
            args[..6],
            [
                "--quiet",
                "--scope",
                "--collect",
                "--unit=fluid-cmd-CMD-0123abcd.scope",
                "--",
                "setsid"
            ]
        );
    }

    #[test]
    fn other_users_go_through_runuser_and_their_home() {
        let mut e = exec("id");
        e.user = "app".into();
        let s = build(&e);
        assert!(s.contains("cd ~app 2>/dev/null || cd /\n"), "{s}");
        assert!(
            s.contains(" runuser -u 'app' -- env -- /bin/sh -c 'id'"),
            "{s}"
        );
        assert!(s.contains("f='/run/fluid/cmd/CMD-0123abcd.pid'"), "{s}");
        let root = build(&exec("id"));
        assert!(!root.contains("runuser"), "{root}");
        assert!(!root.contains("cd "), "{root}");
        let k = kill_script("CMD-0123abcd");
        assert!(
            k.starts_with(
                "u='fluid-cmd-CMD-0123abcd.scope'\nf='/run/fluid/cmd/CMD-0123abcd.pid'\n"
            ),
            "{k}"
        );
        assert!(
            k.contains(
                "if [ -d '/run/systemd/system' ] && systemctl kill --signal=SIGKILL -- \"$u\""
            ),
            "{k}"
        );
        assert!(k.contains("systemctl stop -- \"$u\""), "{k}");
        assert!(
            root.contains(
                "systemd-run --quiet --scope --collect --unit='fluid-cmd-CMD-0123abcd.scope' --"
            ),
            "{root}"
        );
    }
}
