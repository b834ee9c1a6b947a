//! The parsers and small helpers, on text and bytes.

use crate::accounts::parse_id_file;
use crate::dpkg::{apply_auto, paragraphs, parse_extended_states, parse_status};
use crate::files::{display_path, validate_path};
use crate::options::PrefixSet;
use crate::partition::{TableKind, partitions};
use crate::systemd::{has_install_section, template_of};
use crate::{DiffOptions, InspectError};

#[test]
fn deb822_paragraphs_fold_continuations() {
    let p = paragraphs("A: 1\nB:  two\n  more\n\tlines\n\n\n\nC: 3\nno colon line\n");
    assert_eq!(p.len(), 2);
    assert_eq!(
        p[0],
        [
            ("a".into(), "1".into()),
            ("b".into(), "two\nmore\nlines".into())
        ]
    );
    assert_eq!(p[1], [("c".into(), "3".into())]);
}

#[test]
fn status_keeps_installed_packages_and_their_conffiles() {
    let text = "Package: a\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1:2.3-4\n\
        Conffiles:\n /etc/a.conf 0123456789ABCDEF0123456789abcdef\n /etc/old.conf 0123456789abcdef0123456789abcdef obsolete\n \
        /etc/new.conf newconffile\n\n\
        Package: b\nStatus: deinstall ok config-files\nArchitecture: amd64\nVersion: 1\n\
        Conffiles:\n /etc/b.conf 0123456789abcdef0123456789abcdef\n\n\
        Package: c\nStatus: install reinstreq half-installed\nVersion: 1\n\n\
        Package: d\nStatus: hold ok installed\nArchitecture: all\nVersion: 2\n\n\
        Status: install ok installed\nVersion: 9\n";
    let (pkgs, conffiles) = parse_status(text);
    assert_eq!(pkgs.keys().collect::<Vec<_>>(), ["a:amd64", "d:all"]);
    assert_eq!(pkgs["a:amd64"].version, "1:2.3-4");
    assert_eq!(
        conffiles.keys().collect::<Vec<_>>(),
        ["/etc/a.conf", "/etc/old.conf"]
    );
    assert_eq!(
        conffiles["/etc/a.conf"].md5,
        "0123456789abcdef0123456789abcdef"
    );
    assert_eq!(conffiles["/etc/a.conf"].package, "a");
}

#[test]
fn auto_installed_matches_arch_or_arch_all() {
    let (mut pkgs, _) = parse_status(
        "Package: x\nStatus: install ok installed\nArchitecture: i386\nVersion: 1\n\n\
         Package: x\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1\n\n\
         Package: y\nStatus: install ok installed\nArchitecture: all\nVersion: 1\n\n\
         Package: z\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1\n",
    );
    let auto = parse_extended_states(
        "Package: x\nArchitecture: i386\nAuto-Installed: 1\n\n\
         Package: y\nArchitecture: amd64\nAuto-Installed: 1\n\n\
         Package: z\nArchitecture: amd64\nAuto-Installed: 0\n",
    );
    apply_auto(&mut pkgs, &auto);
    let flags: Vec<_> = pkgs
        .iter()
        .map(|(k, p)| (k.as_str(), p.auto_installed))
        .collect();
    assert_eq!(
        flags,
        [
            ("x:amd64", false),
            ("x:i386", true),
            ("y:all", true),
            ("z:amd64", false)
        ]
    );
}

#[test]
fn id_files_skip_junk_and_keep_the_first_name() {
    let ids = parse_id_file(b"root:x:0:0::/root:/bin/sh\n#c:x:5:\n+nis::7:\nbad\ntoor:x:0:0::/:/bin/sh\nn:x:-1:\nu:x:65534:\n\xff\xfe:x:9:\n");
    assert_eq!(ids.get(&0).map(String::as_str), Some("root"));
    assert_eq!(ids.get(&65534).map(String::as_str), Some("u"));
    assert!(!ids.contains_key(&5) && !ids.contains_key(&7));
    assert_eq!(ids.get(&9).map(String::as_str), Some("\u{FFFD}\u{FFFD}"));
}

