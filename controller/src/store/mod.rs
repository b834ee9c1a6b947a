//! Persistence.
//!
//! What we store, and why: only **intent** — the hosts the controller may schedule onto
//! (with the capacity they last reported, so a restarted controller can schedule before
//! the first heartbeat round completes) and the sandboxes it has promised to run (with
//! the host each one was placed on and the resources reserved for it). Everything else
//! (agent connections, observed VM state, background loop state) is rebuilt at start
//! from this and from the agents. Another replica sharing the PostgreSQL database can
//! therefore take over at any time.
//!
//! A sandbox's egress allow-list is intent too ([`egress`]), and so are Ansible playbooks
//! ([`playbooks`], with the record of the jobs that ran them). Besides intent, what the
//! human-in-the-loop needs ([`trust`]): API tokens, approval requests and the
//! append-only, hash-chained audit trail, into which the store itself writes every
//! sandbox state change, allow-list change and finished or refused command, in the
//! transaction that makes it.
//!
//! Two dialects implement [`Store`]: SQLite (embedded default, [`SqliteStore`]) and
//! PostgreSQL (production, [`PgStore`]). Each store method is written once, as ordinary
//! generic code over the small `Dialect` trait (`dialect.rs`), which holds all that
//! differs: the sqlx database, how a reservation locks its host, how a sandbox update
//! reads the state it changes, how a write takes the audit chain's lock, and the loops'
//! replica lock. All other SQL is the same text for both. Where things are:
//!
//! | what | trait and records | SQL and row shapes | implementation |
//! | --- | --- | --- | --- |
//! | hosts, sandboxes | here | `rows.rs` | `store_impl.rs` |
//! | commands, certificates | here | `audit_rows.rs` | `store_impl.rs` |
//! | tokens, approvals, audit chain | [`trust`] | `trust_rows.rs` | `trust_impl.rs` |
//! | allow-lists | [`egress`] | [`egress`] | [`egress`] |
//! | snapshots, diffs | [`snapshots`] | [`snapshots`] | [`snapshots`] |
//! | playbooks, tasks, jobs | [`playbooks`] | `playbook_rows.rs` | `playbooks_impl.rs` |
//!
//! Migrations live per dialect in `controller/migrations/`.

mod audit_rows;
mod command_status;
mod dialect;
pub mod egress;
mod playbook_rows;
pub mod playbooks;
mod playbooks_impl;
mod postgres;
mod rows;
pub mod snapshots;
mod sqlite;
mod store_impl;
pub mod trust;
mod trust_impl;
mod trust_rows;

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use fluid_client::types::{
    AccessCertificate, Command, HostState, Sandbox, SandboxState, StartPath,
};
use fluid_proto::model::PoolStatus;

use crate::support::ids::LegacyJobId;

pub use command_status::{CommandStatus, UnknownCommandStatus};
pub use egress::{EMPTY_EGRESS_JSON, EgressStore, EgressWrite};
pub use playbooks::{
    JobFilter, JobRecord, JobUpdate, PlaybookRecord, PlaybookStore, TaskRecord, TaskWrite,
};
pub use postgres::PgStore;
pub use snapshots::{DiffRecord, SnapshotRecord, SnapshotStore};
pub use sqlite::SqliteStore;
pub use trust::{
    ApprovalFilter, ApprovalRecord, AuditFilter, Decided, NewAuditEvent, TokenRecord, TrustStore,
};

/// Sandbox states that hold resources on their host.
pub const LIVE_STATES: [SandboxState; 4] = [
    SandboxState::Created,
    SandboxState::Starting,
    SandboxState::Running,
    SandboxState::Stopped,
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} already exists")]
    Conflict(String),
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Db(String),
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => Self::Unavailable(e.to_string()),
            _ => Self::Db(e.to_string()),
        }
    }
}

