//! Ansible playbooks over REST: CRUD in the shapes of docs/API.md, tasks, reorder, export,
//! the YAML file, generation from a diff and verification (SQLite, fake agents, and a
//! recording ansible-playbook).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use fluid_proto::pb;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use super::tests::{TestApp, app_with, assert_error};
use crate::ansible::jobs::runner::fake::FakeRunner;
use crate::config::Config;

/// A test app whose data dir is private and whose ansible-playbook records its runs.
pub(crate) struct AnsibleApp {
    pub app: TestApp,
    pub runner: Arc<FakeRunner>,
    pub data: tempfile::TempDir,
}

impl std::ops::Deref for AnsibleApp {
    type Target = TestApp;
    fn deref(&self) -> &TestApp {
        &self.app
    }
}

pub(crate) async fn ansible_app(mut config: Config) -> AnsibleApp {
    let data = tempfile::tempdir().expect("tmp");
    config.data_dir = data.path().to_owned();
    // An "installed" ansible-playbook, so generation runs its syntax check (through the
    // fake runner).
    let bin = data.path().join("ansible-playbook");
    std::fs::write(&bin, "#!/bin/sh\nexit 0\n").expect("bin");
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    config.ansible.ansible_playbook = bin.display().to_string();
    let mut app = app_with(config.clone()).await;
    let runner = Arc::new(FakeRunner::default());
    let state = crate::build_state_with_runner(
        app.store.clone(),
        app.agents.clone(),
        &config,
        crate::testing::fake_agents::test_ca(),
        runner.clone(),
    )
    .expect("state");
    app.router = super::router(state.clone());
    app.state = state;
    AnsibleApp { app, runner, data }
}

pub(crate) async fn send(
    app: &TestApp,
    method: Method,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let req = Request::builder().method(method).uri(uri);
    let req = match body {
        Some(b) => req
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    }
    .expect("request");
    app.send(req).await
}

