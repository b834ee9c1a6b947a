//! Modes of the controller's private files: its data directory, the SQLite database,
//! the PKI directory. Set explicitly, whatever the process umask is (the systemd unit
//! adds `UMask=0027`; a hand-started controller may run under 0022).

use std::fs;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use anyhow::{Context as _, bail};

/// Makes `dir` private: created 0700 (parents too) when missing; an existing one keeps
/// its owner, group, the group's read access (a package may have made it
/// `root:<service group>` 0750) and the traversal bit of others (the packages make
/// `/etc/fluid/pki` 0711 so that each service opens the files its config names), but
/// loses write permission for its group and read and write permission for others:
/// nobody else lists or changes it.
pub fn private_dir(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let meta = fs::metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let mode = meta.permissions().mode() & 0o7777;
    // A fresh directory gets exactly 0700 (whatever the umask did to it).
    let wanted = if mode & 0o077 == 0 {
        0o700
    } else {
        mode & 0o751
    };
    if mode != wanted {
        fs::set_permissions(dir, fs::Permissions::from_mode(wanted))
            .with_context(|| format!("chmod {wanted:o} {}", dir.display()))?;
    }
    Ok(())
}

/// Makes `path` a file only its owner reads and writes (0600): created empty when
/// missing (before anyone else writes into it), tightened when it exists.
pub fn private_file(path: &Path) -> anyhow::Result<()> {
    if !path.exists() {
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("creating {}", path.display()))?;
    }
    let mode = fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .permissions()
        .mode()
        & 0o7777;
    if mode != 0o600 {
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod 600 {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).expect("stat").permissions().mode() & 0o7777
    }

    #[test]
    fn directories_and_files_become_private() {
        let tmp = tempfile::tempdir().expect("tmp");
        let d = tmp.path().join("a/b");
        private_dir(&d).expect("create");
        assert_eq!(mode(&d), 0o700);
        fs::set_permissions(&d, fs::Permissions::from_mode(0o777)).expect("chmod");
        private_dir(&d).expect("tighten");
        assert_eq!(mode(&d), 0o751);
        fs::set_permissions(&d, fs::Permissions::from_mode(0o711)).expect("chmod");
        private_dir(&d).expect("keep");
        assert_eq!(mode(&d), 0o711, "others keep traversal, nothing more");

        let f = d.join("fluid.db");
        private_file(&f).expect("create");
        assert_eq!(mode(&f), 0o600);
        fs::write(&f, "x").expect("write");
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).expect("chmod");
        private_file(&f).expect("tighten");
        assert_eq!(
            (mode(&f), fs::read_to_string(&f).expect("read").as_str()),
            (0o600, "x")
        );

        assert!(private_dir(&f).is_err(), "a file is not a directory");
    }
}
