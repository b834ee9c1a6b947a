//! Validated domain types for what crosses the controller ↔ agent wire (and the REST
//! edge, which reuses the same checks). A value of one of these types is known good.
//!
//! Each type has the one set of conversions to and from its wire message: `TryFrom` the
//! message where it is received, `From` it where it is sent. Both sides' services speak
//! these types; `pb` appears only at the edges (the controller's gRPC client, the
//! agent's gRPC handlers).

use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::pb;

/// Smallest and largest sandbox memory, in MiB.
pub const MEMORY_MB_MIN: u64 = 128;
pub const MEMORY_MB_MAX: u64 = 4 * 1024 * 1024;
/// Largest vCPU count for one sandbox.
pub const CPUS_MAX: u32 = 128;
/// Longest wait for an IP address the agent accepts.
pub const WAIT_FOR_IP_MAX_SECONDS: u32 = 600;

/// A field from the wire (or the REST edge) that is missing or out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ValidationError {
    pub field: &'static str,
    pub reason: String,
}

impl ValidationError {
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

impl From<ValidationError> for tonic::Status {
    fn from(e: ValidationError) -> Self {
        tonic::Status::invalid_argument(e.to_string())
    }
}

/// `SBX-` followed by 8 to 32 lowercase letters or digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SandboxId(String);

impl SandboxId {
    pub const PREFIX: &'static str = "SBX-";

