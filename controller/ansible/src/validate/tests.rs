use serde_json::json;

use super::*;

fn task(module: &str) -> TaskSpec {
    TaskSpec::new("A task", module, json!({"dest": "/etc/x"}))
}

#[test]
fn playbook_names() {
    for ok in ["a", "web-1", "SBX-abc.v2_final", &"a".repeat(63)] {
        assert!(validate_playbook_name(ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        "-a",
        ".a",
        "a/b",
        "a..b",
        "..",
        "a b",
        "a\0",
        "é",
        &"a".repeat(64),
        "../etc",
    ] {
        let e = validate_playbook_name(bad).expect_err(bad);
        assert_eq!(e.field, "name");
    }
}

#[test]
fn modules() {
    for ok in [
        "copy",
        "ansible.builtin.apt",
        "community.general.ufw",
        "_x",
        "a1.b_2.c3",
    ] {
        assert!(validate_module(ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        "Copy",
        "1copy",
        "a.b.c.d",
        "a..b",
        ".a",
        "a.",
        "a-b",
        "a b",
        "a/b",
        "name",
        "when",
        "notify",
        "with_items",
        "block",
    ] {
        let e = validate_module(bad).expect_err(bad);
        assert_eq!(e.field, "module");
    }
    assert!(
        validate_module("when")
            .expect_err("must fail")
            .to_string()
            .contains("task keyword")
    );
}

#[test]
fn hosts_patterns() {
    for ok in [
        "all",
        "web",
        "web:&prod:!db1",
        "~web[0-9]+",
        "web[0:2]",
        "a,b",
        "*.example.com",
    ] {
        assert!(validate_hosts(ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        "a b",
        "all\n- hosts: x",
        "{{ lookup('pipe','id') }}",
        "a'b",
        "a\"b",
        "a#b",
        "a\0",
        &"a".repeat(257),
    ] {
        let e = validate_hosts(bad).expect_err(bad);
        assert_eq!(e.field, "hosts");
    }
}

#[test]
fn tasks_names_params_and_options() {
    assert!(validate_task(&task("copy")).is_ok());

    let mut t = task("copy");
    t.name = "two\nlines".into();
    assert_eq!(validate_task(&t).expect_err("must fail").field, "name");
    t.name = " ".into();
    assert_eq!(validate_task(&t).expect_err("must fail").field, "name");
    t.name = "é".repeat(256);
    assert!(validate_task(&t).is_ok(), "256 characters, more bytes");
    t.name = "x".repeat(257);
    assert_eq!(validate_task(&t).expect_err("must fail").field, "name");

    let mut t = task("copy");
    t.params = serde_json::Value::Null;
    assert!(validate_task(&t).is_ok());
    for bad in [json!("echo hi"), json!([1]), json!(3)] {
        t.params = bad;
        assert_eq!(validate_task(&t).expect_err("must fail").field, "params");
    }
    t.params = json!({"content": "x".repeat(PARAMS_MAX_BYTES)});
    let e = validate_task(&t).expect_err("must fail");
    assert_eq!(e.field, "params");
    assert!(e.reason.contains("at most"), "{e}");
    t.params = json!({"a\nb": 1});
    assert_eq!(validate_task(&t).expect_err("must fail").field, "params");

    let ok = task("copy")
        .with_option("notify", json!(["Restart nginx"]))
        .with_option("tags", json!("web"))
        .with_option("when", json!("ansible_os_family == 'Debian'"))
        .with_option("ignore_errors", json!("{{ ansible_check_mode }}"))
        .with_option("register", json!("out"))
        .with_option("retries", json!(3))
        .with_option("become_user", json!("www-data"))
        .with_option("vars", json!({"a": 1}));
    assert!(validate_task(&ok).is_ok());

    let e = validate_task(&task("copy").with_option("shell", json!("id"))).expect_err("must fail");
    assert_eq!(e.field, "options.shell");
    assert!(e.reason.contains("allowed"), "{e}");
    let e = validate_task(&task("copy").with_option("listen", json!("x"))).expect_err("must fail");
    assert_eq!(e.field, "options.listen");
    assert!(
        validate_task(
            &task("copy")
                .with_option("listen", json!("x"))
                .into_handler()
        )
        .is_ok()
    );
    for (k, v) in [
        ("notify", json!(1)),
        ("notify", json!([""])),
        ("tags", json!({"a": 1})),
        ("register", json!("not a name")),
        ("retries", json!(-1)),
        ("vars", json!([1])),
        ("become", json!(1)),
        ("delegate_to", json!("")),
        ("when", json!(null)),
    ] {
        let e = validate_task(&task("copy").with_option(k, v.clone())).expect_err(k);
        assert_eq!(e.field, format!("options.{k}"), "{v}");
    }
}

#[test]
fn options_objects() {
    assert!(options_object(None).expect("must succeed").is_empty());
    assert!(
        options_object(Some(&json!(null)))
            .expect("must succeed")
            .is_empty()
    );
    assert_eq!(
        options_object(Some(&json!({"tags": "x"})))
            .expect("must succeed")
            .len(),
        1
    );
    assert_eq!(
        options_object(Some(&json!("x")))
            .expect_err("must fail")
            .field,
        "options"
    );
}

#[test]
fn playbooks_name_the_failing_task() {
    let mut p = PlaybookDoc::from_tasks("site", "all", true, vec![task("copy"), task("Bad")]);
    let e = validate_playbook(&p).expect_err("must fail");
    assert_eq!(e.field, "tasks[1].module");
    p.tasks.pop();
    p.handlers
        .push(task("x").with_option("listen", json!("y")).into_handler());
    assert!(validate_playbook(&p).is_ok());
    p.hosts = "a b".into();
    assert_eq!(validate_playbook(&p).expect_err("must fail").field, "hosts");
}
