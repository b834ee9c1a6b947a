//! `ansible.builtin.apt` tasks: install what was added by hand (dependencies follow),
//! upgrade what was upgraded, remove what was removed. Installs and upgrades name the
//! exact version the sandbox ended with (`nginx=1.22.1-9`): the playbook reproduces
//! that state, not whatever is newest where it runs (a version that is not there fails
//! the task, which says so).

use fluid_client::snapshots::{DiffJson, PackageEntry};
use serde_json::{Value, json};

use super::{task_name, truncate_chars};
use crate::model::{TaskSpec, literal};

const APT: &str = "ansible.builtin.apt";

fn names(list: &[&str]) -> Value {
    Value::Array(list.iter().map(|n| literal(*n)).collect())
}

/// A Debian version as dpkg allows it (`[epoch:]upstream[-revision]`). The diff comes
/// from the guest, whose dpkg database a tenant controls: anything else is not pinned.
fn is_debian_version(v: &str) -> bool {
    v.len() <= 128
        && v.starts_with(|c: char| c.is_ascii_digit())
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '~' | ':' | '-'))
}

/// `name=version`, or the name alone when the version is not one.
fn pinned(name: &str, version: &str) -> String {
    if is_debian_version(version) {
        format!("{name}={version}")
    } else {
        name.to_owned()
    }
}

fn described(items: impl Iterator<Item = String>) -> String {
    truncate_chars(&items.collect::<Vec<_>>().join(", "), 200)
}

/// The package tasks: install, upgrade, remove (each when there is something to do).
pub(super) fn tasks(diff: &DiffJson) -> Vec<TaskSpec> {
    let mut out = Vec::new();

    let mut added: Vec<&PackageEntry> = diff.packages_added.iter().collect();
    added.sort_by(|a, b| a.name.cmp(&b.name));
    // Packages apt installed as dependencies come with the others; when every added
    // package is marked automatic (no apt marks known), install them all.
    let manual: Vec<&PackageEntry> = added
        .iter()
        .copied()
        .filter(|p| !p.auto_installed)
        .collect();
    let install = if manual.is_empty() { added } else { manual };
    if !install.is_empty() {
        let specs: Vec<String> = install
            .iter()
            .map(|p| pinned(&p.name, &p.version))
            .collect();
        let list: Vec<&str> = specs.iter().map(String::as_str).collect();
        let what = described(
            install
                .iter()
                .map(|p| format!("{} ({})", p.name, p.version)),
        );
        out.push(TaskSpec::new(
            task_name(&format!("Install packages: {what}")),
            APT,
            json!({
                "name": names(&list),
                "state": "present",
                "update_cache": true,
                "cache_valid_time": 3600,
            }),
        ));
    }

    let mut upgraded: Vec<_> = diff.packages_upgraded.iter().collect();
    upgraded.sort_by(|a, b| a.name.cmp(&b.name));
    if !upgraded.is_empty() {
        let specs: Vec<String> = upgraded
            .iter()
            .map(|p| pinned(&p.name, &p.to_version))
            .collect();
        let list: Vec<&str> = specs.iter().map(String::as_str).collect();
        let what = described(
            upgraded
                .iter()
                .map(|p| format!("{} ({} → {})", p.name, p.from_version, p.to_version)),
        );
        out.push(TaskSpec::new(
            task_name(&format!("Upgrade packages: {what}")),
            APT,
            json!({
                "name": names(&list),
                "state": "present",
                "update_cache": true,
                "cache_valid_time": 3600,
            }),
        ));
    }

    let mut removed: Vec<&PackageEntry> = diff.packages_removed.iter().collect();
    removed.sort_by(|a, b| a.name.cmp(&b.name));
    if !removed.is_empty() {
        let list: Vec<&str> = removed.iter().map(|p| p.name.as_str()).collect();
        let what = described(
            removed
                .iter()
                .map(|p| format!("{} ({})", p.name, p.version)),
        );
        out.push(TaskSpec::new(
            task_name(&format!("Remove packages: {what}")),
            APT,
            json!({
                "name": names(&list),
                "state": "absent",
                "purge": false,
            }),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_debian_versions_are_pinned() {
        assert_eq!(
            pinned("nginx", "1.22.1-9+deb12u9"),
            "nginx=1.22.1-9+deb12u9"
        );
        assert_eq!(pinned("libc6", "2:2.36-9~bpo1"), "libc6=2:2.36-9~bpo1");
        for hostile in [
            "",
            "latest",
            "1.0 nginx-extras",
            "1.0;rm",
            "{{ x }}",
            "1.0\n- y",
        ] {
            assert_eq!(pinned("nginx", hostile), "nginx", "{hostile:?}");
        }
    }
}
