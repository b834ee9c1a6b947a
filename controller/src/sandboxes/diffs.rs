//! Diffs between two disk states: a snapshot or a sandbox's disk now, on each side.
//!
//! The agent of the host both live on reads them out-of-band from the images (never
//! through a program in the guest) and answers files, packages and services
//! ([`crate::sandboxes::diffs::convert`] turns that into the REST shapes). The commands run in
//! between come from the audit trail (the commands store), and the result is stored as
//! the review record (`DIF-…`). [`DiffService::read_file`] fetches one file of a disk
//! state whole (playbook generation needs binary and large files).

pub mod convert;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use fluid_client::audit_chain::truncate_to_micros;
use fluid_client::snapshots::{
    CommandEntry, Diff, DiffJson, DiffList, DiffRequest, FileMeta, NOW, TextDiff,
};
use fluid_client::types::SandboxState;
use fluid_proto::model::{DiskState, SandboxId, SnapshotName};
use fluid_proto::pb;
use serde::{Deserialize, Serialize};

use crate::agents::locate;
use crate::agents::{AgentConnector, AgentError};
use crate::error::{ServiceError, page_limit};
use crate::governance::auth::{self, Caller, Permission};
pub use crate::sandboxes::diffs::convert::{DiffDetail, TextPair};
use crate::sandboxes::diffs::convert::{convert, file_meta};
use crate::sandboxes::snapshots::{guest_certificate_for, snapshot_row};
use crate::store::{CommandStatus, DiffRecord, SandboxRecord, SnapshotRecord, Store, StoreError};
use crate::support::ids::new_id;
use crate::work::commands::CommandService;

/// Path prefixes a diff leaves out unless configured otherwise: what always churns.
pub const DEFAULT_VOLATILE_PATHS: [&str; 26] = [
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
    "/var/lib/dhcp",
    "/var/lib/dpkg/lock",
    "/var/lib/dpkg/lock-frontend",
    "/var/lib/dpkg/triggers/Lock",
    "/var/lib/dpkg/status-old",
    "/var/lib/dpkg/diversions-old",
    "/var/lib/dpkg/statoverride-old",
    "/var/backups",
    "/root/.bash_history",
    "/root/.ansible",
    "/root/.cache",
    "/var/lib/logrotate",
    "/var/lib/private/systemd",
    "/var/lib/systemd/coredump",
];

/// Default text limit: text files up to this size get a unified diff.
pub const DEFAULT_TEXT_LIMIT_BYTES: u64 = 256 * 1024;
/// Largest text limit the configuration may set.
pub const TEXT_LIMIT_MAX_BYTES: u64 = 16 * 1024 * 1024;
/// Longest path a file read accepts.
pub const PATH_MAX: usize = 4096;

/// `[diff]`: what every diff compares and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiffConfig {
    /// Path prefixes left out entirely (each covers itself and everything below it).
    pub volatile_paths: Vec<String>,
    /// Path prefixes whose files are compared by existence, type and metadata only.
    pub metadata_only_paths: Vec<String>,
    /// Text files up to this size get a unified diff; larger ones are compared by hash.
    pub text_limit_bytes: u64,
}

impl Default for DiffConfig {
    fn default() -> Self {
        Self {
            volatile_paths: DEFAULT_VOLATILE_PATHS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            metadata_only_paths: vec!["/var/log".into()],
            text_limit_bytes: DEFAULT_TEXT_LIMIT_BYTES,
        }
    }
}

impl DiffConfig {
    /// Paths absolute and plain, the limit within 1 B – 16 MiB.
    pub fn validate(&self) -> Result<(), String> {
        for (key, paths) in [
            ("diff.volatile_paths", &self.volatile_paths),
            ("diff.metadata_only_paths", &self.metadata_only_paths),
        ] {
            if paths.len() > 1024 {
                return Err(format!("{key}: at most 1024 entries"));
            }
            for p in paths {
                check_path(p).map_err(|e| format!("{key}: {e}"))?;
            }
        }
        if self.text_limit_bytes == 0 || self.text_limit_bytes > TEXT_LIMIT_MAX_BYTES {
            return Err(format!(
                "diff.text_limit_bytes must be 1-{TEXT_LIMIT_MAX_BYTES}"
            ));
        }
        Ok(())
    }
}

