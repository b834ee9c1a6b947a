//! Running commands in sandboxes over SSH.
//!
//! - [`backend`]: how a command reaches a guest ([`backend::ExecBackend`]): over SSH on
//!   a real host, in memory on a simulated one ([`simulated`]).
//! - [`AgentKey`]: the agent's ed25519 key, made at start and kept in memory only; the
//!   controller signs short-lived OpenSSH certificates for it (principal `root`), which
//!   arrive with each Exec and are used when a connection must be (re)made.
//! - [`pool`]: a few multiplexed SSH connections per sandbox, shared by every command
//!   (a channel sshd refuses goes to another connection); host keys are trusted on first
//!   use ([`hostkey`]).
//! - the wrapper each command runs in, a guest script (`fluid_proto::guest::wrapper`:
//!   literal env, user, workdir, a cgroup of its own and its process group, for the
//!   timeout kill).
//! - [`run`]: one command on one channel: stdin, streamed output with per-stream caps,
//!   timeout (the cgroup is SIGKILLed), exactly one exit event
//!   (`fluid_proto::model::ExecEvent`) whose error names the cause.
//! - [`shell`]: an interactive shell on a PTY on one channel (Attach): stdin, resizes,
//!   terminal output, exactly one exit; closing the input hangs up.

pub mod backend;
pub mod hostkey;
pub mod pool;
pub mod run;
pub mod shell;
pub mod simulated;

use std::sync::Arc;

use russh::keys::PrivateKey;
use russh::keys::ssh_key::private::Ed25519Keypair;

use crate::error::ServiceError;

/// The agent's SSH identity for exec.
#[derive(Clone)]
pub struct AgentKey {
    key: Arc<PrivateKey>,
    public_line: String,
}

impl std::fmt::Debug for AgentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentKey")
            .field("public", &self.public_line)
            .finish_non_exhaustive()
    }
}

impl AgentKey {
    /// A fresh ed25519 key (never written anywhere).
    pub fn generate(comment: &str) -> Result<Self, ExecError> {
        let seed: [u8; 32] = rand::random();
        let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
        key.set_comment(comment);
        let public_line = key
            .public_key()
            .to_openssh()
            .map_err(|e| ExecError::Internal(format!("encoding the agent's public key: {e}")))?;
        Ok(Self {
            key: Arc::new(key),
            public_line,
        })
    }

    /// The OpenSSH public key line (`ssh-ed25519 AAAA… comment`).
    pub fn public_openssh(&self) -> &str {
        &self.public_line
    }

    pub(crate) fn private(&self) -> Arc<PrivateKey> {
        self.key.clone()
    }
}

/// Why a command could not be started; [`ServiceError`] gives each a status code.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ExecError {
    /// The certificate in the request cannot be used (unparseable, not for this
    /// agent's key).
    #[error("{0}")]
    BadCertificate(String),
    /// The guest's sshd refused the certificate.
    #[error("{0}")]
    AuthRejected(String),
    /// The guest's sshd refused a channel request (a PTY for a certificate without
    /// `permit-pty`, say).
    #[error("{0}")]
    Refused(String),
    /// The guest presented a host key other than the one remembered.
    #[error("{0}")]
    HostKeyChanged(String),
    /// The guest's sshd cannot be reached or the connection failed.
    #[error("{0}")]
    Unreachable(String),
    /// Too many commands at once (the agent's limit per sandbox, or sshd kept refusing
    /// channels); retry later.
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Internal(String),
}

impl From<ExecError> for ServiceError {
    fn from(e: ExecError) -> Self {
        match e {
            ExecError::BadCertificate(m) => ServiceError::InvalidArgument(m),
            ExecError::AuthRejected(m) | ExecError::Refused(m) => ServiceError::PermissionDenied(m),
            ExecError::HostKeyChanged(m) => ServiceError::FailedPrecondition(m),
            ExecError::Unreachable(m) => ServiceError::Unavailable(m),
            ExecError::Busy(m) => ServiceError::ResourceExhausted(m),
            ExecError::Internal(m) => ServiceError::Internal(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_ed25519_and_fresh() {
        let a = AgentKey::generate("fluid-agent@kvm-1").expect("key");
        let b = AgentKey::generate("fluid-agent@kvm-1").expect("key");
        assert!(a.public_openssh().starts_with("ssh-ed25519 AAAA"));
        assert!(a.public_openssh().ends_with(" fluid-agent@kvm-1"));
        assert_ne!(a.public_openssh(), b.public_openssh());
        let parsed =
            russh::keys::PublicKey::from_openssh(a.public_openssh()).expect("valid OpenSSH line");
        assert_eq!(parsed.key_data(), a.private().public_key().key_data());
    }
}
