//! The controller's configuration: a TOML file plus `FLUID_*` environment overrides
//! (e.g. `FLUID_DATABASE_URL`, `FLUID_LISTEN`). Validated once at load; components get
//! the values they need passed in, never a global.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use fluid_proto::model::{Name, check_cpus, check_memory_mb};
use fluid_proto::tls::TlsFiles;
use serde::{Deserialize, Serialize};

use crate::work::policy::PolicyConfig;

/// Default path of the configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/fluid/controller.toml";

/// A host-agent listed in the configuration (upserted into the store at start).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostEntry {
    pub name: String,
    /// `host:port` of the agent's gRPC endpoint.
    pub address: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the REST API listens on.
    pub listen: SocketAddr,
    /// Address the public gRPC API (`fluid.v1`; TLS with `[api_tls]`, else h2c) listens on; absent
    /// or empty (`""`): no gRPC API.
    #[serde(
        default = "default_grpc_listen",
        deserialize_with = "empty_is_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub grpc_listen: Option<SocketAddr>,
    /// Where the embedded SQLite database lives when no `database_url` is given.
    pub data_dir: PathBuf,
    /// `postgres://…` or `sqlite://…`; none: SQLite at `data_dir/fluid.db`.
    pub database_url: Option<String>,
    /// The controller's identity in the fleet (CA, client cert, key).
    pub tls: Option<TlsFiles>,
    /// TLS for the REST and public gRPC listeners (the API's server certificate and
    /// key, PEM). Absent: both listen on plain HTTP, which only a loopback address or
    /// `allow_insecure_listen = true` permits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_tls: Option<ApiTlsConfig>,
    /// Lets `listen` / `grpc_listen` be a non-loopback address without `[api_tls]`
    /// (TLS terminated by a proxy in front). Default false: such a configuration is
    /// refused at start.
    #[serde(default)]
    pub allow_insecure_listen: bool,
    pub hosts: Vec<HostEntry>,
    pub heartbeat_interval_secs: u64,
    pub offline_after_missed_beats: u32,
    pub reconcile_interval_secs: u64,
    pub janitor_interval_secs: u64,
    pub cpu_overcommit_ratio: f64,
    pub default_cpu: u32,
    pub default_memory_mb: u64,
    pub wait_for_ip_timeout_secs: u32,
    /// Deadline of one agent RPC (creates and IP waits get longer ones).
    pub agent_timeout_secs: u64,
    /// The SSH user CA's private key (created 0600 on first start). None:
    /// `data_dir/ssh_user_ca`. Replicas sharing a PostgreSQL database must share it.
    pub ssh_ca_key_path: Option<PathBuf>,
    /// Output kept per stream of a command (stdout and stderr each), also sent to the
    /// agent as its cap. Default 1 MiB.
    pub output_cap_bytes: u64,
    /// What commands and file operations may do.
    pub policy: PolicyConfig,
    /// Human approvals: the over-commit gate, egress requests and the webhook.
    pub approvals: ApprovalsConfig,
    /// Diffs between disk states: volatile and metadata-only paths, the text limit.
    #[serde(default)]
    pub diff: crate::sandboxes::diffs::DiffConfig,
    /// Ansible: where ansible-playbook is, production targets, job deadlines.
    pub ansible: AnsibleConfig,
    /// Playbook verification: paths whose differences are identity noise.
    pub verify: VerifyConfig,
    /// Log lines on stderr: `text` (default) or `json` (one object per line, with the
    /// fields of the enclosing spans, e.g. `sandbox_id`).
    #[serde(default)]
    pub log_format: fluid_telemetry::LogFormat,
    /// `http://host:port` of an OTLP/gRPC trace receiver (a collector); empty: spans
    /// are not exported.
    #[serde(default)]
    pub otlp_endpoint: String,
    /// `GET /metrics` on the REST listener.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Commands: default and longest timeout, how many at once per sandbox.
    #[serde(default)]
    pub commands: crate::work::commands::CommandsConfig,
    /// What one agent and one token may hold and start (past it: 429).
    #[serde(default)]
    pub quotas: crate::governance::quotas::QuotasConfig,
    /// How long commands' output is kept.
    #[serde(default)]
    pub retention: crate::work::retention::RetentionConfig,
}

