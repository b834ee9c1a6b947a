//! Row shapes and SQL shared by both dialects. The statements use `$N` placeholders,
//! `ON CONFLICT` and `RETURNING`, which SQLite and PostgreSQL both understand; what
//! differs (locking, column types) lives in each dialect's file and migrations.

use chrono::{DateTime, Utc};
use fluid_client::types::{HostState, SandboxState, StartPath};
use fluid_proto::model::PoolStatus;
use sqlx::types::Json;

use super::{HostRecord, SandboxRecord, StoreError};

pub(super) const UPSERT_HOST: &str = "INSERT INTO hosts (name, address, state, created_at) VALUES ($1, $2, 'UNKNOWN', $3) \
     ON CONFLICT (name) DO UPDATE SET address = excluded.address";

/// A host row's columns, in [`HostRow`] order.
macro_rules! host_columns {
    () => {
        "name, address, state, cpus_total, memory_mb_total, images, agent_version, last_seen, \
         missed_beats, last_error, ssh_public_key, pools, simulated"
    };
}

pub(super) const INSERT_HOST: &str = concat!(
    "INSERT INTO hosts (name, address, state, created_at) VALUES ($1, $2, 'UNKNOWN', $3) RETURNING ",
    host_columns!()
);

pub(super) const LIST_HOSTS: &str =
    concat!("SELECT ", host_columns!(), " FROM hosts ORDER BY name");

pub(super) const HOST_BY_NAME: &str =
    concat!("SELECT ", host_columns!(), " FROM hosts WHERE name = $1");

/// PostgreSQL: the same, locking the row until the transaction ends.
pub(super) const HOST_BY_NAME_FOR_UPDATE: &str = concat!(
    "SELECT ",
    host_columns!(),
    " FROM hosts WHERE name = $1 FOR UPDATE"
);

pub(super) const RECORD_BEAT: &str = "UPDATE hosts SET state = 'ONLINE', cpus_total = $2, memory_mb_total = $3, images = $4, \
     agent_version = $5, last_seen = $6, missed_beats = 0, last_error = NULL, ssh_public_key = $7, pools = $8, simulated = $9 WHERE name = $1";

pub(super) const MISSED_BEAT: &str = "UPDATE hosts SET missed_beats = missed_beats + 1, last_error = $2, \
     state = CASE WHEN missed_beats + 1 >= $3 THEN 'OFFLINE' ELSE state END WHERE name = $1";

pub(super) const HOST_USAGE: &str = "SELECT host_name, CAST(COALESCE(SUM(cpu), 0) AS BIGINT) AS cpus, \
     CAST(COALESCE(SUM(memory_mb), 0) AS BIGINT) AS memory_mb, COUNT(*) AS sandboxes FROM sandboxes \
     WHERE host_name IS NOT NULL AND state IN ('CREATED', 'STARTING', 'RUNNING', 'STOPPED') GROUP BY host_name";

/// The live sandboxes an owner (`agent_id`) holds.
pub(super) const OWNED_LIVE: &str = "SELECT COUNT(*) FROM sandboxes WHERE agent_id = $1 \
     AND state IN ('CREATED', 'STARTING', 'RUNNING', 'STOPPED')";

pub(super) const ONE_HOST_USAGE: &str = "SELECT CAST(COALESCE(SUM(cpu), 0) AS BIGINT) AS cpus, \
     CAST(COALESCE(SUM(memory_mb), 0) AS BIGINT) AS memory_mb, COUNT(*) AS sandboxes FROM sandboxes \
     WHERE host_name = $1 AND state IN ('CREATED', 'STARTING', 'RUNNING', 'STOPPED')";

/// A sandbox row's columns, in [`SandboxRow`] order.
macro_rules! sandbox_columns {
    () => {
        "id, job_id, agent_id, sandbox_name, base_image, network, ip_address, state, ttl_seconds, \
         host_name, cpu, memory_mb, created_at, updated_at, error, read_only, start_path"
    };
}
pub(super) use sandbox_columns;

