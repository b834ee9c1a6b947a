//! Installed packages, their conffiles and file lists, from dpkg's and apt's databases
//! (`/var/lib/dpkg/status`, `/var/lib/dpkg/info/*.list`, `/var/lib/apt/extended_states`).

use std::collections::{BTreeMap, HashMap};

use ext4_view::Ext4;
use serde::{Deserialize, Serialize};

use crate::error::{InspectError, Result};
use crate::files::{read_capped, read_fact, resolve};

const STATUS: &str = "/var/lib/dpkg/status";
const INFO_DIR: &str = "/var/lib/dpkg/info";
const EXTENDED_STATES: &str = "/var/lib/apt/extended_states";
const MAX_STATUS: u64 = 128 * 1024 * 1024;
const MAX_EXTENDED_STATES: u64 = 64 * 1024 * 1024;
const MAX_LIST_FILE: u64 = 64 * 1024 * 1024;
const MAX_LIST_TOTAL: u64 = 512 * 1024 * 1024;

/// An installed package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    /// Plain name (no `:arch`).
    pub name: String,
    /// Version string as dpkg records it.
    pub version: String,
    /// `amd64`, `all`, …
    pub architecture: String,
    /// apt marked it automatically installed (`Auto-Installed: 1`).
    pub auto_installed: bool,
}

/// A conffile as dpkg recorded it when the package was installed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conffile {
    /// The package (plain name) that ships it.
    pub package: String,
    /// Hex MD5 of the packaged content.
    pub md5: String,
}

/// What dpkg knows about a disk state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dpkg {
    /// Installed packages by `name:arch`.
    pub packages: BTreeMap<String, Package>,
    /// Conffile path → its package and packaged MD5.
    pub conffiles: BTreeMap<String, Conffile>,
    /// Path → the package (plain name) whose file list holds it (first list in name
    /// order when several do, as for shared directories).
    pub owners: HashMap<String, String>,
}

/// Top-level directories that merged-/usr systems (Debian 12) make symlinks into /usr;
/// dpkg's file lists may still name the old path (`/lib/systemd/system/x.service`).
const USRMERGED: &[&str] = &["bin", "sbin", "lib", "lib32", "lib64", "libx32"];

impl Dpkg {
    /// The package whose file list holds `path`, also under its pre-usrmerge name
    /// (`/usr/lib/x` is found as `/lib/x`).
    pub fn owner(&self, path: &str) -> Option<&String> {
        self.owners.get(path).or_else(|| {
            let rest = path.strip_prefix("/usr/")?;
            let top = rest.split('/').next()?;
            if USRMERGED.contains(&top) {
                self.owners.get(&path["/usr".len()..])
            } else {
                None
            }
        })
    }
}

/// Status states whose files are on disk and configured.
fn is_installed(status: &str) -> bool {
    matches!(
        status.split_whitespace().nth(2),
        Some("installed" | "triggers-pending" | "triggers-awaited")
    )
}

/// Splits deb822 text into paragraphs of (lower-cased field name, value); continuation
/// lines are appended to the value with their newline.
pub(crate) fn paragraphs(text: &str) -> Vec<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut cur: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = cur.last_mut() {
                v.push('\n');
                v.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            cur.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn field<'a>(para: &'a [(String, String)], name: &str) -> Option<&'a str> {
    para.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Parses the status file: installed packages and their conffiles.
pub(crate) fn parse_status(text: &str) -> (BTreeMap<String, Package>, BTreeMap<String, Conffile>) {
    let mut packages = BTreeMap::new();
    let mut conffiles = BTreeMap::new();
    for para in paragraphs(text) {
        let (Some(name), Some(status)) = (field(&para, "package"), field(&para, "status")) else {
            continue;
        };
        if !is_installed(status) || name.is_empty() {
            continue;
        }
        let arch = field(&para, "architecture").unwrap_or("").to_owned();
        let version = field(&para, "version").unwrap_or("").to_owned();
        for line in field(&para, "conffiles").unwrap_or("").lines() {
            let mut words = line.split_whitespace();
            let (Some(path), Some(md5)) = (words.next(), words.next()) else {
                continue;
            };
            if path.starts_with('/')
                && md5.len() == 32
                && md5.bytes().all(|b| b.is_ascii_hexdigit())
            {
                conffiles.insert(
                    path.to_owned(),
                    Conffile {
                        package: name.to_owned(),
                        md5: md5.to_ascii_lowercase(),
                    },
                );
            }
        }
        packages.insert(
            format!("{name}:{arch}"),
            Package {
                name: name.to_owned(),
                version,
                architecture: arch,
                auto_installed: false,
            },
        );
    }
    (packages, conffiles)
}