/// `[api_tls]`: the REST and public gRPC listeners' server identity (PEM files).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiTlsConfig {
    /// The server certificate (chain), PEM; it must name the host clients dial.
    pub cert: PathBuf,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// `[metrics]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve `/metrics` without a token. Default false: a token with the `ReadFleet`
    /// permission (admin, operator, readonly) is needed, because the metrics name
    /// hosts and counts what every tenant does. True only when nothing but a trusted
    /// scraper can reach `listen`.
    pub public: bool,
}

/// `[ansible]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnsibleConfig {
    /// The ansible-playbook to run: a path, or a name looked up in `PATH` and then in
    /// `/opt/fluid-ansible/bin`.
    pub ansible_playbook: String,
    /// Production targets a job may name as its `vm_name`.
    pub targets: Vec<AnsibleTarget>,
    /// Longest run of one ansible-playbook (each of a production job's check and apply).
    pub job_timeout_secs: u64,
    /// How long a production apply waits for its `production_apply` approval.
    pub production_approval_timeout_secs: u64,
    /// How ansible-playbook is confined: `bwrap` (bubblewrap; the default) or `off`
    /// (unconfined: it then runs as the controller's user with its files in view; only
    /// for an admin who accepts that, warned about at start and in every job).
    pub sandbox: AnsibleSandbox,
    /// The bubblewrap binary: a path, or a name looked up in `PATH`.
    pub bwrap: String,
    /// The unprivileged user runs become (`fluid-ansible`, created by the package and
    /// `scripts/install-deps.sh`); empty: the controller's own user, behind bwrap's
    /// namespaces only. A root controller switches to it with `setpriv`; another one
    /// maps its uid to it in a user namespace.
    pub sandbox_user: String,
}

/// `[ansible] sandbox`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnsibleSandbox {
    /// ansible-playbook runs inside bubblewrap (fails closed when bwrap is missing).
    #[default]
    Bwrap,
    /// Unconfined. Never the default.
    Off,
}

impl Default for AnsibleConfig {
    fn default() -> Self {
        Self {
            ansible_playbook: "ansible-playbook".into(),
            targets: Vec::new(),
            job_timeout_secs: 1800,
            production_approval_timeout_secs: 3600,
            sandbox: AnsibleSandbox::Bwrap,
            bwrap: "bwrap".into(),
            sandbox_user: "fluid-ansible".into(),
        }
    }
}

/// `[[ansible.targets]]`: a production inventory and the SSH access ansible needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnsibleTarget {
    /// What jobs name as `vm_name` (a sandbox of that name is shadowed).
    pub name: String,
    /// `address[:port]` of each host (port 22 when absent; IPv6 in brackets).
    pub hosts: Vec<String>,
    /// The SSH user.
    #[serde(default = "default_target_user")]
    pub user: String,
    /// The SSH private key (a file the controller reads; 0600).
    pub private_key: PathBuf,
    /// Extra `ssh` arguments (e.g. `["-o", "StrictHostKeyChecking=yes"]`).
    #[serde(default)]
    pub ssh_common_args: Vec<String>,
    /// Overrides the playbook's `become`.
    #[serde(default, rename = "become", skip_serializing_if = "Option::is_none")]
    pub r#become: Option<bool>,
}

fn default_target_user() -> String {
    "root".into()
}

/// `[verify]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerifyConfig {
    /// Paths whose differences a verification ignores: what differs between any two
    /// sandboxes (their identity, written at first boot) and the traces of the
    /// playbook run itself. An entry covers itself and everything below it; a trailing
    /// `*` matches any suffix.
    pub ignore_paths: Vec<String>,
}

/// What differs between any two sandboxes of one image (their identity, written at
/// first boot; their logs), or is left by ansible itself.
pub const DEFAULT_VERIFY_IGNORE: [&str; 13] = [
    "/etc/hostname",
    "/etc/hosts",
    "/etc/machine-id",
    "/var/lib/dbus/machine-id",
    "/etc/ssh/ssh_host_*",
    "/etc/ssh/fluid_user_ca.pub",
    "/etc/ssh/fluid_revoked_keys",
    "/var/lib/systemd/random-seed",
    "/var/lib/systemd/credential.secret",
    "/var/lib/dhcp",
    "/root/.ansible",
    "/root/.ssh/known_hosts",
    "/var/log",
];

