//! What a comparison of two disk states finds ([`diff`](crate::diff)) and what one file's
//! read answers ([`read_file`](crate::read_file)): this crate's own types, which the
//! agent turns into its wire answer (`SnapshotDiff`, `FileMeta`) at its gRPC edge.

use crate::manifest::Kind;

/// How a path differs between the two sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Removed,
    Modified,
}

/// A path's metadata on one side, with the owner's and group's names from that side's
/// accounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub owner: String,
    pub group: String,
    pub size: u64,
    /// Hex SHA-256 of the content; empty when not hashed (not a regular file, or under
    /// a metadata-only prefix).
    pub sha256: String,
    /// A symlink's target; empty for anything else.
    pub link_target: String,
}

/// One path that differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileChange {
    pub path: String,
    pub change: ChangeKind,
    /// `None` on the side where the path does not exist.
    pub before: Option<FileMeta>,
    pub after: Option<FileMeta>,
    /// Every side that exists is a regular file within the text limit, UTF-8 without
    /// NUL; then `before_text` and `after_text` hold them (empty for a missing side).
    pub text: bool,
    pub before_text: String,
    pub after_text: String,
    /// The dpkg package that owns the path (empty: none).
    pub package: String,
    /// A conffile whose content differs from what its package shipped.
    pub conffile_modified: bool,
}

/// A package installed, removed or changed in version or architecture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageChange {
    pub name: String,
    /// Empty: not installed on that side.
    pub before_version: String,
    pub after_version: String,
    pub architecture: String,
    pub auto_installed: bool,
}

/// A systemd unit whose enablement differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceChange {
    pub name: String,
    /// `enabled`, `disabled`, `masked`, `static`, … or `absent`.
    pub before_enablement: String,
    pub after_enablement: String,
    /// `active` / `inactive` from a side's running guest, as the caller knows it; the
    /// disk alone cannot say (empty).
    pub before_active: String,
    pub after_active: String,
    pub unit_path: String,
}

/// Everything that differs between two disk states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotDiff {
    /// Sorted by path.
    pub files: Vec<FileChange>,
    /// Sorted by name.
    pub packages: Vec<PackageChange>,
    /// Sorted by name.
    pub services: Vec<ServiceChange>,
    /// Paths in each side's manifest.
    pub from_entries: u64,
    pub to_entries: u64,
    pub elapsed_ms: u32,
}
