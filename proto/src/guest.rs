//! What fluid runs inside a guest: every script and command line that reaches a
//! sandbox's shell, whichever side composes it, is written here once.
//!
//! The controller composes commands and the agent runs them over SSH, so both use this
//! module: the controller sends the [`files`] and [`access`] scripts as an Exec's
//! command; the agent runs every Exec's command inside the [`wrapper`] (its own
//! systemd scope and process group, literal environment, user, working directory,
//! timeout kill), logs in as [`LOGIN_USER`], starts interactive sessions with
//! [`login_command`], and asks a running guest for [`SYNC_COMMAND`] and
//! [`SERVICES_COMMAND`] before a live snapshot. Everything runs under the guest's
//! `sh -c`, so it is plain POSIX sh; values from requests travel as environment
//! variables, on standard input or single-quoted ([`wrapper::quote`]), never spliced
//! into a line.

pub mod access;
pub mod files;
pub mod identity;
pub mod wrapper;

use wrapper::quote;

/// The user the agent's SSH connections log in as (commands for other users go through
/// `runuser`; the certificates the controller signs for the agent name
/// `sbx:<sandbox id>:root`).
pub const LOGIN_USER: &str = "root";

/// Flushes the guest's file systems before a live snapshot.
pub const SYNC_COMMAND: &str = "sync";

/// What the guest is asked for its active services (first column: unit names).
pub const SERVICES_COMMAND: &str =
    "systemctl list-units --type=service --state=active --no-legend --plain";

/// The command that starts an interactive session for `user`: `None` for
/// [`LOGIN_USER`] (the `shell` request starts root's login shell), else
/// `runuser -l USER` (a login shell of that user, with its environment and home),
/// exec'd so the PTY's session leader is `runuser` itself and the hang-up reaches the
/// user's shell.
pub fn login_command(user: &str) -> Option<String> {
    (user != LOGIN_USER).then(|| format!("exec runuser -l {}", quote(user)))
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    #[test]
    fn root_gets_the_shell_request_others_runuser_login() {
        assert_eq!(login_command("root"), None);
        assert_eq!(
            login_command("app").as_deref(),
            Some("exec runuser -l 'app'")
        );
    }

    /// The command as sshd runs it (`sh -c`), with a fake `runuser` that prints its
    /// argv: exactly `-l USER`, nothing else.
    #[test]
    fn the_runuser_argv_is_login_and_the_user() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().expect("tmp");
        let fake = tmp.path().join("runuser");
        std::fs::write(&fake, "#!/bin/sh\nprintf '<%s>' \"$0\" \"$@\"\n").expect("write");
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let path = format!(
            "{}:{}",
            tmp.path().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let cmd = login_command("app_user-1").expect("a command");
        let out = Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .env("PATH", path)
            .output()
            .expect("sh");
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("<{}><-l><app_user-1>", fake.display())
        );
    }
}
