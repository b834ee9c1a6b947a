//! The backend in front of the hypervisor. The service logic (`sandboxes`, `reconcile`)
//! speaks only this trait; [`libvirt`] is the product implementation.
//!
//! Every domain the agent creates carries an ownership mark ([`FluidMeta`]); an
//! implementation only ever lists or touches domains whose mark names this agent's host.
//!
//! Snapshots are the hypervisor's internal snapshots of a domain's overlay (qcow2):
//! taken with the memory state while the domain runs, disk-only while it is shut off.
//! Each carries a free-text description, in which the agent keeps its own metadata, so
//! the hypervisor is the single source of truth for which snapshots exist.

pub mod domain_xml;
pub mod guest_agent;
pub mod leases;
pub mod libvirt;
pub mod network_xml;
pub mod snapshot_xml;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use fluid_proto::model::{Name, SandboxId};
use serde::{Deserialize, Serialize};

use crate::config::VirtType;

/// XML namespace of the ownership mark in a domain's `<metadata>`.
pub const FLUID_XMLNS: &str = "https://fluid.dev/xmlns/sandbox/1";

/// Errors a caller branches on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HypervisorError {
    /// The domain (network, …) does not exist, or is not this agent's.
    #[error("{0} not found")]
    NotFound(String),
    /// The domain exists, but not the named snapshot of it.
    #[error("{0} not found")]
    NoSnapshot(String),
    /// The hypervisor cannot be reached.
    #[error("hypervisor unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Failed(String),
}

pub type Result<T, E = HypervisorError> = std::result::Result<T, E>;

/// How the guest boots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Boot {
    /// From the disk's boot loader.
    Disk,
    /// Direct kernel boot.
    Kernel {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        cmdline: Option<String>,
    },
}

/// Everything needed to define one sandbox's domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainSpec {
    pub id: SandboxId,
    /// The libvirt domain's name.
    pub name: Name,
    /// The guest's hostname (SMBIOS `fluid:hostname`): the sandbox's name.
    pub hostname: Name,
    pub uuid: String,
    /// The agent's host name (the ownership mark).
    pub agent: Name,
    pub image: Name,
    pub virt_type: VirtType,
    pub cpus: u32,
    pub memory_mb: u64,
    pub boot: Boot,
    /// The sandbox's qcow2 overlay (vda).
    pub overlay: PathBuf,
    pub network: Name,
    pub mac: String,
    /// The host-side tap device of the NIC (`fx…`, see `network::tap_name`).
    pub tap: String,
    /// Where the serial console is logged.
    pub console_log: PathBuf,
    /// User CA keys the guest's sshd must trust (SMBIOS OEM strings).
    pub ssh_user_ca_keys: Vec<String>,
    /// The NIC starts with its link down (`<link state='down'/>`): a memory template,
    /// and the XML its clones are restored with (`crate::templates`).
    pub link_down: bool,
}

/// The ownership mark in a domain's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FluidMeta {
    pub id: String,
    pub agent: String,
    pub image: String,
}

/// A domain's run state as the hypervisor reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainState {
    Running,
    ShutOff,
    Paused,
    Crashed,
    /// Anything else (no state, suspended to RAM, …), described.
    Other(String),
}

/// One domain owned by this agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedDomain {
    pub uuid: String,
    pub name: String,
    pub state: DomainState,
    pub meta: FluidMeta,
}

/// A DHCP lease on a network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub mac: String,
    pub ip: Ipv4Addr,
}

/// What the agent needs to know about the libvirt network its sandboxes join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkInfo {
    /// The Linux bridge (e.g. `virbr0`).
    pub bridge: String,
    /// The host's IPv4 address on the bridge with the network's prefix (e.g.
    /// 192.168.122.1/24); `None` when the network has no IPv4 address.
    pub ipv4: Option<ipnet::Ipv4Net>,
    /// The first DHCP range of that address (first, last), if it serves DHCP.
    pub dhcp_range: Option<(Ipv4Addr, Ipv4Addr)>,
    /// Its static DHCP hosts (any agent's, or an operator's).
    pub dhcp_hosts: Vec<DhcpHost>,
}

/// A static DHCP host entry of a network (`<host mac=… ip=…/>`): dnsmasq gives `ip` to
/// `mac` only, and never gives `ip` to anyone else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpHost {
    /// Lower case.
    pub mac: String,
    pub ip: Ipv4Addr,
}

/// Host resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeInfo {
    pub cpus: u32,
    pub memory_mb_total: u64,
    pub memory_mb_free: u64,
}

/// An existing domain used as an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceDomain {
    pub uuid: String,
    pub state: DomainState,
    pub persistent: bool,
    /// The first disk's file and its format (`qcow2`, `raw`, …).
    pub disk_path: PathBuf,
    pub disk_format: String,
    pub boot: Boot,
}

/// One internal snapshot of a domain, as the hypervisor reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainSnapshot {
    pub name: String,
    /// The text stored with the snapshot (the agent's JSON metadata; anything for a
    /// snapshot someone else made).
    pub description: String,
    /// The domain's state when it was taken: `running`, `shutoff`, `paused`, ….
    pub state: String,
    /// The memory state is included (taken while the domain ran).
    pub memory: bool,
    /// Seconds since the Unix epoch.
    pub creation_time: i64,
}

