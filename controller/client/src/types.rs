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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HealthResponse {
    /// "ok", or "degraded" with a 503.
    pub status: String,
    /// *new*: the failing part, when not ok.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
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
    /// Present when `include_commands=true` (filled once the exec API exists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commands: Option<Vec<serde_json::Value>>,
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
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ListHostsResponse {
    pub hosts: Vec<Host>,
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
