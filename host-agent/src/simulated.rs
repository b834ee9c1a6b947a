//! Simulated hosts (`[simulated]` in the config), for control-plane scale tests: one
//! process serves `hosts` of them, as kubemark's hollow nodes do for Kubernetes.
//!
//! Each is a whole agent with the real code above the backends: its own gRPC server
//! (mTLS, every RPC and its validation), redb records, reconcile at start, the
//! firewall's rules computed and applied, the DHCP reservations, snapshots, command
//! slots and output caps. Below it, in memory: the hypervisor
//! ([`SimulatedHypervisor`]), nftables ([`SimulatedNft`]), the guests' commands and
//! files ([`SimulatedGuests`]) and the overlay files ([`SimulatedImages`]). There is no
//! DNS proxy, no memory template and no warm pool. Each host reports itself as
//! `simulated` in GetStatus, which the controller shows.
//!
//! Host `i` (from 0) is `<host_name>-<i>` (two digits at least), listens on `listen`'s
//! port + `i`, keeps its state in `state_dir/<its name>`, and shares the process's TLS
//! identity (whose certificate must name `listen`'s address). `metrics_listen` serves
//! the first host's metrics.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use fluid_proto::model::Name;
use tokio_util::sync::CancellationToken;

use crate::config::{AgentConfig, SimulatedConfig};
use crate::exec::simulated::SimulatedGuests;
use crate::hypervisor::Hypervisor as _;
use crate::hypervisor::simulated::SimulatedHypervisor;
use crate::network::nft::simulated::SimulatedNft;
use crate::network::{Firewall, NetworkSettings};
use crate::overlay::SimulatedImages;
use crate::sandboxes::Sandboxes;

/// The configuration of simulated host `i` of `base`.
pub fn host_config(base: &AgentConfig, i: u32) -> anyhow::Result<AgentConfig> {
    let name = format!("{}-{i:02}", base.host_name);
    let host_name = Name::parse("host_name", &name)
        .with_context(|| format!("simulated host {i}: {name:?} is not a host name"))?;
    let port = u16::try_from(u32::from(base.listen.port()) + i)
        .ok()
        .filter(|p| *p != 0)
        .with_context(|| {
            format!(
                "simulated host {i}: listen port {} + {i} is past 65535",
                base.listen.port()
            )
        })?;
    let mut c = base.clone();
    c.state_dir = base.state_dir.join(host_name.as_str());
    c.host_name = host_name;
    c.listen = SocketAddr::new(base.listen.ip(), port);
    c.metrics_listen = None;
    // A simulated host restores nothing: every sandbox boots (in memory).
    c.templates.enabled = false;
    c.pool.shapes.clear();
    Ok(c)
}

/// Opens simulated host `config` (one of [`host_config`]'s) as [`crate::open`] opens a
/// real one: state, reconcile, network rules, background loops.
pub async fn open(
    config: AgentConfig,
    sim: &SimulatedConfig,
) -> anyhow::Result<Arc<Sandboxes<SimulatedHypervisor>>> {
    let store = crate::open_state(&config).await?;
    let hv = SimulatedHypervisor::with_profile(config.host_name.as_str(), sim.host.clone());
    let key = crate::agent_key(&config)?;
    let firewall = if config.network.enforce {
        let info = hv.network_info(config.network.name.as_str()).await?;
        let settings = NetworkSettings::resolve(&config.network, &info)?;
        Firewall::new(settings, Arc::new(SimulatedNft::default()))
    } else {
        Firewall::disabled()
    };
    let sandboxes = Sandboxes::new(config, Arc::new(hv), store, key, Arc::new(firewall))
        .with_exec_backend(Arc::new(SimulatedGuests::new(sim.exec.clone())))
        .with_image_tool(Arc::new(SimulatedImages));
    crate::start(Arc::new(sandboxes)).await
}

