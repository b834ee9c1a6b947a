//! The agent's configuration: `/etc/fluid/agent.toml` plus `FLUID_AGENT_*` environment
//! overrides (nested keys with `__`, e.g. `FLUID_AGENT_TLS__CERT`). Validated on load,
//! so the rest of the agent only sees good values.

use std::collections::HashSet;
use std::fmt;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use fluid_proto::model::{EgressRule, Name};
use fluid_proto::tls::TlsFiles;
use serde::{Deserialize, Serialize};

mod disk;
mod exec;
mod network;
mod pool;
mod simulated;
mod templates;
pub use disk::DiskConfig;
use disk::RawDisk;
pub use exec::ExecConfig;
use exec::RawExec;
use network::RawNetworkField;
use pool::RawPool;
pub use pool::{PoolConfig, PoolShape};
use simulated::RawSimulated;
pub use simulated::SimulatedConfig;
use templates::RawTemplates;
pub use templates::{TemplateShape, TemplatesConfig};

/// Where the agent looks for its config file unless told otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/fluid/agent.toml";

/// How libvirt runs guests: hardware virtualisation or QEMU's TCG emulator (for hosts
/// where nested KVM does not work; see docs/BUILD-HOSTS.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum VirtType {
    #[default]
    Kvm,
    Qemu,
}

impl VirtType {
    pub fn as_str(self) -> &'static str {
        match self {
            VirtType::Kvm => "kvm",
            VirtType::Qemu => "qemu",
        }
    }
}

impl fmt::Display for VirtType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The agent's configuration, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// This host's name in the fleet; also the ownership mark on its libvirt domains.
    pub host_name: Name,
    /// gRPC (mTLS) listen address. Default `0.0.0.0:7443`.
    pub listen: SocketAddr,
    /// Fleet CA, this agent's certificate and key. There is no plaintext mode.
    pub tls: TlsFiles,
    /// Default `qemu:///system`.
    pub libvirt_uri: String,
    /// Default `kvm`.
    pub virt_type: VirtType,
    /// The libvirt network the sandboxes join and how they are isolated on it.
    pub network: NetworkConfig,
    /// Overlays, the redb file and serial logs live here. Default `/var/lib/fluid-agent`.
    pub state_dir: PathBuf,
    /// Capacity overrides; otherwise libvirt's node info.
    pub cpus: Option<u32>,
    pub memory_mb: Option<u64>,
    /// Grace period for a graceful stop before the power is cut. Default 30.
    pub stop_timeout_seconds: u32,
    /// Images sandboxes can be created from.
    pub images: Vec<ImageConfig>,
    /// Plain-HTTP listener of `GET /metrics` (Prometheus). Default `127.0.0.1:9464`;
    /// `""` turns it off.
    pub metrics_listen: Option<SocketAddr>,
    /// Log lines on stderr: `text` (default) or `json`. `--log-format` overrides it.
    pub log_format: fluid_telemetry::LogFormat,
    /// `http://host:port` of an OTLP/gRPC trace receiver; `None`: spans not exported.
    pub otlp_endpoint: Option<String>,
    /// `[exec]`: commands per sandbox at once, channels per SSH connection, the
    /// longest run time.
    pub exec: ExecConfig,
    /// `[disk]`: free space kept, caps on snapshots and disk inspections.
    pub disk: DiskConfig,
    /// `[templates]`: memory templates sandboxes are restored from.
    pub templates: TemplatesConfig,
    /// `[pool]`: sandboxes restored ahead of time, handed out on create.
    pub pool: PoolConfig,
    /// `[simulated]`: this process serves simulated hosts (scale tests), not sandboxes
    /// on this machine. `None` (the default): a real host.
    pub simulated: Option<SimulatedConfig>,
}

/// The default `metrics_listen`.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";

