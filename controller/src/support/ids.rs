//! Ids the controller makes, and the checks of ids callers send.

use rand::Rng as _;

/// Longest `agent_id`.
pub const AGENT_ID_MAX: usize = 128;

/// `PREFIX` followed by 10 random lowercase letters and digits.
pub fn new_id(prefix: &str) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let mut s = String::with_capacity(prefix.len() + 10);
    s.push_str(prefix);
    for _ in 0..10 {
        s.push(char::from(CHARS[rng.random_range(0..CHARS.len())]));
    }
    s
}

/// An `agent_id` that [`check_agent_id`] refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("agent_id: {0}")]
pub struct InvalidAgentId(String);

/// Checks an `agent_id`: printable, not empty, at most [`AGENT_ID_MAX`] characters.
pub fn check_agent_id(s: &str) -> Result<(), InvalidAgentId> {
    if s.trim().is_empty() {
        return Err(InvalidAgentId("must not be empty".into()));
    }
    if s.len() > AGENT_ID_MAX || s.chars().any(char::is_control) {
        return Err(InvalidAgentId(format!(
            "at most {AGENT_ID_MAX} printable characters"
        )));
    }
    Ok(())
}
