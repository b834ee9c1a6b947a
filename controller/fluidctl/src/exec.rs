//! `fluidctl run` and `fluidctl commands`: run a command in a sandbox, list what ran.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use fluid_client::client::SseEvent;
use fluid_client::types::{Command, OutputChunk, RunCommandRequest, RunCommandResponse};

use crate::sandboxes::check_id;
use crate::{Ctx, emit, emit_json, encoding, render};

/// The exit status `timeout(1)` uses for a command killed at its deadline.
const EXIT_TIMED_OUT: u8 = 124;

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  fluidctl run SBX-1a2b3c4d -- apt-get install -y nginx
  fluidctl run SBX-1a2b3c4d -e DEBUG=1 -w /srv -- 'make test 2>&1 | tail'

The words after the sandbox id are joined with spaces and run by /bin/sh -c, so quote \
for the remote shell. Use -- when the command starts with an option. Output streams as \
it comes (stdout to stdout, stderr to stderr); fluidctl exits with the command's status, \
124 when it timed out. With --json it waits and prints the command record instead \
(the exit status is still the command's).")]
pub struct RunArgs {
    /// Sandbox id (`SBX-…`).
    pub sandbox: String,
    /// Unix user to run as [default: root].
    #[arg(long, short = 'u', value_name = "USER")]
    pub user: Option<String>,
    /// Absolute working directory [default: the user's home].
    #[arg(long, short = 'w', value_name = "DIR")]
    pub workdir: Option<String>,
    /// Environment variable for the command (repeatable).
    #[arg(long, short = 'e', value_name = "NAME=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Kill the command, with everything it started, after this many seconds (exit status
    /// 124). Default: the controller's `[commands] default_timeout_secs` (600).
    #[arg(long, short = 't', value_name = "SECS", value_parser = clap::value_parser!(u32).range(1..))]
    pub timeout: Option<u32>,
    /// Wait for the command to finish and print its recorded output, instead of streaming.
    #[arg(long)]
    pub no_stream: bool,
    /// The command. Its words are joined with spaces and run by `/bin/sh -c` in the
    /// sandbox, so quote what the remote shell should see: `-- sh -c 'echo $HOME'`.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    pub command: Vec<String>,
}

impl RunArgs {
    pub fn to_request(&self) -> RunCommandRequest {
        RunCommandRequest {
            command: self.command.join(" "),
            user: self.user.clone(),
            timeout_sec: self.timeout,
            env: (!self.env.is_empty())
                .then(|| self.env.iter().cloned().collect::<BTreeMap<_, _>>()),
            workdir: self.workdir.clone(),
            stdin: None,
        }
    }
}

/// `NAME=VALUE`, with the name the API accepts (`[A-Za-z_][A-Za-z0-9_]*`); the value is
/// taken literally and may contain `=`.
pub fn parse_env(s: &str) -> Result<(String, String), String> {
    let Some((name, value)) = s.split_once('=') else {
        return Err(format!("`{s}` is not NAME=VALUE (missing `=`)"));
    };
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(format!(
            "`{name}` is not a valid variable name (letters, digits and _, not starting with a digit)"
        ));
    }
    Ok((name.to_owned(), value.to_owned()))
}

#[derive(Debug, Args)]
pub struct CommandsArgs {
    /// Sandbox id (`SBX-…`).
    pub sandbox: String,
    /// At most this many commands (newest first).
    #[arg(long, short = 'l', value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: Option<u32>,
    /// Skip this many commands.
    #[arg(long, value_name = "N")]
    pub offset: Option<u64>,
}

impl CommandsArgs {
    pub fn query(&self) -> String {
        let mut parts = Vec::new();
        if let Some(l) = self.limit {
            parts.push(format!("limit={l}"));
        }
        if let Some(o) = self.offset {
            parts.push(format!("offset={o}"));
        }
        parts.join("&")
    }
}

fn write_out(to_stderr: bool, bytes: &[u8]) {
    // A closed pipe is not worth failing the command for; the remote one still runs.
    let _ = if to_stderr {
        let mut e = std::io::stderr().lock();
        e.write_all(bytes).and_then(|()| e.flush())
    } else {
        let mut o = std::io::stdout().lock();
        o.write_all(bytes).and_then(|()| o.flush())
    };
}

/// Writes one `stdout` / `stderr` event's bytes where they belong.
fn forward_chunk(ev: &SseEvent, bad: &mut Option<anyhow::Error>) {
    let to_stderr = match ev.event.as_str() {
        "stdout" => false,
        "stderr" => true,
        _ => return,
    };
    let bytes = serde_json::from_value::<OutputChunk>(ev.data.clone())
        .context("the controller sent a malformed output event")
        .and_then(|c| encoding::decode(&c.data, &c.encoding));
    match bytes {
        Ok(b) => write_out(to_stderr, &b),
        Err(e) => {
            bad.get_or_insert(e);
        }
    }
}

