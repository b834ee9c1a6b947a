//! Comparing two manifests into a [`SnapshotDiff`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use crate::changes::{
    ChangeKind, FileChange, FileMeta, PackageChange, ServiceChange, SnapshotDiff,
};
use crate::dpkg::Package;
use crate::error::{InspectError, Result};
use crate::files::{md5_file, read_capped};
use crate::image::{DiskImage, guarded};
use crate::manifest::{Entry, Kind, Manifest};
use crate::options::{DiffOptions, PrefixSet};

/// Compares two disk states (each an opened image and its manifest, built with the same
/// `opts`). Files come sorted by path, packages and services by name. `elapsed_ms` counts
/// both manifests' time plus the comparison's. Blocking.
pub fn diff(
    from: (&DiskImage, &Manifest),
    to: (&DiskImage, &Manifest),
    opts: &DiffOptions,
) -> Result<SnapshotDiff> {
    guarded("comparing disk states", || {
        let started = Instant::now();
        let files = file_changes(from, to, opts)?;
        let packages = package_changes(&from.1.dpkg.packages, &to.1.dpkg.packages);
        let services = service_changes(from.1, to.1);
        let elapsed = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let total = elapsed
            .saturating_add(from.1.elapsed_ms)
            .saturating_add(to.1.elapsed_ms);
        Ok(SnapshotDiff {
            files,
            packages,
            services,
            from_entries: from.1.entries.len() as u64,
            to_entries: to.1.entries.len() as u64,
            elapsed_ms: u32::try_from(total).unwrap_or(u32::MAX),
        })
    })
}

/// Whether two entries of one path differ in what is compared.
pub(crate) fn differs(before: &Entry, after: &Entry, metadata_only: bool) -> bool {
    let meta = before.kind != after.kind
        || before.mode != after.mode
        || before.uid != after.uid
        || before.gid != after.gid;
    meta || (!metadata_only
        && (before.sha256 != after.sha256 || before.link_target != after.link_target))
}

/// The metadata of an entry, with names from that side's accounts.
pub(crate) fn file_meta(entry: &Entry, m: &Manifest) -> FileMeta {
    FileMeta {
        kind: entry.kind,
        mode: entry.mode,
        uid: entry.uid,
        gid: entry.gid,
        owner: m.accounts.user(entry.uid).to_owned(),
        group: m.accounts.group(entry.gid).to_owned(),
        size: entry.size,
        sha256: entry.sha256_hex(),
        link_target: entry.link_target.clone().unwrap_or_default(),
    }
}