/// Why a reservation was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReserveError {
    /// The host is gone, not online, or too full (a lost race with another create).
    #[error("{0}")]
    NoRoom(String),
    #[error("a live sandbox named {0:?} already exists")]
    DuplicateName(String),
    /// The owner already holds `max_owned` live sandboxes.
    #[error("{0}")]
    Quota(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A registered host-agent, with the capacity it last reported.
#[derive(Debug, Clone, PartialEq)]
pub struct HostRecord {
    pub name: String,
    pub address: String,
    pub state: HostState,
    pub cpus_total: u32,
    pub memory_mb_total: u64,
    pub images: Vec<String>,
    pub agent_version: Option<String>,
    pub last_seen: Option<DateTime<Utc>>,
    pub missed_beats: u32,
    pub last_error: Option<String>,
    /// The agent's SSH key for exec, from its last heartbeat.
    pub ssh_public_key: Option<String>,
    /// The agent's warm pool, per image and shape, from its last heartbeat (column
    /// `pools`, JSON; empty: none). Its members are not sandboxes: [`HostUsage`] leaves
    /// them out and the scheduler adds them.
    pub pools: Vec<PoolStatus>,
    /// A simulated host (its agent's `[simulated]`), from its last heartbeat.
    pub simulated: bool,
}

/// Resources promised to a host's live sandboxes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostUsage {
    pub cpus: u64,
    pub memory_mb: u64,
    pub sandboxes: u64,
}

/// Checks that `cpus`/`memory_mb` still fit on `host` given `usage`: memory within
/// total − reserved, vCPUs within total × ratio − reserved. `Err` says what is short.
pub fn check_room(
    host: &HostRecord,
    usage: HostUsage,
    cpus: u32,
    memory_mb: u64,
    ratio: f64,
) -> Result<(), String> {
    let mem_free = free_memory(host, usage);
    if (memory_mb as i64) > mem_free {
        return Err(format!(
            "{} MiB memory free < {memory_mb} requested",
            mem_free.max(0)
        ));
    }
    let cpu_free = free_cpus(host, usage, ratio);
    if i64::from(cpus) > cpu_free {
        return Err(format!(
            "{} vCPUs free (over-commit {ratio}) < {cpus} requested",
            cpu_free.max(0)
        ));
    }
    Ok(())
}

pub fn free_memory(host: &HostRecord, usage: HostUsage) -> i64 {
    host.memory_mb_total as i64 - usage.memory_mb as i64
}

pub fn free_cpus(host: &HostRecord, usage: HostUsage, ratio: f64) -> i64 {
    (f64::from(host.cpus_total) * ratio).floor() as i64 - usage.cpus as i64
}

/// What a heartbeat learned about a host.
#[derive(Debug, Clone, PartialEq)]
pub struct Beat {
    pub cpus_total: u32,
    pub memory_mb_total: u64,
    pub images: Vec<String>,
    pub agent_version: String,
    pub ssh_public_key: Option<String>,
    /// The warm pool the agent reported (empty: none).
    pub pools: Vec<PoolStatus>,
    /// The agent serves a simulated host.
    pub simulated: bool,
    pub at: DateTime<Utc>,
}

/// A sandbox row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxRecord {
    pub id: String,
    /// Wire and column `job_id`.
    pub legacy_job_id: LegacyJobId,
    pub agent_id: String,
    /// The VM's name on its host (wire `sandbox_name`, column `sandbox_name`).
    pub name: String,
    /// What it was made from (wire and column `base_image`; `source_vm_name` in a
    /// create request).
    pub image: String,
    pub network: String,
    pub ip_address: Option<String>,
    pub state: SandboxState,
    pub ttl_seconds: Option<i64>,
    pub host_name: Option<String>,
    /// vCPUs (wire and column `cpu`).
    pub cpus: u32,
    pub memory_mb: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub error: Option<String>,
    /// Operations that change the sandbox are refused.
    pub read_only: bool,
    /// How its first start went, as its agent reported it (column `start_path`);
    /// `None` while unknown.
    pub start_path: Option<StartPath>,
}

impl SandboxRecord {
    pub fn is_live(&self) -> bool {
        LIVE_STATES.contains(&self.state)
    }