/// An absolute path without `.`/`..` components or NUL, at most [`PATH_MAX`] bytes.
pub fn check_path(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("{p:?} is not an absolute path"));
    }
    if p.len() > PATH_MAX || p.contains('\0') {
        return Err(format!("{p:?}: at most {PATH_MAX} bytes, no NUL"));
    }
    if p.split('/').any(|c| c == "." || c == "..") {
        return Err(format!("{p:?} has a '.' or '..' component"));
    }
    Ok(())
}

/// One side of a diff: a sandbox's snapshot, or its disk now (`snapshot: None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSide {
    pub sandbox_id: SandboxId,
    pub snapshot: Option<SnapshotName>,
}

impl DiskSide {
    /// The side a REST field names: a snapshot name, or `now`.
    pub fn parse(
        sandbox_id: &SandboxId,
        field: &'static str,
        s: &str,
    ) -> Result<Self, ServiceError> {
        let snapshot = if s == NOW {
            None
        } else {
            Some(SnapshotName::parse(field, s)?)
        };
        Ok(Self {
            sandbox_id: sandbox_id.clone(),
            snapshot,
        })
    }

    /// The snapshot's name, or `now`.
    pub fn label(&self) -> String {
        self.snapshot
            .as_ref()
            .map_or_else(|| NOW.to_owned(), ToString::to_string)
    }
}

/// What to compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiffSpec {
    /// The sandbox the diff is about: its row's `sandbox_id`, and whose commands fill
    /// `commands_run`.
    pub owner: SandboxId,
    pub from: DiskSide,
    pub to: DiskSide,
    /// Fill `commands_run` from the audit: the owner's commands started between the
    /// two sides' times (a snapshot's creation, or now).
    pub commands: bool,
    /// Store the result (`GET /v1/sandboxes/{owner}/diffs/{id}`).
    pub store: bool,
}

/// A diff and what it keeps beyond its REST shape.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDiff {
    pub diff: Diff,
    pub detail: DiffDetail,
}

/// A side, resolved: its sandbox, its snapshot row, the host its disk is on.
struct Resolved {
    state: DiskState,
    sandbox: SandboxRecord,
    snapshot: Option<SnapshotRecord>,
    host: String,
}

impl Resolved {
    /// When this side's disk state was taken (a snapshot's creation, or now).
    fn at(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        self.snapshot.as_ref().map_or(now, |s| s.created_at)
    }
}

pub struct DiffService {
    store: Arc<dyn Store>,
    agents: Arc<dyn AgentConnector>,
    commands: Arc<CommandService>,
    config: DiffConfig,
}

impl std::fmt::Debug for DiffService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiffService")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn corrupt(what: &str, e: serde_json::Error) -> ServiceError {
    ServiceError::Store(StoreError::Corrupt(format!("{what}: {e}")))
}

/// Commands that count as "run" between two disk states: everything that could have
/// changed the disk (not reads, not refusals).
fn ran(c: &crate::store::CommandRecord) -> bool {
    c.kind != "file_read" && c.status != CommandStatus::Denied
}

impl DiffService {
    pub fn new(
        store: Arc<dyn Store>,
        agents: Arc<dyn AgentConnector>,
        commands: Arc<CommandService>,
        config: DiffConfig,
    ) -> Self {
        Self {
            store,
            agents,
            commands,
            config,
        }
    }