/// The run state a domain is left in after a revert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevertTo {
    /// The snapshot's own: running for a snapshot with memory, shut off for a
    /// disk-only one.
    AsTaken,
    /// Running (a disk-only snapshot boots the domain).
    Running,
    /// Paused.
    Paused,
}

/// What a program run through the guest agent left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestOutput {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
}

#[async_trait]
pub trait Hypervisor: Send + Sync + 'static {
    /// Defines (persistently) the domain described by `spec`. Does not start it.
    async fn define(&self, spec: &DomainSpec) -> Result<()>;
    async fn start(&self, uuid: &str) -> Result<()>;
    /// Asks the guest to shut down (ACPI). Returns at once.
    async fn shutdown(&self, uuid: &str) -> Result<()>;
    /// Cuts the power. Succeeds if the domain is already off.
    async fn power_off(&self, uuid: &str) -> Result<()>;
    /// Removes the domain's definition (it must be off).
    async fn undefine(&self, uuid: &str) -> Result<()>;
    /// Every domain whose ownership mark names this agent.
    async fn list_owned(&self) -> Result<Vec<OwnedDomain>>;
    async fn domain_state(&self, uuid: &str) -> Result<DomainState>;
    /// True when any domain (ours or not) has this name.
    async fn name_in_use(&self, name: &str) -> Result<bool>;
    /// The network's current DHCP leases (IPv4).
    async fn leases(&self, network: &str) -> Result<Vec<Lease>>;
    /// Releases a DHCP lease so the address can be handed out again at once.
    async fn release_lease(&self, network: &str, lease: &Lease) -> Result<()>;
    /// The network's bridge and IPv4 address (for the agent's firewall and DNS proxy),
    /// its DHCP range and static hosts.
    async fn network_info(&self, network: &str) -> Result<NetworkInfo>;
    /// Adds a static DHCP host entry, live and to the network's persistent config.
    /// Fails when an entry with that MAC or address exists.
    async fn add_dhcp_host(&self, network: &str, host: &DhcpHost) -> Result<()>;
    /// Removes the static DHCP host entry; a missing one is fine.
    async fn remove_dhcp_host(&self, network: &str, host: &DhcpHost) -> Result<()>;
    async fn node_info(&self) -> Result<NodeInfo>;
    /// A domain used as an image (not necessarily ours; only read).
    async fn source_domain(&self, name: &str) -> Result<SourceDomain>;

    /// Takes an internal snapshot `name` of the domain with `description` stored in
    /// it: with the memory state while the domain runs (the guest is paused while it
    /// is saved), disk-only while it is shut off. Fails if the name is taken.
    async fn snapshot_create(&self, uuid: &str, name: &str, description: &str) -> Result<()>;
    /// The domain's snapshots, oldest first.
    async fn snapshot_list(&self, uuid: &str) -> Result<Vec<DomainSnapshot>>;
    /// Reverts disk (and memory, when the snapshot has it) to the snapshot, leaving
    /// the domain as `to` says. [`HypervisorError::NoSnapshot`] when it is missing.
    async fn snapshot_revert(&self, uuid: &str, name: &str, to: RevertTo) -> Result<()>;
    /// Deletes the snapshot (its data leaves the overlay; later snapshots stay).
    /// [`HypervisorError::NoSnapshot`] when it is missing.
    async fn snapshot_delete(&self, uuid: &str, name: &str) -> Result<()>;
    /// The snapshot's XML as libvirt keeps it, with the domain it was taken of.
    async fn snapshot_xml(&self, uuid: &str, name: &str) -> Result<String>;
    /// Defines a snapshot on the domain from `xml` (libvirt's redefine): its data must
    /// already be in the domain's disk (an overlay copied with it).
    async fn snapshot_redefine(&self, uuid: &str, xml: &str) -> Result<()>;

    /// Starts a transient domain (gone when it stops): a memory template being built.
    async fn start_transient(&self, spec: &DomainSpec) -> Result<()>;
    /// Saves the running domain's memory and device state to `path` (a libvirt save
    /// image); the domain stops.
    async fn save(&self, uuid: &str, path: &Path) -> Result<()>;
    /// Restores a save image, running. Its XML names the domain: an existing
    /// definition with the same name and UUID becomes the restored domain.
    async fn restore(&self, path: &Path) -> Result<()>;
    /// Pauses the running domain's vCPUs (it keeps its memory and devices).
    async fn suspend(&self, uuid: &str) -> Result<()>;
    /// Runs a paused domain again.
    async fn resume(&self, uuid: &str) -> Result<()>;
    /// Replaces the live NIC's settings (link state) with `interface_xml`.
    async fn update_interface(&self, uuid: &str, interface_xml: &str) -> Result<()>;
    /// Runs `argv` in the guest through its guest agent and waits for it (at most
    /// `timeout`).
    async fn guest_exec(
        &self,
        uuid: &str,
        argv: &[String],
        timeout: Duration,
    ) -> Result<GuestOutput>;
}

/// The lowercase `52:54:00:xx:xx:xx` MAC address form.
pub fn random_mac() -> String {
    let b: [u8; 3] = rand::random();
    format!("52:54:00:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2])
}

pub mod simulated;
