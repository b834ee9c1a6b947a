//! Validation of what a request may put into a playbook: names, modules, host
//! patterns, tasks. Every error names its field and says what is accepted (a 400).

use serde_json::Value;

pub use crate::error::ValidationError;
use crate::model::{PlaybookDoc, TaskSpec};

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_untrusted;
pub mod untrusted;

pub use untrusted::{check_untrusted_playbook, check_untrusted_task};

/// Longest task name, in characters.
pub const TASK_NAME_MAX: usize = 256;
/// Largest `params` of a task, serialised as JSON.
pub const PARAMS_MAX_BYTES: usize = 256 * 1024;
/// Largest `options` of a task, serialised as JSON.
pub const OPTIONS_MAX_BYTES: usize = 64 * 1024;
/// Longest host pattern.
pub const HOSTS_MAX: usize = 256;
/// Most tasks (plus handlers) in one playbook.
pub const TASKS_MAX: usize = 10_000;

/// Task keywords a task may carry in `options`, in the order the YAML export writes
/// them. `listen` is for handlers only.
pub const TASK_KEYWORDS: &[&str] = &[
    "listen",
    "notify",
    "tags",
    "when",
    "become",
    "become_user",
    "delegate_to",
    "run_once",
    "environment",
    "vars",
    "loop",
    "register",
    "check_mode",
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

/// Words Ansible reads as task keywords: a module of that name would be taken for one.
const RESERVED_MODULE_NAMES: &[&str] = &[
    "action",
    "always",
    "any_errors_fatal",
    "args",
    "async",
    "become",
    "become_exe",
    "become_flags",
    "become_method",
    "become_user",
    "block",
    "changed_when",
    "check_mode",
    "collections",
    "connection",
    "debugger",
    "delay",
    "delegate_facts",
    "delegate_to",
    "diff",
    "environment",
    "failed_when",
    "ignore_errors",
    "ignore_unreachable",
    "listen",
    "local_action",
    "loop",
    "loop_control",
    "module_defaults",
    "name",
    "no_log",
    "notify",
    "poll",
    "port",
    "register",
    "remote_user",
    "rescue",
    "retries",
    "run_once",
    "tags",
    "throttle",
    "timeout",
    "until",
    "vars",
    "when",
];

/// A playbook name: `[A-Za-z0-9][A-Za-z0-9._-]{0,62}`, without `..` (so never `/`,
/// NUL or a path of its own).
pub fn validate_playbook_name(s: &str) -> Result<(), ValidationError> {
    let field = "name";
    if s.is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if s.len() > 63 {
        return Err(ValidationError::new(field, "must be at most 63 characters"));
    }
    let first_ok = s.as_bytes()[0].is_ascii_alphanumeric();
    let all_ok = s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !first_ok || !all_ok || s.contains("..") {
        return Err(ValidationError::new(
            field,
            format!(
                "{s:?} is not a playbook name (a letter or digit, then letters, digits, '.', '_' or '-'; no '..' or '/')"
            ),
        ));
    }
    Ok(())
}

/// A module name: `[a-z_][a-z0-9_]*` in one to three dotted parts (`copy`,
/// `ansible.builtin.apt`, `community.general.ufw`), not a task keyword.
pub fn validate_module(s: &str) -> Result<(), ValidationError> {
    let field = "module";
    let bad = || {
        ValidationError::new(
            field,
            format!(
                "{s:?} is not a module name (lower-case [a-z_][a-z0-9_]* in one to three dotted parts, e.g. copy or ansible.builtin.apt)"
            ),
        )
    };
    if s.is_empty() || s.len() > 128 {
        return Err(bad());
    }
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() > 3 {
        return Err(bad());
    }
    for p in &parts {
        let mut bytes = p.bytes();
        let first_ok = bytes
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
        if !first_ok || !bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
            return Err(bad());
        }
    }
    if parts.len() == 1 && (RESERVED_MODULE_NAMES.contains(&s) || s.starts_with("with_")) {
        return Err(ValidationError::new(
            field,
            format!("{s:?} is a task keyword, not a module"),
        ));
    }
    Ok(())
}

/// An Ansible host pattern (`all`, `web`, `web:&prod:!db1`, `~web[0-9]+`, …):
/// 1-256 characters from letters, digits and `. _ - : , & ! * ~ [ ] ( ) ^ $ ? + | \`.
/// No spaces, quotes, braces (templates) or control characters.
pub fn validate_hosts(s: &str) -> Result<(), ValidationError> {
    let field = "hosts";
    if s.is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if s.len() > HOSTS_MAX {
        return Err(ValidationError::new(
            field,
            format!("must be at most {HOSTS_MAX} characters"),
        ));
    }
    if let Some(c) = s.chars().find(|c| !is_host_pattern_char(*c)) {
        return Err(ValidationError::new(
            field,
            format!(
                "{c:?} is not allowed in a host pattern (letters, digits and . _ - : , & ! * ~ [ ] ( ) ^ $ ? + | \\)"
            ),
        ));
    }
    Ok(())
}

fn is_host_pattern_char(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            '.' | '_'
                | '-'
                | ':'
                | ','
                | '&'
                | '!'
                | '*'
                | '~'
                | '['
                | ']'
                | '('
                | ')'
                | '^'
                | '$'
                | '?'
                | '+'
                | '|'
                | '\\'
        )
}

