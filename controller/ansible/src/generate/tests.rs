//! The generator on hand-built diffs.

mod nginx;

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{TimeZone, Utc};
use fluid_client::snapshots::{
    CommandEntry, DiffJson, FileEntry, FileMeta, PackageEntry, PackageUpgrade, ServiceEntry,
};
use serde_json::{Value, json};

use super::*;
use crate::model::{PlaybookDoc, unsafe_string};
use crate::validate::validate_task;
use crate::yaml::to_yaml;

pub(super) const SHA_A: &str = "aaaa1111bbbb2222cccc3333dddd4444eeee5555ffff6666aaaa7777bbbb8888";
pub(super) const SHA_B: &str = "1234567890abcdef1234567890abcdef1234567890abcdef1234567890abcdef";

pub(super) fn meta(kind: &str, mode: &str) -> FileMeta {
    FileMeta {
        kind: kind.into(),
        mode: mode.into(),
        owner: "root".into(),
        group: "root".into(),
        uid: 0,
        gid: 0,
        size: 0,
        sha256: None,
        link_target: None,
    }
}

pub(super) fn entry(path: &str, kind: &str) -> FileEntry {
    let mode = if kind == "dir" { "0755" } else { "0644" };
    FileEntry {
        path: path.into(),
        meta: meta(kind, mode),
        binary: false,
        package: None,
        conffile_modified: false,
        previous: None,
    }
}

pub(super) fn text_file(path: &str, size: u64, sha: &str) -> FileEntry {
    let mut f = entry(path, "file");
    f.meta.size = size;
    f.meta.sha256 = Some(sha.into());
    f
}

pub(super) fn owned(mut f: FileEntry, pkg: &str) -> FileEntry {
    f.package = Some(pkg.into());
    f
}

pub(super) fn link(path: &str, target: &str) -> FileEntry {
    let mut f = entry(path, "symlink");
    f.meta.link_target = Some(target.into());
    f
}

pub(super) fn modified(mut f: FileEntry, prev: FileMeta) -> FileEntry {
    f.previous = Some(prev);
    f
}

pub(super) fn pkg(name: &str, version: &str, auto: bool) -> PackageEntry {
    PackageEntry {
        name: name.into(),
        version: version.into(),
        auto_installed: auto,
    }
}

pub(super) fn service(
    name: &str,
    enablement: &str,
    state: &str,
    prev_enablement: &str,
    prev_state: &str,
) -> ServiceEntry {
    ServiceEntry {
        name: name.into(),
        enabled: enablement == "enabled",
        state: state.into(),
        enablement: enablement.into(),
        previous_enablement: prev_enablement.into(),
        previous_state: prev_state.into(),
    }
}

pub(super) fn command(n: u32, cmd: &str, exit: Option<i32>) -> CommandEntry {
    CommandEntry {
        cmd: cmd.into(),
        exit_code: exit,
        at: Utc
            .with_ymd_and_hms(2026, 1, 1, 0, 0, n)
            .single()
            .expect("time"),
        id: Some(format!("CMD-{n}")),
    }
}

pub(super) fn opts() -> GenerateOptions {
    GenerateOptions {
        artefact_dir: PathBuf::from("/var/lib/fluid/artefacts"),
        text_limit_bytes: 1024 * 1024,
    }
}

pub(super) fn names(tasks: &[TaskSpec]) -> Vec<&str> {
    tasks.iter().map(|t| t.name.as_str()).collect()
}

pub(super) fn find<'a>(tasks: &'a [TaskSpec], name: &str) -> &'a TaskSpec {
    tasks
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no task {name:?} in {:#?}", names(tasks)))
}

