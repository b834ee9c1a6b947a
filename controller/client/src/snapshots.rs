//! Bodies of snapshots, forks and diffs (`/v1/sandboxes/{id}/snapshot(s)…`, `/diff`,
//! `/fork`). Shapes follow fluid-remote v1; fields marked *new* are fluid's.
//! Requests reject unknown fields (the API answers 400).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /v1/sandboxes/{id}/snapshot` and `/snapshots`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshotRequest {
    /// `[A-Za-z0-9][A-Za-z0-9._-]{0,62}`, unique per sandbox; `fluid-…` is reserved.
    pub name: String,
    /// External snapshots are refused with 400: libvirt on these hosts cannot revert them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<bool>,
    /// *new*: include memory. Default: true when the sandbox runs. `false` on a running
    /// sandbox is a 409 (stop it first for a disk-only snapshot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<bool>,
}

/// A snapshot. `kind` is `INTERNAL` (qcow2 internal snapshot of the sandbox's overlay);
/// `ref` names it on its host (`<host>:<sandbox id>@<name>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Snapshot {
    pub id: String,
    pub sandbox_id: String,
    pub name: String,
    pub kind: String,
    #[serde(rename = "ref")]
    pub r#ref: String,
    pub created_at: DateTime<Utc>,
    /// `{memory, vm_state, guest_sync, host, active_services}`.
    pub meta_json: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SnapshotResponse {
    pub snapshot: Snapshot,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SnapshotList {
    pub snapshots: Vec<Snapshot>,
    pub total: u64,
}

/// *new*: `POST /v1/sandboxes/{id}/fork` — a new sandbox on the source's host, with a
/// new identity. With `snapshot`, it starts as that snapshot: resumed from its memory
/// when it was taken while the source ran (`start_path: fork`), else booted from its
/// disk. Without, it is a live fork: the running source's memory and disk as they are
/// now (the source pauses for the copy, then runs on; `start_path: fork`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForkRequest {
    /// A snapshot of the source; absent: fork the running source live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Default: the source sandbox's agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_for_ip: Option<bool>,
}

/// `POST /v1/sandboxes/{id}/diff`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DiffRequest {
    pub from_snapshot: String,
    /// A snapshot name, or `now` / absent (*new*) for the sandbox's disk now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_snapshot: Option<String>,
}

/// Value of `to_snapshot` meaning the sandbox's disk now.
pub const NOW: &str = "now";

/// Metadata of one side of a changed path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FileMeta {
    /// `file`, `dir`, `symlink` or `other`.
    pub kind: String,
    /// Octal permission bits, e.g. `0644` (`4755` with setuid).
    pub mode: String,
    pub owner: String,
    pub group: String,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_target: Option<String>,
}

/// One entry of `files_added` / `files_modified` / `files_removed`. The metadata is the
/// path's state after the change (before it, for a removal); a modification also has
/// `previous`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FileEntry {
    pub path: String,
    #[serde(flatten)]
    pub meta: FileMeta,
    /// Content compared by hash only (not UTF-8 text, or over the text limit).
    pub binary: bool,
    /// The dpkg package that owns the path, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
    /// A conffile of `package` that differs from the packaged version.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub conffile_modified: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<FileMeta>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PackageEntry {
    pub name: String,
    pub version: String,
    /// *new*: installed as a dependency (apt's auto flag).
    #[serde(default)]
    pub auto_installed: bool,
}

/// *new*
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PackageUpgrade {
    pub name: String,
    pub from_version: String,
    pub to_version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServiceEntry {
    /// Unit name, e.g. `nginx.service`.
    pub name: String,
    /// Enabled after the change.
    pub enabled: bool,
    /// `active`, `inactive` or `unknown` after the change (known only for live snapshots,
    /// as the guest reported it).
    pub state: String,
    /// *new*: `enabled`, `disabled`, `masked`, `static` or `absent`, after and before.
    pub enablement: String,
    pub previous_enablement: String,
    #[serde(default)]
    pub previous_state: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CommandEntry {
    pub cmd: String,
    pub exit_code: Option<i32>,
    pub at: DateTime<Utc>,
    /// *new*: the command's id (`CMD-…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// The fluid-remote v1 `diff_json`, with fluid's additions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DiffJson {
    pub files_added: Vec<FileEntry>,
    pub files_modified: Vec<FileEntry>,
    pub files_removed: Vec<FileEntry>,
    pub packages_added: Vec<PackageEntry>,
    pub packages_removed: Vec<PackageEntry>,
    /// *new*
    #[serde(default)]
    pub packages_upgraded: Vec<PackageUpgrade>,
    pub services_changed: Vec<ServiceEntry>,
    pub commands_run: Vec<CommandEntry>,
}

/// *new*: a changed text file as a unified diff (`--- a/path`, `+++ b/path`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TextDiff {
    pub path: String,
    pub unified: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Diff {
    pub id: String,
    pub sandbox_id: String,
    pub from_snapshot: String,
    /// A snapshot name, or `now`.
    pub to_snapshot: String,
    pub diff_json: DiffJson,
    /// *new*
    pub text_diffs: Vec<TextDiff>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DiffResponse {
    pub diff: Diff,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DiffList {
    pub diffs: Vec<Diff>,
    pub total: u64,
}
