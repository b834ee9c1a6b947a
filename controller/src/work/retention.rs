//! `[retention]`: how long the controller keeps commands' output. A command's output
//! (up to `output_cap_bytes` per stream) is the bulk of the database under load; once a
//! command ended more than `command_output_days` ago its `stdout` and `stderr` are
//! emptied and the row says `output_expired`. The row itself, its exit code, and the
//! SHA-256 of its output in the audit trail stay. Run by the retention loop (one
//! replica at a time), a batch at a time.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::store::{Store, StoreError};

/// Rows emptied per statement (each holds SQLite's write lock briefly).
const BATCH: u32 = 500;

/// `[retention]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Days a finished command's output is kept; 0: forever. Default 30.
    pub command_output_days: u32,
    /// How often the loop looks, in seconds. Default 600.
    pub check_interval_secs: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            command_output_days: 30,
            check_interval_secs: 600,
        }
    }
}

impl RetentionConfig {
    /// Checks the values; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.command_output_days > 36_500 {
            return Err("retention.command_output_days must be 0-36500 (0: forever)".into());
        }
        if !(1..=86_400).contains(&self.check_interval_secs) {
            return Err("retention.check_interval_secs must be 1-86400".into());
        }
        Ok(())
    }

    /// Empties the output of every command that ended more than `command_output_days`
    /// before `now`; how many.
    pub async fn expire(&self, store: &dyn Store, now: DateTime<Utc>) -> Result<u64, StoreError> {
        if self.command_output_days == 0 {
            return Ok(0);
        }
        let before = now - chrono::Duration::days(i64::from(self.command_output_days));
        let mut total = 0;
        loop {
            let n = store.expire_command_output(before, BATCH).await?;
            total += n;
            if n < u64::from(BATCH) {
                break;
            }
        }
        if total > 0 {
            tracing::info!(
                commands = total,
                days = self.command_output_days,
                "command output expired"
            );
        }
        Ok(total)
    }
}