/// Parses apt's extended_states: the `(name, arch)` pairs marked automatically installed.
pub(crate) fn parse_extended_states(text: &str) -> Vec<(String, String)> {
    paragraphs(text)
        .into_iter()
        .filter(|p| field(p, "auto-installed").is_some_and(|v| v.trim() == "1"))
        .filter_map(|p| {
            let name = field(&p, "package")?.to_owned();
            Some((name, field(&p, "architecture").unwrap_or("").to_owned()))
        })
        .collect()
}

/// Sets `auto_installed` from extended_states: the exact `name:arch`, or (for
/// `Architecture: all` packages, which apt records under the native architecture) any
/// entry with the name.
pub(crate) fn apply_auto(packages: &mut BTreeMap<String, Package>, auto: &[(String, String)]) {
    let exact: std::collections::HashSet<String> =
        auto.iter().map(|(n, a)| format!("{n}:{a}")).collect();
    let names: std::collections::HashSet<&str> = auto.iter().map(|(n, _)| n.as_str()).collect();
    for (key, pkg) in packages.iter_mut() {
        pkg.auto_installed =
            exact.contains(key) || (pkg.architecture == "all" && names.contains(pkg.name.as_str()));
    }
}

/// Reads everything dpkg knows. A disk without dpkg gives an empty result.
pub(crate) fn read(fs: &Ext4) -> Result<Dpkg> {
    let Some(status) = read_fact(fs, STATUS, MAX_STATUS)? else {
        return Ok(Dpkg::default());
    };
    let (mut packages, conffiles) = parse_status(&String::from_utf8_lossy(&status));
    if let Some(ext) = read_fact(fs, EXTENDED_STATES, MAX_EXTENDED_STATES)? {
        apply_auto(
            &mut packages,
            &parse_extended_states(&String::from_utf8_lossy(&ext)),
        );
    }
    let owners = read_owners(fs)?;
    Ok(Dpkg {
        packages,
        conffiles,
        owners,
    })
}

/// `info/<pkg>.list` and `info/<pkg>:<arch>.list`: path → package.
fn read_owners(fs: &Ext4) -> Result<HashMap<String, String>> {
    let mut owners = HashMap::new();
    let dir = match resolve(fs, INFO_DIR.as_bytes()) {
        Ok(d) => d,
        Err(e) if e.is_absent() => return Ok(owners),
        Err(e) => return Err(e),
    };
    let entries = match fs.read_dir(dir.as_slice()) {
        Ok(rd) => rd,
        Err(ext4_view::Ext4Error::NotADirectory) => return Ok(owners),
        Err(e) => return Err(InspectError::from_ext4(INFO_DIR, e)),
    };
    let mut lists = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| InspectError::from_ext4(INFO_DIR, e))?;
        let Ok(name) = entry.file_name().as_str().map(str::to_owned) else {
            continue;
        };
        let is_regular = || {
            entry
                .metadata()
                .is_ok_and(|m| m.file_type().is_regular_file())
        };
        if let Some(stem) = name.strip_suffix(".list")
            && is_regular()
        {
            let pkg = stem.split(':').next().unwrap_or(stem).to_owned();
            lists.push((name, pkg));
        }
    }
    lists.sort();
    let mut total = 0u64;
    for (file, pkg) in lists {
        let path = crate::files::join(&dir, file.as_bytes());
        let bytes = read_capped(fs, &path, MAX_LIST_FILE)?;
        total += bytes.len() as u64;
        if total > MAX_LIST_TOTAL {
            return Err(InspectError::TooLarge {
                path: format!("{INFO_DIR}/*.list"),
                size: total,
                max: MAX_LIST_TOTAL,
            });
        }
        for line in String::from_utf8_lossy(&bytes).lines() {
            let line = if line == "/." { "/" } else { line };
            if line.starts_with('/') {
                owners.entry(line.to_owned()).or_insert_with(|| pkg.clone());
            }
        }
    }
    Ok(owners)
}
