//! `[commands]`: the default and longest run time of a command, and how many commands
//! one sandbox may run at once (past that: 429 with Retry-After, never a failure).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// `[commands]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CommandsConfig {
    /// Timeout of a command whose request has none (`timeout_sec` absent or 0), file
    /// operations included. Default 600.
    pub default_timeout_secs: u32,
    /// The longest `timeout_sec` a request may ask for (more is a 400). Default 86400.
    pub max_timeout_secs: u32,
    /// Commands (and file operations) running at once in one sandbox through this
    /// controller; one more is answered 429 with `Retry-After`. Default 32. The agent
    /// has its own ceiling (`[exec] max_concurrent_per_sandbox`), also answered 429.
    pub max_concurrent_per_sandbox: u32,
    /// The `Retry-After` of those 429s, in seconds. Default 2.
    pub retry_after_secs: u32,
}

impl Default for CommandsConfig {
    fn default() -> Self {
        Self {
            default_timeout_secs: 600,
            max_timeout_secs: fluid_proto::model::EXEC_TIMEOUT_MAX_SECONDS,
            max_concurrent_per_sandbox: 32,
            retry_after_secs: 2,
        }
    }
}

impl CommandsConfig {
    /// Checks the values; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        let max = fluid_proto::model::EXEC_TIMEOUT_MAX_SECONDS;
        if !(1..=max).contains(&self.max_timeout_secs) {
            return Err(format!("commands.max_timeout_secs must be 1-{max}"));
        }
        if !(1..=self.max_timeout_secs).contains(&self.default_timeout_secs) {
            return Err(format!(
                "commands.default_timeout_secs must be 1-{} (commands.max_timeout_secs)",
                self.max_timeout_secs
            ));
        }
        if !(1..=4096).contains(&self.max_concurrent_per_sandbox) {
            return Err("commands.max_concurrent_per_sandbox must be 1-4096".into());
        }
        if !(1..=3600).contains(&self.retry_after_secs) {
            return Err("commands.retry_after_secs must be 1-3600".into());
        }
        Ok(())
    }

    /// The timeout a command runs with: `asked` (0: none) or the default, at most the
    /// maximum.
    pub fn timeout_for(&self, asked: u32) -> u32 {
        if asked == 0 {
            self.default_timeout_secs
        } else {
            asked.min(self.max_timeout_secs)
        }
    }
}

/// Commands running per sandbox and per owner (`agent_id`), in this controller.
#[derive(Debug, Default)]
pub struct Running {
    map: Mutex<HashMap<Key, usize>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Sandbox(String),
    Owner(String),
}

/// One running command's place; frees it when dropped.
#[derive(Debug)]
pub struct RunningSlot {
    running: Arc<Running>,
    keys: [Key; 2],
}

/// Why no place was free: how many commands run already, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Full {
    Sandbox(usize),
    Owner(usize),
}

impl Drop for RunningSlot {
    fn drop(&mut self) {
        let mut m = self.running.map.lock().unwrap_or_else(|e| e.into_inner());
        for k in &self.keys {
            if let Some(n) = m.get_mut(k) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(k);
                }
            }
        }
    }
}

impl Running {
    /// A place for one more command of `sandbox_id` (owned by `owner`), unless `limit`
    /// run in that sandbox or `owner_limit` in all the owner's sandboxes.
    pub fn try_take(
        self: &Arc<Self>,
        sandbox_id: &str,
        limit: u32,
        owner: &str,
        owner_limit: u32,
    ) -> Result<RunningSlot, Full> {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let keys = [
            Key::Sandbox(sandbox_id.to_owned()),
            Key::Owner(owner.to_owned()),
        ];
        let count = |k: &Key| m.get(k).copied().unwrap_or(0);
        let (in_sandbox, of_owner) = (count(&keys[0]), count(&keys[1]));
        if in_sandbox >= limit as usize {
            return Err(Full::Sandbox(in_sandbox));
        }
        if of_owner >= owner_limit as usize {
            return Err(Full::Owner(of_owner));
        }
        for k in &keys {
            *m.entry(k.clone()).or_insert(0) += 1;
        }
        Ok(RunningSlot {
            running: self.clone(),
            keys,
        })
    }

    /// Commands of `sandbox_id` running now.
    pub fn count(&self, sandbox_id: &str) -> usize {
        let m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        m.get(&Key::Sandbox(sandbox_id.to_owned()))
            .copied()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_validation() {
        let c = CommandsConfig::default();
        assert!(c.validate().is_ok());
        assert_eq!(c.timeout_for(0), 600);
        assert_eq!(c.timeout_for(3), 3);
        assert_eq!(c.timeout_for(u32::MAX), c.max_timeout_secs);
        let bad = CommandsConfig {
            default_timeout_secs: 0,
            ..CommandsConfig::default()
        };
        assert!(
            bad.validate()
                .expect_err("invalid")
                .contains("default_timeout_secs")
        );
        let bad = CommandsConfig {
            max_timeout_secs: 10,
            ..CommandsConfig::default()
        };
        assert!(
            bad.validate()
                .expect_err("invalid")
                .contains("default_timeout_secs")
        );
        let bad = CommandsConfig {
            max_concurrent_per_sandbox: 0,
            ..CommandsConfig::default()
        };
        assert!(
            bad.validate()
                .expect_err("invalid")
                .contains("max_concurrent")
        );
    }

    #[test]
    fn slots_are_counted_per_sandbox_and_per_owner_and_freed_on_drop() {
        let r = Arc::new(Running::default());
        let a = r.try_take("SBX-a", 2, "bot", 3).expect("1");
        let b = r.try_take("SBX-a", 2, "bot", 3).expect("2");
        assert_eq!(
            r.try_take("SBX-a", 2, "bot", 3).expect_err("full"),
            Full::Sandbox(2)
        );
        let other = r.try_take("SBX-b", 2, "bot", 3).expect("another sandbox");
        assert_eq!(
            r.try_take("SBX-c", 2, "bot", 3)
                .expect_err("the owner's quota"),
            Full::Owner(3)
        );
        let stranger = r.try_take("SBX-d", 2, "other", 3).expect("another owner");
        drop(a);
        assert_eq!(r.count("SBX-a"), 1);
        let c = r
            .try_take("SBX-c", 2, "bot", 3)
            .expect("freed for the owner");
        drop((b, c, other, stranger));
        assert_eq!(r.count("SBX-a"), 0);
        assert!(r.map.lock().expect("lock").is_empty());
    }
}
