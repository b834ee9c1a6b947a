//! Builds the manifest of a disk image and prints what it found and how long it took.
//!
//! `cargo run -p fluid-inspect --release --example inspect -- <image.qcow2|image.raw> [snapshot]`
//! A qcow2 is first exported to a sparse raw file under /var/tmp (removed afterwards).
//! With `INSPECT_DUMP=<file>`, writes one line per entry (path, kind, mode, uid, gid,
//! sha256, link target) for cross-checking against a mounted copy.

use std::path::{Path, PathBuf};
use std::time::Instant;

use fluid_inspect::{DiffOptions, DiskImage, export_raw, manifest};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut args = std::env::args().skip(1);
    let image = PathBuf::from(args.next().ok_or("usage: inspect <image> [snapshot]")?);
    let snapshot = args.next();
    let mut exported = None;
    let raw = if image.extension().is_some_and(|e| e == "qcow2") {
        let dest = PathBuf::from(format!("/var/tmp/fluid-inspect-{}.raw", std::process::id()));
        let t = Instant::now();
        export_raw(&image, snapshot.as_deref(), &dest).await?;
        println!("export_raw: {:.2} s", t.elapsed().as_secs_f64());
        exported = Some(dest.clone());
        dest
    } else {
        image
    };
    let result = tokio::task::spawn_blocking(move || run(&raw)).await?;
    if let Some(dest) = exported {
        std::fs::remove_file(dest)?;
    }
    result
}

fn run(raw: &Path) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let t = Instant::now();
    let img = DiskImage::open(raw)?;
    println!(
        "open: {:.3} s, partition {:?}",
        t.elapsed().as_secs_f64(),
        img.partition()
    );
    let t = Instant::now();
    let m = manifest(&img, &DiffOptions::default())?;
    let secs = t.elapsed().as_secs_f64();
    let regular = m
        .entries
        .values()
        .filter(|e| e.kind == fluid_inspect::Kind::Regular)
        .count();
    println!(
        "manifest: {} entries ({regular} regular files), {:.1} MB hashed in {secs:.2} s ({:.0} MB/s)",
        m.entries.len(),
        m.bytes_hashed as f64 / 1e6,
        m.bytes_hashed as f64 / 1e6 / secs
    );
    println!(
        "facts: {} users, {} groups, {} packages ({} auto), {} conffiles, {} owned paths, {} units",
        m.accounts.users.len(),
        m.accounts.groups.len(),
        m.dpkg.packages.len(),
        m.dpkg
            .packages
            .values()
            .filter(|p| p.auto_installed)
            .count(),
        m.dpkg.conffiles.len(),
        m.dpkg.owners.len(),
        m.services.len()
    );
    let all_units = std::env::var_os("INSPECT_ALL_UNITS").is_some();
    for (name, s) in m
        .services
        .iter()
        .filter(|(_, s)| all_units || s.enablement != fluid_inspect::Enablement::Static)
    {
        println!("  {name}: {} ({})", s.enablement.as_str(), s.unit_path);
    }
    if let Ok(dump) = std::env::var("INSPECT_DUMP") {
        use std::fmt::Write as _;
        let mut out = String::new();
        for (path, e) in &m.entries {
            let _ = writeln!(
                out,
                "{path}\t{:?}\t{:o}\t{}\t{}\t{}\t{}",
                e.kind,
                e.mode,
                e.uid,
                e.gid,
                e.sha256_hex(),
                e.link_target.as_deref().unwrap_or("")
            );
        }
        std::fs::write(dump, out)?;
    }
    let t = Instant::now();
    let d = fluid_inspect::diff((&img, &m), (&img, &m), &DiffOptions::default())?;
    println!(
        "self-diff: {} file changes in {:.2} s",
        d.files.len(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
