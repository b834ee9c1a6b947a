//! Ids the controller makes, and the checks of ids callers send.

use std::fmt;

use fluid_proto::ValidationError;
use rand::Rng as _;

/// Longest `agent_id`.
pub const AGENT_ID_MAX: usize = 128;

/// `PREFIX` followed by 10 random lowercase letters and digits.
pub fn new_id(prefix: &str) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let mut s = String::with_capacity(prefix.len() + 10);
    s.push_str(prefix);
    for _ in 0..10 {
        s.push(char::from(CHARS[rng.random_range(0..CHARS.len())]));
    }
    s
}

/// An `agent_id` that [`check_agent_id`] refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("agent_id: {0}")]
pub struct InvalidAgentId(String);

/// Checks an `agent_id`: printable, not empty, at most [`AGENT_ID_MAX`] characters.
pub fn check_agent_id(s: &str) -> Result<(), InvalidAgentId> {
    if s.trim().is_empty() {
        return Err(InvalidAgentId("must not be empty".into()));
    }
    if s.len() > AGENT_ID_MAX || s.chars().any(char::is_control) {
        return Err(InvalidAgentId(format!(
            "at most {AGENT_ID_MAX} printable characters"
        )));
    }
    Ok(())
}

/// An id the controller makes: `PREFIX` and [`new_id`]'s 10 lowercase letters or
/// digits. Parsed once where it arrives (an HTTP path, a gRPC field), so the services
/// behind take a checked id; a malformed one is the same 400 / `InvalidArgument` as a
/// malformed sandbox id ([`fluid_proto::model::SandboxId`] is the model).
macro_rules! controller_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// A new random id.
            pub fn generate() -> Self {
                Self(new_id(Self::PREFIX))
            }

            /// `s` if it is `PREFIX` and 10 lowercase letters or digits.
            pub fn parse(field: &'static str, s: &str) -> Result<Self, ValidationError> {
                let ok = s.strip_prefix(Self::PREFIX).is_some_and(|r| {
                    r.len() == 10
                        && r.bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                });
                if ok {
                    Ok(Self(s.to_owned()))
                } else {
                    Err(ValidationError::new(
                        field,
                        format!(concat!("{:?} is not ", $what, " (", $prefix, "xxxxxxxxxx)"), s),
                    ))
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> Self {
                id.0
            }
        }
    };
}

controller_id!(
    /// An approval request: `APR-…`.
    ApprovalId,
    "APR-",
    "an approval id"
);

controller_id!(
    /// An Ansible job (a playbook run or a verify): `JOB-…`. Not a sandbox's
    /// [`LegacyJobId`], which only shares the prefix.
    JobId,
    "JOB-",
    "a job id"
);

/// A sandbox's `job_id` (the wire name, kept from fluid-remote v1): `JOB-…`, a label
/// of the create request that made the sandbox. It is not an Ansible job ([`JobId`]):
/// the two share the prefix and nothing else. Opaque text: the controller makes it,
/// stores it and compares it (the sandbox list's `job_id` filter), never looks it up.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LegacyJobId(String);

impl LegacyJobId {
    pub const PREFIX: &'static str = "JOB-";

    /// A new random one, for a sandbox being created.
    pub fn generate() -> Self {
        Self(new_id(Self::PREFIX))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// As stored, or as a list filter asks for it.
impl From<String> for LegacyJobId {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl From<&str> for LegacyJobId {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl From<LegacyJobId> for String {
    fn from(id: LegacyJobId) -> Self {
        id.0
    }
}

impl fmt::Display for LegacyJobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controller_ids_parse_what_they_generate_and_refuse_the_rest() {
        let a = ApprovalId::generate();
        assert_eq!(ApprovalId::parse("id", a.as_str()), Ok(a.clone()));
        assert_eq!(a.to_string(), a.as_str());
        let j = JobId::generate();
        assert_eq!(JobId::parse("job_id", j.as_str()), Ok(j));
        for bad in [
            "",
            "APR-",
            "APR-abc",
            "APR-ABCDEFGHIJ",
            "apr-abcdefghij",
            "APR-abcdefghijk",
        ] {
            assert!(ApprovalId::parse("id", bad).is_err(), "{bad}");
        }
        assert!(JobId::parse("job_id", "APR-abcdefghij").is_err());
        assert_eq!(
            ApprovalId::parse("id", "x").map_err(|e| e.to_string()),
            Err("id: \"x\" is not an approval id (APR-xxxxxxxxxx)".to_owned())
        );
        assert_eq!(
            JobId::parse("job_id", "JOB-1").map_err(|e| e.to_string()),
            Err("job_id: \"JOB-1\" is not a job id (JOB-xxxxxxxxxx)".to_owned())
        );
    }
}
