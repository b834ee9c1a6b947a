//! One multiplexed SSH connection per sandbox, shared by all its commands (each command
//! is a channel on it).
//!
//! Taking a live connection is a short synchronous map lookup; only (re)connecting
//! takes the sandbox's async mutex, so one slow connect never blocks another sandbox,
//! and concurrent commands on one sandbox make one connection. A connection is made
//! again when it is closed, broken or the sandbox's address changed; stop and destroy
//! drop it ([`SshPool::forget`]).
//!
//! Connecting: TCP to `<ip>:22` within the connect timeout, host key checked by
//! [`TofuHandler`], then user `root` with the agent's key and the request's OpenSSH
//! certificate.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fluid_proto::model::SandboxId;
use russh::client::{self, Handle};
use russh::keys::{Certificate, PublicKey};
use tokio::time::Instant;

use super::hostkey::{TofuHandler, Verdict, verdict};
use super::{AgentKey, ExecError};

/// The user the agent logs in as (commands for other users go through `runuser`).
pub const SSH_USER: &str = "root";
/// Default time allowed for TCP connect, key exchange and authentication.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connect keeps retrying an unreachable sshd (a guest still booting).
const SSH_READY_WAIT: Duration = Duration::from_secs(30);
const SSH_READY_RETRY: Duration = Duration::from_secs(1);

/// A live connection to one sandbox.
pub struct Conn {
    pub(crate) handle: Handle<TofuHandler>,
    pub ip: Ipv4Addr,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("ip", &self.ip).finish()
    }
}

impl Conn {
    fn usable_for(&self, ip: Ipv4Addr) -> bool {
        self.ip == ip && !self.handle.is_closed()
    }
}

#[derive(Default)]
struct Entry {
    live: Mutex<Option<Arc<Conn>>>,
    /// Held only while connecting.
    connecting: tokio::sync::Mutex<()>,
}

impl Entry {
    fn current(&self, ip: Ipv4Addr) -> Option<Arc<Conn>> {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.as_ref().filter(|c| c.usable_for(ip)).cloned()
    }
}

/// A connection handed out by [`SshPool::connection`].
#[derive(Debug)]
pub struct Checkout {
    pub conn: Arc<Conn>,
    /// True when this call made the connection (false: reused).
    pub fresh: bool,
    /// The host key learned on first use; the caller remembers it.
    pub learned_host_key: Option<PublicKey>,
    /// Time spent connecting and authenticating (zero when reused).
    pub connect_time: Duration,
}

/// The per-sandbox connections.
pub struct SshPool {
    key: AgentKey,
    config: Arc<client::Config>,
    connect_timeout: Duration,
    /// How long a connect keeps retrying an sshd that is not reachable yet.
    ready_wait: Duration,
    /// The guests' sshd port (22; tests point it at a closed loopback port).
    port: u16,
    entries: Mutex<HashMap<SandboxId, Arc<Entry>>>,
}

