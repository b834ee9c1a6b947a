//! SSH access for people: short-lived certificates from the controller's user CA
//! (`/v1/access/*`), their records, and revocation pushed to the sandbox's sshd
//! (`RevokedKeys /etc/ssh/fluid_revoked_keys`, re-read at every authentication). Also
//! `POST /v1/sandboxes/{id}/sshkey`, which appends a key to a user's authorized_keys.
//!
//! A certificate names its sandbox (principal `sbx:<sandbox id>:<user>`), so only that
//! sandbox's sshd accepts it (a fork has its own id) and revocation has to reach that
//! one sandbox only. The revoked-keys file lives on the sandbox's disk, which a
//! snapshot restore reverts: [`AccessService::reapply_revocations`] writes the store's
//! list again after a restore and after a start.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use fluid_client::types::{
    AccessRequest, AccessResponse, AddSshKeyRequest, CaPublicKeyResponse, CertificateResponse,
    ListCertificatesResponse, SandboxState,
};
use fluid_proto::guest::access::{REVOKE_SH, SSHKEY_SH};
use fluid_proto::model::{SandboxId, check_ssh_public_key, check_user};

use crate::error::{ServiceError, page_limit};
use crate::governance::auth::{self, Caller, Permission};
use crate::store::{CertRecord, Store};
use crate::support::ids::new_id;
use crate::work::commands::{CommandService, ExecSpec};
use crate::work::files::check_outcome;
use crate::work::ssh_ca::{CertSpec, SshCa, TTL_MAX, parse_public_key, sandbox_principal};

/// Certificate lifetime when `ttl_minutes` is not given.
pub const DEFAULT_TTL_MINUTES: u32 = 5;
/// Longest `user_id`.
pub const USER_ID_MAX: usize = 128;
/// Re-applying revocations retries after this while the sandbox's sshd is not up,
/// doubling each time up to [`REAPPLY_RETRY_MAX`].
const REAPPLY_RETRY: Duration = Duration::from_secs(2);
const REAPPLY_RETRY_MAX: Duration = Duration::from_secs(30);
/// ... for as long as a certificate could live, plus this.
const REAPPLY_SLACK: Duration = Duration::from_secs(60);

/// The certificate `id`, when there is one.
fn found(c: Option<CertRecord>, id: &str) -> Result<CertRecord, ServiceError> {
    c.ok_or_else(|| ServiceError::NotFound(format!("certificate {id} not found")))
}

pub struct AccessService {
    store: Arc<dyn Store>,
    commands: Arc<CommandService>,
    ca: Arc<SshCa>,
}

impl std::fmt::Debug for AccessService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessService").finish_non_exhaustive()
    }
}

fn check_public_key(field: &'static str, key: &str) -> Result<String, ServiceError> {
    let key = check_ssh_public_key(field, key)?;
    parse_public_key(&key).map_err(|e| ServiceError::Invalid(format!("{field}: {e}")))?;
    Ok(key)
}

fn script_spec(
    kind: &'static str,
    audit: String,
    script: &str,
    env: &[(&str, &str)],
    stdin: Vec<u8>,
) -> ExecSpec {
    ExecSpec {
        kind,
        command: script.to_owned(),
        audit_command: audit,
        user: "root".into(),
        workdir: None,
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
        timeout_seconds: 60,
        stdin,
        output_cap: 64 * 1024,
        audit_stdout: true,
    }
}

impl AccessService {
    pub fn new(store: Arc<dyn Store>, commands: Arc<CommandService>, ca: Arc<SshCa>) -> Self {
        Self {
            store,
            commands,
            ca,
        }
    }

    pub fn ca_pubkey(&self, caller: &Caller) -> Result<CaPublicKeyResponse, ServiceError> {
        auth::check(caller, Permission::Read)?;
        Ok(CaPublicKeyResponse {
            public_key: self.ca.public_key().to_owned(),
            usage: "Sandboxes trust this user CA (sshd TrustedUserCAKeys). Ask POST /v1/access/request \
                    for a short-lived certificate for your public key, save it next to your key as \
                    <key>-cert.pub, and connect with ssh."
                .into(),
        })
    }

