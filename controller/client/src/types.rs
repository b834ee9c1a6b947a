//! Request and response bodies of the REST API. Field names and shapes follow the
//! fluid-remote v1 contract; fields marked *new* are fluid's additions.
//! Requests reject unknown fields (the API answers 400).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Every error body: `{"error", "code", "details"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
    pub code: u16,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

/// `GET /v1/health`. Every field but `status` is optional, so older answers (and
/// older clients) still parse.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HealthResponse {
    /// "ok", or "degraded" with a 503.
    pub status: String,
    /// *new*: the failing part, when not ok.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// *new*: the store: "ok", or why it fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    /// *new*: the host-agents as the heartbeat last saw them (reported, never a reason
    /// for a 503).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<HealthHosts>,
    /// *new*: the controller's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// *new*: host-agent reachability in a health answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HealthHosts {
    /// Answering their heartbeats.
    pub online: u64,
    /// Missed `offline_after_missed_beats` heartbeats in a row.
    pub offline: u64,
    /// Registered, not yet heard from.
    #[serde(default)]
    pub unknown: u64,
    pub total: u64,
}

/// Sandbox states. Serialised in upper case (`RUNNING`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SandboxState {
    Created,
    Starting,
    Running,
    Stopped,
    Destroyed,
    Error,
}

impl SandboxState {
    pub const ALL: [SandboxState; 6] = [
        Self::Created,
        Self::Starting,
        Self::Running,
        Self::Stopped,
        Self::Destroyed,
        Self::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "CREATED",
            Self::Starting => "STARTING",
            Self::Running => "RUNNING",
            Self::Stopped => "STOPPED",
            Self::Destroyed => "DESTROYED",
            Self::Error => "ERROR",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s))
    }
}

impl std::fmt::Display for SandboxState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// *new*: how a sandbox's first start went. Serialised in lower case (`restore`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StartPath {
    /// A cold boot of its image.
    Boot,
    /// Restored from a memory template of its image and shape (fast start).
    Restore,
    /// A live fork: resumed from the memory of the running sandbox it forks.
    Fork,
    /// Handed out from a warm pool of started sandboxes.
    Pool,
}