#[test]
fn all_automatic_packages_are_all_installed_and_upgrades_and_removals_follow() {
    let diff = DiffJson {
        packages_added: vec![pkg("b", "2", true), pkg("a", "1", true)],
        packages_upgraded: vec![PackageUpgrade {
            name: "libssl3".into(),
            from_version: "3.0.11-1".into(),
            to_version: "3.0.13-1".into(),
        }],
        packages_removed: vec![
            pkg("exim4", "4.96-15", false),
            pkg("exim4-base", "4.96-15", true),
        ],
        ..DiffJson::default()
    };
    let g = generate(&diff, &BTreeMap::new(), &opts());
    assert_eq!(
        names(&g.tasks),
        vec![
            "Install packages: a (1), b (2)",
            "Upgrade packages: libssl3 (3.0.11-1 → 3.0.13-1)",
            "Remove packages: exim4 (4.96-15), exim4-base (4.96-15)",
        ]
    );
    assert_eq!(g.tasks[0].params["name"], json!(["a=1", "b=2"]));
    assert_eq!(g.tasks[1].params["name"], json!(["libssl3=3.0.13-1"]));
    assert_eq!(g.tasks[1].params["state"], json!("present"));
    assert_eq!(
        g.tasks[2].params,
        json!({"name": ["exim4", "exim4-base"], "state": "absent", "purge": false})
    );
    assert!(g.handlers.is_empty() && g.review.is_empty() && g.artefacts.is_empty());
}

#[test]
fn apt_sources_come_before_the_packages() {
    let diff = DiffJson {
        files_added: vec![
            text_file("/etc/apt/sources.list.d/vendor.list", 40, SHA_B),
            {
                let mut k = text_file("/etc/apt/keyrings/vendor.gpg", 900, SHA_A);
                k.binary = true;
                k
            },
            text_file("/etc/vendor.conf", 3, SHA_B),
        ],
        packages_added: vec![pkg("vendor-tool", "1.0", false)],
        ..DiffJson::default()
    };
    let texts = BTreeMap::from([
        (
            "/etc/apt/sources.list.d/vendor.list".to_owned(),
            "deb [signed-by=/etc/apt/keyrings/vendor.gpg] http://vendor/ bookworm main\n"
                .to_owned(),
        ),
        ("/etc/vendor.conf".to_owned(), "x=1".to_owned()),
    ]);
    let g = generate(&diff, &texts, &opts());
    assert_eq!(
        names(&g.tasks),
        vec![
            "Copy /etc/apt/keyrings/vendor.gpg (binary, from artefact sha256:aaaa1111bbbb…)",
            "Copy /etc/apt/sources.list.d/vendor.list",
            "Install packages: vendor-tool (1.0)",
            "Copy /etc/vendor.conf",
        ]
    );
}

#[test]
fn large_text_and_unknown_content_and_templates() {
    let mut big = text_file("/srv/big.txt", 2_000_000, SHA_A);
    big.meta.owner = String::new();
    big.meta.uid = 1001;
    let diff = DiffJson {
        files_added: vec![
            big,
            {
                let mut f = entry("/srv/unknown.bin", "file");
                f.binary = true;
                f
            },
            text_file("/srv/page.j2", 30, SHA_B),
            text_file("/srv/{{ lookup('pipe','id') }}", 1, SHA_B),
            text_file("/srv/yes", 3, SHA_B),
            text_file("/srv/empty", 0, SHA_B),
        ],
        ..DiffJson::default()
    };
    let texts = BTreeMap::from([
        ("/srv/big.txt".to_owned(), "x".repeat(2_000_000)),
        (
            "/srv/page.j2".to_owned(),
            "<h1>{{ title }}</h1>\n{% if x %}y{% endif %}\n".to_owned(),
        ),
        ("/srv/{{ lookup('pipe','id') }}".to_owned(), "a".to_owned()),
        ("/srv/yes".to_owned(), "yes".to_owned()),
        ("/srv/empty".to_owned(), String::new()),
    ]);
    let g = generate(&diff, &texts, &opts());
    assert_eq!(
        names(&g.tasks),
        vec![
            "Copy /srv/big.txt (large, 2000000 bytes, from artefact sha256:aaaa1111bbbb…)",
            "Copy /srv/empty",
            "Copy /srv/page.j2",
            "Copy /srv/yes",
            "Copy /srv/{ { lookup('pipe','id') }}",
        ]
    );
    assert_eq!(g.tasks[0].params["owner"], json!("1001"));
    assert_eq!(g.tasks[1].params["content"], json!(""));
    assert_eq!(
        g.tasks[2].params["content"],
        unsafe_string("<h1>{{ title }}</h1>\n{% if x %}y{% endif %}\n")
    );
    assert_eq!(
        g.tasks[4].params["dest"],
        unsafe_string("/srv/{{ lookup('pipe','id') }}")
    );
    assert!(
        g.review
            .iter()
            .any(|r| r.starts_with("/srv/unknown.bin: its content is not known"))
    );
    assert_eq!(g.artefacts.len(), 1);

    // With a limit, an over-limit text file is an artefact too.
    let small = GenerateOptions {
        text_limit_bytes: 10,
        ..opts()
    };
    let g2 = generate(&diff, &texts, &small);
    assert!(
        g2.tasks
            .iter()
            .any(|t| t.name.starts_with("Copy /srv/page.j2 (large, 30 bytes"))
    );

    let doc = PlaybookDoc::from_tasks("big", "all", true, g.tasks.clone());
    let yaml = to_yaml(&doc).expect("yaml");
    assert!(yaml.contains("content: 'yes'"), "{yaml}");
    assert!(yaml.contains("content: !unsafe |"), "{yaml}");
}

