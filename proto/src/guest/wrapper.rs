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
//! 2. on a guest with a cgroup v2 hierarchy, moves itself into a cgroup of the
//!    command's own, `/sys/fs/cgroup/fluid/<command_id>`, so everything the command
//!    starts (`setsid`, double forks, `nohup`) stays in it. It writes the cgroup
//!    files itself: a `systemd-run --scope` did the same through PID 1 over D-Bus,
//!    and under TCG that alone cost most of a second per command;
//! 3. starts the command in a new session (`setsid`): a tiny `sh` writes its pid (the
//!    new process group's id) to `/run/fluid/cmd/<command_id>.pid`, then `exec`s
//!    `[runuser -u USER --] env -- 'NAME=value'… /bin/sh -c 'COMMAND'`; standard
//!    input, output and the exit status pass straight through;
//! 4. when the command ends: removes the pid file, moves itself back to the cgroup it
//!    came from and removes the command's cgroup (unless something the command
//!    started still runs in it), and exits with the command's status.
//!
//! On a timeout the agent runs [`kill_script`] over another channel: it SIGKILLs the
//! whole cgroup (`cgroup.kill`), also kills the process group (the only handle on a
//! guest without cgroup v2), and removes the cgroup. A command that ends normally
//! keeps what it left running in the background (a server it started, say).

use crate::model::Exec;

/// Where the pid files of running commands live in the guest.
pub const RUN_DIR: &str = "/run/fluid/cmd";
/// The root of the guest's cgroup v2 hierarchy.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The cgroup, under [`CGROUP_ROOT`], that holds the commands' own.
pub const CGROUP_PARENT: &str = "fluid";

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

/// The cgroup a command runs in, under the hierarchy rooted at `cgroup_root`.
pub fn cgroup_dir(cgroup_root: &str, command_id: &str) -> String {
    format!("{cgroup_root}/{CGROUP_PARENT}/{command_id}")
}

/// The wrapper script for `exec` (pid files under [`RUN_DIR`], a cgroup under
/// [`CGROUP_ROOT`] when the guest has a cgroup v2 hierarchy there).
pub fn build(exec: &Exec) -> String {
    build_in(exec, RUN_DIR, CGROUP_ROOT)
}

/// The wrapper script for `exec`, with pid files under `run_dir`, in a cgroup of its
/// own when `cgroup_root` is the root of a cgroup v2 hierarchy.
pub fn build_in(exec: &Exec, run_dir: &str, cgroup_root: &str) -> String {
    let mut s = String::new();
    // With cgroup v2 the command gets a cgroup of its own (the one program this
    // costs is `mkdir`); without, a new session whose process group id goes to a pid
    // file. `test` is the shell's own: after the first command the pid directory
    // costs no program either.
    s.push_str(&format!(
        "g={cg}\n\
         if [ -f {root}/cgroup.controllers ] && mkdir -p -- \"$g\" 2>/dev/null; then\n  \
         f=\n  set --\nelse\n  g=\n  f={pid}\n  \
         [ -d {dir} ] || mkdir -p -- {dir} || exit {EXIT_NO_RUN_DIR}\n  \
         set -- setsid -w\nfi\n",
        cg = quote(&cgroup_dir(cgroup_root, &exec.command_id)),
        root = quote(cgroup_root),
        pid = quote(&pid_file(run_dir, &exec.command_id)),
        dir = quote(run_dir),
    ));
    match (&exec.workdir, exec.user.as_str()) {
        (Some(dir), _) => s.push_str(&format!("cd -- {} || exit {EXIT_NO_WORKDIR}\n", quote(dir))),
        // sshd starts root's commands in root's home already.
        (None, "root") => {}
        // The user name was validated ([a-z_][a-z0-9_-]*), so `~name` is safe unquoted.
        (None, user) => s.push_str(&format!("cd ~{user} 2>/dev/null || cd /\n")),
    }
    // The command's first process: it joins the cgroup or writes the pid file
    // (`echo` and `export` are the shell's own), exports root's environment, then
    // execs the command. The wrapper itself stays where sshd started it.
    s.push_str(&format!(
        "\"$@\" /bin/sh -c {} sh \"$f\" \"$g\"",
        quote(&inner())
    ));
    let (user, env) = if exec.user == "root" {
        (String::new(), "")
    } else {
        (format!(" runuser -u {} --", quote(&exec.user)), " env --")
    };
    // Root's variables are exported by the first process; another user's are set
    // after `runuser`, which would reset HOME, SHELL, USER and LOGNAME.
    if env.is_empty() {
        push_env(&mut s, exec);
    }
    s.push_str(" --");
    s.push_str(&user);
    s.push_str(env);
    if !env.is_empty() {
        push_env(&mut s, exec);
    }
    s.push_str(" /bin/sh -c ");
    s.push_str(&quote(&exec.command));
    // The command's cgroup goes once empty (not while something the command started
    // still runs in it), in the background: the exit status need not wait for it.
    s.push_str(
        "\nrc=$?\n\
         if [ -n \"$g\" ]; then rmdir -- \"$g\" </dev/null >/dev/null 2>&1 & else rm -f -- \"$f\"; fi\n\
         exit $rc\n",
    );
    s
}