/// `[network]`: the libvirt network and the sandboxes' isolation on it (nftables rules
/// outside the VM, a DNS proxy on the bridge).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// libvirt network the sandboxes' NIC joins. Default `default`. (The top-level
    /// `network = "<name>"` of older configs still sets it.)
    pub name: Name,
    /// Seal every sandbox with nftables. Default true; false leaves sandboxes with
    /// whatever the libvirt network allows (a warning is logged at start).
    pub enforce: bool,
    /// Name of this agent's two nftables tables (`bridge` and `inet` families).
    /// Default `fluid_<host_name>` with every character but letters and digits as `_`.
    pub nft_table: String,
    /// The network's bridge; default: read from libvirt.
    pub bridge: Option<String>,
    /// Where the agent's DNS proxy listens (sandboxes' DNS is redirected there).
    /// Default: the bridge's address, port 5353.
    pub dns_listen: Option<SocketAddrV4>,
    /// Where the DNS proxy forwards queries. Default: the bridge's address, port 53
    /// (libvirt's dnsmasq).
    pub dns_upstream: Option<SocketAddr>,
    /// Destinations every sandbox of this host may reach, e.g. an apt proxy
    /// (`"10.0.0.5/32 tcp/3142"`, `"deb.debian.org tcp/80"`, `"192.168.1.0/24"`).
    pub always_allow: Vec<EgressRule>,
    /// Private networks (e.g. an internal mirror's) whose addresses a DNS answer may
    /// nevertheless admit into a sandbox's allow set. Default none: answers only open
    /// public addresses, never the bridge's subnet, loopback or link-local.
    pub resolved_private_allow: Vec<ipnet::Ipv4Net>,
    /// DNS queries one sandbox may have in flight at the proxy. Default 32.
    pub dns_max_in_flight_per_sandbox: usize,
    /// TCP connections one sandbox may hold to the DNS proxy. Default 4.
    pub dns_max_tcp_per_sandbox: usize,
    /// The least time an address a sandbox's DNS answer allowed stays allowed, whatever
    /// the answer's TTL (`resolved_min_secs`, default 30, at most a day). Connections
    /// to it are cut when it expires (unless the sandbox resolved the name again).
    pub resolved_min: std::time::Duration,
}

/// Something a sandbox's disk can be cloned from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageConfig {
    /// A qcow2 golden image; direct kernel boot when `kernel` is set.
    Qcow2 {
        name: Name,
        path: PathBuf,
        kernel: Option<PathBuf>,
        initrd: Option<PathBuf>,
        cmdline: Option<String>,
    },
    /// An existing (stopped) libvirt domain whose first disk becomes the backing file.
    SourceDomain { name: Name, source_domain: String },
}

impl ImageConfig {
    pub fn name(&self) -> &Name {
        match self {
            ImageConfig::Qcow2 { name, .. } | ImageConfig::SourceDomain { name, .. } => name,
        }
    }
}

impl AgentConfig {
    /// Overlay files, one per sandbox.
    pub fn overlay_dir(&self) -> PathBuf {
        self.state_dir.join("overlays")
    }

    /// Serial console logs, one per sandbox.
    pub fn console_dir(&self) -> PathBuf {
        self.state_dir.join("console")
    }

    /// The redb file with the sandbox records.
    pub fn db_path(&self) -> PathBuf {
        self.state_dir.join("agent.redb")
    }

    pub fn image(&self, name: &Name) -> Option<&ImageConfig> {
        self.images.iter().find(|i| i.name() == name)
    }

