use serde_json::json;

use super::untrusted::*;
use crate::model::{PlaybookDoc, TaskSpec, unsafe_string};

const ART: &str = "/var/lib/fluid/artifacts";

fn refused(t: &TaskSpec) -> String {
    check_untrusted_task(t, ART).expect_err("refused").field
}

fn shell(cmd: &str) -> TaskSpec {
    TaskSpec::new("Run", "ansible.builtin.shell", json!({"cmd": cmd}))
}

#[test]
fn controller_side_keywords_are_refused() {
    for (k, v) in [
        ("delegate_to", json!("localhost")),
        ("run_once", json!(true)),
        ("check_mode", json!(false)),
        ("connection", json!("local")),
        ("delegate_facts", json!(true)),
        ("local_action", json!("shell id")),
    ] {
        assert_eq!(
            refused(&shell("id").with_option(k, v)),
            format!("options.{k}")
        );
    }
}

#[test]
fn templates_anywhere_are_refused() {
    assert_eq!(
        refused(&shell("echo {{ lookup('pipe','id') }}")),
        "params.cmd"
    );
    assert_eq!(
        refused(&TaskSpec::new(
            "x",
            "copy",
            json!({"dest": "/x", "content": {"a": ["ok", "{% if %}"]}})
        )),
        "params.content.a[1]"
    );
    let t = TaskSpec::new(
        "{{ lookup('file','/etc/fluid/ssh_user_ca') }}",
        "ping",
        json!({}),
    );
    assert_eq!(refused(&t), "name");
    assert_eq!(
        refused(&shell("id").with_option("tags", json!(["{# x #}"]))),
        "options.tags[0]"
    );
    assert_eq!(
        refused(&shell("id").with_option("environment", json!({"A": "{{ x }}"}))),
        "options.environment.A"
    );
    // An unsafe string is never templated: it may hold anything.
    let t = TaskSpec::new(
        "x",
        "copy",
        json!({"dest": "/x", "content": unsafe_string("{{ x }}")}),
    );
    assert!(check_untrusted_task(&t, ART).is_ok());
    // Plain text with parentheses in params is not a lookup.
    assert!(check_untrusted_task(&shell("echo 'lookup(x)' | uniq"), ART).is_ok());
}

#[test]
fn conditions_call_nothing() {
    for bad in [
        "lookup('pipe','id')",
        "query ('pipe', 'id')",
        "q('pipe','id')",
        "x.__class__",
        "'a'.join(['b'])",
        "x | default('a')",
        "{{ x }}",
        "x ~ 'y'",
    ] {
        assert_eq!(
            refused(&shell("id").with_option("when", json!(bad))),
            "options.when",
            "{bad}"
        );
    }
    for (k, ok) in [
        ("when", json!("result.rc == 0 and x is defined")),
        (
            "when",
            json!(["ansible_facts.os_family == 'Debian'", "not (a or b)"]),
        ),
        ("changed_when", json!(false)),
        ("failed_when", json!("r.stdout | length > 0")),
        ("until", json!("r.rc in [0, 2]")),
    ] {
        let t = shell("id").with_option(k, ok.clone());
        assert!(check_untrusted_task(&t, ART).is_ok(), "{k}: {ok}");
    }
    assert_eq!(
        refused(&shell("id").with_option("loop", json!("lookup('fileglob', '/etc/fluid/*')"))),
        "options.loop"
    );
}

#[test]
fn variables_that_move_the_connection_are_refused() {
    for name in [
        "ansible_connection",
        "ansible_host",
        "ansible_python_interpreter",
        "ansible_ssh_common_args",
        "hostvars",
    ] {
        let t = shell("id").with_option("vars", json!({name: "local"}));
        assert_eq!(refused(&t), format!("options.vars.{name}"));
        let t = TaskSpec::new("x", "set_fact", json!({name: "local"}));
        assert_eq!(refused(&t), format!("params.{name}"));
    }
    assert!(
        check_untrusted_task(&shell("id").with_option("vars", json!({"port": 80})), ART).is_ok()
    );
}

#[test]
fn controller_modules_and_paths_are_refused() {
    for m in [
        "local_action",
        "ansible.builtin.add_host",
        "group_by",
        "include_tasks",
        "import_playbook",
        "include_vars",
        "script",
        "ansible.legacy.fetch",
    ] {
        assert_eq!(refused(&TaskSpec::new("x", m, json!({}))), "module", "{m}");
    }
    for m in ["copy", "ansible.builtin.template", "unarchive"] {
        let t = TaskSpec::new(
            "x",
            m,
            json!({"src": "/etc/fluid/pki/controller.key", "dest": "/x"}),
        );
        assert_eq!(refused(&t), "params.src", "{m}");
    }
    let art = format!("{ART}/{}", "a".repeat(64));
    let t = TaskSpec::new("x", "copy", json!({"src": art, "dest": "/x"}));
    assert!(check_untrusted_task(&t, ART).is_ok());
    let t = TaskSpec::new(
        "x",
        "copy",
        json!({"src": format!("{ART}/../pki/x"), "dest": "/x"}),
    );
    assert_eq!(refused(&t), "params.src");
    let t = TaskSpec::new(
        "x",
        "copy",
        json!({"src": "/etc/x", "dest": "/x", "remote_src": true}),
    );
    assert!(check_untrusted_task(&t, ART).is_ok());
    let t = TaskSpec::new("x", "debug", json!({"var": "lookup('pipe','id')"}));
    assert_eq!(refused(&t), "params.var");
    let t = TaskSpec::new("x", "assert", json!({"that": ["q('pipe','id')"]}));
    assert_eq!(refused(&t), "params.that[0]");
}

#[test]
fn playbooks_name_the_task() {
    let p = PlaybookDoc::from_tasks(
        "p",
        "all",
        true,
        [
            shell("id"),
            shell("id").with_option("delegate_to", json!("localhost")),
        ],
    );
    let e = check_untrusted_playbook(&p, ART).expect_err("refused");
    assert_eq!(e.field, "tasks[1].options.delegate_to");
}

/// The generator's check-mode guard is the one template an agent's (generated)
/// playbook may carry; any other `ignore_errors` expression is refused.
#[test]
fn only_the_generators_check_mode_guard_passes() {
    let guard = shell("id").with_option(
        "ignore_errors",
        json!(crate::generate::IGNORE_IN_CHECK_MODE),
    );
    assert!(check_untrusted_task(&guard, ART).is_ok());
    for other in [
        "{{ lookup('pipe','id') }}",
        "{{ ansible_check_mode or lookup('pipe','id') }}",
        "{{ ansible_check_mode }} ",
    ] {
        assert_eq!(
            refused(&shell("id").with_option("ignore_errors", json!(other))),
            "options.ignore_errors",
            "{other}"
        );
    }
}
