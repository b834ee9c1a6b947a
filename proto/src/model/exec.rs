//! Commands and interactive sessions: what the controller asks an agent to run in a
//! guest ([`Exec`], [`AttachOpen`]) and what an Exec answers ([`ExecEvent`],
//! [`ExecExit`]), with their one set of conversions to and from the wire.

use super::{
    SandboxId, ValidationError, check_abs_path, check_env_name, check_prefixed_id, check_user,
};
use crate::pb;

/// Longest command line accepted.
pub const COMMAND_MAX_BYTES: usize = 64 * 1024;
/// Largest standard input an Exec may carry.
pub const STDIN_MAX_BYTES: usize = 16 * 1024 * 1024;
/// Largest per-stream output cap.
pub const OUTPUT_CAP_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Longest command timeout (one day).
pub const EXEC_TIMEOUT_MAX_SECONDS: u32 = 24 * 3600;

/// `value` as its receiver would take it: into its wire message `W` and back, through
/// the one validation there is.
fn through_the_wire<T, W>(value: T) -> Result<T, ValidationError>
where
    W: From<T>,
    T: TryFrom<W, Error = ValidationError>,
{
    T::try_from(W::from(value))
}

/// The `user` of a request: empty is `root`.
fn user_or_root(user: &str) -> Result<String, ValidationError> {
    if user.is_empty() {
        Ok("root".to_owned())
    } else {
        check_user("user", user)
    }
}

/// One command to run in a sandbox (validated `ExecRequest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exec {
    pub sandbox_id: SandboxId,
    pub command_id: String,
    pub command: String,
    pub user: String,
    pub workdir: Option<String>,
    /// Sorted by name.
    pub env: Vec<(String, String)>,
    /// `None`: no limit.
    pub timeout_seconds: Option<u32>,
    pub output_cap_bytes: u64,
    pub stdin: Vec<u8>,
    pub ssh_certificate: String,
}

impl Exec {
    /// An Exec put together by its sender (the controller, from a REST request), checked
    /// and completed by the rules the agent applies to one from the wire (an empty user
    /// is `root`, env sorted by name, …).
    pub fn checked(self) -> Result<Self, ValidationError> {
        through_the_wire::<_, pb::ExecRequest>(self)
    }
}

impl TryFrom<pb::ExecRequest> for Exec {
    type Error = ValidationError;
    fn try_from(r: pb::ExecRequest) -> Result<Self, Self::Error> {
        let command_id = r.command_id;
        check_prefixed_id("command_id", &command_id, "CMD-", "command")?;
        if r.command.trim().is_empty() {
            return Err(ValidationError::new("command", "must not be empty"));
        }
        if r.command.len() > COMMAND_MAX_BYTES {
            return Err(ValidationError::new(
                "command",
                format!("longer than {COMMAND_MAX_BYTES} bytes"),
            ));
        }
        if r.command.contains('\0') {
            return Err(ValidationError::new("command", "contains NUL"));
        }
        let user = user_or_root(&r.user)?;
        let workdir = if r.workdir.is_empty() {
            None
        } else {
            Some(check_abs_path("workdir", &r.workdir)?)
        };
        let mut env = Vec::with_capacity(r.env.len());
        for (k, v) in r.env {
            check_env_name("env", &k)?;
            if v.contains('\0') {
                return Err(ValidationError::new(
                    "env",
                    format!("value of {k} contains NUL"),
                ));
            }
            env.push((k, v));
        }
        env.sort();
        if r.timeout_seconds > EXEC_TIMEOUT_MAX_SECONDS {
            return Err(ValidationError::new(
                "timeout_seconds",
                format!("at most {EXEC_TIMEOUT_MAX_SECONDS}"),
            ));
        }
        if r.output_cap_bytes == 0 || r.output_cap_bytes > OUTPUT_CAP_MAX_BYTES {
            return Err(ValidationError::new(
                "output_cap_bytes",
                format!("must be 1-{OUTPUT_CAP_MAX_BYTES}"),
            ));
        }
        if r.stdin.len() > STDIN_MAX_BYTES {
            return Err(ValidationError::new(
                "stdin",
                format!("larger than {STDIN_MAX_BYTES} bytes"),
            ));
        }
        if r.ssh_certificate.trim().is_empty() {
            return Err(ValidationError::new("ssh_certificate", "must not be empty"));
        }
        Ok(Self {
            sandbox_id: SandboxId::parse("sandbox_id", &r.sandbox_id)?,
            command_id,
            command: r.command,
            user,
            workdir,
            env,
            timeout_seconds: (r.timeout_seconds > 0).then_some(r.timeout_seconds),
            output_cap_bytes: r.output_cap_bytes,
            stdin: r.stdin,
            ssh_certificate: r.ssh_certificate,
        })
    }
}