    pub fn parse(field: &'static str, s: &str) -> Result<Self, ValidationError> {
        let rest = s.strip_prefix(Self::PREFIX).ok_or_else(|| {
            ValidationError::new(field, format!("{s:?} is not a sandbox id (SBX-…)"))
        })?;
        let ok_len = (8..=32).contains(&rest.len());
        let ok_chars = rest
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !ok_len || !ok_chars {
            return Err(ValidationError::new(
                field,
                format!("{s:?} is not a sandbox id (SBX- and 8-32 lowercase letters or digits)"),
            ));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for SandboxId {
    type Error = ValidationError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse("id", &s)
    }
}

impl From<SandboxId> for String {
    fn from(id: SandboxId) -> Self {
        id.0
    }
}

impl fmt::Display for SandboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A libvirt-safe name (domain, image, host): 1-63 characters of `[A-Za-z0-9_.-]`,
/// starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Name(String);

impl Name {
    pub fn parse(field: &'static str, s: &str) -> Result<Self, ValidationError> {
        if s.is_empty() {
            return Err(ValidationError::new(field, "must not be empty"));
        }
        if s.len() > 63 {
            return Err(ValidationError::new(field, "must be at most 63 characters"));
        }
        let first_ok = s.as_bytes()[0].is_ascii_alphanumeric();
        let all_ok = s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !first_ok || !all_ok {
            return Err(ValidationError::new(
                field,
                format!(
                    "{s:?} may hold only letters, digits, '-', '_' and '.', and must start with a letter or digit"
                ),
            ));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Name {
    type Error = ValidationError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse("name", &s)
    }
}

impl From<Name> for String {
    fn from(n: Name) -> Self {
        n.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Validates a vCPU count.
pub fn check_cpus(field: &'static str, cpus: u32) -> Result<u32, ValidationError> {
    if cpus == 0 || cpus > CPUS_MAX {
        return Err(ValidationError::new(
            field,
            format!("{cpus} is out of range (1-{CPUS_MAX})"),
        ));
    }
    Ok(cpus)
}

/// Validates a memory size in MiB.
pub fn check_memory_mb(field: &'static str, mb: u64) -> Result<u64, ValidationError> {
    if !(MEMORY_MB_MIN..=MEMORY_MB_MAX).contains(&mb) {
        return Err(ValidationError::new(
            field,
            format!("{mb} is out of range ({MEMORY_MB_MIN}-{MEMORY_MB_MAX} MiB)"),
        ));
    }
    Ok(mb)
}

/// What a sandbox needs from a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateSandbox {
    pub id: SandboxId,
    pub name: Name,
    pub image: Name,
    pub cpus: u32,
    pub memory_mb: u64,
    pub start: bool,
    /// OpenSSH public key lines of the user CAs the sandbox trusts.
    pub ssh_user_ca_keys: Vec<String>,
    /// What it may reach from its first packet (empty: sealed).
    pub egress: EgressPolicy,
    /// Fork: start from this snapshot's disk (a sandbox on the same host).
    pub from_snapshot: Option<SnapshotRef>,
    /// Live fork: start as this running sandbox (on the same host) is now, its memory
    /// and disk. Never together with `from_snapshot`.
    pub fork_of_running: Option<SandboxId>,
}

/// An OpenSSH public key line (`type base64 [comment]`), one line, at most 8 KiB.
pub fn check_ssh_public_key(field: &'static str, s: &str) -> Result<String, ValidationError> {
    let mut parts = s.split_whitespace();
    let kind = parts.next().unwrap_or_default();
    let blob = parts.next().unwrap_or_default();
    let kind_ok = kind.starts_with("ssh-") || kind.starts_with("ecdsa-") || kind.starts_with("sk-");
    let blob_ok = !blob.is_empty()
        && blob
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='));
    if s.len() > 8192 || s.contains(['\n', '\r', '\0']) || !kind_ok || !blob_ok {
        return Err(ValidationError::new(
            field,
            "not an OpenSSH public key line",
        ));
    }
    Ok(s.trim().to_owned())
}

impl TryFrom<pb::CreateSandboxRequest> for CreateSandbox {
    type Error = ValidationError;
    fn try_from(r: pb::CreateSandboxRequest) -> Result<Self, Self::Error> {
        Ok(Self {
            id: SandboxId::parse("id", &r.id)?,
            name: Name::parse("name", &r.name)?,
            image: Name::parse("image", &r.image)?,
            cpus: check_cpus("cpus", r.cpus)?,
            memory_mb: check_memory_mb("memory_mb", r.memory_mb)?,
            start: r.start,
            ssh_user_ca_keys: {
                if r.ssh_user_ca_keys.len() > 16 {
                    return Err(ValidationError::new("ssh_user_ca_keys", "at most 16 keys"));
                }
                r.ssh_user_ca_keys
                    .iter()
                    .map(|k| check_ssh_public_key("ssh_user_ca_keys", k))
                    .collect::<Result<_, _>>()?
            },
            egress: EgressPolicy::try_from(r.egress.unwrap_or_default())?,
            from_snapshot: r.from_snapshot.map(SnapshotRef::try_from).transpose()?,
            fork_of_running: match r.fork_of_running.as_str() {
                "" => None,
                id => Some(SandboxId::parse("fork_of_running", id)?),
            },
        })
        .and_then(|c: Self| {
            if c.from_snapshot.is_some() && c.fork_of_running.is_some() {
                return Err(ValidationError::new(
                    "fork_of_running",
                    "a create forks a snapshot or a running sandbox, not both",
                ));
            }
            Ok(c)
        })
    }
}

impl From<&CreateSandbox> for pb::CreateSandboxRequest {
    fn from(c: &CreateSandbox) -> Self {
        Self {
            id: c.id.to_string(),
            name: c.name.to_string(),
            image: c.image.to_string(),
            cpus: c.cpus,
            memory_mb: c.memory_mb,
            start: c.start,
            ssh_user_ca_keys: c.ssh_user_ca_keys.clone(),
            egress: Some(pb::EgressPolicy::from(&c.egress)),
            from_snapshot: c.from_snapshot.as_ref().map(pb::SnapshotRef::from),
            fork_of_running: c
                .fork_of_running
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
        }
    }
}

impl TryFrom<pb::SandboxRef> for SandboxId {
    type Error = ValidationError;
    fn try_from(r: pb::SandboxRef) -> Result<Self, Self::Error> {
        SandboxId::parse("id", &r.id)
    }
}

/// A stop request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopSandbox {
    pub id: SandboxId,
    pub force: bool,
    /// `None`: the agent's default grace period.
    pub timeout_seconds: Option<u32>,
}

impl TryFrom<pb::StopSandboxRequest> for StopSandbox {
    type Error = ValidationError;
    fn try_from(r: pb::StopSandboxRequest) -> Result<Self, Self::Error> {
        if r.timeout_seconds > WAIT_FOR_IP_MAX_SECONDS {
            return Err(ValidationError::new(
                "timeout_seconds",
                format!("at most {WAIT_FOR_IP_MAX_SECONDS}"),
            ));
        }
        Ok(Self {
            id: SandboxId::parse("id", &r.id)?,
            force: r.force,
            timeout_seconds: (r.timeout_seconds > 0).then_some(r.timeout_seconds),
        })
    }
}

/// A wait for a sandbox's IP address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitForIp {
    pub id: SandboxId,
    pub timeout_seconds: u32,
}

impl TryFrom<pb::WaitForIpRequest> for WaitForIp {
    type Error = ValidationError;
    fn try_from(r: pb::WaitForIpRequest) -> Result<Self, Self::Error> {
        if r.timeout_seconds > WAIT_FOR_IP_MAX_SECONDS {
            return Err(ValidationError::new(
                "timeout_seconds",
                format!("at most {WAIT_FOR_IP_MAX_SECONDS}"),
            ));
        }
        Ok(Self {
            id: SandboxId::parse("id", &r.id)?,
            timeout_seconds: r.timeout_seconds,
        })
    }
}

/// Observed sandbox state, as an agent reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ObservedState {
    Created,
    Running,
    Stopped,
    Paused,
    Error,
}

impl TryFrom<i32> for ObservedState {
    type Error = ValidationError;
    fn try_from(v: i32) -> Result<Self, ValidationError> {
        match pb::SandboxState::try_from(v) {
            Ok(pb::SandboxState::Created) => Ok(Self::Created),
            Ok(pb::SandboxState::Running) => Ok(Self::Running),
            Ok(pb::SandboxState::Stopped) => Ok(Self::Stopped),
            Ok(pb::SandboxState::Paused) => Ok(Self::Paused),
            Ok(pb::SandboxState::Error) => Ok(Self::Error),
            Ok(pb::SandboxState::Unspecified) | Err(_) => Err(ValidationError::new(
                "state",
                format!("unknown sandbox state {v}"),
            )),
        }
    }
}

impl From<ObservedState> for pb::SandboxState {
    fn from(s: ObservedState) -> Self {
        match s {
            ObservedState::Created => Self::Created,
            ObservedState::Running => Self::Running,
            ObservedState::Stopped => Self::Stopped,
            ObservedState::Paused => Self::Paused,
            ObservedState::Error => Self::Error,
        }
    }
}

/// How a sandbox's first start went (wire `start_path`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartPath {
    /// A cold boot of its image.
    Boot,
    /// Restored from a memory template of its image and shape.
    Restore,
    /// Resumed from the memory of the running sandbox it forks.
    Fork,
    /// Handed out from a warm pool.
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

    /// One of `boot`, `restore`, `fork`, `pool` (exactly).
    pub fn parse(field: &'static str, s: &str) -> Result<Self, ValidationError> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                ValidationError::new(
                    field,
                    format!("{s:?} is not a start path (boot, restore, fork or pool)"),
                )
            })
    }
}

