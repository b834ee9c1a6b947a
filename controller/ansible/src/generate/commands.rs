//! The commands run in the sandbox, classified. A command made only of programs whose
//! effects the diff already holds (packages, files, services) or that only read is
//! covered by the other tasks. Any other becomes a `shell` task tagged `fluid_review`
//! and `never` (it runs only with `--tags fluid_review`) and a review note, so nothing
//! is dropped silently. A command that failed or did not finish gets a note only.
//!
//! The split is a small shell lexer: simple commands separated by `&& || ; | &`,
//! newlines and parentheses; quotes, escapes, redirections, here-documents and
//! variable assignments understood. Command or process substitution (`$(…)`, `` `…` ``,
//! `<(…)`) is not analysed: such a command is always for review.

use fluid_client::snapshots::CommandEntry;
use serde_json::json;

use super::{REVIEW_TAG, task_name, truncate_chars};
use crate::model::{TaskSpec, literal};

mod lexer;
#[cfg(test)]
mod tests;

/// How a command run in the sandbox is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandClass {
    /// A read, write, create or edit through the controller's files API: the diff has
    /// its effect.
    FileApi,
    /// Made only of programs whose effects the diff holds, or that only read.
    Covered,
    /// A person's interactive shell (`attach`): its effects on files are in the diff,
    /// anything else it did is unknown (a review note, no task).
    Interactive,
    /// Not expressed declaratively: a human must review it.
    Review,
}

/// Programs covered whatever their arguments.
const COVERED: &[&str] = &[
    "apt",
    "apt-get",
    "apt-cache",
    "apt-mark",
    "dpkg-query",
    "systemctl",
    "journalctl",
    "cat",
    "echo",
    "printf",
    "tee",
    "cp",
    "mv",
    "rm",
    "mkdir",
    "rmdir",
    "chmod",
    "chown",
    "chgrp",
    "ln",
    "touch",
    "install",
    "sed",
    "ls",
    "grep",
    "egrep",
    "fgrep",
    "head",
    "tail",
    "wc",
    "stat",
    "test",
    "[",
    "[[",
    "true",
    "false",
    ":",
    "id",
    "whoami",
    "uname",
    "ps",
    "ss",
    "df",
    "du",
    "free",
    "sleep",
    "which",
    "type",
    "sync",
    "pwd",
    "cd",
    "export",
    "diff",
    "cmp",
    "md5sum",
    "sha1sum",
    "sha256sum",
    "sha512sum",
    "readlink",
    "realpath",
    "basename",
    "dirname",
    "sort",
    "uniq",
    "cut",
    "tr",
    "file",
    "less",
    "more",
    "nproc",
    "uptime",
];

/// Words that start or end shell compound commands; they have no effect of their own.
const SHELL_KEYWORDS: &[&str] = &[
    "if", "then", "else", "elif", "do", "while", "until", "!", "{",
];
const SHELL_CLOSERS: &[&str] = &["fi", "done", "}", "esac"];

/// Classifies one command line as recorded by the audit.
pub fn classify_command(cmd: &str) -> CommandClass {
    if is_file_api(cmd) {
        return CommandClass::FileApi;
    }
    if is_attach(cmd) {
        return CommandClass::Interactive;
    }
    let Ok(segments) = lexer::simple_commands(cmd) else {
        return CommandClass::Review;
    };
    if segments.iter().all(|words| simple_command_covered(words)) {
        CommandClass::Covered
    } else {
        CommandClass::Review
    }
}

