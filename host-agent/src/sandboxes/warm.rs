//! The warm pool: per `[pool]` shape, sandboxes restored ahead of time, each already a
//! clone with its own machine-id, host key, MAC and address, waiting paused with the
//! agent's SSH connection to it open. A create of that image and shape claims one
//! instead of restoring.
//!
//! A member is an ordinary sandbox of the agent's (record, overlay, domain, rules,
//! reserved address) marked `pooled`, with an id and a domain name of its own
//! (`fluid-pool-…`). Until it is claimed its sshd trusts only the pool's CA, a key
//! the agent makes at start and keeps in memory, and the agent connects with a
//! certificate from it. A claim, under the new sandbox's lock:
//! 1. takes a ready member off the list (no one else can);
//! 2. resumes it and, over that open connection, rebinds it
//!    ([`fluid_proto::guest::identity::REBIND`]: the clock, the sandbox's id for
//!    sshd's principals, the controller's user CAs in place of the pool's, the
//!    hostname);
//! 3. re-keys its record to the sandbox's id in one transaction (the domain, tap,
//!    overlay and address stay; `tap` and `hostname` say so), with the sandbox's
//!    egress policy, then its rules, connections and console log follow, and its
//!    persistent domain XML takes the sandbox's id, name and CAs for a later boot.
//!
//! A member that fails any of this is destroyed and the create restores or boots as
//! without a pool. Refill runs in one background task, a member at a time, only from a
//! ready memory template (when templates are enabled). Members are never listed to
//! the controller, and those an earlier agent left are destroyed at start, in the
//! background before the first refill (their pool CA died with it), so a crash
//! mid-refill orphans nothing.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fluid_proto::guest::identity::Rebind;
use fluid_proto::model::{CreateSandbox, EgressPolicy, Name, PoolStatus, SandboxId};
use russh::ChannelMsg;
use russh::keys::PrivateKey;
use russh::keys::ssh_key::certificate::{Builder, CertType};
use russh::keys::ssh_key::private::Ed25519Keypair;
use tokio::sync::Notify;

use super::{SandboxView, Sandboxes};
use crate::config::PoolShape;
use crate::error::ServiceError;
use crate::exec::AgentKey;
use crate::exec::pool::Opened;
use crate::hypervisor::Hypervisor;
use crate::state::SandboxRecord;
use crate::templates::Shape;

/// How long the rebind may take in the guest.
const REBIND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the first command in a new member may take (its sshd may still start).
const WARM_UP_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the refill looks again when nothing woke it (a template became ready).
const IDLE_LOOK: Duration = Duration::from_secs(10);
/// The wait after a failed refill before the next.
const RETRY_AFTER: Duration = Duration::from_secs(15);
/// How long the refill waits after a claim: the claimed sandbox's first commands come
/// first (a restore takes the host's CPU for seconds).
const SETTLE: Duration = Duration::from_secs(3);
/// Validity of the pool CA's certificates (each is used for one connection).
const CERT_TTL_SECS: u64 = 300;

/// One shape's members and counters.
#[derive(Debug)]
struct ShapePool {
    shape: PoolShape,
    ready: VecDeque<SandboxId>,
    filling: u32,
    hits: u64,
    misses: u64,
    /// Not refilled before this: its last refill failed, or it could not start (no
    /// ready template, no memory), and the other shapes get their turn meanwhile.
    held_until: Option<tokio::time::Instant>,
}

/// The pool's state: the CA its members trust, and the members per shape.
pub struct WarmPool {
    ca: PrivateKey,
    ca_public: String,
    shapes: Mutex<Vec<ShapePool>>,
    wake: Notify,
    /// When the last member was claimed.
    last_claim: Mutex<Option<tokio::time::Instant>>,
}

impl std::fmt::Debug for WarmPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WarmPool")
            .field("ca", &self.ca_public)
            .finish_non_exhaustive()
    }
}

