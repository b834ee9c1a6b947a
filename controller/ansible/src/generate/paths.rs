//! Which changed paths become tasks, and which come with something else (a package,
//! a service's enablement) or must never be copied (account databases).

use fluid_client::snapshots::FileEntry;

/// Package machinery: these change with every apt run and come with the apt tasks.
const MACHINERY: &[&str] = &[
    "/var/lib/dpkg",
    "/var/lib/apt",
    "/var/lib/systemd",
    "/var/lib/ucf",
    "/var/log",
    "/var/cache",
    "/etc/ld.so.cache",
    "/etc/alternatives",
];

/// Account databases and their `-` backups: never copied (a review note instead).
const ACCOUNT_DBS: &[&str] = &[
    "/etc/passwd",
    "/etc/group",
    "/etc/shadow",
    "/etc/gshadow",
    "/etc/subuid",
    "/etc/subgid",
];

/// Directories systemd loads units from.
const UNIT_DIRS: &[&str] = &[
    "/etc/systemd/system",
    "/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/usr/local/lib/systemd/system",
];

const UNIT_SUFFIXES: &[&str] = &[
    ".service",
    ".socket",
    ".timer",
    ".target",
    ".path",
    ".mount",
    ".automount",
    ".swap",
    ".slice",
];

/// Why a changed path gets no task of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Skip {
    /// Owned by a package (and not a modified conffile): the apt tasks bring it.
    Package,
    /// dpkg/apt/systemd state, logs, caches.
    Machinery,
    /// A unit's enablement or mask link, or a SysV rc link: the systemd tasks make it.
    Enablement,
    /// Compiled caches (`__pycache__`), rebuilt on use.
    Cache,
    /// `/etc/passwd` and friends.
    Accounts,
}

/// `path` is `prefix` or below it.
pub(super) fn under(path: &str, prefix: &str) -> bool {
    path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// The directories above `path`, nearest first, without `/`.
pub(super) fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    let mut cur = path;
    std::iter::from_fn(move || {
        let i = cur.rfind('/')?;
        if i == 0 {
            return None;
        }
        cur = &cur[..i];
        Some(cur)
    })
}

pub(super) fn is_account_db(path: &str) -> bool {
    ACCOUNT_DBS
        .iter()
        .any(|db| path == *db || path.strip_prefix(db) == Some("-"))
}

/// A unit file or a drop-in (`*.service.d/*.conf`) in a directory systemd loads.
pub(super) fn is_unit_file(path: &str) -> bool {
    UNIT_DIRS.iter().any(|dir| {
        path.strip_prefix(dir)
            .and_then(|rest| rest.strip_prefix('/'))
            .is_some_and(|rest| match rest.split_once('/') {
                None => UNIT_SUFFIXES.iter().any(|s| rest.ends_with(s)),
                Some((d, file)) => {
                    d.ends_with(".d") && !file.contains('/') && file.ends_with(".conf")
                }
            })
    })
}

/// The unit a unit file or drop-in under `/etc/systemd/system` configures
/// (`/etc/systemd/system/app.service` → `app`), for `.service` units that are not
/// templates.
pub(super) fn etc_service_unit(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/etc/systemd/system/")?;
    let unit = match rest.split_once('/') {
        None => rest,
        Some((d, _)) => d.strip_suffix(".d")?,
    };
    let base = unit.strip_suffix(".service")?;
    (!base.is_empty() && !base.ends_with('@')).then_some(base)
}

/// APT sources, keys and settings: applied before the packages, which may need them.
pub(super) fn is_apt_config(path: &str) -> bool {
    under(path, "/etc/apt") || under(path, "/usr/share/keyrings")
}

fn is_enablement(f: &FileEntry) -> bool {
    let p = f.path.as_str();
    if let Some(rest) = p.strip_prefix("/etc/systemd/system/") {
        let first = rest.split('/').next().unwrap_or_default();
        if first.ends_with(".wants") || first.ends_with(".requires") {
            return true;
        }
        if f.meta.kind == "symlink" && !rest.contains('/') {
            let target = f.meta.link_target.as_deref().unwrap_or_default();
            // Masks (→ /dev/null) and aliases `systemctl enable` creates.
            return target == "/dev/null"
                || under(target, "/lib/systemd")
                || under(target, "/usr/lib/systemd");
        }
        return false;
    }
    // SysV runlevel links (`update-rc.d`, run by `systemctl enable` for init scripts).
    let mut parts = p.split('/');
    let (_, etc, rc) = (parts.next(), parts.next(), parts.next());
    let is_rc_dir = rc.is_some_and(|d| {
        d.len() == 5
            && d.starts_with("rc")
            && d.ends_with(".d")
            && matches!(d.as_bytes()[2], b'0'..=b'6' | b'S')
    });
    etc == Some("etc") && is_rc_dir && parts.next().is_some() && f.meta.kind == "symlink"
}

/// Why `f` gets no task, if it does not.
pub(super) fn skip(f: &FileEntry) -> Option<Skip> {
    let p = f.path.as_str();
    if is_account_db(p) {
        return Some(Skip::Accounts);
    }
    if MACHINERY.iter().any(|m| under(p, m)) {
        return Some(Skip::Machinery);
    }
    if is_enablement(f) {
        return Some(Skip::Enablement);
    }
    if p.split('/').any(|c| c == "__pycache__") {
        return Some(Skip::Cache);
    }
    if f.package.is_some() && !f.conffile_modified {
        return Some(Skip::Package);
    }
    None
}