impl StartPath {
    pub const ALL: [StartPath; 4] = [Self::Boot, Self::Restore, Self::Fork, Self::Pool];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Boot => "boot",
            Self::Restore => "restore",
            Self::Fork => "fork",
            Self::Pool => "pool",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

impl std::fmt::Display for StartPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A sandbox record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Sandbox {
    /// `SBX-…`
    pub id: String,
    /// `JOB-…`: the create request that made this sandbox.
    pub job_id: String,
    pub agent_id: String,
    /// The VM's name on its host.
    pub sandbox_name: String,
    /// The golden image / source VM it was cloned from.
    pub base_image: String,
    /// The libvirt network it is attached to.
    pub network: String,
    pub ip_address: Option<String>,
    pub state: SandboxState,
    pub ttl_seconds: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// *new*: the host that runs it.
    pub host_name: Option<String>,
    /// *new*
    pub cpu: u32,
    /// *new*
    pub memory_mb: u64,
    /// *new*: the sandbox is in read-only mode.
    #[serde(default)]
    pub read_only: bool,
    /// *new*: how its first start went: `boot` (cold boot), `restore` (from a memory
    /// template) or `pool` (from a warm pool). Absent while unknown: before its first
    /// start, or for a sandbox started before the controller recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_path: Option<StartPath>,
}

/// `POST /v1/sandboxes`
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSandboxRequest {
    pub source_vm_name: String,
    pub agent_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<i64>,
    /// Start the VM after defining it (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_start: Option<bool>,
    /// Wait until the VM has a DHCP lease and answer its IP (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_for_ip: Option<bool>,
}

/// `201` answer to `POST /v1/sandboxes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreateSandboxResponse {
    pub sandbox: Sandbox,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ListSandboxesResponse {
    pub sandboxes: Vec<Sandbox>,
    pub total: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GetSandboxResponse {
    pub sandbox: Sandbox,
    /// Present when `include_commands=true`: the sandbox's latest commands, newest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commands: Option<Vec<Command>>,
}

/// `DELETE /v1/sandboxes/{id}`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DestroySandboxResponse {
    pub state: SandboxState,
    pub base_image: String,
    pub sandbox_name: String,
    pub ttl_seconds: Option<i64>,
}

/// `POST /v1/sandboxes/{id}/start`
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartSandboxRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_for_ip: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StartSandboxResponse {
    pub ip_address: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StopSandboxResponse {
    pub sandbox: Sandbox,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SandboxIpResponse {
    pub ip_address: Option<String>,
}

/// A source VM / golden image on one host (`GET /v1/vms`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Vm {
    pub name: String,
    pub uuid: String,
    pub state: String,
    pub persistent: bool,
    pub disk_path: String,
    pub host_name: String,
    pub host_address: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HostError {
    pub host_name: String,
    pub host_address: String,
    pub error: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ListVmsResponse {
    pub vms: Vec<Vm>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_errors: Vec<HostError>,
}

/// Host states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HostState {
    /// Registered, not yet heard from.
    Unknown,
    Online,
    Offline,
}

/// *new*: a host-agent the controller schedules onto.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Host {
    pub name: String,
    /// `host:port` of the agent's gRPC endpoint.
    pub address: String,
    pub state: HostState,
    pub cpus_total: u32,
    /// vCPUs left before the over-commit ratio is reached.
    pub cpus_free: i64,
    pub memory_mb_total: u64,
    /// Memory not reserved by sandboxes.
    pub memory_mb_free: i64,
    /// Live sandboxes placed on this host.
    pub sandboxes: u64,
    pub last_seen: Option<DateTime<Utc>>,
    #[serde(default)]
    pub images: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// *new*: the host's warm pool as its last heartbeat reported it, one entry per
    /// image and shape (empty: no pool). Its members are not sandboxes: `cpus_free`,
    /// `memory_mb_free` and `sandboxes` leave them out, but the scheduler counts what
    /// they hold.
    #[serde(default)]
    pub pools: Vec<HostPool>,
    /// *new*: a simulated host (its agent's `[simulated]`, for control-plane scale
    /// tests): its sandboxes exist only in that agent's memory. False for every real
    /// host.
    #[serde(default)]
    pub simulated: bool,
}

/// *new*: one image and shape of a host's warm pool: sandboxes the agent restores
/// ahead of time and hands out on create (their `start_path` is `pool`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HostPool {
    pub image: String,
    /// vCPUs of each member.
    pub cpus: u32,
    /// Memory of each member.
    pub memory_mb: u64,
    /// Members the agent keeps ready (its configuration).
    pub size: u32,
    /// Members ready to be handed out now.
    pub ready: u32,
    /// Members being restored now.
    pub filling: u32,
    /// Since the agent started: creates of this image and shape served from the pool.
    pub hits: u64,
    /// Since the agent started: creates of this image and shape that found no member
    /// ready.
    pub misses: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ListHostsResponse {
    pub hosts: Vec<Host>,
    /// *new*: hosts in all (`hosts` is one page: `limit`, `offset`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
}

/// *new*: `POST /v1/hosts`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddHostRequest {
    pub name: String,
    /// `host:port` of the agent's gRPC endpoint; the agent's certificate must name `host`.
    pub address: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HostResponse {
    pub host: Host,
}

/// `POST /v1/sandboxes/{id}/run` and `/command`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunCommandRequest {
    /// Run by `/bin/sh -c`.
    pub command: String,
    /// Unix user (default `root`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Seconds before the command is killed with everything it started (its cgroup
    /// scope in the guest). Absent or 0: the controller's `[commands]
    /// default_timeout_secs` (600 by default); at most `max_timeout_secs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_sec: Option<u32>,
    /// Environment; names `[A-Za-z_][A-Za-z0-9_]*`, values passed literally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<std::collections::BTreeMap<String, String>>,
    /// *new*: absolute working directory (default: the user's home).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// *new*: given to the command on its standard input (UTF-8 text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
}

/// One command run in a sandbox, as audited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Command {
    /// `CMD-…`
    pub id: String,
    pub sandbox_id: String,
    pub command: String,
    /// The environment as a JSON object; secret-looking values are `***`.
    pub env_json: String,
    /// Output up to the controller's cap (invalid UTF-8 replaced).
    pub stdout: String,
    pub stderr: String,
    /// -1 while running, or when the command had no exit status.
    pub exit_code: i32,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    /// *new*: output was cut at the cap.
    #[serde(default)]
    pub truncated: bool,
    /// *new*: killed at its timeout.
    #[serde(default)]
    pub timed_out: bool,
    /// *new*
    #[serde(default)]
    pub user: String,
    /// *new*
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// *new*
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// *new*: `running completed failed lost interrupted denied`.
    #[serde(default)]
    pub status: String,
    /// *new*: what ran it: `command`, `file_read`, `file_write`, `file_edit`, `sshkey`, `revoke`.
    #[serde(default)]
    pub kind: String,
    /// *new*: the sandbox's `agent_id`.
    #[serde(default)]
    pub agent_id: String,
    /// *new*: why it failed, was denied or lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// *new*: the output is gone: the command ended longer ago than the controller's
    /// `[retention] command_output_days`. Its exit code stays, and the SHA-256 of its
    /// output stays in the audit trail.
    #[serde(default)]
    pub output_expired: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunCommandResponse {
    pub command: Command,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ListCommandsResponse {
    pub commands: Vec<Command>,
    pub total: u64,
}

/// *new*: a terminal size (`GET /v1/sandboxes/{id}/attach`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TerminalSize {
    pub cols: u32,
    pub rows: u32,
}

/// *new*: a text frame a client sends on an attach WebSocket (binary frames are stdin):
/// `{"resize":{"cols":N,"rows":M}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum AttachControl {
    Resize(TerminalSize),
}

