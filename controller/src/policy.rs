//! The command and file policy (`[policy]` in the configuration): allow / deny regexes
//! for command lines and path prefixes the files API refuses. Compiled once; checked by
//! the controller before any agent is called.

use fluid_proto::model::check_abs_path;
use regex::Regex;

use crate::config::PolicyConfig;

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

    /// `Err(reason)` when `path` (absolute, normalised) is under a denied prefix.
    pub fn check_path(&self, path: &str) -> Result<(), String> {
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
