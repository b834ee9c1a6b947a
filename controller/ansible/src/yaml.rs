//! A [`PlaybookDoc`] as Ansible YAML: one play, tasks as `{name, <module>: params,
//! …options}`, emitted by `serde_norway`.
//!
//! Two things make the text safe for Ansible's YAML 1.1 loader (PyYAML):
//! - `serde_norway` follows YAML 1.2, where `yes`, `on`, `1:20`, `2024-01-01` or `=`
//!   are plain strings; YAML 1.1 reads them as booleans, numbers, dates or errors. Such
//!   strings are emitted single-quoted ([`yaml11_needs_quotes`]).
//! - `{"__ansible_unsafe": s}` becomes `!unsafe s`, which Ansible never templates.

use std::fmt::Write as _;

use serde_json::{Map, Value as Json};
use serde_norway::Value as Yaml;
use serde_norway::value::{Tag, TaggedValue};

use crate::error::YamlError;
use crate::model::{PlaybookDoc, TaskSpec, as_unsafe_string};
use crate::validate::{TASK_KEYWORDS, validate_playbook};

mod quoting;
#[cfg(test)]
mod tests;

pub use quoting::yaml11_needs_quotes;

/// Module arguments written first, in this order; the others follow alphabetically,
/// and `content` (often long) comes last.
const PARAM_ORDER: &[&str] = &[
    "name",
    "path",
    "dest",
    "src",
    "enabled",
    "masked",
    "state",
    "daemon_reload",
    "force",
    "mode",
    "owner",
    "group",
    "update_cache",
    "cache_valid_time",
    "purge",
    "autoremove",
    "cmd",
    "chdir",
];
const PARAM_LAST: &str = "content";

/// The playbook as YAML (validated first: invalid input is [`YamlError::Invalid`]).
pub fn to_yaml(p: &PlaybookDoc) -> Result<String, YamlError> {
    validate_playbook(p)?;
    let mut em = Emitter::new(p);
    let mut play = serde_norway::Mapping::new();
    play.insert(Yaml::from("name"), em.string(&p.name));
    play.insert(Yaml::from("hosts"), em.string(&p.hosts));
    play.insert(Yaml::from("become"), Yaml::Bool(p.r#become));
    // No task of a fluid playbook reads facts (every string is `!unsafe`, never
    // templated; modules that need one, like `package`, gather it themselves), and
    // gathering them costs each run the longest step on a slow host.
    play.insert(Yaml::from("gather_facts"), Yaml::Bool(false));
    let tasks = p.tasks.iter().map(|t| em.task(t)).collect();
    play.insert(Yaml::from("tasks"), Yaml::Sequence(tasks));
    if !p.handlers.is_empty() {
        let handlers = p.handlers.iter().map(|t| em.task(t)).collect();
        play.insert(Yaml::from("handlers"), Yaml::Sequence(handlers));
    }
    let doc = Yaml::Sequence(vec![Yaml::Mapping(play)]);
    let text = serde_norway::to_string(&doc).map_err(|e| YamlError::Emit(e.to_string()))?;
    Ok(em.finish(&text))
}

/// Builds the YAML tree; strings YAML 1.1 would misread are replaced by placeholders
/// (`<marker>q<n><marker>`, a private-use character the playbook does not contain)
/// and put back single-quoted in the emitted text.
struct Emitter {
    marker: char,
    quoted: Vec<String>,
}

impl Emitter {
    fn new(p: &PlaybookDoc) -> Self {
        let all = serde_json::to_string(p).unwrap_or_default();
        let marker = ('\u{E000}'..='\u{F8FF}')
            .find(|c| !all.contains(*c))
            .unwrap_or('\u{E000}');
        Self {
            marker,
            quoted: Vec::new(),
        }
    }

    fn string(&mut self, s: &str) -> Yaml {
        if yaml11_needs_quotes(s) {
            let m = self.marker;
            let placeholder = format!("{m}q{}{m}", self.quoted.len());
            self.quoted.push(s.to_owned());
            Yaml::String(placeholder)
        } else {
            Yaml::String(s.to_owned())
        }
    }

    fn value(&mut self, v: &Json) -> Yaml {
        if let Some(s) = as_unsafe_string(v) {
            return Yaml::Tagged(Box::new(TaggedValue {
                tag: Tag::new("unsafe"),
                value: Yaml::String(s.to_owned()),
            }));
        }
        match v {
            Json::Null => Yaml::Null,
            Json::Bool(b) => Yaml::Bool(*b),
            Json::Number(n) => {
                if let Some(u) = n.as_u64() {
                    Yaml::from(u)
                } else if let Some(i) = n.as_i64() {
                    Yaml::from(i)
                } else {
                    Yaml::from(n.as_f64().unwrap_or(0.0))
                }
            }
            Json::String(s) => self.string(s),
            Json::Array(a) => Yaml::Sequence(a.iter().map(|x| self.value(x)).collect()),
            Json::Object(m) => {
                let mut out = serde_norway::Mapping::new();
                for (k, x) in m {
                    let k = self.string(k);
                    out.insert(k, self.value(x));
                }
                Yaml::Mapping(out)
            }
        }
    }

    fn ordered(
        &mut self,
        m: &Map<String, Json>,
        order: &[&str],
        last: Option<&str>,
    ) -> Vec<(Yaml, Yaml)> {
        let mut keys: Vec<&String> = m.keys().collect();
        keys.sort_by_key(|k| {
            let rank = order.iter().position(|o| *o == k.as_str()).unwrap_or(
                if Some(k.as_str()) == last {
                    order.len() + 1
                } else {
                    order.len()
                },
            );
            (rank, (*k).clone())
        });
        keys.into_iter()
            .filter_map(|k| m.get(k).map(|v| (k, v)))
            .map(|(k, v)| (self.string(k), self.value(v)))
            .collect()
    }

    fn task(&mut self, t: &TaskSpec) -> Yaml {
        let mut out = serde_norway::Mapping::new();
        out.insert(Yaml::from("name"), self.string(&t.name));
        let params = match &t.params {
            Json::Object(m) if as_unsafe_string(&t.params).is_none() => Yaml::Mapping(
                self.ordered(m, PARAM_ORDER, Some(PARAM_LAST))
                    .into_iter()
                    .collect(),
            ),
            other => self.value(other),
        };
        out.insert(self.string(&t.module), params);
        for (k, v) in self.ordered(&t.options, TASK_KEYWORDS, None) {
            out.insert(k, v);
        }
        Yaml::Mapping(out)
    }

    fn finish(&self, emitted: &str) -> String {
        let mut text = String::with_capacity(emitted.len() + 8);
        text.push_str("---\n");
        if self.quoted.is_empty() {
            text.push_str(emitted);
            return text;
        }
        let m = self.marker;
        let mut rest = emitted;
        while let Some(start) = rest.find(m) {
            text.push_str(&rest[..start]);
            let after = &rest[start + m.len_utf8()..];
            let replaced = after
                .strip_prefix('q')
                .and_then(|a| a.find(m).map(|end| (&a[..end], &a[end + m.len_utf8()..])))
                .and_then(|(n, tail)| {
                    let s = self.quoted.get(n.parse::<usize>().ok()?)?;
                    Some((s, tail))
                });
            match replaced {
                Some((s, tail)) => {
                    let _ = write!(text, "'{}'", s.replace('\'', "''"));
                    rest = tail;
                }
                None => {
                    text.push(m);
                    rest = after;
                }
            }
        }
        text.push_str(rest);
        text
    }
}