pub(super) const INSERT_SANDBOX: &str = concat!(
    "INSERT INTO sandboxes (id, job_id, agent_id, sandbox_name, base_image, network, ip_address, state, \
     ttl_seconds, host_name, cpu, memory_mb, created_at, updated_at, error) \
     VALUES ($1, $2, $3, $4, $5, '', NULL, 'CREATED', $6, $7, $8, $9, $10, $10, NULL) RETURNING ",
    sandbox_columns!()
);

pub(super) const GET_SANDBOX: &str = concat!(
    "SELECT ",
    sandbox_columns!(),
    " FROM sandboxes WHERE id = $1"
);

pub(super) const LIST_SANDBOXES: &str = concat!(
    "SELECT ",
    sandbox_columns!(),
    " FROM sandboxes WHERE ($1 IS NULL OR agent_id = $1) AND ($2 IS NULL OR job_id = $2) AND ($3 IS NULL OR base_image = $3) \
     AND ($4 IS NULL OR state = $4) AND ($5 IS NULL OR sandbox_name = $5) \
     ORDER BY created_at DESC, id LIMIT $6 OFFSET $7"
);

pub(super) const COUNT_SANDBOXES: &str = "SELECT COUNT(*) FROM sandboxes WHERE ($1 IS NULL OR agent_id = $1) AND ($2 IS NULL OR job_id = $2) \
     AND ($3 IS NULL OR base_image = $3) AND ($4 IS NULL OR state = $4) AND ($5 IS NULL OR sandbox_name = $5)";

pub(super) const SANDBOXES_ON_HOST: &str = concat!(
    "SELECT ",
    sandbox_columns!(),
    " FROM sandboxes WHERE host_name = $1"
);

pub(super) const SANDBOXES_WITH_TTL: &str = concat!(
    "SELECT ",
    sandbox_columns!(),
    " FROM sandboxes WHERE ttl_seconds IS NOT NULL AND state <> 'DESTROYED'"
);

pub(super) const UPDATE_SANDBOX: &str = concat!(
    "UPDATE sandboxes SET state = COALESCE($2, state), \
     ip_address = CASE WHEN $3 THEN $4 ELSE ip_address END, network = COALESCE($5, network), \
     error = CASE WHEN $6 THEN $7 ELSE error END, updated_at = $8, \
     start_path = COALESCE($10, start_path) \
     WHERE id = $1 AND ($9 IS NULL OR state = $9) RETURNING ",
    sandbox_columns!()
);

#[derive(Debug, sqlx::FromRow)]
pub(super) struct HostRow {
    name: String,
    address: String,
    state: String,
    cpus_total: i64,
    memory_mb_total: i64,
    images: Json<Vec<String>>,
    agent_version: Option<String>,
    last_seen: Option<DateTime<Utc>>,
    missed_beats: i64,
    last_error: Option<String>,
    ssh_public_key: Option<String>,
    /// JSON array of [`PoolStatus`]; NULL: no pool.
    pools: Option<String>,
    simulated: bool,
}

/// The `pools` column of a beat: NULL when the host has no pool.
pub(super) fn pools_json(pools: &[PoolStatus]) -> Option<String> {
    if pools.is_empty() {
        return None;
    }
    serde_json::to_string(pools)
        .inspect_err(|e| tracing::warn!(error = %e, "the warm pool report cannot be stored"))
        .ok()
}

/// A `pools` column as read: what cannot be read is no pool (with a warning), so one
/// bad value never fails a listing.
fn read_pools(host: &str, text: Option<&str>) -> Vec<PoolStatus> {
    let Some(text) = text else {
        return Vec::new();
    };
    serde_json::from_str(text).unwrap_or_else(|e| {
        tracing::warn!(%host, error = %e, "the stored warm pool report is unreadable; read as none");
        Vec::new()
    })
}

