//! The whole comparison on two real ext4 images.

use super::scenario::build;
use crate::{
    ChangeKind, DiffOptions, DiskImage, Enablement, FileChange, Kind, PackageChange, ServiceChange,
    diff, manifest,
};

struct Pair {
    _dir: tempfile::TempDir,
    before: DiskImage,
    after: DiskImage,
}

fn pair() -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.raw"), dir.path().join("b.raw"));
    build(false, &a);
    build(true, &b);
    Pair {
        before: DiskImage::open(&a).unwrap(),
        after: DiskImage::open(&b).unwrap(),
        _dir: dir,
    }
}

fn change(f: &FileChange) -> ChangeKind {
    f.change
}

fn find<'a>(files: &'a [FileChange], path: &str) -> &'a FileChange {
    files
        .iter()
        .find(|f| f.path == path)
        .unwrap_or_else(|| panic!("{path} not in the diff"))
}

#[test]
fn manifest_reads_entries_and_facts() {
    let p = pair();
    let opts = DiffOptions::default();
    let m = manifest(&p.after, &opts).unwrap();

    assert_eq!(m.accounts.user(1000), "alice");
    assert_eq!(m.accounts.group(0), "root");
    let tool = &m.entries["/usr/bin/tool"];
    assert_eq!((tool.kind, tool.mode, tool.size), (Kind::Regular, 0o755, 7));
    assert_eq!(
        tool.sha256_hex(),
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"\x7fELF\0\x01\x03"))
    );
    assert_eq!(m.entries["/lib"].link_target.as_deref(), Some("usr/lib"));
    assert_eq!(m.entries["/"].kind, Kind::Directory);
    // Metadata-only paths are not hashed.
    assert_eq!(m.entries["/var/log/app.log"].sha256, None);
    // A name that is not UTF-8 is escaped in the key and kept raw.
    assert_eq!(
        m.entries["/etc/bad\\xff"].raw_path.as_deref(),
        Some(&b"/etc/bad\xff"[..])
    );

    for path in m.entries.keys() {
        for v in [
            "/tmp",
            "/var/cache",
            "/lost+found",
            "/var/lib/systemd/random-seed",
        ] {
            assert!(
                !(path == v || path.starts_with(&format!("{v}/"))),
                "volatile path {path} in the manifest"
            );
        }
    }
    assert!(
        m.entries.contains_key("/var/cache2/keep"),
        "prefixes match whole components"
    );

    let pkgs: Vec<_> = m.dpkg.packages.keys().cloned().collect();
    assert_eq!(
        pkgs,
        [
            "base-files:amd64",
            "cfgpkg:all",
            "libdep:all",
            "libmulti:amd64",
            "libmulti:i386",
            "newpkg:amd64",
            "upg:amd64"
        ]
    );
    assert!(m.dpkg.packages["libdep:all"].auto_installed);
    assert!(!m.dpkg.packages["upg:amd64"].auto_installed);
    assert_eq!(m.dpkg.conffiles["/etc/new.conf"].package, "newpkg");
    assert_eq!(m.dpkg.owners["/etc/cfg.conf"], "cfgpkg");
    assert_eq!(m.dpkg.owners["/"], "base-files");
    assert_eq!(m.dpkg.owners["/usr/lib/i386/libmulti.so"], "libmulti");

    let units: Vec<_> = m
        .services
        .iter()
        .map(|(n, s)| (n.as_str(), s.enablement))
        .collect();
    assert_eq!(
        units,
        [
            ("bar.service", Enablement::Disabled),
            ("baz.service", Enablement::Masked),
            ("foo.service", Enablement::Disabled),
            ("qux.service", Enablement::Enabled),
            ("static.service", Enablement::Static),
        ]
    );
    // /lib → usr/lib is read once, under its real path.
    assert_eq!(
        m.services["foo.service"].unit_path,
        "/usr/lib/systemd/system/foo.service"
    );
}

