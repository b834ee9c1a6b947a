//! The domain XML: snapshots of what is rendered, and what it must mean.

use fluid_proto::model::{Name, SandboxId};

use super::*;

fn name(s: &str) -> Name {
    Name::parse("n", s).expect("name")
}

fn spec(virt_type: VirtType, boot: Boot) -> DomainSpec {
    DomainSpec {
        id: SandboxId::parse("id", "SBX-0123abcd").expect("id"),
        name: name("web-1"),
        hostname: name("web-1"),
        uuid: "6f1c2a9e-5d7b-4f7e-9a51-2f4f0c9e1a10".into(),
        agent: name("kvm-1"),
        image: name("debian-12"),
        virt_type,
        cpus: 2,
        memory_mb: 512,
        boot,
        overlay: "/var/lib/fluid-agent/overlays/SBX-0123abcd.qcow2".into(),
        network: name("default"),
        mac: "52:54:00:12:34:56".into(),
        tap: "fx0123abcd".into(),
        console_log: "/var/lib/fluid-agent/console/SBX-0123abcd.log".into(),
        ssh_user_ca_keys: vec![
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl fluid-ca".into(),
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBm8nRk0a1HE3b3Mbu2MhY5XgTbn6n3D3cXnGp4sA2nh <old&ca>".into(),
        ],
        link_down: false,
    }
}

/// The rendered XML read back as a typed tree (what libvirt is given), not as text.
#[derive(Debug, Deserialize)]
struct Back {
    #[serde(rename = "@type")]
    kind: String,
    name: String,
    memory: BackMemory,
    vcpu: u32,
    os: BackOs,
    cpu: BackMode,
    on_poweroff: String,
    on_crash: String,
    devices: BackDevices,
}

#[derive(Debug, Deserialize)]
struct BackMemory {
    #[serde(rename = "@unit")]
    unit: String,
    #[serde(rename = "$text")]
    value: u64,
}

#[derive(Debug, Deserialize)]
struct BackOs {
    kernel: Option<String>,
    initrd: Option<String>,
    cmdline: Option<String>,
    boot: Option<BackDev>,
    smbios: BackMode,
}

#[derive(Debug, Deserialize)]
struct BackMode {
    #[serde(rename = "@mode")]
    mode: String,
}

#[derive(Debug, Deserialize)]
struct BackDev {
    #[serde(rename = "@dev")]
    dev: String,
}

#[derive(Debug, Deserialize)]
struct BackDevices {
    #[serde(default)]
    disk: Vec<BackDisk>,
    #[serde(default)]
    interface: Vec<BackInterface>,
    #[serde(default)]
    rng: Vec<BackRng>,
    serial: BackSerial,
}

#[derive(Debug, Deserialize)]
struct BackDisk {
    #[serde(rename = "@type")]
    kind: String,
    #[serde(rename = "@device")]
    device: String,
    driver: BackDriver,
    source: BackFile,
    target: BackTarget,
    readonly: Option<()>,
    shareable: Option<()>,
    #[serde(rename = "backingStore")]
    backing_store: Option<()>,
}

#[derive(Debug, Deserialize)]
struct BackDriver {
    #[serde(rename = "@type")]
    kind: String,
}

#[derive(Debug, Deserialize)]
struct BackFile {
    #[serde(rename = "@file")]
    file: String,
}

#[derive(Debug, Deserialize)]
struct BackTarget {
    #[serde(rename = "@dev")]
    dev: String,
    #[serde(rename = "@bus")]
    bus: String,
}

#[derive(Debug, Deserialize)]
struct BackInterface {
    #[serde(rename = "@type")]
    kind: String,
    mac: BackMac,
    source: BackNetwork,
    target: BackDevOnly,
    model: BackModel,
}

#[derive(Debug, Deserialize)]
struct BackMac {
    #[serde(rename = "@address")]
    address: String,
}

#[derive(Debug, Deserialize)]
struct BackNetwork {
    #[serde(rename = "@network")]
    network: String,
}

#[derive(Debug, Deserialize)]
struct BackDevOnly {
    #[serde(rename = "@dev")]
    dev: String,
}