/// A task name: 1-256 characters on one line.
pub fn validate_task_name(s: &str) -> Result<(), ValidationError> {
    let field = "name";
    if s.trim().is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if s.chars().count() > TASK_NAME_MAX {
        return Err(ValidationError::new(
            field,
            format!("must be at most {TASK_NAME_MAX} characters"),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(ValidationError::new(
            field,
            "must be one line without control characters",
        ));
    }
    Ok(())
}

/// A task's `params`: an object (or null), at most 256 KiB as JSON, with sane keys.
pub fn validate_params(v: &Value) -> Result<(), ValidationError> {
    let field = "params";
    match v {
        Value::Null => Ok(()),
        Value::Object(_) => {
            let size = serde_json::to_vec(v).map(|b| b.len()).unwrap_or(usize::MAX);
            if size > PARAMS_MAX_BYTES {
                return Err(ValidationError::new(
                    field,
                    format!(
                        "must be at most {PARAMS_MAX_BYTES} bytes as JSON (is {size}); large files belong in artefacts"
                    ),
                ));
            }
            check_keys(v, field)
        }
        _ => Err(ValidationError::new(
            field,
            "must be an object of the module's arguments (or null)",
        )),
    }
}

/// `options` of a request: absent/null (none) or an object; returns the object.
pub fn options_object(
    v: Option<&Value>,
) -> Result<serde_json::Map<String, Value>, ValidationError> {
    match v {
        None | Some(Value::Null) => Ok(serde_json::Map::new()),
        Some(Value::Object(m)) => Ok(m.clone()),
        Some(_) => Err(ValidationError::new(
            "options",
            "must be an object of task keywords (notify, tags, when, …)",
        )),
    }
}

/// A whole task: its name, module, params and options (keywords from
/// [`TASK_KEYWORDS`]; `listen` only on handlers).
pub fn validate_task(t: &TaskSpec) -> Result<(), ValidationError> {
    validate_task_name(&t.name)?;
    validate_module(&t.module)?;
    validate_params(&t.params)?;
    let size = serde_json::to_vec(&t.options)
        .map(|b| b.len())
        .unwrap_or(usize::MAX);
    if size > OPTIONS_MAX_BYTES {
        return Err(ValidationError::new(
            "options",
            format!("must be at most {OPTIONS_MAX_BYTES} bytes as JSON"),
        ));
    }
    for (k, v) in &t.options {
        let field = format!("options.{k}");
        if !TASK_KEYWORDS.contains(&k.as_str()) {
            return Err(ValidationError::new(
                field,
                format!(
                    "not an allowed task keyword (allowed: {})",
                    TASK_KEYWORDS.join(", ")
                ),
            ));
        }
        if k == "listen" && !t.handler {
            return Err(ValidationError::new(field, "only handlers listen"));
        }
        check_option(k, v, &field)?;
        check_keys(v, &field)?;
    }
    Ok(())
}

/// A whole playbook: name, hosts and every task and handler.
pub fn validate_playbook(p: &PlaybookDoc) -> Result<(), ValidationError> {
    validate_playbook_name(&p.name)?;
    validate_hosts(&p.hosts)?;
    if p.tasks.len() + p.handlers.len() > TASKS_MAX {
        return Err(ValidationError::new(
            "tasks",
            format!("at most {TASKS_MAX} tasks and handlers"),
        ));
    }
    for (i, t) in p.tasks.iter().enumerate() {
        validate_task(t).map_err(|e| e.within(&format!("tasks[{i}]")))?;
        if t.handler {
            return Err(ValidationError::new(
                format!("tasks[{i}]"),
                "a handler among the tasks",
            ));
        }
    }
    for (i, t) in p.handlers.iter().enumerate() {
        validate_task(t).map_err(|e| e.within(&format!("handlers[{i}]")))?;
    }
    Ok(())
}

fn is_string_or_strings(v: &Value) -> bool {
    match v {
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => a.iter().all(|x| x.as_str().is_some_and(|s| !s.is_empty())),
        _ => false,
    }
}

fn check_option(k: &str, v: &Value, field: &str) -> Result<(), ValidationError> {
    let ok = match k {
        "notify" | "listen" | "tags" => is_string_or_strings(v),
        "register" => v.as_str().is_some_and(is_identifier),
        "become_user" | "delegate_to" => v.as_str().is_some_and(|s| !s.is_empty()),
        "become" | "run_once" | "check_mode" | "diff" | "no_log" | "any_errors_fatal"
        | "ignore_errors" => v.is_boolean() || v.is_string(),
        "retries" | "delay" | "timeout" => v.is_u64() || v.is_string(),
        "vars" => v.is_object(),
        "environment" => v.is_object() || v.is_string() || v.is_array(),
        _ => !v.is_null(),
    };
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            field,
            match k {
                "notify" | "listen" | "tags" => "must be a string or a list of strings",
                "register" => "must be a variable name ([A-Za-z_][A-Za-z0-9_]*)",
                "become_user" | "delegate_to" => "must be a non-empty string",
                "retries" | "delay" | "timeout" => "must be a non-negative integer or a template",
                "vars" => "must be an object",
                "environment" => "must be an object (or a template)",
                _ => "must be a boolean or a template",
            },
        ))
    }
}

fn is_identifier(s: &str) -> bool {
    let mut b = s.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
        && s.len() <= 128
}

/// Object keys anywhere in `v`: 1-256 characters, no control characters.
fn check_keys(v: &Value, field: &str) -> Result<(), ValidationError> {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k.is_empty() || k.len() > 256 || k.chars().any(char::is_control) {
                    return Err(ValidationError::new(
                        field,
                        format!("key {k:?}: keys are 1-256 characters without control characters"),
                    ));
                }
                check_keys(x, field)?;
            }
            Ok(())
        }
        Value::Array(a) => a.iter().try_for_each(|x| check_keys(x, field)),
        _ => Ok(()),
    }
}