impl From<Exec> for pb::ExecRequest {
    fn from(e: Exec) -> Self {
        Self {
            sandbox_id: e.sandbox_id.into(),
            command_id: e.command_id,
            command: e.command,
            user: e.user,
            workdir: e.workdir.unwrap_or_default(),
            env: e.env.into_iter().collect(),
            timeout_seconds: e.timeout_seconds.unwrap_or(0),
            output_cap_bytes: e.output_cap_bytes,
            stdin: e.stdin,
            ssh_certificate: e.ssh_certificate,
        }
    }
}

/// A terminal size: 1-1000 columns and rows.
pub fn check_terminal_size(
    field: &'static str,
    size: Option<&pb::TerminalSize>,
) -> Result<(u32, u32), ValidationError> {
    let Some(size) = size else {
        return Ok((80, 24));
    };
    if !(1..=1000).contains(&size.cols) || !(1..=1000).contains(&size.rows) {
        return Err(ValidationError::new(
            field,
            format!("{}x{} is out of range (1-1000 each)", size.cols, size.rows),
        ));
    }
    Ok((size.cols, size.rows))
}

/// The opening of an interactive session (validated `AttachOpen`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachOpen {
    pub sandbox_id: SandboxId,
    pub session_id: String,
    pub user: String,
    pub cols: u32,
    pub rows: u32,
    pub term: String,
    pub ssh_certificate: String,
}

impl AttachOpen {
    /// An opening put together by its sender, checked and completed by the rules the
    /// agent applies to one from the wire (an empty user is `root`, an empty term
    /// `xterm-256color`).
    pub fn checked(self) -> Result<Self, ValidationError> {
        through_the_wire::<_, pb::AttachOpen>(self)
    }
}

impl TryFrom<pb::AttachOpen> for AttachOpen {
    type Error = ValidationError;
    fn try_from(r: pb::AttachOpen) -> Result<Self, Self::Error> {
        check_prefixed_id("session_id", &r.session_id, "SES-", "session")?;
        let user = user_or_root(&r.user)?;
        let term = if r.term.is_empty() {
            "xterm-256color".to_owned()
        } else {
            r.term
        };
        if term.len() > 64
            || !term
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(ValidationError::new(
                "term",
                format!("{term:?} is not a terminal type"),
            ));
        }
        let (cols, rows) = check_terminal_size("size", r.size.as_ref())?;
        if r.ssh_certificate.trim().is_empty() {
            return Err(ValidationError::new("ssh_certificate", "must not be empty"));
        }
        Ok(Self {
            sandbox_id: SandboxId::parse("sandbox_id", &r.sandbox_id)?,
            session_id: r.session_id,
            user,
            cols,
            rows,
            term,
            ssh_certificate: r.ssh_certificate,
        })
    }
}

impl From<AttachOpen> for pb::AttachOpen {
    fn from(o: AttachOpen) -> Self {
        Self {
            sandbox_id: o.sandbox_id.into(),
            session_id: o.session_id,
            user: o.user,
            size: Some(pb::TerminalSize {
                cols: o.cols,
                rows: o.rows,
            }),
            term: o.term,
            ssh_certificate: o.ssh_certificate,
        }
    }
}

/// One event of an Exec stream: `Started`, output chunks, then exactly one `Exit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    Started { at_unix_ms: i64 },
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exit(ExecExit),
}

/// How one command ended: the last event of an Exec stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecExit {
    /// -1 when the command had no exit status (killed, connection lost).
    pub exit_code: i32,
    pub timed_out: bool,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub duration_ms: u64,
    /// Set when the command could not be run or its end is unknown.
    pub error: Option<String>,
}

impl From<pb::exec_event::Event> for ExecEvent {
    fn from(e: pb::exec_event::Event) -> Self {
        use pb::exec_event::Event;
        match e {
            Event::Started(s) => Self::Started {
                at_unix_ms: s.started_at_unix_ms,
            },
            Event::Stdout(b) => Self::Stdout(b),
            Event::Stderr(b) => Self::Stderr(b),
            Event::Exit(x) => Self::Exit(ExecExit::from(x)),
        }
    }
}

impl From<ExecEvent> for pb::ExecEvent {
    fn from(e: ExecEvent) -> Self {
        use pb::exec_event::Event;
        let event = match e {
            ExecEvent::Started { at_unix_ms } => Event::Started(pb::ExecStarted {
                started_at_unix_ms: at_unix_ms,
            }),
            ExecEvent::Stdout(b) => Event::Stdout(b),
            ExecEvent::Stderr(b) => Event::Stderr(b),
            ExecEvent::Exit(x) => Event::Exit(pb::ExecExit::from(x)),
        };
        Self { event: Some(event) }
    }
}

