//! A simulated fleet: one `fluid-agent` process serving `hosts` simulated hosts (the
//! agent's `[simulated]`: real gRPC, mTLS, redb and reconcile over an in-memory
//! hypervisor, network and guests) and a `fluid-controller` (SQLite or PostgreSQL) that
//! lists them all. No libvirt, no image, no VM: for control-plane tests and the
//! `loadtest` bench.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use fluid_client::Client;
use fluid_client::types::{Host, HostState};
use tempfile::TempDir;

use crate::pki::Pki;
use crate::process::Service;
use crate::setup::{
    create_database, drop_database, quote, quote_path, random_suffix, tls_toml, token_create,
};
use crate::stack::{StoreKind, free_port, free_ports};

/// How the fleet is made.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub hosts: u32,
    pub store: StoreKind,
    /// Extra keys of the agent's `[simulated]` table (e.g. `boot_ms = 200`).
    pub simulated: String,
    /// Extra top-level keys of the controller's configuration.
    pub controller_top: String,
    /// Extra tables of the controller's configuration.
    pub controller_tables: String,
    /// `RUST_LOG` of both processes.
    pub log_level: String,
}

impl SimOptions {
    pub fn new(hosts: u32, store: StoreKind) -> Self {
        Self {
            hosts,
            store,
            simulated: String::new(),
            controller_top: String::new(),
            controller_tables: String::new(),
            log_level: "info".into(),
        }
    }
}

#[derive(Debug)]
pub struct SimFleet {
    pub dir: TempDir,
    pub bin_dir: PathBuf,
    pub api_url: String,
    /// A client with the admin token.
    pub client: Client,
    pub admin_token: String,
    pub controller_config: PathBuf,
    /// The simulated hosts' names.
    pub hosts: Vec<String>,
    pub controller: Service,
    pub agent: Service,
    database: Option<String>,
}

impl SimFleet {
    /// Starts the agent and the controller; waits until the API answers (not for the
    /// hosts: [`SimFleet::wait_online`]).
    pub async fn start(opts: SimOptions) -> Result<Self> {
        let bin_dir = crate::env::bin_dir()?;
        let dir = tempfile::Builder::new()
            .prefix("fluid-sim-")
            .tempdir_in("/var/tmp")?;
        let pki = Pki::init(&bin_dir.join("fluid-controller"), &dir.path().join("pki"))?;
        let prefix = format!("sim{}", random_suffix());
        let base_port = free_ports(u16::try_from(opts.hosts)?)?;
        let agent_tls = pki.agent(&prefix, &["127.0.0.1", "localhost"])?;
        let image = dir.path().join("image.qcow2");
        std::fs::write(
            &image,
            "a placeholder: simulated hosts never read their image",
        )?;
        let state_dir = dir.path().join("agent");
        let agent_config = dir.path().join("agent.toml");
        std::fs::write(
            &agent_config,
            format!(
                "host_name = {}\nlisten = \"127.0.0.1:{base_port}\"\nvirt_type = \"qemu\"\nstate_dir = {}\nmetrics_listen = \"127.0.0.1:{}\"\n{}\n\
                 [[images]]\nname = \"debian-12\"\npath = {}\n\n[simulated]\nhosts = {}\n{}",
                quote(&prefix),
                quote_path(&state_dir),
                free_port()?,
                tls_toml(&agent_tls),
                quote_path(&image),
                opts.hosts,
                opts.simulated,
            ),
        )?;
        let hosts: Vec<String> = (0..opts.hosts)
            .map(|i| format!("{prefix}-{i:02}"))
            .collect();
        let mut agent = Service::new(
            "agent",
            &bin_dir.join("fluid-agent"),
            &["--config", &agent_config.to_string_lossy()],
            dir.path(),
        )
        .log_level(&opts.log_level);
        agent.start()?;

        let port = free_port()?;
        let data_dir = dir.path().join("controller");
        std::fs::create_dir_all(&data_dir)?;
        let mut toml = format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = {}\n",
            quote_path(&data_dir)
        );
        let mut database = None;
        if opts.store == StoreKind::Postgres {
            let base = std::env::var("FLUID_TEST_DATABASE_URL").ok();
            let (db, url) = create_database(base.as_deref(), &prefix)?;
            database = Some(db);
            toml += &format!("database_url = {}\n", quote(&url));
        }
        toml += &opts.controller_top;
        toml += "\n";
        toml += &tls_toml(&pki.controller());
        for (i, name) in hosts.iter().enumerate() {
            toml += &format!(
                "\n[[hosts]]\nname = {}\naddress = \"127.0.0.1:{}\"\n",
                quote(name),
                u32::from(base_port) + u32::try_from(i)?
            );
        }
        toml += "\n";
        toml += &opts.controller_tables;
        let controller_config = dir.path().join("controller.toml");
        std::fs::write(&controller_config, toml)?;
        let admin_token = token_create(&bin_dir, &controller_config, "sim-admin", "admin", None)?;
        let mut controller = Service::new(
            "controller",
            &bin_dir.join("fluid-controller"),
            &["serve", "--config", &controller_config.to_string_lossy()],
            dir.path(),
        )
        .log_level(&opts.log_level);
        controller.start()?;
        let api_url = format!("http://127.0.0.1:{port}");
        let client = Client::new(&api_url)?.with_token(Some(admin_token.clone()));
        let mut fleet = Self {
            dir,
            bin_dir,
            api_url,
            client,
            admin_token,
            controller_config,
            hosts,
            controller,
            agent,
            database,
        };
        fleet.controller.wait_healthy(&fleet.client).await?;
        Ok(fleet)
    }

    /// Waits (at most `within`) until every host is online; the hosts as listed then.
    pub async fn wait_online(&mut self, within: Duration) -> Result<Vec<Host>> {
        let deadline = Instant::now() + within;
        loop {
            let hosts = self.client.list_hosts().await?.hosts;
            let online = hosts
                .iter()
                .filter(|h| h.state == HostState::Online)
                .count();
            if online == self.hosts.len() {
                return Ok(hosts);
            }
            if !self.agent.is_running() || Instant::now() > deadline {
                bail!(
                    "{online} of {} simulated hosts online after {within:?}; agent log:\n{}",
                    self.hosts.len(),
                    self.agent.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// A new API token (`fluid-controller token create`).
    pub fn token(&self, name: &str, role: &str, agent_id: Option<&str>) -> Result<String> {
        token_create(&self.bin_dir, &self.controller_config, name, role, agent_id)
    }

    /// The PostgreSQL database's name (`None`: SQLite).
    pub fn database(&self) -> Option<&str> {
        self.database.as_deref()
    }

    /// The controller's data directory (its SQLite database).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("controller")
    }

    /// A REST client that sends `token`.
    pub fn client_with(&self, token: &str) -> Result<Client> {
        Ok(Client::new(&self.api_url)?.with_token(Some(token.to_owned())))
    }
}

impl Drop for SimFleet {
    fn drop(&mut self) {
        self.controller.kill_now();
        self.agent.kill_now();
        if let Some(db) = &self.database {
            drop_database(db);
        }
    }
}