#[derive(Debug, Deserialize)]
struct BackModel {
    #[serde(rename = "@type")]
    kind: String,
}

#[derive(Debug, Deserialize)]
struct BackRng {
    #[serde(rename = "@model")]
    model: String,
    backend: BackRngBackend,
}

#[derive(Debug, Deserialize)]
struct BackRngBackend {
    #[serde(rename = "@model")]
    model: String,
    #[serde(rename = "$text")]
    device: String,
}

#[derive(Debug, Deserialize)]
struct BackSerial {
    log: BackFile,
}

/// The element names directly under `<devices>`, in order (read with quick-xml's
/// reader: whatever kind of device it is, even one the typed tree does not know).
fn device_kinds(xml: &str) -> Vec<String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut path: Vec<String> = Vec::new();
    let mut kinds = Vec::new();
    loop {
        let (name, opens) = match reader.read_event().expect("well-formed XML") {
            Event::Start(e) => (
                String::from_utf8_lossy(e.name().as_ref()).into_owned(),
                true,
            ),
            Event::Empty(e) => (
                String::from_utf8_lossy(e.name().as_ref()).into_owned(),
                false,
            ),
            Event::End(_) => {
                path.pop();
                continue;
            }
            Event::Eof => break,
            _ => continue,
        };
        if path == ["domain", "devices"] {
            kinds.push(name.clone());
        }
        if opens {
            path.push(name);
        }
    }
    kinds
}

/// Devices that hand the guest something of the host's (PCI/USB devices, directories,
/// USB redirection, smartcards, shared memory) or listen on the host (a display).
const HOST_DEVICES: [&str; 6] = [
    "hostdev",
    "filesystem",
    "redirdev",
    "smartcard",
    "shmem",
    "graphics",
];

/// What the domain of `s` must be, whatever the snapshot shows.
fn assert_sandbox_domain(xml: &str, s: &DomainSpec) {
    let d: Back = quick_xml::de::from_str(xml).expect("the XML reads back");
    // The hypervisor the config asked for (TCG's "qemu" or "kvm").
    let kind = match s.virt_type {
        VirtType::Kvm => "kvm",
        VirtType::Qemu => "qemu",
    };
    assert_eq!(d.kind, kind);
    assert_eq!(d.name, s.name.as_str());
    assert_eq!(
        (d.memory.unit.as_str(), d.memory.value),
        ("MiB", s.memory_mb)
    );
    assert_eq!(d.vcpu, s.cpus);
    // TCG cannot pass the host's CPU through; KVM does.
    match s.virt_type {
        VirtType::Kvm => assert_eq!(d.cpu.mode, "host-passthrough"),
        VirtType::Qemu => assert_ne!(d.cpu.mode, "host-passthrough"),
    }
    // Nothing of the host's goes in: one disk, one NIC, no passthrough device.
    let kinds = device_kinds(xml);
    for k in HOST_DEVICES {
        assert!(!kinds.iter().any(|x| x == k), "a {k} device: {kinds:?}");
    }
    assert_eq!(
        kinds.iter().filter(|k| *k == "disk").count(),
        1,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| *k == "interface").count(),
        1,
        "{kinds:?}"
    );
    // The disk is the sandbox's own overlay, as qcow2 (so its backing image is only
    // read through it), writable by this domain alone.
    let disk = &d.devices.disk[0];
    assert_eq!((disk.kind.as_str(), disk.device.as_str()), ("file", "disk"));
    assert_eq!(disk.driver.kind, "qcow2");
    assert_eq!(std::path::Path::new(&disk.source.file), s.overlay);
    assert_eq!(
        (disk.target.dev.as_str(), disk.target.bus.as_str()),
        ("vda", "virtio")
    );
    assert!(
        disk.readonly.is_none() && disk.shareable.is_none(),
        "{disk:?}"
    );
    assert!(
        disk.backing_store.is_none(),
        "the backing chain is the overlay's own"
    );
    // The NIC: on the sandbox network, with the MAC the firewall and the static lease
    // know, on the tap the bridge rules are keyed on.
    let nic = &d.devices.interface[0];
    assert_eq!(nic.kind, "network");
    assert_eq!(nic.source.network, s.network.as_str());
    assert_eq!(nic.mac.address, s.mac);
    assert_eq!(nic.target.dev, s.tap);
    assert_eq!(nic.model.kind, "virtio");
    // Boot: the image's kernel, or its disk; the identity reaches the guest by SMBIOS.
    match &s.boot {
        Boot::Kernel {
            kernel,
            initrd,
            cmdline,
        } => {
            assert_eq!(
                d.os.kernel.as_deref().map(std::path::Path::new),
                Some(kernel.as_path())
            );
            assert_eq!(
                d.os.initrd.as_deref().map(std::path::Path::new),
                initrd.as_deref()
            );
            assert_eq!(&d.os.cmdline, cmdline);
            assert!(d.os.boot.is_none(), "{:?}", d.os.boot);
        }
        Boot::Disk => {
            assert!(d.os.kernel.is_none() && d.os.initrd.is_none());
            assert_eq!(d.os.boot.as_ref().map(|b| b.dev.as_str()), Some("hd"));
        }
    }
    assert_eq!(d.os.smbios.mode, "sysinfo");
    // Entropy from the host's non-blocking pool; the console to a file of the agent's.
    assert_eq!(d.devices.rng.len(), 1, "{:?}", d.devices.rng);
    let rng = &d.devices.rng[0];
    assert_eq!(
        (
            rng.model.as_str(),
            rng.backend.model.as_str(),
            rng.backend.device.as_str()
        ),
        ("virtio", "random", "/dev/urandom")
    );
    assert_eq!(
        std::path::Path::new(&d.devices.serial.log.file),
        s.console_log
    );
    // A guest that powers off or crashes ends (the agent sees it stopped).
    assert_eq!(
        (d.on_poweroff.as_str(), d.on_crash.as_str()),
        ("destroy", "destroy")
    );
}

