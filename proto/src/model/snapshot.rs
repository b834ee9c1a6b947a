//! Snapshot names and references, validated.

use std::fmt;

use super::{SandboxId, ValidationError};
use crate::pb;

/// Names starting with this are the agent's own (temporary snapshots for a diff of
/// "now"); the controller refuses them from users.
pub const RESERVED_PREFIX: &str = "fluid-";

/// A snapshot name: `[A-Za-z0-9][A-Za-z0-9._-]{0,62}`, not `.`/`..`-like.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SnapshotName(String);

impl SnapshotName {
    pub fn parse(field: &'static str, s: &str) -> Result<Self, ValidationError> {
        if s.is_empty() {
            return Err(ValidationError::new(field, "must not be empty"));
        }
        if s.len() > 63 {
            return Err(ValidationError::new(field, "must be at most 63 characters"));
        }
        let first_ok = s.as_bytes()[0].is_ascii_alphanumeric();
        let all_ok = s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !first_ok || !all_ok || s.contains("..") {
            return Err(ValidationError::new(
                field,
                format!(
                    "{s:?} is not a snapshot name (a letter or digit, then letters, digits, '.', '_' or '-'; no '..')"
                ),
            ));
        }
        Ok(Self(s.to_owned()))
    }

    /// True for the agent's own names (`fluid-…`).
    pub fn is_reserved(&self) -> bool {
        self.0.starts_with(RESERVED_PREFIX)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SnapshotName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One snapshot of one sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SnapshotRef {
    pub sandbox_id: SandboxId,
    pub name: SnapshotName,
}

impl TryFrom<pb::SnapshotRef> for SnapshotRef {
    type Error = ValidationError;
    fn try_from(r: pb::SnapshotRef) -> Result<Self, Self::Error> {
        Ok(Self {
            sandbox_id: SandboxId::parse("sandbox_id", &r.sandbox_id)?,
            name: SnapshotName::parse("name", &r.name)?,
        })
    }
}

impl From<&SnapshotRef> for pb::SnapshotRef {
    fn from(r: &SnapshotRef) -> Self {
        Self {
            sandbox_id: r.sandbox_id.to_string(),
            name: r.name.to_string(),
        }
    }
}

/// One disk state: a snapshot, or the sandbox's disk now (`snapshot: None`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DiskState {
    pub sandbox_id: SandboxId,
    pub snapshot: Option<SnapshotName>,
}

impl TryFrom<pb::DiskState> for DiskState {
    type Error = ValidationError;
    fn try_from(r: pb::DiskState) -> Result<Self, Self::Error> {
        Ok(Self {
            sandbox_id: SandboxId::parse("sandbox_id", &r.sandbox_id)?,
            snapshot: if r.snapshot.is_empty() {
                None
            } else {
                Some(SnapshotName::parse("snapshot", &r.snapshot)?)
            },
        })
    }
}

impl From<&DiskState> for pb::DiskState {
    fn from(d: &DiskState) -> Self {
        Self {
            sandbox_id: d.sandbox_id.to_string(),
            snapshot: d
                .snapshot
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_names_are_checked() {
        for ok in ["a", "before-nginx", "A.1_b", &"x".repeat(63)] {
            assert!(SnapshotName::parse("n", ok).is_ok(), "{ok}");
        }
        for bad in ["", ".x", "-x", "a/b", "a..b", "a b", "ä", &"x".repeat(64)] {
            assert!(SnapshotName::parse("n", bad).is_err(), "{bad:?}");
        }
        assert!(
            SnapshotName::parse("n", "fluid-now-1")
                .map(|n| n.is_reserved())
                .unwrap_or(false)
        );
    }
}
