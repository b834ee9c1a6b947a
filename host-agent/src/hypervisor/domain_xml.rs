//! libvirt domain XML, built from typed structs and serialised with quick-xml (so every
//! value is escaped), and the few pieces the agent reads back out of libvirt's XML
//! (ownership mark, a source domain's disk and boot settings).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Boot, DomainSpec, FLUID_XMLNS, FluidMeta};
use crate::config::VirtType;

/// The domain XML for `spec`.
pub fn render(spec: &DomainSpec) -> Result<String, quick_xml::SeError> {
    let domain = Domain::from_spec(spec);
    let mut out = String::new();
    let mut ser = quick_xml::se::Serializer::with_root(&mut out, Some("domain"))?;
    ser.indent(' ', 2);
    domain.serialize(ser)?;
    out.push('\n');
    Ok(out)
}

#[derive(Debug, Serialize)]
struct Domain {
    #[serde(rename = "@type")]
    kind: &'static str,
    name: String,
    uuid: String,
    metadata: Metadata,
    memory: Memory,
    vcpu: u32,
    sysinfo: Sysinfo,
    os: Os,
    features: Features,
    cpu: Cpu,
    clock: Clock,
    on_poweroff: &'static str,
    on_reboot: &'static str,
    on_crash: &'static str,
    devices: Devices,
}

#[derive(Debug, Serialize)]
struct Metadata {
    #[serde(rename = "fluid:sandbox")]
    sandbox: SandboxMark,
}

#[derive(Debug, Serialize)]
struct SandboxMark {
    #[serde(rename = "@xmlns:fluid")]
    xmlns: &'static str,
    #[serde(rename = "@id")]
    id: String,
    #[serde(rename = "@agent")]
    agent: String,
    #[serde(rename = "@image")]
    image: String,
}

#[derive(Debug, Serialize)]
struct Memory {
    #[serde(rename = "@unit")]
    unit: &'static str,
    #[serde(rename = "$text")]
    value: u64,
}

/// SMBIOS type 11 OEM strings: the guest's identity, read at every boot by the golden
/// image's `fluid-identity` unit (`fluid:hostname=…`, `fluid:sandbox_id=…`, one
/// `fluid:ssh_user_ca=…` per key).
#[derive(Debug, Serialize)]
struct Sysinfo {
    #[serde(rename = "@type")]
    kind: &'static str,
    #[serde(rename = "oemStrings")]
    oem_strings: OemStrings,
}

#[derive(Debug, Serialize)]
struct OemStrings {
    entry: Vec<String>,
}

/// The OEM strings that carry a sandbox's identity to its guest. The sandbox id is
/// what its sshd accepts certificates for (principal `sbx:<id>:<user>`); a fork gets
/// its own, so it never accepts its source's certificates.
pub fn oem_strings(spec: &DomainSpec) -> Vec<String> {
    let mut entries = vec![
        format!("fluid:hostname={}", spec.hostname),
        format!("fluid:sandbox_id={}", spec.id.as_str()),
    ];
    entries.extend(
        spec.ssh_user_ca_keys
            .iter()
            .map(|k| format!("fluid:ssh_user_ca={k}")),
    );
    entries
}

#[derive(Debug, Serialize)]
struct Os {
    #[serde(rename = "type")]
    kind: OsType,
    #[serde(skip_serializing_if = "Option::is_none")]
    kernel: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    initrd: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cmdline: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    boot: Option<BootDev>,
    smbios: Smbios,
}

#[derive(Debug, Serialize)]
struct Smbios {
    #[serde(rename = "@mode")]
    mode: &'static str,
}

#[derive(Debug, Serialize)]
struct OsType {
    #[serde(rename = "@arch")]
    arch: &'static str,
    #[serde(rename = "$text")]
    value: &'static str,
}

#[derive(Debug, Serialize)]
struct BootDev {
    #[serde(rename = "@dev")]
    dev: &'static str,
}

#[derive(Debug, Serialize)]
struct Features {
    acpi: (),
    apic: (),
}

#[derive(Debug, Serialize)]
struct Cpu {
    #[serde(rename = "@mode")]
    mode: &'static str,
}

#[derive(Debug, Serialize)]
struct Clock {
    #[serde(rename = "@offset")]
    offset: &'static str,
}

#[derive(Debug, Serialize)]
struct Devices {
    disk: Disk,
    interface: Interface,
    serial: Serial,
    console: Console,
    channel: Channel,
    rng: Rng,
}

#[derive(Debug, Serialize)]
struct Disk {
    #[serde(rename = "@type")]
    kind: &'static str,
    #[serde(rename = "@device")]
    device: &'static str,
    driver: DiskDriver,
    source: FileSource,
    target: DiskTarget,
}

