//! The firewall in force: what this agent knows about its sandboxes' network (MAC,
//! learned IP, allow-list, addresses their domains resolved to), and the nftables
//! state made from it.
//!
//! Changes are made in memory first (each bumps a generation), then applied as one
//! full rebuild of both tables ([`Firewall::sync`]): simple to reason about, atomic,
//! and cheap at the scale of one host (a few hundred rules). Resolved addresses are the
//! exception: the DNS proxy reports them on the query path, so they are added with a
//! small incremental batch, and kept in memory (with their expiry) so the next rebuild
//! puts them back. Applies are serialised; a batch is always built from the state at
//! the time it is applied, so a later apply never undoes an earlier change.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fluid_proto::model::{EgressPolicy, SandboxId};
use futures::future::BoxFuture;
use nftables::types::NfFamily;

use super::NetworkSettings;
use super::nft::{NftBackend, NftError};
use super::ruleset::{self, SandboxNet, Shape};
use crate::state::SandboxRecord;

/// A resolved address stays allowed at least this long, whatever its TTL: a client
/// may connect a little after its answer, and TTLs of 0-5 s are common with CDNs.
/// The default of `[network] resolved_min_secs`. When it runs out (and the sandbox has
/// not resolved the name again), connections to the address are cut: the rules match
/// every packet of a connection against the set, not only its first.
pub const RESOLVED_MIN: Duration = Duration::from_secs(30);
/// ... and at most this long (a one-week TTL must not pin an address for a week).
pub const RESOLVED_MAX: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("network isolation: {0}")]
    Settings(String),
    #[error("applying the sandbox network rules: {0}")]
    Nft(#[from] NftError),
}

/// One sandbox's network facts.
#[derive(Debug, Clone)]
struct Member {
    /// The host side of its NIC.
    tap: String,
    mac: String,
    ip: Option<Ipv4Addr>,
    policy: EgressPolicy,
    /// Domain → address → until when it is allowed.
    resolved: BTreeMap<String, BTreeMap<Ipv4Addr, Instant>>,
}

impl Member {
    /// Drops expired addresses and domains the sandbox no longer names.
    fn prune(&mut self, domains: &[String], now: Instant) {
        self.resolved.retain(|d, addrs| {
            addrs.retain(|_, until| *until > now);
            !addrs.is_empty() && domains.contains(d)
        });
    }
}

#[derive(Debug, Default)]
struct State {
    members: BTreeMap<SandboxId, Member>,
    /// Bumped by every change.
    generation: u64,
    /// The generation the kernel holds (after the last successful full apply).
    applied: u64,
    /// What the tables look like after that apply.
    shape: Option<Shape>,
    /// The boot-time deny table (`table bridge fluid-boot`) has been removed, in the
    /// batch of the first successful full apply.
    boot_table_removed: bool,
}