    /// Reads `path` (it must exist) and the environment.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        if !path.exists() {
            return Err(ConfigError::Missing(path.to_owned()));
        }
        Self::from_figment(Figment::new().merge(Toml::file_exact(path)))
    }

    /// Parses a TOML string plus the environment (tests and tools).
    pub fn from_toml(toml: &str) -> Result<Self, ConfigError> {
        Self::from_figment(Figment::new().merge(Toml::string(toml)))
    }

    fn from_figment(file: Figment) -> Result<Self, ConfigError> {
        let raw: RawConfig = Figment::new()
            .merge(Serialized::defaults(RawConfig::default()))
            .merge(file)
            .merge(Env::prefixed("FLUID_AGENT_").split("__"))
            .extract()
            .map_err(|e| ConfigError::Parse(Box::new(e)))?;
        raw.validate()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    Missing(PathBuf),
    #[error("config: {0}")]
    Parse(Box<figment::Error>),
    #[error("config: {field}: {reason}")]
    Invalid { field: String, reason: String },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The config as written, before validation.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    host_name: Option<String>,
    listen: SocketAddr,
    tls: Option<TlsFiles>,
    libvirt_uri: String,
    virt_type: VirtType,
    network: RawNetworkField,
    state_dir: PathBuf,
    cpus: Option<u32>,
    memory_mb: Option<u64>,
    stop_timeout_seconds: u32,
    images: Vec<RawImage>,
    metrics_listen: String,
    log_format: fluid_telemetry::LogFormat,
    otlp_endpoint: String,
    exec: RawExec,
    disk: RawDisk,
    templates: RawTemplates,
    pool: RawPool,
    #[serde(skip_serializing_if = "Option::is_none")]
    simulated: Option<RawSimulated>,
}