    pub fn to_api(&self) -> Sandbox {
        Sandbox {
            id: self.id.clone(),
            job_id: self.legacy_job_id.to_string(),
            agent_id: self.agent_id.clone(),
            sandbox_name: self.name.clone(),
            base_image: self.image.clone(),
            network: self.network.clone(),
            ip_address: self.ip_address.clone(),
            state: self.state,
            ttl_seconds: self.ttl_seconds,
            created_at: self.created_at,
            updated_at: self.updated_at,
            host_name: self.host_name.clone(),
            cpu: self.cpus,
            memory_mb: self.memory_mb,
            read_only: self.read_only,
            start_path: self.start_path,
        }
    }
}

/// A sandbox to insert once its host is checked to have room.
#[derive(Debug, Clone, PartialEq)]
pub struct Reservation {
    pub id: String,
    pub legacy_job_id: LegacyJobId,
    pub agent_id: String,
    pub name: String,
    pub image: String,
    pub ttl_seconds: Option<i64>,
    pub host_name: String,
    pub cpus: u32,
    pub memory_mb: u64,
    pub cpu_overcommit_ratio: f64,
    /// A human approved placing it beyond the host's capacity: skip the room check (the
    /// host must still exist and be online, and the name must still be free).
    pub allow_overcommit: bool,
    /// The live sandboxes `agent_id` may own, this one included (`None`: no limit):
    /// counted under the owner's lock in the reservation's transaction.
    pub max_owned: Option<u32>,
    pub now: DateTime<Utc>,
}

/// A change to a sandbox row. `None` fields are left as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxUpdate {
    pub state: Option<SandboxState>,
    pub ip_address: Option<Option<String>>,
    pub network: Option<String>,
    pub error: Option<Option<String>>,
    /// Set when `Some` (what a first start was never changes, so it is never cleared).
    pub start_path: Option<StartPath>,
    /// Apply only when the row is still in this state (compare-and-set).
    pub expect_state: Option<SandboxState>,
}

/// One audited command or file operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandRecord {
    pub id: String,
    pub sandbox_id: String,
    pub agent_id: String,
    /// `command`, `file_read`, `file_write`, `file_edit`, `sshkey`, `revoke`.
    pub kind: String,
    pub command: String,
    pub user: String,
    pub workdir: Option<String>,
    /// The environment, secret-looking values redacted.
    pub env_json: String,
    pub status: CommandStatus,
    pub stdout: String,
    pub stderr: String,
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    pub truncated: bool,
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<u64>,
    /// `[retention] command_output_days` dropped `stdout` and `stderr`.
    pub output_expired: bool,
}

impl CommandRecord {
    pub fn to_api(&self) -> Command {
        Command {
            id: self.id.clone(),
            sandbox_id: self.sandbox_id.clone(),
            command: self.command.clone(),
            env_json: self.env_json.clone(),
            stdout: self.stdout.clone(),
            stderr: self.stderr.clone(),
            exit_code: self.exit_code.unwrap_or(-1),
            started_at: self.started_at,
            ended_at: self.ended_at,
            truncated: self.truncated,
            timed_out: self.timed_out,
            user: self.user.clone(),
            workdir: self.workdir.clone(),
            duration_ms: self.duration_ms,
            status: self.status.as_str().to_owned(),
            kind: self.kind.clone(),
            agent_id: self.agent_id.clone(),
            error: self.error.clone(),
            output_expired: self.output_expired,
        }
    }
}

/// How a running command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandEnd {
    pub status: CommandStatus,
    pub stdout: String,
    pub stderr: String,
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    pub truncated: bool,
    pub error: Option<String>,
    pub ended_at: DateTime<Utc>,
    pub duration_ms: Option<u64>,
}

/// An SSH certificate issued to a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRecord {
    pub id: String,
    pub sandbox_id: String,
    pub user_id: String,
    pub public_key: String,
    pub principals: Vec<String>,
    pub serial: u64,
    pub valid_after: DateTime<Utc>,
    pub valid_until: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl CertRecord {
    pub fn to_api(&self) -> AccessCertificate {
        AccessCertificate {
            id: self.id.clone(),
            sandbox_id: self.sandbox_id.clone(),
            user_id: self.user_id.clone(),
            public_key: self.public_key.clone(),
            principals: self.principals.clone(),
            serial: self.serial,
            valid_after: self.valid_after,
            valid_until: self.valid_until,
            created_at: self.created_at,
            revoked_at: self.revoked_at,
        }
    }
}

