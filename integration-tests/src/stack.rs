//! A running test fleet: one controller and N agents as real processes, with their
//! own PKI, state directories and (for PostgreSQL) a fresh database.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use fluid_client::Client;
use fluid_client::types::HostState;
use fluid_proto::pb::host_agent_client::HostAgentClient;
use fluid_proto::tls::TlsFiles;
use tonic::transport::Channel;

use crate::env::TestEnv;
use crate::pki::Pki;
use crate::process::Service;
use crate::setup::{
    create_database, drop_database, quote, quote_path, random_suffix, tls_toml, token_create,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Sqlite,
    Postgres,
}

/// One agent of the fleet.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub name: String,
    /// Capacity overrides (the agent otherwise reports the machine's).
    pub memory_mb: Option<u64>,
    pub cpus: Option<u32>,
    /// Names its certificate carries (default 127.0.0.1 and localhost).
    pub sans: Vec<String>,
    /// Extra keys of the agent's `[network]` table (e.g. `dns_upstream = "…"`).
    pub network: String,
    /// Extra top-level keys of the agent's configuration (e.g. `otlp_endpoint = "…"`).
    pub top: String,
    /// The agent's `[templates]` table: by default the memory templates every test's
    /// agent shares ([`SHARED_TEMPLATES`]), so sandboxes are restored in seconds.
    pub templates: String,
    /// The agent's `[pool]` table (empty: no warm pool).
    pub pool: String,
}

/// Where the tests' agents keep their memory templates (`scripts/test.sh` builds the
/// 1-vCPU, 512 MiB one there before the tests; it is kept between runs while the golden
/// image and QEMU stay the same).
pub const SHARED_TEMPLATES: &str = "/var/cache/fluid/templates";

impl AgentOptions {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            memory_mb: None,
            cpus: None,
            sans: vec!["127.0.0.1".into(), "localhost".into()],
            network: String::new(),
            top: String::new(),
            templates: format!("dir = \"{SHARED_TEMPLATES}\"\n"),
            pool: String::new(),
        }
    }

    /// A warm pool of `size` 1-vCPU, 512 MiB sandboxes of the golden image.
    pub fn warm_pool(mut self, size: u32) -> Self {
        self.pool = format!(
            "shapes = [{{ image = \"debian-12\", cpus = 1, memory_mb = 512, size = {size} }}]\n"
        );
        self
    }

    /// Sandboxes of this agent cold-boot (no memory templates).
    pub fn cold_boot(mut self) -> Self {
        self.templates = "enabled = false\n".into();
        self
    }

    /// Adds a top-level line to the agent's configuration.
    pub fn config(mut self, line: &str) -> Self {
        self.top.push_str(line);
        self.top.push('\n');
        self
    }

    /// Adds a line to the agent's `[network]` table.
    pub fn network(mut self, line: &str) -> Self {
        self.network.push_str(line);
        self.network.push('\n');
        self
    }

    pub fn memory_mb(mut self, mb: u64) -> Self {
        self.memory_mb = Some(mb);
        self
    }

    pub fn sans(mut self, sans: &[&str]) -> Self {
        self.sans = sans.iter().map(|s| s.to_string()).collect();
        self
    }
}

#[derive(Debug)]
pub struct Agent {
    pub name: String,
    pub address: String,
    /// `http://127.0.0.1:PORT/metrics` (each agent of a stack has its own port).
    pub metrics_url: String,
    pub state_dir: PathBuf,
    pub tls: TlsFiles,
    pub service: Service,
}

#[derive(Debug)]
pub struct Stack {
    pub env: TestEnv,
    pub dir: tempfile::TempDir,
    pub pki: Pki,
    pub api_url: String,
    /// The controller's public gRPC API (`fluid.v1`).
    pub grpc_url: String,
    /// A client that sends the admin token.
    pub client: Client,
    /// The secret of an admin token made with `fluid-controller token create`.
    pub admin_token: String,
    /// The controller's configuration file.
    pub controller_config: PathBuf,
    pub controller: Service,
    pub agents: BTreeMap<String, Agent>,
    /// Unique prefix of this stack's agent (host) names.
    pub prefix: String,
    database: Option<String>,
}

/// The ports [`free_port`] picks from: below Linux's ephemeral range (32768-60999), so
/// an outgoing connection's source port never takes one before its service binds it.
const TEST_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A TCP port free on 127.0.0.1 right now that this process has not handed out before.
/// A port is bound by its service only later (a controller or an agent reads it from
/// its config), so asking the kernel for "any free port" twice can name one port twice,
/// and one service then finds it taken. Ports are taken in turn from [`TEST_PORTS`],
/// starting at a place that depends on the process id, so test binaries that run one
/// after another do not reuse each other's ports while a service may still hold one.
pub fn free_port() -> Result<u16> {
    free_ports(1)
}