impl Default for RawConfig {
    fn default() -> Self {
        Self {
            host_name: None,
            listen: SocketAddr::from(([0, 0, 0, 0], 7443)),
            tls: None,
            libvirt_uri: "qemu:///system".into(),
            virt_type: VirtType::Kvm,
            network: RawNetworkField::default(),
            state_dir: PathBuf::from("/var/lib/fluid-agent"),
            cpus: None,
            memory_mb: None,
            stop_timeout_seconds: 30,
            images: Vec::new(),
            metrics_listen: DEFAULT_METRICS_LISTEN.into(),
            log_format: fluid_telemetry::LogFormat::Text,
            otlp_endpoint: String::new(),
            exec: RawExec::default(),
            disk: RawDisk::default(),
            templates: RawTemplates::default(),
            pool: RawPool::default(),
            simulated: None,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImage {
    name: String,
    path: Option<PathBuf>,
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    cmdline: Option<String>,
    source_domain: Option<String>,
}

fn absolute(field: String, p: PathBuf) -> Result<PathBuf, ConfigError> {
    if p.is_absolute() {
        Ok(p)
    } else {
        Err(invalid(
            field,
            format!("{} must be an absolute path", p.display()),
        ))
    }
}

impl RawImage {
    fn validate(self, i: usize) -> Result<ImageConfig, ConfigError> {
        let field = |f: &str| format!("images[{i}].{f}");
        let name = Name::parse("name", &self.name).map_err(|e| invalid(field("name"), e.reason))?;
        match (self.path, self.source_domain) {
            (Some(path), None) => {
                if self.cmdline.is_some() && self.kernel.is_none() {
                    return Err(invalid(field("cmdline"), "needs a kernel"));
                }
                if self.initrd.is_some() && self.kernel.is_none() {
                    return Err(invalid(field("initrd"), "needs a kernel"));
                }
                let opt =
                    |f: &str, p: Option<PathBuf>| p.map(|p| absolute(field(f), p)).transpose();
                Ok(ImageConfig::Qcow2 {
                    name,
                    path: absolute(field("path"), path)?,
                    kernel: opt("kernel", self.kernel)?,
                    initrd: opt("initrd", self.initrd)?,
                    cmdline: self.cmdline,
                })
            }
            (None, Some(source_domain)) => {
                if self.kernel.is_some() || self.initrd.is_some() || self.cmdline.is_some() {
                    return Err(invalid(
                        field("source_domain"),
                        "kernel, initrd and cmdline come from the source domain",
                    ));
                }
                Name::parse("source_domain", &source_domain)
                    .map_err(|e| invalid(field("source_domain"), e.reason))?;
                Ok(ImageConfig::SourceDomain {
                    name,
                    source_domain,
                })
            }
            (Some(_), Some(_)) => Err(invalid(
                field("path"),
                "set either path or source_domain, not both",
            )),
            (None, None) => Err(invalid(field("path"), "set path or source_domain")),
        }
    }
}

impl RawConfig {
    fn validate(self) -> Result<AgentConfig, ConfigError> {
        let host_name = self
            .host_name
            .ok_or_else(|| invalid("host_name", "is required"))?;
        let host_name =
            Name::parse("host_name", &host_name).map_err(|e| invalid("host_name", e.reason))?;
        let tls = self.tls.ok_or_else(|| {
            invalid(
                "tls",
                "is required (ca_cert, cert, key); there is no plaintext mode",
            )
        })?;
        let network = self.network.validate(&host_name)?;
        let disk = self.disk.validate()?;
        if self.libvirt_uri.trim().is_empty() {
            return Err(invalid("libvirt_uri", "must not be empty"));
        }
        let state_dir = absolute("state_dir".into(), self.state_dir)?;
        if self.cpus == Some(0) {
            return Err(invalid("cpus", "must be positive"));
        }
        if self.memory_mb == Some(0) {
            return Err(invalid("memory_mb", "must be positive"));
        }
        if !(1..=600).contains(&self.stop_timeout_seconds) {
            return Err(invalid("stop_timeout_seconds", "must be 1-600"));
        }
        let metrics_listen =
            match self.metrics_listen.trim() {
                "" => None,
                a => Some(a.parse::<SocketAddr>().map_err(|e| {
                    invalid("metrics_listen", format!("{a:?} is not host:port: {e}"))
                })?),
            };
        fluid_telemetry::check_otlp_endpoint(&self.otlp_endpoint)
            .map_err(|e| invalid("otlp_endpoint", e))?;
        let otlp_endpoint = Some(self.otlp_endpoint.trim().to_owned()).filter(|e| !e.is_empty());
        let mut images = Vec::with_capacity(self.images.len());
        let mut seen = HashSet::new();
        for (i, raw) in self.images.into_iter().enumerate() {
            let image = raw.validate(i)?;
            if !seen.insert(image.name().clone()) {
                return Err(invalid(
                    format!("images[{i}].name"),
                    format!("{} is declared twice", image.name()),
                ));
            }
            images.push(image);
        }
        let names: Vec<&Name> = images.iter().map(ImageConfig::name).collect();
        let templates = self.templates.validate(&names)?;
        let pool = self.pool.validate(&names)?;
        let simulated = self.simulated.map(RawSimulated::validate).transpose()?;
        if simulated.is_some() && !pool.shapes.is_empty() {
            return Err(invalid(
                "simulated",
                "simulated hosts keep no warm pool: remove [pool] shapes",
            ));
        }
        Ok(AgentConfig {
            host_name,
            listen: self.listen,
            tls,
            libvirt_uri: self.libvirt_uri,
            virt_type: self.virt_type,
            network,
            state_dir,
            cpus: self.cpus,
            memory_mb: self.memory_mb,
            stop_timeout_seconds: self.stop_timeout_seconds,
            images,
            metrics_listen,
            log_format: self.log_format,
            otlp_endpoint,
            exec: self.exec.validate()?,
            disk,
            templates,
            pool,
            simulated,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
host_name = "kvm-1"
[tls]
ca_cert = "/etc/fluid/ca.pem"
cert = "/etc/fluid/agent.pem"
key = "/etc/fluid/agent.key"
"#;

    fn err(toml: &str) -> String {
        AgentConfig::from_toml(toml)
            .expect_err("must be refused")
            .to_string()
    }

    #[test]
    fn defaults() {
        let c = AgentConfig::from_toml(MINIMAL).expect("valid");
        assert_eq!(c.host_name.as_str(), "kvm-1");
        assert_eq!(c.listen.to_string(), "0.0.0.0:7443");
        assert_eq!(c.libvirt_uri, "qemu:///system");
        assert_eq!(c.virt_type, VirtType::Kvm);
        assert_eq!(c.network.name.as_str(), "default");
        assert!(c.network.enforce);
        assert_eq!(c.network.nft_table, "fluid_kvm_1");
        assert_eq!(c.network.bridge, None);
        assert_eq!(c.network.dns_listen, None);
        assert!(c.network.always_allow.is_empty());
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/fluid-agent"));
        assert_eq!(c.stop_timeout_seconds, 30);
        assert_eq!(c.cpus, None);
        assert!(c.images.is_empty());
        assert_eq!(c.metrics_listen, DEFAULT_METRICS_LISTEN.parse().ok());
        assert_eq!(c.log_format, fluid_telemetry::LogFormat::Text);
        assert_eq!(c.otlp_endpoint, None);
        assert_eq!(
            c.db_path(),
            PathBuf::from("/var/lib/fluid-agent/agent.redb")
        );
        assert_eq!(
            c.overlay_dir(),
            PathBuf::from("/var/lib/fluid-agent/overlays")
        );
    }

    #[test]
    fn full_config_with_both_image_kinds() {
        let toml = r#"
host_name = "kvm-1"
virt_type = "qemu"
cpus = 8
memory_mb = 16384
[tls]
ca_cert = "/etc/fluid/ca.pem"
cert = "/etc/fluid/agent.pem"
key = "/etc/fluid/agent.key"
[[images]]
name = "debian-12"
path = "/var/cache/fluid/images/d/disk.qcow2"
kernel = "/var/cache/fluid/images/d/vmlinuz"
initrd = "/var/cache/fluid/images/d/initrd.img"
cmdline = "root=/dev/vda rw console=ttyS0"
[[images]]
name = "ubuntu-src"
source_domain = "ubuntu-golden"
"#;
        let c = AgentConfig::from_toml(toml).expect("valid");
        assert_eq!(c.virt_type, VirtType::Qemu);
        assert_eq!(c.cpus, Some(8));
        assert_eq!(c.memory_mb, Some(16384));
        assert_eq!(c.images.len(), 2);
        assert!(matches!(
            &c.images[0],
            ImageConfig::Qcow2 {
                kernel: Some(_),
                ..
            }
        ));
        assert!(matches!(
            &c.images[1],
            ImageConfig::SourceDomain { source_domain, .. } if source_domain == "ubuntu-golden"
        ));
        let name = Name::parse("n", "ubuntu-src").expect("name");
        assert!(c.image(&name).is_some());
    }

    #[test]
    fn observability_settings() {
        let c = AgentConfig::from_toml(&format!(
            "metrics_listen = \"\"\nlog_format = \"json\"\notlp_endpoint = \"http://127.0.0.1:4317\"\n{MINIMAL}"
        ))
        .expect("valid");
        assert_eq!(c.metrics_listen, None);
        assert_eq!(c.log_format, fluid_telemetry::LogFormat::Json);
        assert_eq!(c.otlp_endpoint.as_deref(), Some("http://127.0.0.1:4317"));
        let c = AgentConfig::from_toml(&format!("metrics_listen = \"0.0.0.0:9100\"\n{MINIMAL}"))
            .expect("valid");
        assert_eq!(c.metrics_listen, "0.0.0.0:9100".parse().ok());
    }

    #[test]
    fn required_fields() {
        assert!(err("[tls]\nca_cert='/a'\ncert='/b'\nkey='/c'").contains("host_name"));
        assert!(err("host_name = 'h'").contains("plaintext"));
    }

    #[test]
    fn bad_values_are_refused_with_the_field_named() {
        let cases = [
            ("host_name = 'bad name'", "host_name"),
            ("virt_type = 'xen'", "virt_type"),
            ("listen = 'nowhere'", "listen"),
            ("network = '../x'", "network"),
            ("state_dir = 'relative'", "state_dir"),
            ("cpus = 0", "cpus"),
            ("stop_timeout_seconds = 0", "stop_timeout_seconds"),
            ("metrics_listen = 'nowhere'", "metrics_listen"),
            ("otlp_endpoint = 'collector:4317'", "otlp_endpoint"),
            ("log_format = 'xml'", "log_format"),
            ("bogus = 1", "bogus"),
        ];
        for (line, field) in cases {
            let toml = MINIMAL.replacen("host_name = \"kvm-1\"", line, 1);
            let toml = if field == "host_name" {
                toml
            } else {
                format!("host_name = 'kvm-1'\n{toml}")
            };
            let e = err(&toml);
            assert!(e.contains(field), "{line}: {e}");
        }
    }

    #[test]
    fn bad_images_are_refused() {
        let cases = [
            ("name = 'a b'\npath = '/x.qcow2'", "images[0].name"),
            ("name = 'a'", "set path or source_domain"),
            ("name = 'a'\npath = '/x'\nsource_domain = 'd'", "not both"),
            ("name = 'a'\npath = 'rel.qcow2'", "absolute"),
            ("name = 'a'\npath = '/x'\ncmdline = 'c'", "needs a kernel"),
            (
                "name = 'a'\nsource_domain = 'd'\nkernel = '/k'",
                "source domain",
            ),
            (
                "name = 'a'\nsource_domain = 'd;x'",
                "images[0].source_domain",
            ),
        ];
        for (image, want) in cases {
            let e = err(&format!("{MINIMAL}\n[[images]]\n{image}\n"));
            assert!(e.contains(want), "{image}: {e}");
        }
        let dup = format!(
            "{MINIMAL}\n[[images]]\nname='a'\npath='/x'\n[[images]]\nname='a'\npath='/y'\n"
        );
        assert!(err(&dup).contains("declared twice"));
    }

    #[test]
    fn file_must_exist() {
        let e = AgentConfig::load(Path::new("/nonexistent/agent.toml")).expect_err("missing");
        assert!(e.to_string().contains("does not exist"));
    }

    #[test]
    fn the_deploy_example_parses() {
        let c = AgentConfig::from_toml(include_str!("../../deploy/agent.toml"))
            .expect("deploy/agent.toml");
        assert_eq!(c.host_name.as_str(), "kvm-1");
        assert_eq!(c.images.len(), 1);
        assert_eq!(c.network.name.as_str(), "default");
        assert!(c.network.enforce);
        assert_eq!(c.network.nft_table, "fluid_kvm_1");
        assert!(c.templates.enabled && c.templates.on_demand);
        assert_eq!(c.templates.shapes.len(), 1);
        assert_eq!(c.templates.shapes[0].memory_mb, 512);
    }

    #[test]
    fn templates_are_checked() {
        let base = "host_name = \"h\"\n[tls]\nca_cert = \"/a\"\ncert = \"/b\"\nkey = \"/c\"\n\
            [[images]]\nname = \"debian-12\"\npath = \"/i.qcow2\"\n[templates]\n";
        let ok = AgentConfig::from_toml(base).expect("defaults");
        assert_eq!(ok.templates, TemplatesConfig::default());
        for (bad, field) in [
            (
                "shapes = [{ image = \"nope\", cpus = 1, memory_mb = 512 }]",
                "templates.shapes",
            ),
            (
                "shapes = [{ image = \"debian-12\", cpus = 0, memory_mb = 512 }]",
                "templates.shapes",
            ),
            ("dir = \"relative\"", "templates.dir"),
            ("max = 0", "templates.max"),
            ("build_timeout_secs = 1", "templates.build_timeout_secs"),
            ("bogus = 1", "bogus"),
        ] {
            let e = AgentConfig::from_toml(&format!("{base}{bad}\n")).expect_err(bad);
            assert!(e.to_string().contains(field), "{bad}: {e}");
        }
    }
}
