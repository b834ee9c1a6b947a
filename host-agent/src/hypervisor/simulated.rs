//! An in-memory [`Hypervisor`]: the domains, leases, snapshots and save images of a
//! simulated host. It is the hypervisor of the agent's unit tests and of simulated
//! hosts (`[simulated]` in the agent's config, control-plane scale tests); never of a
//! real host. Starting a domain hands its MAC a DHCP lease once the profile's boot time
//! has passed (at once in tests). Snapshots are kept per domain (memory while running,
//! disk-only while shut off) and go with an undefine, as libvirt's do with
//! `VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA`. Failure injection: the `fail_*` switches
//! (tests) and the profile's failure rate (defines and starts fail at random).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{
    DhcpHost, DomainSnapshot, DomainSpec, DomainState, FluidMeta, GuestOutput, Hypervisor,
    HypervisorError, Lease, NetworkInfo, NodeInfo, OwnedDomain, Result, RevertTo, SourceDomain,
};

/// Calls kept in each log of [`SimState`] (the oldest go first).
const LOG_CAP: usize = 1024;

/// How a simulated host behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct SimProfile {
    /// From a domain's start to its DHCP lease.
    pub boot: Duration,
    /// The share (0..=1) of defines and starts that fail.
    pub failure_rate: f64,
    pub cpus: u32,
    pub memory_mb: u64,
}

impl Default for SimProfile {
    fn default() -> Self {
        Self {
            boot: Duration::ZERO,
            failure_rate: 0.0,
            cpus: 16,
            memory_mb: 65536,
        }
    }
}

/// Appends `call` to a log of [`SimState`], which keeps the last [`LOG_CAP`].
fn log<T>(calls: &mut Vec<T>, call: T) {
    if calls.len() >= LOG_CAP {
        calls.remove(0);
    }
    calls.push(call);
}

#[derive(Debug, Clone)]
pub struct SimDomain {
    pub name: String,
    pub state: DomainState,
    pub meta: FluidMeta,
    pub mac: String,
    /// Oldest first.
    pub snapshots: Vec<DomainSnapshot>,
}

#[derive(Debug, Default)]
pub struct SimState {
    /// By uuid.
    pub domains: BTreeMap<String, SimDomain>,
    pub leases: Vec<Lease>,
    /// Leases of domains still booting, each with when it is handed out.
    pub booting: Vec<(Lease, Instant)>,
    pub released: Vec<Lease>,
    pub sources: HashMap<String, SourceDomain>,
    /// The guest ignores ACPI shutdown requests.
    pub ignore_shutdown: bool,
    pub fail_define: bool,
    pub fail_start: bool,
    pub unavailable: bool,
    pub next_ip: u8,
    /// Static DHCP hosts (the guest's DHCP gets its entry's address).
    pub dhcp_hosts: Vec<DhcpHost>,
    pub defines: usize,
    /// Snapshot creates fail.
    pub fail_snapshot: bool,
    /// Every snapshot create, revert and delete: (operation, domain uuid, name).
    pub snapshot_calls: Vec<(&'static str, String, String)>,
    /// Domains started transient (gone when they stop).
    pub transient: HashSet<String>,
    /// Every restore: the uuid restored.
    pub restores: Vec<String>,
    /// Every live interface update: (uuid, XML).
    pub interface_updates: Vec<(String, String)>,
    /// Every guest-exec: (uuid, argv).
    pub guest_execs: Vec<(String, Vec<String>)>,
    /// The exit code guest-execs answer.
    pub guest_exec_exit: i32,
    /// Restores fail.
    pub fail_restore: bool,
    /// `resume` fails (a warm pool member that cannot be claimed).
    pub fail_resume: bool,
}

#[derive(Debug)]
pub struct SimulatedHypervisor {
    pub host: String,
    pub profile: SimProfile,
    pub state: Mutex<SimState>,
}

impl SimulatedHypervisor {
    /// A host whose guests boot at once and never fail (unit tests).
    pub fn new(host: &str) -> Self {
        Self::with_profile(host, SimProfile::default())
    }

    pub fn with_profile(host: &str, profile: SimProfile) -> Self {
        Self {
            host: host.into(),
            profile,
            state: Mutex::new(SimState {
                next_ip: 10,
                ..SimState::default()
            }),
        }
    }

