//! systemd units and whether they are enabled, read from unit files and the links
//! `systemctl enable|disable|mask` leave under `/etc/systemd/system`.

use std::collections::{BTreeMap, BTreeSet};

use ext4_view::Ext4;
use serde::{Deserialize, Serialize};

use crate::error::{InspectError, Result};
use crate::files::{display_path, join, link_target, read_capped, resolve};

const ETC_DIR: &str = "/etc/systemd/system";
/// Searched after `/etc`, in systemd's order; `/lib` is `/usr/lib` on merged-usr systems
/// (resolved directories are read once).
const VENDOR_DIRS: [&str; 3] = [
    "/usr/local/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
];
const UNIT_SUFFIXES: [&str; 4] = [".service", ".socket", ".timer", ".path"];
const DEPENDENCY_DIR_SUFFIXES: [&str; 3] = [".wants", ".requires", ".upholds"];
const INSTALL_KEYS: [&str; 5] = ["wantedby", "requiredby", "upheldby", "alias", "also"];
const MAX_UNIT_FILE: u64 = 1024 * 1024;
/// Entries read from one unit directory at most (a crafted directory could hold millions).
const MAX_DIR_ENTRIES: usize = 100_000;

/// A unit's enablement on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Enablement {
    /// Linked from a `.wants`/`.requires` directory or by an alias under `/etc`.
    Enabled,
    /// Has an `[Install]` section but no links.
    Disabled,
    /// `/etc/systemd/system/<unit>` (or a vendor unit) is a link to `/dev/null`.
    Masked,
    /// No `[Install]` section: started only as a dependency.
    Static,
}

impl Enablement {
    /// The wire word ("enabled", "disabled", "masked", "static").
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enabled => "enabled",
            Self::Disabled => "disabled",
            Self::Masked => "masked",
            Self::Static => "static",
        }
    }
}

/// One unit of a disk state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// Its enablement.
    pub enablement: Enablement,
    /// Where its unit file is (for an instance `a@b.service`, the template's); empty when
    /// only links name it.
    pub unit_path: String,
}

fn is_unit(name: &str) -> bool {
    UNIT_SUFFIXES
        .iter()
        .any(|s| name.len() > s.len() && name.ends_with(s))
}

/// `a@b.service` → `a@.service`.
pub(crate) fn template_of(name: &str) -> Option<String> {
    let (prefix, rest) = name.split_once('@')?;
    let dot = rest.rfind('.')?;
    (dot > 0).then(|| format!("{prefix}@{}", &rest[dot..]))
}

fn basename(path: &[u8]) -> &[u8] {
    path.rsplit(|b| *b == b'/').next().unwrap_or(path)
}

/// One directory's entries: (name, is symlink, is dir, claimed size). A missing
/// directory has none.
fn list(fs: &Ext4, dir: &[u8]) -> Result<Vec<(String, bool, bool, u64)>> {
    let rd = match fs.read_dir(dir) {
        Ok(rd) => rd,
        Err(ext4_view::Ext4Error::NotFound | ext4_view::Ext4Error::NotADirectory) => {
            return Ok(Vec::new());
        }
        Err(e) => return Err(InspectError::from_ext4(&display_path(dir), e)),
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| InspectError::from_ext4(&display_path(dir), e))?;
        let Ok(name) = entry.file_name().as_str().map(str::to_owned) else {
            continue;
        };
        if name == "." || name == ".." {
            continue;
        }
        if out.len() >= MAX_DIR_ENTRIES {
            return Err(InspectError::TooLarge {
                path: display_path(dir),
                size: out.len() as u64,
                max: MAX_DIR_ENTRIES as u64,
            });
        }
        let meta = entry
            .metadata()
            .map_err(|e| InspectError::from_ext4(&name, e))?;
        out.push((name, meta.is_symlink(), meta.is_dir(), meta.len()));
    }
    out.sort();
    Ok(out)
}

/// Whether the unit file's `[Install]` section names a way to enable it.
pub(crate) fn has_install_section(text: &str) -> bool {
    let mut in_install = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_install = line.eq_ignore_ascii_case("[install]");
        } else if in_install
            && let Some((k, v)) = line.split_once('=')
            && !v.trim().is_empty()
            && INSTALL_KEYS.contains(&k.trim().to_ascii_lowercase().as_str())
        {
            return true;
        }
    }
    false
}

