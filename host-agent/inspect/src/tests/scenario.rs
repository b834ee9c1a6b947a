//! The two disk states the diff tests compare ("before" and "after" an agent's work).

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use md5::{Digest, Md5};

use super::fixture::Tree;

pub(crate) fn md5_hex(b: &[u8]) -> String {
    hex::encode(Md5::digest(b))
}

const PASSWD: &str =
    "root:x:0:0:root:/root:/bin/bash\n# comment\nalice:x:1000:1000::/home/alice:/bin/sh\n";
const GROUP: &str = "root:x:0:\nalice:x:1000:\n";

fn status(after: bool) -> String {
    let mut s = format!(
        "Package: base-files\nStatus: install ok installed\nPriority: required\nArchitecture: amd64\n\
         Version: 12.4\nConffiles:\n /etc/debian_version 0123456789abcdef0123456789abcdef\n\n\
         Package: cfgpkg\nStatus: install ok installed\nArchitecture: all\nVersion: 1.0\n\
         Conffiles:\n /etc/cfg.conf {}\nDescription: a package\n with a long description\n .\n\n\
         Package: libmulti\nStatus: install ok installed\nMulti-Arch: same\nArchitecture: amd64\nVersion: 1.0\n\n\
         Package: gone\nStatus: deinstall ok config-files\nArchitecture: amd64\nVersion: 0.5\n\n",
        md5_hex(b"key=1\n")
    );
    if after {
        s.push_str(&format!(
            "Package: oldpkg\nStatus: deinstall ok config-files\nArchitecture: amd64\nVersion: 1.0\n\n\
             Package: upg\nStatus: install ok installed\nArchitecture: amd64\nVersion: 2.0\n\n\
             Package: newpkg\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.0\n\
             Conffiles:\n /etc/new.conf {}\n\n\
             Package: libdep\nStatus: install ok triggers-pending\nArchitecture: all\nVersion: 3.1\n\n\
             Package: libmulti\nStatus: install ok installed\nMulti-Arch: same\nArchitecture: i386\nVersion: 1.0\n",
            md5_hex(b"new=1\n")
        ));
    } else {
        s.push_str(
            "Package: oldpkg\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.0\n\n\
             Package: upg\nStatus: hold ok installed\nArchitecture: amd64\nVersion: 1.0\n",
        );
    }
    s
}

const EXTENDED_STATES: &str = "Package: libdep\nArchitecture: amd64\nAuto-Installed: 1\n\n\
    Package: upg\nArchitecture: amd64\nAuto-Installed: 0\n";

const UNIT_INSTALL: &str = "[Unit]\nDescription=x\n\n[Service]\nExecStart=/bin/true\n\n[Install]\nWantedBy=multi-user.target\n";
const UNIT_STATIC: &str = "[Unit]\nDescription=static\n\n[Service]\nExecStart=/bin/true\n";

/// Builds the "before" (`after == false`) or "after" disk state at `dest`.
pub(crate) fn build(after: bool, dest: &Path) {
    let t = Tree::new();
    t.dir("/", 0o755)
        .file("/etc/passwd", PASSWD, 0o644)
        .file("/etc/group", GROUP, 0o644)
        .file("/etc/debian_version", "12.4\n", 0o644)
        .file(
            "/etc/cfg.conf",
            if after { "key=2\n" } else { "key=1\n" },
            0o644,
        )
        .file("/etc/hostname", if after { "b\n" } else { "a\n" }, 0o644)
        .link(
            "/etc/alt",
            if after {
                "/usr/bin/other"
            } else {
                "/usr/bin/tool"
            },
        )
        .file(
            "/usr/bin/tool",
            if after {
                &b"\x7fELF\0\x01\x03"[..]
            } else {
                &b"\x7fELF\0\x01\x02"[..]
            },
            0o755,
        )
        .link("/lib", "usr/lib")
        .file("/usr/lib/systemd/system/foo.service", UNIT_INSTALL, 0o644)
        .file("/usr/lib/systemd/system/bar.service", UNIT_INSTALL, 0o644)
        .file("/usr/lib/systemd/system/baz.service", UNIT_INSTALL, 0o644)
        .file("/usr/lib/systemd/system/static.service", UNIT_STATIC, 0o644)
        .dir("/etc/systemd/system/multi-user.target.wants", 0o755)
        .file("/var/lib/dpkg/status", status(after), 0o644)
        .file(
            "/var/lib/dpkg/info/base-files.list",
            "/.\n/etc\n/etc/motd\n/etc/hostname\n/etc/debian_version\n",
            0o644,
        )
        .file(
            "/var/lib/dpkg/info/cfgpkg.list",
            "/etc\n/etc/cfg.conf\n",
            0o644,
        )
        .file("/var/lib/dpkg/info/upg.list", "/usr/bin/tool\n", 0o644)
        .file(
            "/var/lib/dpkg/info/libmulti:amd64.list",
            "/usr/lib/x86_64/libmulti.so\n",
            0o644,
        )
        .dir("/var/lib/apt", 0o755)
        .file("/var/cache/apt/junk", if after { "2" } else { "1" }, 0o644)
        .file("/var/cache2/keep", if after { "2" } else { "1" }, 0o644)
        .file(
            "/var/lib/systemd/random-seed",
            if after { "b" } else { "a" },
            0o600,
        )
        .file(
            "/var/log/app.log",
            if after { "line1\nline2\n" } else { "line1\n" },
            0o640,
        )
        .file(
            "/var/log/other.log",
            "x\n",
            if after { 0o600 } else { 0o644 },
        )
        .dir("/srv/data", if after { 0o700 } else { 0o755 })
        .dir("/home/alice", 0o700)
        .owner("/home/alice", 1000, 1000)
        .file("/home/alice/notes", "todo\n", 0o644)
        .owner("/home/alice/notes", if after { 0 } else { 1000 }, 1000);
    if after {
        t.file("/etc/new.conf", "new=1\n", 0o644)
            .link("/etc/systemd/system/baz.service", "/dev/null")
            .file("/etc/systemd/system/qux.service", UNIT_INSTALL, 0o644)
            .link(
                "/etc/systemd/system/multi-user.target.wants/qux.service",
                "/etc/systemd/system/qux.service",
            )
            .dir("/srv/newdir", 0o755)
            .file("/var/lib/apt/extended_states", EXTENDED_STATES, 0o644)
            .file(
                "/var/lib/dpkg/info/newpkg.list",
                "/etc\n/etc/new.conf\n",
                0o644,
            )
            .file(
                "/var/lib/dpkg/info/libmulti:i386.list",
                "/usr/lib/i386/libmulti.so\n",
                0o644,
            );
        let bad = t
            .root
            .path()
            .join("etc")
            .join(std::ffi::OsStr::from_bytes(b"bad\xff"));
        std::fs::write(bad, "x").unwrap();
    } else {
        t.file("/etc/motd", "hello\n", 0o644)
            .file("/usr/bin/old", "old\n", 0o755)
            .link(
                "/etc/systemd/system/multi-user.target.wants/bar.service",
                "/lib/systemd/system/bar.service",
            )
            .file("/var/lib/dpkg/info/oldpkg.list", "/usr/bin/old\n", 0o644)
            .file("/tmp/x", "volatile", 0o644);
    }
    t.mkfs(dest, "16M");
}
