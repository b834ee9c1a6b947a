//! What a comparison leaves out or compares loosely, and the walk's safety limits.

use serde::{Deserialize, Serialize};

/// Text files up to this size carry their content when the request says 0.
pub const DEFAULT_TEXT_LIMIT: u64 = 256 * 1024;

/// Paths that churn on every boot or apt run without anyone changing the machine.
const VOLATILE: &[&str] = &[
    "/proc",
    "/sys",
    "/run",
    "/tmp",
    "/dev",
    "/var/cache",
    "/var/log/journal",
    "/var/lib/apt/lists",
    "/var/tmp",
    "/lost+found",
    "/var/lib/systemd/random-seed",
    "/var/lib/systemd/timers",
    "/var/lib/systemd/coredump",
    "/var/lib/private/systemd",
    "/var/lib/dhcp",
    "/var/lib/dpkg/lock",
    "/var/lib/dpkg/lock-frontend",
    "/var/lib/dpkg/triggers/Lock",
    "/var/lib/dpkg/status-old",
    "/var/lib/dpkg/diversions-old",
    "/var/lib/dpkg/statoverride-old",
    "/var/lib/logrotate",
    "/var/backups",
    "/root/.bash_history",
    "/root/.ansible",
    "/root/.cache",
];

/// Logs: their existence, type, mode and owner count, their content does not.
const METADATA_ONLY: &[&str] = &["/var/log"];

/// Options of a manifest and a comparison.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffOptions {
    /// Path prefixes left out entirely. A prefix matches whole components: `/var/cache`
    /// covers `/var/cache` and what is below it, not `/var/cache2`.
    pub volatile_paths: Vec<String>,
    /// Path prefixes compared by kind, mode and owner only (not size, not content).
    pub metadata_only_paths: Vec<String>,
    /// Text files up to this size carry their content (0: [`DEFAULT_TEXT_LIMIT`]).
    pub text_limit_bytes: u64,
}

impl Default for DiffOptions {
    /// The default volatile and metadata-only lists, 256 KiB text limit.
    fn default() -> Self {
        Self {
            volatile_paths: Self::default_volatile(),
            metadata_only_paths: Self::default_metadata_only(),
            text_limit_bytes: DEFAULT_TEXT_LIMIT,
        }
    }
}

impl DiffOptions {
    /// The volatile list plus machine state that always churns.
    pub fn default_volatile() -> Vec<String> {
        VOLATILE.iter().map(|s| (*s).to_owned()).collect()
    }

    /// Paths compared by metadata only by default (`/var/log`).
    pub fn default_metadata_only() -> Vec<String> {
        METADATA_ONLY.iter().map(|s| (*s).to_owned()).collect()
    }

    /// The text limit in force (0 means the default).
    pub fn text_limit(&self) -> u64 {
        if self.text_limit_bytes == 0 {
            DEFAULT_TEXT_LIMIT
        } else {
            self.text_limit_bytes
        }
    }
}

/// Bounds on a walk, against crafted file systems. Exceeding one is an error (never a
/// silently shorter manifest, which would hide files).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Directory nesting below `/`.
    pub max_depth: usize,
    /// Entries in the manifest.
    pub max_entries: usize,
    /// Bytes hashed in all (sparse files and hard links can claim far more than the disk
    /// holds). None: twice the file system's size plus 1 GiB.
    pub max_hash_bytes: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_depth: 128,
            max_entries: 2_000_000,
            max_hash_bytes: None,
        }
    }
}

/// A normalised set of path prefixes matched on whole components.
#[derive(Debug, Clone, Default)]
pub(crate) struct PrefixSet {
    all: bool,
    prefixes: Vec<String>,
}

impl PrefixSet {
    /// Relative or empty entries are ignored; trailing slashes are dropped.
    pub(crate) fn new(list: &[String]) -> Self {
        let mut set = Self::default();
        for p in list {
            if !p.starts_with('/') {
                continue;
            }
            let p = p.trim_end_matches('/');
            if p.is_empty() {
                set.all = true;
            } else {
                set.prefixes.push(p.to_owned());
            }
        }
        set
    }

    /// True when `path` is one of the prefixes or below one.
    pub(crate) fn matches(&self, path: &str) -> bool {
        self.all
            || self.prefixes.iter().any(|p| {
                path.strip_prefix(p.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            })
    }
}
