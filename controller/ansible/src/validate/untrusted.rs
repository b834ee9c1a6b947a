//! The stricter rules for content written by an untrusted caller (an `agent` or
//! `readonly` token): nothing it writes may run on the controller host, or be
//! templated there.
//!
//! Ansible runs some of a playbook on the controller: every template (`{{ }}`,
//! `{% %}`, and the bare expressions of `when`, `until`, `changed_when`,
//! `failed_when`, `assert: that`, `debug: var`), every lookup, action plugins that read
//! or write controller files (`copy`/`template` `src`, `fetch`, `script`,
//! `include_vars`, …), and any task whose connection is moved to the controller
//! (`delegate_to`, `local_action`, `connection`, `ansible_connection`/`ansible_host`
//! in `vars`). [`check_untrusted_task`] refuses all of these with an error that names
//! the field (a 400). Strings written as unsafe (`{"__ansible_unsafe": "…"}`, emitted
//! `!unsafe`) are never templated by Ansible and may hold anything.

use serde_json::Value;

use crate::error::ValidationError;
use crate::model::{PlaybookDoc, TaskSpec, as_unsafe_string, has_template_markers};

/// Task keywords an untrusted caller may use.
pub const UNTRUSTED_KEYWORDS: &[&str] = &[
    "listen",
    "notify",
    "tags",
    "when",
    "become",
    "become_user",
    "environment",
    "vars",
    "loop",
    "register",
    "diff",
    "no_log",
    "changed_when",
    "failed_when",
    "ignore_errors",
    "any_errors_fatal",
    "until",
    "retries",
    "delay",
    "timeout",
];

/// Keywords whose value Ansible evaluates as a Jinja expression without `{{ }}`.
const EXPRESSION_KEYWORDS: &[&str] = &["when", "until", "changed_when", "failed_when"];

/// Modules that run on the controller or change what the play runs on: refused for
/// untrusted callers whatever their arguments.
pub const CONTROLLER_MODULES: &[&str] = &[
    "local_action",
    "add_host",
    "group_by",
    "include",
    "include_tasks",
    "import_tasks",
    "include_role",
    "import_role",
    "import_playbook",
    "include_vars",
    "script",
    "fetch",
    "set_stats",
    "pause",
    "synchronize",
    "win_template",
    "win_copy",
];

/// Modules whose `src` is read on the controller unless `remote_src` is true.
const SRC_MODULES: &[&str] = &["copy", "template", "unarchive", "patch", "assemble", "uri"];

/// Variable names an untrusted caller may not set (in `vars`, `set_fact`,
/// `register`): connection variables and Ansible's magic variables.
fn is_reserved_var(name: &str) -> bool {
    name.starts_with("ansible_")
        || name.starts_with("inventory_")
        || name.starts_with('_')
        || matches!(
            name,
            "hostvars"
                | "groups"
                | "group_names"
                | "omit"
                | "play_hosts"
                | "playbook_dir"
                | "role_path"
                | "environment"
                | "lookup"
                | "query"
                | "q"
                | "vars"
        )
}

/// The module's short name (`ansible.builtin.copy` and `ansible.legacy.copy` → `copy`).
pub fn short_module(m: &str) -> &str {
    m.strip_prefix("ansible.builtin.")
        .or_else(|| m.strip_prefix("ansible.legacy."))
        .or_else(|| m.strip_prefix("ansible.posix."))
        .or_else(|| m.strip_prefix("ansible.windows."))
        .unwrap_or(m)
}

