//! The `[exec]` table of the agent's configuration: how many commands a sandbox may run
//! at once, how they share SSH connections, and the longest a command may run.

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

/// Default of `max_concurrent_per_sandbox`.
pub const DEFAULT_MAX_CONCURRENT: u32 = 64;
/// Default of `channels_per_connection` (the golden image's sshd allows 64 sessions per
/// connection; half of that leaves room for the kills of timed-out commands).
pub const DEFAULT_CHANNELS_PER_CONNECTION: u32 = 32;
/// Default of `max_timeout_secs`: one day, the longest timeout a request may ask for.
pub const DEFAULT_MAX_TIMEOUT_SECS: u32 = fluid_proto::model::EXEC_TIMEOUT_MAX_SECONDS;

/// `[exec]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecConfig {
    /// Commands running at once in one sandbox; one more is refused with
    /// RESOURCE_EXHAUSTED (the controller answers 429 with Retry-After). Default 64.
    pub max_concurrent_per_sandbox: u32,
    /// Channels the agent puts on one SSH connection before it opens another one (it
    /// also opens another one when sshd refuses a channel: its `MaxSessions`). Default 32.
    pub channels_per_connection: u32,
    /// Hard ceiling of a command's run time: a command without a timeout, or with a
    /// longer one, is killed after this long. Default 86400.
    pub max_timeout_secs: u32,
}

impl Default for ExecConfig {
    fn default() -> Self {
        Self {
            max_concurrent_per_sandbox: DEFAULT_MAX_CONCURRENT,
            channels_per_connection: DEFAULT_CHANNELS_PER_CONNECTION,
            max_timeout_secs: DEFAULT_MAX_TIMEOUT_SECS,
        }
    }
}

/// Absent keys stay absent when serialised, so figment merges key by key.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawExec {
    #[serde(skip_serializing_if = "Option::is_none")]
    max_concurrent_per_sandbox: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    channels_per_connection: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_timeout_secs: Option<u32>,
}

impl RawExec {
    pub(super) fn validate(self) -> Result<ExecConfig, ConfigError> {
        let d = ExecConfig::default();
        let max_concurrent_per_sandbox = self
            .max_concurrent_per_sandbox
            .unwrap_or(d.max_concurrent_per_sandbox);
        if !(1..=4096).contains(&max_concurrent_per_sandbox) {
            return Err(invalid("exec.max_concurrent_per_sandbox", "must be 1-4096"));
        }
        let channels_per_connection = self
            .channels_per_connection
            .unwrap_or(d.channels_per_connection);
        if !(1..=1024).contains(&channels_per_connection) {
            return Err(invalid("exec.channels_per_connection", "must be 1-1024"));
        }
        let max_timeout_secs = self.max_timeout_secs.unwrap_or(d.max_timeout_secs);
        if !(1..=DEFAULT_MAX_TIMEOUT_SECS).contains(&max_timeout_secs) {
            return Err(invalid(
                "exec.max_timeout_secs",
                format!("must be 1-{DEFAULT_MAX_TIMEOUT_SECS}"),
            ));
        }
        Ok(ExecConfig {
            max_concurrent_per_sandbox,
            channels_per_connection,
            max_timeout_secs,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::AgentConfig;

    const MINIMAL: &str = r#"
host_name = "kvm-1"
[tls]
ca_cert = "/etc/fluid/ca.pem"
cert = "/etc/fluid/agent.pem"
key = "/etc/fluid/agent.key"
"#;

    #[test]
    fn defaults_and_overrides() {
        let c = AgentConfig::from_toml(MINIMAL).expect("valid");
        assert_eq!(c.exec, super::ExecConfig::default());
        assert_eq!(c.exec.max_timeout_secs, 86400);
        let c = AgentConfig::from_toml(&format!(
            "{MINIMAL}[exec]\nmax_concurrent_per_sandbox = 3\nchannels_per_connection = 2\nmax_timeout_secs = 60\n"
        ))
        .expect("valid");
        assert_eq!(c.exec.max_concurrent_per_sandbox, 3);
        assert_eq!(c.exec.channels_per_connection, 2);
        assert_eq!(c.exec.max_timeout_secs, 60);
        // The inline form (one line, before any table) works too.
        let c = AgentConfig::from_toml(&format!(
            "exec = {{ channels_per_connection = 5 }}\n{MINIMAL}"
        ))
        .expect("valid");
        assert_eq!(c.exec.channels_per_connection, 5);
    }

    #[test]
    fn bad_values_name_the_key() {
        for (line, key) in [
            (
                "max_concurrent_per_sandbox = 0",
                "exec.max_concurrent_per_sandbox",
            ),
            (
                "channels_per_connection = 0",
                "exec.channels_per_connection",
            ),
            ("max_timeout_secs = 0", "exec.max_timeout_secs"),
            ("max_timeout_secs = 86401", "exec.max_timeout_secs"),
        ] {
            let e = AgentConfig::from_toml(&format!("{MINIMAL}[exec]\n{line}\n"))
                .expect_err(line)
                .to_string();
            assert!(e.contains(key), "{line}: {e}");
        }
        let e = AgentConfig::from_toml(&format!("{MINIMAL}[exec]\nbogus = 1\n"))
            .expect_err("unknown key")
            .to_string();
        assert!(e.contains("bogus"), "{e}");
    }
}
