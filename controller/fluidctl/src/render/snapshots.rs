//! Rendering of snapshots and diffs: the snapshot table, and a diff as a readable
//! summary (files with mode, owner and size; packages; services; commands) followed by
//! the unified diffs of changed text files. Pure, like the rest of [`super`].

use chrono::{DateTime, Utc};
use fluid_client::snapshots::{Diff, FileEntry, Snapshot};

use super::{NONE, age, one_line, rfc3339, table};

fn meta_str<'a>(s: &'a Snapshot, key: &str) -> &'a str {
    s.meta_json[key].as_str().unwrap_or(NONE)
}

/// `NAME ID MEMORY VM-STATE GUEST-SYNC AGE`, oldest first as the controller lists them.
pub fn snapshot_table(snapshots: &[Snapshot], now: DateTime<Utc>) -> String {
    if snapshots.is_empty() {
        return "No snapshots.".to_owned();
    }
    let rows = snapshots
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.id.clone(),
                memory(s).to_owned(),
                meta_str(s, "vm_state").to_owned(),
                one_line(meta_str(s, "guest_sync")),
                age(s.created_at, now),
            ]
        })
        .collect();
    table(
        &["NAME", "ID", "MEMORY", "VM-STATE", "GUEST-SYNC", "AGE"],
        rows,
    )
}

fn memory(s: &Snapshot) -> &'static str {
    if s.meta_json["memory"].as_bool().unwrap_or(false) {
        "yes"
    } else {
        "no"
    }
}

/// `snapshot before (SNP-…) of SBX-… taken with memory at …; guest sync: ok`.
pub fn snapshot_taken(s: &Snapshot) -> String {
    let with = if memory(s) == "yes" {
        "with memory"
    } else {
        "disk-only"
    };
    format!(
        "snapshot {} ({}) of {} taken {with} at {}; guest sync: {}",
        s.name,
        s.id,
        s.sandbox_id,
        rfc3339(s.created_at),
        one_line(meta_str(s, "guest_sync"))
    )
}

/// `0644 root:root 24` — the mode, owner and size of one side.
fn meta_cols(f: &FileEntry) -> (String, String, String) {
    let m = &f.meta;
    let mode = match &f.previous {
        Some(p) if p.mode != m.mode => format!("{}→{}", p.mode, m.mode),
        _ => m.mode.clone(),
    };
    let owner = match &f.previous {
        Some(p) if (p.owner.as_str(), p.group.as_str()) != (m.owner.as_str(), m.group.as_str()) => {
            format!("{}:{}→{}:{}", p.owner, p.group, m.owner, m.group)
        }
        _ => format!("{}:{}", m.owner, m.group),
    };
    let size = match &f.previous {
        Some(p) if p.size != m.size => format!("{}→{}", p.size, m.size),
        _ => m.size.to_string(),
    };
    (mode, owner, size)
}

fn file_note(f: &FileEntry) -> String {
    let mut notes = Vec::new();
    if f.meta.kind != "file" {
        notes.push(f.meta.kind.clone());
    }
    if let Some(t) = &f.meta.link_target {
        notes.push(format!("→ {t}"));
    }
    if f.binary {
        notes.push("binary".into());
    }
    match (&f.package, f.conffile_modified) {
        (Some(p), true) => notes.push(format!("conffile of {p}, modified")),
        (Some(p), false) => notes.push(format!("from {p}")),
        (None, _) => {}
    }
    notes.join(", ")
}