impl fmt::Display for StartPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A sandbox as an agent reports it (validated on receipt by the controller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxInfo {
    pub id: SandboxId,
    pub name: Name,
    pub image: Name,
    pub cpus: u32,
    pub memory_mb: u64,
    pub state: ObservedState,
    pub mac_address: String,
    pub ip_address: Option<Ipv4Addr>,
    pub domain_uuid: String,
    pub network: String,
    pub error: Option<String>,
    /// How its first start went; `None` before it (or from an older agent).
    pub start_path: Option<StartPath>,
}

impl TryFrom<pb::Sandbox> for SandboxInfo {
    type Error = ValidationError;
    fn try_from(s: pb::Sandbox) -> Result<Self, Self::Error> {
        let ip_address = if s.ip_address.is_empty() {
            None
        } else {
            Some(s.ip_address.parse().map_err(|_| {
                ValidationError::new(
                    "ip_address",
                    format!("{:?} is not an IPv4 address", s.ip_address),
                )
            })?)
        };
        Ok(Self {
            id: SandboxId::parse("id", &s.id)?,
            name: Name::parse("name", &s.name)?,
            image: Name::parse("image", &s.image)?,
            cpus: s.cpus,
            memory_mb: s.memory_mb,
            state: ObservedState::try_from(s.state)?,
            mac_address: s.mac_address,
            ip_address,
            domain_uuid: s.domain_uuid,
            network: s.network,
            error: (!s.error.is_empty()).then_some(s.error),
            start_path: (!s.start_path.is_empty())
                .then(|| StartPath::parse("start_path", &s.start_path))
                .transpose()?,
        })
    }
}

/// Host capacity as an agent reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostStatus {
    pub host_name: String,
    pub agent_version: String,
    pub virt_type: String,
    pub cpus_total: u32,
    pub cpus_reserved: u32,
    pub memory_mb_total: u64,
    pub memory_mb_reserved: u64,
    pub memory_mb_free: u64,
    pub sandboxes: u32,
    pub images: Vec<String>,
    /// The warm pool, per image and shape.
    pub pools: Vec<PoolStatus>,
    /// A simulated host (scale tests): its sandboxes exist only in its agent's memory.
    pub simulated: bool,
}

/// One image and shape of a host's warm pool (see the proto's `PoolStatus`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStatus {
    pub image: String,
    pub cpus: u32,
    pub memory_mb: u64,
    pub size: u32,
    pub ready: u32,
    pub filling: u32,
    pub hits: u64,
    pub misses: u64,
}

impl TryFrom<pb::PoolStatus> for PoolStatus {
    type Error = ValidationError;
    fn try_from(p: pb::PoolStatus) -> Result<Self, Self::Error> {
        Name::parse("pools.image", &p.image)?;
        if p.cpus == 0 || p.memory_mb == 0 {
            return Err(ValidationError::new(
                "pools",
                "cpus and memory_mb must be positive",
            ));
        }
        Ok(Self {
            image: p.image,
            cpus: p.cpus,
            memory_mb: p.memory_mb,
            size: p.size,
            ready: p.ready,
            filling: p.filling,
            hits: p.hits,
            misses: p.misses,
        })
    }
}

