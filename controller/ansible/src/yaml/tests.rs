use serde_json::{Value as Json, json};
use serde_norway::Value as Yaml;

use super::*;
use crate::model::unsafe_string;

/// Strings that must survive YAML (serde_norway and YAML 1.1 readers alike).
pub(crate) const TRICKY: &[&str] = &[
    "yes",
    "no",
    "on",
    "off",
    "Yes",
    "NO",
    "On",
    "OFF",
    "y",
    "n",
    "true",
    "False",
    "null",
    "Null",
    "~",
    "",
    "1:20",
    "190:20:30",
    "2024-01-01",
    "2001-12-14t21:59:43.10-05:00",
    "1_000",
    "0b101",
    "0x1F",
    "0o17",
    "0644",
    "0755",
    "017",
    "07_1",
    "1e3",
    "1.5",
    "6.8523015e+5",
    "-.inf",
    ".NaN",
    ".5",
    "1_0.5",
    "=",
    "<<",
    "- x",
    "a: b",
    "#c",
    "@x",
    "`x",
    "%x",
    "!x",
    "*x",
    "&x",
    "{x}",
    "[x]",
    "x #y",
    " lead",
    "trail ",
    "tab\there",
    "multi\nline\n",
    "multi\nline",
    "  indented\nfirst\n",
    "trailing spaces  \nx\n",
    "crlf\r\nline\r\n",
    "\n\nblank-start\n",
    "end\n\n\n",
    "unicodé ✓\n",
    "\u{1b}[0m esc\n",
    "nel\u{85}x",
    "bom\u{feff}x",
    "quote ' and \" and \\",
    "'single'",
    "\"double\"",
    "\u{e000}q0\u{e000}",
    "{{ not a template }}",
    "{% raw %}",
    "\t\tleading tabs\n",
    "#!/bin/sh\necho hi\n",
];

fn playbook(tasks: Vec<TaskSpec>) -> PlaybookDoc {
    PlaybookDoc::from_tasks("site", "all", true, tasks)
}

fn parse(text: &str) -> Yaml {
    serde_norway::from_str(text).expect("the output parses")
}

/// The YAML tree as JSON, with `!unsafe s` as `{"__ansible_unsafe": s}`.
fn to_json(v: &Yaml) -> Json {
    match v {
        Yaml::Null => Json::Null,
        Yaml::Bool(b) => json!(b),
        Yaml::Number(n) => serde_json::to_value(n).expect("number"),
        Yaml::String(s) => json!(s),
        Yaml::Sequence(s) => Json::Array(s.iter().map(to_json).collect()),
        Yaml::Mapping(m) => Json::Object(
            m.iter()
                .map(|(k, v)| (k.as_str().expect("string keys").to_owned(), to_json(v)))
                .collect(),
        ),
        Yaml::Tagged(t) => {
            assert_eq!(t.tag.to_string(), "!unsafe");
            unsafe_string(t.value.as_str().expect("unsafe strings"))
        }
    }
}

#[test]
fn a_play_with_tasks_and_handlers() {
    let mut p = playbook(vec![
        TaskSpec::new(
            "Copy site.conf",
            "ansible.builtin.copy",
            json!({"content": "server {}\n", "dest": "/etc/nginx/conf.d/site.conf", "mode": "0644", "owner": "root", "group": "root"}),
        )
        .with_option("notify", json!(["Restart nginx"]))
        .with_option("tags", json!(["web"])),
        TaskSpec::new("Ping", "ansible.builtin.ping", Json::Null),
    ]);
    p.handlers.push(
        TaskSpec::new(
            "Restart nginx",
            "ansible.builtin.systemd",
            json!({"name": "nginx", "state": "restarted"}),
        )
        .into_handler(),
    );
    let text = to_yaml(&p).expect("yaml");
    insta::assert_snapshot!(text);
    // name, module, then options; params in a readable order, content last.
    let copy = &text[text.find("- name: Copy").expect("task")..];
    let order: Vec<usize> = [
        "name:",
        "ansible.builtin.copy:",
        "dest:",
        "mode:",
        "owner:",
        "group:",
        "content:",
        "notify:",
        "tags:",
    ]
    .iter()
    .map(|k| copy.find(k).expect(k))
    .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
}