/// The first process of a command (`sh -c INNER sh PIDFILE CGROUP NAME=value… --
/// COMMAND…`).
fn inner() -> String {
    format!(
        "f=$1 g=$2; shift 2; \
         {{ [ -z \"$g\" ] || echo $$ >\"$g/cgroup.procs\"; }} 2>/dev/null; \
         [ -z \"$f\" ] || echo $$ >\"$f\" || exit {EXIT_NO_RUN_DIR}; \
         while [ \"$1\" != -- ]; do export \"$1\"; shift; done; shift; exec \"$@\""
    )
}

/// Appends the request's environment, each `NAME=value` one quoted word.
fn push_env(s: &mut String, exec: &Exec) {
    for (name, value) in &exec.env {
        s.push(' ');
        s.push_str(&quote(&format!("{name}={value}")));
    }
}

/// What [`kill_script`] prints: how the command was killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Killed {
    /// Its whole cgroup (everything it started).
    Cgroup,
    /// Its process group (a guest without cgroup v2).
    Group,
    /// Nothing was left to kill (it had just ended).
    Nothing,
}

impl Killed {
    pub fn parse(out: &str) -> Option<Self> {
        match out.trim() {
            "cgroup" => Some(Self::Cgroup),
            "group" => Some(Self::Group),
            "none" => Some(Self::Nothing),
            _ => None,
        }
    }
}

/// SIGKILLs the command's cgroup (everything in it: `cgroup.kill`, or each process
/// where the kernel has no `cgroup.kill`), kills its process group too (its id read
/// first: the wrapper removes the pid file as soon as the command's shell dies),
/// waits (in the shell, no program) until the cgroup is empty, and removes it, removes its
/// pid file and, once empty, its cgroup, and prints `cgroup`, `group` or `none`.
pub fn kill_script(command_id: &str) -> String {
    kill_script_in(command_id, RUN_DIR, CGROUP_ROOT)
}

