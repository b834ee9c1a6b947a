//! `read_file`: symlinks resolved inside the image only, caps, and refusals.

use sha2::{Digest, Sha256};

use super::fixture::{Tree, run};
use crate::{DiskImage, InspectError, Kind, read_file};

fn image() -> (tempfile::TempDir, DiskImage) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("read.raw");
    let t = Tree::new();
    t.file(
        "/etc/passwd",
        "root:x:0:0::/root:/bin/sh\nbob:x:1001:1001::/:/bin/sh\n",
        0o644,
    )
    .file("/etc/group", "root:x:0:\nstaff:x:50:\n", 0o644)
    .file("/etc/hostname", "host\n", 0o640)
    .owner("/etc/hostname", 1001, 50)
    .link("/etc/escape", "../../../../../../etc/hostname")
    .link("/etc/abs", "/etc/hostname")
    .link("/etc/chain", "abs")
    .link("/etc/loop1", "loop2")
    .link("/etc/loop2", "loop1")
    .link("/etc/dirlink", "/usr")
    .link("/etc/dangling", "/nope")
    .file("/usr/share/f", "f", 0o644)
    .file("/big", vec![b'x'; 1000], 0o600);
    run("mkfifo", &[t.root.path().join("fifo").to_str().unwrap()]);
    t.mkfs(&path, "16M");
    let img = DiskImage::open(&path).unwrap();
    (dir, img)
}

#[test]
fn reads_files_with_metadata() {
    let (_d, img) = image();
    let (meta, bytes) = read_file(&img, "/etc/hostname", 0).unwrap();
    assert_eq!(bytes, b"host\n");
    assert_eq!(meta.kind, Kind::Regular);
    assert_eq!(
        (meta.mode, meta.uid, meta.gid, meta.size),
        (0o640, 1001, 50, 5)
    );
    assert_eq!((meta.owner.as_str(), meta.group.as_str()), ("bob", "staff"));
    assert_eq!(meta.sha256, hex::encode(Sha256::digest(b"host\n")));
    assert_eq!(read_file(&img, "/big", 1000).unwrap().1.len(), 1000);
}

#[test]
fn symlinks_resolve_inside_the_image() {
    let (_d, img) = image();
    for path in ["/etc/escape", "/etc/abs", "/etc/chain"] {
        assert_eq!(read_file(&img, path, 0).unwrap().1, b"host\n", "{path}");
    }
    assert_eq!(read_file(&img, "/etc/dirlink/share/f", 0).unwrap().1, b"f");
    assert!(matches!(
        read_file(&img, "/etc/loop1", 0),
        Err(InspectError::Corrupt(_))
    ));
    assert!(matches!(
        read_file(&img, "/etc/dangling", 0),
        Err(InspectError::NotFound(_))
    ));
}

#[test]
fn refusals() {
    let (_d, img) = image();
    assert!(matches!(
        read_file(&img, "/nope", 0),
        Err(InspectError::NotFound(_))
    ));
    assert!(matches!(
        read_file(&img, "/etc/hostname/x", 0),
        Err(InspectError::NotFound(_))
    ));
    assert!(matches!(
        read_file(&img, "/etc", 0),
        Err(InspectError::NotAFile(_))
    ));
    assert!(matches!(
        read_file(&img, "/etc/dirlink", 0),
        Err(InspectError::NotAFile(_))
    ));
    assert!(matches!(
        read_file(&img, "/fifo", 0),
        Err(InspectError::NotAFile(_))
    ));
    assert!(matches!(
        read_file(&img, "/big", 999),
        Err(InspectError::TooLarge {
            size: 1000,
            max: 999,
            ..
        })
    ));
    for bad in [
        "etc/hostname",
        "/etc/../etc/hostname",
        "/etc//hostname",
        "/etc/hostname/",
        "/a\0",
    ] {
        assert!(
            matches!(
                read_file(&img, bad, 0),
                Err(InspectError::InvalidPath { .. })
            ),
            "{bad:?}"
        );
    }
}
