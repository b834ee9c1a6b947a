//! How an audited command (or file operation, or interactive session) stands.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A command's status. Stored, sent and audited as the lowercase word
/// (`running completed failed lost interrupted denied`); the `commands.status`
/// column's CHECK holds the same set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CommandStatus {
    /// Started, not yet ended.
    Running,
    /// The agent ran it to its end (whatever the exit code, or killed at its timeout).
    Completed,
    /// It could not be run (the agent refused it or could not be reached).
    Failed,
    /// The agent's stream broke before the end.
    Lost,
    /// The controller restarted while it ran.
    Interrupted,
    /// Refused by policy before it ran.
    Denied,
}

impl CommandStatus {
    pub const ALL: [CommandStatus; 6] = [
        Self::Running,
        Self::Completed,
        Self::Failed,
        Self::Lost,
        Self::Interrupted,
        Self::Denied,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Lost => "lost",
            Self::Interrupted => "interrupted",
            Self::Denied => "denied",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for CommandStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A word that is not a command status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a command status")]
pub struct UnknownCommandStatus(pub String);

impl FromStr for CommandStatus {
    type Err = UnknownCommandStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s).ok_or_else(|| UnknownCommandStatus(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_and_match_serde() {
        for s in CommandStatus::ALL {
            assert_eq!(CommandStatus::parse(s.as_str()), Some(s));
            assert_eq!(s.as_str().parse::<CommandStatus>(), Ok(s));
            let json = serde_json::to_string(&s).expect("serialize");
            assert_eq!(json, format!("\"{}\"", s.as_str()));
            assert_eq!(s.to_string(), s.as_str());
        }
        assert!(CommandStatus::parse("Running").is_none());
        assert!("finished".parse::<CommandStatus>().is_err());
    }
}
