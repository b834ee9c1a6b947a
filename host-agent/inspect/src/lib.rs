//! Out-of-band reading of sandbox disk states, and their comparison.
//!
//! The agent never asks programs inside a VM what changed (a hostile agent controls
//! them): it exports a disk state with `qemu-img` ([`export_raw`]), opens the raw file's
//! ext4 file system in-process ([`DiskImage`]), builds a [`Manifest`] (every path with
//! metadata and full-content SHA-256, plus accounts, dpkg and systemd facts) and compares
//! two of them ([`diff`]) into a [`SnapshotDiff`], this crate's own type (the agent
//! converts it to its wire answer).
//!
//! Everything but [`export_raw`] is blocking and works on `!Send` values: run it inside
//! one `tokio::task::spawn_blocking` closure. The file system's bytes are the guest's:
//! every read is bounded, symlinks are resolved inside the image only, and a panic in the
//! reader becomes [`InspectError::Corrupt`].

mod accounts;
mod changes;
mod diff;
mod dpkg;
mod error;
mod export;
mod files;
mod hashing;
mod image;
mod manifest;
mod options;
mod partition;
mod read;
mod systemd;

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (COMMON.md)
mod tests;

pub use accounts::Accounts;
pub use changes::{ChangeKind, FileChange, FileMeta, PackageChange, ServiceChange, SnapshotDiff};
pub use diff::diff;
pub use dpkg::{Conffile, Dpkg, Package};
pub use error::{InspectError, Result};
pub use export::{export_raw, export_size};
pub use files::validate_path;
pub use image::DiskImage;
pub use manifest::{Entry, Kind, Manifest, manifest, manifest_with_limits};
pub use options::{DEFAULT_TEXT_LIMIT, DiffOptions, Limits};
pub use partition::{Partition, TableKind};
pub use read::{DEFAULT_READ_LIMIT, read_file};
pub use systemd::{Enablement, Service};