impl Default for VerifyConfig {
    fn default() -> Self {
        Self {
            ignore_paths: DEFAULT_VERIFY_IGNORE
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        }
    }
}

/// `[approvals]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApprovalsConfig {
    /// A create that finds no host with room waits for an `overcommit` approval
    /// instead of failing with 409.
    pub overcommit_approval: bool,
    /// How long an over-commit request waits for a decision before it expires.
    pub overcommit_timeout_secs: u64,
    /// How long a sandbox's egress request waits for a decision before it expires.
    pub egress_timeout_secs: u64,
    /// Notified (signed JSON POST) of every new request and decision.
    pub webhook_url: Option<String>,
    /// The HMAC key of the webhook's signature; required with `webhook_url`
    /// (or `webhook_secret_file`).
    pub webhook_secret: Option<String>,
    /// A file holding the webhook's HMAC key (first line).
    pub webhook_secret_file: Option<PathBuf>,
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        Self {
            overcommit_approval: false,
            overcommit_timeout_secs: 900,
            egress_timeout_secs: 900,
            webhook_url: None,
            webhook_secret: None,
            webhook_secret_file: None,
        }
    }
}

impl ApprovalsConfig {
    /// The webhook's HMAC key, from `webhook_secret` or `webhook_secret_file`.
    pub fn webhook_secret(&self) -> Result<Option<Vec<u8>>, ConfigError> {
        if let Some(s) = &self.webhook_secret {
            return Ok(Some(s.as_bytes().to_vec()));
        }
        let Some(path) = &self.webhook_secret_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::Invalid(format!(
                "approvals.webhook_secret_file {}: {e}",
                path.display()
            ))
        })?;
        let line = text.lines().next().unwrap_or_default().trim();
        if line.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "approvals.webhook_secret_file {} is empty",
                path.display()
            )));
        }
        Ok(Some(line.as_bytes().to_vec()))
    }
}

fn default_grpc_listen() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 8081)))
}

