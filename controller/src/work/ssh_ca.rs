//! The SSH user certificate authority. One ed25519 key, kept in a 0600 file (created at
//! first start); every sandbox's sshd trusts its public key (`TrustedUserCAKeys`, given
//! at create). It signs short-lived certificates: for a host-agent's exec key (no
//! extensions: the agent runs commands, it needs no pty) and for people (`permit-pty`
//! only — no port, agent or X11 forwarding).
//!
//! Every certificate is bound to the sandbox it is for: its principals are
//! [`sandbox_principal`]s (`sbx:<sandbox id>:<user>`), never a bare user name. The golden
//! image's sshd accepts, for user `u`, only the principal `sbx:<its own id>:u`
//! (`AuthorizedPrincipalsCommand`, the id from this boot's SMBIOS), so a certificate for
//! one sandbox is refused by every other sandbox, and one for user `dev` does not log in
//! as `root`.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use russh::keys::ssh_key::certificate::{Builder, CertType};
use russh::keys::ssh_key::private::{Ed25519Keypair, KeypairData};
use russh::keys::ssh_key::{LineEnding, PrivateKey, PublicKey};

/// Shortest and longest certificate lifetimes.
pub const TTL_MIN: Duration = Duration::from_secs(60);
pub const TTL_MAX: Duration = Duration::from_secs(600);
/// Back-dating of `valid_after`, for clock skew between controller and sandbox.
pub const BACKDATE_SECS: u64 = 30;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("SSH CA key {path}: {message}")]
    Key { path: String, message: String },
    #[error("invalid public key: {0}")]
    BadPublicKey(String),
    #[error("certificate TTL must be {}-{} s", TTL_MIN.as_secs(), TTL_MAX.as_secs())]
    BadTtl,
    #[error("signing: {0}")]
    Sign(String),
}

/// What to certify.
#[derive(Debug, Clone)]
pub struct CertSpec<'a> {
    /// The subject's OpenSSH public key line.
    pub public_key: &'a str,
    /// Principals (never empty): [`sandbox_principal`]s, one per (sandbox, user).
    pub principals: &'a [String],
    pub ttl: Duration,
    pub key_id: &'a str,
    /// People get `permit-pty`; the agent gets no extensions.
    pub permit_pty: bool,
}

/// A signed certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCert {
    /// The OpenSSH certificate line.
    pub openssh: String,
    pub serial: u64,
    pub valid_after: DateTime<Utc>,
    pub valid_before: DateTime<Utc>,
}

pub struct SshCa {
    key: PrivateKey,
    public_line: String,
}

impl std::fmt::Debug for SshCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshCa")
            .field("public_key", &self.public_line)
            .finish_non_exhaustive()
    }
}

/// The certificate principal that lets `user` into sandbox `sandbox_id`, and only
/// there: `sbx:<sandbox id>:<user>` (what the golden image's `fluid-ssh-principals`
/// prints for that user on that sandbox).
pub fn sandbox_principal(sandbox_id: &str, user: &str) -> String {
    format!("sbx:{sandbox_id}:{user}")
}

/// Parses an OpenSSH public key line.
pub fn parse_public_key(line: &str) -> Result<PublicKey, CaError> {
    PublicKey::from_openssh(line.trim()).map_err(|e| CaError::BadPublicKey(e.to_string()))
}

impl SshCa {
    /// A fresh key in memory (tests).
    pub fn generate() -> Result<Self, CaError> {
        let seed: [u8; 32] = rand::random();
        let kp = Ed25519Keypair::from_seed(&seed);
        let key = PrivateKey::new(KeypairData::Ed25519(kp), "fluid-user-ca").map_err(|e| {
            CaError::Key {
                path: "(memory)".into(),
                message: e.to_string(),
            }
        })?;
        Self::from_key(key, "(memory)")
    }

    fn from_key(key: PrivateKey, path: &str) -> Result<Self, CaError> {
        let public_line = key.public_key().to_openssh().map_err(|e| CaError::Key {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        Ok(Self { key, public_line })
    }

    /// Reads the key at `path`, or creates it (0600; the directory 0700 if new).
    pub fn load_or_create(path: &Path) -> Result<Self, CaError> {
        let err = |message: String| CaError::Key {
            path: path.display().to_string(),
            message,
        };
        if path.exists() {
            let key = PrivateKey::read_openssh_file(path).map_err(|e| err(e.to_string()))?;
            if key.is_encrypted() {
                return Err(err("is encrypted".into()));
            }
            return Self::from_key(key, &path.display().to_string());
        }
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
            && !dir.exists()
        {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| err(format!("creating its directory: {e}")))?;
        }
        let ca = Self::generate()?;
        let pem = ca
            .key
            .to_openssh(LineEnding::LF)
            .map_err(|e| err(e.to_string()))?;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| err(format!("creating: {e}")))?;
        f.write_all(pem.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| err(format!("writing: {e}")))?;
        tracing::info!(path = %path.display(), "created the SSH user CA key");
        Ok(ca)
    }

    /// The CA's OpenSSH public key line.
    pub fn public_key(&self) -> &str {
        &self.public_line
    }

