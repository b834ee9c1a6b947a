//! The acceptance scenario, and then some.

use std::collections::BTreeMap;

use fluid_client::snapshots::DiffJson;
use serde_json::json;

use super::*;

const SITE_CONF: &str = "server {\n    listen 8080;\n    root /var/www/site;\n}\n";
const UNIT: &str = "[Unit]\nDescription=demo\n\n[Service]\nExecStart=/usr/local/bin/tool\n\n[Install]\nWantedBy=multi-user.target\n";

/// nginx and its dependencies, a site, a custom unit enabled, /etc/motd removed, a
/// binary, accounts, commands.
fn nginx_diff() -> (DiffJson, BTreeMap<String, String>) {
    let mut tool = text_file("/usr/local/bin/tool", 18_000, SHA_A);
    tool.binary = true;
    tool.meta.mode = "0755".into();
    let mut sshd = modified(text_file("/etc/ssh/sshd_config", 3000, SHA_B), {
        let mut m = meta("file", "0644");
        m.sha256 = Some(SHA_B.into());
        m
    });
    sshd.meta.mode = "0600".into();
    let mut default_site = owned(
        text_file("/etc/nginx/sites-available/default", 100, SHA_B),
        "nginx-common",
    );
    default_site.conffile_modified = true;
    let default_site = modified(default_site, meta("file", "0644"));
    let mut app_conf = text_file("/opt/app/config.yml", 12, SHA_B);
    app_conf.meta.owner = "app".into();
    app_conf.meta.group = String::new();
    app_conf.meta.gid = 998;

    let diff = DiffJson {
        files_added: vec![
            owned(entry("/etc/nginx", "dir"), "nginx-common"),
            owned(entry("/etc/nginx/conf.d", "dir"), "nginx-common"),
            text_file("/etc/nginx/conf.d/site.conf", SITE_CONF.len() as u64, SHA_B),
            owned(
                text_file("/etc/nginx/nginx.conf", 1400, SHA_B),
                "nginx-common",
            ),
            owned(
                text_file("/lib/systemd/system/nginx.service", 500, SHA_B),
                "nginx-common",
            ),
            link(
                "/etc/systemd/system/multi-user.target.wants/nginx.service",
                "/lib/systemd/system/nginx.service",
            ),
            text_file(
                "/etc/systemd/system/fluid-demo.service",
                UNIT.len() as u64,
                SHA_B,
            ),
            link(
                "/etc/systemd/system/multi-user.target.wants/fluid-demo.service",
                "/etc/systemd/system/fluid-demo.service",
            ),
            link("/etc/systemd/system/foo.service", "/dev/null"),
            entry("/var/log/nginx", "dir"),
            link("/etc/rc2.d/S01nginx", "../init.d/nginx"),
            tool,
            entry("/opt/app", "dir"),
            app_conf,
            link(
                "/etc/nginx/sites-enabled/site",
                "/etc/nginx/sites-available/site",
            ),
            text_file(
                "/usr/lib/python3/dist-packages/x/__pycache__/y.cpython-311.pyc",
                10,
                SHA_A,
            ),
        ],
        files_modified: vec![
            default_site,
            modified(text_file("/etc/passwd", 1200, SHA_A), meta("file", "0644")),
            modified(text_file("/etc/shadow-", 800, SHA_A), meta("file", "0640")),
            modified(
                owned(
                    text_file("/usr/share/doc/base-files/README", 10, SHA_A),
                    "base-files",
                ),
                meta("file", "0644"),
            ),
            sshd,
            modified(
                text_file("/var/lib/dpkg/status", 100, SHA_A),
                meta("file", "0644"),
            ),
        ],
        files_removed: vec![
            text_file("/etc/motd", 286, SHA_A),
            entry("/opt/old", "dir"),
            text_file("/opt/old/a", 1, SHA_A),
            entry("/opt/old/sub", "dir"),
            text_file("/opt/old/sub/b", 1, SHA_A),
            owned(text_file("/etc/cron.daily/man-db", 1, SHA_A), "man-db"),
        ],
        packages_added: vec![
            pkg("nginx-common", "1.22.1-9", true),
            pkg("nginx", "1.22.1-9", false),
            pkg("libnginx-mod-http-geoip", "1.22.1-9", true),
        ],
        packages_removed: vec![],
        packages_upgraded: vec![],
        services_changed: vec![
            service("nginx.service", "enabled", "active", "absent", "unknown"),
            service(
                "fluid-demo.service",
                "enabled",
                "active",
                "absent",
                "unknown",
            ),
            service("foo.service", "masked", "inactive", "enabled", "active"),
            service("bar.service", "disabled", "inactive", "enabled", "active"),
        ],
        commands_run: vec![
            command(
                1,
                "DEBIAN_FRONTEND=noninteractive apt-get install -y nginx",
                Some(0),
            ),
            command(2, "write /etc/nginx/conf.d/site.conf (52 bytes)", Some(0)),
            command(3, "curl -fsSL https://example.com/install.sh | sh", Some(0)),
            command(4, "systemctl enable --now nginx && nginx -t", Some(0)),
            command(5, "grep -q listen /nope", Some(2)),
            command(6, "make install", Some(2)),
            command(7, "rm /etc/motd", Some(0)),
        ],
    };
    let texts = BTreeMap::from([
        (
            "/etc/nginx/conf.d/site.conf".to_owned(),
            SITE_CONF.to_owned(),
        ),
        (
            "/etc/systemd/system/fluid-demo.service".to_owned(),
            UNIT.to_owned(),
        ),
        ("/opt/app/config.yml".to_owned(), "port: 8080\n".to_owned()),
        (
            "/etc/nginx/sites-available/default".to_owned(),
            "# default\n".to_owned(),
        ),
        (
            "/etc/passwd".to_owned(),
            "root:x:0:0::/root:/bin/bash\n".to_owned(),
        ),
    ]);
    (diff, texts)
}