#[derive(Debug, Serialize)]
struct DiskDriver {
    #[serde(rename = "@name")]
    name: &'static str,
    #[serde(rename = "@type")]
    kind: &'static str,
}

#[derive(Debug, Serialize)]
struct FileSource {
    #[serde(rename = "@file")]
    file: String,
}

#[derive(Debug, Serialize)]
struct DiskTarget {
    #[serde(rename = "@dev")]
    dev: &'static str,
    #[serde(rename = "@bus")]
    bus: &'static str,
}

#[derive(Debug, Serialize)]
struct Interface {
    #[serde(rename = "@type")]
    kind: &'static str,
    mac: MacAddress,
    source: NetworkSource,
    /// The host-side tap's name, fixed so the agent's nftables rules can name it.
    target: InterfaceTarget,
    model: Model,
    /// Only ever `down`: a memory template boots with its NIC unplugged from the wire,
    /// and its clones are restored so, until the agent has given them their identity.
    #[serde(skip_serializing_if = "Option::is_none")]
    link: Option<LinkState>,
}

#[derive(Debug, Serialize)]
struct LinkState {
    #[serde(rename = "@state")]
    state: &'static str,
}

#[derive(Debug, Serialize)]
struct InterfaceTarget {
    #[serde(rename = "@dev")]
    dev: String,
}

#[derive(Debug, Serialize)]
struct MacAddress {
    #[serde(rename = "@address")]
    address: String,
}

#[derive(Debug, Serialize)]
struct NetworkSource {
    #[serde(rename = "@network")]
    network: String,
}

#[derive(Debug, Serialize)]
struct Model {
    #[serde(rename = "@type")]
    kind: &'static str,
}

#[derive(Debug, Serialize)]
struct Serial {
    #[serde(rename = "@type")]
    kind: &'static str,
    target: PortTarget,
    log: LogFile,
}

#[derive(Debug, Serialize)]
struct PortTarget {
    #[serde(rename = "@port")]
    port: u32,
}

#[derive(Debug, Serialize)]
struct LogFile {
    #[serde(rename = "@file")]
    file: String,
}

#[derive(Debug, Serialize)]
struct Console {
    #[serde(rename = "@type")]
    kind: &'static str,
    target: ConsoleTarget,
}

#[derive(Debug, Serialize)]
struct ConsoleTarget {
    #[serde(rename = "@type")]
    kind: &'static str,
    #[serde(rename = "@port")]
    port: u32,
}

#[derive(Debug, Serialize)]
struct Channel {
    #[serde(rename = "@type")]
    kind: &'static str,
    target: ChannelTarget,
}

#[derive(Debug, Serialize)]
struct ChannelTarget {
    #[serde(rename = "@type")]
    kind: &'static str,
    #[serde(rename = "@name")]
    name: &'static str,
}

#[derive(Debug, Serialize)]
struct Rng {
    #[serde(rename = "@model")]
    model: &'static str,
    backend: RngBackend,
}

#[derive(Debug, Serialize)]
struct RngBackend {
    #[serde(rename = "@model")]
    model: &'static str,
    #[serde(rename = "$text")]
    device: &'static str,
}

/// The XML of `spec`'s NIC with its link up: what a live device update sends to plug a
/// restored clone's NIC into the wire.
pub fn interface_link_up(spec: &DomainSpec) -> Result<String, quick_xml::SeError> {
    let mut out = String::new();
    let ser = quick_xml::se::Serializer::with_root(&mut out, Some("interface"))?;
    let mut iface = Interface::from_spec(spec, false);
    iface.link = Some(LinkState { state: "up" });
    iface.serialize(ser)?;
    Ok(out)
}

impl Interface {
    fn from_spec(s: &DomainSpec, link_down: bool) -> Self {
        Interface {
            kind: "network",
            mac: MacAddress {
                address: s.mac.clone(),
            },
            source: NetworkSource {
                network: s.network.to_string(),
            },
            target: InterfaceTarget { dev: s.tap.clone() },
            model: Model { kind: "virtio" },
            link: link_down.then_some(LinkState { state: "down" }),
        }
    }
}

fn path_string(p: &std::path::Path) -> String {
    p.to_string_lossy().into_owned()
}