#[derive(Default)]
struct Scan {
    /// unit name → unit file path (first directory wins).
    files: BTreeMap<String, Vec<u8>>,
    masked: BTreeMap<String, String>,
    enabled: BTreeSet<String>,
}

impl Scan {
    fn unit_dir(&mut self, fs: &Ext4, dir: &[u8], is_etc: bool) -> Result<()> {
        for (name, is_link, _, len) in list(fs, dir)? {
            if !is_unit(&name) || self.files.contains_key(&name) || self.masked.contains_key(&name)
            {
                continue;
            }
            let path = join(dir, name.as_bytes());
            if !is_link {
                self.files.insert(name, path);
                continue;
            }
            let target = link_target(fs, &path, len)?;
            if target == b"/dev/null" {
                self.masked.insert(name, display_path(&path));
                continue;
            }
            let target_name = String::from_utf8_lossy(basename(&target)).into_owned();
            if target_name == name {
                // A linked unit file (`systemctl link`), or a vendor-dir duplicate.
                self.files.insert(name, path);
            } else if is_etc && is_unit(&target_name) {
                // An alias `systemctl enable` made from the unit's `Alias=`.
                self.enabled.insert(target_name);
            }
        }
        Ok(())
    }

    fn dependency_dirs(&mut self, fs: &Ext4, etc: &[u8]) -> Result<()> {
        for (name, _, is_dir, _) in list(fs, etc)? {
            if !is_dir || !DEPENDENCY_DIR_SUFFIXES.iter().any(|s| name.ends_with(s)) {
                continue;
            }
            let dir = join(etc, name.as_bytes());
            for (unit, ..) in list(fs, &dir)? {
                if is_unit(&unit) {
                    self.enabled.insert(unit);
                }
            }
        }
        Ok(())
    }
}

/// Every unit of the disk state with its enablement.
pub(crate) fn read(fs: &Ext4) -> Result<BTreeMap<String, Service>> {
    let mut scan = Scan::default();
    let mut seen_dirs = BTreeSet::new();
    let etc = match resolve(fs, ETC_DIR.as_bytes()) {
        Ok(p) => Some(p),
        Err(e) if e.is_absent() => None,
        Err(e) => return Err(e),
    };
    if let Some(etc) = &etc {
        seen_dirs.insert(etc.clone());
        scan.unit_dir(fs, etc, true)?;
        scan.dependency_dirs(fs, etc)?;
    }
    for dir in VENDOR_DIRS {
        let real = match resolve(fs, dir.as_bytes()) {
            Ok(p) => p,
            Err(e) if e.is_absent() => continue,
            Err(e) => return Err(e),
        };
        if seen_dirs.insert(real.clone()) {
            scan.unit_dir(fs, &real, false)?;
        }
    }

    let mut names: BTreeSet<String> = scan.files.keys().cloned().collect();
    names.extend(scan.masked.keys().cloned());
    names.extend(scan.enabled.iter().cloned());
    let mut out = BTreeMap::new();
    for name in names {
        let service = if let Some(path) = scan.masked.get(&name) {
            Service {
                enablement: Enablement::Masked,
                unit_path: path.clone(),
            }
        } else {
            let file = scan
                .files
                .get(&name)
                .or_else(|| template_of(&name).and_then(|t| scan.files.get(&t)));
            let unit_path = file.map(|p| display_path(p)).unwrap_or_default();
            let enablement = if scan.enabled.contains(&name) {
                Enablement::Enabled
            } else if let Some(path) = file {
                if unit_installable(fs, path)? {
                    Enablement::Disabled
                } else {
                    Enablement::Static
                }
            } else {
                continue;
            };
            Service {
                enablement,
                unit_path,
            }
        };
        out.insert(name, service);
    }
    Ok(out)
}

/// Reads a unit file (following links inside the image); unreadable or absent files
/// count as installable (so they show as "disabled", not "static").
fn unit_installable(fs: &Ext4, path: &[u8]) -> Result<bool> {
    let real = match resolve(fs, path) {
        Ok(r) => r,
        Err(e) if e.is_absent() => return Ok(true),
        Err(e) => return Err(e),
    };
    match read_capped(fs, &real, MAX_UNIT_FILE) {
        Ok(bytes) => Ok(has_install_section(&String::from_utf8_lossy(&bytes))),
        Err(e) if e.is_absent() => Ok(true),
        Err(e) => Err(e),
    }
}