    /// A failure drawn at the profile's rate.
    fn chance_failure(&self, what: &str) -> Result<()> {
        let rate = self.profile.failure_rate;
        if rate > 0.0 && rand::random::<f64>() < rate {
            return Err(HypervisorError::Failed(format!(
                "{what} failed (simulated, failure rate {rate})"
            )));
        }
        Ok(())
    }

    pub fn lock(&self) -> MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a domain directly (e.g. an orphan, or another agent's domain).
    pub fn insert(&self, uuid: &str, name: &str, id: &str, agent: &str, state: DomainState) {
        self.lock().domains.insert(
            uuid.into(),
            SimDomain {
                name: name.into(),
                state,
                meta: FluidMeta {
                    id: id.into(),
                    agent: agent.into(),
                    image: "debian-12".into(),
                },
                mac: "52:54:00:ff:ff:ff".into(),
                snapshots: Vec::new(),
            },
        );
    }

    pub fn owned_count(&self) -> usize {
        let host = self.host.clone();
        self.lock()
            .domains
            .values()
            .filter(|d| d.meta.agent == host)
            .count()
    }

    fn with<T>(&self, uuid: &str, f: impl FnOnce(&mut SimState, &str) -> Result<T>) -> Result<T> {
        let mut s = self.lock();
        if s.unavailable {
            return Err(HypervisorError::Unavailable("fake is down".into()));
        }
        match s.domains.get(uuid) {
            Some(d) if d.meta.agent == self.host => f(&mut s, uuid),
            _ => Err(HypervisorError::NotFound(format!("domain {uuid}"))),
        }
    }

    /// Hands the domain's MAC a fresh lease (as its guest's DHCP would), after `boot`.
    fn give_lease(s: &mut SimState, uuid: &str, boot: Duration) {
        let Some(mac) = s.domains.get(uuid).map(|d| d.mac.clone()) else {
            return;
        };
        let ip = match s.dhcp_hosts.iter().find(|h| h.mac == mac) {
            Some(h) => h.ip,
            None => {
                let ip = Ipv4Addr::new(192, 168, 122, s.next_ip);
                s.next_ip = s.next_ip.wrapping_add(1);
                ip
            }
        };
        s.leases.retain(|l| l.mac != mac);
        s.booting.retain(|(l, _)| l.mac != mac);
        let lease = Lease { mac, ip };
        if boot.is_zero() {
            s.leases.push(lease);
        } else {
            s.booting.push((lease, Instant::now() + boot));
        }
    }

    /// The names of a domain's snapshots.
    pub fn snapshot_names(&self, uuid: &str) -> Vec<String> {
        self.lock()
            .domains
            .get(uuid)
            .map(|d| d.snapshots.iter().map(|s| s.name.clone()).collect())
            .unwrap_or_default()
    }

    /// Shuts the domain off; a transient one is gone, as with libvirt.
    fn stop(&self, uuid: &str) -> Result<()> {
        let mut s = self.lock();
        if s.transient.remove(uuid) {
            s.domains.remove(uuid);
            return Ok(());
        }
        drop(s);
        self.set_state(uuid, DomainState::ShutOff)
    }

    fn set_state(&self, uuid: &str, state: DomainState) -> Result<()> {
        self.with(uuid, |s, uuid| {
            if let Some(d) = s.domains.get_mut(uuid) {
                d.state = state;
            }
            Ok(())
        })
    }
}

#[async_trait]
impl Hypervisor for SimulatedHypervisor {
    async fn define(&self, spec: &DomainSpec) -> Result<()> {
        self.chance_failure("define")?;
        let mut s = self.lock();
        if s.fail_define {
            return Err(HypervisorError::Failed("define refused".into()));
        }
        if s.domains
            .iter()
            .any(|(u, d)| d.name == spec.name.as_str() && *u != spec.uuid)
        {
            return Err(HypervisorError::Failed("name taken".into()));
        }
        s.defines += 1;
        // As libvirt: defining an existing domain changes its next boot, not its run.
        let (state, snapshots) = s
            .domains
            .remove(&spec.uuid)
            .map_or((DomainState::ShutOff, Vec::new()), |d| {
                (d.state, d.snapshots)
            });
        s.domains.insert(
            spec.uuid.clone(),
            SimDomain {
                name: spec.name.to_string(),
                state,
                meta: FluidMeta {
                    id: spec.id.to_string(),
                    agent: spec.agent.to_string(),
                    image: spec.image.to_string(),
                },
                mac: spec.mac.clone(),
                snapshots,
            },
        );
        Ok(())
    }