/// This agent's sandbox firewall. Without settings (`[network] enforce = false`) it
/// keeps its bookkeeping but never runs `nft`.
pub struct Firewall {
    settings: Option<NetworkSettings>,
    nft: Arc<dyn NftBackend>,
    state: Mutex<State>,
    /// Serialises everything that runs `nft`.
    apply: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Firewall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Firewall")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Does nothing: the backend of a firewall that does not enforce.
struct NoNft;

#[async_trait::async_trait]
impl NftBackend for NoNft {
    async fn apply(&self, _: &nftables::schema::Nftables<'static>) -> Result<(), NftError> {
        Ok(())
    }
    async fn list_table(
        &self,
        _: NfFamily,
        _: &str,
    ) -> Result<Option<serde_json::Value>, NftError> {
        Ok(None)
    }
}

/// Seconds left until `until` (at least 1).
fn seconds_left(until: Instant, now: Instant) -> u32 {
    u32::try_from(until.saturating_duration_since(now).as_secs().max(1)).unwrap_or(u32::MAX)
}

/// A name as the policy holds it: lower case, no trailing dot.
fn normalise(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

impl Firewall {
    pub fn new(settings: NetworkSettings, nft: Arc<dyn NftBackend>) -> Self {
        Self {
            settings: Some(settings),
            nft,
            state: Mutex::new(State::default()),
            apply: tokio::sync::Mutex::new(()),
        }
    }

    /// A firewall that enforces nothing.
    pub fn disabled() -> Self {
        Self {
            settings: None,
            nft: Arc::new(NoNft),
            state: Mutex::new(State::default()),
            apply: tokio::sync::Mutex::new(()),
        }
    }

    pub fn settings(&self) -> Option<&NetworkSettings> {
        self.settings.as_ref()
    }

    pub fn is_enforcing(&self) -> bool {
        self.settings.is_some()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces every member with the records' (at start-up).
    pub fn load(&self, records: &[SandboxRecord]) {
        let mut st = self.lock();
        st.members = records
            .iter()
            .map(|r| {
                let m = Member {
                    tap: r.tap(),
                    mac: r.mac.to_ascii_lowercase(),
                    ip: r.known_ip,
                    policy: r.egress.clone(),
                    resolved: BTreeMap::new(),
                };
                (r.id.clone(), m)
            })
            .collect();
        st.generation += 1;
    }

    /// Adds a sandbox (sealed until its IP is learned), or updates its MAC and policy.
    pub fn upsert(&self, r: &SandboxRecord) {
        let mut st = self.lock();
        let mac = r.mac.to_ascii_lowercase();
        let tap = r.tap();
        let changed = match st.members.get_mut(&r.id) {
            Some(m) if m.mac == mac && m.policy == r.egress && m.tap == tap => false,
            Some(m) => {
                m.tap = tap;
                m.mac = mac;
                m.policy = r.egress.clone();
                true
            }
            None => {
                let m = Member {
                    tap,
                    mac,
                    ip: r.known_ip,
                    policy: r.egress.clone(),
                    resolved: BTreeMap::new(),
                };
                st.members.insert(r.id.clone(), m);
                true
            }
        };
        if changed {
            st.generation += 1;
        }
    }

    /// Forgets a sandbox; true if it was known.
    pub fn remove(&self, id: &SandboxId) -> bool {
        let mut st = self.lock();
        let existed = st.members.remove(id).is_some();
        if existed {
            st.generation += 1;
        }
        existed
    }

    /// Sets the address the rules admit from a sandbox; true if it changed.
    pub fn set_ip(&self, id: &SandboxId, ip: Option<Ipv4Addr>) -> bool {
        let mut st = self.lock();
        let changed = match st.members.get_mut(id) {
            Some(m) if m.ip != ip => {
                m.ip = ip;
                true
            }
            _ => false,
        };
        if changed {
            st.generation += 1;
        }
        changed
    }

    /// Every member's id, MAC and admitted address.
    pub fn members(&self) -> Vec<(SandboxId, String, Option<Ipv4Addr>)> {
        self.lock()
            .members
            .iter()
            .map(|(id, m)| (id.clone(), m.mac.clone(), m.ip))
            .collect()
    }

    /// True when the kernel holds every change made so far (always, when disabled).
    pub fn is_current(&self) -> bool {
        let st = self.lock();
        self.settings.is_none() || st.applied >= st.generation
    }

    /// Applies the state when something changed since the last successful apply.
    pub async fn sync(&self) -> Result<(), FirewallError> {
        let guard = self.apply.lock().await;
        self.apply_locked(&guard, false).await
    }

    /// Rebuilds and applies both tables, changed or not.
    pub async fn apply(&self) -> Result<(), FirewallError> {
        let guard = self.apply.lock().await;
        self.apply_locked(&guard, true).await
    }

    /// The full rebuild; the caller holds the apply lock (`_guard`).
    async fn apply_locked(
        &self,
        _guard: &tokio::sync::MutexGuard<'_, ()>,
        force: bool,
    ) -> Result<(), FirewallError> {
        let Some(settings) = &self.settings else {
            let mut st = self.lock();
            st.applied = st.generation;
            return Ok(());
        };
        let (generation, batch) = {
            let mut st = self.lock();
            if !force && st.applied >= st.generation {
                return Ok(());
            }
            let now = Instant::now();
            let sandboxes: Vec<SandboxNet> = st
                .members
                .iter_mut()
                .map(|(id, m)| {
                    let domains = ruleset::domains(&settings.always_allow, &m.policy);
                    m.prune(&domains, now);
                    SandboxNet {
                        id: id.clone(),
                        tap: m.tap.clone(),
                        mac: m.mac.clone(),
                        ip: m.ip,
                        policy: m.policy.clone(),
                        resolved: m
                            .resolved
                            .iter()
                            .map(|(d, addrs)| {
                                let left = addrs
                                    .iter()
                                    .map(|(a, until)| (*a, seconds_left(*until, now)))
                                    .collect();
                                (d.clone(), left)
                            })
                            .collect(),
                    }
                })
                .collect();
            let mut batch = ruleset::build(settings, &sandboxes);
            if !st.boot_table_removed {
                ruleset::remove_boot_table(&mut batch.nftables);
            }
            (st.generation, batch)
        };
        let started = Instant::now();
        let applied = self.nft.apply(&batch.nftables).await;
        crate::metrics::metrics().nft_apply(applied.is_ok());
        applied?;
        let mut st = self.lock();
        st.applied = st.applied.max(generation);
        st.shape = Some(batch.shape);
        if !st.boot_table_removed {
            st.boot_table_removed = true;
            tracing::info!(
                table = ruleset::BOOT_TABLE,
                "the agent's rules are in force; the boot-time deny is removed"
            );
        }
        tracing::debug!(
            sandboxes = st.members.len(),
            generation,
            ms = started.elapsed().as_millis(),
            "sandbox network rules applied"
        );
        Ok(())
    }

    /// The periodic check: re-applies when the last apply failed, or when the tables
    /// are missing or were changed from outside (e.g. `nft flush ruleset`). True when
    /// it re-applied.
    pub async fn check(&self) -> Result<bool, FirewallError> {
        let Some(settings) = &self.settings else {
            return Ok(false);
        };
        let guard = self.apply.lock().await;
        let (behind, shape) = {
            let st = self.lock();
            (st.applied < st.generation, st.shape)
        };
        if behind {
            tracing::warn!("sandbox network rules are behind (an apply failed); applying again");
            self.apply_locked(&guard, true).await?;
            return Ok(true);
        }
        let Some(shape) = shape else {
            self.apply_locked(&guard, true).await?;
            return Ok(true);
        };
        let mut drift = Vec::new();
        for (family, want) in [
            (NfFamily::Bridge, shape.bridge),
            (NfFamily::INet, shape.inet),
        ] {
            let name = super::nft::family_name(family);
            match self.nft.list_table(family, &settings.table).await? {
                None => drift.push(format!("table {name} {} is missing", settings.table)),
                Some(listing) => {
                    let have = ruleset::counts_of_listing(&listing);
                    if have != want {
                        drift.push(format!(
                            "table {name} {} has {have:?}, expected {want:?}",
                            settings.table
                        ));
                    }
                }
            }
        }
        if drift.is_empty() {
            return Ok(false);
        }
        tracing::warn!(
            drift = %drift.join("; "),
            "the sandbox network rules were changed outside the agent; restoring them"
        );
        self.apply_locked(&guard, true).await?;
        Ok(true)
    }

    /// Allows `addrs` (what `name` resolved to for the sandbox at `client`) for
    /// `max(ttl, resolved_min)` (at most a day), when that sandbox's allow-list (or the
    /// host's) names `name`. Only admissible addresses ([`super::admit`]): never the
    /// host's subnet, loopback, link-local, multicast, nor private ones outside
    /// `resolved_private_allow`.
    /// True when addresses were added. Only IPv4 addresses are used: sandboxes have no
    /// IPv6 (their tap drops it).
    pub async fn allow_resolved(
        &self,
        client: Ipv4Addr,
        name: &str,
        addrs: &[IpAddr],
        ttl: Duration,
    ) -> Result<bool, FirewallError> {
        let Some(settings) = &self.settings else {
            return Ok(false);
        };
        let (v4, refused): (Vec<Ipv4Addr>, Vec<Ipv4Addr>) = addrs
            .iter()
            .filter_map(|a| match a {
                IpAddr::V4(a) => Some(*a),
                IpAddr::V6(_) => None,
            })
            .partition(|a| {
                super::admit::admissible(*a, settings.host, &settings.resolved_private_allow)
            });
        if !refused.is_empty() {
            tracing::warn!(%client, name, ?refused,
                "a DNS answer named private, loopback, link-local or host-subnet addresses; not admitted");
        }
        if v4.is_empty() {
            return Ok(false);
        }
        let name = normalise(name);
        let keep = ttl.clamp(settings.resolved_min.min(RESOLVED_MAX), RESOLVED_MAX);
        let guard = self.apply.lock().await;
        let (set, elems) = {
            let mut st = self.lock();
            let Some((id, m)) = st.members.iter_mut().find(|(_, m)| m.ip == Some(client)) else {
                return Ok(false);
            };
            let domains = ruleset::domains(&settings.always_allow, &m.policy);
            let Some(index) = domains.iter().position(|d| *d == name) else {
                return Ok(false);
            };
            let set = ruleset::domain_set(id, index);
            let now = Instant::now();
            let until = now + keep;
            let known = m.resolved.entry(name.clone()).or_default();
            let elems: Vec<(Ipv4Addr, u32)> = v4
                .iter()
                .map(|a| {
                    let until = known.get(a).map_or(until, |old| (*old).max(until));
                    known.insert(*a, until);
                    (*a, seconds_left(until, now))
                })
                .collect();
            (set, elems)
        };
        if !self.is_current() {
            // The tables lag behind the state: a rebuild carries the new addresses too.
            self.apply_locked(&guard, true).await?;
            return Ok(true);
        }
        let batch = ruleset::add_resolved(&settings.table, &set, &elems);
        if let Err(e) = self.nft.apply(&batch).await {
            tracing::warn!(%set, "adding resolved addresses failed ({e}); rebuilding the tables");
            self.apply_locked(&guard, true).await?;
        }
        tracing::debug!(%client, %name, %set, addrs = ?elems, "resolved addresses allowed");
        Ok(true)
    }

    /// Whether the sandbox at `client` (its admitted address) may resolve `name`: its
    /// allow-list or the host's `always_allow` names it (exact names, as the sets are
    /// made). False for an address no sandbox holds, and when not enforcing.
    pub fn may_resolve(&self, client: Ipv4Addr, name: &str) -> bool {
        let Some(settings) = &self.settings else {
            return false;
        };
        let name = normalise(name);
        let st = self.lock();
        st.members
            .values()
            .find(|m| m.ip == Some(client))
            .is_some_and(|m| ruleset::domains(&settings.always_allow, &m.policy).contains(&name))
    }

    /// The addresses each of a sandbox's domains (its own and the host's) resolved to
    /// and that are still allowed, by domain.
    pub fn resolved(&self, id: &SandboxId) -> Vec<(String, Vec<Ipv4Addr>)> {
        let always: &[_] = self
            .settings
            .as_ref()
            .map_or(&[], |s| s.always_allow.as_slice());
        let st = self.lock();
        let Some(m) = st.members.get(id) else {
            return Vec::new();
        };
        let now = Instant::now();
        ruleset::domains(always, &m.policy)
            .into_iter()
            .map(|d| {
                let addrs = m
                    .resolved
                    .get(&d)
                    .map(|a| {
                        a.iter()
                            .filter(|(_, until)| **until > now)
                            .map(|(a, _)| *a)
                            .collect()
                    })
                    .unwrap_or_default();
                (d, addrs)
            })
            .collect()
    }
}

impl super::dns::ResolvedSink for Firewall {
    fn may_resolve(&self, client: Ipv4Addr, name: &str) -> bool {
        Firewall::may_resolve(self, client, name)
    }

    fn allow_resolved(
        &self,
        client: Ipv4Addr,
        name: &str,
        addrs: &[IpAddr],
        ttl: Duration,
    ) -> BoxFuture<'_, anyhow::Result<()>> {
        let name = name.to_owned();
        let addrs = addrs.to_vec();
        Box::pin(async move {
            Firewall::allow_resolved(self, client, &name, &addrs, ttl)
                .await
                .map(drop)
                .map_err(anyhow::Error::from)
        })
    }
}

#[cfg(test)]
mod tests;