impl WarmPool {
    pub fn new(shapes: &[PoolShape]) -> Self {
        let mut ca = PrivateKey::from(Ed25519Keypair::from_seed(&rand::random()));
        ca.set_comment("fluid-agent pool CA");
        let ca_public = ca.public_key().to_openssh().unwrap_or_default();
        Self {
            ca,
            ca_public,
            shapes: Mutex::new(
                shapes
                    .iter()
                    .map(|s| ShapePool {
                        shape: s.clone(),
                        ready: VecDeque::new(),
                        filling: 0,
                        hits: 0,
                        misses: 0,
                        held_until: None,
                    })
                    .collect(),
            ),
            wake: Notify::new(),
            last_claim: Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<ShapePool>> {
        self.shapes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Each shape's size, members ready and being made, hits and misses.
    pub fn stats(&self) -> Vec<PoolStatus> {
        self.lock()
            .iter()
            .map(|p| PoolStatus {
                image: p.shape.image.to_string(),
                cpus: p.shape.cpus,
                memory_mb: p.shape.memory_mb,
                size: p.shape.size,
                ready: u32::try_from(p.ready.len()).unwrap_or(u32::MAX),
                filling: p.filling,
                hits: p.hits,
                misses: p.misses,
            })
            .collect()
    }

    /// Takes a ready member of this image and shape (counted as a hit), or counts a
    /// miss when the shape is pooled but none is ready.
    fn take(&self, image: &Name, cpus: u32, memory_mb: u64) -> Option<SandboxId> {
        let mut shapes = self.lock();
        let p = shapes.iter_mut().find(|p| {
            p.shape.image == *image && p.shape.cpus == cpus && p.shape.memory_mb == memory_mb
        })?;
        match p.ready.pop_front() {
            Some(id) => {
                p.hits += 1;
                *self.last_claim.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(tokio::time::Instant::now());
                Some(id)
            }
            None => {
                p.misses += 1;
                None
            }
        }
    }

    /// How long the refill should still wait after the last claim.
    fn settle_left(&self) -> Option<Duration> {
        let last = (*self.last_claim.lock().unwrap_or_else(|e| e.into_inner()))?;
        SETTLE.checked_sub(last.elapsed()).filter(|d| !d.is_zero())
    }

    /// The next shape short of members and not held (marked as filling one more).
    fn next_to_fill(&self) -> Option<PoolShape> {
        let now = tokio::time::Instant::now();
        let mut shapes = self.lock();
        let p = shapes.iter_mut().find(|p| {
            p.ready.len() + (p.filling as usize) < p.shape.size as usize
                && p.held_until.is_none_or(|t| t <= now)
        })?;
        p.filling += 1;
        Some(p.shape.clone())
    }

    /// `shape` is not refilled for `wait`: the next refill serves another shape.
    fn hold(&self, shape: &PoolShape, wait: Duration) {
        let mut shapes = self.lock();
        if let Some(p) = shapes.iter_mut().find(|p| p.shape == *shape) {
            p.held_until = Some(tokio::time::Instant::now() + wait);
        }
    }

    /// A fill of `shape` ended, with its member when it succeeded.
    fn filled(&self, shape: &PoolShape, member: Option<SandboxId>) {
        let mut shapes = self.lock();
        if let Some(p) = shapes.iter_mut().find(|p| p.shape == *shape) {
            p.filling = p.filling.saturating_sub(1);
            if let Some(id) = member {
                p.ready.push_back(id);
            }
        }
    }

    /// A certificate of the pool's CA for `key`, valid in member `id` only.
    fn certificate(&self, id: &SandboxId, key: &AgentKey) -> Result<String, ServiceError> {
        let err = |e: russh::keys::ssh_key::Error| {
            ServiceError::Internal(format!("signing a pool certificate: {e}"))
        };
        let now = u64::try_from(crate::unix_now()).unwrap_or(0);
        let mut b = Builder::new(
            rand::random::<[u8; 16]>().to_vec(),
            key.private().public_key().key_data().clone(),
            now.saturating_sub(60),
            now + CERT_TTL_SECS,
        )
        .map_err(err)?;
        b.cert_type(CertType::User).map_err(err)?;
        b.key_id(format!("fluid-pool:{id}")).map_err(err)?;
        b.valid_principal(format!("sbx:{id}:root")).map_err(err)?;
        let cert = b.sign(&self.ca).map_err(err)?;
        cert.to_openssh().map_err(err)
    }
}

/// A fresh member's id and domain name.
fn member_names() -> Result<(SandboxId, Name), ServiceError> {
    let suffix = hex::encode(rand::random::<[u8; 6]>());
    let id = SandboxId::parse("id", &format!("SBX-{suffix}pool"))
        .map_err(|e| ServiceError::Internal(e.to_string()))?;
    let name = Name::parse("name", &format!("fluid-pool-{suffix}"))
        .map_err(|e| ServiceError::Internal(e.to_string()))?;
    Ok((id, name))
}

impl<H: Hypervisor> Sandboxes<H> {
    /// At start, in the background (the agent serves meanwhile: members are never
    /// listed, and none can be claimed before one is made): destroys the members an
    /// earlier agent left (their CA is gone with it), then keeps the configured shapes'
    /// pools filled.
    pub fn start_pool(self: &Arc<Self>) {
        let s = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(e) = s.remove_members().await {
                tracing::warn!(
                    "removing the warm pool an earlier agent left: {e} (the next start tries again)"
                );
            }
            if s.config.pool.shapes.iter().any(|shape| shape.size > 0) {
                s.refill().await;
            }
        });
    }

    /// Destroys every warm pool member on record (at start: an earlier agent's).
    pub(super) async fn remove_members(&self) -> Result<(), ServiceError> {
        for r in self.store.list().await? {
            if r.pooled {
                tracing::info!(id = %r.id, "removing a warm pool member of an earlier agent");
                self.destroy(&r.id).await?;
            }
        }
        Ok(())
    }

    /// The refill loop: one member at a time, for the first shape short of members
    /// that is not held; with none, it waits for a claim or looks again after a while.
    async fn refill(self: Arc<Self>) {
        loop {
            while let Some(wait) = self.warm.settle_left() {
                tokio::time::sleep(wait).await;
            }
            let Some(shape) = self.warm.next_to_fill() else {
                tokio::select! {
                    () = self.warm.wake.notified() => {}
                    () = tokio::time::sleep(IDLE_LOOK) => {}
                }
                continue;
            };
            if !self.ready_to_fill(&shape).await {
                self.warm.filled(&shape, None);
                self.warm.hold(&shape, IDLE_LOOK);
                continue;
            }
            let started = tokio::time::Instant::now();
            match self.fill_one(&shape).await {
                Ok(id) => {
                    tracing::info!(%id, image = %shape.image, cpus = shape.cpus, memory_mb = shape.memory_mb, fill_ms = started.elapsed().as_millis(), "warm pool member ready");
                    self.warm.filled(&shape, Some(id));
                }
                Err(e) => {
                    tracing::warn!(image = %shape.image, cpus = shape.cpus, memory_mb = shape.memory_mb, "warm pool refill failed: {e}");
                    self.warm.filled(&shape, None);
                    self.warm.hold(&shape, RETRY_AFTER);
                }
            }
        }
    }

    /// Members fit in the host's memory, and are restored from a ready template (unless
    /// templates are off): a refill never cold-boots behind a template that is still
    /// being built.
    async fn ready_to_fill(&self, shape: &PoolShape) -> bool {
        // Never past the host's memory: the controller counts members in the host's
        // usage, and a refill must not take what it has promised to sandboxes.
        match self.capacity().await {
            Ok(c) if c.memory_mb_reserved + shape.memory_mb <= c.memory_mb_total => {}
            Ok(c) => {
                tracing::debug!(
                    reserved = c.memory_mb_reserved,
                    total = c.memory_mb_total,
                    "no room for a warm pool member"
                );
                return false;
            }
            Err(_) => return false,
        }
        if !self.templates.config.enabled {
            return true;
        }
        let Some(image_config) = self.config.image(&shape.image) else {
            return false;
        };
        let Ok(image) = crate::images::resolve(self.hv.as_ref(), image_config).await else {
            return false;
        };
        let shape = Shape {
            image: shape.image.to_string(),
            cpus: shape.cpus,
            memory_mb: shape.memory_mb,
        };
        self.ready_template(&shape, &image).await.0.is_some()
    }

    /// Makes one member: created and started like any sandbox (marked pooled, trusting
    /// the pool's CA), its SSH connection opened by a first command, then paused.
    async fn fill_one(&self, shape: &PoolShape) -> Result<SandboxId, ServiceError> {
        let (id, name) = member_names()?;
        let req = CreateSandbox {
            id: id.clone(),
            name,
            image: shape.image.clone(),
            cpus: shape.cpus,
            memory_mb: shape.memory_mb,
            start: true,
            ssh_user_ca_keys: vec![self.warm.ca_public.clone()],
            egress: EgressPolicy::default(),
            from_snapshot: None,
            fork_of_running: None,
        };
        self.ssh.make_quiet(&id);
        let made = async {
            self.create_member(req).await?;
            let r = self.record(&id).await?;
            let cert = self.warm.certificate(&id, self.ssh.key())?;
            self.warm_up(&r, &cert).await?;
            self.hv.suspend(&r.domain_uuid).await?;
            Ok::<_, ServiceError>(())
        };
        if let Err(e) = made.await {
            if let Err(d) = self.destroy(&id).await {
                tracing::warn!(%id, "removing a failed warm pool member: {d}");
            }
            return Err(e);
        }
        Ok(id)
    }

    /// The member's first command, through the wrapper as a create's first command
    /// will be: it opens the connection, and under TCG it also runs the wrapper's
    /// programs (the shell, `mkdir`, `setsid` and `env`) once in
    /// this QEMU, which translates their code; the claimed sandbox's first command
    /// then costs what any later one does.
    async fn warm_up(&self, r: &SandboxRecord, certificate: &str) -> Result<(), ServiceError> {
        let out = self
            .guest_command(r, "true", WARM_UP_TIMEOUT, certificate)
            .await
            .map_err(ServiceError::Internal)?;
        if out.exit_code != 0 {
            return Err(ServiceError::Internal(format!(
                "sandbox {}: the first command: {}",
                r.id,
                super::snapshots::describe_failure(&out, WARM_UP_TIMEOUT)
            )));
        }
        Ok(())
    }

    /// Runs `command` as root in sandbox `r` over the agent's connection, as it is
    /// (no cgroup, no pid file: under TCG every program a guest runs costs it
    /// time); an error unless it exits 0 within `timeout`.
    async fn in_guest(
        &self,
        r: &SandboxRecord,
        command: &str,
        timeout: Duration,
        certificate: &str,
    ) -> Result<(), ServiceError> {
        let ip = self.exec_target(r).await?;
        let known = super::exec::known_host_key(r)?;
        let attempt = async {
            let Opened {
                mut channel, slot, ..
            } = self
                .ssh
                .open_channel(&r.id, ip, known, certificate)
                .await
                .map_err(|e| e.to_string())?;
            channel
                .exec(true, command.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            let (mut status, mut stderr) = (None, Vec::new());
            while let Some(m) = channel.wait().await {
                match m {
                    ChannelMsg::ExtendedData { data, ext: 1 } if stderr.len() < 4096 => {
                        stderr.extend_from_slice(&data);
                    }
                    ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
                    ChannelMsg::Close => break,
                    _ => {}
                }
            }
            drop(slot);
            match status {
                Some(0) => Ok(()),
                other => Err(format!(
                    "exited {other:?}: {}",
                    String::from_utf8_lossy(&stderr).trim()
                )),
            }
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .map_err(|_| format!("no answer within {} s", timeout.as_secs()))
            .and_then(|r| r)
            .map_err(|e| ServiceError::Internal(format!("sandbox {}: {e}", r.id)))
    }

    /// A ready member for `req` made into the sandbox `req` asks for: `Ok(None)` when
    /// no member of its image and shape is ready, or it could not be rebound (it is
    /// destroyed, and the create restores or boots). Once the member's record is the
    /// sandbox's, a failure is the create's (a retry finds the sandbox). The caller
    /// holds `req.id`'s lock and checked the request.
    pub(super) async fn claim(
        &self,
        req: &CreateSandbox,
    ) -> Result<Option<SandboxView>, ServiceError> {
        if !req.start || req.from_snapshot.is_some() || req.fork_of_running.is_some() {
            return Ok(None);
        }
        let Some(member) = self.warm.take(&req.image, req.cpus, req.memory_mb) else {
            return Ok(None);
        };
        self.warm.wake.notify_one();
        let started = tokio::time::Instant::now();
        let guard = self.lock(&member).await;
        let rebound = self.rebind(&member, req).await;
        let rebind_ms = started.elapsed().as_millis();
        let record = match rebound {
            Ok(r) => r,
            Err(e) => {
                drop(guard);
                tracing::warn!(id = %req.id, %member, "claiming a warm pool member failed; restoring instead: {e}");
                if let Err(d) = self.destroy(&member).await {
                    tracing::warn!(%member, "removing the member: {d}");
                }
                return Ok(None);
            }
        };
        let claimed = SandboxRecord {
            id: req.id.clone(),
            tap: Some(record.tap()),
            hostname: Some(req.name.clone()),
            ssh_user_ca_keys: req.ssh_user_ca_keys.clone(),
            egress: req.egress.clone(),
            created_at_unix: crate::unix_now(),
            start_path: Some("pool".to_owned()),
            pooled: false,
            ..record
        };
        // From here on the sandbox is the request's: a crash leaves it, not a member.
        self.store.rekey(&member, &claimed).await?;
        self.firewall.remove(&member);
        self.firewall.upsert(&claimed);
        self.firewall.set_ip(&claimed.id, claimed.known_ip);
        self.ssh.rekey(&member, &claimed.id);
        let _ = tokio::fs::rename(self.console_log(&member), self.console_log(&claimed.id)).await;
        drop(guard);
        self.forget_lock(&member);
        self.firewall.sync().await?;
        // The next boot's identity (SMBIOS): the sandbox's id, name and CAs.
        self.hv.define(&self.spec_for(&claimed)).await?;
        tracing::info!(id = %req.id, %member, rebind_ms, claim_ms = started.elapsed().as_millis(), "sandbox claimed from the warm pool");
        self.get(&claimed.id).await.map(Some)
    }

    /// Resumes member `member` and gives its guest the identity `req` asks for; its
    /// record. The caller holds the member's lock.
    async fn rebind(
        &self,
        member: &SandboxId,
        req: &CreateSandbox,
    ) -> Result<SandboxRecord, ServiceError> {
        let r = self.record(member).await?;
        self.hv.resume(&r.domain_uuid).await?;
        let rebind = Rebind {
            sandbox_id: req.id.to_string(),
            hostname: req.name.to_string(),
            now_unix: crate::unix_now(),
            user_ca_keys: req.ssh_user_ca_keys.clone(),
        };
        let cert = self.warm.certificate(member, self.ssh.key())?;
        self.in_guest(&r, &rebind.command(), REBIND_TIMEOUT, &cert)
            .await?;
        Ok(r)
    }
}

#[cfg(test)]
#[path = "warm_tests.rs"]
mod tests;