    async fn start(&self, uuid: &str) -> Result<()> {
        self.chance_failure("start")?;
        let boot = self.profile.boot;
        self.with(uuid, |s, uuid| {
            if s.fail_start {
                return Err(HypervisorError::Failed("start refused".into()));
            }
            let Some(d) = s.domains.get_mut(uuid) else {
                return Err(HypervisorError::NotFound(uuid.into()));
            };
            if d.state == DomainState::Running {
                return Err(HypervisorError::Failed("already running".into()));
            }
            d.state = DomainState::Running;
            Self::give_lease(s, uuid, boot);
            Ok(())
        })
    }

    async fn shutdown(&self, uuid: &str) -> Result<()> {
        if self.lock().ignore_shutdown {
            return self.with(uuid, |_, _| Ok(()));
        }
        self.set_state(uuid, DomainState::ShutOff)
    }

    async fn power_off(&self, uuid: &str) -> Result<()> {
        self.stop(uuid)
    }

    async fn undefine(&self, uuid: &str) -> Result<()> {
        self.with(uuid, |s, uuid| {
            if s.domains
                .get(uuid)
                .is_some_and(|d| d.state != DomainState::ShutOff)
            {
                return Err(HypervisorError::Failed("domain is running".into()));
            }
            s.domains.remove(uuid);
            Ok(())
        })
    }

    async fn list_owned(&self) -> Result<Vec<OwnedDomain>> {
        let s = self.lock();
        if s.unavailable {
            return Err(HypervisorError::Unavailable("fake is down".into()));
        }
        Ok(s.domains
            .iter()
            .filter(|(_, d)| d.meta.agent == self.host)
            .map(|(uuid, d)| OwnedDomain {
                uuid: uuid.clone(),
                name: d.name.clone(),
                state: d.state.clone(),
                meta: d.meta.clone(),
            })
            .collect())
    }

    async fn domain_state(&self, uuid: &str) -> Result<DomainState> {
        self.with(uuid, |s, uuid| {
            s.domains
                .get(uuid)
                .map(|d| d.state.clone())
                .ok_or_else(|| HypervisorError::NotFound(uuid.into()))
        })
    }

    async fn name_in_use(&self, name: &str) -> Result<bool> {
        Ok(self.lock().domains.values().any(|d| d.name == name))
    }

    async fn leases(&self, _network: &str) -> Result<Vec<Lease>> {
        let mut s = self.lock();
        let now = Instant::now();
        let (due, booting): (Vec<_>, Vec<_>) = std::mem::take(&mut s.booting)
            .into_iter()
            .partition(|(_, at)| *at <= now);
        s.booting = booting;
        s.leases.extend(due.into_iter().map(|(l, _)| l));
        Ok(s.leases.clone())
    }

    async fn release_lease(&self, _network: &str, lease: &Lease) -> Result<()> {
        let mut s = self.lock();
        s.leases.retain(|l| l != lease);
        log(&mut s.released, lease.clone());
        Ok(())
    }

    async fn network_info(&self, _network: &str) -> Result<NetworkInfo> {
        Ok(NetworkInfo {
            bridge: "virbr0".into(),
            ipv4: Some(ipnet::Ipv4Net::new(Ipv4Addr::new(192, 168, 122, 1), 24).expect("net")),
            dhcp_range: Some((
                Ipv4Addr::new(192, 168, 122, 10),
                Ipv4Addr::new(192, 168, 122, 254),
            )),
            dhcp_hosts: self.lock().dhcp_hosts.clone(),
        })
    }

    async fn add_dhcp_host(&self, _network: &str, host: &DhcpHost) -> Result<()> {
        let mut s = self.lock();
        if s.dhcp_hosts
            .iter()
            .any(|h| h.mac == host.mac || h.ip == host.ip)
        {
            return Err(HypervisorError::Failed(format!(
                "there is an existing dhcp host entry that matches {host:?}"
            )));
        }
        s.dhcp_hosts.push(host.clone());
        Ok(())
    }

