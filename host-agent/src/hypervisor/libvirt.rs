//! The [`Hypervisor`] backed by libvirt (`virt` crate).
//!
//! One dedicated OS thread owns the `virt::connect::Connect`. Callers send it boxed
//! closures over a channel and await the answer on a oneshot, so blocking libvirt calls
//! never run on the async runtime. The thread (re)opens the connection when it is
//! missing or dead, so a libvirtd restart costs failed calls, not a dead agent.
//!
//! Snapshot create, revert and delete can take seconds (saving or loading a guest's
//! memory); they run on a second thread with its own connection, so they never hold
//! up the quick calls (states, leases, heartbeats) behind them.
//!
//! Every call runs in a `libvirt` span named after it (`libvirt define`; reads at DEBUG
//! level) and is counted in the agent's metrics, in one place: `Libvirt::call_on`.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::oneshot;
use virt::connect::Connect;
use virt::domain::{Domain, DomainState as VirtState};
use virt::enumutil::Enum;
use virt::error::ErrorNumber;

use super::domain_xml::{self, parse_meta, parse_source_disk};
use super::leases::{self, DNSMASQ_STATE_DIR};
use super::{
    DhcpHost, DomainSnapshot, DomainSpec, DomainState, FLUID_XMLNS, FluidMeta, GuestOutput,
    Hypervisor, HypervisorError, Lease, NetworkInfo, NodeInfo, OwnedDomain, Result, RevertTo,
    SourceDomain, guest_agent, snapshot_xml,
};

type Job = Box<dyn FnOnce(Result<&Connect>) + Send>;

/// libvirt calls that only read (their spans are at DEBUG level).
const READ_OPS: [&str; 8] = [
    "network_bridge",
    "list_domains",
    "domain_state",
    "lookup_name",
    "network_info",
    "node_info",
    "source_domain",
    "snapshot_list",
];

/// A handle to the libvirt thread. Cheap to share behind an `Arc`.
pub struct Libvirt {
    jobs: mpsc::Sender<Job>,
    /// The second thread, for the slow snapshot calls.
    slow_jobs: mpsc::Sender<Job>,
    host_name: String,
    lease_dir: PathBuf,
}

