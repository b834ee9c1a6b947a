//! `ansible.builtin.systemd` tasks for the services whose enablement or state changed.
//!
//! Each carries `ignore_errors: "{{ ansible_check_mode }}"`: in a `--check` run the
//! package that brings the unit is not really installed, so the unit may not exist.

use serde_json::{Map, Value, json};

use super::{Ctx, ignore_in_check_mode, task_name};
use crate::model::{TaskSpec, literal};

const SYSTEMD: &str = "ansible.builtin.systemd";

/// One task per changed service, sorted by unit name; `daemon_reload` on each when
/// unit files were written.
pub(super) fn tasks(ctx: &Ctx<'_>, daemon_reload: bool) -> Vec<TaskSpec> {
    ctx.services
        .values()
        .filter_map(|s| {
            let mut p = Map::new();
            let mut what = Vec::new();
            if s.previous_enablement == "masked"
                && !matches!(s.enablement.as_str(), "masked" | "absent")
            {
                p.insert("masked".into(), json!(false));
                what.push("unmask");
            }
            match s.enablement.as_str() {
                "enabled" => {
                    p.insert("enabled".into(), json!(true));
                    what.push("enable");
                }
                "disabled" => {
                    p.insert("enabled".into(), json!(false));
                    what.push("disable");
                }
                "masked" => {
                    p.insert("masked".into(), json!(true));
                    what.push("mask");
                }
                // Gone with its package or unit file: nothing to run.
                "absent" => return None,
                _ => {}
            }
            let state_changed = s.previous_state != s.state;
            match (s.enablement.as_str(), s.state.as_str()) {
                ("enabled" | "static" | "indirect" | "generated", "active")
                    if s.enablement == "enabled" || state_changed =>
                {
                    p.insert("state".into(), json!("started"));
                    what.push("start");
                }
                ("disabled" | "masked", "inactive") => {
                    p.insert("state".into(), json!("stopped"));
                    what.push("stop");
                }
                (_, "inactive") if state_changed && s.previous_state == "active" => {
                    p.insert("state".into(), json!("stopped"));
                    what.push("stop");
                }
                _ => {}
            }
            if p.is_empty() {
                return None;
            }
            if daemon_reload {
                p.insert("daemon_reload".into(), json!(true));
            }
            p.insert("name".into(), literal(s.name.as_str()));
            let verbs = sentence(&what);
            Some(
                TaskSpec::new(
                    task_name(&format!("{verbs} {}", s.name)),
                    SYSTEMD,
                    Value::Object(p),
                )
                .with_option("ignore_errors", ignore_in_check_mode()),
            )
        })
        .collect()
}

/// `["enable", "start"]` → `Enable and start`.
fn sentence(words: &[&str]) -> String {
    let mut s = match words {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    };
    if let Some(first) = s.get(..1) {
        let upper = first.to_ascii_uppercase();
        s.replace_range(..1, &upper);
    }
    s
}