    /// A certificate for a person to SSH into sandbox `id` (the request's
    /// `sandbox_id`), for `caller` (`Work` on it).
    pub async fn request(
        &self,
        caller: &Caller,
        id: &SandboxId,
        req: AccessRequest,
    ) -> Result<AccessResponse, ServiceError> {
        let row = self
            .commands
            .authorized(caller, id, Permission::Work)
            .await?;
        let user_id = req.user_id.trim();
        if user_id.is_empty()
            || user_id.len() > USER_ID_MAX
            || user_id.chars().any(char::is_control)
        {
            return Err(ServiceError::Invalid(format!(
                "user_id: 1-{USER_ID_MAX} printable characters"
            )));
        }
        let public_key = check_public_key("public_key", &req.public_key)?;
        let ttl_minutes = req.ttl_minutes.unwrap_or(DEFAULT_TTL_MINUTES);
        if !(1..=10).contains(&ttl_minutes) {
            return Err(ServiceError::Invalid(format!(
                "ttl_minutes: {ttl_minutes} is out of range (1-10)"
            )));
        }
        let username = check_user("username", req.username.as_deref().unwrap_or("root"))?;
        if row.state != SandboxState::Running {
            return Err(ServiceError::Conflict(format!(
                "sandbox {id} is {}; access needs a RUNNING sandbox",
                row.state
            )));
        }
        let ip = row
            .ip_address
            .clone()
            .ok_or_else(|| ServiceError::Conflict(format!("sandbox {id} has no IP address yet")))?;
        let cert_id = new_id("CRT-");
        // Bound to this sandbox and this user: no other sandbox's sshd, and no other
        // user here, accepts it.
        let principals = vec![sandbox_principal(&row.id, &username)];
        let ttl = Duration::from_secs(u64::from(ttl_minutes) * 60);
        let signed = self
            .ca
            .sign(&CertSpec {
                public_key: &public_key,
                principals: &principals,
                ttl,
                key_id: &format!("{cert_id}:{user_id}"),
                permit_pty: true,
            })
            .map_err(|e| ServiceError::Invalid(format!("public_key: {e}")))?;
        self.store
            .insert_certificate(&CertRecord {
                id: cert_id.clone(),
                sandbox_id: row.id.clone(),
                user_id: user_id.to_owned(),
                public_key,
                principals,
                serial: signed.serial,
                valid_after: signed.valid_after,
                valid_until: signed.valid_before,
                created_at: Utc::now(),
                revoked_at: None,
            })
            .await?;
        tracing::info!(sandbox = %id, certificate = %cert_id, user = %user_id, "SSH certificate issued");
        Ok(AccessResponse {
            certificate_id: cert_id,
            certificate: signed.openssh,
            connect_command: format!(
                "ssh -i <private key> -o CertificateFile=<saved certificate> {username}@{ip}"
            ),
            instructions: format!(
                "Save `certificate` as <private key>-cert.pub (ssh then uses it by itself) or pass \
                 it with -o CertificateFile=. It is valid for {ttl_minutes} minute(s), for user \
                 {username} on sandbox {id} only; port, agent and X11 forwarding are not permitted."
            ),
            vm_ip_address: ip,
            ssh_port: 22,
            username,
            valid_until: signed.valid_before,
            ttl_seconds: ttl.as_secs(),
        })
    }

    /// A page of the certificates, for `caller` (`ReadFleet`).
    pub async fn list(
        &self,
        caller: &Caller,
        limit: Option<u32>,
        offset: Option<u64>,
    ) -> Result<ListCertificatesResponse, ServiceError> {
        auth::check(caller, Permission::ReadFleet)?;
        let (limit, offset) = (page_limit(limit)?, offset.unwrap_or(0));
        let (rows, total) = self.store.list_certificates(limit, offset).await?;
        Ok(ListCertificatesResponse {
            certificates: rows.iter().map(CertRecord::to_api).collect(),
            total,
        })
    }