impl From<pb::ExecExit> for ExecExit {
    fn from(x: pb::ExecExit) -> Self {
        Self {
            exit_code: x.exit_code,
            timed_out: x.timed_out,
            stdout_truncated: x.stdout_truncated,
            stderr_truncated: x.stderr_truncated,
            duration_ms: x.duration_ms,
            error: (!x.error.is_empty()).then_some(x.error),
        }
    }
}

impl From<ExecExit> for pb::ExecExit {
    fn from(x: ExecExit) -> Self {
        Self {
            exit_code: x.exit_code,
            timed_out: x.timed_out,
            stdout_truncated: x.stdout_truncated,
            stderr_truncated: x.stderr_truncated,
            duration_ms: x.duration_ms,
            error: x.error.unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_events_map_to_the_wire_and_back() {
        use pb::exec_event::Event;
        let ev = |e: ExecEvent| pb::ExecEvent::from(e).event.expect("event");
        assert_eq!(
            ev(ExecEvent::Started { at_unix_ms: 5 }),
            Event::Started(pb::ExecStarted {
                started_at_unix_ms: 5
            })
        );
        assert_eq!(
            ev(ExecEvent::Stdout(b"o".to_vec())),
            Event::Stdout(b"o".to_vec())
        );
        assert_eq!(
            ev(ExecEvent::Stderr(b"e".to_vec())),
            Event::Stderr(b"e".to_vec())
        );
        let exit = ExecExit {
            exit_code: -1,
            timed_out: true,
            stdout_truncated: true,
            stderr_truncated: false,
            duration_ms: 7,
            error: Some("lost".into()),
        };
        assert_eq!(
            ev(ExecEvent::Exit(exit.clone())),
            Event::Exit(pb::ExecExit {
                exit_code: -1,
                timed_out: true,
                stdout_truncated: true,
                stderr_truncated: false,
                duration_ms: 7,
                error: "lost".into(),
            })
        );
        for e in [
            ExecEvent::Started { at_unix_ms: 5 },
            ExecEvent::Stdout(b"o".to_vec()),
            ExecEvent::Exit(exit),
            ExecEvent::Exit(ExecExit::default()),
        ] {
            assert_eq!(ExecEvent::from(ev(e.clone())), e);
        }
    }

    fn exec() -> Exec {
        Exec {
            sandbox_id: SandboxId::parse("id", "SBX-0123abcd").expect("id"),
            command_id: "CMD-0123abcd".into(),
            command: "id".into(),
            user: String::new(),
            workdir: Some(String::new()),
            env: vec![("B".into(), "2".into()), ("A".into(), "1".into())],
            timeout_seconds: Some(0),
            output_cap_bytes: 1024,
            stdin: b"in".to_vec(),
            ssh_certificate: "cert".into(),
        }
    }

    #[test]
    fn a_senders_exec_is_checked_and_completed_as_the_agent_would() {
        let e = exec().checked().expect("valid");
        assert_eq!(e.user, "root");
        assert_eq!(e.workdir, None);
        assert_eq!(e.timeout_seconds, None);
        assert_eq!(
            e.env,
            [
                ("A".to_owned(), "1".to_owned()),
                ("B".to_owned(), "2".to_owned())
            ]
        );
        // Checked once, it crosses the wire and back unchanged.
        assert_eq!(Exec::try_from(pb::ExecRequest::from(e.clone())), Ok(e));
        let bad = Exec {
            command_id: "nope".into(),
            ..exec()
        };
        assert_eq!(bad.checked().expect_err("bad id").field, "command_id");
    }

    #[test]
    fn a_senders_attach_open_is_checked_and_completed_as_the_agent_would() {
        let open = AttachOpen {
            sandbox_id: SandboxId::parse("id", "SBX-0123abcd").expect("id"),
            session_id: "SES-0123abcd".into(),
            user: String::new(),
            cols: 100,
            rows: 30,
            term: String::new(),
            ssh_certificate: "cert".into(),
        };
        let o = open.clone().checked().expect("valid");
        assert_eq!(
            (o.user.as_str(), o.term.as_str()),
            ("root", "xterm-256color")
        );
        assert_eq!((o.cols, o.rows), (100, 30));
        assert_eq!(AttachOpen::try_from(pb::AttachOpen::from(o.clone())), Ok(o));
        let wide = AttachOpen { cols: 1001, ..open };
        assert_eq!(wide.checked().expect_err("too wide").field, "size");
    }
}