#[test]
fn qemu_direct_kernel_boot() {
    let boot = Boot::Kernel {
        kernel: "/images/d/vmlinuz".into(),
        initrd: Some("/images/d/initrd.img".into()),
        cmdline: Some("root=/dev/vda rw console=ttyS0 net.ifnames=0".into()),
    };
    let s = spec(VirtType::Qemu, boot);
    let xml = render(&s).expect("xml");
    insta::assert_snapshot!(xml);
    assert_sandbox_domain(&xml, &s);
}

#[test]
fn kvm_disk_boot() {
    let s = spec(VirtType::Kvm, Boot::Disk);
    let xml = render(&s).expect("xml");
    insta::assert_snapshot!(xml);
    assert_sandbox_domain(&xml, &s);
}

#[test]
fn odd_values_are_escaped() {
    let mut s = spec(
        VirtType::Qemu,
        Boot::Kernel {
            kernel: "/img/<k>&'\".bin".into(),
            initrd: None,
            cmdline: Some("a=\"1\" b='2' c=<3> & d".into()),
        },
    );
    s.overlay = "/ov/a'b\"c<d>&e.qcow2".into();
    let xml = render(&s).expect("xml");
    assert!(!xml.contains("<k>"), "{xml}");
    assert!(xml.contains("&lt;k&gt;&amp;"), "{xml}");
    assert!(xml.contains("c=&lt;3&gt; &amp; d"), "{xml}");
    // Whatever was escaped must read back as the same value.
    #[derive(Deserialize)]
    struct Back {
        os: BackOs,
    }
    #[derive(Deserialize)]
    struct BackOs {
        kernel: String,
        cmdline: String,
    }
    let back: Back = quick_xml::de::from_str(&xml).expect("parse back");
    assert_eq!(back.os.kernel, "/img/<k>&'\".bin");
    assert_eq!(back.os.cmdline, "a=\"1\" b='2' c=<3> & d");
    let disk = parse_source_disk(&xml).expect("disk");
    assert_eq!(disk.path, PathBuf::from("/ov/a'b\"c<d>&e.qcow2"));
}

#[test]
fn rendered_xml_reads_back() {
    let boot = Boot::Kernel {
        kernel: "/k".into(),
        initrd: None,
        cmdline: None,
    };
    let xml = render(&spec(VirtType::Qemu, boot.clone())).expect("xml");
    let disk = parse_source_disk(&xml).expect("disk");
    assert_eq!(disk.format, "qcow2");
    assert_eq!(disk.boot, boot);
}