#[test]
fn diff_reports_exactly_the_changes() {
    let p = pair();
    let opts = DiffOptions::default();
    let (mb, ma) = (
        manifest(&p.before, &opts).unwrap(),
        manifest(&p.after, &opts).unwrap(),
    );
    let d = diff((&p.before, &mb), (&p.after, &ma), &opts).unwrap();

    let got: Vec<(&str, ChangeKind)> = d
        .files
        .iter()
        .map(|f| (f.path.as_str(), change(f)))
        .collect();
    use ChangeKind::{Added as A, Modified as M, Removed as R};
    assert_eq!(
        got,
        [
            ("/etc/alt", M),
            ("/etc/bad\\xff", A),
            ("/etc/cfg.conf", M),
            ("/etc/hostname", M),
            ("/etc/motd", R),
            ("/etc/new.conf", A),
            ("/etc/systemd/system/baz.service", A),
            ("/etc/systemd/system/multi-user.target.wants/bar.service", R),
            ("/etc/systemd/system/multi-user.target.wants/qux.service", A),
            ("/etc/systemd/system/qux.service", A),
            ("/home/alice/notes", M),
            ("/srv/data", M),
            ("/srv/newdir", A),
            ("/usr/bin/old", R),
            ("/usr/bin/tool", M),
            ("/var/cache2/keep", M),
            ("/var/lib/apt/extended_states", A),
            ("/var/lib/dpkg/info/libmulti:i386.list", A),
            ("/var/lib/dpkg/info/newpkg.list", A),
            ("/var/lib/dpkg/info/oldpkg.list", R),
            ("/var/lib/dpkg/status", M),
            ("/var/log/other.log", M),
        ]
    );

    let hostname = find(&d.files, "/etc/hostname");
    assert!(hostname.text);
    assert_eq!(
        (hostname.before_text.as_str(), hostname.after_text.as_str()),
        ("a\n", "b\n")
    );
    assert_eq!(hostname.package, "base-files");
    assert!(!hostname.conffile_modified);
    let (b, a) = (
        hostname.before.as_ref().unwrap(),
        hostname.after.as_ref().unwrap(),
    );
    assert_eq!(
        (b.kind, b.mode, b.owner.as_str(), b.group.as_str(), b.size),
        (Kind::Regular, 0o644, "root", "root", 2)
    );
    assert_ne!(b.sha256, a.sha256);

    let motd = find(&d.files, "/etc/motd");
    assert!(motd.text && motd.after.is_none());
    assert_eq!(
        (motd.before_text.as_str(), motd.after_text.as_str()),
        ("hello\n", "")
    );
    assert_eq!(motd.package, "base-files");

    let cfg = find(&d.files, "/etc/cfg.conf");
    assert!(cfg.conffile_modified && cfg.text);
    assert_eq!(cfg.package, "cfgpkg");
    assert_eq!(cfg.after_text, "key=2\n");

    let new_conf = find(&d.files, "/etc/new.conf");
    assert!(new_conf.before.is_none() && new_conf.text && !new_conf.conffile_modified);
    assert_eq!(
        (new_conf.package.as_str(), new_conf.after_text.as_str()),
        ("newpkg", "new=1\n")
    );

    let tool = find(&d.files, "/usr/bin/tool");
    assert!(!tool.text && tool.before_text.is_empty() && tool.after_text.is_empty());
    assert_eq!(tool.package, "upg");

    let alt = find(&d.files, "/etc/alt");
    assert!(!alt.text);
    assert_eq!(alt.before.as_ref().unwrap().link_target, "/usr/bin/tool");
    assert_eq!(alt.after.as_ref().unwrap().link_target, "/usr/bin/other");
    assert_eq!(alt.after.as_ref().unwrap().kind, Kind::Symlink);

    let notes = find(&d.files, "/home/alice/notes");
    assert_eq!(notes.before.as_ref().unwrap().owner, "alice");
    assert_eq!(notes.after.as_ref().unwrap().owner, "root");
    assert_eq!(notes.after.as_ref().unwrap().group, "alice");

    let data = find(&d.files, "/srv/data");
    assert_eq!(data.after.as_ref().unwrap().kind, Kind::Directory);
    assert_eq!(
        (
            data.before.as_ref().unwrap().mode,
            data.after.as_ref().unwrap().mode
        ),
        (0o755, 0o700)
    );

    let log = find(&d.files, "/var/log/other.log");
    assert_eq!(log.after.as_ref().unwrap().sha256, "");
    assert_eq!(log.after.as_ref().unwrap().mode, 0o600);

    assert_eq!(find(&d.files, "/usr/bin/old").package, "oldpkg");
    assert_eq!(find(&d.files, "/etc/bad\\xff").after_text, "x");

    let pkg = |name: &str, before: &str, after: &str, arch: &str, auto: bool| PackageChange {
        name: name.into(),
        before_version: before.into(),
        after_version: after.into(),
        architecture: arch.into(),
        auto_installed: auto,
    };
    assert_eq!(
        d.packages,
        [
            pkg("libdep", "", "3.1", "all", true),
            pkg("libmulti", "", "1.0", "i386", false),
            pkg("newpkg", "", "1.0", "amd64", false),
            pkg("oldpkg", "1.0", "", "amd64", false),
            pkg("upg", "1.0", "2.0", "amd64", false),
        ]
    );

    let svc = |name: &str, before: &str, after: &str, path: &str| ServiceChange {
        name: name.into(),
        before_enablement: before.into(),
        after_enablement: after.into(),
        before_active: String::new(),
        after_active: String::new(),
        unit_path: path.into(),
    };
    assert_eq!(
        d.services,
        [
            svc(
                "bar.service",
                "enabled",
                "disabled",
                "/usr/lib/systemd/system/bar.service"
            ),
            svc(
                "baz.service",
                "disabled",
                "masked",
                "/etc/systemd/system/baz.service"
            ),
            svc(
                "qux.service",
                "absent",
                "enabled",
                "/etc/systemd/system/qux.service"
            ),
        ]
    );
    assert_eq!(d.from_entries, mb.entries.len() as u64);
    assert_eq!(d.to_entries, ma.entries.len() as u64);
}

