//! A crafted directory holding one name many times (issue 12, hole 8): refused in
//! linear time and memory, never a quadratic walk.
//!
//! The image is built by `mkfs.ext4 -d` (4 KiB blocks, no directory index, no
//! checksums) with `/many/zq000000`; `debugfs expand_dir` then grows `/many` to enough
//! blocks, and those blocks are written here: `.`, `..` and `n` entries all named
//! `zq000000` pointing at that file's inode. A linear directory with one name `n`
//! times, which ext4 itself never writes. (`mkfs.ext4 -d` from `n` distinct files and
//! a rename in the bytes would also do, but e2fsprogs fills a linear directory in
//! quadratic time: five minutes at 100,000.)

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use super::fixture::{Noise, run};
use crate::{DiffOptions, DiskImage, InspectError, manifest};

const BLOCK: usize = 4096;
const NAME: &[u8; 8] = b"zq000000";
/// inode (4), rec_len (2), name_len (1), file type (1), the name.
const ENTRY: usize = 16;

/// One directory entry.
fn dirent(out: &mut Vec<u8>, inode: u32, rec_len: usize, name: &[u8], file_type: u8) {
    out.extend_from_slice(&inode.to_le_bytes());
    out.extend_from_slice(&u16::try_from(rec_len).unwrap().to_le_bytes());
    out.push(u8::try_from(name.len()).unwrap());
    out.push(file_type);
    out.extend_from_slice(name);
    out.resize(out.len() + (4 - name.len() % 4) % 4, 0);
}

/// `(inode, name)` of each line of `debugfs -R "ls -p <dir>"` (`/ino/mode/uid/gid/name/size/`).
fn listing(img: &str, dir: &str) -> Vec<(u32, String)> {
    run("debugfs", &["-R", &format!("ls -p {dir}"), img])
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('/').collect();
            (f.len() > 5).then(|| (f[1].parse().unwrap(), f[5].to_owned()))
        })
        .collect()
}

/// Builds the image at `dest` with `n` entries named `zq000000` in `/many`.
fn duplicate_image(dest: &Path, n: usize) {
    let tree = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tree.path().join("many")).unwrap();
    std::fs::create_dir_all(tree.path().join("etc")).unwrap();
    std::fs::write(tree.path().join("etc/hostname"), "dup\n").unwrap();
    std::fs::write(tree.path().join("many/zq000000"), "x").unwrap();
    let img = dest.to_str().unwrap();
    let per_block = (BLOCK - 24) / ENTRY;
    let blocks = n.div_ceil(per_block).max(1);
    let size = format!("{}M", 16 + blocks * BLOCK / (1 << 20));
    run(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-b",
            "4096",
            "-O",
            "^metadata_csum,^dir_index,^has_journal",
            "-d",
            tree.path().to_str().unwrap(),
            img,
            &size,
        ],
    );
    let script = tree.path().join("expand");
    std::fs::write(&script, "expand_dir /many\n".repeat(blocks - 1)).unwrap();
    run("debugfs", &["-w", "-f", script.to_str().unwrap(), img]);
    let entries = listing(img, "/many");
    let ino = |name: &str| entries.iter().find(|(_, n)| n == name).unwrap().0;
    let (me, parent, file) = (ino("."), ino(".."), ino("zq000000"));
    // The physical block of each logical block (`bmap`; the command lines are echoed).
    let bmap: String = (0..blocks).map(|b| format!("bmap /many {b}\n")).collect();
    std::fs::write(&script, bmap).unwrap();
    let numbers: Vec<u64> = run("debugfs", &["-f", script.to_str().unwrap(), img])
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    assert_eq!(numbers.len(), blocks, "the directory's blocks");
    let f = std::fs::OpenOptions::new().write(true).open(dest).unwrap();
    let mut left = n;
    for (i, number) in numbers.iter().enumerate() {
        let mut block = Vec::with_capacity(BLOCK);
        if i == 0 {
            dirent(&mut block, me, 12, b".", 2);
            dirent(&mut block, parent, 12, b"..", 2);
        }
        let here = left.min(per_block);
        for k in 0..here {
            let rec = if k + 1 == here {
                BLOCK - block.len()
            } else {
                ENTRY
            };
            dirent(&mut block, file, rec, NAME, 1);
        }
        left -= here;
        if here == 0 {
            // An empty block: one unused entry spanning it.
            let rest = BLOCK - block.len();
            dirent(&mut block, 0, rest, b"", 0);
        }
        block.resize(BLOCK, 0);
        f.write_all_at(&block, number * BLOCK as u64).unwrap();
    }
    assert_eq!(left, 0);
}

/// Builds the manifest of an `n`-duplicate image: the refusal and its time.
fn refuse(dir: &Path, n: usize) -> (InspectError, Duration) {
    let path = dir.join(format!("dup-{n}.raw"));
    duplicate_image(&path, n);
    let img = DiskImage::open(&path).unwrap();
    let t = Instant::now();
    let result = manifest(&img, &DiffOptions::default());
    let took = t.elapsed();
    let err = result.expect_err("a directory with duplicate names is refused");
    (err, took)
}

#[test]
fn duplicate_names_are_refused_in_linear_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut times = Vec::new();
    for n in [10_000, 100_000] {
        let (err, took) = refuse(dir.path(), n);
        let message = err.to_string();
        eprintln!(
            "{n} duplicate entries: refused in {} ms ({:.0} entries/s): {message}",
            took.as_millis(),
            n as f64 / took.as_secs_f64()
        );
        assert!(
            matches!(err, InspectError::Corrupt(_)),
            "a corrupt file system: {err:?}"
        );
        assert!(
            message.contains(&format!("/many: {} duplicate directory entries", n - 1))
                && message.contains("zq000000"),
            "{message}"
        );
        // Quadratic work would take hours (and ~15 GB of keys) at 100,000; linear takes
        // well under a second in a debug build. Generous for a loaded machine.
        assert!(took < Duration::from_secs(60), "{n}: {took:?}");
        times.push(took.as_secs_f64());
    }
    eprintln!(
        "time at 100k / time at 10k: {:.1} (linear: about 10; quadratic: about 100)",
        times[1] / times[0]
    );
}

/// The duplicate-name image in the bit-flip fuzz: whatever the flips do, the walk
/// refuses or reads, never panics, hangs or grows.
#[test]
fn duplicate_names_with_random_corruption_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("dup.raw");
    duplicate_image(&good, 2_000);
    let good = std::fs::read(&good).unwrap();
    let path = dir.path().join("fuzz.raw");
    let rounds = std::env::var("FLUID_INSPECT_FUZZ_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150u64);
    let (mut read, mut refused) = (0, 0);
    for seed in 1..=rounds {
        let mut bytes = good.clone();
        let mut noise = Noise(seed * 104_729);
        // Anywhere in the first 4 MiB: superblock, group descriptors, inode table and
        // the directory's blocks.
        let span = bytes.len().min(4 << 20) - 1024;
        for _ in 0..(1 + seed % 8) {
            let at = noise.next() as usize % span;
            bytes[at] ^= 1 << (noise.next() % 8);
        }
        std::fs::write(&path, &bytes).unwrap();
        let outcome = DiskImage::open(&path).and_then(|img| {
            let m = manifest(&img, &DiffOptions::default())?;
            Ok(m.entries.len())
        });
        match outcome {
            Ok(_) => read += 1,
            Err(_) => refused += 1,
        }
    }
    eprintln!("duplicate names, fuzzed: {read} read, {refused} refused");
}