/// The diff's summary, then its unified text diffs.
pub fn diff_view(d: &Diff) -> String {
    let j = &d.diff_json;
    let mut out = format!(
        "diff {} of {}: {} → {} ({})\n",
        d.id,
        d.sandbox_id,
        d.from_snapshot,
        d.to_snapshot,
        rfc3339(d.created_at)
    );
    let nfiles = j.files_added.len() + j.files_modified.len() + j.files_removed.len();
    out.push_str(&format!(
        "\nFILES: {} added, {} modified, {} removed\n",
        j.files_added.len(),
        j.files_modified.len(),
        j.files_removed.len()
    ));
    if nfiles > 0 {
        let rows = [
            ("+", &j.files_added),
            ("~", &j.files_modified),
            ("-", &j.files_removed),
        ]
        .into_iter()
        .flat_map(|(sign, files)| {
            files.iter().map(move |f| {
                let (mode, owner, size) = meta_cols(f);
                vec![
                    sign.to_owned(),
                    f.path.clone(),
                    mode,
                    owner,
                    size,
                    file_note(f),
                ]
            })
        })
        .collect();
        out.push_str(&table(&["", "PATH", "MODE", "OWNER", "SIZE", "NOTE"], rows));
        out.push('\n');
    }
    out.push_str(&format!(
        "\nPACKAGES: {} added, {} removed, {} upgraded\n",
        j.packages_added.len(),
        j.packages_removed.len(),
        j.packages_upgraded.len()
    ));
    for p in &j.packages_added {
        let auto = if p.auto_installed {
            " (dependency)"
        } else {
            ""
        };
        out.push_str(&format!("+ {} {}{auto}\n", p.name, p.version));
    }
    for p in &j.packages_removed {
        out.push_str(&format!("- {} {}\n", p.name, p.version));
    }
    for p in &j.packages_upgraded {
        out.push_str(&format!(
            "~ {} {} → {}\n",
            p.name, p.from_version, p.to_version
        ));
    }
    out.push_str(&format!(
        "\nSERVICES: {} changed\n",
        j.services_changed.len()
    ));
    for s in &j.services_changed {
        out.push_str(&format!(
            "~ {}: {} → {} ({} → {})\n",
            s.name, s.previous_enablement, s.enablement, s.previous_state, s.state
        ));
    }
    out.push_str(&format!("\nCOMMANDS: {} run\n", j.commands_run.len()));
    for c in &j.commands_run {
        let exit = c
            .exit_code
            .map_or_else(|| "exit -".to_owned(), |e| format!("exit {e}"));
        out.push_str(&format!(
            "{}  {exit:<7}  {}\n",
            rfc3339(c.at),
            one_line(&c.cmd)
        ));
    }
    for t in &d.text_diffs {
        out.push('\n');
        out.push_str(&t.unified);
        if !t.unified.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use fluid_client::snapshots::{
        CommandEntry, DiffJson, FileMeta, PackageEntry, PackageUpgrade, ServiceEntry, TextDiff,
    };

    fn at() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2025-03-01T12:00:00Z")
            .expect("time")
            .with_timezone(&Utc)
    }

    fn meta(mode: &str, size: u64) -> FileMeta {
        FileMeta {
            kind: "file".into(),
            mode: mode.into(),
            owner: "root".into(),
            group: "root".into(),
            uid: 0,
            gid: 0,
            size,
            sha256: None,
            link_target: None,
        }
    }

    fn file(path: &str, m: FileMeta) -> FileEntry {
        FileEntry {
            path: path.into(),
            meta: m,
            binary: false,
            package: None,
            conffile_modified: false,
            previous: None,
        }
    }

    #[test]
    fn snapshots_render_as_a_table() {
        let s = Snapshot {
            id: "SNP-1".into(),
            sandbox_id: "SBX-1".into(),
            name: "before".into(),
            kind: "INTERNAL".into(),
            r#ref: "kvm-1:SBX-1@before".into(),
            created_at: at(),
            meta_json: serde_json::json!({"memory": true, "vm_state": "running", "guest_sync": "ok"}),
        };
        let out = snapshot_table(
            std::slice::from_ref(&s),
            at() + chrono::Duration::minutes(5),
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "NAME    ID     MEMORY  VM-STATE  GUEST-SYNC  AGE");
        assert_eq!(lines[1], "before  SNP-1  yes     running   ok          5m");
        assert_eq!(snapshot_table(&[], at()), "No snapshots.");
        assert_eq!(
            snapshot_taken(&s),
            "snapshot before (SNP-1) of SBX-1 taken with memory at 2025-03-01T12:00:00Z; guest sync: ok"
        );
    }

    #[test]
    fn diffs_read_as_a_summary_then_the_text() {
        let mut conf = file("/etc/nginx/nginx.conf", meta("0600", 21));
        conf.previous = Some(meta("0644", 20));
        conf.package = Some("nginx-common".into());
        conf.conffile_modified = true;
        let mut bin = file("/usr/sbin/nginx", meta("0755", 1200));
        bin.binary = true;
        bin.package = Some("nginx-core".into());
        let d = Diff {
            id: "DIF-1".into(),
            sandbox_id: "SBX-1".into(),
            from_snapshot: "a".into(),
            to_snapshot: "b".into(),
            diff_json: DiffJson {
                files_added: vec![file("/etc/nginx/conf.d/site.conf", meta("0644", 24)), bin],
                files_modified: vec![conf],
                files_removed: vec![file("/etc/motd", meta("0644", 6))],
                packages_added: vec![PackageEntry {
                    name: "nginx".into(),
                    version: "1.22".into(),
                    auto_installed: false,
                }],
                packages_removed: Vec::new(),
                packages_upgraded: vec![PackageUpgrade {
                    name: "openssl".into(),
                    from_version: "3.0.11".into(),
                    to_version: "3.0.13".into(),
                }],
                services_changed: vec![ServiceEntry {
                    name: "nginx.service".into(),
                    enabled: true,
                    state: "active".into(),
                    enablement: "enabled".into(),
                    previous_enablement: "absent".into(),
                    previous_state: "unknown".into(),
                }],
                commands_run: vec![CommandEntry {
                    cmd: "apt-get install -y nginx".into(),
                    exit_code: Some(0),
                    at: at(),
                    id: Some("CMD-1".into()),
                }],
            },
            text_diffs: vec![TextDiff {
                path: "/etc/motd".into(),
                unified: "--- a/etc/motd\n+++ b/etc/motd\n@@ -1 +0,0 @@\n-hello\n".into(),
            }],
            created_at: at(),
        };
        let out = diff_view(&d);
        assert!(
            out.starts_with("diff DIF-1 of SBX-1: a → b (2025-03-01T12:00:00Z)\n"),
            "{out}"
        );
        assert!(
            out.contains("FILES: 2 added, 1 modified, 1 removed\n"),
            "{out}"
        );
        let row = |p: &str| {
            out.lines()
                .find(|l| l.contains(p))
                .unwrap_or_else(|| panic!("{p} missing: {out}"))
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(
            row("site.conf"),
            "+ /etc/nginx/conf.d/site.conf 0644 root:root 24"
        );
        assert_eq!(
            row("/usr/sbin/nginx"),
            "+ /usr/sbin/nginx 0755 root:root 1200 binary, from nginx-core"
        );
        assert_eq!(
            row("nginx.conf"),
            "~ /etc/nginx/nginx.conf 0644→0600 root:root 20→21 conffile of nginx-common, modified"
        );
        assert_eq!(row("/etc/motd  "), "- /etc/motd 0644 root:root 6");
        assert!(
            out.contains("+ nginx 1.22\n~ openssl 3.0.11 → 3.0.13\n"),
            "{out}"
        );
        assert!(
            out.contains("~ nginx.service: absent → enabled (unknown → active)\n"),
            "{out}"
        );
        assert!(
            out.contains("2025-03-01T12:00:00Z  exit 0   apt-get install -y nginx\n"),
            "{out}"
        );
        assert!(
            out.ends_with("\n--- a/etc/motd\n+++ b/etc/motd\n@@ -1 +0,0 @@\n-hello\n"),
            "{out}"
        );
    }
}
