//! Finding the root file system on partitioned disks, and surviving hostile images.

use std::os::unix::fs::FileExt;
use std::path::Path;

use super::fixture::{Noise, Tree, run};
use crate::{
    DiffOptions, DiskImage, InspectError, Limits, TableKind, diff, manifest, manifest_with_limits,
};

fn root_fs(dest: &Path) {
    Tree::new()
        .file("/etc/hostname", "root-fs\n", 0o644)
        .file("/usr/bin/x", "x", 0o755)
        .mkfs(dest, "16M");
}

fn data_fs(dest: &Path) {
    Tree::new()
        .file("/data/file", "data", 0o644)
        .mkfs(dest, "8M");
}

/// Copies the file system image `fs` into `disk` at byte `offset`.
fn place(disk: &Path, offset: u64, fs: &Path) {
    let bytes = std::fs::read(fs).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(disk).unwrap();
    f.write_all_at(&bytes, offset).unwrap();
}

/// Partition start offsets as parted reports them (`unit B print`, machine format).
fn starts(disk: &Path) -> Vec<u64> {
    run(
        "parted",
        &["-s", "-m", disk.to_str().unwrap(), "unit", "B", "print"],
    )
    .lines()
    .filter(|l| l.chars().next().is_some_and(|c| c.is_ascii_digit()))
    .map(|l| {
        l.split(':')
            .nth(1)
            .unwrap()
            .trim_end_matches('B')
            .parse()
            .unwrap()
    })
    .collect()
}

fn partitioned(label: &str, parts: &[&str]) -> (tempfile::TempDir, std::path::PathBuf, Vec<u64>) {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.raw");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(48 << 20)
        .unwrap();
    let mut args = vec!["-s", disk.to_str().unwrap(), "mklabel", label];
    for p in parts {
        args.extend(p.split(' '));
    }
    run("parted", &args);
    let starts = starts(&disk);
    (dir, disk, starts)
}

#[test]
fn mbr_disk_uses_the_ext4_partition_with_etc() {
    let (dir, disk, starts) = partitioned(
        "msdos",
        &[
            "mkpart primary ext4 1MiB 10MiB",
            "mkpart primary ext4 10MiB 100%",
        ],
    );
    let (root, data) = (dir.path().join("root.fs"), dir.path().join("data.fs"));
    root_fs(&root);
    data_fs(&data);
    place(&disk, starts[0], &data);
    place(&disk, starts[1], &root);
    let img = DiskImage::open(&disk).unwrap();
    let part = img.partition().unwrap();
    assert_eq!(
        (part.number, part.start, part.table),
        (2, 10 << 20, TableKind::Mbr)
    );
    let (meta, bytes) = crate::read_file(&img, "/etc/hostname", 0).unwrap();
    assert_eq!((bytes.as_slice(), meta.size), (&b"root-fs\n"[..], 8));
}

#[test]
fn mbr_logical_partition() {
    let (dir, disk, starts) = partitioned(
        "msdos",
        &["mkpart extended 1MiB 100%", "mkpart logical ext4 2MiB 100%"],
    );
    let root = dir.path().join("root.fs");
    root_fs(&root);
    let logical = *starts.last().unwrap();
    place(&disk, logical, &root);
    let img = DiskImage::open(&disk).unwrap();
    assert_eq!(
        img.partition().map(|p| (p.number, p.start)),
        Some((5, logical))
    );
}

#[test]
fn gpt_disk() {
    let (dir, disk, starts) = partitioned(
        "gpt",
        &["mkpart efi fat32 1MiB 5MiB", "mkpart root ext4 5MiB 100%"],
    );
    let root = dir.path().join("root.fs");
    root_fs(&root);
    place(&disk, starts[1], &root);
    let img = DiskImage::open(&disk).unwrap();
    let part = img.partition().unwrap();
    assert_eq!(
        (part.number, part.start, part.table),
        (2, 5 << 20, TableKind::Gpt)
    );
    manifest(&img, &DiffOptions::default()).unwrap();
}

