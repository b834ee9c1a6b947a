//! The command and file policy (`[policy]` in the configuration): allow / deny regexes
//! for command lines and path prefixes the files API refuses. Compiled once; checked by
//! the controller before any agent is called, on the path as given. A path string says
//! little about the file it reaches (symlinks, `/proc/<pid>/root`, hard links), so the
//! files API checks again inside the guest, on the resolved path and on the file it
//! really opened (`files.rs`, [`Policy::denied_paths`] passed to that script).

use fluid_proto::model::check_abs_path;
use regex::Regex;

use serde::{Deserialize, Serialize};

/// `[policy]`: enforced by the controller before any agent is called; a refusal is a
/// 403 and still leaves an audit row (status `denied`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Regexes; when not empty, a command must match one of them.
    pub command_allow: Vec<String>,
    /// Regexes; a command matching any of them is refused (checked after the allow list).
    pub command_deny: Vec<String>,
    /// Absolute path prefixes the files API refuses (a prefix covers itself and
    /// everything under it, component-wise: `/etc/shadow` does not cover
    /// `/etc/shadow-`). Checked on the path as given and, inside the guest, on the path
    /// it resolves to and on the file opened (symlinks, `/proc/<pid>/root`, hard links).
    /// Defaults: the password hashes and their `-` backups, and the files through which
    /// fluid controls the sandbox's sshd (its trusted user CA, revoked keys, config).
    pub denied_paths: Vec<String>,
}

/// Paths the files API refuses unless the configuration says otherwise.
pub const DEFAULT_DENIED_PATHS: [&str; 7] = [
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/gshadow",
    "/etc/gshadow-",
    "/etc/ssh/fluid_user_ca.pub",
    "/etc/ssh/fluid_revoked_keys",
    "/etc/ssh/sshd_config.d",
];

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            command_allow: Vec::new(),
            command_deny: Vec::new(),
            denied_paths: DEFAULT_DENIED_PATHS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        }
    }
}

/// A compiled [`PolicyConfig`].
#[derive(Debug, Clone)]
pub struct Policy {
    allow: Vec<Regex>,
    deny: Vec<Regex>,
    denied_paths: Vec<String>,
}

impl Policy {
    /// Compiles the configuration; `Err` names the bad regex or path.
    pub fn new(c: &PolicyConfig) -> Result<Self, String> {
        let compile = |what: &str, list: &[String]| {
            list.iter()
                .map(|r| Regex::new(r).map_err(|e| format!("{what}: {r:?}: {e}")))
                .collect::<Result<Vec<_>, _>>()
        };
        let denied_paths = c
            .denied_paths
            .iter()
            .map(|p| check_abs_path("denied_paths", p).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            allow: compile("command_allow", &c.command_allow)?,
            deny: compile("command_deny", &c.command_deny)?,
            denied_paths,
        })
    }

    /// `Err(reason)` when the command may not run.
    pub fn check_command(&self, command: &str) -> Result<(), String> {
        if !self.allow.is_empty() && !self.allow.iter().any(|r| r.is_match(command)) {
            return Err("command matches no pattern of policy.command_allow".into());
        }
        if let Some(r) = self.deny.iter().find(|r| r.is_match(command)) {
            return Err(format!(
                "command matches policy.command_deny pattern {:?}",
                r.as_str()
            ));
        }
        Ok(())
    }

    /// The denied prefixes, as configured (absolute, normalised).
    pub fn denied_paths(&self) -> &[String] {
        &self.denied_paths
    }

    /// `Err(reason)` when `path` (absolute, normalised) is under a denied prefix (a
    /// prefix covers itself and what is below it: `/etc/shadow` covers `/etc/shadow/x`
    /// but not `/etc/shadow-`, which is an entry of its own), or goes through
    /// `/proc/<pid>/{root,cwd,fd,map_files}` or `/dev/fd`, which reach files under other
    /// names (`/proc/1/root/etc/shadow`).
    pub fn check_path(&self, path: &str) -> Result<(), String> {
        if goes_through_proc(path) {
            return Err(format!(
                "{path} goes through /proc/<pid>/root, cwd, fd or map_files, or /dev/fd: \
                 the files API refuses those paths"
            ));
        }
        let hit = self.denied_paths.iter().find(|p| {
            p.as_str() == "/"
                || path == p.as_str()
                || path
                    .strip_prefix(p.as_str())
                    .is_some_and(|rest| rest.starts_with('/'))
        });
        match hit {
            Some(p) => Err(format!("{path} is under policy.denied_paths entry {p}")),
            None => Ok(()),
        }
    }
}

/// Whether `path` has a component sequence `/proc/<x>/{root,cwd,fd,map_files}` (also
/// under `/proc/<x>/task/<y>/`) or starts with `/dev/fd`.
pub fn goes_through_proc(path: &str) -> bool {
    const MAGIC: [&str; 4] = ["root", "cwd", "fd", "map_files"];
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    match parts.as_slice() {
        ["dev", "fd", ..] => true,
        ["proc", _, m, ..] if MAGIC.contains(m) => true,
        ["proc", _, "task", _, m, ..] if MAGIC.contains(m) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_paths_are_checked() {
        let p = Policy::new(&PolicyConfig {
            command_allow: vec![],
            command_deny: vec![r"\bshutdown\b".into()],
            denied_paths: vec!["/etc/shadow".into(), "/secret".into()],
        })
        .expect("valid");
        assert!(p.check_command("echo hi").is_ok());
        assert!(p.check_command("sudo shutdown now").is_err());
        assert!(p.check_path("/etc/shadow").is_err());
        assert!(p.check_path("/secret/x/y").is_err());
        assert!(p.check_path("/etc/shadow-").is_ok());
        assert!(p.check_path("/secrets").is_ok());
        // Paths that reach files under other names.
        for via in [
            "/proc/1/root/etc/shadow",
            "/proc/self/root",
            "/proc/self/cwd/x",
            "/proc/1/fd/3",
            "/proc/1/task/1/root/etc/shadow",
            "/proc/1/map_files/x",
            "/dev/fd/3",
            "/dev/fd",
        ] {
            let e = p.check_path(via).expect_err(via);
            assert!(e.contains("/proc/<pid>/root"), "{e}");
        }
        for fine in [
            "/proc/cpuinfo",
            "/proc/1/status",
            "/proc/1/fdinfo/3",
            "/dev/null",
            "/root/fd",
        ] {
            assert!(p.check_path(fine).is_ok(), "{fine}");
        }
        assert_eq!(p.denied_paths(), ["/etc/shadow", "/secret"]);
        // The defaults cover the shadow files' backups too.
        let d = Policy::new(&PolicyConfig::default()).expect("defaults");
        for path in [
            "/etc/shadow-",
            "/etc/gshadow-",
            "/etc/shadow",
            "/etc/gshadow",
        ] {
            assert_eq!(
                d.check_path(path),
                Err(format!("{path} is under policy.denied_paths entry {path}"))
            );
        }
        assert!(d.check_path("/etc/shadow.d").is_ok());
        let only = Policy::new(&PolicyConfig {
            command_allow: vec!["^ls( |$)".into()],
            ..PolicyConfig::default()
        })
        .expect("valid");
        assert!(only.check_command("ls -l").is_ok());
        assert!(only.check_command("cat /x").is_err());
        assert!(
            Policy::new(&PolicyConfig {
                command_deny: vec!["(".into()],
                ..PolicyConfig::default()
            })
            .is_err()
        );
    }
}