impl Libvirt {
    /// Starts the connection thread and checks that libvirt answers.
    pub async fn connect(uri: &str, host_name: &str) -> Result<Self> {
        let spawn = |name: &str| {
            let (jobs, rx) = mpsc::channel::<Job>();
            let uri = uri.to_owned();
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || connection_thread(&uri, rx))
                .map_err(|e| HypervisorError::Failed(format!("spawning the {name} thread: {e}")))?;
            Ok::<_, HypervisorError>(jobs)
        };
        let lv = Self {
            jobs: spawn("libvirt")?,
            slow_jobs: spawn("libvirt-slow")?,
            host_name: host_name.to_owned(),
            lease_dir: PathBuf::from(DNSMASQ_STATE_DIR),
        };
        let (uri, version) = lv
            .call("connect", |c| {
                Ok((c.uri().map_err(map_err)?, c.lib_version().map_err(map_err)?))
            })
            .await?;
        tracing::info!(%uri, version, "connected to libvirt");
        Ok(lv)
    }

    /// Runs `f` on the libvirt thread; `op` names the call in its span and metrics.
    async fn call<T, F>(&self, op: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connect) -> Result<T> + Send + 'static,
    {
        Self::call_on(op, &self.jobs, f).await
    }

    /// Runs `f` on the thread given by `lane`, in a `libvirt` span (the child of the
    /// operation, and through it of the controller's request, that asked for it; none
    /// outside any span);
    /// counted in `fluid_agent_libvirt_calls_total` and, failed, `…_errors_total`.
    async fn call_on<T, F>(op: &'static str, lane: &mpsc::Sender<Job>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connect) -> Result<T> + Send + 'static,
    {
        // Background polls (lease watch, heartbeats) run outside any span: no trace.
        // Reads are DEBUG spans (exported with RUST_LOG=debug): an IP wait polls one
        // twice a second, which would bury the calls that change something.
        let span = if tracing::Span::current().is_none() {
            tracing::Span::none()
        } else if READ_OPS.contains(&op) {
            tracing::debug_span!(
                "libvirt",
                otel.name = %format!("libvirt {op}"),
                libvirt.op = op,
                otel.status_code = tracing::field::Empty,
            )
        } else {
            tracing::info_span!(
                "libvirt",
                otel.name = %format!("libvirt {op}"),
                libvirt.op = op,
                otel.status_code = tracing::field::Empty,
            )
        };
        let run = async move {
            let (tx, rx) = oneshot::channel();
            let job: Job = Box::new(move |conn| {
                let _ = tx.send(conn.and_then(f));
            });
            lane.send(job).map_err(|_| {
                HypervisorError::Unavailable("the libvirt thread has stopped".into())
            })?;
            rx.await
                .map_err(|_| HypervisorError::Failed("the libvirt call was aborted".into()))?
        };
        let r = tracing::Instrument::instrument(run, span.clone()).await;
        crate::metrics::metrics().libvirt_call(op, r.as_ref().err());
        if r.is_err() {
            span.record("otel.status_code", "ERROR");
        }
        r
    }

    /// Runs `f` on one of this agent's domains.
    async fn with_owned<T, F>(&self, op: &'static str, uuid: &str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Domain) -> Result<T> + Send + 'static,
    {
        let host = self.host_name.clone();
        let uuid = uuid.to_owned();
        self.call(op, move |c| f(&owned_domain(c, &host, &uuid)?))
            .await
    }

    /// [`Libvirt::with_owned`] on the slow thread.
    async fn with_owned_slow<T, F>(&self, op: &'static str, uuid: &str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Domain) -> Result<T> + Send + 'static,
    {
        let host = self.host_name.clone();
        let uuid = uuid.to_owned();
        Self::call_on(op, &self.slow_jobs, move |c| {
            f(&owned_domain(c, &host, &uuid)?)
        })
        .await
    }

    async fn bridge(&self, network: &str) -> Result<String> {
        let network = network.to_owned();
        self.call("network_bridge", move |c| {
            c.lookup_network_by_name(&network)
                .and_then(|n| n.bridge_name())
                .map_err(map_err)
        })
        .await
    }
}

/// `<host mac='…' ip='…'/>` (a MAC and an address: nothing to escape).
fn dhcp_host_xml(host: &DhcpHost) -> String {
    format!("<host mac='{}' ip='{}'/>", host.mac, host.ip)
}

/// `virNetworkUpdate` of the first IPv4 `<dhcp>`: live and persistent when the network
/// runs, persistent only when it does not (libvirt refuses `LIVE` on an inactive one).
fn update_dhcp_host(
    net: &virt::network::Network,
    command: virt::sys::virNetworkUpdateCommand,
    xml: &str,
) -> std::result::Result<(), virt::error::Error> {
    let mut flags = virt::sys::VIR_NETWORK_UPDATE_AFFECT_CONFIG;
    if net.is_active().unwrap_or(true) {
        flags |= virt::sys::VIR_NETWORK_UPDATE_AFFECT_LIVE;
    }
    net.update(
        command,
        virt::sys::VIR_NETWORK_SECTION_IP_DHCP_HOST,
        -1,
        xml,
        flags,
    )
}

fn connection_thread(uri: &str, jobs: mpsc::Receiver<Job>) {
    // libvirt's default handler prints every error (even an expected "no domain") to
    // stderr; errors are returned and logged by the caller instead.
    virt::error::clear_error_callback();
    let mut conn: Option<Connect> = None;
    while let Ok(job) = jobs.recv() {
        if let Some(c) = conn.take() {
            if c.is_alive().unwrap_or(false) {
                conn = Some(c);
            } else {
                tracing::warn!("the libvirt connection died; reconnecting");
                // Closing a dead connection may report an error, which `virt` turns
                // into a panic in `Drop`; it must not take the thread down.
                let _ = catch_unwind(AssertUnwindSafe(move || drop(c)));
            }
        }
        if conn.is_none() {
            match Connect::open(Some(uri)) {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    job(Err(HypervisorError::Unavailable(e.message().to_owned())));
                    continue;
                }
            }
        }
        if let Some(c) = conn.as_ref() {
            // A panic inside a job drops its reply sender; the caller sees an error.
            if catch_unwind(AssertUnwindSafe(|| job(Ok(c)))).is_err() {
                tracing::error!("a libvirt call panicked");
            }
        }
    }
    tracing::debug!("libvirt thread stopping");
}

fn map_err(e: virt::error::Error) -> HypervisorError {
    match e.code() {
        Enum::Known(ErrorNumber::NoDomain | ErrorNumber::NoNetwork) => {
            HypervisorError::NotFound(e.message().to_owned())
        }
        Enum::Known(ErrorNumber::NoDomainSnapshot) => {
            HypervisorError::NoSnapshot(e.message().to_owned())
        }
        Enum::Known(
            ErrorNumber::NoConnect | ErrorNumber::InvalidConn | ErrorNumber::AuthFailed,
        ) => HypervisorError::Unavailable(e.message().to_owned()),
        _ if e.message().contains("client socket is closed") => {
            HypervisorError::Unavailable(e.message().to_owned())
        }
        _ => HypervisorError::Failed(e.message().to_owned()),
    }
}

fn meta_of(dom: &Domain) -> Option<FluidMeta> {
    let xml = dom
        .metadata(
            virt::sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
            Some(FLUID_XMLNS),
            0,
        )
        .ok()?;
    parse_meta(&xml)
}

/// Looks a domain up by uuid; only this agent's domains are found.
fn owned_domain(c: &Connect, host: &str, uuid: &str) -> Result<Domain> {
    let dom = c.lookup_domain_by_uuid_string(uuid).map_err(map_err)?;
    match meta_of(&dom) {
        Some(m) if m.agent == host => Ok(dom),
        _ => Err(HypervisorError::NotFound(format!(
            "domain {uuid} (not owned by {host})"
        ))),
    }
}

fn state_of(dom: &Domain) -> Result<DomainState> {
    let (state, _reason) = dom.state().map_err(map_err)?;
    Ok(match state {
        Enum::Known(VirtState::Running | VirtState::Blocked | VirtState::Shutdown) => {
            DomainState::Running
        }
        Enum::Known(VirtState::Paused) => DomainState::Paused,
        Enum::Known(VirtState::Shutoff) => DomainState::ShutOff,
        Enum::Known(VirtState::Crashed) => DomainState::Crashed,
        Enum::Known(VirtState::PMSuspended) => DomainState::Other("suspended".into()),
        Enum::Known(VirtState::NoState) => DomainState::Other("no state".into()),
        Enum::Unknown(v) => DomainState::Other(format!("state {v}")),
    })
}

/// `virDomainSaveFlags`, which the `virt` crate does not wrap.
#[allow(unsafe_code)]
fn save_domain(d: &Domain, path: &Path) -> Result<()> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| HypervisorError::Failed(format!("{}: a NUL in the path", path.display())))?;
    // SAFETY: `d` is a live domain handle for the duration of the call, `c_path` a
    // NUL-terminated string that outlives it, and a null `dxml` is documented as "keep
    // the domain's XML"; libvirt copies what it needs before returning.
    let rc =
        unsafe { virt::sys::virDomainSaveFlags(d.as_ptr(), c_path.as_ptr(), std::ptr::null(), 0) };
    if rc < 0 {
        return Err(map_err(virt::error::Error::last_error()));
    }
    Ok(())
}

