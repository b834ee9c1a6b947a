//! From the agent's `SnapshotDiff` to the REST shapes: the fluid-remote v1 `diff_json`
//! (files with mode, owner and size; packages; services), the unified diffs of changed
//! text files, and both sides' text of each (the [`DiffDetail`] that playbook
//! generation reads). Pure; no I/O.

use std::collections::BTreeMap;

use fluid_client::snapshots::{
    DiffJson, FileEntry, FileMeta, PackageEntry, PackageUpgrade, ServiceEntry, TextDiff,
};
use fluid_proto::pb;
use serde::{Deserialize, Serialize};

/// Context lines around each change of a unified diff.
pub const CONTEXT_LINES: usize = 3;

/// Both sides' content of a changed text file (`None`: the side has no such file).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextPair {
    pub before: Option<String>,
    pub after: Option<String>,
}

/// What a diff keeps beyond its REST shape: the text of changed text files, by path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffDetail {
    pub texts: BTreeMap<String, TextPair>,
}

/// A converted diff (without `commands_run`, which comes from the audit).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Converted {
    pub diff_json: DiffJson,
    pub text_diffs: Vec<TextDiff>,
    pub detail: DiffDetail,
}

/// `file`, `dir`, `symlink` or `other`.
pub fn kind_name(k: pb::FileKind) -> &'static str {
    match k {
        pb::FileKind::Regular => "file",
        pb::FileKind::Directory => "dir",
        pb::FileKind::Symlink => "symlink",
        pb::FileKind::Other | pb::FileKind::Unspecified => "other",
    }
}

/// One side's metadata; the mode as four octal digits (`0644`, `4755`).
pub fn file_meta(m: &pb::FileMeta) -> FileMeta {
    FileMeta {
        kind: kind_name(m.kind()).to_owned(),
        mode: format!("{:04o}", m.mode & 0o7777),
        owner: m.owner.clone(),
        group: m.group.clone(),
        uid: m.uid,
        gid: m.gid,
        size: m.size,
        sha256: (!m.sha256.is_empty()).then(|| m.sha256.clone()),
        link_target: (!m.link_target.is_empty()).then(|| m.link_target.clone()),
    }
}

/// A unified diff of one file (`--- a/<path>`, `+++ b/<path>`, [`CONTEXT_LINES`] of
/// context); empty when the texts are equal.
pub fn unified(path: &str, before: &str, after: &str) -> String {
    let p = path.trim_start_matches('/');
    similar::TextDiff::from_lines(before, after)
        .unified_diff()
        .context_radius(CONTEXT_LINES)
        .header(&format!("a/{p}"), &format!("b/{p}"))
        .to_string()
}

fn entry(c: &pb::FileChange, meta: &pb::FileMeta, previous: Option<&pb::FileMeta>) -> FileEntry {
    let meta = file_meta(meta);
    FileEntry {
        path: c.path.clone(),
        // Content compared by hash only: a regular file that is not text within the limit.
        binary: meta.kind == "file" && !c.text,
        meta,
        package: (!c.package.is_empty()).then(|| c.package.clone()),
        conffile_modified: c.conffile_modified,
        previous: previous.map(file_meta),
    }
}

fn state_or_unknown(s: &str) -> String {
    if s.is_empty() {
        "unknown".to_owned()
    } else {
        s.to_owned()
    }
}

