//! Validated domain types for what crosses the controller ↔ agent wire (and the REST
//! edge, which reuses the same checks). A value of one of these types is known good.

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
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create_req() -> pb::CreateSandboxRequest {
        pb::CreateSandboxRequest {
            id: "SBX-0123abcd".into(),
            name: "web-1".into(),
            image: "debian-12".into(),
            cpus: 1,
            memory_mb: 512,
            start: true,
        }
    }

    #[test]
    fn good_create_passes() {
        let c = CreateSandbox::try_from(create_req()).expect("valid");
        assert_eq!(c.id.as_str(), "SBX-0123abcd");
        assert_eq!(c.memory_mb, 512);
    }

    #[test]
    fn bad_ids_are_refused() {
        for id in [
            "",
            "SBX-",
            "SBX-short",
            "sbx-0123abcd",
            "SBX-0123ABCD",
            "SBX-0123abc/",
            "../../etc",
        ] {
            let r = pb::CreateSandboxRequest {
                id: id.into(),
                ..create_req()
            };
            let e = CreateSandbox::try_from(r).expect_err(id);
            assert_eq!(e.field, "id");
        }
    }

    #[test]
    fn bad_names_are_refused() {
        let long = "a".repeat(64);
        for name in [
            "",
            "-x",
            ".hidden",
            "a b",
            "a/b",
            "x;rm",
            long.as_str(),
            "ü",
        ] {
            let r = pb::CreateSandboxRequest {
                name: name.into(),
                ..create_req()
            };
            assert_eq!(CreateSandbox::try_from(r).expect_err(name).field, "name");
        }
    }

    #[test]
    fn sizes_are_bounded() {
        for (cpus, mem, field) in [
            (0, 512, "cpus"),
            (129, 512, "cpus"),
            (1, 0, "memory_mb"),
            (1, 1_000_000_000, "memory_mb"),
            (1, 64, "memory_mb"),
        ] {
            let r = pb::CreateSandboxRequest {
                cpus,
                memory_mb: mem,
                ..create_req()
            };
            assert_eq!(CreateSandbox::try_from(r).expect_err(field).field, field);
        }
    }

    #[test]
    fn unknown_state_is_refused() {
        assert!(ObservedState::try_from(0).is_err());
        assert!(ObservedState::try_from(99).is_err());
        assert_eq!(ObservedState::try_from(2), Ok(ObservedState::Running));
    }

    #[test]
    fn reported_ip_must_parse() {
        let s = pb::Sandbox {
            id: "SBX-0123abcd".into(),
            name: "n".into(),
            image: "i".into(),
            state: 2,
            ip_address: "not-an-ip".into(),
            ..Default::default()
        };
        assert_eq!(
            SandboxInfo::try_from(s).expect_err("ip").field,
            "ip_address"
        );
    }

    #[test]
    fn waits_are_bounded() {
        let r = pb::WaitForIpRequest {
            id: "SBX-0123abcd".into(),
            timeout_seconds: 100_000,
        };
        assert!(WaitForIp::try_from(r).is_err());
    }
}