impl std::fmt::Debug for SshPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshPool")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl SshPool {
    pub fn new(key: AgentKey) -> Self {
        let config = client::Config {
            // Notices a dead guest (no FIN) within about a minute.
            keepalive_interval: Some(Duration::from_secs(15)),
            keepalive_max: 3,
            nodelay: true,
            ..Default::default()
        };
        Self {
            key,
            config: Arc::new(config),
            connect_timeout: CONNECT_TIMEOUT,
            ready_wait: SSH_READY_WAIT,
            port: 22,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub fn key(&self) -> &AgentKey {
        &self.key
    }

    fn entry(&self, id: &SandboxId) -> Arc<Entry> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.entry(id.clone()).or_default().clone()
    }

    /// A usable connection to sandbox `id` at `ip`: the live one, or a new one made
    /// with `certificate` (OpenSSH text). `known_host_key` is the remembered host key
    /// (`None`: trust on first use).
    pub async fn connection(
        &self,
        id: &SandboxId,
        ip: Ipv4Addr,
        known_host_key: Option<PublicKey>,
        certificate: &str,
    ) -> Result<Checkout, ExecError> {
        let entry = self.entry(id);
        if let Some(conn) = entry.current(ip) {
            return Ok(Checkout {
                conn,
                fresh: false,
                learned_host_key: None,
                connect_time: Duration::ZERO,
            });
        }
        let _connecting = entry.connecting.lock().await;
        // Someone else may have connected while we waited.
        if let Some(conn) = entry.current(ip) {
            return Ok(Checkout {
                conn,
                fresh: false,
                learned_host_key: None,
                connect_time: Duration::ZERO,
            });
        }
        let started = Instant::now();
        let (conn, learned) = self.connect(id, ip, known_host_key, certificate).await?;
        let conn = Arc::new(conn);
        let old = entry
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(conn.clone());
        if let Some(old) = old {
            close_in_background(old);
        }
        let connect_time = started.elapsed();
        tracing::info!(id = %id, %ip, connect_ms = connect_time.as_millis(), "SSH connection made");
        Ok(Checkout {
            conn,
            fresh: true,
            learned_host_key: learned,
            connect_time,
        })
    }

    /// Connects, retrying while the guest's sshd is not reachable yet: a sandbox has
    /// its DHCP lease some seconds before sshd listens, and a first command sent right
    /// after `wait_for_ip` should wait for it rather than fail.
    async fn connect(
        &self,
        id: &SandboxId,
        ip: Ipv4Addr,
        known: Option<PublicKey>,
        certificate: &str,
    ) -> Result<(Conn, Option<PublicKey>), ExecError> {
        let deadline = tokio::time::Instant::now() + self.ready_wait;
        loop {
            match self.connect_once(id, ip, known.clone(), certificate).await {
                Err(ExecError::Unreachable(m)) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(sandbox = %id, error = %m, "sshd not ready; retrying");
                    tokio::time::sleep(SSH_READY_RETRY).await;
                }
                other => return other,
            }
        }
    }

    async fn connect_once(
        &self,
        id: &SandboxId,
        ip: Ipv4Addr,
        known: Option<PublicKey>,
        certificate: &str,
    ) -> Result<(Conn, Option<PublicKey>), ExecError> {
        let cert = self.certificate(certificate)?;
        let first_use = known.is_none();
        let (handler, presented) = TofuHandler::new(known.clone());
        let attempt = async {
            let mut handle = client::connect(self.config.clone(), (ip, self.port), handler).await?;
            let auth = handle
                .authenticate_openssh_cert(SSH_USER, self.key.private(), cert)
                .await?;
            Ok::<_, russh::Error>((handle, auth))
        };
        let seen = || presented.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let (handle, auth) = match tokio::time::timeout(self.connect_timeout, attempt).await {
            Err(_) => {
                return Err(ExecError::Unreachable(format!(
                    "sandbox {id}: SSH to {ip}:22 not ready within {} s",
                    self.connect_timeout.as_secs()
                )));
            }
            Ok(Err(e)) => {
                if let (Some(k), Some(s)) = (&known, seen())
                    && verdict(Some(k), &s) == Verdict::Changed
                {
                    return Err(ExecError::HostKeyChanged(format!(
                        "sandbox {id}: the SSH host key at {ip} changed (was {}, now {}); refusing to connect",
                        k.fingerprint(Default::default()),
                        s.fingerprint(Default::default())
                    )));
                }
                return Err(ExecError::Unreachable(format!(
                    "sandbox {id}: SSH to {ip}:22: {e}"
                )));
            }
            Ok(Ok(x)) => x,
        };
        if !auth.success() {
            close_in_background(Arc::new(Conn { handle, ip }));
            return Err(ExecError::AuthRejected(format!(
                "sandbox {id}: the guest's sshd refused the certificate for {SSH_USER} \
                 (expired, wrong principal, or a CA the sandbox does not trust)"
            )));
        }
        let learned = if first_use { seen() } else { None };
        Ok((Conn { handle, ip }, learned))
    }

    /// Parses the request's certificate and checks it is for the agent's key.
    fn certificate(&self, text: &str) -> Result<Certificate, ExecError> {
        let cert = Certificate::from_openssh(text.trim()).map_err(|e| {
            ExecError::BadCertificate(format!("ssh_certificate: not an OpenSSH certificate: {e}"))
        })?;
        if cert.public_key() != self.key.private().public_key().key_data() {
            return Err(ExecError::BadCertificate(
                "ssh_certificate: not a certificate for this agent's key (HostStatus.ssh_public_key)"
                    .to_owned(),
            ));
        }
        Ok(cert)
    }

    /// A new connection that is not put in the pool: it belongs to the caller (an
    /// interactive session whose certificate grants what the pooled connection's may
    /// not, such as a PTY). Returns it and the host key learned on first use.
    pub async fn connect_dedicated(
        &self,
        id: &SandboxId,
        ip: Ipv4Addr,
        known_host_key: Option<PublicKey>,
        certificate: &str,
    ) -> Result<(Arc<Conn>, Option<PublicKey>), ExecError> {
        let started = Instant::now();
        let (conn, learned) = self.connect(id, ip, known_host_key, certificate).await?;
        tracing::info!(id = %id, %ip, connect_ms = started.elapsed().as_millis(), "dedicated SSH connection made");
        Ok((Arc::new(conn), learned))
    }

    /// Drops `conn` from the pool if it is still the sandbox's connection (it failed).
    pub fn discard(&self, id: &SandboxId, conn: &Arc<Conn>) {
        let entry = self
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned();
        let Some(entry) = entry else { return };
        let mut live = entry.live.lock().unwrap_or_else(|e| e.into_inner());
        if live.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            live.take();
            drop(live);
            close_in_background(conn.clone());
        }
    }

    /// Closes and forgets the sandbox's connection (stop, destroy).
    pub fn forget(&self, id: &SandboxId) {
        let entry = self
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        if let Some(entry) = entry {
            let live = entry.live.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(conn) = live {
                tracing::debug!(id = %id, "closing the SSH connection");
                close_in_background(conn);
            }
        }
    }
}