    async fn remove_dhcp_host(&self, _network: &str, host: &DhcpHost) -> Result<()> {
        self.lock().dhcp_hosts.retain(|h| h != host);
        Ok(())
    }

    async fn node_info(&self) -> Result<NodeInfo> {
        // The host itself uses a sixteenth.
        Ok(NodeInfo {
            cpus: self.profile.cpus,
            memory_mb_total: self.profile.memory_mb,
            memory_mb_free: self.profile.memory_mb / 16 * 15,
        })
    }

    async fn source_domain(&self, name: &str) -> Result<SourceDomain> {
        self.lock()
            .sources
            .get(name)
            .cloned()
            .ok_or_else(|| HypervisorError::NotFound(format!("domain {name}")))
    }

    async fn snapshot_create(&self, uuid: &str, name: &str, description: &str) -> Result<()> {
        self.with(uuid, |s, uuid| {
            log(&mut s.snapshot_calls, ("create", uuid.into(), name.into()));
            if s.fail_snapshot {
                return Err(HypervisorError::Failed("snapshot refused".into()));
            }
            let Some(d) = s.domains.get_mut(uuid) else {
                return Err(HypervisorError::NotFound(uuid.into()));
            };
            if d.snapshots.iter().any(|x| x.name == name) {
                return Err(HypervisorError::Failed(format!(
                    "snapshot {name} already exists"
                )));
            }
            let (state, memory) = match d.state {
                DomainState::Running => ("running", true),
                DomainState::Paused => ("paused", true),
                _ => ("shutoff", false),
            };
            d.snapshots.push(DomainSnapshot {
                name: name.into(),
                description: description.into(),
                state: state.into(),
                memory,
                creation_time: crate::unix_now(),
            });
            Ok(())
        })
    }

    async fn snapshot_list(&self, uuid: &str) -> Result<Vec<DomainSnapshot>> {
        self.with(uuid, |s, uuid| {
            Ok(s.domains
                .get(uuid)
                .map(|d| d.snapshots.clone())
                .unwrap_or_default())
        })
    }

    async fn snapshot_revert(&self, uuid: &str, name: &str, to: RevertTo) -> Result<()> {
        let boot = self.profile.boot;
        self.with(uuid, |s, uuid| {
            log(&mut s.snapshot_calls, ("revert", uuid.into(), name.into()));
            let Some(d) = s.domains.get_mut(uuid) else {
                return Err(HypervisorError::NotFound(uuid.into()));
            };
            let Some(snap) = d.snapshots.iter().find(|x| x.name == name) else {
                return Err(HypervisorError::NoSnapshot(format!("snapshot {name}")));
            };
            let state = match (to, snap.memory) {
                (RevertTo::Paused, _) => DomainState::Paused,
                (RevertTo::Running, _) | (RevertTo::AsTaken, true) => DomainState::Running,
                (RevertTo::AsTaken, false) => DomainState::ShutOff,
            };
            let booted = state == DomainState::Running && !snap.memory;
            d.state = state;
            if booted {
                Self::give_lease(s, uuid, boot);
            }
            Ok(())
        })
    }

    async fn snapshot_delete(&self, uuid: &str, name: &str) -> Result<()> {
        self.with(uuid, |s, uuid| {
            log(&mut s.snapshot_calls, ("delete", uuid.into(), name.into()));
            let Some(d) = s.domains.get_mut(uuid) else {
                return Err(HypervisorError::NotFound(uuid.into()));
            };
            let before = d.snapshots.len();
            d.snapshots.retain(|x| x.name != name);
            if d.snapshots.len() == before {
                return Err(HypervisorError::NoSnapshot(format!("snapshot {name}")));
            }
            Ok(())
        })
    }

    async fn snapshot_xml(&self, uuid: &str, name: &str) -> Result<String> {
        self.with(uuid, |s, uuid| {
            let d = s
                .domains
                .get(uuid)
                .ok_or_else(|| HypervisorError::NotFound(uuid.into()))?;
            let snap = d
                .snapshots
                .iter()
                .find(|x| x.name == name)
                .ok_or_else(|| HypervisorError::NoSnapshot(format!("snapshot {name}")))?;
            let memory = if snap.memory { "internal" } else { "no" };
            Ok(format!(
                "<domainsnapshot><name>{}</name><state>{}</state><creationTime>{}</creationTime>\
                 <memory snapshot='{memory}'/><domain type='qemu'><uuid>{uuid}</uuid></domain>\
                 </domainsnapshot>",
                snap.name, snap.state, snap.creation_time
            ))
        })
    }