#[test]
fn strings_round_trip_and_yaml11_words_are_quoted() {
    let params: serde_json::Map<String, Json> = TRICKY
        .iter()
        .enumerate()
        .map(|(i, s)| (format!("k{i:02}"), json!(s)))
        .collect();
    let mut p = playbook(vec![TaskSpec::new(
        "tricky",
        "ansible.builtin.debug",
        Json::Object(params.clone()),
    )]);
    // Keys and names too.
    p.tasks.push(TaskSpec::new(
        "yes",
        "ansible.builtin.debug",
        json!({"on": "off", "0644": ["no", 1, true, null]}),
    ));
    let text = to_yaml(&p).expect("yaml");
    let back = to_json(&parse(&text));
    let tasks = &back[0]["tasks"];
    assert_eq!(
        tasks[0]["ansible.builtin.debug"],
        Json::Object(params),
        "{text}"
    );
    assert_eq!(tasks[1]["name"], json!("yes"));
    assert_eq!(
        tasks[1]["ansible.builtin.debug"],
        json!({"on": "off", "0644": ["no", 1, true, null]})
    );
    for word in ["yes", "on", "off", "1:20", "2024-01-01", "1_000", "=", "<<"] {
        assert!(
            text.contains(&format!(": '{word}'\n")),
            "{word} quoted in:\n{text}"
        );
    }
    assert!(text.contains("- name: 'yes'\n"), "{text}");
    assert!(text.contains("'on': 'off'"), "{text}");
    assert!(text.starts_with("---\n"));
}

#[test]
fn unsafe_strings_become_tagged() {
    let p = playbook(vec![TaskSpec::new(
        "Copy a template",
        "ansible.builtin.copy",
        json!({"dest": "/etc/t.j2", "content": unsafe_string("{{ lookup('pipe', 'id') }}\nline\n"), "short": unsafe_string("{{ x }}")}),
    )]);
    let text = to_yaml(&p).expect("yaml");
    assert!(text.contains("content: !unsafe |\n"), "{text}");
    assert!(text.contains("short: !unsafe '{{ x }}'"), "{text}");
    let back = to_json(&parse(&text));
    assert_eq!(
        back[0]["tasks"][0]["ansible.builtin.copy"]["content"],
        unsafe_string("{{ lookup('pipe', 'id') }}\nline\n")
    );
}

#[test]
fn invalid_playbooks_are_refused() {
    let mut p = playbook(vec![TaskSpec::new("x", "Bad", Json::Null)]);
    assert!(matches!(to_yaml(&p), Err(YamlError::Invalid(e)) if e.field == "tasks[0].module"));
    p.tasks.clear();
    p.name = "../x".into();
    assert!(matches!(to_yaml(&p), Err(YamlError::Invalid(_))));
}

#[test]
fn empty_playbook() {
    let text = to_yaml(&playbook(vec![])).expect("yaml");
    assert_eq!(
        text,
        "---\n- name: site\n  hosts: all\n  become: true\n  gather_facts: false\n  tasks: []\n"
    );
}

#[test]
fn yaml11_detection() {
    for s in [
        "yes",
        "NO",
        "1:20",
        "2024-01-01",
        "1_000",
        "=",
        "<<",
        "",
        "~",
        "0x_1",
        "+1",
        ".5",
    ] {
        assert!(yaml11_needs_quotes(s), "{s:?}");
    }
    for s in [
        "y",
        "n",
        "yess",
        "1:60x",
        "web",
        "/etc/x",
        "1.2.3",
        "2024-1-1x",
        "a\nyes",
    ] {
        assert!(!yaml11_needs_quotes(s), "{s:?}");
    }
}
