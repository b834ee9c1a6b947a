//! A sandbox job's SSH identity: a fresh ed25519 key in the job's private temp dir and
//! a short-lived user certificate for it (principal `sbx:<sandbox id>:root`, no
//! extensions) from the controller's SSH user CA, valid on the job's sandbox only. The
//! certificate is renewed
//! while the job runs (ssh reads it at every new connection), so no certificate lives
//! longer than [`CERT_TTL`] and a long job still connects.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use russh::keys::ssh_key::private::{Ed25519Keypair, KeypairData};
use russh::keys::ssh_key::{LineEnding, PrivateKey};

use crate::support::atomic::write_atomic;
use crate::work::ssh_ca::{CertSpec, SshCa, sandbox_principal};

/// Lifetime of each certificate.
pub const CERT_TTL: Duration = Duration::from_secs(600);
/// How often the certificate is replaced by a fresh one.
pub const RENEW_EVERY: Duration = Duration::from_secs(240);

/// The key and certificate files of one job.
#[derive(Debug, Clone)]
pub struct JobKey {
    pub key_path: PathBuf,
    pub cert_path: PathBuf,
    public: String,
    key_id: String,
    /// `sbx:<sandbox id>:root`: the certificate opens the job's sandbox only.
    principals: Vec<String>,
}

impl JobKey {
    /// Creates a key in `dir` (which only the controller can read) and signs its
    /// first certificate, for root on sandbox `sandbox_id` only.
    pub fn create(dir: &Path, ca: &SshCa, job_id: &str, sandbox_id: &str) -> anyhow::Result<Self> {
        let seed: [u8; 32] = rand::random();
        let key = PrivateKey::new(
            KeypairData::Ed25519(Ed25519Keypair::from_seed(&seed)),
            format!("fluid-job-{job_id}"),
        )?;
        let key_path = dir.join("id_ed25519");
        let pem = key.to_openssh(LineEnding::LF)?;
        write_atomic(&key_path, pem.as_bytes(), 0o600)?;
        let this = Self {
            cert_path: dir.join("id_ed25519-cert.pub"),
            key_path,
            public: key.public_key().to_openssh()?,
            key_id: format!("job:{job_id}"),
            principals: vec![sandbox_principal(sandbox_id, "root")],
        };
        this.renew(ca)?;
        Ok(this)
    }

    /// Signs a fresh certificate and puts it in place.
    pub fn renew(&self, ca: &SshCa) -> anyhow::Result<()> {
        let signed = ca.sign(&CertSpec {
            public_key: &self.public,
            principals: &self.principals,
            ttl: CERT_TTL,
            key_id: &self.key_id,
            permit_pty: false,
        })?;
        write_atomic(
            &self.cert_path,
            format!("{}\n", signed.openssh).as_bytes(),
            // Public; readable by the confined run's user after a renewal.
            0o644,
        )?;
        Ok(())
    }

    /// Renews the certificate every [`RENEW_EVERY`] until the returned task is
    /// aborted (drop the guard).
    pub fn keep_fresh(&self, ca: Arc<SshCa>) -> RenewGuard {
        let this = self.clone();
        RenewGuard(tokio::spawn(async move {
            let mut tick = tokio::time::interval(RENEW_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = this.renew(&ca) {
                    tracing::error!(key = %this.key_id, error = %e, "renewing a job's SSH certificate");
                }
            }
        }))
    }
}

/// Stops renewing a job's certificate when dropped.
#[derive(Debug)]
pub struct RenewGuard(tokio::task::JoinHandle<()>);

impl Drop for RenewGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use russh::keys::ssh_key::{Certificate, HashAlg};

    use super::*;

    #[test]
    fn keys_are_private_and_certificates_short_lived() {
        let dir = tempfile::tempdir().expect("tmp");
        let ca = SshCa::generate().expect("ca");
        let k = JobKey::create(dir.path(), &ca, "JOB-abc", "SBX-0123abcd").expect("key");
        // The certificate is public (and read by the confined run's user after a
        // renewal); the key is private.
        for (p, want) in [(&k.key_path, 0o600), (&k.cert_path, 0o644)] {
            let mode = std::fs::metadata(p).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, want, "{}", p.display());
        }
        let key = PrivateKey::read_openssh_file(&k.key_path).expect("key parses");
        let text = std::fs::read_to_string(&k.cert_path).expect("cert");
        let cert = Certificate::from_openssh(text.trim()).expect("cert parses");
        assert_eq!(cert.public_key(), key.public_key().key_data());
        assert_eq!(
            cert.valid_principals(),
            ["sbx:SBX-0123abcd:root".to_owned()]
        );
        assert!(cert.extensions().is_empty());
        assert_eq!(cert.key_id(), "job:JOB-abc");
        let ca_fp = crate::work::ssh_ca::parse_public_key(ca.public_key())
            .expect("ca")
            .fingerprint(HashAlg::Sha256);
        let now = chrono::Utc::now().timestamp() as u64;
        cert.validate_at(now, [&ca_fp]).expect("signed by the CA");
        assert!(cert.valid_before() - now <= CERT_TTL.as_secs());
        let serial = cert.serial();
        k.renew(&ca).expect("renew");
        let text = std::fs::read_to_string(&k.cert_path).expect("cert");
        let renewed = Certificate::from_openssh(text.trim()).expect("parses");
        assert_ne!(renewed.serial(), serial);
        // No temporary files are left behind.
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 2);
        // OpenSSH itself reads both files, when it is installed.
        if std::process::Command::new("ssh-keygen")
            .arg("-?")
            .output()
            .is_ok()
        {
            for args in [
                vec!["-y", "-f", k.key_path.to_str().expect("utf-8")],
                vec!["-L", "-f", k.cert_path.to_str().expect("utf-8")],
            ] {
                let out = std::process::Command::new("ssh-keygen")
                    .args(&args)
                    .output()
                    .expect("ssh-keygen runs");
                assert!(out.status.success(), "ssh-keygen {args:?}: {out:?}");
            }
        }
    }
}