    /// Signs a user certificate: valid from 30 s ago until now + `ttl`, a random serial.
    pub fn sign(&self, spec: &CertSpec<'_>) -> Result<SignedCert, CaError> {
        if !(TTL_MIN..=TTL_MAX).contains(&spec.ttl) {
            return Err(CaError::BadTtl);
        }
        if spec.principals.is_empty() {
            return Err(CaError::Sign("no principals".into()));
        }
        let subject = parse_public_key(spec.public_key)?;
        let now = Utc::now().timestamp().max(0) as u64;
        let valid_after = now.saturating_sub(BACKDATE_SECS);
        let valid_before = now + spec.ttl.as_secs();
        let nonce: [u8; 16] = rand::random();
        // Below 2^63 so it round-trips through a signed database column.
        let serial = rand::random::<u64>() >> 1;
        let sign_err = |e: russh::keys::ssh_key::Error| CaError::Sign(e.to_string());
        let mut b = Builder::new(
            nonce.to_vec(),
            subject.key_data().clone(),
            valid_after,
            valid_before,
        )
        .map_err(sign_err)?;
        b.serial(serial).map_err(sign_err)?;
        b.cert_type(CertType::User).map_err(sign_err)?;
        b.key_id(spec.key_id).map_err(sign_err)?;
        for p in spec.principals {
            b.valid_principal(p.clone()).map_err(sign_err)?;
        }
        if spec.permit_pty {
            b.extension("permit-pty", "").map_err(sign_err)?;
        }
        let cert = b.sign(&self.key).map_err(sign_err)?;
        let to_time = |s: u64| {
            DateTime::<Utc>::from_timestamp(i64::try_from(s).unwrap_or(i64::MAX), 0)
                .unwrap_or_default()
        };
        Ok(SignedCert {
            openssh: cert.to_openssh().map_err(sign_err)?,
            serial,
            valid_after: to_time(valid_after),
            valid_before: to_time(valid_before),
        })
    }
}

#[cfg(test)]
mod tests {
    use russh::keys::ssh_key::{Certificate, HashAlg};

    use super::*;

    fn user_key() -> String {
        SshCa::generate().expect("key").public_key().to_owned()
    }

    #[test]
    fn certificates_verify_and_are_restricted() {
        let ca = SshCa::generate().expect("ca");
        let subject = user_key();
        let principals = vec!["root".to_owned(), "dev".to_owned()];
        let signed = ca
            .sign(&CertSpec {
                public_key: &subject,
                principals: &principals,
                ttl: Duration::from_secs(300),
                key_id: "CRT-test:alice",
                permit_pty: true,
            })
            .expect("signed");
        let cert = Certificate::from_openssh(&signed.openssh).expect("parses");
        let ca_fp = parse_public_key(ca.public_key())
            .expect("ca key")
            .fingerprint(HashAlg::Sha256);
        let now = Utc::now().timestamp() as u64;
        cert.validate_at(now, [&ca_fp])
            .expect("verifies against the CA");
        let other = parse_public_key(&user_key())
            .expect("key")
            .fingerprint(HashAlg::Sha256);
        assert!(cert.validate_at(now, [&other]).is_err());
        assert_eq!(cert.valid_principals(), principals.as_slice());
        assert_eq!(cert.cert_type(), CertType::User);
        assert_eq!(
            cert.valid_before() - cert.valid_after(),
            300 + BACKDATE_SECS
        );
        assert!(cert.valid_after() <= now - BACKDATE_SECS + 1);
        let ext: Vec<&String> = cert.extensions().keys().collect();
        assert_eq!(ext, ["permit-pty"]);
        assert!(cert.critical_options().is_empty());
        assert_eq!(cert.serial(), signed.serial);
        assert_eq!(
            cert.public_key(),
            parse_public_key(&subject).expect("subject").key_data()
        );
        // Expired after the TTL.
        assert!(cert.validate_at(now + 301, [&ca_fp]).is_err());
    }

    #[test]
    fn agent_certificates_have_no_extensions() {
        let ca = SshCa::generate().expect("ca");
        let signed = ca
            .sign(&CertSpec {
                public_key: &user_key(),
                principals: &["root".to_owned()],
                ttl: Duration::from_secs(300),
                key_id: "agent:kvm-1",
                permit_pty: false,
            })
            .expect("signed");
        let cert = Certificate::from_openssh(&signed.openssh).expect("parses");
        assert!(cert.extensions().is_empty());
    }

    #[test]
    fn bad_requests_are_refused() {
        let ca = SshCa::generate().expect("ca");
        let spec = |ttl, key: &'static str, principals: &'static [String]| CertSpec {
            public_key: key,
            principals,
            ttl,
            key_id: "x",
            permit_pty: false,
        };
        assert!(matches!(
            ca.sign(&spec(Duration::from_secs(3600), "ssh-ed25519 AAAA", &[])),
            Err(CaError::BadTtl)
        ));
        assert!(
            ca.sign(&spec(Duration::from_secs(300), "ssh-ed25519 AAAA", &[]))
                .is_err()
        );
    }

    #[test]
    fn the_key_file_is_created_private_and_reloaded() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("sub/ssh_user_ca");
        let a = SshCa::load_or_create(&path).expect("created");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = SshCa::load_or_create(&path).expect("reloaded");
        assert_eq!(a.public_key(), b.public_key());
        assert!(a.public_key().starts_with("ssh-ed25519 "));
    }
}
