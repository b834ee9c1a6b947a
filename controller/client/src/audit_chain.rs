//! The audit trail's hash chain, computed the same way by the controller (when it
//! appends an event) and by any client that verifies the trail (`fluidctl audit
//! verify`), so a verifier need not trust the controller's word.
//!
//! `hash = hex(SHA-256(canonical))`, where `canonical` is the JSON array
//! `["fluid-audit-v1", seq, at, actor, role, kind, action, target, sandbox_id, outcome,
//! details, prev_hash]` with `at` in RFC 3339 UTC with microseconds and `details` as
//! its compact JSON text. The chain starts from [`GENESIS`].

use chrono::{DateTime, SecondsFormat, Utc};
use sha2::{Digest, Sha256};

use crate::governance::AuditEvent;

/// The `prev_hash` of the first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The fields an event's hash covers.
#[derive(Debug, Clone, Copy)]
pub struct HashInput<'a> {
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub actor: &'a str,
    pub role: &'a str,
    pub kind: &'a str,
    pub action: &'a str,
    pub target: Option<&'a str>,
    pub sandbox_id: Option<&'a str>,
    pub outcome: &'a str,
    /// Compact JSON text of the details, exactly as stored.
    pub details: &'a str,
    pub prev_hash: &'a str,
}

impl<'a> HashInput<'a> {
    /// The hash input of an event read back from the API; `details` is its details'
    /// compact JSON text (`serde_json::to_string(&event.details)`).
    pub fn of(e: &'a AuditEvent, details: &'a str) -> Self {
        Self {
            seq: e.seq,
            at: e.at,
            actor: &e.actor,
            role: &e.role,
            kind: &e.kind,
            action: &e.action,
            target: e.target.as_deref(),
            sandbox_id: e.sandbox_id.as_deref(),
            outcome: &e.outcome,
            details,
            prev_hash: &e.prev_hash,
        }
    }
}

/// Truncates a timestamp to what the chain covers (and PostgreSQL keeps): microseconds.
pub fn truncate_to_micros(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(at.timestamp_micros()).unwrap_or(at)
}

/// The hash of one event.
pub fn event_hash(i: &HashInput<'_>) -> String {
    let canonical = serde_json::json!([
        "fluid-audit-v1",
        i.seq,
        i.at.to_rfc3339_opts(SecondsFormat::Micros, true),
        i.actor,
        i.role,
        i.kind,
        i.action,
        i.target,
        i.sandbox_id,
        i.outcome,
        i.details,
        i.prev_hash,
    ]);
    hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
}

/// Where a chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainBreak {
    #[error("event {seq}: its hash does not match its contents (the row was edited)")]
    HashMismatch { seq: i64 },
    #[error(
        "event {seq}: prev_hash does not match event {prev_seq}'s hash (a row was edited, removed or inserted)"
    )]
    PrevMismatch { seq: i64, prev_seq: i64 },
    #[error("event {seq} follows event {prev_seq}: events are missing")]
    Gap { seq: i64, prev_seq: i64 },
}

impl ChainBreak {
    /// The sequence number of the event where the chain breaks.
    pub fn seq(&self) -> i64 {
        match self {
            Self::HashMismatch { seq } | Self::PrevMismatch { seq, .. } | Self::Gap { seq, .. } => {
                *seq
            }
        }
    }
}

/// Walks a chain incrementally, page by page.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    last_seq: i64,
    last_hash: String,
    checked: u64,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self {
            last_seq: 0,
            last_hash: GENESIS.to_owned(),
            checked: 0,
        }
    }
}

impl ChainVerifier {
    /// Checks the next event; the first error is where the chain breaks.
    pub fn push(&mut self, e: &AuditEvent) -> Result<(), ChainBreak> {
        let details = e.details.to_string();
        if event_hash(&HashInput::of(e, &details)) != e.hash {
            return Err(ChainBreak::HashMismatch { seq: e.seq });
        }
        if e.seq != self.last_seq + 1 {
            return Err(ChainBreak::Gap {
                seq: e.seq,
                prev_seq: self.last_seq,
            });
        }
        if e.prev_hash != self.last_hash {
            return Err(ChainBreak::PrevMismatch {
                seq: e.seq,
                prev_seq: self.last_seq,
            });
        }
        self.last_seq = e.seq;
        self.last_hash.clone_from(&e.hash);
        self.checked += 1;
        Ok(())
    }

    /// Events checked so far.
    pub fn checked(&self) -> u64 {
        self.checked
    }

    /// The hash of the last event checked (the chain's head).
    pub fn head(&self) -> &str {
        &self.last_hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<AuditEvent> {
        let mut prev = GENESIS.to_owned();
        (1..=n)
            .map(|seq| {
                let details = serde_json::json!({"n": seq, "a": "x"});
                let mut e = AuditEvent {
                    seq,
                    at: truncate_to_micros(Utc::now()),
                    actor: "alice".into(),
                    role: "admin".into(),
                    kind: "api".into(),
                    action: "POST /v1/sandboxes".into(),
                    target: Some(format!("SBX-{seq:08}")),
                    sandbox_id: None,
                    outcome: "201".into(),
                    details,
                    prev_hash: prev.clone(),
                    hash: String::new(),
                };
                let d = e.details.to_string();
                e.hash = event_hash(&HashInput::of(&e, &d));
                prev.clone_from(&e.hash);
                e
            })
            .collect()
    }

    fn verify(events: &[AuditEvent]) -> Result<u64, ChainBreak> {
        let mut v = ChainVerifier::default();
        for e in events {
            v.push(e)?;
        }
        Ok(v.checked())
    }

    #[test]
    fn an_intact_chain_verifies() {
        assert_eq!(verify(&chain(5)), Ok(5));
    }

    #[test]
    fn an_edited_field_is_named() {
        let mut c = chain(5);
        c[2].outcome = "200".into();
        assert_eq!(verify(&c), Err(ChainBreak::HashMismatch { seq: 3 }));
    }

    #[test]
    fn a_rehashed_edit_breaks_the_next_link() {
        let mut c = chain(5);
        c[2].actor = "mallory".into();
        let d = c[2].details.to_string();
        c[2].hash = event_hash(&HashInput::of(&c[2], &d));
        assert_eq!(
            verify(&c),
            Err(ChainBreak::PrevMismatch {
                seq: 4,
                prev_seq: 3
            })
        );
    }

    #[test]
    fn a_removed_row_is_a_gap() {
        let mut c = chain(5);
        c.remove(1);
        assert_eq!(
            verify(&c),
            Err(ChainBreak::Gap {
                seq: 3,
                prev_seq: 1
            })
        );
    }

    #[test]
    fn details_roundtrip_through_json_keeps_the_hash() {
        let c = chain(2);
        let text = serde_json::to_string(&c).expect("ser");
        let back: Vec<AuditEvent> = serde_json::from_str(&text).expect("de");
        assert_eq!(verify(&back), Ok(2));
    }
}