/// `GET /v1/sandboxes` filters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxFilter {
    pub agent_id: Option<String>,
    /// Query `job_id`.
    pub legacy_job_id: Option<LegacyJobId>,
    /// Query `base_image`.
    pub image: Option<String>,
    pub state: Option<SandboxState>,
    /// Query `vm_name`.
    pub name: Option<String>,
    pub limit: u32,
    pub offset: u64,
}

/// Held while a background loop runs one tick; only one replica holds a given key.
/// Dropping it releases the lock.
pub struct LoopLock {
    pub(super) tx: Option<sqlx::Transaction<'static, sqlx::Postgres>>,
}

impl LoopLock {
    /// Releases the lock now (dropping it releases it too, a moment later).
    pub async fn release(self) {
        if let Some(tx) = self.tx
            && let Err(e) = tx.rollback().await
        {
            tracing::debug!(error = %e, "releasing a loop lock");
        }
    }
}

impl std::fmt::Debug for LoopLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoopLock")
    }
}

/// Background loops that must run on one replica at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopKey {
    Heartbeat = 0x666c_7501,
    Reconciler = 0x666c_7502,
    Janitor = 0x666c_7503,
    Retention = 0x666c_7504,
}

/// Everything the controller persists; [`TrustStore`] (tokens, approvals, the audit
/// trail), [`EgressStore`] (sandboxes' allow-lists) and [`SnapshotStore`] (snapshots,
/// diffs) are part of it, so their methods work on an `Arc<dyn Store>`.
#[async_trait]
pub trait Store:
    trust::TrustStore
    + egress::EgressStore
    + playbooks::PlaybookStore
    + snapshots::SnapshotStore
    + Send
    + Sync
    + 'static
{
    /// Runs a trivial query: is the database reachable?
    async fn ping(&self) -> Result<(), StoreError>;
    async fn close(&self);

    /// Adds a host, or updates its address when it exists.
    async fn upsert_host(&self, name: &str, address: &str) -> Result<(), StoreError>;
    /// Adds a new host; [`StoreError::Conflict`] when the name is taken.
    async fn insert_host(
        &self,
        name: &str,
        address: &str,
        now: DateTime<Utc>,
    ) -> Result<HostRecord, StoreError>;
    async fn list_hosts(&self) -> Result<Vec<HostRecord>, StoreError>;
    /// The host named `name`, if it is registered.
    async fn get_host(&self, name: &str) -> Result<Option<HostRecord>, StoreError>;
    async fn record_beat(&self, name: &str, beat: &Beat) -> Result<(), StoreError>;
    /// Counts a missed beat; the host goes OFFLINE after `offline_after` of them.
    async fn record_missed_beat(
        &self,
        name: &str,
        error: &str,
        offline_after: u32,
    ) -> Result<(), StoreError>;
    /// Resources held by live sandboxes, per host.
    async fn host_usage(&self) -> Result<HashMap<String, HostUsage>, StoreError>;

    /// Atomically: lock the host, check the sandbox still fits (unless
    /// `allow_overcommit`), insert it (CREATED) and append its `state` audit event.
    async fn reserve(&self, r: &Reservation) -> Result<SandboxRecord, ReserveError>;
    async fn get_sandbox(&self, id: &str) -> Result<Option<SandboxRecord>, StoreError>;
    /// A page of sandboxes (newest first) and the total matching the filter.
    async fn list_sandboxes(
        &self,
        f: &SandboxFilter,
    ) -> Result<(Vec<SandboxRecord>, u64), StoreError>;
    async fn sandboxes_on_host(&self, host: &str) -> Result<Vec<SandboxRecord>, StoreError>;
    /// Non-destroyed sandboxes with a TTL.
    async fn sandboxes_with_ttl(&self) -> Result<Vec<SandboxRecord>, StoreError>;
    /// Applies `u`; `None` when the row does not exist (or `expect_state` did not match).
    /// A change of state appends a `state` audit event in the same transaction.
    async fn update_sandbox(
        &self,
        id: &str,
        u: &SandboxUpdate,
        now: DateTime<Utc>,
    ) -> Result<Option<SandboxRecord>, StoreError>;

    /// Records a command before it runs (or a refused one, already ended, with its
    /// `command` audit event).
    async fn insert_command(&self, c: &CommandRecord) -> Result<(), StoreError>;

    /// `[retention] command_output_days`: drops the output of at most `limit` commands
    /// that ended before `ended_before` (their rows stay, `output_expired`); how many.
    async fn expire_command_output(
        &self,
        ended_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, StoreError>;
    /// Completes a `running` command and appends its `command` audit event; `None` when
    /// it is not running (or unknown).
    async fn finish_command(
        &self,
        id: &str,
        end: &CommandEnd,
    ) -> Result<Option<CommandRecord>, StoreError>;
    async fn get_command(&self, id: &str) -> Result<Option<CommandRecord>, StoreError>;
    /// A page of a sandbox's commands, newest first, and their total.
    async fn list_commands(
        &self,
        sandbox_id: &str,
        limit: u32,
        offset: u64,
    ) -> Result<(Vec<CommandRecord>, u64), StoreError>;
    /// Marks every `running` command `interrupted` (a controller restarted under them),
    /// appending a `command` audit event for each.
    async fn interrupt_running_commands(&self, now: DateTime<Utc>) -> Result<u64, StoreError>;

    async fn insert_certificate(&self, c: &CertRecord) -> Result<(), StoreError>;
    async fn get_certificate(&self, id: &str) -> Result<Option<CertRecord>, StoreError>;
    /// A page of certificates, newest first, and their total.
    async fn list_certificates(
        &self,
        limit: u32,
        offset: u64,
    ) -> Result<(Vec<CertRecord>, u64), StoreError>;
    /// Sets `revoked_at` (kept if already set); `None` when unknown.
    async fn revoke_certificate(
        &self,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<CertRecord>, StoreError>;
    /// Public keys of the sandbox's revoked certificates.
    async fn revoked_keys(&self, sandbox_id: &str) -> Result<Vec<String>, StoreError>;

    /// `Some` when this replica may run the loop's next tick.
    async fn try_lock_loop(&self, key: LoopKey) -> Result<Option<LoopLock>, StoreError>;
}

/// Opens the store named by `database_url` (or SQLite at `data_dir/fluid.db`) and runs
/// its migrations.
pub async fn open(
    database_url: Option<&str>,
    data_dir: &std::path::Path,
) -> anyhow::Result<std::sync::Arc<dyn Store>> {
    match database_url {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Ok(std::sync::Arc::new(PgStore::connect(url).await?))
        }
        Some(url) => Ok(std::sync::Arc::new(SqliteStore::connect_url(url).await?)),
        None => {
            // The database holds token hashes, commands' output and the audit trail:
            // the directory 0700 (or its packaged group's 0750), the files 0600.
            crate::support::private_fs::private_dir(data_dir)?;
            let path = data_dir.join("fluid.db");
            crate::support::private_fs::private_file(&path)?;
            let store = SqliteStore::open_file(&path).await?;
            for side in ["fluid.db-wal", "fluid.db-shm"] {
                let p = data_dir.join(side);
                if p.exists() {
                    crate::support::private_fs::private_file(&p)?;
                }
            }
            Ok(std::sync::Arc::new(store))
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
#[cfg(test)]
mod tests_egress;
#[cfg(test)]
mod tests_playbooks;
#[cfg(test)]
mod tests_pools;
#[cfg(test)]
mod tests_quotas;
#[cfg(test)]
mod tests_retention;
#[cfg(test)]
mod tests_snapshots;
#[cfg(test)]
mod tests_trust;
#[cfg(test)]
mod tests_trust_events;