impl From<PoolStatus> for pb::PoolStatus {
    fn from(p: PoolStatus) -> Self {
        Self {
            image: p.image,
            cpus: p.cpus,
            memory_mb: p.memory_mb,
            size: p.size,
            ready: p.ready,
            filling: p.filling,
            hits: p.hits,
            misses: p.misses,
        }
    }
}

impl TryFrom<pb::HostStatus> for HostStatus {
    type Error = ValidationError;
    fn try_from(s: pb::HostStatus) -> Result<Self, Self::Error> {
        if s.cpus_total == 0 {
            return Err(ValidationError::new("cpus_total", "must be positive"));
        }
        if s.memory_mb_total == 0 {
            return Err(ValidationError::new("memory_mb_total", "must be positive"));
        }
        Ok(Self {
            host_name: s.host_name,
            agent_version: s.agent_version,
            virt_type: s.virt_type,
            cpus_total: s.cpus_total,
            cpus_reserved: s.cpus_reserved,
            memory_mb_total: s.memory_mb_total,
            memory_mb_reserved: s.memory_mb_reserved,
            memory_mb_free: s.memory_mb_free,
            sandboxes: s.sandboxes,
            images: s.images,
            pools: s
                .pools
                .into_iter()
                .map(PoolStatus::try_from)
                .collect::<Result<_, _>>()?,
            simulated: s.simulated,
        })
    }
}

/// An id made of `prefix` and 8-32 lowercase letters or digits (`CMD-…`, `SES-…`).
pub fn check_prefixed_id(
    field: &'static str,
    s: &str,
    prefix: &str,
    what: &str,
) -> Result<(), ValidationError> {
    let ok = s.strip_prefix(prefix).is_some_and(|rest| {
        (8..=32).contains(&rest.len())
            && rest
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    });
    if !ok {
        return Err(ValidationError::new(
            field,
            format!("{s:?} is not a {what} id ({prefix} and 8-32 lowercase letters or digits)"),
        ));
    }
    Ok(())
}

/// A Unix user name: `[a-z_][a-z0-9_-]{0,31}`.
pub fn check_user(field: &'static str, s: &str) -> Result<String, ValidationError> {
    let ok = !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !ok {
        return Err(ValidationError::new(
            field,
            format!("{s:?} is not a user name ([a-z_][a-z0-9_-]{{0,31}})"),
        ));
    }
    Ok(s.to_owned())
}

/// An environment variable name: `[A-Za-z_][A-Za-z0-9_]*`, at most 128 characters.
pub fn check_env_name(field: &'static str, s: &str) -> Result<(), ValidationError> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !ok {
        return Err(ValidationError::new(
            field,
            format!("{s:?} is not an environment variable name ([A-Za-z_][A-Za-z0-9_]*)"),
        ));
    }
    Ok(())
}

/// An absolute, normalised path: starts with `/`, no `.` or `..` components, no empty
/// components (`//`), no trailing `/` (but for `/` itself), no NUL, at most 4096 bytes.
pub fn check_abs_path(field: &'static str, s: &str) -> Result<String, ValidationError> {
    let bad = |why: &str| Err(ValidationError::new(field, format!("{s:?}: {why}")));
    if s.len() > 4096 {
        return bad("longer than 4096 bytes");
    }
    if s.contains('\0') {
        return bad("contains NUL");
    }
    if !s.starts_with('/') {
        return bad("must be absolute");
    }
    if s != "/" {
        for part in s[1..].split('/') {
            match part {
                "" => return bad("must be normalised (no empty components or trailing '/')"),
                "." | ".." => return bad("must be normalised (no '.' or '..')"),
                _ => {}
            }
        }
    }
    Ok(s.to_owned())
}

pub mod egress;
pub mod exec;
pub mod image;
pub mod snapshot;
pub use egress::{
    Destination, EgressPolicy, EgressRule, EgressState, Protocol, SetEgressPolicy, check_domain,
    parse_cidr, parse_protocol,
};
pub use exec::{
    AttachOpen, COMMAND_MAX_BYTES, EXEC_TIMEOUT_MAX_SECONDS, Exec, ExecEvent, ExecExit,
    OUTPUT_CAP_MAX_BYTES, STDIN_MAX_BYTES, check_terminal_size,
};
pub use image::{ImageInfo, ImageKind};
pub use snapshot::{DiskState, SnapshotName, SnapshotRef};

#[cfg(test)]
mod tests;