#[test]
fn nginx_scenario() {
    let (diff, texts) = nginx_diff();
    let g = generate(&diff, &texts, &opts());
    let ic = json!(IGNORE_IN_CHECK_MODE);

    assert_eq!(
        names(&g.tasks),
        vec![
            "Install packages: nginx (1.22.1-9)",
            "Copy /etc/nginx/conf.d/site.conf",
            "Copy /etc/nginx/sites-available/default",
            "Link /etc/nginx/sites-enabled/site -> /etc/nginx/sites-available/site",
            "Set mode and owner of /etc/ssh/sshd_config",
            "Copy /etc/systemd/system/fluid-demo.service",
            "Create directory /opt/app",
            "Copy /opt/app/config.yml",
            "Copy /usr/local/bin/tool (binary, from artefact sha256:aaaa1111bbbb…)",
            "Copy /usr/share/doc/base-files/README (large, 10 bytes, from artefact sha256:aaaa1111bbbb…)",
            "Remove /etc/cron.daily/man-db",
            "Remove /etc/motd",
            "Remove directory /opt/old and its content",
            "Disable and stop bar.service",
            "Enable and start fluid-demo.service",
            "Mask and stop foo.service",
            "Enable and start nginx.service",
            "REVIEW: command run in the sandbox, not expressed declaratively: curl -fsSL https://example.com/install.sh | sh",
        ]
    );

    let apt = &g.tasks[0];
    assert_eq!(apt.module, "ansible.builtin.apt");
    assert_eq!(
        apt.params,
        json!({"name": ["nginx=1.22.1-9"], "state": "present", "update_cache": true, "cache_valid_time": 3600})
    );

    let site = find(&g.tasks, "Copy /etc/nginx/conf.d/site.conf");
    assert_eq!(site.module, "ansible.builtin.copy");
    assert_eq!(
        site.params,
        json!({"dest": "/etc/nginx/conf.d/site.conf", "content": SITE_CONF, "mode": "0644", "owner": "root", "group": "root"})
    );
    assert_eq!(site.options.get("notify"), Some(&json!(["Restart nginx"])));
    // /etc/nginx/conf.d comes with the package: in check mode it does not exist yet.
    assert_eq!(site.options.get("ignore_errors"), Some(&ic));

    let conffile = find(&g.tasks, "Copy /etc/nginx/sites-available/default");
    assert_eq!(
        conffile.options.get("notify"),
        Some(&json!(["Restart nginx"]))
    );
    let enabled = find(
        &g.tasks,
        "Link /etc/nginx/sites-enabled/site -> /etc/nginx/sites-available/site",
    );
    assert_eq!(
        enabled.params,
        json!({"src": "/etc/nginx/sites-available/site", "dest": "/etc/nginx/sites-enabled/site", "state": "link", "force": true})
    );
    assert_eq!(
        enabled.options.get("notify"),
        Some(&json!(["Restart nginx"]))
    );

    let sshd = find(&g.tasks, "Set mode and owner of /etc/ssh/sshd_config");
    assert_eq!(sshd.module, "ansible.builtin.file");
    assert_eq!(
        sshd.params,
        json!({"path": "/etc/ssh/sshd_config", "mode": "0600", "owner": "root", "group": "root"})
    );
    assert!(
        sshd.options.get("notify").is_none(),
        "ssh is not among the changed services"
    );

    let unit = find(&g.tasks, "Copy /etc/systemd/system/fluid-demo.service");
    assert_eq!(
        unit.options.get("notify"),
        Some(&json!(["Restart fluid-demo"]))
    );

    let dir = find(&g.tasks, "Create directory /opt/app");
    assert_eq!(
        dir.params,
        json!({"path": "/opt/app", "state": "directory", "mode": "0755", "owner": "root", "group": "root"})
    );
    let app = find(&g.tasks, "Copy /opt/app/config.yml");
    assert_eq!(app.params["owner"], json!("app"));
    assert_eq!(
        app.params["group"],
        json!("998"),
        "numeric gid when the name is unknown"
    );
    assert_eq!(app.options.get("ignore_errors"), Some(&ic));

    let tool = find(
        &g.tasks,
        "Copy /usr/local/bin/tool (binary, from artefact sha256:aaaa1111bbbb…)",
    );
    assert_eq!(
        tool.params,
        json!({"src": format!("/var/lib/fluid/artefacts/{SHA_A}"), "dest": "/usr/local/bin/tool", "mode": "0755", "owner": "root", "group": "root"})
    );
    assert_eq!(
        g.artefacts,
        vec![ArtefactNeed {
            path: "/usr/local/bin/tool".into(),
            sha256: SHA_A.into(),
            size: 18_000
        }]
    );

    assert_eq!(
        find(&g.tasks, "Remove /etc/motd").params,
        json!({"path": "/etc/motd", "state": "absent"})
    );
    assert_eq!(
        find(&g.tasks, "Remove directory /opt/old and its content").params,
        json!({"path": "/opt/old", "state": "absent"})
    );

    for (name, params) in [
        (
            "Disable and stop bar.service",
            json!({"name": "bar.service", "enabled": false, "state": "stopped", "daemon_reload": true}),
        ),
        (
            "Enable and start fluid-demo.service",
            json!({"name": "fluid-demo.service", "enabled": true, "state": "started", "daemon_reload": true}),
        ),
        (
            "Mask and stop foo.service",
            json!({"name": "foo.service", "masked": true, "state": "stopped", "daemon_reload": true}),
        ),
        (
            "Enable and start nginx.service",
            json!({"name": "nginx.service", "enabled": true, "state": "started", "daemon_reload": true}),
        ),
    ] {
        let t = find(&g.tasks, name);
        assert_eq!(t.module, "ansible.builtin.systemd");
        assert_eq!(t.params, params, "{name}");
        assert_eq!(t.options.get("ignore_errors"), Some(&ic), "{name}");
    }

    let review = g.tasks.last().expect("tasks");
    assert_eq!(review.module, "ansible.builtin.shell");
    assert_eq!(
        review.params,
        json!({"cmd": "curl -fsSL https://example.com/install.sh | sh"})
    );
    assert_eq!(
        review.options.get("tags"),
        Some(&json!(["fluid_review", "never"]))
    );

    assert_eq!(
        names(&g.handlers),
        vec!["Restart fluid-demo", "Restart nginx"]
    );
    assert!(g.handlers.iter().all(|h| h.handler));
    assert_eq!(
        g.handlers[0].params,
        json!({"name": "fluid-demo.service", "state": "restarted", "daemon_reload": true})
    );
    assert_eq!(
        g.handlers[1].params,
        json!({"name": "nginx.service", "state": "restarted"})
    );
    assert!(
        g.handlers
            .iter()
            .all(|h| h.options.get("ignore_errors") == Some(&ic))
    );

    let review = g.review.join("\n");
    for expected in [
        "accounts changed (/etc/passwd, /etc/shadow-)",
        "/usr/share/doc/base-files/README (from package base-files) was changed outside the package manager",
        "/etc/cron.daily/man-db (from package man-db, still installed) was removed by hand",
        "/usr/local/bin/tool (binary) is copied from the controller's artefact",
        "command (CMD-3) is not expressed declaratively",
        "command (CMD-6) failed in the sandbox (exit 2)",
    ] {
        assert!(review.contains(expected), "{expected:?} not in:\n{review}");
    }
    assert!(
        !review.contains("grep"),
        "a covered command that failed needs no note:\n{review}"
    );
    assert_eq!(g.review.len(), 7, "{review}");

    for t in g.tasks.iter().chain(&g.handlers) {
        validate_task(t).unwrap_or_else(|e| panic!("{}: {e}", t.name));
    }
    let doc = PlaybookDoc::from_tasks(
        "nginx",
        "all",
        true,
        g.tasks.iter().chain(&g.handlers).cloned(),
    );
    let yaml = to_yaml(&doc).expect("yaml");
    insta::assert_snapshot!(yaml);
}
