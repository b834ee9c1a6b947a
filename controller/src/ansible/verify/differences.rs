//! A verification's differences: the diff from the original sandbox (its playbook's
//! source at `to_snapshot`: what is expected) to the fresh sandbox the playbook was
//! applied to (what it actually produced), one [`Difference`] per file, package and
//! service, minus the paths that differ between any two sandboxes.

use fluid_client::ansible::Difference;
use fluid_client::snapshots::{DiffJson, FileMeta, ServiceEntry};

/// Whether `path` is covered by one of `ignore` (an entry covers itself and what is
/// below it; a trailing `*` matches any suffix).
pub fn is_ignored(path: &str, ignore: &[String]) -> bool {
    ignore.iter().any(|e| match e.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => {
            let e = e.trim_end_matches('/');
            path == e || path.strip_prefix(e).is_some_and(|r| r.starts_with('/'))
        }
    })
}

/// A path's state in one line: `file 0644 root:root 12 B sha256:0123abcd…`.
pub fn describe(m: &FileMeta) -> String {
    let who = format!("{}:{}", m.owner, m.group);
    match m.kind.as_str() {
        "file" => {
            let hash = m
                .sha256
                .as_deref()
                .map(|h| format!(" sha256:{}", &h[..h.len().min(12)]))
                .unwrap_or_default();
            format!("file {} {who} {} B{hash}", m.mode, m.size)
        }
        "symlink" => format!("symlink -> {}", m.link_target.as_deref().unwrap_or("?")),
        kind => format!("{kind} {} {who}", m.mode),
    }
}

fn service_state(enablement: &str, state: &str) -> String {
    match state {
        "" | "unknown" => enablement.to_owned(),
        s => format!("{enablement}, {s}"),
    }
}

fn service(s: &ServiceEntry) -> Difference {
    Difference {
        what: "service".into(),
        name: s.name.clone(),
        expected: service_state(&s.previous_enablement, &s.previous_state),
        actual: service_state(&s.enablement, &s.state),
    }
}

/// The differences of `d` (from = expected, to = actual), and the changed paths that
/// `ignore` left out.
pub fn differences(d: &DiffJson, ignore: &[String]) -> (Vec<Difference>, Vec<String>) {
    let mut out = Vec::new();
    let mut ignored = Vec::new();
    let mut file = |path: &str, expected: String, actual: String| {
        if is_ignored(path, ignore) {
            ignored.push(path.to_owned());
        } else {
            out.push(Difference {
                what: "file".into(),
                name: path.to_owned(),
                expected,
                actual,
            });
        }
    };
    for f in &d.files_added {
        file(&f.path, "absent".into(), describe(&f.meta));
    }
    for f in &d.files_removed {
        file(&f.path, describe(&f.meta), "absent".into());
    }
    for f in &d.files_modified {
        let expected = f
            .previous
            .as_ref()
            .map_or_else(|| "different".to_owned(), describe);
        file(&f.path, expected, describe(&f.meta));
    }
    for p in &d.packages_added {
        out.push(Difference {
            what: "package".into(),
            name: p.name.clone(),
            expected: "absent".into(),
            actual: p.version.clone(),
        });
    }
    for p in &d.packages_removed {
        out.push(Difference {
            what: "package".into(),
            name: p.name.clone(),
            expected: p.version.clone(),
            actual: "absent".into(),
        });
    }
    for p in &d.packages_upgraded {
        out.push(Difference {
            what: "package".into(),
            name: p.name.clone(),
            expected: p.from_version.clone(),
            actual: p.to_version.clone(),
        });
    }
    out.extend(d.services_changed.iter().map(service));
    out.sort_by(|a, b| (&a.what, &a.name).cmp(&(&b.what, &b.name)));
    ignored.sort();
    (out, ignored)
}

#[cfg(test)]
mod tests {
    use fluid_client::snapshots::{FileEntry, PackageEntry, PackageUpgrade};

