//! `[quotas]`: scale limits as configuration, not accidents. What one agent (the
//! `agent_id` its tokens are scoped to) and one token may hold and start; past a limit
//! the request is refused with 429 and `Retry-After`, before anything is reserved,
//! audited or sent to a host.
//!
//! - `sandboxes_per_agent`: live sandboxes one agent owns, counted in the reservation's
//!   own transaction (under the owner's lock), so concurrent creates cannot pass it;
//! - `commands_per_agent`: commands (file operations included) running at once across
//!   one agent's sandboxes, in this controller;
//! - `snapshots_per_sandbox`: snapshots one sandbox keeps;
//! - `creates_per_second_per_token`: creates and forks one token starts per second
//!   (a token bucket holding two seconds' worth: bursts of twice as many).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// `[quotas]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotasConfig {
    /// Default 200.
    pub sandboxes_per_agent: u32,
    /// Default 256.
    pub commands_per_agent: u32,
    /// Default 64.
    pub snapshots_per_sandbox: u32,
    /// Default 20.
    pub creates_per_second_per_token: u32,
    /// The `Retry-After` of a quota's 429, in seconds. Default 5.
    pub retry_after_secs: u32,
}

impl Default for QuotasConfig {
    fn default() -> Self {
        Self {
            sandboxes_per_agent: 200,
            commands_per_agent: 256,
            snapshots_per_sandbox: 64,
            creates_per_second_per_token: 20,
            retry_after_secs: 5,
        }
    }
}

impl QuotasConfig {
    /// Checks the values; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        for (key, v, max) in [
            ("sandboxes_per_agent", self.sandboxes_per_agent, 1_000_000),
            ("commands_per_agent", self.commands_per_agent, 1_000_000),
            ("snapshots_per_sandbox", self.snapshots_per_sandbox, 10_000),
            (
                "creates_per_second_per_token",
                self.creates_per_second_per_token,
                100_000,
            ),
            ("retry_after_secs", self.retry_after_secs, 3600),
        ] {
            if !(1..=max).contains(&v) {
                return Err(format!("quotas.{key} must be 1-{max}"));
            }
        }
        Ok(())
    }
}

/// Token buckets past this many are pruned of the full ones (idle tokens).
const BUCKETS_KEPT: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// `creates_per_second_per_token`: one token bucket per API token.
#[derive(Debug)]
pub struct CreateRate {
    per_sec: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl CreateRate {
    pub fn new(per_sec: u32) -> Self {
        Self {
            per_sec: f64::from(per_sec.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn capacity(&self) -> f64 {
        2.0 * self.per_sec
    }

    /// Takes one create for `token_id` at `now`; `Err(seconds)` until one is free.
    pub fn take_at(&self, token_id: &str, now: Instant) -> Result<(), u32> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > BUCKETS_KEPT {
            let (rate, cap) = (self.per_sec, self.capacity());
            buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < cap
            });
        }
        let cap = self.capacity();
        let b = buckets.entry(token_id.to_owned()).or_insert(Bucket {
            tokens: cap,
            at: now,
        });
        let refill = now.saturating_duration_since(b.at).as_secs_f64() * self.per_sec;
        b.tokens = (b.tokens + refill).min(cap);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Ok(());
        }
        let wait = (1.0 - b.tokens) / self.per_sec;
        Err(wait.ceil().max(1.0) as u32)
    }

    pub fn take(&self, token_id: &str) -> Result<(), u32> {
        self.take_at(token_id, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn defaults_validate_and_zero_is_refused_by_name() {
        assert!(QuotasConfig::default().validate().is_ok());
        let bad = QuotasConfig {
            snapshots_per_sandbox: 0,
            ..QuotasConfig::default()
        };
        assert!(
            bad.validate()
                .expect_err("0")
                .contains("quotas.snapshots_per_sandbox")
        );
    }

    #[test]
    fn a_token_bursts_twice_its_rate_then_gets_one_per_interval_and_others_are_apart() {
        let r = CreateRate::new(5);
        let t0 = Instant::now();
        for i in 0..10 {
            assert!(r.take_at("a", t0).is_ok(), "burst {i}");
        }
        assert_eq!(r.take_at("a", t0), Err(1));
        assert!(
            r.take_at("b", t0).is_ok(),
            "another token has its own bucket"
        );
        // 5/s: one more after 200 ms, not before.
        assert!(r.take_at("a", t0 + Duration::from_millis(150)).is_err());
        assert!(r.take_at("a", t0 + Duration::from_millis(210)).is_ok());
        // Idle for a minute: the bucket is full again, not fuller.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..10 {
            assert!(r.take_at("a", later).is_ok());
        }
        assert!(r.take_at("a", later).is_err());
    }
}