    async fn sandbox(&self, id: &SandboxId) -> Result<SandboxRecord, ServiceError> {
        self.store
            .get_sandbox(id.as_str())
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("sandbox {id} not found")))
    }

    async fn resolve(&self, side: &DiskSide) -> Result<Resolved, ServiceError> {
        let sandbox = self.sandbox(&side.sandbox_id).await?;
        let (snapshot, host) = match &side.snapshot {
            Some(name) => {
                let s = snapshot_row(&*self.store, &sandbox.id, name).await?;
                let host = s.host_name.clone();
                (Some(s), host)
            }
            None => {
                if sandbox.state == SandboxState::Destroyed {
                    return Err(ServiceError::Conflict(format!(
                        "sandbox {} is destroyed: it has no disk now",
                        sandbox.id
                    )));
                }
                let host = sandbox.host_name.clone().ok_or_else(|| {
                    ServiceError::Conflict(format!(
                        "sandbox {} was never placed on a host",
                        sandbox.id
                    ))
                })?;
                (None, host)
            }
        };
        Ok(Resolved {
            state: DiskState {
                sandbox_id: side.sandbox_id.clone(),
                snapshot: side.snapshot.clone(),
            },
            sandbox,
            snapshot,
            host,
        })
    }

    /// A certificate for the agent when a side is a running sandbox's disk now (the
    /// agent `sync`s the guest before reading it); empty otherwise.
    async fn certificate(&self, sides: &[&Resolved]) -> String {
        let now: Vec<&SandboxRecord> = sides
            .iter()
            .filter(|s| s.snapshot.is_none() && s.sandbox.state == SandboxState::Running)
            .map(|s| &s.sandbox)
            .collect();
        guest_certificate_for(&self.commands, &now, "diff").await
    }

    /// Compares two disk states on one host. Same state on both sides is a 400; an
    /// unknown sandbox or snapshot a 404; sides on two hosts a 409.
    pub async fn diff(&self, spec: DiffSpec) -> Result<StoredDiff, ServiceError> {
        if spec.from == spec.to {
            return Err(ServiceError::Invalid(match &spec.from.snapshot {
                Some(n) => format!(
                    "from_snapshot and to_snapshot are both {n}: a snapshot compared with itself has no differences"
                ),
                None => "from_snapshot and to_snapshot are both now: the disk compared with itself has no differences".into(),
            }));
        }
        let owner = self.sandbox(&spec.owner).await?;
        let from = self.resolve(&spec.from).await?;
        let to = self.resolve(&spec.to).await?;
        if from.host != to.host {
            return Err(ServiceError::Conflict(format!(
                "{} is on host {} and {} on host {}: a diff reads both disk states on one host",
                from.state.sandbox_id, from.host, to.state.sandbox_id, to.host
            )));
        }
        let target = locate::online_agent(&*self.store, &from.host).await?;
        let req = pb::DiffSnapshotsRequest {
            from: Some(pb::DiskState::from(&from.state)),
            to: Some(pb::DiskState::from(&to.state)),
            volatile_paths: self.config.volatile_paths.clone(),
            text_limit_bytes: self.config.text_limit_bytes,
            metadata_only_paths: self.config.metadata_only_paths.clone(),
            ssh_certificate: self.certificate(&[&from, &to]).await,
        };
        let raw = self.agents.diff_snapshots(&target, req).await?;
        tracing::info!(
            owner = %owner.id, from = %spec.from.label(), to = %spec.to.label(),
            files = raw.files.len(), packages = raw.packages.len(), services = raw.services.len(),
            agent_ms = raw.elapsed_ms, "diff computed"
        );
        let converted = convert(&raw);
        let now = truncate_to_micros(Utc::now());
        let mut diff_json = converted.diff_json;
        if spec.commands {
            diff_json.commands_run = self
                .store
                .commands_between(&owner.id, from.at(now), to.at(now))
                .await?
                .into_iter()
                .filter(ran)
                .map(|c| CommandEntry {
                    cmd: c.command,
                    exit_code: c.exit_code,
                    at: c.started_at,
                    id: Some(c.id),
                })
                .collect();
        }
        let diff = Diff {
            id: new_id("DIF-"),
            sandbox_id: owner.id.clone(),
            from_snapshot: spec.from.label(),
            to_snapshot: spec.to.label(),
            diff_json,
            text_diffs: converted.text_diffs,
            created_at: now,
        };
        let stored = StoredDiff {
            diff,
            detail: converted.detail,
        };
        if spec.store {
            self.store.insert_diff(&record(&stored)?).await?;
        }
        Ok(stored)
    }

    /// `POST /v1/sandboxes/{id}/diff` for `caller` (`Read` on the sandbox): the
    /// request's two disk states compared (and the commands between), stored.
    pub async fn diff_for(
        &self,
        caller: &Caller,
        id: &SandboxId,
        req: &DiffRequest,
    ) -> Result<Diff, ServiceError> {
        auth::authorized_sandbox(&*self.store, caller, id, Permission::Read).await?;
        let from = DiskSide::parse(id, "from_snapshot", &req.from_snapshot)?;
        let to = DiskSide::parse(id, "to_snapshot", req.to_snapshot.as_deref().unwrap_or(NOW))?;
        let spec = DiffSpec {
            owner: id.clone(),
            from,
            to,
            commands: true,
            store: true,
        };
        Ok(self.diff(spec).await?.diff)
    }

    /// A stored diff of sandbox `id`, for `caller` (`Read` on it); 404 when unknown
    /// or of another sandbox.
    pub async fn get_for(
        &self,
        caller: &Caller,
        id: &SandboxId,
        diff_id: &str,
    ) -> Result<Diff, ServiceError> {
        auth::authorized_sandbox(&*self.store, caller, id, Permission::Read).await?;
        let diff = self.get(diff_id).await?.diff;
        if diff.sandbox_id != id.as_str() {
            return Err(ServiceError::NotFound(format!(
                "diff {diff_id} of sandbox {id} not found"
            )));
        }
        Ok(diff)
    }

    /// A stored diff; 404 when unknown.
    pub async fn get(&self, diff_id: &str) -> Result<StoredDiff, ServiceError> {
        check_diff_id(diff_id)?;
        let rec = self
            .store
            .get_diff(diff_id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("diff {diff_id} not found")))?;
        from_record(&rec)
    }

    /// A page of a sandbox's stored diffs, newest first, for `caller` (`Read` on it).
    pub async fn list(
        &self,
        caller: &Caller,
        sandbox_id: &SandboxId,
        limit: Option<u32>,
        offset: Option<u64>,
    ) -> Result<DiffList, ServiceError> {
        auth::authorized_sandbox(&*self.store, caller, sandbox_id, Permission::Read).await?;
        let (limit, offset) = (page_limit(limit)?, offset.unwrap_or(0));
        let (rows, total) = self
            .store
            .list_diffs(sandbox_id.as_str(), limit, offset)
            .await?;
        let diffs = rows
            .iter()
            .map(|r| from_record(r).map(|s| s.diff))
            .collect::<Result<_, _>>()?;
        Ok(DiffList { diffs, total })
    }

    /// One file of a disk state, whole: its metadata and content (at most `max_bytes`,
    /// 0: 64 MiB). A missing file is a 404, a larger one a 422.
    pub async fn read_file(
        &self,
        side: &DiskSide,
        path: &str,
        max_bytes: u64,
    ) -> Result<(FileMeta, Vec<u8>), ServiceError> {
        check_path(path).map_err(|e| ServiceError::Invalid(format!("path: {e}")))?;
        let s = self.resolve(side).await?;
        let target = locate::online_agent(&*self.store, &s.host).await?;
        let cert = self.certificate(&[&s]).await;
        match self
            .agents
            .read_snapshot_file(&target, &s.state, path, max_bytes, &cert)
            .await
        {
            Ok((meta, data)) => Ok((file_meta(&meta), data)),
            Err(AgentError::NotFound { message, .. }) => Err(ServiceError::NotFound(format!(
                "{path} in {} ({}): {message}",
                side.sandbox_id,
                side.label()
            ))),
            Err(AgentError::Refused { message, .. }) => Err(ServiceError::Unprocessable(format!(
                "{path} in {} ({}): {message}",
                side.sandbox_id,
                side.label()
            ))),
            Err(e) => Err(e.into()),
        }
    }
}