/// Sets a guest's clock to now through its guest agent (`virDomainSetTime`), retrying
/// while the agent reconnects; best-effort (a guest without an agent keeps its clock).
fn set_guest_clock(d: &Domain) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        let nanos = i32::try_from(now.subsec_nanos()).unwrap_or(0);
        match d.set_time(secs, nanos, 0) {
            Ok(()) => return,
            // The agent set the system clock, then failed to copy it to the RTC
            // (no hwclock in a minimal guest): the clock is right.
            Err(e) if e.message().contains("hwclock") => return,
            Err(e) if std::time::Instant::now() >= deadline => {
                tracing::warn!(error = %e, "setting the guest's clock after a revert");
                return;
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(500)),
        }
    }
}

#[async_trait]
impl Hypervisor for Libvirt {
    async fn define(&self, spec: &DomainSpec) -> Result<()> {
        let xml = domain_xml::render(spec)
            .map_err(|e| HypervisorError::Failed(format!("domain XML: {e}")))?;
        self.call("define", move |c| {
            c.define_domain_xml(&xml).map(drop).map_err(map_err)
        })
        .await
    }

    async fn start(&self, uuid: &str) -> Result<()> {
        self.with_owned("start", uuid, |d| d.create().map(drop).map_err(map_err))
            .await
    }

