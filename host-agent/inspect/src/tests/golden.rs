//! The real golden image: a manifest of every file in it and a diff with itself. Needs
//! a built golden image (`FLUID_GOLDEN_IMAGE_DIR` or `FLUID_TEST_IMAGE_DIR`, else the
//! newest under `/var/cache/fluid/images`): without one it skips on a developer's
//! machine and fails under CI (`fluid_prereq`).
//! `cargo test -p fluid-inspect golden -- --nocapture`

use std::path::PathBuf;
use std::time::Instant;

use crate::{DiffOptions, DiskImage, diff, export_raw, manifest};

fn golden_disk() -> Option<PathBuf> {
    for var in ["FLUID_GOLDEN_IMAGE_DIR", "FLUID_TEST_IMAGE_DIR"] {
        if let Some(dir) = std::env::var_os(var) {
            return Some(PathBuf::from(dir).join("disk.qcow2")).filter(|p| p.exists());
        }
    }
    std::fs::read_dir("/var/cache/fluid/images")
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("debian-12-"))
        .map(|e| e.path().join("disk.qcow2"))
        .filter(|p| p.exists())
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
}

#[tokio::test]
async fn golden_image_manifest() {
    let qcow2 = golden_disk();
    if !fluid_prereq::available("golden-image", qcow2.is_some(), "no golden image built") {
        return;
    }
    let Some(qcow2) = qcow2 else { return };
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let raw = dir.path().join("golden.raw");
    let t = Instant::now();
    export_raw(&qcow2, None, &raw).await.unwrap();
    let export_s = t.elapsed().as_secs_f64();
    tokio::task::spawn_blocking(move || {
        let img = DiskImage::open(&raw).unwrap();
        let opts = DiffOptions::default();
        let t = Instant::now();
        let m = manifest(&img, &opts).unwrap();
        let secs = t.elapsed().as_secs_f64();
        let d = diff((&img, &m), (&img, &m), &opts).unwrap();
        eprintln!(
            "golden {}: export {export_s:.2} s; manifest {} entries, {:.0} MB hashed in {secs:.2} s; \
             {} packages, {} units, {} owned paths",
            qcow2.display(),
            m.entries.len(),
            m.bytes_hashed as f64 / 1e6,
            m.dpkg.packages.len(),
            m.services.len(),
            m.dpkg.owners.len()
        );
        assert!(m.entries.len() > 5000 && m.dpkg.packages.len() > 100);
        assert!(m.services.get("ssh.service").is_some_and(|s| s.enablement == crate::Enablement::Enabled));
        assert!(d.files.is_empty() && d.packages.is_empty() && d.services.is_empty());
    })
    .await
    .unwrap();
}