/// Serves every simulated host of `config` until `shutdown` is cancelled (or one of
/// them fails, which stops them all).
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let sim = config
        .simulated
        .clone()
        .context("the config has no [simulated] table")?;
    let tls = config
        .tls
        .load()
        .context("loading the agent's TLS files")?
        .server_config();
    let mut metrics_listener = match config.metrics_listen {
        Some(a) => Some(crate::metrics::bind(a).await?),
        None => None,
    };
    tracing::warn!(
        hosts = sim.hosts,
        first = %format!("{}-00", config.host_name),
        listen = %config.listen,
        "SIMULATED hosts: no sandbox runs on this machine (control-plane scale tests only)"
    );
    let mut servers = tokio::task::JoinSet::new();
    for i in 0..sim.hosts {
        let host = host_config(&config, i)?;
        let (name, listen) = (host.host_name.clone(), host.listen);
        let sandboxes = open(host, &sim)
            .await
            .with_context(|| format!("opening simulated host {name}"))?;
        if i == 0
            && let Some(l) = metrics_listener.take()
        {
            crate::serve_metrics(l, sandboxes.clone(), &shutdown)?;
        }
        let server = crate::serve_grpc(sandboxes, tls.clone(), listen, shutdown.clone())?;
        servers.spawn(async move {
            server
                .await
                .with_context(|| format!("simulated host {name}: serving on {listen}"))
        });
    }
    tracing::info!(
        hosts = sim.hosts,
        "serving the simulated hosts' HostAgent gRPC services (mTLS)"
    );
    while let Some(ended) = servers.join_next().await {
        let ended = ended.context("a simulated host's server task")?;
        if let Err(e) = ended {
            shutdown.cancel();
            servers.shutdown().await;
            return Err(e);
        }
    }
    tracing::info!("the simulated hosts stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use fluid_proto::guest::files::{READ_SH, WRITE_SH, guarded};
    use fluid_proto::model::{Exec, ExecEvent, ObservedState, WaitForIp};

    use super::*;
    use crate::sandboxes::tests::{id, req};

    fn base(dir: &std::path::Path) -> AgentConfig {
        base_with(dir, "")
    }

    /// [`base`] with `extra` keys in its `[simulated]` table.
    fn base_with(dir: &std::path::Path, extra: &str) -> AgentConfig {
        let image = dir.join("disk.qcow2");
        std::fs::write(&image, "a placeholder: simulated hosts never read it").expect("image");
        AgentConfig::from_toml(&format!(
            "host_name = \"sim\"\nlisten = \"127.0.0.1:7000\"\nstate_dir = \"{}\"\n\
             [tls]\nca_cert = \"/a\"\ncert = \"/b\"\nkey = \"/c\"\n\
             [[images]]\nname = \"debian-12\"\npath = \"{}\"\n\
             [simulated]\nhosts = 3\nboot_ms = 300\nexec_ms = 0\noutput_bytes = 0\n{extra}",
            dir.display(),
            image.display()
        ))
        .expect("config")
    }

    #[test]
    fn each_host_has_its_name_port_and_state_and_no_templates_or_pool() {
        let dir = tempfile::tempdir().expect("tmp");
        let b = base(dir.path());
        let h = host_config(&b, 2).expect("host 2");
        assert_eq!(h.host_name.as_str(), "sim-02");
        assert_eq!(h.listen.port(), 7002);
        assert_eq!(h.state_dir, dir.path().join("sim-02"));
        assert!(!h.templates.enabled && h.pool.shapes.is_empty());
        assert!(h.metrics_listen.is_none());
        let mut high = b.clone();
        high.listen.set_port(65535);
        assert!(host_config(&high, 1).is_err(), "port 65536");
    }

    /// A simulated host runs the agent's own create, lease wait, exec, files and
    /// destroy: the guest boots in the profile's time, a file written is read back.
    #[tokio::test]
    async fn a_simulated_host_creates_boots_runs_commands_and_destroys() {
        let dir = tempfile::tempdir().expect("tmp");
        let b = base(dir.path());
        let sim = b.simulated.clone().expect("simulated");
        let s = open(host_config(&b, 0).expect("host"), &sim)
            .await
            .expect("open");
        let started = Instant::now();
        let v = s
            .create(req("SBX-0000000a", "a", true))
            .await
            .expect("create");
        assert_eq!(v.state, ObservedState::Running);
        assert!(v.record.overlay_path.exists(), "a placeholder overlay");
        let ip = s
            .wait_for_ip(WaitForIp {
                id: id("SBX-0000000a"),
                timeout_seconds: 10,
            })
            .await
            .expect("the simulated guest's lease");
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "the lease came before the boot time: {:?}",
            started.elapsed()
        );
        let run = |command: String, env: Vec<(String, String)>, stdin: &[u8]| {
            let s = s.clone();
            let stdin = stdin.to_vec();
            async move {
                let mut rx = s
                    .exec(Exec {
                        sandbox_id: id("SBX-0000000a"),
                        command_id: "CMD-00000001".into(),
                        command,
                        user: "root".into(),
                        workdir: None,
                        env,
                        timeout_seconds: Some(10),
                        output_cap_bytes: 1 << 20,
                        stdin,
                        ssh_certificate: String::new(),
                    })
                    .await
                    .expect("exec");
                let mut out = Vec::new();
                loop {
                    match rx.recv().await.expect("an exit event") {
                        ExecEvent::Stdout(b) => out.extend(b),
                        ExecEvent::Exit(x) => return (x.exit_code, out),
                        _ => {}
                    }
                }
            }
        };
        let path = ("FLUID_PATH".to_owned(), "/etc/motd".to_owned());
        let (code, out) = run(guarded(WRITE_SH), vec![path.clone()], b"simulated\n").await;
        assert_eq!((code, out.as_slice()), (0, b"10\n".as_slice()));
        let limit = ("FLUID_LIMIT".to_owned(), "100".to_owned());
        let (code, out) = run(guarded(READ_SH), vec![path, limit], b"").await;
        assert_eq!((code, out.as_slice()), (0, b"10\nsimulated\n".as_slice()));
        assert!(
            !s.firewall().check().await.expect("check"),
            "the simulated tables hold what the firewall applied (no drift)"
        );
        assert!(s.destroy(&id("SBX-0000000a")).await.expect("destroy"));
        assert!(!v.record.overlay_path.exists());
        assert!(
            !s.config()
                .state_dir
                .join("overlays")
                .read_dir()
                .expect("dir")
                .any(|_| true),
            "nothing left of the sandbox ({ip})"
        );
    }

    /// At a failure rate of 1 every create fails, says it was simulated, and leaves
    /// nothing behind (the agent's own undo on a failed create).
    #[tokio::test]
    async fn a_failing_simulated_host_refuses_creates_and_keeps_nothing() {
        let dir = tempfile::tempdir().expect("tmp");
        let b = base_with(dir.path(), "failure_rate = 1.0\n");
        let sim = b.simulated.clone().expect("simulated");
        let s = open(host_config(&b, 0).expect("host"), &sim)
            .await
            .expect("open");
        let e = s
            .create(req("SBX-0000000b", "b", true))
            .await
            .expect_err("a failure rate of 1");
        assert!(e.to_string().contains("simulated"), "{e}");
        assert!(s.store.list().await.expect("records").is_empty());
        assert!(s.hv.list_owned().await.expect("domains").is_empty());
    }
}