    async fn shutdown(&self, uuid: &str) -> Result<()> {
        // The guest agent first (when it answers), else the ACPI power button.
        let flags = virt::sys::VIR_DOMAIN_SHUTDOWN_GUEST_AGENT
            | virt::sys::VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN;
        self.with_owned("shutdown", uuid, move |d| {
            d.shutdown_flags(flags).map_err(map_err)
        })
        .await
    }

    async fn power_off(&self, uuid: &str) -> Result<()> {
        self.with_owned("power_off", uuid, |d| {
            if state_of(d)? == DomainState::ShutOff {
                return Ok(());
            }
            match d.destroy() {
                Ok(()) => Ok(()),
                // It may have stopped by itself in between.
                Err(_) if state_of(d)? == DomainState::ShutOff => Ok(()),
                Err(e) => Err(map_err(e)),
            }
        })
        .await
    }

    async fn undefine(&self, uuid: &str) -> Result<()> {
        // SNAPSHOTS_METADATA: libvirt refuses to undefine a domain with snapshots
        // otherwise; their data lives in the overlay, which the caller removes.
        self.with_owned("undefine", uuid, |d| {
            let flags = virt::sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                | virt::sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                | virt::sys::VIR_DOMAIN_UNDEFINE_NVRAM;
            d.undefine_flags(flags).map_err(map_err)
        })
        .await
    }