    pub async fn get(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<CertificateResponse, ServiceError> {
        auth::check(caller, Permission::ReadFleet)?;
        let c = found(self.store.get_certificate(id).await?, id)?;
        Ok(CertificateResponse {
            certificate: c.to_api(),
            revocation_applied: None,
            revocation_error: None,
        })
    }

    /// Marks the certificate revoked, then writes every revoked key of its sandbox to
    /// the sandbox's `RevokedKeys` file. The answer says whether that reached the VM.
    /// `caller` needs `RevokeAccess`.
    pub async fn revoke(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<CertificateResponse, ServiceError> {
        auth::check(caller, Permission::RevokeAccess)?;
        let c = found(self.store.revoke_certificate(id, Utc::now()).await?, id)?;
        tracing::info!(certificate = %id, sandbox = %c.sandbox_id, "SSH certificate revoked");
        let pushed = self.push_revocations(&c.sandbox_id).await;
        if let Err(e) = &pushed {
            tracing::warn!(certificate = %id, error = %e, "revocation not pushed to the sandbox");
        }
        Ok(CertificateResponse {
            certificate: c.to_api(),
            revocation_applied: Some(pushed.is_ok()),
            revocation_error: pushed.err().map(|e| e.to_string()),
        })
    }

    /// Writes the sandbox's revoked keys again when it has any (a restore reverted the
    /// file on its disk; a revocation made while it was stopped never reached it).
    /// Retries until the sandbox's sshd takes it (a booting sandbox) for as long as a
    /// certificate revoked now could still be valid, in a task of its own; waits up to
    /// `wait` for it. `Ok(false)`: nothing to write; `Ok(true)`: written; `Err`: not
    /// yet (the task keeps trying).
    pub async fn reapply_revocations(
        self: &Arc<Self>,
        id: &SandboxId,
        wait: Duration,
    ) -> Result<bool, ServiceError> {
        if self.store.revoked_keys(id.as_str()).await?.is_empty() {
            return Ok(false);
        }
        let this = self.clone();
        let sid = id.clone();
        let task = tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + TTL_MAX + REAPPLY_SLACK;
            let mut pause = REAPPLY_RETRY;
            loop {
                let r = this.push_revocations(sid.as_str()).await;
                match &r {
                    Ok(()) => {
                        tracing::info!(sandbox = %sid, "revoked SSH keys written again");
                        return r;
                    }
                    // Gone, destroyed or stopped: a later start re-applies.
                    Err(ServiceError::NotFound(_) | ServiceError::Conflict(_)) => return r,
                    Err(e) if tokio::time::Instant::now() >= deadline => {
                        tracing::warn!(sandbox = %sid, error = %e, "revoked SSH keys not written again");
                        return r;
                    }
                    Err(e) => tracing::debug!(sandbox = %sid, error = %e, "revoked keys: retrying"),
                }
                // Each attempt is an audited command: back off while the guest boots.
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(REAPPLY_RETRY_MAX);
            }
        });
        match tokio::time::timeout(wait, task).await {
            Ok(Ok(r)) => r.map(|()| true),
            Ok(Err(e)) => Err(ServiceError::Unavailable(format!(
                "re-applying revocations: {e}"
            ))),
            Err(_) => Err(ServiceError::Unavailable(format!(
                "sandbox {id}: revoked keys not written within {} s; still trying",
                wait.as_secs()
            ))),
        }
    }

    async fn push_revocations(&self, sandbox_id: &str) -> Result<(), ServiceError> {
        let id = SandboxId::parse("sandbox_id", sandbox_id)?;
        let row = self.commands.sandbox(&id).await?;
        let keys = self.store.revoked_keys(sandbox_id).await?;
        let mut stdin = keys.join("\n").into_bytes();
        stdin.push(b'\n');
        let spec = script_spec(
            "revoke",
            format!(
                "write {} revoked key(s) to /etc/ssh/fluid_revoked_keys",
                keys.len()
            ),
            REVOKE_SH,
            &[("FLUID_OP", "revoke")],
            stdin,
        );
        let o = self.commands.start(&row, spec).await?.finish().await?;
        check_outcome(&o, "revocation")
    }

    /// Appends `public_key` to `username`'s authorized_keys in the sandbox, for
    /// `caller` (`Work` on it).
    pub async fn add_ssh_key(
        &self,
        caller: &Caller,
        id: &SandboxId,
        req: AddSshKeyRequest,
    ) -> Result<(), ServiceError> {
        self.commands
            .authorized(caller, id, Permission::Work)
            .await?;
        let key = check_public_key("public_key", &req.public_key)?;
        let user = check_user("username", &req.username)?;
        let row = self.commands.sandbox(id).await?;
        let spec = script_spec(
            "sshkey",
            format!("add an SSH key to {user}'s authorized_keys"),
            SSHKEY_SH,
            &[
                ("FLUID_OP", "sshkey"),
                ("FLUID_USER", &user),
                ("FLUID_KEY", &key),
            ],
            Vec::new(),
        );
        let o = self.commands.start(&row, spec).await?.finish().await?;
        check_outcome(&o, "sshkey")
    }
}
