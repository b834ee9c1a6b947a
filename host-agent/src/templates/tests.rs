//! Template keys, lookups and the build against the fake hypervisor.

use std::path::Path;

use fluid_proto::model::Name;

use super::build::BuildContext;
use super::*;
use crate::config::TemplatesConfig;
use crate::hypervisor::simulated::SimulatedHypervisor;

fn shape() -> Shape {
    Shape {
        image: "debian-12".into(),
        cpus: 1,
        memory_mb: 512,
    }
}

fn image(dir: &Path) -> ResolvedImage {
    let disk = dir.join("disk.qcow2");
    std::fs::write(&disk, b"not really qcow2").expect("disk");
    ResolvedImage {
        backing: disk,
        backing_format: "raw".into(),
        boot: Boot::Disk,
    }
}

fn templates(dir: &Path) -> Templates {
    Templates::new(
        TemplatesConfig {
            build_timeout_secs: 10,
            ..TemplatesConfig::default()
        },
        dir,
    )
}

/// The agent's and the network's names.
fn names() -> (Name, Name) {
    (
        Name::parse("agent", "h1").expect("name"),
        Name::parse("network", "default").expect("name"),
    )
}

fn context<'a>(
    hv: &'a SimulatedHypervisor,
    names: &'a (Name, Name),
) -> BuildContext<'a, SimulatedHypervisor> {
    BuildContext {
        hv,
        agent: &names.0,
        network: &names.1,
        virt_type: VirtType::Qemu,
    }
}

#[tokio::test]
async fn the_key_changes_with_the_image_the_shape_and_the_virt_type() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = templates(dir.path());
    let img = image(dir.path());
    let k = t.key(&shape(), &img, VirtType::Qemu).await;
    assert_eq!(k, t.key(&shape(), &img, VirtType::Qemu).await, "stable");
    assert_ne!(k, t.key(&shape(), &img, VirtType::Kvm).await);
    let bigger = Shape {
        memory_mb: 1024,
        ..shape()
    };
    assert_ne!(k, t.key(&bigger, &img, VirtType::Qemu).await);
    // A rebuilt image (new length, new mtime) is another key.
    std::fs::write(&img.backing, b"a rebuilt golden image").expect("rewrite");
    assert_ne!(k, t.key(&shape(), &img, VirtType::Qemu).await);
}

#[tokio::test]
async fn a_build_saves_the_template_and_only_a_whole_one_with_the_current_key_is_ready() {
    if std::process::Command::new("qemu-img")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("qemu-img is required (scripts/install-deps.sh)");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let t = templates(dir.path());
    let img = image(dir.path());
    let hv = SimulatedHypervisor::new("h1");
    let names = names();
    let cx = context(&hv, &names);
    let key = t.key(&shape(), &img, VirtType::Qemu).await;
    assert!(t.ready(&shape(), &key).await.is_none());
    let built = t.build(&cx, &shape(), &img, &key).await.expect("build");
    assert_eq!(t.ready(&shape(), &key).await, Some(built.clone()));
    assert!(save_image::read_xml(&built.state()).is_ok());
    // The template's domain was transient and is gone; its guest was asked once.
    assert!(hv.lock().domains.is_empty());
    let execs = hv.lock().guest_execs.clone();
    assert_eq!(execs.len(), 1);
    assert!(execs[0].1[2].contains("ssh.service"));
    // Another key (a changed image) is not ready; a folder without its state is not.
    assert!(t.ready(&shape(), "0000000000000000").await.is_none());
    std::fs::remove_file(built.state()).expect("rm");
    assert!(t.ready(&shape(), &key).await.is_none());
}

#[tokio::test]
async fn a_guest_that_never_gets_ready_leaves_no_domain_and_no_folder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut t = templates(dir.path());
    t.config.build_timeout_secs = 0;
    let img = image(dir.path());
    let hv = SimulatedHypervisor::new("h1");
    hv.lock().guest_exec_exit = 75;
    let names = names();
    let cx = context(&hv, &names);
    let key = t.key(&shape(), &img, VirtType::Qemu).await;
    let err = t
        .build(&cx, &shape(), &img, &key)
        .await
        .expect_err("not ready");
    assert!(err.to_string().contains("not ready"), "{err}");
    assert!(hv.lock().domains.is_empty(), "the transient domain is gone");
    let left: Vec<_> = std::fs::read_dir(t.dir())
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