#[test]
fn identity_goes_into_oem_strings() {
    let mut s = spec(VirtType::Kvm, Boot::Disk);
    let xml = render(&s).expect("xml");
    #[derive(Deserialize)]
    struct Back {
        sysinfo: BackSysinfo,
    }
    #[derive(Deserialize)]
    struct BackSysinfo {
        #[serde(rename = "@type")]
        kind: String,
        #[serde(rename = "oemStrings")]
        oem: BackOem,
    }
    #[derive(Deserialize)]
    struct BackOem {
        entry: Vec<String>,
    }
    let back: Back = quick_xml::de::from_str(&xml).expect("parse back");
    assert_eq!(back.sysinfo.kind, "smbios");
    assert_eq!(back.sysinfo.oem.entry, oem_strings(&s));
    assert_eq!(back.sysinfo.oem.entry[0], "fluid:hostname=web-1");
    // The sandbox id: what the guest's sshd binds certificates to.
    assert_eq!(back.sysinfo.oem.entry[1], "fluid:sandbox_id=SBX-0123abcd");
    assert_eq!(
        back.sysinfo
            .oem
            .entry
            .iter()
            .filter(|e| e.starts_with("fluid:sandbox_id="))
            .count(),
        1
    );
    assert!(back.sysinfo.oem.entry[3].ends_with("<old&ca>"));
    assert!(xml.contains("<smbios mode=\"sysinfo\"/>"), "{xml}");
    // Without CA keys the hostname and id are still given.
    s.ssh_user_ca_keys.clear();
    assert_eq!(
        oem_strings(&s),
        vec![
            "fluid:hostname=web-1".to_owned(),
            "fluid:sandbox_id=SBX-0123abcd".to_owned()
        ]
    );
    // Another sandbox (a fork) names its own id, not its source's.
    s.id = SandboxId::parse("id", "SBX-fork0001").expect("id");
    assert!(oem_strings(&s).contains(&"fluid:sandbox_id=SBX-fork0001".to_owned()));
    assert!(!render(&s).expect("xml").contains("SBX-0123abcd<"));
}

#[test]
fn metadata_as_libvirt_returns_it() {
    let xml = r#"<fluid:sandbox xmlns:fluid="https://fluid.dev/xmlns/sandbox/1" id="SBX-0123abcd" agent="kvm-1" image="debian-12"/>"#;
    let m = parse_meta(xml).expect("meta");
    assert_eq!(m.id, "SBX-0123abcd");
    assert_eq!(m.agent, "kvm-1");
    assert_eq!(m.image, "debian-12");
    assert_eq!(parse_meta("<other/>"), None);
    assert_eq!(parse_meta("not xml"), None);
}

#[test]
fn source_disk_skips_cdroms() {
    let xml = r#"<domain type='kvm'><name>src</name><os><type>hvm</type><boot dev='hd'/></os>
<devices>
  <disk type='file' device='cdrom'><source file='/iso/x.iso'/></disk>
  <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='/vm/src.img'/><target dev='vda'/></disk>
  <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/vm/second.qcow2'/></disk>
</devices></domain>"#;
    let d = parse_source_disk(xml).expect("disk");
    assert_eq!(d.path, PathBuf::from("/vm/src.img"));
    assert_eq!(d.format, "raw");
    assert_eq!(d.boot, Boot::Disk);
}

#[test]
fn a_template_s_nic_starts_unplugged_and_a_live_update_plugs_it_in() {
    let mut s = spec(VirtType::Qemu, Boot::Disk);
    assert!(!render(&s).expect("render").contains("<link"));
    s.link_down = true;
    let xml = render(&s).expect("render");
    assert!(xml.contains("<link state=\"down\"/>"), "{xml}");
    let up = interface_link_up(&s).expect("interface");
    assert_eq!(
        up,
        "<interface type=\"network\"><mac address=\"52:54:00:12:34:56\"/><source network=\"default\"/>\
         <target dev=\"fx0123abcd\"/><model type=\"virtio\"/><link state=\"up\"/></interface>"
    );
}
