//! Handlers: a service restarts when its configuration changes.
//!
//! A file written, linked or removed under `/etc/<dir>/…` notifies `Restart <dir>`
//! when `<dir>.service` is among the changed services, or the file belongs to a
//! package named `<dir>`, or the diff adds `<dir>.service` to a systemd unit
//! directory. A unit file or drop-in under `/etc/systemd/system` notifies a restart
//! of its unit (with a daemon reload). A service the diff shows inactive, masked or
//! gone is not restarted (a restart would start it).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::paths::etc_service_unit;
use super::{Ctx, FileTask, ignore_in_check_mode, task_name};
use crate::model::{TaskSpec, literal};

const SYSTEMD: &str = "ansible.builtin.systemd";

/// Adds `notify` to the file tasks that change a service's configuration; returns
/// the handlers, sorted by name.
pub(super) fn attach(ctx: &Ctx<'_>, tasks: &mut [FileTask]) -> Vec<TaskSpec> {
    // handler name → (unit, daemon_reload)
    let mut handlers: BTreeMap<String, (String, bool)> = BTreeMap::new();
    for ft in tasks.iter_mut().filter(|t| t.content_written) {
        let Some((unit, reload)) = unit_for(ctx, &ft.path, ft.package.as_deref()) else {
            continue;
        };
        if !should_restart(ctx, &unit) {
            continue;
        }
        let name = task_name(&format!("Restart {unit}"));
        notify(&mut ft.task, &name);
        let entry = handlers.entry(name).or_insert((unit, false));
        entry.1 |= reload;
    }
    handlers
        .into_iter()
        .map(|(name, (unit, reload))| {
            let mut params = json!({
                "name": literal(format!("{unit}.service")),
                "state": "restarted",
            });
            if reload && let Some(m) = params.as_object_mut() {
                m.insert("daemon_reload".into(), json!(true));
            }
            TaskSpec::new(name, SYSTEMD, params)
                .with_option("ignore_errors", ignore_in_check_mode())
                .into_handler()
        })
        .collect()
}

fn notify(task: &mut TaskSpec, handler: &str) {
    let entry = task
        .options
        .entry("notify")
        .or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(list) = entry
        && !list.iter().any(|v| v.as_str() == Some(handler))
    {
        list.push(json!(handler));
    }
}

/// The unit (without `.service`) whose configuration `path` is, and whether systemd
/// must reload its unit files first.
fn unit_for(ctx: &Ctx<'_>, path: &str, package: Option<&str>) -> Option<(String, bool)> {
    if let Some(unit) = etc_service_unit(path) {
        return Some((unit.to_owned(), true));
    }
    let rest = path.strip_prefix("/etc/")?;
    let (dir, inside) = rest.split_once('/')?;
    if dir.is_empty() || inside.is_empty() || dir == "systemd" {
        return None;
    }
    let unit = format!("{dir}.service");
    let known = ctx.services.contains_key(unit.as_str())
        || package == Some(dir)
        || ["/lib/systemd/system", "/usr/lib/systemd/system"]
            .iter()
            .any(|d| ctx.added_paths.contains(format!("{d}/{unit}").as_str()));
    known.then(|| (dir.to_owned(), false))
}

fn should_restart(ctx: &Ctx<'_>, unit: &str) -> bool {
    match ctx.services.get(format!("{unit}.service").as_str()) {
        None => true,
        Some(s) => s.state != "inactive" && !matches!(s.enablement.as_str(), "masked" | "absent"),
    }
}