/// The audit text of the controller's files API (`controller/src/files.rs`):
/// `read <path>`, `read <path> (offset N, limit N)`, `write|create <path> (N bytes)`,
/// `write <path> (N bytes, mode M)`, `edit <path>`. Only paths without white space or
/// shell syntax count: the text must not be able to run anything as a command.
fn is_file_api(cmd: &str) -> bool {
    let Some((op, rest)) = cmd.split_once(' ') else {
        return false;
    };
    let (path, suffix) = match rest.split_once(" (") {
        Some((p, s)) => (p, Some(s)),
        None => (rest, None),
    };
    let plain = |b: u8| b.is_ascii_alphanumeric() || b >= 0x80 || b"/._-+,:@%=".contains(&b);
    if !path.starts_with('/') || !path.bytes().all(plain) {
        return false;
    }
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let inner = suffix.and_then(|s| s.strip_suffix(')'));
    match (op, suffix, inner) {
        ("read" | "edit", None, _) => true,
        ("read", Some(_), Some(s)) => s
            .strip_prefix("offset ")
            .and_then(|s| s.split_once(", limit "))
            .is_some_and(|(o, l)| digits(o) && digits(l)),
        ("write" | "create", Some(_), Some(s)) => {
            let (bytes, mode) = match s.split_once(", mode ") {
                Some((b, m)) => (b, Some(m)),
                None => (s, None),
            };
            bytes.strip_suffix(" bytes").is_some_and(digits)
                && mode
                    .is_none_or(|m| !m.is_empty() && m.bytes().all(|b| (b'0'..=b'7').contains(&b)))
        }
        _ => false,
    }
}

/// The audit text of an interactive session (`controller/src/attach.rs`):
/// `attach (interactive shell as <user>)`.
fn is_attach(cmd: &str) -> bool {
    cmd.strip_prefix("attach (interactive shell as ")
        .and_then(|r| r.strip_suffix(')'))
        .is_some_and(|user| {
            !user.is_empty()
                && user
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        })
}

fn is_assignment(w: &str) -> bool {
    w.split_once('=').is_some_and(|(name, _)| {
        let mut b = name.bytes();
        b.next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
            && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
    })
}

/// Drops what runs another command (`sudo -u x`, `env A=1`, `nohup`, `time`, …) and
/// leading assignments; returns the command proper (possibly empty).
fn strip_wrappers(mut words: &[String]) -> &[String] {
    loop {
        while let Some((first, rest)) = words.split_first() {
            if is_assignment(first) || SHELL_KEYWORDS.contains(&first.as_str()) {
                words = rest;
            } else {
                break;
            }
        }
        let Some((first, rest)) = words.split_first() else {
            return words;
        };
        let takes_arg: &[&str] = match first.as_str() {
            "sudo" => &["-u", "-g", "-h", "-p", "-C", "-D", "-r", "-t", "-U", "-T"],
            "env" => &["-u", "-C", "-S"],
            "nice" => &["-n"],
            "nohup" | "time" | "exec" | "stdbuf" => &[],
            "timeout" => &["-s", "-k"],
            _ => return words,
        };
        let mut i = 0;
        while let Some(w) = rest.get(i) {
            if w == "--" {
                i += 1;
                break;
            }
            if !w.starts_with('-') || w == "-" {
                break;
            }
            i += if takes_arg.contains(&w.as_str()) {
                2
            } else {
                1
            };
        }
        let mut after = rest.get(i..).unwrap_or_default();
        if first == "timeout" {
            // The duration.
            after = after.get(1..).unwrap_or_default();
        }
        words = after;
    }
}