/// How `fluidctl run` ends: the command's own exit status, 124 when it was killed at its
/// timeout, 1 when it has none. Also the notes for stderr.
pub fn outcome(c: &Command) -> (ExitCode, Vec<String>) {
    let mut notes = Vec::new();
    if c.truncated {
        notes.push(
            "note: the output was truncated at the controller's limit (the record keeps only the first part)"
                .to_owned(),
        );
    }
    if c.timed_out {
        notes.push(format!("error: {} timed out and was killed", c.id));
        return (ExitCode::from(EXIT_TIMED_OUT), notes);
    }
    match u8::try_from(c.exit_code) {
        Ok(code) => (ExitCode::from(code), notes),
        Err(_) => {
            let why = c
                .error
                .as_deref()
                .filter(|e| !e.is_empty())
                .map_or_else(String::new, |e| format!(": {}", render::one_line(e)));
            let status = if c.status.is_empty() {
                "ended"
            } else {
                &c.status
            };
            notes.push(format!(
                "error: {} {status} without an exit status{why}",
                c.id
            ));
            (ExitCode::FAILURE, notes)
        }
    }
}

pub async fn run(ctx: &Ctx, args: RunArgs) -> anyhow::Result<ExitCode> {
    let id = check_id(&args.sandbox)?;
    let req = args.to_request();
    let cmd = if args.no_stream || ctx.json {
        let RunCommandResponse { command } = ctx
            .client
            .run_command(id, &req)
            .await
            .with_context(|| format!("cannot run the command in {id}"))?;
        if ctx.json {
            emit_json(&RunCommandResponse {
                command: command.clone(),
            })?;
        } else {
            write_out(false, command.stdout.as_bytes());
            write_out(true, command.stderr.as_bytes());
        }
        command
    } else {
        let mut bad = None;
        let resp = ctx
            .client
            .run_command_streaming(id, &req, |ev| forward_chunk(ev, &mut bad))
            .await
            .with_context(|| format!("cannot run the command in {id}"))?;
        if let Some(e) = bad {
            eprintln!("warning: some output could not be shown: {e:#}");
        }
        resp.command
    };
    let (code, notes) = outcome(&cmd);
    for n in notes {
        eprintln!("{n}");
    }
    Ok(code)
}

