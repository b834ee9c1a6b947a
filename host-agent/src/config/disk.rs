//! The `[disk]` table of the agent's configuration: how much of the state directory's
//! file system is kept free, and how many disk-heavy operations may run (issue 12,
//! hole 7: a read-only token's diffs must not fill the host's disk).

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

/// `[disk]`, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskConfig {
    /// Never let an export or a snapshot leave less than this free (MiB). Default 1024.
    pub min_free_mb: u64,
    /// … nor less than this share of the file system (percent). Default 5. The larger
    /// of the two is kept free.
    pub min_free_percent: u8,
    /// Snapshots one sandbox may have (the agent's temporary ones not counted).
    /// Default 32.
    pub max_snapshots_per_sandbox: u32,
    /// Snapshots being taken at once per sandbox; past it a request is refused
    /// (RESOURCE_EXHAUSTED, HTTP 429). Default 1.
    pub max_snapshot_jobs_per_sandbox: u32,
    /// Diffs and file reads at once per sandbox (each exports up to two disk images);
    /// past it: refused (429). Default 1.
    pub max_inspections_per_sandbox: u32,
    /// Diffs and file reads at once on this host. Default 2.
    pub max_inspections: u32,
    /// How long a diff or file read waits for one of the host's slots before it is
    /// refused (429). Default 60.
    pub inspection_queue_seconds: u32,
}

impl Default for DiskConfig {
    fn default() -> Self {
        Self {
            min_free_mb: 1024,
            min_free_percent: 5,
            max_snapshots_per_sandbox: 32,
            max_snapshot_jobs_per_sandbox: 1,
            max_inspections_per_sandbox: 1,
            max_inspections: 2,
            inspection_queue_seconds: 60,
        }
    }
}

/// `[disk]` as written; every key optional.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDisk {
    #[serde(skip_serializing_if = "Option::is_none")]
    min_free_mb: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    min_free_percent: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_snapshots_per_sandbox: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_snapshot_jobs_per_sandbox: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_inspections_per_sandbox: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_inspections: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    inspection_queue_seconds: Option<u32>,
}

impl RawDisk {
    pub(super) fn validate(self) -> Result<DiskConfig, ConfigError> {
        let d = DiskConfig::default();
        let c = DiskConfig {
            min_free_mb: self.min_free_mb.unwrap_or(d.min_free_mb),
            min_free_percent: self.min_free_percent.unwrap_or(d.min_free_percent),
            max_snapshots_per_sandbox: self
                .max_snapshots_per_sandbox
                .unwrap_or(d.max_snapshots_per_sandbox),
            max_snapshot_jobs_per_sandbox: self
                .max_snapshot_jobs_per_sandbox
                .unwrap_or(d.max_snapshot_jobs_per_sandbox),
            max_inspections_per_sandbox: self
                .max_inspections_per_sandbox
                .unwrap_or(d.max_inspections_per_sandbox),
            max_inspections: self.max_inspections.unwrap_or(d.max_inspections),
            inspection_queue_seconds: self
                .inspection_queue_seconds
                .unwrap_or(d.inspection_queue_seconds),
        };
        if c.min_free_percent > 90 {
            return Err(invalid("disk.min_free_percent", "must be 0-90"));
        }
        for (field, v) in [
            (
                "disk.max_snapshots_per_sandbox",
                c.max_snapshots_per_sandbox,
            ),
            (
                "disk.max_snapshot_jobs_per_sandbox",
                c.max_snapshot_jobs_per_sandbox,
            ),
            (
                "disk.max_inspections_per_sandbox",
                c.max_inspections_per_sandbox,
            ),
            ("disk.max_inspections", c.max_inspections),
        ] {
            if !(1..=1024).contains(&v) {
                return Err(invalid(field, "must be 1-1024"));
            }
        }
        if !(1..=3600).contains(&c.inspection_queue_seconds) {
            return Err(invalid("disk.inspection_queue_seconds", "must be 1-3600"));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::AgentConfig;

    const TLS: &str = "[tls]\nca_cert = \"/c\"\ncert = \"/c\"\nkey = \"/k\"\n";

    #[test]
    fn defaults_and_overrides() {
        let c = AgentConfig::from_toml(&format!("host_name = 'h'\n{TLS}")).expect("valid");
        assert_eq!(c.disk, super::DiskConfig::default());
        let c = AgentConfig::from_toml(&format!(
            "host_name = 'h'\n{TLS}[disk]\nmin_free_mb = 10\nmax_snapshots_per_sandbox = 3\n"
        ))
        .expect("valid");
        assert_eq!(c.disk.min_free_mb, 10);
        assert_eq!(c.disk.max_snapshots_per_sandbox, 3);
        assert_eq!(c.disk.min_free_percent, 5);
    }

    #[test]
    fn bad_values_are_refused() {
        for (toml, field) in [
            ("min_free_percent = 91", "disk.min_free_percent"),
            (
                "max_snapshots_per_sandbox = 0",
                "disk.max_snapshots_per_sandbox",
            ),
            ("max_inspections = 0", "disk.max_inspections"),
            (
                "inspection_queue_seconds = 0",
                "disk.inspection_queue_seconds",
            ),
            ("nonsense = 1", "nonsense"),
        ] {
            let e = AgentConfig::from_toml(&format!("host_name = 'h'\n{TLS}[disk]\n{toml}\n"))
                .expect_err(toml)
                .to_string();
            assert!(e.contains(field), "{toml}: {e}");
        }
    }
}
