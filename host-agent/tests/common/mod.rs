//! Setup shared by the real-VM tests: what they need from the machine, the golden
//! image, the agent's configuration, and user certificates from a test CA.
//!
//! These tests run in CI (`scripts/test.sh` runs the workspace's tests inside libvirtd's
//! network namespace). Where root, libvirtd's namespace or a golden image is missing
//! they skip with a `FLUID-SKIP` line on a developer's machine and fail under CI
//! (`fluid_prereq`).
#![allow(dead_code)] // each test binary uses its own part of this module

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fluid_agent::error::ServiceError;
use fluid_agent::hypervisor::libvirt::Libvirt;
use fluid_agent::{AgentConfig, Sandboxes};
use fluid_prereq::shared::Teardown;
use fluid_proto::model::{CreateSandbox, Exec, ExecEvent, Name, SandboxId};
use fluid_proto::pb;
use russh::keys::ssh_key::certificate::{Builder, CertType};
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{PrivateKey, PublicKey};

/// A real agent (libvirt, its own state dir and nftables tables) with one booting
/// sandbox that trusts a fresh test CA. Names are unique per run (`agentdev-<tag>-<hex>`),
/// so runs of other engineers on the same libvirtd do not collide.
pub struct RealSandbox {
    pub s: Arc<Sandboxes<Libvirt>>,
    pub id: SandboxId,
    /// The domain's name, which the guest also takes as its hostname.
    pub name: String,
    pub ca: PrivateKey,
    pub created: Instant,
    state_dir: PathBuf,
    /// The agent's nftables tables (`bridge` and `inet`).
    table: String,
}

/// A fresh `(sandbox id, name stem)` for `tag` (lowercase letters): `SBX-<hex><tag>` and
/// `agentdev-<tag>-<hex>`. The hex comes first in the id: the tap is named after its
/// first characters.
pub fn unique(tag: &str) -> (SandboxId, String) {
    let hex = format!("{:08x}", rand::random::<u32>());
    let id = SandboxId::parse("id", &format!("SBX-{hex}{tag}")).expect("id");
    (id, format!("agentdev-{tag}-{hex}"))
}

impl RealSandbox {
    /// Opens an agent `<name>-host` (state in `/var/tmp/<name>`) and creates and starts
    /// a sandbox named `agentdev-<tag>-<hex>`.
    pub async fn start(tag: &str) -> Self {
        let dir = image_dir().expect("a golden image (set FLUID_TEST_IMAGE_DIR)");
        println!("image: {}", dir.display());
        let (id, name) = unique(tag);
        let state_dir = PathBuf::from(format!("/var/tmp/{name}"));
        let toml = agent_toml(&format!("{name}-host"), &state_dir, &dir);
        let _ = tracing_subscriber::fmt()
            .with_env_filter("fluid_agent=info")
            .try_init();
        let config = AgentConfig::from_toml(&toml).expect("config");
        let table = config.network.nft_table.clone();
        let s = fluid_agent::open(config).await.expect("open the agent");
        println!("agent key: {}", s.ssh_public_key());
        let ca = PrivateKey::from(Ed25519Keypair::from_seed(&rand::random()));
        let ca_line = ca.public_key().to_openssh().expect("CA line");
        let created = Instant::now();
        s.create(create_request(&id, &name, ca_line))
            .await
            .expect("create");
        println!("created {id} ({name})");
        Self {
            s,
            id,
            name,
            ca,
            created,
            state_dir,
            table,
        }
    }
}

impl Teardown for RealSandbox {
    /// Destroys the sandbox (the agent releases its lease and rules), then removes the
    /// agent's state and its nftables tables, which outlive an agent by design.
    async fn teardown(self) {
        let t = Instant::now();
        match tokio::time::timeout(Duration::from_secs(120), self.s.destroy(&self.id)).await {
            Ok(Ok(true)) => println!(
                "teardown: destroyed {} in {:.2} s",
                self.id,
                t.elapsed().as_secs_f64()
            ),
            other => eprintln!("teardown: destroying {}: {other:?}", self.id),
        }
        drop(self.s);
        remove_agent_leftovers(&self.table, &self.state_dir);
    }
}

/// Deletes an agent's nftables tables and its state directory.
pub fn remove_agent_leftovers(table: &str, state_dir: &Path) {
    for family in ["bridge", "inet"] {
        let _ = Command::new("nft")
            .args(["delete", "table", family, table])
            .output();
    }
    let _ = std::fs::remove_dir_all(state_dir);
}

/// Whether the real-VM tests can run here: root, inside the network namespace that
/// libvirtd runs in (leases are released on its bridge), and a golden image.
pub fn real_host() -> bool {
    let missing = missing_for_real_vms();
    fluid_prereq::available(
        "libvirt",
        missing.is_none(),
        missing.as_deref().unwrap_or(""),
    )
}

fn missing_for_real_vms() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("real-VM tests need root".into());
    }
    let netns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/net")).ok();
    let libvirtd = std::fs::read_dir("/proc")
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "libvirtd")
        });
    let Some(libvirtd) = libvirtd else {
        return Some("libvirtd is not running".into());
    };
    if netns(&libvirtd) != netns("self") {
        return Some(
            "not in libvirtd's network namespace (run under `ip netns exec <ns>`, as scripts/test.sh does)"
                .into(),
        );
    }
    match image_dir() {
        None => {
            return Some(
                "no golden image (set FLUID_TEST_IMAGE_DIR, or run scripts/build-golden-image.sh)"
                    .into(),
            );
        }
        Some(d) if !d.join("disk.qcow2").exists() => {
            return Some(format!(
                "no golden image in {} (no disk.qcow2)",
                d.display()
            ));
        }
        Some(_) => {}
    }
    None
}

