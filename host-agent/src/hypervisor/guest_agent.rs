//! Running a program in a guest through its QEMU guest agent (`guest-exec`, then
//! `guest-exec-status` until it exits), over whatever sends the agent one JSON command
//! (libvirt's `virDomainQemuAgentCommand`). Pure: the transport is a closure, so the
//! protocol is tested without a guest.
//!
//! The guest agent answers for a guest that is the tenant's once it is handed over, so
//! its replies are parsed as untrusted: a malformed one is an error, never a panic.

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde_json::json;

use super::{GuestOutput, HypervisorError, Result};

/// How long one guest agent command may take (seconds, libvirt's timeout).
const COMMAND_TIMEOUT_S: i32 = 10;
/// Between two status polls.
const POLL: Duration = Duration::from_millis(20);
/// The most output kept per stream.
const MAX_OUTPUT: usize = 64 << 10;

#[derive(Deserialize)]
struct Reply<T> {
    #[serde(rename = "return")]
    ret: T,
}

#[derive(Deserialize)]
struct Started {
    pid: i64,
}

#[derive(Deserialize)]
struct Status {
    exited: bool,
    #[serde(default)]
    exitcode: Option<i32>,
    #[serde(default)]
    signal: Option<i32>,
    #[serde(default, rename = "out-data")]
    out: Option<String>,
    #[serde(default, rename = "err-data")]
    err: Option<String>,
}

fn parse<T: for<'de> Deserialize<'de>>(what: &str, reply: &str) -> Result<T> {
    serde_json::from_str::<Reply<T>>(reply)
        .map(|r| r.ret)
        .map_err(|e| HypervisorError::Failed(format!("guest agent {what}: unreadable reply: {e}")))
}

fn decode(what: &str, data: Option<String>) -> Result<String> {
    let Some(data) = data else {
        return Ok(String::new());
    };
    let mut bytes = STANDARD
        .decode(data.as_bytes())
        .map_err(|e| HypervisorError::Failed(format!("guest agent {what}: {e}")))?;
    bytes.truncate(MAX_OUTPUT);
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Runs `argv` (program, then arguments) and waits for it, at most `timeout`.
pub fn exec(
    mut call: impl FnMut(&str, i32) -> Result<String>,
    argv: &[String],
    timeout: Duration,
) -> Result<GuestOutput> {
    let (path, args) = argv
        .split_first()
        .ok_or_else(|| HypervisorError::Failed("guest-exec: no program".into()))?;
    let cmd = json!({
        "execute": "guest-exec",
        "arguments": {"path": path, "arg": args, "capture-output": true},
    });
    let started: Started = parse("guest-exec", &call(&cmd.to_string(), COMMAND_TIMEOUT_S)?)?;
    let status_cmd =
        json!({"execute": "guest-exec-status", "arguments": {"pid": started.pid}}).to_string();
    let deadline = Instant::now() + timeout;
    loop {
        let status: Status = parse("guest-exec-status", &call(&status_cmd, COMMAND_TIMEOUT_S)?)?;
        if status.exited {
            return Ok(GuestOutput {
                exit_code: status
                    .exitcode
                    .unwrap_or_else(|| 128 + status.signal.unwrap_or(0)),
                stdout: decode("stdout", status.out)?,
                stderr: decode("stderr", status.err)?,
            });
        }
        if Instant::now() >= deadline {
            return Err(HypervisorError::Failed(format!(
                "guest-exec {path}: still running after {} s",
                timeout.as_secs()
            )));
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv() -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), "echo hi".into()]
    }

    #[test]
    fn runs_then_polls_until_the_program_exits() {
        let mut sent = Vec::new();
        let mut polls = 0;
        let out = exec(
            |cmd, _| {
                sent.push(cmd.to_owned());
                if cmd.contains("\"guest-exec\"") {
                    return Ok(r#"{"return":{"pid":42}}"#.into());
                }
                polls += 1;
                Ok(if polls < 3 {
                    r#"{"return":{"exited":false}}"#.into()
                } else {
                    r#"{"return":{"exited":true,"exitcode":3,"out-data":"aGkK","err-data":"b29wcw=="}}"#.into()
                })
            },
            &argv(),
            Duration::from_secs(5),
        )
        .expect("exec");
        assert_eq!(
            out,
            GuestOutput {
                exit_code: 3,
                stdout: "hi\n".into(),
                stderr: "oops".into()
            }
        );
        let first: serde_json::Value = serde_json::from_str(&sent[0]).expect("json");
        assert_eq!(first["arguments"]["path"], "/bin/sh");
        assert_eq!(first["arguments"]["arg"], json!(["-c", "echo hi"]));
        assert!(sent[1].contains("\"pid\":42"));
        assert_eq!(sent.len(), 4);
    }

    #[test]
    fn a_hostile_or_broken_reply_is_an_error_not_a_panic() {
        for reply in [
            "not json",
            r#"{"return":{}}"#,
            r#"{"return":{"pid":"x"}}"#,
            r#"{"error":{"desc":"no"}}"#,
        ] {
            let r = exec(|_, _| Ok(reply.into()), &argv(), Duration::from_secs(1));
            assert!(r.is_err(), "{reply}");
        }
        let bad_b64 = exec(
            |cmd, _| {
                Ok(if cmd.contains("\"guest-exec\"") {
                    r#"{"return":{"pid":1}}"#.into()
                } else {
                    r#"{"return":{"exited":true,"exitcode":0,"out-data":"%%%"}}"#.into()
                })
            },
            &argv(),
            Duration::from_secs(1),
        );
        assert!(bad_b64.is_err());
    }

    #[test]
    fn a_program_still_running_at_the_deadline_is_an_error() {
        let r = exec(
            |cmd, _| {
                Ok(if cmd.contains("\"guest-exec\"") {
                    r#"{"return":{"pid":1}}"#.into()
                } else {
                    r#"{"return":{"exited":false}}"#.into()
                })
            },
            &argv(),
            Duration::ZERO,
        );
        assert!(
            r.expect_err("deadline")
                .to_string()
                .contains("still running")
        );
    }
}