pub(crate) async fn playbook(app: &TestApp, name: &str) -> Value {
    let (s, v) = app
        .post("/v1/ansible/playbooks", json!({"name": name}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v["playbook"].clone()
}

pub(crate) async fn task(app: &TestApp, pb: &str, body: Value) -> Value {
    let (s, v) = app
        .post(&format!("/v1/ansible/playbooks/{pb}/tasks"), body)
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v["task"].clone()
}

pub(crate) fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
    k.sort();
    k
}

const PLAYBOOK_KEYS: [&str; 8] = [
    "become",
    "created_at",
    "created_by",
    "file_path",
    "hosts",
    "id",
    "name",
    "updated_at",
];
const TASK_KEYS: [&str; 7] = [
    "created_at",
    "id",
    "module",
    "name",
    "params",
    "playbook_id",
    "position",
];

fn names(v: &Value) -> Vec<String> {
    v["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(|t| format!("{}@{}", t["name"].as_str().expect("name"), t["position"]))
        .collect()
}

#[tokio::test]
async fn playbooks_and_tasks_in_the_shapes_of_the_api() {
    let app = ansible_app(Config::default()).await;
    let (s, v) = app
        .post(
            "/v1/ansible/playbooks",
            json!({"name": "web", "hosts": "all", "become": true}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(keys(&v), ["playbook"]);
    let p = &v["playbook"];
    assert_eq!(keys(p), PLAYBOOK_KEYS);
    assert!(p["id"].as_str().expect("id").starts_with("PBK-"));
    assert_eq!(
        (p["hosts"].clone(), p["become"].clone()),
        (json!("all"), json!(true))
    );
    let file = app.data.path().join("playbooks/web.yml");
    assert_eq!(p["file_path"], json!(file.display().to_string()));
    assert!(
        std::fs::read_to_string(&file)
            .expect("file")
            .contains("hosts: all")
    );

    let t1 = task(&app, "web", json!({"name": "nginx", "module": "ansible.builtin.apt", "params": {"name": "nginx", "state": "present"}})).await;
    assert_eq!(keys(&t1), TASK_KEYS);
    assert_eq!(
        (t1["position"].clone(), t1["playbook_id"].clone()),
        (json!(0), p["id"].clone())
    );
    assert!(t1["id"].as_str().expect("id").starts_with("TSK-"));
    let t2 = task(&app, "web", json!({"name": "site", "module": "copy", "params": {"dest": "/etc/nginx/conf.d/site.conf", "content": "server {}\n"}, "options": {"notify": ["restart nginx"]}})).await;
    assert_eq!(t2["options"], json!({"notify": ["restart nginx"]}));
    let h = task(&app, "web", json!({"name": "restart nginx", "module": "ansible.builtin.systemd", "params": {"name": "nginx", "state": "restarted"}, "handler": true})).await;
    assert_eq!(h["handler"], json!(true));
    let t3 = task(
        &app,
        "web",
        json!({"name": "hello", "module": "command", "params": {"cmd": "echo hi"}}),
    )
    .await;

    let (s, v) = app.get("/v1/ansible/playbooks").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(keys(&v), ["playbooks", "total"]);
    assert_eq!(
        (v["total"].clone(), v["playbooks"][0]["name"].clone()),
        (json!(1), json!("web"))
    );

    let (s, v) = app.get("/v1/ansible/playbooks/web").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(keys(&v), ["playbook", "tasks"]);
    assert_eq!(keys(&v["tasks"][0]), TASK_KEYS);
    assert_eq!(
        names(&v),
        ["nginx@0", "site@1", "restart nginx@2", "hello@3"]
    );

    // Update: only what is given changes.
    let (s, v) = send(
        &app,
        Method::PUT,
        &format!(
            "/v1/ansible/playbooks/web/tasks/{}",
            t3["id"].as_str().expect("id")
        ),
        Some(json!({"name": "greet"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(keys(&v), ["task"]);
    assert_eq!(
        (v["task"]["name"].clone(), v["task"]["module"].clone()),
        (json!("greet"), json!("command"))
    );

    // Reorder: every id exactly once.
    let ids = [&t3, &t2, &t1, &h].map(|t| t["id"].clone());
    let (s, v) = send(
        &app,
        Method::PATCH,
        "/v1/ansible/playbooks/web/tasks/reorder",
        Some(json!({"task_ids": ids})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        names(&v),
        ["greet@0", "site@1", "nginx@2", "restart nginx@3"]
    );

    let (s, v) = app.get("/v1/ansible/playbooks/web/export").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(keys(&v), ["yaml"]);
    let yaml = v["yaml"].as_str().expect("yaml").to_owned();
    let at = |needle: &str| {
        yaml.find(needle)
            .unwrap_or_else(|| panic!("{needle} not in\n{yaml}"))
    };
    assert!(at("name: greet") < at("name: site") && at("name: site") < at("name: nginx"));
    assert!(at("handlers:") < at("name: restart nginx"), "{yaml}");
    assert!(
        yaml.contains("ansible.builtin.apt:") && yaml.contains("notify:"),
        "{yaml}"
    );
    assert_eq!(
        std::fs::read_to_string(&file).expect("file"),
        yaml,
        "the file follows every change"
    );

    let (s, _) = app
        .delete(&format!(
            "/v1/ansible/playbooks/web/tasks/{}",
            t2["id"].as_str().expect("id")
        ))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, v) = app.get("/v1/ansible/playbooks/web").await;
    assert_eq!(names(&v), ["greet@0", "nginx@1", "restart nginx@2"]);
    assert!(
        !std::fs::read_to_string(&file)
            .expect("file")
            .contains("name: site")
    );

    let (s, _) = app.delete("/v1/ansible/playbooks/web").await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(!file.exists(), "the file goes with the playbook");
    assert_error(
        app.get("/v1/ansible/playbooks/web").await,
        StatusCode::NOT_FOUND,
        "not found",
    );
    assert_error(
        app.delete("/v1/ansible/playbooks/web").await,
        StatusCode::NOT_FOUND,
        "not found",
    );
}

#[tokio::test]
async fn bad_playbook_requests_are_4xx_with_a_reason() {
    let app = ansible_app(Config::default()).await;
    for (body, says) in [
        (json!({"name": "a/b"}), "name"),
        (json!({"name": ".."}), "name"),
        (json!({"name": "a..b"}), "name"),
        (json!({"name": ""}), "name"),
        (json!({"name": "ok", "hosts": "a b"}), "hosts"),
        (json!({"name": "ok", "colour": "red"}), "unknown field"),
        (json!({"hosts": "all"}), "name"),
    ] {
        assert_error(
            app.post("/v1/ansible/playbooks", body.clone()).await,
            StatusCode::BAD_REQUEST,
            says,
        );
    }
    playbook(&app, "web").await;
    assert_error(
        app.post("/v1/ansible/playbooks", json!({"name": "web"}))
            .await,
        StatusCode::CONFLICT,
        "already exists",
    );
    // Names in paths: a `/` that reaches the handler (encoded) or `..` is a 400.
    assert_error(
        app.get("/v1/ansible/playbooks/a%2Fb").await,
        StatusCode::BAD_REQUEST,
        "name",
    );
    assert_error(
        app.get("/v1/ansible/playbooks/..x").await,
        StatusCode::BAD_REQUEST,
        "name",
    );
    assert_error(
        app.get("/v1/ansible/playbooks/nosuch").await,
        StatusCode::NOT_FOUND,
        "nosuch",
    );

    let tasks = "/v1/ansible/playbooks/web/tasks";
    for (body, says) in [
        (json!({"name": "x", "module": "not a module!"}), "module"),
        (json!({"name": "x", "module": "a.b.c.d"}), "module"),
        (json!({"name": "x", "module": "when"}), "module"),
        (json!({"name": "", "module": "copy"}), "name"),
        (
            json!({"name": "x", "module": "copy", "params": "dest=/x"}),
            "params",
        ),
        (
            json!({"name": "x", "module": "copy", "options": {"shell": "x"}}),
            "options.shell",
        ),
        (
            json!({"name": "x", "module": "copy", "options": ["notify"]}),
            "options",
        ),
        (
            json!({"name": "x", "module": "copy", "options": {"listen": "y"}}),
            "listen",
        ),
        (
            json!({"name": "x", "module": "copy", "extra": 1}),
            "unknown field",
        ),
        (json!({"module": "copy"}), "name"),
    ] {
        assert_error(
            app.post(tasks, body.clone()).await,
            StatusCode::BAD_REQUEST,
            says,
        );
    }
    assert_error(
        app.post(
            "/v1/ansible/playbooks/nosuch/tasks",
            json!({"name": "x", "module": "copy"}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "nosuch",
    );
    let t1 = task(&app, "web", json!({"name": "a", "module": "copy"})).await;
    let t2 = task(&app, "web", json!({"name": "b", "module": "copy"})).await;
    assert_eq!(t1["params"], json!({}), "no params is an empty object");
    let one = format!("{tasks}/{}", t1["id"].as_str().expect("id"));
    assert_error(
        send(&app, Method::PUT, &one, Some(json!({}))).await,
        StatusCode::BAD_REQUEST,
        "at least one",
    );
    assert_error(
        send(
            &app,
            Method::PUT,
            &one,
            Some(json!({"module": "Bad-Module"})),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "module",
    );
    assert_error(
        send(&app, Method::PUT, &one, Some(json!({"handler": true}))).await,
        StatusCode::BAD_REQUEST,
        "unknown field",
    );
    assert_error(
        send(
            &app,
            Method::PUT,
            &format!("{tasks}/TSK-nosuch0000"),
            Some(json!({"name": "z"})),
        )
        .await,
        StatusCode::NOT_FOUND,
        "TSK-nosuch0000",
    );
    assert_error(
        app.delete(&format!("{tasks}/TSK-nosuch0000")).await,
        StatusCode::NOT_FOUND,
        "TSK-nosuch0000",
    );

    let reorder = "/v1/ansible/playbooks/web/tasks/reorder";
    let (a, b) = (t1["id"].clone(), t2["id"].clone());
    for (ids, says) in [
        (json!([a]), "missing"),
        (json!([a, a, b]), "twice"),
        (json!([a, b, "TSK-nosuch0000"]), "not a task"),
        (json!([]), "missing"),
    ] {
        assert_error(
            send(&app, Method::PATCH, reorder, Some(json!({"task_ids": ids}))).await,
            StatusCode::BAD_REQUEST,
            says,
        );
    }
    assert_error(
        send(&app, Method::PATCH, reorder, Some(json!({"ids": [a]}))).await,
        StatusCode::BAD_REQUEST,
        "unknown field",
    );
    let (_, v) = app.get("/v1/ansible/playbooks/web").await;
    assert_eq!(
        names(&v),
        ["a@0", "b@1"],
        "a refused change changes nothing"
    );
}

fn file_change(path: &str, content: &[u8], text: bool) -> pb::FileChange {
    pb::FileChange {
        path: path.into(),
        change: pb::ChangeKind::Added as i32,
        after: Some(pb::FileMeta {
            kind: pb::FileKind::Regular as i32,
            mode: 0o640,
            owner: "root".into(),
            group: "root".into(),
            size: content.len() as u64,
            sha256: hex::encode(Sha256::digest(content)),
            ..Default::default()
        }),
        text,
        after_text: if text {
            String::from_utf8_lossy(content).into_owned()
        } else {
            String::new()
        },
        ..Default::default()
    }
}

/// A sandbox of agent-7 with snapshot `a`, whose diff is nginx plus a binary file.
pub(crate) async fn changed_sandbox(app: &TestApp) -> (String, Vec<u8>) {
    let v = app
        .create(json!({"source_vm_name": "debian-12", "agent_id": "agent-7"}))
        .await;
    let id = v["sandbox"]["id"].as_str().expect("id").to_owned();
    let (s, v) = app
        .post(
            &format!("/v1/sandboxes/{id}/snapshots"),
            json!({"name": "a"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let blob: Vec<u8> = (0u8..=255).cycle().take(5000).collect();
    let mut diff = crate::sandboxes::diffs::convert::tests::nginx_diff();
    let change = file_change("/opt/app/blob.bin", &blob, false);
    if let Ok(mut files) = app.agents.snap.files.lock() {
        files.insert(
            "/opt/app/blob.bin".into(),
            (change.after.clone().expect("meta"), blob.clone()),
        );
    }
    diff.files.push(change);
    app.agents.set_diff(diff);
    (id, blob)
}

#[tokio::test]
async fn generate_writes_a_playbook_from_the_diff_and_keeps_its_artefacts() {
    let app = ansible_app(Config::default()).await;
    let (id, blob) = changed_sandbox(&app).await;
    let uri = format!("/v1/sandboxes/{id}/generate/ansible");
    let (s, v) = app.post(&uri, json!({})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(keys(&v), ["diff_id", "playbook", "review", "tasks", "yaml"]);
    let name = format!("{}-now", id.to_ascii_lowercase());
    assert_eq!(v["playbook"]["name"], json!(name));
    assert_eq!(
        v["playbook"]["source"],
        json!({"sandbox_id": id, "base_image": "debian-12", "from_snapshot": "a", "to_snapshot": "now", "diff_id": v["diff_id"]})
    );
    let modules: Vec<&str> = v["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(|t| t["module"].as_str().expect("module"))
        .collect();
    let first = |m: &str| {
        modules
            .iter()
            .position(|x| x.ends_with(m))
            .unwrap_or_else(|| panic!("no {m} in {modules:?}"))
    };
    assert!(
        first("apt") < first("copy") && first("copy") < first("systemd"),
        "{modules:?}"
    );
    let yaml = v["yaml"].as_str().expect("yaml");
    assert!(
        yaml.contains("/etc/nginx/conf.d/site.conf") && yaml.contains("server { listen 8080; }"),
        "{yaml}"
    );
    let sha = hex::encode(Sha256::digest(&blob));
    let kept = app.data.path().join("artifacts").join(&sha);
    assert!(
        yaml.contains(&kept.display().to_string()),
        "the copy reads the artefact: {yaml}"
    );
    assert_eq!(std::fs::read(&kept).expect("artefact kept"), blob);
    assert!(
        v["review"]
            .as_array()
            .expect("review")
            .iter()
            .any(|r| r.as_str().is_some_and(|r| r.contains("/opt/app/blob.bin"))),
        "{v}"
    );
    // The diff was stored, and the playbook is like any other.
    let (s, _) = app
        .get(&format!(
            "/v1/sandboxes/{id}/diffs/{}",
            v["diff_id"].as_str().expect("id")
        ))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, p) = app
        .get(&format!("/v1/ansible/playbooks/{name}/export"))
        .await;
    assert_eq!((s, p["yaml"].as_str()), (StatusCode::OK, Some(yaml)));

    assert_error(
        app.post(&uri, json!({})).await,
        StatusCode::CONFLICT,
        "already exists",
    );
    // A syntax error is the generator's bug: still 201, said in the review.
    if let Ok(mut e) = app.runner.syntax_error.lock() {
        *e = Some("ERROR! bad indentation".into());
    }
    let (s, v) = app
        .post(&uri, json!({"name": "second", "to_snapshot": "now"}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert!(
        v["review"].as_array().expect("review").iter().any(|r| r
            .as_str()
            .is_some_and(|r| r.starts_with("syntax check failed"))),
        "{v}"
    );

    for (body, status, says) in [
        (json!({"name": "a/b"}), StatusCode::BAD_REQUEST, "name"),
        (
            json!({"name": "x", "hosts": "a b"}),
            StatusCode::BAD_REQUEST,
            "hosts",
        ),
        (
            json!({"name": "x", "from_snapshot": "nosuch"}),
            StatusCode::NOT_FOUND,
            "nosuch",
        ),
        (
            json!({"name": "x", "from_snapshot": "a", "to_snapshot": "a"}),
            StatusCode::BAD_REQUEST,
            "itself",
        ),
        (
            json!({"name": "x", "extra": 1}),
            StatusCode::BAD_REQUEST,
            "unknown field",
        ),
    ] {
        assert_error(app.post(&uri, body).await, status, says);
    }
    // A sandbox without snapshots has no default start.
    let v = app
        .create(json!({"source_vm_name": "debian-12", "agent_id": "agent-7"}))
        .await;
    let bare = v["sandbox"]["id"].as_str().expect("id");
    assert_error(
        app.post_empty(&format!("/v1/sandboxes/{bare}/generate/ansible"))
            .await,
        StatusCode::BAD_REQUEST,
        "no snapshot",
    );
    assert_error(
        app.post_empty("/v1/sandboxes/SBX-nosuch0000/generate/ansible")
            .await,
        StatusCode::NOT_FOUND,
        "not found",
    );
}

async fn wait_job(app: &TestApp, id: &str) -> Value {
    for _ in 0..400 {
        let (s, v) = app.get(&format!("/v1/ansible/jobs/{id}")).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        if matches!(v["job"]["status"].as_str(), Some("finished" | "failed")) {
            return v["job"].clone();
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("job {id} did not end");
}

#[tokio::test]
async fn verify_applies_the_playbook_to_a_fresh_sandbox_and_compares() {
    let app = ansible_app(Config::default()).await;
    let (id, _) = changed_sandbox(&app).await;
    let (s, v) = app
        .post(
            &format!("/v1/sandboxes/{id}/generate/ansible"),
            json!({"name": "web"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");

    // The fresh sandbox differs only in its identity: it reproduces.
    let mut hostname = file_change("/etc/hostname", b"verify\n", true);
    hostname.change = pb::ChangeKind::Modified as i32;
    hostname.before = hostname.after.clone();
    app.agents.set_diff(pb::SnapshotDiff {
        files: vec![hostname],
        ..Default::default()
    });
    let (s, v) = app
        .post("/v1/ansible/playbooks/web/verify", json!({"wait": true}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let job = &v["job"];
    assert_eq!(
        (
            job["kind"].clone(),
            job["status"].clone(),
            job["phase"].clone()
        ),
        (json!("verify"), json!("finished"), json!("done")),
        "{job}"
    );
    let ver = &job["verification"];
    assert_eq!(
        (ver["reproduces"].clone(), ver["differences"].clone()),
        (json!(true), json!([])),
        "{job}"
    );
    let out = job["output"].as_str().expect("output");
    assert!(
        out.contains("ignored") && out.contains("/etc/hostname"),
        "{out}"
    );
    assert!(out.contains("reproduces: yes"), "{out}");
    let fresh = ver["verify_sandbox_id"].as_str().expect("sandbox");
    assert_ne!(fresh, id);
    let (_, sb) = app.get(&format!("/v1/sandboxes/{fresh}")).await;
    assert_eq!(
        sb["sandbox"]["state"], "DESTROYED",
        "the verify sandbox is always destroyed"
    );
    assert_eq!(sb["sandbox"]["agent_id"], "fluid-verify");
    assert_eq!(sb["sandbox"]["host_name"], "kvm-1");
    let runs = app.runner.runs();
    assert_eq!(runs.len(), 1);
    assert!(!runs[0].check);
    assert_eq!(
        (runs[0].hosts[0].1.as_str(), runs[0].hosts[0].3.as_str()),
        ("127.0.0.1", "root")
    );
    let (_, p) = app.get("/v1/ansible/playbooks/web").await;
    assert_eq!(
        p["playbook"]["verification"], *ver,
        "kept on the playbook too"
    );

    // A real difference: it does not reproduce.
    app.agents.set_diff(pb::SnapshotDiff {
        files: vec![file_change("/etc/extra.conf", b"x\n", true)],
        packages: vec![pb::PackageChange {
            name: "nginx".into(),
            before_version: "1.22.1-9".into(),
            ..Default::default()
        }],
        ..Default::default()
    });
    let (s, v) = app.post_empty("/v1/ansible/playbooks/web/verify").await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(keys(&v), ["job", "job_id", "ws_url"]);
    let job = wait_job(&app, v["job_id"].as_str().expect("id")).await;
    assert_eq!(job["verification"]["reproduces"], json!(false), "{job}");
    assert_eq!(
        job["verification"]["differences"],
        json!([
            {"what": "file", "name": "/etc/extra.conf", "expected": "absent", "actual": format!("file 0640 root:root 2 B sha256:{}", &hex::encode(Sha256::digest(b"x\n"))[..12])},
            {"what": "package", "name": "nginx", "expected": "1.22.1-9", "actual": "absent"},
        ])
    );

    // Only a generated playbook can be verified.
    playbook(&app, "manual").await;
    assert_error(
        app.post_empty("/v1/ansible/playbooks/manual/verify").await,
        StatusCode::BAD_REQUEST,
        "not generated",
    );
    assert_error(
        app.post_empty("/v1/ansible/playbooks/nosuch/verify").await,
        StatusCode::NOT_FOUND,
        "nosuch",
    );
    assert_error(
        app.post("/v1/ansible/playbooks/web/verify", json!({"wait": "yes"}))
            .await,
        StatusCode::BAD_REQUEST,
        "boolean",
    );
}