/// A side's content as text: a regular file within `limit`, UTF-8 without NUL.
fn text_of(img: &DiskImage, path: &str, entry: &Entry, limit: u64) -> Result<Option<String>> {
    if entry.kind != Kind::Regular || entry.size > limit {
        return Ok(None);
    }
    let bytes = match read_capped(img.fs(), entry.raw(path), limit) {
        Ok(b) => b,
        Err(InspectError::TooLarge { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    if bytes.contains(&0) {
        return Ok(None);
    }
    Ok(String::from_utf8(bytes).ok())
}

fn file_changes(
    from: (&DiskImage, &Manifest),
    to: (&DiskImage, &Manifest),
    opts: &DiffOptions,
) -> Result<Vec<FileChange>> {
    let metadata_only = PrefixSet::new(&opts.metadata_only_paths);
    let paths: BTreeSet<&String> = from.1.entries.keys().chain(to.1.entries.keys()).collect();
    let mut out = Vec::new();
    for path in paths {
        let before = from.1.entries.get(path);
        let after = to.1.entries.get(path);
        let change = match (before, after) {
            (Some(_), None) => ChangeKind::Removed,
            (None, Some(_)) => ChangeKind::Added,
            (Some(b), Some(a)) if differs(b, a, metadata_only.matches(path)) => {
                ChangeKind::Modified
            }
            _ => continue,
        };
        out.push(file_change(
            path,
            change,
            before.map(|b| (from.0, from.1, b)),
            after.map(|a| (to.0, to.1, a)),
            opts,
        )?);
    }
    Ok(out)
}

type Side<'a> = (&'a DiskImage, &'a Manifest, &'a Entry);

fn file_change(
    path: &str,
    change: ChangeKind,
    before: Option<Side<'_>>,
    after: Option<Side<'_>>,
    opts: &DiffOptions,
) -> Result<FileChange> {
    let limit = opts.text_limit();
    let mut texts = [None, None];
    let mut text = true;
    for (slot, side) in texts.iter_mut().zip([before, after]) {
        if let Some((img, _, entry)) = side {
            *slot = text_of(img, path, entry, limit)?;
            text &= slot.is_some();
        }
    }
    let [before_text, after_text] = texts;
    let owner = |side: Option<Side<'_>>| side.and_then(|(_, m, _)| m.dpkg.owner(path).cloned());
    let mut package = owner(after).or_else(|| owner(before)).unwrap_or_default();
    let mut conffile_modified = false;
    if let Some((img, m, entry)) = after
        && entry.kind == Kind::Regular
        && let Some(conffile) = m.dpkg.conffiles.get(path)
        && (package.is_empty() || package == conffile.package)
    {
        package.clone_from(&conffile.package);
        conffile_modified = md5_file(img.fs(), entry.raw(path))? != conffile.md5;
    }
    Ok(FileChange {
        path: path.to_owned(),
        change,
        before: before.map(|(_, m, e)| file_meta(e, m)),
        after: after.map(|(_, m, e)| file_meta(e, m)),
        text,
        before_text: if text {
            before_text.unwrap_or_default()
        } else {
            String::new()
        },
        after_text: if text {
            after_text.unwrap_or_default()
        } else {
            String::new()
        },
        package,
        conffile_modified,
    })
}

/// Packages by plain name (a Multi-Arch: same package may be installed for several).
fn by_name(pkgs: &BTreeMap<String, Package>) -> BTreeMap<&str, Vec<&Package>> {
    let mut out: BTreeMap<&str, Vec<&Package>> = BTreeMap::new();
    for p in pkgs.values() {
        out.entry(p.name.as_str()).or_default().push(p);
    }
    out
}

fn change(before: Option<&Package>, after: Option<&Package>) -> Option<PackageChange> {
    let (name, arch, auto) = match (before, after) {
        (_, Some(a)) => (&a.name, &a.architecture, a.auto_installed),
        (Some(b), None) => (&b.name, &b.architecture, b.auto_installed),
        (None, None) => return None,
    };
    if let (Some(b), Some(a)) = (before, after)
        && b.version == a.version
        && b.architecture == a.architecture
    {
        return None;
    }
    Some(PackageChange {
        name: name.clone(),
        before_version: before.map(|b| b.version.clone()).unwrap_or_default(),
        after_version: after.map(|a| a.version.clone()).unwrap_or_default(),
        architecture: arch.clone(),
        auto_installed: auto,
    })
}

/// Added, removed and upgraded (or downgraded, or cross-graded) packages. A package
/// installed once on each side is one change even if its architecture changed (e.g.
/// to `all`); several architectures are matched by architecture.
pub(crate) fn package_changes(
    before: &BTreeMap<String, Package>,
    after: &BTreeMap<String, Package>,
) -> Vec<PackageChange> {
    let (b, a) = (by_name(before), by_name(after));
    let names: BTreeSet<&str> = b.keys().chain(a.keys()).copied().collect();
    let mut out = Vec::new();
    for name in names {
        let bs = b.get(name).map(Vec::as_slice).unwrap_or_default();
        let as_ = a.get(name).map(Vec::as_slice).unwrap_or_default();
        if bs.len() <= 1 && as_.len() <= 1 {
            out.extend(change(bs.first().copied(), as_.first().copied()));
            continue;
        }
        let archs: BTreeSet<&str> = bs
            .iter()
            .chain(as_.iter())
            .map(|p| p.architecture.as_str())
            .collect();
        for arch in archs {
            let before = bs.iter().copied().find(|p| p.architecture == arch);
            let after = as_.iter().copied().find(|p| p.architecture == arch);
            out.extend(change(before, after));
        }
    }
    out
}

/// Units whose enablement differs ("absent" on a side without the unit).
pub(crate) fn service_changes(before: &Manifest, after: &Manifest) -> Vec<ServiceChange> {
    let names: BTreeSet<&String> = before
        .services
        .keys()
        .chain(after.services.keys())
        .collect();
    let state = |m: &Manifest, n: &str| {
        m.services
            .get(n)
            .map_or("absent", |s| s.enablement.as_str())
    };
    names
        .into_iter()
        .filter(|n| state(before, n) != state(after, n))
        .map(|n| ServiceChange {
            name: n.clone(),
            before_enablement: state(before, n).to_owned(),
            after_enablement: state(after, n).to_owned(),
            before_active: String::new(),
            after_active: String::new(),
            unit_path: after
                .services
                .get(n)
                .map(|s| s.unit_path.clone())
                .unwrap_or_default(),
        })
        .collect()
}