impl Domain {
    fn from_spec(s: &DomainSpec) -> Self {
        let (kernel, initrd, cmdline, boot) = match &s.boot {
            Boot::Disk => (None, None, None, Some(BootDev { dev: "hd" })),
            Boot::Kernel {
                kernel,
                initrd,
                cmdline,
            } => (
                Some(path_string(kernel)),
                initrd.as_deref().map(path_string),
                cmdline.clone(),
                None,
            ),
        };
        Domain {
            kind: s.virt_type.as_str(),
            name: s.name.to_string(),
            uuid: s.uuid.clone(),
            metadata: Metadata {
                sandbox: SandboxMark {
                    xmlns: FLUID_XMLNS,
                    id: s.id.to_string(),
                    agent: s.agent.to_string(),
                    image: s.image.to_string(),
                },
            },
            memory: Memory {
                unit: "MiB",
                value: s.memory_mb,
            },
            vcpu: s.cpus,
            sysinfo: Sysinfo {
                kind: "smbios",
                oem_strings: OemStrings {
                    entry: oem_strings(s),
                },
            },
            os: Os {
                kind: OsType {
                    arch: "x86_64",
                    value: "hvm",
                },
                kernel,
                initrd,
                cmdline,
                boot,
                smbios: Smbios { mode: "sysinfo" },
            },
            features: Features { acpi: (), apic: () },
            cpu: Cpu {
                mode: match s.virt_type {
                    VirtType::Kvm => "host-passthrough",
                    VirtType::Qemu => "maximum",
                },
            },
            clock: Clock { offset: "utc" },
            on_poweroff: "destroy",
            on_reboot: "restart",
            on_crash: "destroy",
            devices: Devices {
                disk: Disk {
                    kind: "file",
                    device: "disk",
                    driver: DiskDriver {
                        name: "qemu",
                        kind: "qcow2",
                    },
                    source: FileSource {
                        file: path_string(&s.overlay),
                    },
                    target: DiskTarget {
                        dev: "vda",
                        bus: "virtio",
                    },
                },
                interface: Interface::from_spec(s, s.link_down),
                serial: Serial {
                    kind: "pty",
                    target: PortTarget { port: 0 },
                    log: LogFile {
                        file: path_string(&s.console_log),
                    },
                },
                console: Console {
                    kind: "pty",
                    target: ConsoleTarget {
                        kind: "serial",
                        port: 0,
                    },
                },
                channel: Channel {
                    kind: "unix",
                    target: ChannelTarget {
                        kind: "virtio",
                        name: "org.qemu.guest_agent.0",
                    },
                },
                rng: Rng {
                    model: "virtio",
                    backend: RngBackend {
                        model: "random",
                        device: "/dev/urandom",
                    },
                },
            },
        }
    }
}

/// The ownership mark as `virDomainGetMetadata(ELEMENT, FLUID_XMLNS)` returns it.
pub fn parse_meta(xml: &str) -> Option<FluidMeta> {
    #[derive(Deserialize)]
    struct Mark {
        #[serde(rename = "@id")]
        id: String,
        #[serde(rename = "@agent")]
        agent: String,
        #[serde(rename = "@image", default)]
        image: String,
    }
    let m: Mark = quick_xml::de::from_str(xml).ok()?;
    Some(FluidMeta {
        id: m.id,
        agent: m.agent,
        image: m.image,
    })
}

/// What the agent reads from a source domain's XML: its first disk and how it boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceDisk {
    pub path: PathBuf,
    pub format: String,
    pub boot: Boot,
}

/// Reads the first `device='disk'` with a file source, and the kernel settings.
pub fn parse_source_disk(xml: &str) -> Option<SourceDisk> {
    #[derive(Deserialize)]
    struct D {
        #[serde(default)]
        os: Option<ROs>,
        devices: RDevices,
    }
    #[derive(Deserialize)]
    struct ROs {
        kernel: Option<String>,
        initrd: Option<String>,
        cmdline: Option<String>,
    }
    #[derive(Deserialize)]
    struct RDevices {
        #[serde(default)]
        disk: Vec<RDisk>,
    }
    #[derive(Deserialize)]
    struct RDisk {
        #[serde(rename = "@device", default)]
        device: String,
        driver: Option<RDriver>,
        source: Option<RSource>,
    }
    #[derive(Deserialize)]
    struct RDriver {
        #[serde(rename = "@type")]
        kind: Option<String>,
    }
    #[derive(Deserialize)]
    struct RSource {
        #[serde(rename = "@file")]
        file: Option<String>,
    }
    let d: D = quick_xml::de::from_str(xml).ok()?;
    let disk = d.devices.disk.into_iter().find(|disk| {
        disk.device == "disk" && disk.source.as_ref().is_some_and(|s| s.file.is_some())
    })?;
    let path = PathBuf::from(disk.source?.file?);
    let format = disk
        .driver
        .and_then(|d| d.kind)
        .unwrap_or_else(|| "raw".into());
    let boot = match d.os {
        Some(ROs {
            kernel: Some(kernel),
            initrd,
            cmdline,
        }) => Boot::Kernel {
            kernel: kernel.into(),
            initrd: initrd.map(PathBuf::from),
            cmdline,
        },
        _ => Boot::Disk,
    };
    Some(SourceDisk { path, format, boot })
}

#[cfg(test)]
mod tests;