#[test]
fn a_state_against_itself_is_empty() {
    let p = pair();
    let opts = DiffOptions::default();
    let m = manifest(&p.before, &opts).unwrap();
    let d = diff((&p.before, &m), (&p.before, &m), &opts).unwrap();
    assert!(d.files.is_empty() && d.packages.is_empty() && d.services.is_empty());
}

#[test]
fn options_change_what_is_compared() {
    let p = pair();
    // No volatile paths: the cache and /tmp show up. No metadata-only paths: the log's
    // content counts. A 1-byte text limit: only 1-byte files are text.
    let opts = DiffOptions {
        volatile_paths: vec![],
        metadata_only_paths: vec![],
        text_limit_bytes: 1,
    };
    let (mb, ma) = (
        manifest(&p.before, &opts).unwrap(),
        manifest(&p.after, &opts).unwrap(),
    );
    let d = diff((&p.before, &mb), (&p.after, &ma), &opts).unwrap();
    for path in [
        "/var/cache/apt/junk",
        "/tmp/x",
        "/var/log/app.log",
        "/var/lib/systemd/random-seed",
    ] {
        find(&d.files, path);
    }
    let sizes = |f: &FileChange| {
        [&f.before, &f.after]
            .into_iter()
            .flatten()
            .map(|m| m.size)
            .max()
    };
    assert!(d.files.iter().all(|f| {
        f.text == (sizes(f) <= Some(1) && f.after.as_ref().is_none_or(|m| m.kind == Kind::Regular))
    }));
    assert!(find(&d.files, "/var/cache2/keep").text);
    assert!(!find(&d.files, "/etc/hostname").text);
    // Volatile prefixes given with a trailing slash still match.
    let opts = DiffOptions {
        volatile_paths: vec!["/var/cache/".into(), "/srv".into()],
        ..DiffOptions::default()
    };
    let m = manifest(&p.after, &opts).unwrap();
    assert!(
        !m.entries
            .keys()
            .any(|k| k.starts_with("/srv") || k.starts_with("/var/cache/"))
    );
    assert!(m.entries.contains_key("/var/cache2/keep"));
}