impl TryFrom<HostRow> for HostRecord {
    type Error = StoreError;
    fn try_from(r: HostRow) -> Result<Self, StoreError> {
        let state = match r.state.as_str() {
            "UNKNOWN" => HostState::Unknown,
            "ONLINE" => HostState::Online,
            "OFFLINE" => HostState::Offline,
            other => {
                return Err(StoreError::Corrupt(format!(
                    "host {}: state {other:?}",
                    r.name
                )));
            }
        };
        let pools = read_pools(&r.name, r.pools.as_deref());
        Ok(Self {
            name: r.name,
            address: r.address,
            state,
            cpus_total: u32::try_from(r.cpus_total).unwrap_or(0),
            memory_mb_total: u64::try_from(r.memory_mb_total).unwrap_or(0),
            images: r.images.0,
            agent_version: r.agent_version,
            last_seen: r.last_seen,
            missed_beats: u32::try_from(r.missed_beats).unwrap_or(u32::MAX),
            last_error: r.last_error,
            ssh_public_key: r.ssh_public_key,
            pools,
            simulated: r.simulated,
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(super) struct UsageRow {
    pub host_name: Option<String>,
    pub cpus: i64,
    pub memory_mb: i64,
    pub sandboxes: i64,
}

#[derive(Debug, sqlx::FromRow)]
pub(super) struct OneUsageRow {
    pub cpus: i64,
    pub memory_mb: i64,
    pub sandboxes: i64,
}

impl From<OneUsageRow> for super::HostUsage {
    fn from(r: OneUsageRow) -> Self {
        Self {
            cpus: r.cpus.max(0) as u64,
            memory_mb: r.memory_mb.max(0) as u64,
            sandboxes: r.sandboxes.max(0) as u64,
        }
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(super) struct SandboxRow {
    id: String,
    job_id: String,
    agent_id: String,
    sandbox_name: String,
    base_image: String,
    network: String,
    ip_address: Option<String>,
    state: String,
    ttl_seconds: Option<i64>,
    host_name: Option<String>,
    cpu: i64,
    memory_mb: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    error: Option<String>,
    read_only: bool,
    start_path: Option<String>,
}

impl TryFrom<SandboxRow> for SandboxRecord {
    type Error = StoreError;
    fn try_from(r: SandboxRow) -> Result<Self, StoreError> {
        let state = SandboxState::parse(&r.state)
            .ok_or_else(|| StoreError::Corrupt(format!("sandbox {}: state {:?}", r.id, r.state)))?;
        let start_path = r
            .start_path
            .map(|p| {
                StartPath::parse(&p).ok_or_else(|| {
                    StoreError::Corrupt(format!("sandbox {}: start_path {p:?}", r.id))
                })
            })
            .transpose()?;
        Ok(Self {
            id: r.id,
            legacy_job_id: r.job_id.into(),
            agent_id: r.agent_id,
            name: r.sandbox_name,
            image: r.base_image,
            network: r.network,
            ip_address: r.ip_address,
            state,
            ttl_seconds: r.ttl_seconds,
            host_name: r.host_name,
            cpus: u32::try_from(r.cpu).unwrap_or(0),
            memory_mb: u64::try_from(r.memory_mb).unwrap_or(0),
            created_at: r.created_at,
            updated_at: r.updated_at,
            error: r.error,
            read_only: r.read_only,
            start_path,
        })
    }
}

pub(super) fn sandboxes(rows: Vec<SandboxRow>) -> Result<Vec<SandboxRecord>, StoreError> {
    rows.into_iter().map(SandboxRecord::try_from).collect()
}

pub(super) fn hosts(rows: Vec<HostRow>) -> Result<Vec<HostRecord>, StoreError> {
    rows.into_iter().map(HostRecord::try_from).collect()
}

/// Maps an insert failure: a unique violation is a conflict on `what`.
pub(super) fn unique_or(e: sqlx::Error, what: impl FnOnce() -> String) -> StoreError {
    if let sqlx::Error::Database(db) = &e
        && db.is_unique_violation()
    {
        return StoreError::Conflict(what());
    }
    e.into()
}