/// An address, or `None` for an empty string.
fn empty_is_none<'de, D>(d: D) -> Result<Option<SocketAddr>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let s: Option<String> = Option::deserialize(d)?;
    match s.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(a) => a.parse().map(Some).map_err(|e| {
            serde::de::Error::custom(format!("{a:?} is not an address (host:port): {e}"))
        }),
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            grpc_listen: default_grpc_listen(),
            data_dir: PathBuf::from("/var/lib/fluid"),
            database_url: None,
            tls: None,
            api_tls: None,
            allow_insecure_listen: false,
            hosts: Vec::new(),
            heartbeat_interval_secs: 5,
            offline_after_missed_beats: 3,
            reconcile_interval_secs: 30,
            janitor_interval_secs: 10,
            cpu_overcommit_ratio: 4.0,
            default_cpu: 1,
            default_memory_mb: 512,
            wait_for_ip_timeout_secs: 180,
            agent_timeout_secs: 30,
            ssh_ca_key_path: None,
            output_cap_bytes: 1024 * 1024,
            policy: PolicyConfig::default(),
            approvals: ApprovalsConfig::default(),
            diff: crate::sandboxes::diffs::DiffConfig::default(),
            ansible: AnsibleConfig::default(),
            verify: VerifyConfig::default(),
            log_format: fluid_telemetry::LogFormat::Text,
            otlp_endpoint: String::new(),
            metrics: MetricsConfig::default(),
            commands: crate::work::commands::CommandsConfig::default(),
            quotas: crate::governance::quotas::QuotasConfig::default(),
            retention: crate::work::retention::RetentionConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("loading configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Top-level keys the environment may override. Other `FLUID_*` variables (the agent's
/// `FLUID_AGENT_*`, test settings, …) belong to someone else and are ignored.
const CONFIG_KEYS: &[&str] = &[
    "listen",
    "grpc_listen",
    "data_dir",
    "database_url",
    "tls",
    "api_tls",
    "allow_insecure_listen",
    "hosts",
    "heartbeat_interval_secs",
    "offline_after_missed_beats",
    "reconcile_interval_secs",
    "janitor_interval_secs",
    "cpu_overcommit_ratio",
    "default_cpu",
    "default_memory_mb",
    "wait_for_ip_timeout_secs",
    "agent_timeout_secs",
    "ssh_ca_key_path",
    "output_cap_bytes",
    "policy",
    "approvals",
    "diff",
    "ansible",
    "verify",
    "log_format",
    "otlp_endpoint",
    "metrics",
    "commands",
    "quotas",
    "retention",
];

fn is_config_key(env_key: &str) -> bool {
    let top = env_key.split("__").next().unwrap_or_default();
    CONFIG_KEYS.iter().any(|k| k.eq_ignore_ascii_case(top))
}

impl Config {
    /// Reads `path` (when it exists) and `FLUID_*` variables over the defaults.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let figment = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::file(path))
            .merge(
                Env::prefixed("FLUID_")
                    .filter(|key| is_config_key(key.as_str()))
                    .split("__"),
            );
        Self::from_figment(figment)
    }

    pub fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let config: Config = figment.extract().map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.tls.is_none() {
            return bad("tls: ca_cert, cert and key are required".into());
        }
        self.validate_listen()?;
        if self.heartbeat_interval_secs == 0
            || self.reconcile_interval_secs == 0
            || self.janitor_interval_secs == 0
            || self.agent_timeout_secs == 0
        {
            return bad("intervals and timeouts must be positive".into());
        }
        if self.offline_after_missed_beats == 0 {
            return bad("offline_after_missed_beats must be positive".into());
        }
        if !self.cpu_overcommit_ratio.is_finite()
            || !(0.1..=64.0).contains(&self.cpu_overcommit_ratio)
        {
            return bad(format!(
                "cpu_overcommit_ratio {} is out of range (0.1-64)",
                self.cpu_overcommit_ratio
            ));
        }
        check_cpus("default_cpu", self.default_cpu)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        check_memory_mb("default_memory_mb", self.default_memory_mb)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if self.wait_for_ip_timeout_secs == 0
            || self.wait_for_ip_timeout_secs > fluid_proto::model::WAIT_FOR_IP_MAX_SECONDS
        {
            return bad(format!(
                "wait_for_ip_timeout_secs must be 1-{}",
                fluid_proto::model::WAIT_FOR_IP_MAX_SECONDS
            ));
        }
        if let Some(url) = &self.database_url
            && !(url.starts_with("postgres://")
                || url.starts_with("postgresql://")
                || url.starts_with("sqlite:"))
        {
            return bad(
                "database_url must start with postgres://, postgresql:// or sqlite:".into(),
            );
        }
        if self.output_cap_bytes == 0
            || self.output_cap_bytes > fluid_proto::model::OUTPUT_CAP_MAX_BYTES
        {
            return bad(format!(
                "output_cap_bytes must be 1-{}",
                fluid_proto::model::OUTPUT_CAP_MAX_BYTES
            ));
        }
        self.commands.validate().map_err(ConfigError::Invalid)?;
        self.quotas.validate().map_err(ConfigError::Invalid)?;
        self.retention.validate().map_err(ConfigError::Invalid)?;
        crate::work::policy::Policy::new(&self.policy)
            .map_err(|e| ConfigError::Invalid(format!("policy: {e}")))?;
        let a = &self.approvals;
        if a.overcommit_timeout_secs == 0 || a.overcommit_timeout_secs > 7 * 24 * 3600 {
            return bad("approvals.overcommit_timeout_secs must be 1-604800".into());
        }
        if a.egress_timeout_secs == 0 || a.egress_timeout_secs > 7 * 24 * 3600 {
            return bad("approvals.egress_timeout_secs must be 1-604800".into());
        }
        if let Some(url) = &a.webhook_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return bad(format!(
                    "approvals.webhook_url {url:?} must start with http:// or https://"
                ));
            }
            if a.webhook_secret.is_none() && a.webhook_secret_file.is_none() {
                return bad(
                    "approvals.webhook_url needs webhook_secret or webhook_secret_file (deliveries are signed)"
                        .into(),
                );
            }
        }
        self.validate_ansible()?;
        self.diff.validate().map_err(ConfigError::Invalid)?;
        fluid_telemetry::check_otlp_endpoint(&self.otlp_endpoint)
            .map_err(|e| ConfigError::Invalid(format!("otlp_endpoint: {e}")))?;
        let mut seen = std::collections::HashSet::new();
        for h in &self.hosts {
            Name::parse("hosts.name", &h.name).map_err(|e| ConfigError::Invalid(e.to_string()))?;
            crate::support::addr::check_address(&h.address)
                .map_err(|e| ConfigError::Invalid(format!("hosts.{}: {e}", h.name)))?;
            if !seen.insert(h.name.as_str()) {
                return bad(format!("hosts: {:?} is listed twice", h.name));
            }
        }
        Ok(())
    }

    /// A listener on a non-loopback address needs `[api_tls]`, or
    /// `allow_insecure_listen = true` (bearer tokens would cross the network in clear).
    fn validate_listen(&self) -> Result<(), ConfigError> {
        if self.api_tls.is_some() || self.allow_insecure_listen {
            return Ok(());
        }
        let listeners = [
            ("listen", Some(self.listen)),
            ("grpc_listen", self.grpc_listen),
        ];
        for (key, addr) in listeners {
            if let Some(a) = addr
                && !a.ip().is_loopback()
            {
                return Err(ConfigError::Invalid(format!(
                    "{key} = \"{a}\" is not a loopback address and [api_tls] is not configured: \
                     bearer tokens would cross the network in clear text. Configure [api_tls] \
                     cert and key, or set allow_insecure_listen = true if TLS is terminated in \
                     front of the controller"
                )));
            }
        }
        Ok(())
    }

    pub fn tls(&self) -> Result<&TlsFiles, ConfigError> {
        self.tls
            .as_ref()
            .ok_or_else(|| ConfigError::Invalid("tls is required".into()))
    }

    /// Where the SSH user CA key lives.
    pub fn ssh_ca_key_path(&self) -> PathBuf {
        self.ssh_ca_key_path
            .clone()
            .unwrap_or_else(|| self.data_dir.join("ssh_user_ca"))
    }

    pub fn agent_timeout(&self) -> Duration {
        Duration::from_secs(self.agent_timeout_secs)
    }

    fn validate_ansible(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let a = &self.ansible;
        if a.ansible_playbook.trim().is_empty() {
            return bad("ansible.ansible_playbook must not be empty".into());
        }
        if a.job_timeout_secs == 0 || a.job_timeout_secs > 24 * 3600 {
            return bad("ansible.job_timeout_secs must be 1-86400".into());
        }
        if a.production_approval_timeout_secs == 0
            || a.production_approval_timeout_secs > 7 * 24 * 3600
        {
            return bad("ansible.production_approval_timeout_secs must be 1-604800".into());
        }
        let mut seen = std::collections::HashSet::new();
        for t in &a.targets {
            let what = format!("ansible.targets.{}", t.name);
            Name::parse("ansible.targets.name", &t.name)
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
            if t.name.starts_with(fluid_proto::model::SandboxId::PREFIX) {
                return bad(format!(
                    "{what}: a target name must not look like a sandbox id"
                ));
            }
            if !seen.insert(t.name.as_str()) {
                return bad(format!("ansible.targets: {:?} is listed twice", t.name));
            }
            if t.hosts.is_empty() {
                return bad(format!("{what}: hosts must name at least one host"));
            }
            for h in &t.hosts {
                crate::support::addr::parse_target_host(h)
                    .map_err(|e| ConfigError::Invalid(format!("{what}.hosts: {e}")))?;
            }
            fluid_proto::model::check_user("user", &t.user)
                .map_err(|e| ConfigError::Invalid(format!("{what}: {e}")))?;
            if !t.private_key.is_absolute() {
                return bad(format!("{what}: private_key must be an absolute path"));
            }
        }
        for p in &self.verify.ignore_paths {
            if !p.starts_with('/') || p.contains("/../") || p.ends_with("/..") {
                return bad(format!(
                    "verify.ignore_paths: {p:?} must be an absolute path without .."
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
