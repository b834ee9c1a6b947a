//! The real golden image (ignored: needs `/var/cache/fluid/images/debian-12-*/disk.qcow2`).
//! `cargo test -p fluid-inspect golden -- --ignored --nocapture`

use std::time::Instant;

use crate::{DiffOptions, DiskImage, diff, export_raw, manifest};

#[tokio::test]
#[ignore = "needs the golden image under /var/cache/fluid/images"]
async fn golden_image_manifest() {
    let qcow2 = std::fs::read_dir("/var/cache/fluid/images")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("debian-12-"))
        .map(|e| e.path().join("disk.qcow2"))
        .find(|p| p.exists())
        .expect("a golden image");
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