#[test]
fn services_restarts_and_unit_links() {
    let diff = DiffJson {
        files_added: vec![
            text_file("/etc/redis/redis.conf", 10, SHA_B),
            text_file("/etc/myapp/app.conf", 10, SHA_B),
            owned(
                text_file("/lib/systemd/system/myapp.service", 10, SHA_B),
                "myapp",
            ),
            text_file("/etc/other/x.conf", 10, SHA_B),
            text_file("/etc/systemd/system/web.service.d/override.conf", 10, SHA_B),
            text_file("/etc/systemd/system/getty@.service", 10, SHA_B),
            link(
                "/etc/systemd/system/sshd.service",
                "/lib/systemd/system/ssh.service",
            ),
        ],
        services_changed: vec![
            service("redis.service", "enabled", "inactive", "enabled", "active"),
            service("static.service", "static", "active", "static", "inactive"),
            service("gone.service", "absent", "unknown", "enabled", "active"),
            service(
                "unmasked.service",
                "enabled",
                "unknown",
                "masked",
                "unknown",
            ),
            service("same.service", "static", "active", "static", "active"),
        ],
        ..DiffJson::default()
    };
    let texts: BTreeMap<String, String> = diff
        .files_added
        .iter()
        .map(|f| (f.path.clone(), "x\n".to_owned()))
        .collect();
    let g = generate(&diff, &texts, &opts());
    assert_eq!(
        names(&g.tasks),
        vec![
            "Copy /etc/myapp/app.conf",
            "Copy /etc/other/x.conf",
            "Copy /etc/redis/redis.conf",
            "Copy /etc/systemd/system/getty@.service",
            "Copy /etc/systemd/system/web.service.d/override.conf",
            "Copy /lib/systemd/system/myapp.service",
            "Enable and stop redis.service",
            "Start static.service",
            "Unmask and enable unmasked.service",
        ]
    );
    // myapp: its unit file comes with the diff; redis is inactive (a restart would
    // start it); other: no such service; a drop-in restarts its unit.
    assert_eq!(names(&g.handlers), vec!["Restart myapp", "Restart web"]);
    assert_eq!(
        find(&g.tasks, "Copy /etc/myapp/app.conf").options["notify"],
        json!(["Restart myapp"])
    );
    assert!(
        find(&g.tasks, "Copy /etc/redis/redis.conf")
            .options
            .get("notify")
            .is_none()
    );
    assert!(
        find(&g.tasks, "Copy /etc/systemd/system/getty@.service")
            .options
            .get("notify")
            .is_none()
    );
    assert_eq!(
        find(&g.tasks, "Unmask and enable unmasked.service").params,
        json!({"name": "unmasked.service", "masked": false, "enabled": true, "daemon_reload": true})
    );
}

