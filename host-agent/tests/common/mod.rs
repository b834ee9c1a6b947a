//! Setup shared by the real-VM tests: the golden image, the agent's configuration,
//! and user certificates from a test CA.

use std::path::{Path, PathBuf};

use russh::keys::ssh_key::certificate::{Builder, CertType};
use russh::keys::{PrivateKey, PublicKey};

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

/// The agent's configuration for a test (TCG, the golden image as `debian-12`).
pub fn agent_toml(host_name: &str, state_dir: &Path, image_dir: &Path) -> String {
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

/// A 5-minute user certificate for `subject` (OpenSSH line), principal root, signed by
/// `ca`; with `permit_pty` it may have a terminal (people's), else no extensions (the
/// agent's exec certificates).
pub fn certificate(ca: &PrivateKey, subject: &str, permit_pty: bool) -> String {
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
    b.valid_principal("root").expect("principal");
    b.key_id("fluid-agent test").expect("key id");
    if permit_pty {
        b.extension("permit-pty", "").expect("extension");
    }
    b.sign(ca).expect("sign").to_openssh().expect("openssh")
}