#[test]
fn install_sections() {
    assert!(has_install_section(
        "[Unit]\n[Install]\nWantedBy=multi-user.target\n"
    ));
    assert!(has_install_section("[install]\n  alias = x.service\n"));
    assert!(!has_install_section(
        "[Unit]\nWantedBy=x\n[Service]\nExecStart=/bin/true\n"
    ));
    assert!(!has_install_section("[Install]\nWantedBy=\n"));
    assert!(!has_install_section("[Install]\n[Service]\nAlso=x\n"));
    assert_eq!(
        template_of("getty@tty1.service").as_deref(),
        Some("getty@.service")
    );
    assert_eq!(template_of("a@b.c.socket").as_deref(), Some("a@.socket"));
    assert_eq!(template_of("plain.service"), None);
}

#[test]
fn prefixes_match_whole_components() {
    let set = PrefixSet::new(&["/var/cache/".into(), "relative".into(), "/proc".into()]);
    assert!(set.matches("/var/cache") && set.matches("/var/cache/apt/x") && set.matches("/proc/1"));
    assert!(!set.matches("/var/cache2") && !set.matches("/var") && !set.matches("/relative"));
    assert!(PrefixSet::new(&["/".into()]).matches("/anything"));
    assert!(!PrefixSet::new(&[]).matches("/"));
    let defaults = DiffOptions::default_volatile();
    assert!(defaults.iter().any(|p| p == "/var/lib/apt/lists"));
    assert!(
        !defaults
            .iter()
            .any(|p| p.starts_with("/var/lib/systemd/deb-systemd-helper"))
    );
    assert!(!defaults.iter().any(|p| p == "/etc/ld.so.cache"));
    assert_eq!(
        DiffOptions {
            text_limit_bytes: 0,
            ..DiffOptions::default()
        }
        .text_limit(),
        256 * 1024
    );
}

#[test]
fn request_paths_are_validated() {
    for ok in ["/", "/etc", "/etc/hostname", "/a b/c..d/.e"] {
        validate_path(ok).unwrap();
    }
    let long = format!("/{}", "a".repeat(256));
    for bad in [
        "",
        "etc",
        "/etc/",
        "//etc",
        "/etc//x",
        "/etc/./x",
        "/etc/../x",
        "/..",
        "/a\0b",
        long.as_str(),
    ] {
        assert!(
            matches!(validate_path(bad), Err(InspectError::InvalidPath { .. })),
            "{bad:?}"
        );
    }
}

#[test]
fn non_utf8_paths_are_escaped() {
    assert_eq!(display_path(b"/etc/x"), "/etc/x");
    assert_eq!(
        display_path(b"/a\xff\xfeb/\xc3\xa9"),
        "/a\\xff\\xfeb/\u{e9}"
    );
}

fn mbr_entry(disk: &mut [u8], sector: usize, slot: usize, kind: u8, first: u32, sectors: u32) {
    let e = sector * 512 + 446 + 16 * slot;
    disk[e + 4] = kind;
    disk[e + 8..e + 12].copy_from_slice(&first.to_le_bytes());
    disk[e + 12..e + 16].copy_from_slice(&sectors.to_le_bytes());
    disk[sector * 512 + 510] = 0x55;
    disk[sector * 512 + 511] = 0xAA;
}