#[test]
fn modifications_without_changes_and_kind_changes() {
    let same = {
        let mut m = meta("file", "0644");
        m.sha256 = Some(SHA_B.into());
        modified(text_file("/etc/same", 3, SHA_B), m)
    };
    let retyped = modified(link("/etc/now-a-link", "/etc/target"), meta("file", "0644"));
    let dir_mode = {
        let mut d = modified(entry("/srv/data", "dir"), meta("dir", "0755"));
        d.meta.mode = "0700".into();
        d
    };
    let diff = DiffJson {
        files_modified: vec![same, retyped, dir_mode],
        ..DiffJson::default()
    };
    let g = generate(&diff, &BTreeMap::new(), &opts());
    assert_eq!(
        names(&g.tasks),
        vec![
            "Link /etc/now-a-link -> /etc/target",
            "Set mode and owner of directory /srv/data",
        ]
    );
    assert_eq!(
        g.tasks[1].params,
        json!({"path": "/srv/data", "state": "directory", "mode": "0700", "owner": "root", "group": "root"})
    );
    assert!(
        g.review
            .iter()
            .any(|r| r.contains("/etc/now-a-link changed from a file to a symlink"))
    );
}

#[test]
fn removals_skip_machinery_and_removed_packages() {
    let diff = DiffJson {
        files_removed: vec![
            owned(text_file("/usr/sbin/exim4", 1, SHA_A), "exim4"),
            text_file("/var/log/exim4/mainlog", 1, SHA_A),
            link(
                "/etc/systemd/system/multi-user.target.wants/exim4.service",
                "/lib/systemd/system/exim4.service",
            ),
            text_file("/etc/group-", 1, SHA_A),
            entry("/srv/a", "dir"),
            entry("/srv/a/b", "dir"),
            text_file("/srv/a/b/c", 1, SHA_A),
            text_file("/srv/ab", 1, SHA_A),
        ],
        packages_removed: vec![pkg("exim4", "4.96", false)],
        ..DiffJson::default()
    };
    let g = generate(&diff, &BTreeMap::new(), &opts());
    assert_eq!(
        names(&g.tasks),
        vec![
            "Remove packages: exim4 (4.96)",
            "Remove directory /srv/a and its content",
            "Remove /srv/ab",
        ]
    );
    assert_eq!(g.review.len(), 1, "{:?}", g.review);
    assert!(g.review[0].starts_with("accounts changed (/etc/group-)"));
}

#[test]
fn review_tasks_keep_the_command_order_and_cut_long_names() {
    let long = format!("python3 -c 'print(1)' # {}", "x".repeat(300));
    let diff = DiffJson {
        commands_run: vec![
            command(9, "useradd app", Some(0)),
            command(2, &long, Some(0)),
            command(3, "wget -q http://x/y", None),
            command(4, "cat <<'EOF' > /etc/app.conf\n$(not run)\nEOF", Some(0)),
            command(5, "attach (interactive shell as root)", None),
        ],
        ..DiffJson::default()
    };
    let g = generate(&diff, &BTreeMap::new(), &opts());
    assert_eq!(g.tasks.len(), 2);
    assert!(g.tasks[0].name.starts_with("REVIEW: command run in the sandbox, not expressed declaratively: python3 -c 'print(1)' # xxx"));
    assert!(g.tasks[0].name.ends_with('…'));
    assert!(g.tasks[0].name.chars().count() <= 256);
    assert_eq!(g.tasks[0].params["cmd"], Value::String(long));
    assert!(g.tasks[1].name.ends_with(": useradd app"));
    assert!(
        g.review
            .iter()
            .any(|r| r.contains("(CMD-3) did not finish"))
    );
    assert!(
        g.review
            .iter()
            .any(|r| r.starts_with("an interactive session (CMD-5) ran in the sandbox"))
    );
    assert_eq!(g.review.len(), 4, "{:?}", g.review);
}
