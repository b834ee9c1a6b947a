//! A playbook as fluid stores it: one play (`hosts`, `become`) with tasks and handlers.
//! Each task is one module call (`module: params`) plus task keywords (`options`).
//!
//! Strings that Ansible must not template are written in `params`/`options` as
//! `{"__ansible_unsafe": "…"}` (Ansible's own JSON form of an unsafe string); the
//! YAML export turns them into `!unsafe` scalars. The generator uses it for every
//! string that comes from a sandbox and holds `{{`, `{%` or `{#`, so file content like
//! a Jinja template is copied as-is and never evaluated on the controller.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Key of the JSON object that stands for an unsafe (never templated) string.
pub const UNSAFE_KEY: &str = "__ansible_unsafe";

/// One task or handler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// `name:` of the task (handlers are notified by it).
    pub name: String,
    /// Module, e.g. `ansible.builtin.copy`.
    pub module: String,
    /// The module's arguments: an object, or null for none.
    pub params: Value,
    /// Task keywords beside the module (`notify`, `tags`, `when`, …).
    #[serde(default)]
    pub options: Map<String, Value>,
    /// Under `handlers:` rather than `tasks:`.
    #[serde(default)]
    pub handler: bool,
}

impl TaskSpec {
    /// A task calling `module` with `params`, without keywords.
    pub fn new(name: impl Into<String>, module: impl Into<String>, params: Value) -> Self {
        Self {
            name: name.into(),
            module: module.into(),
            params,
            options: Map::new(),
            handler: false,
        }
    }

    /// The same task with one more keyword.
    pub fn with_option(mut self, key: &str, value: Value) -> Self {
        self.options.insert(key.to_owned(), value);
        self
    }

    /// The same task as a handler.
    pub fn into_handler(mut self) -> Self {
        self.handler = true;
        self
    }

    /// The task of an API row. `options` that are not an object count as none (the
    /// API validated them when they were stored).
    pub fn from_api(t: &fluid_client::ansible::Task) -> Self {
        Self {
            name: t.name.clone(),
            module: t.module.clone(),
            params: t.params.clone(),
            options: t.options.as_object().cloned().unwrap_or_default(),
            handler: t.handler,
        }
    }
}

/// A whole playbook: one play.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlaybookDoc {
    /// The play's name (the playbook's name).
    pub name: String,
    /// Host pattern, e.g. `all`.
    pub hosts: String,
    /// `become:` of the play.
    pub r#become: bool,
    /// Tasks, in order.
    pub tasks: Vec<TaskSpec>,
    /// Handlers, in order.
    pub handlers: Vec<TaskSpec>,
}

impl PlaybookDoc {
    /// A playbook from stored tasks: those with `handler` set go under `handlers:`,
    /// the others under `tasks:`, each in the given order.
    pub fn from_tasks(
        name: impl Into<String>,
        hosts: impl Into<String>,
        r#become: bool,
        all: impl IntoIterator<Item = TaskSpec>,
    ) -> Self {
        let (handlers, tasks) = all.into_iter().partition(|t| t.handler);
        Self {
            name: name.into(),
            hosts: hosts.into(),
            r#become,
            tasks,
            handlers,
        }
    }
}

/// True when Ansible would treat `s` as a template (it holds a Jinja delimiter).
pub fn has_template_markers(s: &str) -> bool {
    s.contains("{{") || s.contains("{%") || s.contains("{#")
}

/// `s` as an unsafe string: `{"__ansible_unsafe": s}`.
pub fn unsafe_string(s: impl Into<String>) -> Value {
    let mut m = Map::new();
    m.insert(UNSAFE_KEY.to_owned(), Value::String(s.into()));
    Value::Object(m)
}

/// `s` as a value Ansible uses literally: a plain JSON string, or an unsafe one when
/// it holds template delimiters.
pub fn literal(s: impl Into<String>) -> Value {
    let s = s.into();
    if has_template_markers(&s) {
        unsafe_string(s)
    } else {
        Value::String(s)
    }
}

/// The text of an unsafe-string object (`{"__ansible_unsafe": "…"}` and nothing else).
pub fn as_unsafe_string(v: &Value) -> Option<&str> {
    let m = v.as_object()?;
    if m.len() != 1 {
        return None;
    }
    m.get(UNSAFE_KEY)?.as_str()
}
