//! The files scripts the controller sends as an Exec's command: read, write, create.
//!
//! The path, offset, limit and mode travel as environment variables (`FLUID_PATH`,
//! `FLUID_OFFSET`, `FLUID_LIMIT`, `FLUID_MODE`), the content on standard input: nothing
//! is interpolated into a script. Each runs behind [`GUARD_SH`] ([`guarded`]). A read
//! prints the file's size on a line, then the bytes asked for; a write or create prints
//! the size written. Exit statuses: 3 no such file or directory, 4 not a regular file
//! (or a directory where a file goes), 5 already exists, [`DENIED_EXIT`] refused by the
//! guard.

/// The guard every files script starts with: the policy checked again inside the
/// guest, on what a path really reaches. `FLUID_DENIED` holds `policy.denied_paths`,
/// one a line. A refusal exits 6 with the reason on stderr (the controller answers 403
/// and audits it).
pub const GUARD_SH: &str = r#"deny() { printf '%s\n' "$*" >&2; exit 6; }
under_denied() {
  printf '%s\n' "${FLUID_DENIED:-}" | while IFS= read -r e; do
    case $e in '') continue ;; /) echo /; break ;; esac
    case $1 in "$e" | "$e"/*) printf '%s\n' "$e"; break ;; esac
  done
}
check_resolved() {
  case $1 in
    /proc/*/root | /proc/*/root/* | /proc/*/cwd | /proc/*/cwd/* | /proc/*/fd | /proc/*/fd/* | \
    /proc/*/map_files | /proc/*/map_files/* | /dev/fd | /dev/fd/*)
      deny "$FLUID_PATH resolves to $1: paths through /proc/<pid>/root, cwd, fd or map_files, or /dev/fd are refused" ;;
  esac
  e=$(under_denied "$1")
  [ -z "$e" ] || deny "$FLUID_PATH resolves to $1, which is under policy.denied_paths entry $e"
}
hard_link_of() {
  printf '%s\n' "${FLUID_DENIED:-}" | while IFS= read -r e; do
    [ -n "$e" ] && [ -e "$e" ] || continue
    find "$e" -xdev -inum "$2" -print 2>/dev/null | while IFS= read -r n; do
      if [ "$(stat -c %d -- "$n")" = "$1" ]; then
        printf '%s\n' "$FLUID_PATH is a hard link to $n, which is under policy.denied_paths entry $e"
        exit 0
      fi
    done
  done | head -n 1
}
"#;

/// Reads a file: resolves the path (every symlink, `..`), checks the result, opens it
/// once, then checks what was opened (its path as the kernel names it, and its inode
/// against the denied files' when it has other hard links) and reads from that open
/// file: a path swapped meanwhile changes nothing.
pub const READ_SH: &str = r#"p=$FLUID_PATH
[ -e "$p" ] || { echo "$p: no such file" >&2; exit 3; }
r=$(realpath -e -- "$p") || { echo "$p: no such file" >&2; exit 3; }
check_resolved "$r"
[ -f "$r" ] || { echo "$p: not a regular file" >&2; exit 4; }
exec 3<"$r"
check_resolved "$(readlink /proc/self/fd/3)"
[ -f /proc/self/fd/3 ] || { echo "$p: not a regular file" >&2; exit 4; }
set -- $(stat -L -c '%d %i %h %s' /proc/self/fd/3)
if [ "$3" -gt 1 ]; then
  h=$(hard_link_of "$1" "$2")
  [ -z "$h" ] || deny "$h"
fi
echo "$4" && tail -c +"$((FLUID_OFFSET + 1))" <&3 | head -c "$FLUID_LIMIT""#;

/// Writes through a temporary file and a rename in the resolved directory (a rename
/// replaces the name, never writes through a symlink or into another hard link's file).
pub const WRITE_SH: &str = r#"set -e
p=$FLUID_PATH
d=$(dirname -- "$p")
[ -d "$d" ] || { echo "$d: no such directory" >&2; exit 3; }
rd=$(realpath -e -- "$d")
case $rd in /) r=/$(basename -- "$p") ;; *) r=$rd/$(basename -- "$p") ;; esac
check_resolved "$r"
if [ -d "$r" ]; then echo "$p: is a directory" >&2; exit 4; fi
t=$(mktemp "$rd/.fluid-write.XXXXXX")
trap 'rm -f "$t"' EXIT
cat >"$t"
if [ -n "${FLUID_MODE:-}" ]; then chmod "$FLUID_MODE" "$t"
elif [ -e "$r" ]; then chmod --reference="$r" "$t"; chown --reference="$r" "$t" 2>/dev/null || true
else chmod 0644 "$t"; fi
mv -f -- "$t" "$r"
trap - EXIT
stat -c %s -- "$r""#;

/// Creates a file that must not exist yet (`set -C`: not even through a dangling
/// symlink).
pub const CREATE_SH: &str = r#"set -e
p=$FLUID_PATH
d=$(dirname -- "$p")
[ -d "$d" ] || { echo "$d: no such directory" >&2; exit 3; }
rd=$(realpath -e -- "$d")
case $rd in /) r=/$(basename -- "$p") ;; *) r=$rd/$(basename -- "$p") ;; esac
check_resolved "$r"
if [ -e "$r" ] || [ -L "$r" ]; then echo "$p: already exists" >&2; exit 5; fi
set -C
cat >"$r"
stat -c %s -- "$r""#;

/// Exit status of a files script refused by the in-guest policy check.
pub const DENIED_EXIT: i32 = 6;

/// `script` behind the guard, as it is sent.
pub fn guarded(script: &str) -> String {
    format!("{GUARD_SH}{script}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a files script as the guest would (`sh -c`, env as given), here on the
    /// build machine's own file system; answers (exit code, stdout, stderr).
    fn guest(script: &str, env: &[(&str, &str)], stdin: &[u8]) -> (i32, String, String) {
        use std::io::Write as _;
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(guarded(script))
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("sh");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin)
            .expect("stdin");
        let o = child.wait_with_output().expect("wait");
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    #[test]
    fn the_guest_guard_checks_what_a_path_really_reaches() {
        let dir = tempfile::tempdir().expect("tmp");
        let root = dir.path().canonicalize().expect("canonical");
        let secret = root.join("secret");
        std::fs::write(&secret, "TOPSECRET\n").expect("secret");
        std::fs::create_dir(root.join("vault")).expect("vault");
        std::fs::write(root.join("vault/key"), "VAULTKEY\n").expect("key");
        std::fs::write(root.join("open.txt"), "hello\n").expect("open");
        std::os::unix::fs::symlink(&secret, root.join("link")).expect("symlink");
        std::os::unix::fs::symlink(root.join("vault"), root.join("vdir")).expect("dir link");
        std::fs::hard_link(&secret, root.join("hard")).expect("hard link");
        let denied = format!("{}\n{}", secret.display(), root.join("vault").display());
        let at = |name: &str| root.join(name).display().to_string();
        let read = |path: &str| {
            guest(
                READ_SH,
                &[
                    ("FLUID_PATH", path),
                    ("FLUID_DENIED", &denied),
                    ("FLUID_OFFSET", "0"),
                    ("FLUID_LIMIT", "100"),
                ],
                b"",
            )
        };
        // An ordinary file reads: its size, then its bytes.
        assert_eq!(
            read(&at("open.txt")),
            (0, "6\nhello\n".into(), String::new())
        );
        // A symlink, a symlinked directory, `..` and /proc/self/root reach denied files.
        let s = secret.display().to_string();
        for (path, reached) in [
            (at("link"), s.clone()),
            (format!("{}/key", at("vdir")), at("vault/key")),
            (format!("{}/../secret", at("vault")), s.clone()),
            (format!("/proc/self/root{s}"), s.clone()),
        ] {
            let (code, out, err) = read(&path);
            assert_eq!(code, 6, "{path}: {out} {err}");
            assert!(
                !out.contains("SECRET") && !out.contains("VAULTKEY"),
                "{path}: {out}"
            );
            let entry = if reached.ends_with("key") {
                at("vault")
            } else {
                s.clone()
            };
            assert_eq!(
                err.trim(),
                format!(
                    "{path} resolves to {reached}, which is under policy.denied_paths entry {entry}"
                )
            );
        }
        // A hard link: another name for the same inode.
        let (code, out, err) = read(&at("hard"));
        assert_eq!(code, 6, "{out} {err}");
        assert!(!out.contains("SECRET"));
        assert_eq!(
            err.trim(),
            format!(
                "{} is a hard link to {s}, which is under policy.denied_paths entry {s}",
                at("hard")
            )
        );
        // Writes resolve the directory: through a symlinked one they are refused, and
        // through a symlink to a denied file they replace the link, not the file.
        let write = |path: &str, script: &str| {
            guest(
                script,
                &[("FLUID_PATH", path), ("FLUID_DENIED", &denied)],
                b"OVERWRITTEN",
            )
        };
        let (code, _, err) = write(&format!("{}/key", at("vdir")), WRITE_SH);
        assert_eq!(code, 6, "{err}");
        let (code, _, err) = write(&format!("{}/new", at("vdir")), CREATE_SH);
        assert_eq!(code, 6, "{err}");
        assert!(!root.join("vault/new").exists());
        assert_eq!(write(&at("link"), WRITE_SH).0, 0);
        assert_eq!(
            std::fs::read_to_string(&secret).expect("secret"),
            "TOPSECRET\n"
        );
        assert_eq!(
            std::fs::read_to_string(root.join("vault/key")).expect("key"),
            "VAULTKEY\n"
        );
        // Without a denied list, the same reads succeed (the guard is the refusal).
        let (code, out, _) = guest(
            READ_SH,
            &[
                ("FLUID_PATH", &at("hard")),
                ("FLUID_OFFSET", "0"),
                ("FLUID_LIMIT", "100"),
            ],
            b"",
        );
        assert_eq!((code, out.as_str()), (0, "10\nTOPSECRET\n"));
    }
}
