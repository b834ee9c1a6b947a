//! Building small ext4 images from directory trees with `mkfs.ext4 -d` (e2fsprogs).

use std::os::unix::fs::{PermissionsExt, chown, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A directory tree being populated, later turned into an ext4 image.
pub(crate) struct Tree {
    pub(crate) root: tempfile::TempDir,
}

impl Tree {
    pub(crate) fn new() -> Self {
        Self {
            root: tempfile::tempdir().unwrap(),
        }
    }

    fn at(&self, path: &str) -> PathBuf {
        self.root.path().join(path.trim_start_matches('/'))
    }

    pub(crate) fn dir(&self, path: &str, mode: u32) -> &Self {
        let p = self.at(path);
        std::fs::create_dir_all(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        self
    }

    pub(crate) fn file(&self, path: &str, content: impl AsRef<[u8]>, mode: u32) -> &Self {
        let p = self.at(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        self
    }

    pub(crate) fn link(&self, path: &str, target: &str) -> &Self {
        let p = self.at(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        symlink(target, &p).unwrap();
        self
    }

    pub(crate) fn owner(&self, path: &str, uid: u32, gid: u32) -> &Self {
        chown(self.at(path), Some(uid), Some(gid)).unwrap();
        self
    }

    /// Writes the tree into a fresh ext4 image of `size` (e.g. "16M") at `dest`.
    pub(crate) fn mkfs(&self, dest: &Path, size: &str) {
        mkfs(self.root.path(), dest, size);
    }
}

pub(crate) fn mkfs(src: &Path, dest: &Path, size: &str) {
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(src)
        .arg(dest)
        .arg(size)
        .output()
        .expect("mkfs.ext4 runs");
    assert!(
        out.status.success(),
        "mkfs.ext4: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub(crate) fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A deterministic byte stream for corruption tests (xorshift64).
pub(crate) struct Noise(pub(crate) u64);

impl Noise {
    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub(crate) fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.next() as u8;
        }
    }
}
