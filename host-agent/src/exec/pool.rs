//! A few multiplexed SSH connections per sandbox, shared by all its commands (each
//! command is a channel on one of them).
//!
//! [`SshPool::open_channel`] reserves a slot on a live connection with room (a short
//! synchronous lookup), or makes one more connection (under the sandbox's async
//! connect mutex, so one slow connect never blocks another sandbox and concurrent
//! commands share what it makes). A connection holds at most
//! `exec.channels_per_connection` channels. When sshd refuses a channel open (its
//! `MaxSessions`), the connection is NOT dead: it is only full. Its capacity is
//! lowered to what it holds, and the channel goes to another connection; in-flight
//! commands are never disturbed. Only a connection that is closed or broken (the open
//! failed otherwise) leaves the pool. Stop and destroy drop them all
//! ([`SshPool::forget`]).
//!
//! Connecting: TCP to `<ip>:22` within the connect timeout, host key checked by
//! [`TofuHandler`], then user `root` with the agent's key and the request's OpenSSH
//! certificate.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fluid_proto::guest::LOGIN_USER;
use fluid_proto::model::SandboxId;
use russh::client::{self, Handle, Msg};
use russh::keys::{Certificate, PublicKey};
use tokio::time::Instant;

use super::hostkey::{TofuHandler, Verdict, verdict};
use super::{AgentKey, ExecError};

/// Default time allowed for TCP connect, key exchange and authentication.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connect keeps retrying an unreachable sshd (a guest still booting).
const SSH_READY_WAIT: Duration = Duration::from_secs(30);
const SSH_READY_RETRY: Duration = Duration::from_secs(1);
/// How long sshd may take to answer a channel open.
const CHANNEL_OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Channel opens tried (on other or new connections) before giving up.
const OPEN_ATTEMPTS: usize = 8;
/// How long a command waits for room on a sandbox's live connections when a new one
/// cannot be made, and how often it looks.
const ROOM_WAIT: Duration = Duration::from_secs(60);
const ROOM_POLL: Duration = Duration::from_millis(50);

/// A live connection to one sandbox.
pub struct Conn {
    pub(crate) handle: Handle<TofuHandler>,
    pub ip: Ipv4Addr,
    /// Channels held through [`Slot`]s (opening or open).
    open: AtomicUsize,
    /// Of those, the ones sshd confirmed: what sshd counts against `MaxSessions`.
    confirmed: AtomicUsize,
    /// How many channels the pool puts on it: the configured number, lowered to what
    /// it held when sshd refused one.
    capacity: AtomicUsize,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("ip", &self.ip)
            .field("open", &self.open.load(Ordering::Relaxed))
            .field("capacity", &self.capacity.load(Ordering::Relaxed))
            .finish()
    }
}

impl Conn {
    fn new(handle: Handle<TofuHandler>, ip: Ipv4Addr, capacity: usize) -> Self {
        Self {
            handle,
            ip,
            open: AtomicUsize::new(0),
            confirmed: AtomicUsize::new(0),
            capacity: AtomicUsize::new(capacity.max(1)),
        }
    }

    fn usable_for(&self, ip: Ipv4Addr) -> bool {
        self.ip == ip && !self.handle.is_closed()
    }