/// Sends a disconnect without waiting for it. Commands still running on the
/// connection see their channels end.
pub(crate) fn close_in_background(conn: Arc<Conn>) {
    tokio::spawn(async move {
        let _ = conn
            .handle
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    });
}

#[cfg(test)]
mod tests {
    use russh::keys::PrivateKey;
    use russh::keys::ssh_key::certificate::{Builder, CertType};
    use russh::keys::ssh_key::private::Ed25519Keypair;

    use super::*;

    fn cert_for(subject: &PublicKey) -> String {
        let ca = PrivateKey::from(Ed25519Keypair::from_seed(&[7; 32]));
        let mut b =
            Builder::new([0u8; 16], subject.key_data().clone(), 0, u64::MAX / 2).expect("builder");
        b.cert_type(CertType::User).expect("type");
        b.valid_principal("root").expect("principal");
        b.key_id("test").expect("key id");
        b.sign(&ca).expect("sign").to_openssh().expect("openssh")
    }

    #[tokio::test]
    async fn certificates_must_be_for_the_agents_key() {
        let pool = SshPool::new(AgentKey::generate("t").expect("key"));
        let mine = cert_for(pool.key().private().public_key());
        assert!(pool.certificate(&mine).is_ok());
        let other = PrivateKey::from(Ed25519Keypair::from_seed(&[9; 32]));
        let theirs = cert_for(other.public_key());
        assert!(matches!(
            pool.certificate(&theirs),
            Err(ExecError::BadCertificate(m)) if m.contains("agent's key")
        ));
        assert!(matches!(
            pool.certificate("ssh-ed25519 AAAA"),
            Err(ExecError::BadCertificate(_))
        ));
    }

    #[tokio::test]
    async fn an_unreachable_guest_is_unavailable_quickly() {
        let mut pool = SshPool::new(AgentKey::generate("t").expect("key"));
        pool.connect_timeout = Duration::from_millis(300);
        pool.ready_wait = Duration::from_millis(1500);
        // A loopback port nobody listens on (bound, then released).
        pool.port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let cert = cert_for(pool.key().private().public_key());
        let id = SandboxId::parse("id", "SBX-0123abcd").expect("id");
        let started = Instant::now();
        let e = pool
            .connection(&id, Ipv4Addr::LOCALHOST, None, &cert)
            .await
            .expect_err("unreachable");
        assert!(matches!(e, ExecError::Unreachable(_)), "{e:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        pool.forget(&id);
    }
}