/// What an untrusted caller's `src` may be: an artefact the generator stored,
/// `<artefact_dir>/<64 hex digits>`.
fn is_artefact_path(s: &str, artefact_dir: &str) -> bool {
    let dir = artefact_dir.trim_end_matches('/');
    s.strip_prefix(dir)
        .and_then(|r| r.strip_prefix('/'))
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Refuses a template marker (or a lookup) in any string of `v`, keys included;
/// unsafe strings are literal and pass.
fn check_no_templates(v: &Value, field: &str) -> Result<(), ValidationError> {
    if as_unsafe_string(v).is_some() {
        return Ok(());
    }
    match v {
        Value::String(s) => check_string(s, field),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .try_for_each(|(i, x)| check_no_templates(x, &format!("{field}[{i}]"))),
        Value::Object(m) => {
            for (k, x) in m {
                check_string(k, field)?;
                check_no_templates(x, &format!("{field}.{k}"))?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn check_string(s: &str, field: &str) -> Result<(), ValidationError> {
    if has_template_markers(s) {
        return Err(ValidationError::new(
            field,
            "templates ({{ }}, {% %}, {# #}) are not allowed in content from an agent or readonly token: Ansible would evaluate them on the controller (write the value literally, or as {\"__ansible_unsafe\": …})",
        ));
    }
    Ok(())
}

/// Whether `s` calls `name(` (a whole word, spaces allowed before the parenthesis).
fn calls(s: &str, name: &str) -> bool {
    let b = s.as_bytes();
    let mut from = 0;
    while let Some(p) = s[from..].find(name) {
        let at = from + p;
        let before_ok = at == 0 || !(b[at - 1].is_ascii_alphanumeric() || b[at - 1] == b'_');
        let rest = s[at + name.len()..].trim_start();
        if before_ok && rest.starts_with('(') {
            return true;
        }
        from = at + name.len();
    }
    false
}

/// Refuses `lookup(`, `query(` and `q(` in `s`: a lookup runs on the controller.
fn check_lookups(s: &str, field: &str) -> Result<(), ValidationError> {
    if ["lookup", "query", "q"].iter().any(|n| calls(s, n)) {
        return Err(ValidationError::new(
            field,
            "lookups (lookup(), query(), q()) are not allowed in content from an agent or readonly token: they run on the controller",
        ));
    }
    Ok(())
}

fn check_lookups_in(v: &Value, field: &str) -> Result<(), ValidationError> {
    match v {
        Value::String(s) => check_lookups(s, field),
        Value::Array(a) => a.iter().try_for_each(|x| check_lookups_in(x, field)),
        Value::Object(m) => m.values().try_for_each(|x| check_lookups_in(x, field)),
        _ => Ok(()),
    }
}

/// A bare Jinja expression (a condition): identifiers, attributes, literals,
/// comparisons, `and`/`or`/`not`/`in`/`is`, grouping parentheses and filters or tests
/// without arguments. No call (`x(…)`) of any kind, so no lookup, no method.
pub fn check_expression(s: &str, field: &str) -> Result<(), ValidationError> {
    check_string(s, field)?;
    check_lookups(s, field)?;
    let bad = |why: &str| {
        ValidationError::new(
            field,
            format!(
                "{why}: a condition from an agent or readonly token may compare variables and literals (e.g. result.rc == 0, x is defined) but call nothing"
            ),
        )
    };
    let b = s.as_bytes();
    let mut i = 0;
    // Whether the previous token can be called (an identifier, `)` or `]`).
    let mut callable = false;
    while i < b.len() {
        let c = b[i];
        match c {
            b' ' | b'\t' => i += 1,
            b'\'' | b'"' => {
                let q = c;
                i += 1;
                while i < b.len() && b[i] != q {
                    if b[i] == b'\\' {
                        return Err(bad("escapes in strings are not allowed"));
                    }
                    i += 1;
                }
                if i >= b.len() {
                    return Err(bad("an unterminated string"));
                }
                i += 1;
                callable = false;
            }
            b'(' => {
                if callable {
                    return Err(bad("calls are not allowed"));
                }
                i += 1;
            }
            b')' | b']' => {
                i += 1;
                callable = true;
            }
            b'[' => {
                i += 1;
                callable = false;
            }
            b'.' | b'|' | b',' | b'=' | b'!' | b'<' | b'>' | b'+' | b'-' | b'*' | b'/' | b'%' => {
                i += 1;
                callable = false;
            }
            c if c.is_ascii_alphanumeric() || c == b'_' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                let word = &s[start..i];
                if word.starts_with("__") {
                    return Err(bad("dunder names are not allowed"));
                }
                callable = !matches!(word, "and" | "or" | "not" | "in" | "is" | "if" | "else");
            }
            _ => return Err(bad(&format!("{:?} is not allowed", c as char))),
        }
    }
    Ok(())
}

fn check_expression_value(v: &Value, field: &str) -> Result<(), ValidationError> {
    match v {
        Value::String(s) => check_expression(s, field),
        Value::Bool(_) | Value::Number(_) => Ok(()),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .try_for_each(|(i, x)| check_expression_value(x, &format!("{field}[{i}]"))),
        _ => Err(ValidationError::new(
            field,
            "must be a condition (a string), a boolean or a list of them",
        )),
    }
}

fn truthy(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => matches!(
            s.to_ascii_lowercase().as_str(),
            "yes" | "true" | "on" | "1" | "y"
        ),
        Some(Value::Number(n)) => n.as_u64() == Some(1),
        _ => false,
    }
}

/// Checks a task written by an untrusted caller (on top of
/// [`super::validate_task`]). `artefact_dir` is where generated artefacts live (the
/// only `src` such a caller may name).
pub fn check_untrusted_task(t: &TaskSpec, artefact_dir: &str) -> Result<(), ValidationError> {
    check_string(&t.name, "name")?;
    let module = short_module(&t.module);
    if CONTROLLER_MODULES.contains(&module) {
        return Err(ValidationError::new(
            "module",
            format!(
                "{} runs on the controller (or changes what the play runs on): not allowed for an agent or readonly token",
                t.module
            ),
        ));
    }
    check_no_templates(&t.params, "params")?;
    if let Value::Object(p) = &t.params {
        if SRC_MODULES.contains(&module)
            && let Some(src) = p.get("src")
            && !truthy(p.get("remote_src"))
        {
            let ok = src
                .as_str()
                .or_else(|| as_unsafe_string(src))
                .is_some_and(|s| is_artefact_path(s, artefact_dir));
            if !ok {
                return Err(ValidationError::new(
                    "params.src",
                    format!(
                        "{module} reads src on the controller: an agent or readonly token may name only a generated artefact ({}/<sha256>), or set remote_src: true",
                        artefact_dir.trim_end_matches('/')
                    ),
                ));
            }
        }
        match module {
            "set_fact" => {
                if let Some(k) = p.keys().find(|k| is_reserved_var(k)) {
                    return Err(ValidationError::new(
                        format!("params.{k}"),
                        "connection and magic variables (ansible_*, inventory_*, hostvars, …) may not be set by an agent or readonly token",
                    ));
                }
            }
            "debug" if p.contains_key("var") => {
                let v = p.get("var").and_then(Value::as_str).unwrap_or_default();
                check_expression(v, "params.var")?;
            }
            "assert" => {
                if let Some(that) = p.get("that") {
                    check_expression_value(that, "params.that")?;
                }
            }
            _ => {}
        }
    }
    for (k, v) in &t.options {
        let field = format!("options.{k}");
        if !UNTRUSTED_KEYWORDS.contains(&k.as_str()) {
            let why = match k.as_str() {
                "delegate_to" | "run_once" => {
                    "delegation runs the task elsewhere (the controller included)"
                }
                "check_mode" => "check_mode: false would really run a task in a check job",
                _ => "not a keyword an agent or readonly token may use",
            };
            return Err(ValidationError::new(
                field,
                format!(
                    "{why}: not allowed for an agent or readonly token (allowed: {})",
                    UNTRUSTED_KEYWORDS.join(", ")
                ),
            ));
        }
        if EXPRESSION_KEYWORDS.contains(&k.as_str()) {
            check_expression_value(v, &field)?;
            continue;
        }
        if k == "vars"
            && let Value::Object(m) = v
            && let Some(name) = m.keys().find(|n| is_reserved_var(n))
        {
            return Err(ValidationError::new(
                format!("{field}.{name}"),
                "connection and magic variables (ansible_*, inventory_*, hostvars, …) may not be set by an agent or readonly token",
            ));
        }
        if k == "loop" {
            check_lookups_in(v, &field)?;
        }
        if k == "register"
            && let Some(name) = v.as_str()
            && is_reserved_var(name)
        {
            return Err(ValidationError::new(
                field,
                "may not name a connection or magic variable",
            ));
        }
        // The generator's own `ignore_errors: "{{ ansible_check_mode }}"` (a check run
        // must not stop at a task whose package is not installed yet): a constant
        // expression reading one boolean, which evaluates nothing the caller chose.
        if k == "ignore_errors" && v.as_str() == Some(crate::generate::IGNORE_IN_CHECK_MODE) {
            continue;
        }
        check_no_templates(v, &field)?;
    }
    Ok(())
}

/// A whole playbook from an untrusted caller: its name and hosts, then each task and
/// handler ([`check_untrusted_task`]).
pub fn check_untrusted_playbook(
    p: &PlaybookDoc,
    artefact_dir: &str,
) -> Result<(), ValidationError> {
    check_string(&p.name, "name")?;
    check_string(&p.hosts, "hosts")?;
    for (i, t) in p.tasks.iter().enumerate() {
        check_untrusted_task(t, artefact_dir).map_err(|e| e.within(&format!("tasks[{i}]")))?;
    }
    for (i, t) in p.handlers.iter().enumerate() {
        check_untrusted_task(t, artefact_dir).map_err(|e| e.within(&format!("handlers[{i}]")))?;
    }
    Ok(())
}
