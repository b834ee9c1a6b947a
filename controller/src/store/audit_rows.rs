//! SQL and row shapes of the audit tables (commands, access certificates), shared by
//! both dialects like [`super::rows`].

use chrono::{DateTime, Utc};
use sqlx::types::Json;

use super::{CertRecord, CommandRecord, CommandStatus, StoreError};

macro_rules! command_columns {
    () => {
        "id, sandbox_id, agent_id, kind, command, user_name, workdir, env_json, status, stdout, stderr, \
         exit_code, timed_out, truncated, error, started_at, ended_at, duration_ms, output_expired"
    };
}

pub(super) const INSERT_COMMAND: &str = "INSERT INTO commands (id, sandbox_id, agent_id, kind, command, user_name, workdir, env_json, status, \
     stdout, stderr, exit_code, timed_out, truncated, error, started_at, ended_at, duration_ms) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)";

pub(super) const FINISH_COMMAND: &str = concat!(
    "UPDATE commands SET status = $2, stdout = $3, stderr = $4, exit_code = $5, timed_out = $6, \
     truncated = $7, error = $8, ended_at = $9, duration_ms = $10 WHERE id = $1 AND status = 'running' \
     RETURNING ",
    command_columns!()
);

/// `[retention] command_output_days`: empties the output of the oldest ended commands
/// (a batch at a time).
pub(super) const EXPIRE_COMMAND_OUTPUT: &str = "UPDATE commands SET stdout = '', stderr = '', \
     output_expired = TRUE WHERE id IN (SELECT id FROM commands WHERE ended_at IS NOT NULL \
     AND ended_at < $1 AND NOT output_expired ORDER BY ended_at LIMIT $2)";

pub(super) const GET_COMMAND: &str = concat!(
    "SELECT ",
    command_columns!(),
    " FROM commands WHERE id = $1"
);

pub(super) const LIST_COMMANDS: &str = concat!(
    "SELECT ",
    command_columns!(),
    " FROM commands WHERE sandbox_id = $1 ORDER BY started_at DESC, id DESC LIMIT $2 OFFSET $3"
);

pub(super) const COUNT_COMMANDS: &str = "SELECT COUNT(*) FROM commands WHERE sandbox_id = $1";

/// Returns the rows, for their audit events.
pub(super) const INTERRUPT_RUNNING: &str = concat!(
    "UPDATE commands SET status = 'interrupted', ended_at = $1, \
     error = 'the controller restarted while the command ran' WHERE status = 'running' RETURNING ",
    command_columns!()
);

macro_rules! cert_columns {
    () => {
        "id, sandbox_id, user_id, public_key, principals, serial, valid_after, valid_until, created_at, revoked_at"
    };
}

pub(super) const INSERT_CERT: &str = "INSERT INTO access_certificates (id, sandbox_id, user_id, public_key, principals, serial, \
     valid_after, valid_until, created_at, revoked_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

pub(super) const GET_CERT: &str = concat!(
    "SELECT ",
    cert_columns!(),
    " FROM access_certificates WHERE id = $1"
);

pub(super) const LIST_CERTS: &str = concat!(
    "SELECT ",
    cert_columns!(),
    " FROM access_certificates ORDER BY created_at DESC, id DESC LIMIT $1 OFFSET $2"
);

pub(super) const COUNT_CERTS: &str = "SELECT COUNT(*) FROM access_certificates";

pub(super) const REVOKE_CERT: &str = concat!(
    "UPDATE access_certificates SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1 RETURNING ",
    cert_columns!()
);

pub(super) const REVOKED_KEYS: &str = "SELECT DISTINCT public_key FROM access_certificates \
     WHERE sandbox_id = $1 AND revoked_at IS NOT NULL ORDER BY public_key";

#[derive(Debug, sqlx::FromRow)]
pub(super) struct CommandRow {
    id: String,
    sandbox_id: String,
    agent_id: String,
    kind: String,
    command: String,
    user_name: String,
    workdir: Option<String>,
    env_json: String,
    status: String,
    stdout: String,
    stderr: String,
    exit_code: Option<i64>,
    timed_out: bool,
    truncated: bool,
    error: Option<String>,
    started_at: DateTime<Utc>,
    ended_at: Option<DateTime<Utc>>,
    duration_ms: Option<i64>,
    output_expired: bool,
}

impl TryFrom<CommandRow> for CommandRecord {
    type Error = StoreError;
    fn try_from(r: CommandRow) -> Result<Self, StoreError> {
        let status = CommandStatus::parse(&r.status).ok_or_else(|| {
            StoreError::Corrupt(format!("command {}: status {:?}", r.id, r.status))
        })?;
        Ok(Self {
            id: r.id,
            sandbox_id: r.sandbox_id,
            agent_id: r.agent_id,
            kind: r.kind,
            command: r.command,
            user: r.user_name,
            workdir: r.workdir,
            env_json: r.env_json,
            status,
            stdout: r.stdout,
            stderr: r.stderr,
            exit_code: r.exit_code.and_then(|c| i32::try_from(c).ok()),
            timed_out: r.timed_out,
            truncated: r.truncated,
            error: r.error,
            started_at: r.started_at,
            ended_at: r.ended_at,
            duration_ms: r.duration_ms.and_then(|d| u64::try_from(d).ok()),
            output_expired: r.output_expired,
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(super) struct CertRow {
    id: String,
    sandbox_id: String,
    user_id: String,
    public_key: String,
    principals: Json<Vec<String>>,
    serial: i64,
    valid_after: DateTime<Utc>,
    valid_until: DateTime<Utc>,
    created_at: DateTime<Utc>,
    revoked_at: Option<DateTime<Utc>>,
}

impl TryFrom<CertRow> for CertRecord {
    type Error = StoreError;
    fn try_from(r: CertRow) -> Result<Self, StoreError> {
        Ok(Self {
            serial: u64::try_from(r.serial)
                .map_err(|_| StoreError::Corrupt(format!("certificate {}: serial", r.id)))?,
            id: r.id,
            sandbox_id: r.sandbox_id,
            user_id: r.user_id,
            public_key: r.public_key,
            principals: r.principals.0,
            valid_after: r.valid_after,
            valid_until: r.valid_until,
            created_at: r.created_at,
            revoked_at: r.revoked_at,
        })
    }
}