    async fn snapshot_redefine(&self, uuid: &str, xml: &str) -> Result<()> {
        let snap = super::snapshot_xml::parse(xml)
            .map_err(|e| HypervisorError::Failed(format!("snapshot XML: {e}")))?;
        self.with(uuid, |s, uuid| {
            log(
                &mut s.snapshot_calls,
                ("redefine", uuid.into(), snap.name.clone()),
            );
            let d = s
                .domains
                .get_mut(uuid)
                .ok_or_else(|| HypervisorError::NotFound(uuid.into()))?;
            if !xml.contains(&format!("<uuid>{uuid}</uuid>")) {
                return Err(HypervisorError::Failed(
                    "definition for snapshot must use this domain's uuid".into(),
                ));
            }
            d.snapshots.retain(|x| x.name != snap.name);
            d.snapshots.push(snap.clone());
            Ok(())
        })
    }

    async fn start_transient(&self, spec: &DomainSpec) -> Result<()> {
        self.define(spec).await?;
        self.lock().transient.insert(spec.uuid.clone());
        self.start(&spec.uuid).await
    }

    async fn save(&self, uuid: &str, path: &Path) -> Result<()> {
        let xml = format!("<domain><uuid>{uuid}</uuid></domain>");
        std::fs::write(path, crate::templates::save_image::simulated_image(&xml))
            .map_err(|e| HypervisorError::Failed(format!("{}: {e}", path.display())))?;
        self.stop(uuid)
    }

    async fn restore(&self, path: &Path) -> Result<()> {
        let xml = crate::templates::save_image::read_xml(path)
            .map_err(|e| HypervisorError::Failed(e.to_string()))?;
        let uuid = xml
            .split_once("<uuid>")
            .and_then(|(_, rest)| rest.split_once("</uuid>"))
            .map(|(uuid, _)| uuid.to_owned())
            .ok_or_else(|| HypervisorError::Failed("no uuid in the save image".into()))?;
        self.with(&uuid, |s, uuid| {
            if s.fail_restore {
                return Err(HypervisorError::Failed("restore refused".into()));
            }
            let Some(d) = s.domains.get_mut(uuid) else {
                return Err(HypervisorError::NotFound(uuid.into()));
            };
            d.state = DomainState::Running;
            log(&mut s.restores, uuid.into());
            Ok(())
        })
    }

    async fn suspend(&self, uuid: &str) -> Result<()> {
        self.with(uuid, |s, uuid| match s.domains.get_mut(uuid) {
            Some(d) if d.state == DomainState::Running => {
                d.state = DomainState::Paused;
                Ok(())
            }
            Some(_) => Err(HypervisorError::Failed("domain is not running".into())),
            None => Err(HypervisorError::NotFound(uuid.into())),
        })
    }

    async fn resume(&self, uuid: &str) -> Result<()> {
        if self.lock().fail_resume {
            return Err(HypervisorError::Failed("resume refused".into()));
        }
        self.with(uuid, |s, uuid| match s.domains.get_mut(uuid) {
            Some(d) if d.state == DomainState::Paused => {
                d.state = DomainState::Running;
                Ok(())
            }
            Some(_) => Err(HypervisorError::Failed("domain is not paused".into())),
            None => Err(HypervisorError::NotFound(uuid.into())),
        })
    }

    async fn update_interface(&self, uuid: &str, interface_xml: &str) -> Result<()> {
        self.with(uuid, |s, uuid| {
            log(
                &mut s.interface_updates,
                (uuid.into(), interface_xml.into()),
            );
            Ok(())
        })
    }

    async fn guest_exec(
        &self,
        uuid: &str,
        argv: &[String],
        _timeout: Duration,
    ) -> Result<GuestOutput> {
        self.with(uuid, |s, uuid| {
            log(&mut s.guest_execs, (uuid.into(), argv.to_vec()));
            Ok(GuestOutput {
                exit_code: s.guest_exec_exit,
                stdout: String::new(),
                stderr: String::new(),
            })
        })
    }
}