pub async fn commands(ctx: &Ctx, args: CommandsArgs) -> anyhow::Result<()> {
    let id = check_id(&args.sandbox)?;
    let resp = ctx.client.list_commands(id, &args.query()).await?;
    if ctx.json {
        return emit_json(&resp);
    }
    emit(&render::commands_table(&resp.commands, chrono::Utc::now()));
    if let Some(footer) = render::commands_footer(resp.commands.len(), resp.total) {
        emit(&footer);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cli, Command as Cmd};
    use clap::Parser;

    fn try_parse(args: &[&str]) -> Result<Cli, clap::Error> {
        let mut full = vec!["fluidctl"];
        full.extend_from_slice(args);
        Cli::try_parse_from(full)
    }

    fn run_args(args: &[&str]) -> RunArgs {
        match try_parse(args) {
            Ok(Cli {
                command: Cmd::Run(a),
                ..
            }) => a,
            Ok(other) => panic!("{args:?} parsed as {other:?}"),
            Err(e) => panic!("{args:?} should parse: {e}"),
        }
    }

    #[test]
    fn run_keeps_the_words_after_double_dash() {
        let a = run_args(&["run", "SBX-1", "--", "sh", "-c", "echo $HOME; ls -l"]);
        assert_eq!(a.sandbox, "SBX-1");
        assert_eq!(a.command, ["sh", "-c", "echo $HOME; ls -l"]);
        let req = a.to_request();
        assert_eq!(req.command, "sh -c echo $HOME; ls -l");
        assert_eq!(req.user, None);
        assert_eq!(req.env, None);
        assert!(!a.no_stream);
    }

    #[test]
    fn run_flags_before_the_command_are_ours() {
        let a = run_args(&[
            "run",
            "SBX-1",
            "--user",
            "bob",
            "-w",
            "/srv",
            "--env",
            "A=1",
            "-e",
            "B=x=y",
            "--timeout",
            "30",
            "--no-stream",
            "--",
            "ls",
            "--json",
            "-la",
        ]);
        assert!(a.no_stream);
        assert_eq!(a.command, ["ls", "--json", "-la"]);
        let req = a.to_request();
        assert_eq!(req.user.as_deref(), Some("bob"));
        assert_eq!(req.workdir.as_deref(), Some("/srv"));
        assert_eq!(req.timeout_sec, Some(30));
        let env = req.env.expect("env");
        assert_eq!(env.get("A").map(String::as_str), Some("1"));
        assert_eq!(env.get("B").map(String::as_str), Some("x=y"));
        // Without `--`, everything from the first command word on is the command.
        let a = run_args(&["run", "SBX-1", "uname", "-a", "--user", "x"]);
        assert_eq!(a.command, ["uname", "-a", "--user", "x"]);
        assert_eq!(a.user, None);
        // Global flags still work before the command.
        let cli = try_parse(&["run", "--json", "SBX-1", "--", "true"]).expect("parses");
        assert!(cli.json);
    }

    #[test]
    fn run_rejects_bad_input() {
        use clap::error::ErrorKind;
        let kind = |args: &[&str]| try_parse(args).map(|_| ()).expect_err("rejected").kind();
        assert_eq!(kind(&["run", "SBX-1"]), ErrorKind::MissingRequiredArgument);
        assert_eq!(
            kind(&["run", "SBX-1", "--"]),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            kind(&["run", "SBX-1", "--timeout", "0", "--", "x"]),
            ErrorKind::ValueValidation
        );
        let e = try_parse(&["run", "SBX-1", "--env", "A;B=1", "--", "x"]).expect_err("bad name");
        assert_eq!(e.kind(), ErrorKind::ValueValidation);
        assert!(
            e.to_string().contains("`A;B` is not a valid variable name"),
            "{e}"
        );
        let e = try_parse(&["run", "SBX-1", "-e", "PATH", "--", "x"]).expect_err("no =");
        assert!(e.to_string().contains("missing `=`"), "{e}");
    }

    #[test]
    fn env_parsing() {
        assert_eq!(parse_env("A=1"), Ok(("A".to_owned(), "1".to_owned())));
        assert_eq!(parse_env("_x9="), Ok(("_x9".to_owned(), String::new())));
        assert_eq!(
            parse_env("URL=http://a?b=c"),
            Ok(("URL".to_owned(), "http://a?b=c".to_owned()))
        );
        for bad in ["A;B=1", "=1", "9A=1", "A B=1", "É=1", "NOEQUALS"] {
            assert!(parse_env(bad).is_err(), "{bad}");
        }
        assert!(
            parse_env("NOEQUALS")
                .expect_err("missing =")
                .contains("NAME=VALUE")
        );
    }

    #[test]
    fn commands_parse_and_query() {
        let cli =
            try_parse(&["commands", "SBX-1", "--limit", "5", "--offset", "10"]).expect("parses");
        let Cmd::Commands(a) = cli.command else {
            panic!("commands")
        };
        assert_eq!(a.sandbox, "SBX-1");
        assert_eq!(a.query(), "limit=5&offset=10");
        let cli = try_parse(&["commands", "SBX-1"]).expect("parses");
        let Cmd::Commands(a) = cli.command else {
            panic!("commands")
        };
        assert_eq!(a.query(), "");
        assert!(try_parse(&["commands"]).is_err());
        assert!(try_parse(&["commands", "SBX-1", "--limit", "0"]).is_err());
    }

    fn record(exit_code: i32) -> Command {
        Command {
            id: "CMD-aaaaaaaaaa".to_owned(),
            sandbox_id: "SBX-1".to_owned(),
            command: "x".to_owned(),
            env_json: "{}".to_owned(),
            stdout: String::new(),
            stderr: String::new(),
            exit_code,
            started_at: chrono::DateTime::UNIX_EPOCH,
            ended_at: None,
            truncated: false,
            timed_out: false,
            user: "root".to_owned(),
            workdir: None,
            duration_ms: None,
            status: "completed".to_owned(),
            kind: "command".to_owned(),
            agent_id: "a".to_owned(),
            error: None,
            output_expired: false,
        }
    }

    #[test]
    fn exit_codes() {
        let (code, notes) = outcome(&record(0));
        assert_eq!(code, ExitCode::SUCCESS);
        assert!(notes.is_empty());
        assert_eq!(outcome(&record(3)).0, ExitCode::from(3));
        let mut c = record(-1);
        c.timed_out = true;
        c.truncated = true;
        let (code, notes) = outcome(&c);
        assert_eq!(code, ExitCode::from(124));
        assert_eq!(notes.len(), 2);
        assert!(notes[0].contains("truncated") && notes[1].contains("timed out"));
        let mut c = record(-1);
        c.status = "lost".to_owned();
        c.error = Some("host went away".to_owned());
        let (code, notes) = outcome(&c);
        assert_eq!(code, ExitCode::FAILURE);
        assert_eq!(
            notes,
            ["error: CMD-aaaaaaaaaa lost without an exit status: host went away"]
        );
    }

    #[test]
    fn output_chunks_are_decoded() {
        let ev = SseEvent {
            event: "stdout".to_owned(),
            data: serde_json::json!({"command_id": "CMD-1", "data": "////", "encoding": "base64"}),
        };
        let chunk: OutputChunk = serde_json::from_value(ev.data.clone()).expect("chunk");
        assert_eq!(
            encoding::decode(&chunk.data, &chunk.encoding).expect("decode"),
            [0xff; 3]
        );
        let mut bad = None;
        forward_chunk(
            &SseEvent {
                event: "stderr".to_owned(),
                data: serde_json::json!({"command_id": "CMD-1", "data": "!!", "encoding": "base64"}),
            },
            &mut bad,
        );
        assert!(bad.is_some());
        let mut bad = None;
        forward_chunk(
            &SseEvent {
                event: "started".to_owned(),
                data: serde_json::json!({}),
            },
            &mut bad,
        );
        assert!(bad.is_none(), "non-output events are ignored");
    }
}