/// A diff id from a path: `DIF-` and letters or digits (400 otherwise).
pub fn check_diff_id(id: &str) -> Result<(), ServiceError> {
    let ok = id.strip_prefix("DIF-").is_some_and(|r| {
        !r.is_empty() && r.len() <= 64 && r.bytes().all(|b| b.is_ascii_alphanumeric())
    });
    if ok {
        Ok(())
    } else {
        Err(ServiceError::Invalid(format!(
            "{id:?} is not a diff id (DIF-…)"
        )))
    }
}

fn record(s: &StoredDiff) -> Result<DiffRecord, ServiceError> {
    let d = &s.diff;
    Ok(DiffRecord {
        id: d.id.clone(),
        sandbox_id: d.sandbox_id.clone(),
        from_snapshot: d.from_snapshot.clone(),
        to_snapshot: d.to_snapshot.clone(),
        diff_json: serde_json::to_string(&d.diff_json).map_err(|e| corrupt("diff_json", e))?,
        text_diffs_json: serde_json::to_string(&d.text_diffs)
            .map_err(|e| corrupt("text_diffs_json", e))?,
        detail_json: serde_json::to_string(&s.detail).map_err(|e| corrupt("detail_json", e))?,
        created_at: d.created_at,
    })
}

fn from_record(r: &DiffRecord) -> Result<StoredDiff, ServiceError> {
    let diff_json: DiffJson =
        serde_json::from_str(&r.diff_json).map_err(|e| corrupt("diff_json", e))?;
    let text_diffs: Vec<TextDiff> =
        serde_json::from_str(&r.text_diffs_json).map_err(|e| corrupt("text_diffs_json", e))?;
    let detail: DiffDetail =
        serde_json::from_str(&r.detail_json).map_err(|e| corrupt("detail_json", e))?;
    Ok(StoredDiff {
        diff: Diff {
            id: r.id.clone(),
            sandbox_id: r.sandbox_id.clone(),
            from_snapshot: r.from_snapshot.clone(),
            to_snapshot: r.to_snapshot.clone(),
            diff_json,
            text_diffs,
            created_at: r.created_at,
        },
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_checks() {
        let c = DiffConfig::default();
        assert!(c.validate().is_ok());
        assert!(c.volatile_paths.iter().any(|p| p == "/var/lib/apt/lists"));
        assert_eq!(c.metadata_only_paths, ["/var/log"]);
        assert_eq!(c.text_limit_bytes, 256 * 1024);
        for bad in [
            DiffConfig {
                volatile_paths: vec!["tmp".into()],
                ..DiffConfig::default()
            },
            DiffConfig {
                metadata_only_paths: vec!["/var/../etc".into()],
                ..DiffConfig::default()
            },
            DiffConfig {
                text_limit_bytes: 0,
                ..DiffConfig::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_diff_table_of_the_configuration() {
        use figment::Figment;
        use figment::providers::{Format, Serialized, Toml};
        let raw = |toml: &str| {
            crate::config::Config::from_figment(
                Figment::from(Serialized::defaults(crate::config::Config::default()))
                    .merge(Toml::string(toml)),
            )
        };
        let parse = |extra: &str| {
            raw(&format!(
                "[tls]\nca_cert = \"/ca.pem\"\ncert = \"/c.pem\"\nkey = \"/k.pem\"\n{extra}"
            ))
        };
        let c = parse("").expect("defaults");
        assert_eq!(c.diff, DiffConfig::default());
        let c = parse(
            "[diff]\nmetadata_only_paths = [\"/var/log\", \"/srv/logs\"]\ntext_limit_bytes = 1024",
        )
        .expect("valid");
        assert_eq!(c.diff.metadata_only_paths, ["/var/log", "/srv/logs"]);
        assert_eq!(c.diff.text_limit_bytes, 1024);
        assert_eq!(c.diff.volatile_paths.len(), DEFAULT_VOLATILE_PATHS.len());
        for bad in [
            "[diff]\nvolatile_paths = [\"tmp\"]",
            "[diff]\ntext_limit_bytes = 0",
            "[diff]\nunknown = 1",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let deployed = raw(include_str!("../../../deploy/controller.toml")).expect("deploy");
        assert_eq!(deployed.diff, DiffConfig::default());
    }

    #[test]
    fn paths_and_ids_are_checked() {
        assert!(check_path("/etc/nginx/nginx.conf").is_ok());
        for bad in ["etc/x", "/etc/../shadow", "/etc/./x", "/a\0b", ""] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
        assert!(check_diff_id("DIF-abc123").is_ok());
        for bad in ["DIF-", "dif-abc", "DIF-a/b", "SNP-abc"] {
            assert!(check_diff_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sides_parse_now_and_names() {
        let id = SandboxId::parse("id", "SBX-abcdefgh").expect("id");
        let now = DiskSide::parse(&id, "to_snapshot", "now").expect("now");
        assert_eq!(
            (now.snapshot.clone(), now.label()),
            (None, "now".to_owned())
        );
        let a = DiskSide::parse(&id, "from_snapshot", "before").expect("name");
        assert_eq!(a.label(), "before");
        for bad in ["", "a/b", "..", &"x".repeat(64)] {
            assert!(
                DiskSide::parse(&id, "from_snapshot", bad).is_err(),
                "{bad:?}"
            );
        }
    }
}