/// The first of `n` consecutive TCP ports free on 127.0.0.1 right now, none handed out
/// before by this process ([`free_port`]'s rules, for a run of ports: simulated hosts
/// listen on consecutive ones).
pub fn free_ports(n: u16) -> Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let span = u32::from(TEST_PORTS.end - TEST_PORTS.start);
    let n32 = u32::from(n.max(1));
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % span,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..span {
        let first = NEXT.fetch_add(n32, Ordering::SeqCst) % span;
        if first + n32 > span {
            continue;
        }
        let first = TEST_PORTS.start + u16::try_from(first)?;
        if (0..n.max(1)).all(|i| TcpListener::bind(("127.0.0.1", first + i)).is_ok()) {
            return Ok(first);
        }
    }
    bail!("no {n} free TCP ports in a row on 127.0.0.1 in {TEST_PORTS:?}")
}

impl Stack {
    /// Starts agents and a controller that knows them; waits until the API answers.
    pub async fn start(store: StoreKind, agents: Vec<AgentOptions>) -> Result<Self> {
        Self::start_with(store, agents, "").await
    }

    /// As [`Stack::start`], with `controller_tables` (TOML tables, e.g. `[policy]`)
    /// appended to the controller's configuration.
    pub async fn start_with(
        store: StoreKind,
        agents: Vec<AgentOptions>,
        controller_tables: &str,
    ) -> Result<Self> {
        Self::start_configured(store, agents, "", controller_tables).await
    }

    /// As [`Stack::start_with`], with `controller_top` (top-level keys, e.g.
    /// `otlp_endpoint = "…"`) in the controller's configuration too.
    pub async fn start_configured(
        store: StoreKind,
        agents: Vec<AgentOptions>,
        controller_top: &str,
        controller_tables: &str,
    ) -> Result<Self> {
        let env = TestEnv::load()?;
        let dir = tempfile::Builder::new()
            .prefix("fluid-it-")
            .tempdir_in("/var/tmp")?;
        // libvirt-qemu must reach the overlays below this directory.
        set_mode(dir.path(), 0o755)?;
        let pki = Pki::init(
            &env.bin_dir.join("fluid-controller"),
            &dir.path().join("pki"),
        )?;
        let prefix = format!("it{}", random_suffix());

        let mut stack = Self {
            api_url: String::new(),
            grpc_url: String::new(),
            client: Client::new("http://127.0.0.1:1")?,
            admin_token: String::new(),
            controller_config: PathBuf::new(),
            controller: Service::new(
                "controller",
                &env.bin_dir.join("fluid-controller"),
                &[],
                dir.path(),
            ),
            agents: BTreeMap::new(),
            database: None,
            env,
            dir,
            pki,
            prefix,
        };
        for opts in agents {
            stack.add_agent(opts)?;
        }
        stack
            .start_controller(store, controller_top, controller_tables)
            .await?;
        Ok(stack)
    }

    /// Host name of agent `short` in this stack (`<prefix>-<short>`).
    pub fn host(&self, short: &str) -> String {
        format!("{}-{short}", self.prefix)
    }