#[test]
fn disks_without_a_root_file_system_are_unsupported() {
    let (dir, disk, starts) = partitioned("gpt", &["mkpart data ext4 1MiB 100%"]);
    let data = dir.path().join("data.fs");
    data_fs(&data);
    place(&disk, starts[0], &data);
    assert!(matches!(
        DiskImage::open(&disk),
        Err(InspectError::Unsupported(_))
    ));

    let zeros = dir.path().join("zeros.raw");
    std::fs::File::create(&zeros)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    assert!(matches!(
        DiskImage::open(&zeros),
        Err(InspectError::Unsupported(_))
    ));
    let empty = dir.path().join("empty.raw");
    std::fs::File::create(&empty).unwrap();
    assert!(matches!(
        DiskImage::open(&empty),
        Err(InspectError::Unsupported(_))
    ));
    assert!(matches!(
        DiskImage::open(&dir.path().join("missing")),
        Err(InspectError::Io(_))
    ));
}

fn good_image(dir: &Path, extra_mkfs_features: Option<&str>) -> Vec<u8> {
    let t = Tree::new();
    for i in 0..40 {
        t.file(
            &format!("/etc/d{}/f{i}", i % 7),
            format!("file {i}\n").repeat(i * 50),
            0o644,
        );
        t.link(&format!("/etc/l{i}"), &"x".repeat(i * 3 + 1));
    }
    let path = dir.join("good.raw");
    match extra_mkfs_features {
        None => t.mkfs(&path, "16M"),
        Some(features) => {
            run(
                "mkfs.ext4",
                &[
                    "-q",
                    "-F",
                    "-O",
                    features,
                    "-d",
                    t.root.path().to_str().unwrap(),
                    path.to_str().unwrap(),
                    "16M",
                ],
            );
        }
    }
    std::fs::read(path).unwrap()
}

/// Opens, builds a manifest and diffs; any outcome but a panic is fine.
fn survive(path: &Path) -> Result<usize, InspectError> {
    let img = DiskImage::open(path)?;
    let opts = DiffOptions::default();
    let m = manifest(&img, &opts)?;
    diff((&img, &m), (&img, &m), &opts)?;
    Ok(m.entries.len())
}

#[test]
fn corrupt_superblock_and_truncated_images_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = good_image(dir.path(), None);
    let path = dir.path().join("bad.raw");

    let mut bytes = good.clone();
    Noise(7).fill(&mut bytes[1024..2048]);
    std::fs::write(&path, &bytes).unwrap();
    assert!(DiskImage::open(&path).is_err());

    // Random superblock, magic kept: a checksum or geometry error.
    let mut bytes = good.clone();
    Noise(8).fill(&mut bytes[1024..2048]);
    bytes[1080..1082].copy_from_slice(&[0x53, 0xEF]);
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        DiskImage::open(&path),
        Err(InspectError::Corrupt(_) | InspectError::Unsupported(_))
    ));

    for len in [1100, 4096, 64 << 10, 1 << 20, 8 << 20] {
        std::fs::write(&path, &good[..len]).unwrap();
        assert!(survive(&path).is_err(), "truncated to {len}");
    }
}

/// Where mkfs puts metadata in a 16 MiB, 1 KiB-block image (`dumpe2fs`): the group
/// descriptors, the used part of the inode table, and the directory and extent blocks
/// written after it.
const METADATA: [std::ops::Range<usize>; 3] =
    [2048..4096, 134 * 1024..160 * 1024, 1000 * 1024..1400 * 1024];

/// Flips random bits or overwrites a random 1 KiB block in the metadata; nothing may
/// panic or hang. `FLUID_INSPECT_FUZZ_ROUNDS` runs more rounds than the default 150.
#[test]
fn random_corruption_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fuzz.raw");
    for (features, good) in [
        ("default", good_image(dir.path(), None)),
        (
            "no checksums",
            good_image(dir.path(), Some("^metadata_csum,^has_journal")),
        ),
    ] {
        let mut outcomes = (0, 0);
        let rounds = std::env::var("FLUID_INSPECT_FUZZ_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(150u64);
        for seed in 1..=rounds {
            let mut bytes = good.clone();
            let mut noise = Noise(seed * 7919);
            let pick = |noise: &mut Noise| {
                let r = &METADATA[(noise.next() % 3) as usize];
                r.start + (noise.next() as usize % (r.len() - 1024))
            };
            if seed % 5 == 0 {
                let at = pick(&mut noise);
                noise.fill(&mut bytes[at..at + 1024]);
            } else {
                for _ in 0..(1 + seed % 8) {
                    let at = pick(&mut noise);
                    bytes[at] ^= 1 << (noise.next() % 8);
                }
            }
            std::fs::write(&path, &bytes).unwrap();
            match survive(&path) {
                Ok(_) => outcomes.0 += 1,
                Err(_) => outcomes.1 += 1,
            }
        }
        eprintln!("{features}: {} read, {} refused", outcomes.0, outcomes.1);
    }
}