/// *new*: how an interactive session ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AttachExit {
    /// The shell's exit status; -1 when it had none (hung up, connection lost).
    pub exit_code: i32,
    /// Why the session ended abnormally.
    #[serde(default)]
    pub error: Option<String>,
    /// `SES-…`: the session's audit record (in the sandbox's commands).
    #[serde(default)]
    pub session_id: String,
}

/// *new*: a text frame the server sends on an attach WebSocket (binary frames are
/// terminal output): `{"exit":{"exit_code":N,"error":…,"session_id":"SES-…"}}`, the
/// last frame before the close.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttachEvent {
    Exit(AttachExit),
}

/// *new*: one output chunk of a streamed command (SSE `stdout` / `stderr` events).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OutputChunk {
    pub command_id: String,
    /// The bytes: UTF-8 text, or base64 when `encoding` is `base64`.
    pub data: String,
    /// `utf-8` or `base64`.
    pub encoding: String,
}

/// *new*: SSE `started` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CommandStarted {
    pub command_id: String,
    pub sandbox_id: String,
    pub command: String,
    pub started_at: DateTime<Utc>,
}

/// *new*: `POST /v1/sandboxes/{id}/files/read`
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadFileRequest {
    pub path: String,
    /// Byte offset (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Bytes to read (default 1 MiB, at most 16 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReadFileResponse {
    pub path: String,
    pub content: String,
    /// The file's whole size in bytes.
    pub size: u64,
    /// More bytes follow the part returned.
    pub truncated: bool,
    /// `utf-8` or `base64` (when the bytes are not UTF-8).
    pub encoding: String,
}

/// *new*: `POST /v1/sandboxes/{id}/files/write`
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteFileRequest {
    pub path: String,
    pub content: String,
    /// `utf-8` (default) or `base64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<String>,
    /// Octal permission bits, e.g. `"0644"` (default: kept, or 0644 for a new file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WriteFileResponse {
    pub path: String,
    pub size: u64,
}

/// *new*: `POST /v1/sandboxes/{id}/files/edit`
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EditFileRequest {
    pub path: String,
    /// Must occur exactly once; empty: create the file (it must not exist).
    pub old_str: String,
    pub new_str: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EditFileResponse {
    pub path: String,
    /// Occurrences replaced (1; 0 when the file was created).
    pub replaced: u32,
}

/// `POST /v1/sandboxes/{id}/sshkey`
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddSshKeyRequest {
    pub public_key: String,
    pub username: String,
}

/// `POST /v1/access/request`
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessRequest {
    pub sandbox_id: String,
    pub user_id: String,
    /// The user's OpenSSH public key line.
    pub public_key: String,
    /// 1-10 (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_minutes: Option<u32>,
    /// *new*: the Unix user to log in as (default `root`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AccessResponse {
    pub certificate_id: String,
    /// The OpenSSH certificate (save as `<key>-cert.pub`).
    pub certificate: String,
    pub vm_ip_address: String,
    pub ssh_port: u16,
    pub username: String,
    pub valid_until: DateTime<Utc>,
    pub ttl_seconds: u64,
    pub connect_command: String,
    pub instructions: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CaPublicKeyResponse {
    pub public_key: String,
    pub usage: String,
}

/// An SSH certificate issued to a person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AccessCertificate {
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CertificateResponse {
    pub certificate: AccessCertificate,
    /// *new*, on DELETE: the revocation reached the sandbox's sshd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_applied: Option<bool>,
    /// *new*, on DELETE: why it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ListCertificatesResponse {
    pub certificates: Vec<AccessCertificate>,
    pub total: u64,
}