/// The golden image: `FLUID_TEST_IMAGE_DIR`, else the newest `debian-12-*` with a disk
/// under `/var/cache/fluid/images-dev` or `/var/cache/fluid/images`.
pub fn image_dir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("FLUID_TEST_IMAGE_DIR") {
        return Some(dir.into());
    }
    ["/var/cache/fluid/images-dev", "/var/cache/fluid/images"]
        .iter()
        .filter_map(|root| std::fs::read_dir(root).ok())
        .flat_map(|dir| dir.filter_map(Result::ok).map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("debian-12-"))
                && p.join("disk.qcow2").exists()
        })
        .max_by_key(|p| {
            std::fs::metadata(p.join("disk.qcow2"))
                .and_then(|m| m.modified())
                .ok()
        })
}

/// Where the tests' agents keep their memory templates: shared by every test (and
/// every run, while the golden image and QEMU stay the same), as an operator's hosts
/// keep theirs, so that only the first create of a run pays for the template's boot.
pub const SHARED_TEMPLATES: &str = "/var/cache/fluid/templates";

/// The agent's configuration for a test (TCG, the golden image as `debian-12`), with
/// its memory templates in [`SHARED_TEMPLATES`].
pub fn agent_toml(host_name: &str, state_dir: &Path, image_dir: &Path) -> String {
    agent_toml_with(
        host_name,
        state_dir,
        image_dir,
        &format!("[templates]\ndir = \"{SHARED_TEMPLATES}\"\n"),
    )
}

/// [`agent_toml`] with `templates` as its `[templates]` table.
pub fn agent_toml_with(
    host_name: &str,
    state_dir: &Path,
    image_dir: &Path,
    templates: &str,
) -> String {
    format!(
        r#"
host_name = "{host_name}"
virt_type = "qemu"
state_dir = "{state}"
[tls]
ca_cert = "/unused"
cert = "/unused"
key = "/unused"
[[images]]
name = "debian-12"
path = "{d}/disk.qcow2"
kernel = "{d}/vmlinuz"
initrd = "{d}/initrd.img"
cmdline = "root=/dev/vda rw console=ttyS0 net.ifnames=0"
{templates}
"#,
        state = state_dir.display(),
        d = image_dir.display()
    )
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// A 5-minute user certificate for `subject` (OpenSSH line) that opens `sandbox` as
/// root (principal `sbx:<id>:root`, the only one its sshd accepts), signed by `ca`;
/// with `permit_pty` it may have a terminal (people's), else no extensions (the agent's
/// exec certificates).
pub fn certificate(
    ca: &PrivateKey,
    subject: &str,
    sandbox: &SandboxId,
    permit_pty: bool,
) -> String {
    let subject = PublicKey::from_openssh(subject).expect("agent key");
    let now = unix_now();
    let mut b = Builder::new(
        rand::random::<[u8; 32]>().to_vec(),
        subject.key_data().clone(),
        now - 60,
        now + 300,
    )
    .expect("builder");
    b.cert_type(CertType::User).expect("type");
    b.valid_principal(format!("sbx:{sandbox}:root"))
        .expect("principal");
    b.key_id("fluid-agent test").expect("key id");
    if permit_pty {
        b.extension("permit-pty", "").expect("extension");
    }
    b.sign(ca).expect("sign").to_openssh().expect("openssh")
}

/// A started 1-vCPU, 512 MiB `debian-12` sandbox that trusts the CA `ca_line`.
pub fn create_request(id: &SandboxId, name: &str, ca_line: String) -> CreateSandbox {
    CreateSandbox {
        id: id.clone(),
        name: Name::parse("name", name).expect("name"),
        image: Name::parse("image", "debian-12").expect("image"),
        cpus: 1,
        memory_mb: 512,
        start: true,
        ssh_user_ca_keys: vec![ca_line],
        egress: Default::default(),
        from_snapshot: None,
        fork_of_running: None,
    }
}

/// Runs `command` in the sandbox with the exec certificate `cert`; its stdout and exit
/// code.
pub async fn run(
    s: &Sandboxes<Libvirt>,
    id: &SandboxId,
    cert: &str,
    command: &str,
) -> Result<(String, i32), ServiceError> {
    let exec = Exec::try_from(pb::ExecRequest {
        sandbox_id: id.to_string(),
        command_id: format!("CMD-{:016x}", rand::random::<u64>()),
        command: command.into(),
        output_cap_bytes: 64 * 1024,
        ssh_certificate: cert.into(),
        timeout_seconds: 300,
        ..Default::default()
    })
    .expect("valid exec");
    let mut rx = s.exec(exec).await?;
    let (mut out, mut code) = (Vec::new(), -2);
    while let Some(e) = rx.recv().await {
        match e {
            ExecEvent::Stdout(b) => out.extend_from_slice(&b),
            ExecEvent::Exit(x) => code = x.exit_code,
            ExecEvent::Stderr(_) | ExecEvent::Started { .. } => {}
        }
    }
    Ok((String::from_utf8_lossy(&out).into_owned(), code))
}