    use super::*;

    fn meta(kind: &str, size: u64) -> FileMeta {
        FileMeta {
            kind: kind.into(),
            mode: "0644".into(),
            owner: "root".into(),
            group: "root".into(),
            uid: 0,
            gid: 0,
            size,
            sha256: (kind == "file").then(|| "ab".repeat(32)),
            link_target: None,
        }
    }

    fn entry(path: &str, previous: Option<FileMeta>) -> FileEntry {
        FileEntry {
            path: path.into(),
            meta: meta("file", 3),
            binary: false,
            package: None,
            conffile_modified: false,
            previous,
        }
    }

    #[test]
    fn ignore_entries_cover_what_is_below_and_globs() {
        let ignore: Vec<String> = ["/etc/hostname", "/etc/ssh/ssh_host_*", "/root/.ansible/"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        for p in [
            "/etc/hostname",
            "/etc/ssh/ssh_host_ed25519_key.pub",
            "/root/.ansible",
            "/root/.ansible/tmp/x",
        ] {
            assert!(is_ignored(p, &ignore), "{p}");
        }
        for p in [
            "/etc/hostnamectl",
            "/etc/ssh/sshd_config",
            "/root/.ansiblex",
        ] {
            assert!(!is_ignored(p, &ignore), "{p}");
        }
    }

    #[test]
    fn every_change_is_a_difference_but_identity_noise() {
        let d = DiffJson {
            files_added: vec![entry("/etc/extra.conf", None), entry("/etc/hostname", None)],
            files_removed: vec![entry("/etc/nginx/conf.d/site.conf", None)],
            files_modified: vec![entry("/etc/motd", Some(meta("file", 9)))],
            packages_added: vec![PackageEntry {
                name: "curl".into(),
                version: "7.88".into(),
                auto_installed: false,
            }],
            packages_removed: vec![PackageEntry {
                name: "nginx".into(),
                version: "1.22".into(),
                auto_installed: false,
            }],
            packages_upgraded: vec![PackageUpgrade {
                name: "libc6".into(),
                from_version: "2.36-9".into(),
                to_version: "2.36-9+deb12u4".into(),
            }],
            services_changed: vec![ServiceEntry {
                name: "nginx.service".into(),
                enabled: false,
                state: "unknown".into(),
                enablement: "absent".into(),
                previous_enablement: "enabled".into(),
                previous_state: "active".into(),
            }],
            commands_run: vec![],
        };
        let (diffs, ignored) = differences(&d, &["/etc/hostname".to_owned()]);
        assert_eq!(ignored, ["/etc/hostname"]);
        let rows: Vec<(&str, &str, &str, &str)> = diffs
            .iter()
            .map(|d| {
                (
                    d.what.as_str(),
                    d.name.as_str(),
                    d.expected.as_str(),
                    d.actual.as_str(),
                )
            })
            .collect();
        let sha = format!("sha256:{}", &"ab".repeat(32)[..12]);
        assert_eq!(
            rows,
            [
                (
                    "file",
                    "/etc/extra.conf",
                    "absent",
                    &*format!("file 0644 root:root 3 B {sha}")
                ),
                (
                    "file",
                    "/etc/motd",
                    &*format!("file 0644 root:root 9 B {sha}"),
                    &*format!("file 0644 root:root 3 B {sha}")
                ),
                (
                    "file",
                    "/etc/nginx/conf.d/site.conf",
                    &*format!("file 0644 root:root 3 B {sha}"),
                    "absent"
                ),
                ("package", "curl", "absent", "7.88"),
                ("package", "libc6", "2.36-9", "2.36-9+deb12u4"),
                ("package", "nginx", "1.22", "absent"),
                ("service", "nginx.service", "enabled, active", "absent"),
            ]
        );
        let (none, _) = differences(&DiffJson::default(), &[]);
        assert!(none.is_empty());
    }
}