fn simple_command_covered(words: &[String]) -> bool {
    let words = strip_wrappers(words);
    let Some((prog, args)) = words.split_first() else {
        return true;
    };
    if SHELL_CLOSERS.contains(&prog.as_str()) && args.is_empty() {
        return true;
    }
    // A loop's header (`for f in a b`); its body is classified on its own.
    if prog == "for" {
        return true;
    }
    if prog.contains('$') {
        return false;
    }
    let name = prog.rsplit('/').next().unwrap_or(prog);
    let has = |flags: &[&str]| args.iter().any(|a| flags.contains(&a.as_str()));
    match name {
        // A local .deb cannot come from the repositories the apt task installs from.
        "dpkg" => !has(&["-i", "--install", "--unpack", "-R", "--recursive"]),
        "apt" | "apt-get" if local_deb(args) => false,
        "find" => !has(&[
            "-exec", "-execdir", "-ok", "-okdir", "-delete", "-fprint", "-fprint0", "-fprintf",
            "-fls",
        ]),
        "hostname" => args.iter().all(|a| {
            matches!(
                a.as_str(),
                "-f" | "-s"
                    | "-d"
                    | "-i"
                    | "-I"
                    | "-A"
                    | "-a"
                    | "--fqdn"
                    | "--short"
                    | "--domain"
                    | "--ip-address"
                    | "--all-ip-addresses"
                    | "--all-fqdns"
            )
        }),
        "date" => args.iter().all(|a| {
            a.starts_with('+')
                || matches!(a.as_str(), "-u" | "--utc" | "-R" | "--rfc-email")
                || a.starts_with("-I")
                || a.starts_with("--iso-8601")
                || a.starts_with("--rfc-3339")
        }),
        "nginx" => {
            !args.is_empty()
                && args
                    .iter()
                    .all(|a| matches!(a.as_str(), "-t" | "-T" | "-q" | "-v" | "-V"))
        }
        "command" => args.first().is_some_and(|a| a == "-v" || a == "-V"),
        "env" | "printenv" => args.iter().all(|a| is_assignment(a) || !a.contains('/')),
        _ => COVERED.contains(&name),
    }
}

fn local_deb(args: &[String]) -> bool {
    args.iter()
        .any(|a| !a.starts_with('-') && (a.contains('/') || a.ends_with(".deb")))
}

/// The review tasks (in the order the commands ran) and the review notes.
pub(super) fn review_tasks(commands: &[CommandEntry]) -> (Vec<TaskSpec>, Vec<String>) {
    let mut sorted: Vec<&CommandEntry> = commands.iter().collect();
    sorted.sort_by_key(|c| c.at);
    let mut tasks = Vec::new();
    let mut notes = Vec::new();
    for c in sorted {
        let class = classify_command(&c.cmd);
        let id =
            c.id.as_deref()
                .map(|i| format!(" ({i})"))
                .unwrap_or_default();
        if class == CommandClass::Interactive {
            notes.push(format!(
                "an interactive session{id} ran in the sandbox ({}): its changes to files are above; \
                 anything else it did (processes started by hand, …) is not reproduced",
                c.cmd
            ));
            continue;
        }
        if class != CommandClass::Review {
            continue;
        }
        let shown = one_line(&c.cmd);
        match c.exit_code {
            Some(0) => {}
            Some(code) => {
                notes.push(format!(
                    "command{id} failed in the sandbox (exit {code}) and is not reproduced; if it changed anything, add a task: {}",
                    truncate_chars(&shown, 200)
                ));
                continue;
            }
            None => {
                notes.push(format!(
                    "command{id} did not finish in the sandbox and is not reproduced; if it changed anything, add a task: {}",
                    truncate_chars(&shown, 200)
                ));
                continue;
            }
        }
        tasks.push(
            TaskSpec::new(
                task_name(&format!(
                    "REVIEW: command run in the sandbox, not expressed declaratively: {}",
                    truncate_chars(&shown, 80)
                )),
                "ansible.builtin.shell",
                json!({ "cmd": literal(c.cmd.as_str()) }),
            )
            .with_option("tags", json!([REVIEW_TAG, "never"])),
        );
        notes.push(format!(
            "command{id} is not expressed declaratively; it is a shell task tagged {REVIEW_TAG} that runs only with --tags {REVIEW_TAG}: {}",
            truncate_chars(&shown, 200)
        ));
    }
    (tasks, notes)
}

/// The command on one line, runs of white space as one space.
fn one_line(cmd: &str) -> String {
    cmd.split_whitespace().collect::<Vec<_>>().join(" ")
}