#[test]
fn crafted_inode_sizes_are_refused_not_allocated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crafted.raw");
    Tree::new()
        .file("/etc/hostname", "h\n", 0o644)
        .link("/etc/link", "/etc/hostname")
        .file("/sparse", "s", 0o644)
        .link("/var/lib/dpkg/status", "/tmp/evil")
        .link("/tmp/evil", "/etc/hostname")
        .mkfs(&path, "16M");
    let p = path.to_str().unwrap();
    // Symlinks claiming a 4 GiB target (ext4-view would allocate it), and a regular file
    // claiming 3 TiB.
    for (inode, size) in [
        ("/etc/link", "size_lo 0xF0000000"),
        ("/tmp/evil", "size_lo 0xF0000000"),
        ("/sparse", "size_hi 0x300"),
    ] {
        run("debugfs", &["-w", "-R", &format!("sif {inode} {size}"), p]);
    }
    let img = DiskImage::open(&path).unwrap();
    let err = manifest(
        &img,
        &DiffOptions {
            volatile_paths: vec!["/sparse".into(), "/tmp".into()],
            ..DiffOptions::default()
        },
    );
    assert!(
        matches!(err, Err(InspectError::Corrupt(ref m)) if m.contains("/etc/link")),
        "{err:?}"
    );
    assert!(matches!(
        crate::read_file(&img, "/etc/link", 0),
        Err(InspectError::Corrupt(_))
    ));
    let err = manifest(
        &img,
        &DiffOptions {
            volatile_paths: vec!["/etc/link".into(), "/tmp".into()],
            ..DiffOptions::default()
        },
    );
    assert!(matches!(err, Err(InspectError::TooLarge { .. })), "{err:?}");
    // A fact file reached through a volatile link claiming a huge target.
    let err = manifest(
        &img,
        &DiffOptions {
            volatile_paths: vec!["/etc/link".into(), "/sparse".into(), "/tmp".into()],
            ..DiffOptions::default()
        },
    );
    assert!(
        matches!(err, Err(InspectError::Corrupt(ref m)) if m.contains("/tmp/evil")),
        "{err:?}"
    );
    assert!(matches!(
        crate::read_file(&img, "/sparse", 0),
        Err(InspectError::TooLarge { .. })
    ));
}

#[test]
fn limits_are_errors_not_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deep.raw");
    Tree::new()
        .file("/a/b/c/d/e/f", "deep", 0o644)
        .file("/x", "0123456789", 0o644)
        .mkfs(&path, "16M");
    let img = DiskImage::open(&path).unwrap();
    let opts = DiffOptions::default();
    let limits = |max_depth, max_entries, max_hash_bytes| Limits {
        max_depth,
        max_entries,
        max_hash_bytes,
    };
    assert!(manifest_with_limits(&img, &opts, &limits(5, 100, None)).is_ok());
    assert!(matches!(
        manifest_with_limits(&img, &opts, &limits(4, 100, None)),
        Err(InspectError::Unsupported(_))
    ));
    assert!(matches!(
        manifest_with_limits(&img, &opts, &limits(64, 5, None)),
        Err(InspectError::TooLarge { .. })
    ));
    assert!(matches!(
        manifest_with_limits(&img, &opts, &limits(64, 100, Some(8))),
        Err(InspectError::TooLarge { .. })
    ));
}

/// Enough files for the multi-threaded hashing path; every hash lands on its own path.
#[test]
fn parallel_hashing_matches_each_file() {
    use sha2::{Digest, Sha256};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("many.raw");
    let t = Tree::new();
    let content = |i: usize| format!("content of file {i}\n").repeat(i % 97 + 1);
    for i in 0..600 {
        t.file(&format!("/etc/d{}/f{i}", i % 13), content(i), 0o644);
    }
    t.mkfs(&path, "32M");
    let img = DiskImage::open(&path).unwrap();
    let m = manifest(&img, &DiffOptions::default()).unwrap();
    for i in 0..600 {
        let e = &m.entries[&format!("/etc/d{}/f{i}", i % 13)];
        assert_eq!(
            e.sha256,
            Some(Sha256::digest(content(i).as_bytes()).into()),
            "f{i}"
        );
    }
    let total: usize = (0..600).map(|i| content(i).len()).sum();
    assert_eq!(m.bytes_hashed, total as u64);
}