#[test]
fn mbr_tables_with_a_looping_extended_chain_end() {
    let mut disk = vec![0u8; 1 << 20];
    mbr_entry(&mut disk, 0, 0, 0x83, 1024, 100_000); // clipped to the disk
    mbr_entry(&mut disk, 0, 1, 0x05, 100, 50);
    mbr_entry(&mut disk, 0, 2, 0x83, 5000, 10); // outside the disk: dropped
    // EBR at sector 100: a logical partition, and no next EBR.
    mbr_entry(&mut disk, 100, 0, 0x83, 2, 8);
    let parts = partitions(disk.as_slice(), disk.len() as u64);
    assert_eq!(parts.len(), 2);
    assert_eq!(
        (parts[0].number, parts[0].start, parts[0].len),
        (1, 1024 * 512, (1 << 20) - 1024 * 512)
    );
    assert_eq!(
        (parts[1].number, parts[1].start, parts[1].table),
        (5, 102 * 512, TableKind::Mbr)
    );

    // A chain whose second EBR points at itself stops at the bound.
    let mut disk = vec![0u8; 1 << 20];
    mbr_entry(&mut disk, 0, 0, 0x0F, 100, 500);
    mbr_entry(&mut disk, 100, 0, 0x83, 2, 8);
    mbr_entry(&mut disk, 100, 1, 0x05, 10, 50);
    mbr_entry(&mut disk, 110, 0, 0x83, 2, 8);
    mbr_entry(&mut disk, 110, 1, 0x05, 10, 50);
    let parts = partitions(disk.as_slice(), disk.len() as u64);
    assert_eq!(parts.len(), 128);
    assert_eq!((parts[1].number, parts[1].start), (6, 112 * 512));
}

#[test]
fn gpt_headers_with_absurd_fields_are_bounded() {
    let mut disk = vec![0u8; 1 << 20];
    disk[512..520].copy_from_slice(b"EFI PART");
    disk[512 + 72..512 + 80].copy_from_slice(&2u64.to_le_bytes());
    disk[512 + 80..512 + 84].copy_from_slice(&u32::MAX.to_le_bytes());
    disk[512 + 84..512 + 88].copy_from_slice(&128u32.to_le_bytes());
    // Entry 1: a real range; entry 2: last < first; entry 3: beyond the disk.
    let entry = |disk: &mut Vec<u8>, i: usize, first: u64, last: u64| {
        let e = 1024 + 128 * i;
        disk[e] = 1;
        disk[e + 32..e + 40].copy_from_slice(&first.to_le_bytes());
        disk[e + 40..e + 48].copy_from_slice(&last.to_le_bytes());
    };
    entry(&mut disk, 0, 34, 1000);
    entry(&mut disk, 1, 500, 10);
    entry(&mut disk, 2, u64::MAX / 2, u64::MAX);
    let parts = partitions(disk.as_slice(), disk.len() as u64);
    assert_eq!(parts.len(), 1);
    assert_eq!(
        (
            parts[0].number,
            parts[0].start,
            parts[0].len,
            parts[0].table
        ),
        (1, 34 * 512, 967 * 512, TableKind::Gpt)
    );
    // A header with an entry size that is not sane is no GPT.
    disk[512 + 84..512 + 88].copy_from_slice(&3u32.to_le_bytes());
    assert!(partitions(disk.as_slice(), disk.len() as u64).is_empty());
}

/// Manifests and options cross threads (the agent builds them in `spawn_blocking`).
#[test]
fn plain_data_is_send() {
    fn send<T: Send + Sync + 'static>() {}
    send::<crate::Manifest>();
    send::<DiffOptions>();
    send::<InspectError>();
}

#[test]
fn owners_are_found_under_their_pre_usrmerge_names() {
    let mut d = crate::dpkg::Dpkg::default();
    d.owners
        .insert("/lib/systemd/system/nginx.service".into(), "nginx".into());
    d.owners.insert("/usr/sbin/nginx".into(), "nginx".into());
    d.owners.insert("/etc/x".into(), "x".into());
    let owner = |p: &str| d.owner(p).map(String::as_str);
    assert_eq!(
        owner("/usr/lib/systemd/system/nginx.service"),
        Some("nginx")
    );
    assert_eq!(owner("/lib/systemd/system/nginx.service"), Some("nginx"));
    assert_eq!(owner("/usr/sbin/nginx"), Some("nginx"));
    assert_eq!(owner("/usr/etc/x"), None);
    assert_eq!(owner("/usr/share/x"), None);
}
