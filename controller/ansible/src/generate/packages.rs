//! `ansible.builtin.apt` tasks: install what was added by hand (dependencies follow),
//! upgrade what was upgraded, remove what was removed.

use fluid_client::snapshots::{DiffJson, PackageEntry};
use serde_json::{Value, json};

use super::{task_name, truncate_chars};
use crate::model::{TaskSpec, literal};

const APT: &str = "ansible.builtin.apt";

fn names(list: &[&str]) -> Value {
    Value::Array(list.iter().map(|n| literal(*n)).collect())
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
        let list: Vec<&str> = install.iter().map(|p| p.name.as_str()).collect();
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
        let list: Vec<&str> = upgraded.iter().map(|p| p.name.as_str()).collect();
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
                "state": "latest",
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