    /// Whether the connection is gone (closed, or its session task ended).
    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    /// Channels held on it now.
    pub fn open_channels(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

/// One channel's place on a connection; frees it when dropped.
#[derive(Debug)]
pub struct Slot {
    pub conn: Arc<Conn>,
    confirmed: bool,
}

impl Slot {
    /// A slot on `conn` whatever its capacity (a dedicated connection).
    pub fn take(conn: Arc<Conn>) -> Self {
        conn.open.fetch_add(1, Ordering::SeqCst);
        Self {
            conn,
            confirmed: false,
        }
    }

    /// The channel in this slot is open.
    fn confirm(&mut self) {
        if !self.confirmed {
            self.confirmed = true;
            self.conn.confirmed.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.conn.open.fetch_sub(1, Ordering::SeqCst);
        if self.confirmed {
            self.conn.confirmed.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

struct Entry {
    live: Mutex<Vec<Arc<Conn>>>,
    /// Held only while connecting.
    connecting: tokio::sync::Mutex<()>,
    /// The most channels seen open on one connection when sshd refused one more (its
    /// `MaxSessions`, as learned; 0: never refused); new connections start with it.
    learned_capacity: AtomicUsize,
    /// Its connections send no keepalives: a warm pool member's, which waits paused
    /// (a paused guest answers none, and its connection must outlive the wait).
    quiet: AtomicBool,
}

impl Default for Entry {
    fn default() -> Self {
        Self {
            live: Mutex::default(),
            connecting: tokio::sync::Mutex::default(),
            learned_capacity: AtomicUsize::new(0),
            quiet: AtomicBool::new(false),
        }
    }
}

impl Entry {
    /// A slot on a live connection with room (the fullest such one, so channels
    /// gather on few connections); closed connections leave the list.
    fn reserve(&self, ip: Ipv4Addr) -> Option<Slot> {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|c| c.usable_for(ip));
        let conn = live
            .iter()
            .filter(|c| c.open.load(Ordering::SeqCst) < c.capacity.load(Ordering::SeqCst))
            .max_by_key(|c| c.open.load(Ordering::SeqCst))?
            .clone();
        Some(Slot::take(conn))
    }

    fn add(&self, conn: Arc<Conn>) {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(conn);
    }

    /// Drops `conn` from the list; true when it was there.
    fn remove(&self, conn: &Arc<Conn>) -> bool {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let before = live.len();
        live.retain(|c| !Arc::ptr_eq(c, conn));
        live.len() != before
    }

    fn connections(&self) -> usize {
        self.live.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// A channel opened by [`SshPool::open_channel`].
#[derive(Debug)]
pub struct Opened {
    pub channel: russh::Channel<Msg>,
    /// Its place on its connection (hold it as long as the channel).
    pub slot: Slot,
    /// True when this call made a connection.
    pub fresh: bool,
    /// The host key learned on first use; the caller remembers it.
    pub learned_host_key: Option<PublicKey>,
    /// Time spent connecting and authenticating (zero when reused).
    pub connect_time: Duration,
}

/// Why sshd refused a channel, in words.
pub fn refusal(reason: &russh::ChannelOpenFailure) -> String {
    let what = match reason {
        russh::ChannelOpenFailure::AdministrativelyProhibited => {
            "administratively prohibited".to_owned()
        }
        russh::ChannelOpenFailure::ConnectFailed => "connect failed".to_owned(),
        russh::ChannelOpenFailure::UnknownChannelType => "unknown channel type".to_owned(),
        russh::ChannelOpenFailure::ResourceShortage => "resource shortage".to_owned(),
        russh::ChannelOpenFailure::Other { code, reason } => format!("code {code}: {reason}"),
    };
    format!("sshd refused the channel: {what}")
}

/// The per-sandbox connections.
pub struct SshPool {
    key: AgentKey,
    config: Arc<client::Config>,
    /// `config` without keepalives, for quiet entries.
    quiet_config: Arc<client::Config>,
    connect_timeout: Duration,
    /// How long a connect keeps retrying an sshd that is not reachable yet.
    ready_wait: Duration,
    /// The guests' sshd port (22; tests point it at a closed loopback port).
    port: u16,
    /// Channels per connection before another connection is made.
    channels_per_connection: usize,
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
    pub fn new(key: AgentKey, channels_per_connection: usize) -> Self {
        let config = |keepalive_interval| client::Config {
            // Notices a dead guest (no FIN) within about a minute.
            keepalive_interval,
            keepalive_max: 3,
            nodelay: true,
            ..Default::default()
        };
        let quiet_config = config(None);
        let config = config(Some(Duration::from_secs(15)));
        Self {
            key,
            config: Arc::new(config),
            quiet_config: Arc::new(quiet_config),
            connect_timeout: CONNECT_TIMEOUT,
            ready_wait: SSH_READY_WAIT,
            port: 22,
            channels_per_connection: channels_per_connection.max(1),
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

    /// Makes the connections to sandbox `id` from now on without keepalives (a warm
    /// pool member: see [`Entry`]'s `quiet`).
    pub fn make_quiet(&self, id: &SandboxId) {
        self.entry(id).quiet.store(true, Ordering::SeqCst);
    }

    /// Moves sandbox `old`'s connections to `new` (a warm pool member claimed by a
    /// sandbox): they stay open and usable under the new id, and the connections made
    /// from now on send keepalives again.
    pub fn rekey(&self, old: &SandboxId, new: &SandboxId) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = entries.remove(old) {
            entry.quiet.store(false, Ordering::SeqCst);
            entries.insert(new.clone(), entry);
        }
    }

    /// True when sandbox `id`'s new connections send no keepalives.
    pub fn is_quiet(&self, id: &SandboxId) -> bool {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .is_some_and(|e| e.quiet.load(Ordering::SeqCst))
    }

    /// Connections to sandbox `id` in the pool now.
    pub fn connections(&self, id: &SandboxId) -> usize {
        let entry = self
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned();
        entry.map_or(0, |e| e.connections())
    }

    /// A slot on a connection with room, or on a new one made with `certificate`.
    async fn reserve(
        &self,
        id: &SandboxId,
        entry: &Entry,
        ip: Ipv4Addr,
        known: Option<PublicKey>,
        certificate: &str,
    ) -> Result<(Slot, Option<(Option<PublicKey>, Duration)>), ExecError> {
        if let Some(slot) = entry.reserve(ip) {
            return Ok((slot, None));
        }
        let _connecting = entry.connecting.lock().await;
        // Someone else may have connected while we waited.
        if let Some(slot) = entry.reserve(ip) {
            return Ok((slot, None));
        }
        let started = Instant::now();
        // With live connections sshd is up: one try, then wait for room on them.
        let made = if entry.connections() > 0 {
            let deadline = tokio::time::Instant::now() + self.ready_wait;
            self.connect_once(id, ip, known, certificate, deadline)
                .await
        } else {
            self.connect(id, ip, known, certificate).await
        };
        let (conn, learned) = match made {
            Ok(made) => made,
            // The guest would not take one more connection in time (a loaded host),
            // but it has live ones: a command waits for room on them instead of
            // failing because others are running.
            Err(ExecError::Unreachable(why)) if entry.connections() > 0 => {
                drop(_connecting);
                tracing::info!(id = %id, reason = %why, "no new SSH connection; waiting for room on the live ones");
                return Ok((Self::wait_for_room(id, entry, ip, &why).await?, None));
            }
            Err(e) => return Err(e),
        };
        let learned_capacity = entry.learned_capacity.load(Ordering::SeqCst);
        if learned_capacity > 0 {
            conn.capacity.fetch_min(learned_capacity, Ordering::SeqCst);
        }
        let conn = Arc::new(conn);
        let slot = Slot::take(conn.clone());
        entry.add(conn);
        let connect_time = started.elapsed();
        tracing::info!(
            id = %id, %ip, connect_ms = connect_time.as_millis(),
            connections = entry.connections(), "SSH connection made"
        );
        Ok((slot, Some((learned, connect_time))))
    }

    /// A slot on one of the sandbox's live connections once one has room (at most
    /// [`ROOM_WAIT`]); Busy past that, Unreachable when no connection is left.
    async fn wait_for_room(
        id: &SandboxId,
        entry: &Entry,
        ip: Ipv4Addr,
        why: &str,
    ) -> Result<Slot, ExecError> {
        let deadline = tokio::time::Instant::now() + ROOM_WAIT;
        loop {
            if let Some(slot) = entry.reserve(ip) {
                return Ok(slot);
            }
            if entry.connections() == 0 {
                return Err(ExecError::Unreachable(why.to_owned()));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ExecError::Busy(format!(
                    "sandbox {id}: every SSH connection is full and a new one failed ({why}); retry later"
                )));
            }
            tokio::time::sleep(ROOM_POLL).await;
        }
    }

    /// Opens a session channel to sandbox `id` at `ip`, on a pooled connection with
    /// room or a new one made with `certificate` (OpenSSH text). `known_host_key` is the
    /// remembered host key (`None`: trust on first use).
    ///
    /// A refused open (sshd's `MaxSessions`) marks that connection full and tries
    /// another; a broken connection leaves the pool (another is made, once, when it
    /// was a reused one that died unnoticed).
    pub async fn open_channel(
        &self,
        id: &SandboxId,
        ip: Ipv4Addr,
        known_host_key: Option<PublicKey>,
        certificate: &str,
    ) -> Result<Opened, ExecError> {
        let entry = self.entry(id);
        let mut fresh = false;
        let mut learned_host_key = None;
        let mut connect_time = Duration::ZERO;
        let mut last_refusal = None;
        let mut broken = 0;
        for _ in 0..OPEN_ATTEMPTS {
            let (mut slot, made) = self
                .reserve(id, &entry, ip, known_host_key.clone(), certificate)
                .await?;
            let made_now = made.is_some();
            if let Some((learned, took)) = made {
                fresh = true;
                connect_time += took;
                if learned.is_some() {
                    learned_host_key = learned;
                }
            }
            let opened = tokio::time::timeout(
                CHANNEL_OPEN_TIMEOUT,
                slot.conn.handle.channel_open_session(),
            )
            .await;
            match opened {
                Ok(Ok(channel)) => {
                    slot.confirm();
                    return Ok(Opened {
                        channel,
                        slot,
                        fresh,
                        learned_host_key,
                        connect_time,
                    });
                }
                Ok(Err(russh::Error::ChannelOpenFailure(reason))) => {
                    // Not a dead connection: a full one. Everything on it goes on.
                    let why = refusal(&reason);
                    if slot.conn.open_channels() <= 1 {
                        return Err(ExecError::Refused(format!(
                            "sandbox {id}: {why} (on a connection with no other channel)"
                        )));
                    }
                    // What sshd holds open there (others may still be confirming).
                    let others = slot.conn.confirmed.load(Ordering::SeqCst).max(1);
                    slot.conn.capacity.fetch_min(others, Ordering::SeqCst);
                    entry.learned_capacity.fetch_max(others, Ordering::SeqCst);
                    tracing::info!(
                        id = %id, channels = others, reason = %why,
                        "sshd refused a channel (MaxSessions?); the connection is full, using another"
                    );
                    last_refusal = Some(why);
                }
                Ok(Err(e)) => {
                    // The connection is broken: it leaves the pool. Channels still on it
                    // (if any) end on their own; it is closed when it has none.
                    if entry.remove(&slot.conn) && slot.conn.open_channels() <= 1 {
                        close_in_background(slot.conn.clone());
                    }
                    broken += 1;
                    if made_now || broken > 1 {
                        return Err(ExecError::Unreachable(format!(
                            "sandbox {id}: connection to the guest lost while opening a channel: {e}"
                        )));
                    }
                    tracing::info!(id = %id, "the SSH connection was stale ({e}); reconnecting");
                }
                Err(_) => {
                    entry.remove(&slot.conn);
                    return Err(ExecError::Unreachable(format!(
                        "sandbox {id}: sshd did not answer a channel open within {} s",
                        CHANNEL_OPEN_TIMEOUT.as_secs()
                    )));
                }
            }
        }
        Err(ExecError::Busy(format!(
            "sandbox {id}: {} (tried {OPEN_ATTEMPTS} times on {} connections); retry later",
            last_refusal.unwrap_or_else(|| "no channel could be opened".to_owned()),
            entry.connections()
        )))
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
            match self
                .connect_once(id, ip, known.clone(), certificate, deadline)
                .await
            {
                Err(ExecError::Unreachable(m)) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(sandbox = %id, error = %m, "sshd not ready; retrying");
                    tokio::time::sleep(SSH_READY_RETRY).await;
                }
                other => return other,
            }
        }
    }

    /// One connection: TCP within the connect timeout, then the SSH handshake and
    /// authentication until `deadline` (at least the connect timeout). Once sshd has
    /// accepted, its side of the handshake (its re-exec, the key exchange, the
    /// certificate check, a PAM session: each a process in the guest) may take longer
    /// than a connect on a loaded host, and starting it again would only lose its work.
    async fn connect_once(
        &self,
        id: &SandboxId,
        ip: Ipv4Addr,
        known: Option<PublicKey>,
        certificate: &str,
        deadline: tokio::time::Instant,
    ) -> Result<(Conn, Option<PublicKey>), ExecError> {
        let cert = self.certificate(certificate)?;
        let first_use = known.is_none();
        let tcp = tokio::net::TcpStream::connect((ip, self.port));
        let tcp = match tokio::time::timeout(self.connect_timeout, tcp).await {
            Err(_) => {
                return Err(ExecError::Unreachable(format!(
                    "sandbox {id}: SSH to {ip}:22 not ready within {} s",
                    self.connect_timeout.as_secs()
                )));
            }
            Ok(Err(e)) => {
                return Err(ExecError::Unreachable(format!(
                    "sandbox {id}: SSH to {ip}:22: {e}"
                )));
            }
            Ok(Ok(tcp)) => tcp,
        };
        // As russh's own connect does.
        let _ = tcp.set_nodelay(self.config.nodelay);
        let budget = self
            .connect_timeout
            .max(deadline.saturating_duration_since(tokio::time::Instant::now()));
        let (handler, presented) = TofuHandler::new(known.clone());
        let config = if self.entry(id).quiet.load(Ordering::SeqCst) {
            self.quiet_config.clone()
        } else {
            self.config.clone()
        };
        let attempt = async {
            let mut handle = client::connect_stream(config, tcp, handler).await?;
            let auth = handle
                .authenticate_openssh_cert(LOGIN_USER, self.key.private(), cert)
                .await?;
            Ok::<_, russh::Error>((handle, auth))
        };
        let seen = || presented.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let (handle, auth) = match tokio::time::timeout(budget, attempt).await {
            Err(_) => {
                return Err(ExecError::Unreachable(format!(
                    "sandbox {id}: sshd at {ip}:22 accepted but did not finish the SSH handshake within {:.0?}",
                    budget
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
            close_in_background(Arc::new(Conn::new(handle, ip, 1)));
            return Err(ExecError::AuthRejected(format!(
                "sandbox {id}: the guest's sshd refused the certificate for {LOGIN_USER} \
                 (expired, wrong principal, or a CA the sandbox does not trust)"
            )));
        }
        let learned = if first_use { seen() } else { None };
        Ok((Conn::new(handle, ip, self.channels_per_connection), learned))
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

    /// Closes and forgets the sandbox's connections (stop, destroy).
    pub fn forget(&self, id: &SandboxId) {
        let entry = self
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        if let Some(entry) = entry {
            let live = std::mem::take(&mut *entry.live.lock().unwrap_or_else(|e| e.into_inner()));
            for conn in live {
                tracing::debug!(id = %id, "closing an SSH connection");
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
#[path = "pool_tests.rs"]
mod refusal_tests;

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
        let pool = SshPool::new(AgentKey::generate("t").expect("key"), 4);
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

    /// A pool whose connects give up after `connect_ms` and `ready_ms`, aimed at
    /// `port` on loopback; its certificate, and a sandbox id.
    fn loopback_pool(connect_ms: u64, ready_ms: u64, port: u16) -> (SshPool, String, SandboxId) {
        let mut pool = SshPool::new(AgentKey::generate("t").expect("key"), 4);
        pool.connect_timeout = Duration::from_millis(connect_ms);
        pool.ready_wait = Duration::from_millis(ready_ms);
        pool.port = port;
        let cert = cert_for(pool.key().private().public_key());
        (
            pool,
            cert,
            SandboxId::parse("id", "SBX-0123abcd").expect("id"),
        )
    }

    #[tokio::test]
    async fn a_slow_handshake_has_until_the_ready_deadline() {
        // A guest whose sshd accepts and then says nothing (a loaded host).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let (pool, cert, id) =
            loopback_pool(200, 1200, listener.local_addr().expect("addr").port());
        let accepted = Arc::new(AtomicUsize::new(0));
        let held = tokio::spawn({
            let accepted = accepted.clone();
            async move {
                let mut conns = Vec::new();
                while let Ok((c, _)) = listener.accept().await {
                    accepted.fetch_add(1, Ordering::SeqCst);
                    conns.push(c);
                }
            }
        });
        let e = pool
            .open_channel(&id, Ipv4Addr::LOCALHOST, None, &cert)
            .await
            .expect_err("no handshake");
        // One handshake, given the whole ready wait: not one per connect timeout.
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "{e:?}");
        assert!(
            matches!(&e, ExecError::Unreachable(m) if m.contains("handshake")),
            "{e:?}"
        );
        held.abort();
        pool.forget(&id);
    }

    #[tokio::test]
    async fn an_unreachable_guest_is_unavailable_quickly() {
        // A loopback port nobody listens on (bound, then released).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let (pool, cert, id) = loopback_pool(300, 1500, port);
        let started = Instant::now();
        let e = pool
            .open_channel(&id, Ipv4Addr::LOCALHOST, None, &cert)
            .await
            .expect_err("unreachable");
        assert!(matches!(e, ExecError::Unreachable(_)), "{e:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        pool.forget(&id);
    }
}