    fn add_agent(&mut self, opts: AgentOptions) -> Result<()> {
        let name = self.host(&opts.name);
        let port = free_port()?;
        let state_dir = self.dir.path().join(format!("agent-{}", opts.name));
        std::fs::create_dir_all(&state_dir)?;
        set_mode(&state_dir, 0o755)?;
        let sans: Vec<&str> = opts.sans.iter().map(String::as_str).collect();
        let tls = self.pki.agent(&name, &sans)?;
        let img = &self.env.image_dir;
        // Agents of a stack share the machine: each has its own metrics port.
        let metrics_port = free_port()?;
        let mut toml = format!(
            "host_name = {}\nlisten = \"127.0.0.1:{port}\"\nvirt_type = \"qemu\"\nstate_dir = {}\nstop_timeout_seconds = 20\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\n",
            quote(&name),
            quote_path(&state_dir),
        );
        toml += &opts.top;
        if let Some(mb) = opts.memory_mb {
            toml += &format!("memory_mb = {mb}\n");
        }
        if let Some(c) = opts.cpus {
            toml += &format!("cpus = {c}\n");
        }
        toml += &tls_toml(&tls);
        toml += &format!(
            "\n[[images]]\nname = \"debian-12\"\npath = {}\nkernel = {}\ninitrd = {}\ncmdline = \"root=/dev/vda rw console=ttyS0 net.ifnames=0\"\n",
            quote_path(&img.join("disk.qcow2")),
            quote_path(&img.join("vmlinuz")),
            quote_path(&img.join("initrd.img")),
        );
        toml += &format!("\n[templates]\n{}", opts.templates);
        if !opts.pool.is_empty() {
            toml += &format!("\n[pool]\n{}", opts.pool);
        }
        // Each agent of a stack has its own nftables tables (named after its host) and
        // its own DNS proxy port on the bridge.
        toml += &format!(
            "\n[network]\ndns_listen = \"192.168.122.1:{}\"\n{}",
            free_port()?,
            opts.network
        );
        // The simulated internet (`internet::Internet`) lives on 10.99.0.0/16, a
        // private range that DNS answers may not open by default: the tests' agents
        // permit it explicitly, unless a test says otherwise.
        if !opts.network.contains("resolved_private_allow") {
            toml += "resolved_private_allow = [\"10.99.0.0/16\"]\n";
        }
        let config = self.dir.path().join(format!("agent-{}.toml", opts.name));
        std::fs::write(&config, toml)?;
        let config = config.to_string_lossy().into_owned();
        let mut service = Service::new(
            &format!("agent-{}", opts.name),
            &self.env.bin_dir.join("fluid-agent"),
            &["--config", &config],
            self.dir.path(),
        );
        service.start()?;
        self.agents.insert(
            opts.name.clone(),
            Agent {
                name,
                address: format!("127.0.0.1:{port}"),
                metrics_url: format!("http://127.0.0.1:{metrics_port}/metrics"),
                state_dir,
                tls,
                service,
            },
        );
        Ok(())
    }

    async fn start_controller(&mut self, store: StoreKind, top: &str, tables: &str) -> Result<()> {
        let port = free_port()?;
        let grpc_port = free_port()?;
        self.grpc_url = format!("http://127.0.0.1:{grpc_port}");
        let data_dir = self.dir.path().join("controller");
        std::fs::create_dir_all(&data_dir)?;
        let mut toml = format!(
            "listen = \"127.0.0.1:{port}\"\ngrpc_listen = \"127.0.0.1:{grpc_port}\"\ndata_dir = {}\nheartbeat_interval_secs = 1\noffline_after_missed_beats = 3\nreconcile_interval_secs = 2\njanitor_interval_secs = 1\n",
            quote_path(&data_dir)
        );
        if store == StoreKind::Postgres {
            let url = self.create_database()?;
            toml += &format!("database_url = {}\n", quote(&url));
        }
        toml += top;
        if !top.is_empty() && !top.ends_with('\n') {
            toml += "\n";
        }
        toml += &tls_toml(&self.pki.controller());
        for agent in self.agents.values() {
            toml += &format!(
                "\n[[hosts]]\nname = {}\naddress = {}\n",
                quote(&agent.name),
                quote(&agent.address)
            );
        }
        toml += "\n";
        toml += tables;
        let config_path = self.dir.path().join("controller.toml");
        std::fs::write(&config_path, toml)?;
        self.controller_config = config_path.clone();
        self.admin_token = self.token_cli("it-admin", "admin", None)?;
        let config = config_path.to_string_lossy().into_owned();
        self.controller = Service::new(
            "controller",
            &self.env.bin_dir.join("fluid-controller"),
            &["serve", "--config", &config],
            self.dir.path(),
        );
        self.api_url = format!("http://127.0.0.1:{port}");
        self.client = Client::new(&self.api_url)?.with_token(Some(self.admin_token.clone()));
        self.controller.start()?;
        self.wait_healthy().await
    }

    /// Creates an API token with `fluid-controller token create` (as an operator
    /// would, on the controller's database) and returns its secret.
    pub fn token_cli(&self, name: &str, role: &str, agent_id: Option<&str>) -> Result<String> {
        token_create(
            &self.env.bin_dir,
            &self.controller_config,
            name,
            role,
            agent_id,
        )
    }

    /// A REST client that sends `token`.
    pub fn client_with(&self, token: &str) -> Result<Client> {
        Ok(Client::new(&self.api_url)?.with_token(Some(token.to_owned())))
    }

    /// A fresh PostgreSQL database for this stack.
    fn create_database(&mut self) -> Result<String> {
        let (db, url) = create_database(self.env.database_url.as_deref(), &self.prefix)?;
        self.database = Some(db);
        Ok(url)
    }

    pub async fn wait_healthy(&mut self) -> Result<()> {
        self.controller.wait_healthy(&self.client).await
    }