/// Converts the agent's diff; lists come sorted (files by path, the rest by name).
pub fn convert(d: &pb::SnapshotDiff) -> Converted {
    let mut out = Converted::default();
    let j = &mut out.diff_json;
    let none = pb::FileMeta::default();
    for c in &d.files {
        let (before, after) = (c.before.as_ref(), c.after.as_ref());
        match c.change() {
            pb::ChangeKind::Added => j.files_added.push(entry(c, after.unwrap_or(&none), None)),
            pb::ChangeKind::Removed => {
                j.files_removed
                    .push(entry(c, before.unwrap_or(&none), None))
            }
            pb::ChangeKind::Modified | pb::ChangeKind::Unspecified => {
                j.files_modified
                    .push(entry(c, after.unwrap_or(&none), before))
            }
        }
        if !c.text {
            continue;
        }
        let pair = TextPair {
            before: before.map(|_| c.before_text.clone()),
            after: after.map(|_| c.after_text.clone()),
        };
        let u = unified(
            &c.path,
            pair.before.as_deref().unwrap_or_default(),
            pair.after.as_deref().unwrap_or_default(),
        );
        if !u.is_empty() {
            out.text_diffs.push(TextDiff {
                path: c.path.clone(),
                unified: u,
            });
        }
        out.detail.texts.insert(c.path.clone(), pair);
    }
    for p in &d.packages {
        match (p.before_version.is_empty(), p.after_version.is_empty()) {
            (true, false) => j.packages_added.push(PackageEntry {
                name: p.name.clone(),
                version: p.after_version.clone(),
                auto_installed: p.auto_installed,
            }),
            (false, true) => j.packages_removed.push(PackageEntry {
                name: p.name.clone(),
                version: p.before_version.clone(),
                auto_installed: p.auto_installed,
            }),
            (false, false) if p.before_version != p.after_version => {
                j.packages_upgraded.push(PackageUpgrade {
                    name: p.name.clone(),
                    from_version: p.before_version.clone(),
                    to_version: p.after_version.clone(),
                });
            }
            _ => {}
        }
    }
    for s in &d.services {
        j.services_changed.push(ServiceEntry {
            name: s.name.clone(),
            enabled: s.after_enablement == "enabled",
            state: state_or_unknown(&s.after_active),
            enablement: s.after_enablement.clone(),
            previous_enablement: s.before_enablement.clone(),
            previous_state: state_or_unknown(&s.before_active),
        });
    }
    for files in [
        &mut j.files_added,
        &mut j.files_modified,
        &mut j.files_removed,
    ] {
        files.sort_by(|a, b| a.path.cmp(&b.path));
    }
    for pkgs in [&mut j.packages_added, &mut j.packages_removed] {
        pkgs.sort_by(|a, b| a.name.cmp(&b.name));
    }
    j.packages_upgraded.sort_by(|a, b| a.name.cmp(&b.name));
    j.services_changed.sort_by(|a, b| a.name.cmp(&b.name));
    out.text_diffs.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn meta(kind: pb::FileKind, mode: u32, size: u64) -> pb::FileMeta {
        pb::FileMeta {
            kind: kind as i32,
            mode,
            uid: 0,
            gid: 0,
            owner: "root".into(),
            group: "root".into(),
            size,
            sha256: "ab".repeat(32),
            link_target: String::new(),
        }
    }

    fn change(path: &str, kind: pb::ChangeKind) -> pb::FileChange {
        pb::FileChange {
            path: path.into(),
            change: kind as i32,
            ..Default::default()
        }
    }

    /// The diff of the scenario: nginx installed, its site added, motd removed.
    pub(crate) fn nginx_diff() -> pb::SnapshotDiff {
        let mut site = change("/etc/nginx/conf.d/site.conf", pb::ChangeKind::Added);
        site.after = Some(meta(pb::FileKind::Regular, 0o644, 24));
        site.text = true;
        site.after_text = "server { listen 8080; }\n".into();
        let mut motd = change("/etc/motd", pb::ChangeKind::Removed);
        motd.before = Some(meta(pb::FileKind::Regular, 0o644, 6));
        motd.text = true;
        motd.before_text = "hello\n".into();
        let mut conf = change("/etc/nginx/nginx.conf", pb::ChangeKind::Modified);
        conf.before = Some(meta(pb::FileKind::Regular, 0o644, 20));
        conf.after = Some(meta(pb::FileKind::Regular, 0o600, 21));
        conf.text = true;
        conf.before_text = "a\nb\nc\nd\ne\nf\ng\nh\n".into();
        conf.after_text = "a\nb\nc\nd\nE\nf\ng\nh\n".into();
        conf.package = "nginx-common".into();
        conf.conffile_modified = true;
        let mut bin = change("/usr/sbin/nginx", pb::ChangeKind::Added);
        bin.after = Some(meta(pb::FileKind::Regular, 0o4755, 1_200_000));
        bin.package = "nginx-core".into();
        let mut dir = change("/var/www/html", pb::ChangeKind::Added);
        dir.after = Some(meta(pb::FileKind::Directory, 0o755, 4096));
        pb::SnapshotDiff {
            files: vec![site, motd, conf, bin, dir],
            packages: vec![
                pb::PackageChange {
                    name: "nginx".into(),
                    after_version: "1.22.1-9".into(),
                    architecture: "amd64".into(),
                    ..Default::default()
                },
                pb::PackageChange {
                    name: "libgd3".into(),
                    after_version: "2.3.3-9".into(),
                    auto_installed: true,
                    ..Default::default()
                },
                pb::PackageChange {
                    name: "vim-tiny".into(),
                    before_version: "2:9.0".into(),
                    ..Default::default()
                },
                pb::PackageChange {
                    name: "openssl".into(),
                    before_version: "3.0.11".into(),
                    after_version: "3.0.13".into(),
                    ..Default::default()
                },
            ],
            services: vec![pb::ServiceChange {
                name: "nginx.service".into(),
                before_enablement: "absent".into(),
                after_enablement: "enabled".into(),
                before_active: String::new(),
                after_active: "active".into(),
                unit_path: "/lib/systemd/system/nginx.service".into(),
            }],
            from_entries: 10,
            to_entries: 15,
            elapsed_ms: 3,
        }
    }

    #[test]
    fn files_packages_and_services_take_the_v1_shape() {
        let c = convert(&nginx_diff());
        let j = &c.diff_json;
        let added: Vec<&str> = j.files_added.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            added,
            [
                "/etc/nginx/conf.d/site.conf",
                "/usr/sbin/nginx",
                "/var/www/html"
            ]
        );
        let site = &j.files_added[0];
        assert_eq!(
            (
                site.meta.mode.as_str(),
                site.meta.kind.as_str(),
                site.binary
            ),
            ("0644", "file", false)
        );
        assert_eq!(j.files_added[1].meta.mode, "4755");
        assert!(j.files_added[1].binary, "not text: compared by hash");
        assert_eq!(j.files_added[1].package.as_deref(), Some("nginx-core"));
        assert!(!j.files_added[2].binary, "a directory has no content");
        assert_eq!(j.files_added[2].meta.kind, "dir");
        let conf = &j.files_modified[0];
        assert_eq!(conf.meta.mode, "0600");
        assert_eq!(
            conf.previous.as_ref().map(|p| p.mode.as_str()),
            Some("0644")
        );
        assert!(conf.conffile_modified);
        assert_eq!(j.files_removed[0].path, "/etc/motd");
        assert_eq!(
            j.files_removed[0].meta.size, 6,
            "the removed file's metadata"
        );

        let names = |v: &[PackageEntry]| v.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&j.packages_added), ["libgd3", "nginx"]);
        assert!(j.packages_added[0].auto_installed);
        assert_eq!(j.packages_added[1].version, "1.22.1-9");
        assert_eq!(names(&j.packages_removed), ["vim-tiny"]);
        assert_eq!(j.packages_upgraded[0].to_version, "3.0.13");

        let s = &j.services_changed[0];
        assert!(s.enabled);
        assert_eq!(
            (
                s.state.as_str(),
                s.previous_enablement.as_str(),
                s.previous_state.as_str()
            ),
            ("active", "absent", "unknown")
        );
        assert!(j.commands_run.is_empty());
    }

    #[test]
    fn text_files_get_unified_diffs_and_both_texts() {
        let c = convert(&nginx_diff());
        let paths: Vec<&str> = c.text_diffs.iter().map(|t| t.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/etc/motd",
                "/etc/nginx/conf.d/site.conf",
                "/etc/nginx/nginx.conf"
            ]
        );
        assert_eq!(
            c.text_diffs[0].unified,
            "--- a/etc/motd\n+++ b/etc/motd\n@@ -1 +0,0 @@\n-hello\n"
        );
        assert!(
            c.text_diffs[1]
                .unified
                .starts_with("--- a/etc/nginx/conf.d/site.conf\n+++ b/etc/nginx/conf.d/site.conf\n@@ -0,0 +1 @@\n+server"),
            "{}",
            c.text_diffs[1].unified
        );
        // Three lines of context each side of the one changed line.
        assert_eq!(
            c.text_diffs[2].unified,
            "--- a/etc/nginx/nginx.conf\n+++ b/etc/nginx/nginx.conf\n@@ -2,7 +2,7 @@\n b\n c\n d\n-e\n+E\n f\n g\n h\n"
        );
        let motd = &c.detail.texts["/etc/motd"];
        assert_eq!(
            (motd.before.as_deref(), motd.after.as_deref()),
            (Some("hello\n"), None)
        );
        let site = &c.detail.texts["/etc/nginx/conf.d/site.conf"];
        assert_eq!(site.before, None);
        assert!(!c.detail.texts.contains_key("/usr/sbin/nginx"));
        // A mode-only change of a text file has no text diff, but keeps its texts.
        let mut same = change("/etc/x", pb::ChangeKind::Modified);
        same.before = Some(meta(pb::FileKind::Regular, 0o644, 2));
        same.after = Some(meta(pb::FileKind::Regular, 0o755, 2));
        same.text = true;
        same.before_text = "x\n".into();
        same.after_text = "x\n".into();
        let c = convert(&pb::SnapshotDiff {
            files: vec![same],
            ..Default::default()
        });
        assert!(c.text_diffs.is_empty());
        assert_eq!(c.detail.texts.len(), 1);
    }
}