    async fn list_owned(&self) -> Result<Vec<OwnedDomain>> {
        let host = self.host_name.clone();
        self.call("list_domains", move |c| {
            let mut out = Vec::new();
            for dom in c.list_all_domains(0).map_err(map_err)? {
                let Some(meta) = meta_of(&dom) else { continue };
                if meta.agent != host {
                    continue;
                }
                // A domain may vanish while we look at it; skip it then.
                let looked = (|| {
                    Ok::<_, HypervisorError>(OwnedDomain {
                        uuid: dom.uuid_string().map_err(map_err)?,
                        name: dom.name().map_err(map_err)?,
                        state: state_of(&dom)?,
                        meta: meta.clone(),
                    })
                })();
                match looked {
                    Ok(d) => out.push(d),
                    Err(HypervisorError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(out)
        })
        .await
    }

    async fn domain_state(&self, uuid: &str) -> Result<DomainState> {
        self.with_owned("domain_state", uuid, state_of).await
    }

    async fn name_in_use(&self, name: &str) -> Result<bool> {
        let name = name.to_owned();
        self.call("lookup_name", move |c| {
            match c.lookup_domain_by_name(&name) {
                Ok(_) => Ok(true),
                Err(e) => match map_err(e) {
                    HypervisorError::NotFound(_) => Ok(false),
                    other => Err(other),
                },
            }
        })
        .await
    }

    async fn leases(&self, network: &str) -> Result<Vec<Lease>> {
        let bridge = self.bridge(network).await?;
        leases::read(&self.lease_dir, &bridge).await
    }

    async fn release_lease(&self, network: &str, lease: &Lease) -> Result<()> {
        let bridge = self.bridge(network).await?;
        leases::release(&bridge, lease).await
    }

    async fn network_info(&self, network: &str) -> Result<NetworkInfo> {
        let network = network.to_owned();
        let xml = self
            .call("network_info", move |c| {
                c.lookup_network_by_name(&network)
                    .and_then(|n| n.xml_desc(0))
                    .map_err(map_err)
            })
            .await?;
        super::network_xml::parse_network(&xml)
    }

    async fn add_dhcp_host(&self, network: &str, host: &DhcpHost) -> Result<()> {
        let (network, xml) = (network.to_owned(), dhcp_host_xml(host));
        self.call("add_dhcp_host", move |c| {
            let net = c.lookup_network_by_name(&network).map_err(map_err)?;
            update_dhcp_host(&net, virt::sys::VIR_NETWORK_UPDATE_COMMAND_ADD_LAST, &xml)
                .map_err(map_err)
        })
        .await
    }

    async fn remove_dhcp_host(&self, network: &str, host: &DhcpHost) -> Result<()> {
        let (network, xml) = (network.to_owned(), dhcp_host_xml(host));
        let host = host.clone();
        self.call("remove_dhcp_host", move |c| {
            let net = c.lookup_network_by_name(&network).map_err(map_err)?;
            let xml_now = net.xml_desc(0).map_err(map_err)?;
            let present = super::network_xml::parse_network(&xml_now)?
                .dhcp_hosts
                .contains(&host);
            if !present {
                return Ok(());
            }
            update_dhcp_host(&net, virt::sys::VIR_NETWORK_UPDATE_COMMAND_DELETE, &xml)
                .map_err(map_err)
        })
        .await
    }

    async fn node_info(&self) -> Result<NodeInfo> {
        self.call("node_info", |c| {
            let info = c.node_info().map_err(map_err)?;
            let free = c.free_memory().map_err(map_err)?;
            Ok(NodeInfo {
                cpus: info.cpus,
                memory_mb_total: info.memory / 1024,
                memory_mb_free: free / (1024 * 1024),
            })
        })
        .await
    }

    async fn source_domain(&self, name: &str) -> Result<SourceDomain> {
        let name = name.to_owned();
        self.call("source_domain", move |c| {
            let dom = c.lookup_domain_by_name(&name).map_err(map_err)?;
            let xml = dom.xml_desc(0).map_err(map_err)?;
            let disk = parse_source_disk(&xml).ok_or_else(|| {
                HypervisorError::Failed(format!("domain {name} has no file-backed disk"))
            })?;
            Ok(SourceDomain {
                uuid: dom.uuid_string().map_err(map_err)?,
                state: state_of(&dom)?,
                persistent: dom.is_persistent().map_err(map_err)?,
                disk_path: disk.path,
                disk_format: disk.format,
                boot: disk.boot,
            })
        })
        .await
    }

    async fn snapshot_create(&self, uuid: &str, name: &str, description: &str) -> Result<()> {
        let xml = snapshot_xml::render_create(name, description)
            .map_err(|e| HypervisorError::Failed(format!("snapshot XML: {e}")))?;
        self.with_owned_slow("snapshot_create", uuid, move |d| {
            d.create_snapshot_xml(&xml, virt::sys::VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC)
                .map(drop)
                .map_err(map_err)
        })
        .await
    }

    async fn snapshot_list(&self, uuid: &str) -> Result<Vec<DomainSnapshot>> {
        self.with_owned("snapshot_list", uuid, |d| {
            let mut out = Vec::new();
            for snap in d.list_all_snapshots(0).map_err(map_err)? {
                // One deleted while we look is skipped.
                let xml = match snap.xml_desc(0) {
                    Ok(x) => x,
                    Err(e) => match map_err(e) {
                        HypervisorError::NoSnapshot(_) => continue,
                        other => return Err(other),
                    },
                };
                out.push(snapshot_xml::parse(&xml).map_err(|e| {
                    HypervisorError::Failed(format!("reading a snapshot's XML: {e}"))
                })?);
            }
            out.sort_by(|a, b| {
                (a.creation_time, a.name.as_str()).cmp(&(b.creation_time, b.name.as_str()))
            });
            Ok(out)
        })
        .await
    }

    async fn snapshot_revert(&self, uuid: &str, name: &str, to: RevertTo) -> Result<()> {
        let name = name.to_owned();
        // libvirt 9 reverts a running domain to a shut-off snapshot by stopping it,
        // and to a running one without FORCE (same definition); RUNNING boots a
        // disk-only snapshot.
        let flags = match to {
            RevertTo::AsTaken => 0,
            RevertTo::Running => virt::sys::VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING,
            RevertTo::Paused => virt::sys::VIR_DOMAIN_SNAPSHOT_REVERT_PAUSED,
        };
        self.with_owned_slow("snapshot_revert", uuid, move |d| {
            let snap = Domain::lookup_snapshot_by_name(d, &name, 0).map_err(map_err)?;
            snap.revert(flags).map_err(map_err)?;
            // Running after a plain revert: its memory (and clock) came back from the
            // snapshot, so the guest thinks it is still then. Its sshd would refuse
            // every certificate signed since ("not yet valid"), the agent's too.
            if to == RevertTo::AsTaken && state_of(d)? == DomainState::Running {
                set_guest_clock(d);
            }
            Ok(())
        })
        .await
    }

    async fn snapshot_delete(&self, uuid: &str, name: &str) -> Result<()> {
        let name = name.to_owned();
        self.with_owned_slow("snapshot_delete", uuid, move |d| {
            let snap = Domain::lookup_snapshot_by_name(d, &name, 0).map_err(map_err)?;
            snap.delete(0).map_err(map_err)
        })
        .await
    }

    async fn snapshot_xml(&self, uuid: &str, name: &str) -> Result<String> {
        let name = name.to_owned();
        self.with_owned("snapshot_xml", uuid, move |d| {
            let snap = Domain::lookup_snapshot_by_name(d, &name, 0).map_err(map_err)?;
            snap.xml_desc(virt::sys::VIR_DOMAIN_SNAPSHOT_XML_SECURE)
                .map_err(map_err)
        })
        .await
    }

    async fn snapshot_redefine(&self, uuid: &str, xml: &str) -> Result<()> {
        let xml = xml.to_owned();
        self.with_owned("snapshot_redefine", uuid, move |d| {
            d.create_snapshot_xml(&xml, virt::sys::VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE)
                .map(drop)
                .map_err(map_err)
        })
        .await
    }

    async fn start_transient(&self, spec: &DomainSpec) -> Result<()> {
        let xml = domain_xml::render(spec)
            .map_err(|e| HypervisorError::Failed(format!("domain XML: {e}")))?;
        self.call("start_transient", move |c| {
            c.create_domain_xml(&xml, 0).map(drop).map_err(map_err)
        })
        .await
    }

    async fn save(&self, uuid: &str, path: &Path) -> Result<()> {
        let path = path.to_owned();
        self.with_owned_slow("save", uuid, move |d| save_domain(d, &path))
            .await
    }

    async fn restore(&self, path: &Path) -> Result<()> {
        let path = path.to_string_lossy().into_owned();
        Self::call_on("restore", &self.slow_jobs, move |c| {
            c.restore_domain_flags(&path, None, virt::sys::VIR_DOMAIN_SAVE_RUNNING)
                .map_err(map_err)
        })
        .await
    }

    async fn suspend(&self, uuid: &str) -> Result<()> {
        self.with_owned("suspend", uuid, |d| {
            d.suspend().map(|_| ()).map_err(map_err)
        })
        .await
    }

    async fn resume(&self, uuid: &str) -> Result<()> {
        self.with_owned("resume", uuid, |d| d.resume().map(|_| ()).map_err(map_err))
            .await
    }

    async fn update_interface(&self, uuid: &str, interface_xml: &str) -> Result<()> {
        let xml = interface_xml.to_owned();
        self.with_owned("update_interface", uuid, move |d| {
            d.update_device_flags(&xml, virt::sys::VIR_DOMAIN_AFFECT_LIVE)
                .map_err(map_err)
        })
        .await
    }

    async fn guest_exec(
        &self,
        uuid: &str,
        argv: &[String],
        timeout: Duration,
    ) -> Result<GuestOutput> {
        let argv = argv.to_vec();
        // The slow lane: a guest agent call can block for seconds.
        self.with_owned_slow("guest_exec", uuid, move |d| {
            guest_agent::exec(
                |cmd, secs| d.qemu_agent_command(cmd, secs, 0).map_err(map_err),
                &argv,
                timeout,
            )
        })
        .await
    }
}
