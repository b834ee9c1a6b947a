//! Confinement of ansible-playbook with bubblewrap: a fresh mount namespace in which
//! only `/usr` (and the merged-/usr links), a minimal `/etc`, the ansible-core
//! installation, the run's work directory (playbook, inventory, configuration and
//! key read-only inside it) and the paths the caller names are visible; a private
//! `/tmp`, `/proc` of its own PID namespace, a minimal `/dev`; IPC and UTS namespaces
//! of its own; an environment of its own. The network is shared: ansible must reach
//! the controller's loopback tunnel listener (sandbox targets) and production hosts.
//!
//! The run switches to an unprivileged user: when the controller is root, bwrap keeps
//! only `CAP_SETUID`/`CAP_SETGID` and `setpriv` drops to the user (no capabilities,
//! no supplementary groups, `no_new_privs`) before ansible-playbook starts, and the
//! work directory is given to that user; otherwise bwrap's user namespace maps the
//! controller's uid to it (the mount namespace is then the wall).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::error::RunError;

/// `/etc` entries a run sees (read-only, when they exist): name service, resolver,
/// TLS roots, the SSH client's configuration, the dynamic linker's cache.
pub const ETC_ENTRIES: &[&str] = &[
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/resolv.conf",
    "/etc/gai.conf",
    "/etc/services",
    "/etc/protocols",
    "/etc/localtime",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/alternatives",
    "/etc/ssl/certs",
    "/etc/ca-certificates",
    "/etc/ssh/ssh_config",
    "/etc/ssh/ssh_config.d",
    "/etc/os-release",
    "/etc/debian_version",
    "/etc/lsb-release",
];

/// Top-level links or directories of a merged-/usr system.
const ROOT_LINKS: &[&str] = &["/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32"];

/// Where `setpriv` lives (util-linux, essential on Debian).
pub const SETPRIV: &str = "/usr/bin/setpriv";

/// How a run is confined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confinement {
    /// The `bwrap` binary.
    pub bwrap: PathBuf,
    /// The unprivileged user (uid, gid) the run becomes.
    pub user: Option<(u32, u32)>,
}

/// The directory of the Python installation an `ansible-playbook` belongs to (a venv:
/// the parent of its `bin`), when it is outside `/usr`.
pub fn install_root(ansible_playbook: &Path) -> Option<PathBuf> {
    if ansible_playbook.starts_with("/usr") {
        return None;
    }
    let root = ansible_playbook.parent()?.parent()?;
    (root != Path::new("/")).then(|| root.to_owned())
}

fn path_arg(p: &Path) -> OsString {
    p.as_os_str().to_owned()
}

/// The bwrap arguments before the command (ending in `--`).
pub fn bwrap_args(
    c: &Confinement,
    ansible_playbook: &Path,
    work: &Path,
    read_only_in_work: &[PathBuf],
    read_only: &[PathBuf],
    as_root: bool,
) -> Result<Vec<OsString>, RunError> {
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |xs: &[&str]| a.extend(xs.iter().map(OsString::from));
    push(&[
        "--die-with-parent",
        "--new-session",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--ro-bind",
        "/usr",
        "/usr",
    ]);
    for l in ROOT_LINKS {
        let p = Path::new(l);
        match std::fs::read_link(p) {
            Ok(target) => {
                a.push("--symlink".into());
                a.push(path_arg(&target));
                a.push(path_arg(p));
            }
            Err(_) if p.is_dir() => {
                a.extend(["--ro-bind".into(), path_arg(p), path_arg(p)]);
            }
            Err(_) => {}
        }
    }
    // The directories leading to what is bound, traversable (bwrap would create them
    // 0700, which the unprivileged user cannot enter).
    let mut dests: Vec<PathBuf> = ETC_ENTRIES
        .iter()
        .map(PathBuf::from)
        .filter(|p| p.exists())
        .collect();
    dests.extend(install_root(ansible_playbook));
    dests.push(work.to_owned());
    dests.extend(read_only.iter().cloned());
    for d in ancestors(&dests) {
        a.extend([
            "--perms".into(),
            "0755".into(),
            "--dir".into(),
            path_arg(&d),
        ]);
    }
    for e in ETC_ENTRIES {
        a.extend(["--ro-bind-try".into(), (*e).into(), (*e).into()]);
    }
    a.extend(
        [
            "--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/dev/shm",
            "--perms", "1777", "--tmpfs", "/tmp",
        ]
        .map(OsString::from),
    );
    if let Some(root) = install_root(ansible_playbook) {
        a.extend(["--ro-bind".into(), path_arg(&root), path_arg(&root)]);
    }
    a.extend(["--bind".into(), path_arg(work), path_arg(work)]);
    for p in read_only_in_work {
        a.extend(["--ro-bind".into(), path_arg(p), path_arg(p)]);
    }
    for p in read_only {
        if !p.is_absolute() {
            return Err(RunError::Invalid(format!(
                "read-only path {} is not absolute",
                p.display()
            )));
        }
        a.extend(["--ro-bind".into(), path_arg(p), path_arg(p)]);
    }
    a.extend(["--chdir".into(), path_arg(work)]);
    match (c.user, as_root) {
        (Some(_), true) => a.extend(
            [
                "--cap-drop",
                "ALL",
                "--cap-add",
                "CAP_SETUID",
                "--cap-add",
                "CAP_SETGID",
            ]
            .map(OsString::from),
        ),
        (Some((uid, gid)), false) => a.extend([
            "--unshare-user".into(),
            "--uid".into(),
            uid.to_string().into(),
            "--gid".into(),
            gid.to_string().into(),
        ]),
        (None, true) => a.extend(["--cap-drop", "ALL"].map(OsString::from)),
        (None, false) => {}
    }
    a.push("--".into());
    if let (Some((uid, gid)), true) = (c.user, as_root) {
        a.extend([
            SETPRIV.into(),
            format!("--reuid={uid}").into(),
            format!("--regid={gid}").into(),
            "--clear-groups".into(),
            "--no-new-privs".into(),
            "--".into(),
        ]);
    }
    Ok(a)
}

/// Every ancestor directory of `paths` (not `/`, nor what the sandbox mounts
/// itself), parents first.
fn ancestors(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = std::collections::BTreeSet::new();
    for p in paths {
        for anc in p.ancestors().skip(1) {
            if anc == Path::new("/")
                || ["/usr", "/proc", "/dev", "/tmp"]
                    .iter()
                    .any(|m| anc.starts_with(m))
            {
                continue;
            }
            out.insert(anc.to_owned());
        }
    }
    out.into_iter().collect()
}

/// Gives the work directory (and everything in it) to the run's user.
pub fn hand_over(work: &Path, uid: u32, gid: u32) -> Result<(), RunError> {
    fn walk(p: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
        std::os::unix::fs::lchown(p, Some(uid), Some(gid))?;
        let meta = std::fs::symlink_metadata(p)?;
        if meta.is_dir() {
            for e in std::fs::read_dir(p)? {
                walk(&e?.path(), uid, gid)?;
            }
        }
        Ok(())
    }
    walk(work, uid, gid)
        .map_err(|e| RunError::io(format!("giving {} to uid {uid}", work.display()), e))
}

/// Whether this process is root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The uid and gid of the user `name`; `None` when there is no such user.
pub fn lookup_user(name: &str) -> Result<Option<(u32, u32)>, RunError> {
    nix::unistd::User::from_name(name)
        .map(|u| u.map(|u| (u.uid.as_raw(), u.gid.as_raw())))
        .map_err(|e| RunError::Unconfinable(format!("looking up user {name:?}: {e}")))
}