/// [`kill_script`] with pid files under `run_dir` and the cgroups under `cgroup_root`.
pub fn kill_script_in(command_id: &str, run_dir: &str, cgroup_root: &str) -> String {
    format!(
        "g={cg}\nf={pid}\nhow=none\npg=\n\
         [ -s \"$f\" ] && pg=$(cat -- \"$f\")\n\
         if [ -f \"$g/cgroup.kill\" ] && echo 1 >\"$g/cgroup.kill\" 2>/dev/null; then\n  how=cgroup\n\
         elif [ -f \"$g/cgroup.procs\" ]; then\n  \
         for p in $(cat -- \"$g/cgroup.procs\"); do kill -s KILL \"$p\" 2>/dev/null; done\n  how=cgroup\nfi\n\
         if [ -n \"$pg\" ] && kill -s KILL -- -\"$pg\" 2>/dev/null && [ \"$how\" = none ]; then\n  \
         how=group\nfi\n\
         rm -f -- \"$f\"\n\
         if [ \"$how\" = cgroup ]; then\n  n=0\n  \
         while [ $n -lt 20000 ] && read -r k v <\"$g/cgroup.events\" 2>/dev/null && [ \"$v\" != 0 ]; do n=$((n + 1)); done\n  \
         rmdir -- \"$g\" 2>/dev/null\nfi\n\
         echo \"$how\"\n",
        cg = quote(&cgroup_dir(cgroup_root, command_id)),
        pid = quote(&pid_file(run_dir, command_id)),
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

    /// A directory that does not exist: the scripts take the no-cgroup path.
    const NO_CGROUP: &str = "/nonexistent/fluid-test-no-cgroup";

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
        let script = build_in(&e, run_dir, NO_CGROUP);
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
        let (code, out, err) = run(&build_in(&e, &run_dir, NO_CGROUP), b"");
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
        let script = build_in(&e, &run_dir, NO_CGROUP);
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
        let (code, how, _) = run(&kill_script_in(&e.command_id, &run_dir, NO_CGROUP), b"");
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

    /// A stand-in for a cgroup v2 root in `dir`: the wrapper takes the cgroup path,
    /// and its "cgroup.procs" is a plain file that keeps the last pid written.
    fn fake_cgroup_root(dir: &std::path::Path) -> String {
        std::fs::write(dir.join("cgroup.controllers"), "cpu memory\n").expect("write");
        dir.to_str().expect("utf-8").to_owned()
    }

    #[test]
    fn with_cgroup_v2_the_command_joins_a_cgroup_of_its_own() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = fake_cgroup_root(tmp.path());
        let run_dir = tmp.path().join("run");
        let run_dir = run_dir.to_str().expect("utf-8");
        let script = build_in(&exec("cat; echo $$; echo err >&2; exit 5"), run_dir, &root);
        let (code, out, err) = run(&script, b"in\n");
        // Standard streams and the exit status pass straight through.
        assert_eq!(code, 5, "{script}\n{err}");
        assert_eq!(err, "err\n");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert_eq!(lines[0], "in");
        // The command's own process (the shell that runs it) joined the cgroup.
        let procs = std::fs::read_to_string(
            std::path::Path::new(&cgroup_dir(&root, "CMD-0123abcd")).join("cgroup.procs"),
        )
        .expect("the command's cgroup was made and joined");
        assert_eq!(procs.trim(), lines[1], "{script}");
    }

    #[test]
    fn the_kill_script_kills_the_cgroup_and_the_group() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = fake_cgroup_root(tmp.path());
        let run_dir = tmp.path().to_str().expect("utf-8").to_owned();
        // The stand-in lists one process only: the command's own (`exec`).
        let e = exec("exec sleep 30");
        let child = Command::new("sh")
            .arg("-c")
            .arg(build_in(&e, &run_dir, &root))
            .stdout(Stdio::piped())
            .spawn()
            .expect("sh");
        let procs = std::path::Path::new(&cgroup_dir(&root, &e.command_id)).join("cgroup.procs");
        for _ in 0..100 {
            if std::fs::read_to_string(&procs).is_ok_and(|s| s.ends_with('\n')) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // The stand-in has no cgroup.kill: the script kills each process it lists.
        let (code, how, _) = run(&kill_script_in(&e.command_id, &run_dir, &root), b"");
        assert_eq!(code, 0);
        assert_eq!(Killed::parse(&how), Some(Killed::Cgroup), "{how}");
        let out = child.wait_with_output().expect("wait");
        assert_eq!(out.status.code(), Some(137));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "");
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
                "g='/sys/fs/cgroup/fluid/CMD-0123abcd'\nf='/run/fluid/cmd/CMD-0123abcd.pid'\n"
            ),
            "{k}"
        );
        assert!(k.contains("echo 1 >\"$g/cgroup.kill\""), "{k}");
        assert!(
            root.contains(
                "g='/sys/fs/cgroup/fluid/CMD-0123abcd'\nif [ -f '/sys/fs/cgroup'/cgroup.controllers ]"
            ),
            "{root}"
        );
    }
}