    /// Waits until the controller reports host `short` in `state`.
    pub async fn wait_host(
        &mut self,
        short: &str,
        state: HostState,
        within: Duration,
    ) -> Result<()> {
        let name = self.host(short);
        let deadline = Instant::now() + within;
        let mut last = None;
        loop {
            if let Ok(hosts) = self.client.list_hosts().await {
                let h = hosts.hosts.into_iter().find(|h| h.name == name);
                if h.as_ref().map(|h| h.state) == Some(state) {
                    return Ok(());
                }
                last = h;
            }
            if Instant::now() > deadline {
                let log = self
                    .agents
                    .get(short)
                    .map(|a| a.service.log_tail(30))
                    .unwrap_or_default();
                bail!(
                    "host {name} not {state:?} within {within:?}; last seen as {last:?}\nagent log:\n{log}\ncontroller log:\n{}",
                    self.controller.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    pub async fn restart_controller(&mut self) -> Result<()> {
        self.controller.stop().await?;
        self.controller.start()?;
        self.wait_healthy().await
    }

    pub fn agent(&mut self, short: &str) -> Result<&mut Agent> {
        self.agents
            .get_mut(short)
            .with_context(|| format!("no agent {short} in this stack"))
    }

    /// A gRPC client to agent `short`, presenting `identity` (None: no client certificate).
    pub async fn agent_grpc(
        &self,
        short: &str,
        identity: Option<&TlsFiles>,
        ca: &Path,
    ) -> Result<HostAgentClient<Channel>> {
        let agent = self
            .agents
            .get(short)
            .with_context(|| format!("no agent {short}"))?;
        let ca_pem = std::fs::read(ca)?;
        let mut tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca_pem))
            .domain_name("127.0.0.1");
        if let Some(id) = identity {
            tls = tls.identity(tonic::transport::Identity::from_pem(
                std::fs::read(&id.cert)?,
                std::fs::read(&id.key)?,
            ));
        }
        let channel = Channel::from_shared(format!("https://{}", agent.address))?
            .tls_config(tls)?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await?;
        Ok(HostAgentClient::new(channel))
    }

    /// Destroys every domain one of this stack's agents left (after a failed test).
    fn cleanup_domains(&self) {
        let Ok(domains) = crate::virsh::domains() else {
            return;
        };
        for d in domains {
            let xml = std::process::Command::new("virsh")
                .args(["-c", "qemu:///system", "dumpxml", &d])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            if xml.contains(&format!("agent=\"{}-", self.prefix))
                || xml.contains(&format!("agent='{}-", self.prefix))
            {
                let _ = std::process::Command::new("virsh")
                    .args(["-c", "qemu:///system", "destroy", &d])
                    .output();
                // Its static DHCP lease (the agent removes it on destroy; a killed
                // agent does not).
                if let Some(mac) = xml
                    .split("<mac address='")
                    .nth(1)
                    .and_then(|rest| rest.split('\'').next())
                {
                    let _ = std::process::Command::new("virsh")
                        .args(["-c", "qemu:///system", "net-update", "default", "delete"])
                        .args(["ip-dhcp-host", &format!("<host mac='{mac}'/>")])
                        .args(["--live", "--config"])
                        .output();
                }
                // Sandboxes with snapshots cannot be undefined without their metadata.
                let _ = std::process::Command::new("virsh")
                    .args([
                        "-c",
                        "qemu:///system",
                        "undefine",
                        &d,
                        "--snapshots-metadata",
                    ])
                    .output();
            }
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // The agents first: one that still ran could make a domain (a warm pool's
        // refill) after the cleanup looked.
        for agent in self.agents.values_mut() {
            agent.service.kill_now();
        }
        self.cleanup_domains();
        // The agents' nftables tables outlive them by design (a stopped agent keeps
        // its sandboxes sealed); a finished test removes them.
        for agent in self.agents.values_mut() {
            let table = format!("fluid_{}", agent.name.replace('-', "_"));
            for family in ["bridge", "inet"] {
                let _ = std::process::Command::new("nft")
                    .args(["delete", "table", family, &table])
                    .output();
            }
        }
        if let Some(db) = &self.database {
            drop_database(db);
        }
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// Waits until TCP `addr` accepts a connection and sends an SSH banner.
pub async fn wait_ssh_banner(addr: &str, within: Duration) -> Result<String> {
    use tokio::io::AsyncReadExt;
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Ok(mut s)) =
            tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(addr)).await
        {
            let mut buf = [0u8; 64];
            if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await
            {
                let banner = String::from_utf8_lossy(&buf[..n]).trim().to_owned();
                if banner.starts_with("SSH-") {
                    return Ok(banner);
                }
            }
        }
        if Instant::now() > deadline {
            bail!("{addr} did not answer with an SSH banner within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_never_names_a_port_twice() -> Result<()> {
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect::<Result<_>>()?;
        let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        assert!(ports.iter().all(|p| TEST_PORTS.contains(p)), "{ports:?}");
        Ok(())
    }
}
