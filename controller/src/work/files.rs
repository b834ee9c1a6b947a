//! The files API: read, write and edit files in a sandbox, binary-safe, through the
//! agent's Exec (paths and sizes travel as environment variables, content on standard
//! input — nothing is interpolated into a shell line). Paths must be absolute and
//! normalised and outside `policy.denied_paths` (403, audited). Each operation leaves an
//! audit row like a command (the file's bytes are not copied into the audit).

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use fluid_client::types::{
    EditFileRequest, EditFileResponse, ReadFileRequest, ReadFileResponse, WriteFileRequest,
    WriteFileResponse,
};
use fluid_proto::model::{SandboxId, check_abs_path};

use crate::error::ServiceError;
use crate::store::SandboxRecord;
use crate::work::commands::{CommandService, ExecSpec, Outcome};

/// Bytes a read returns when `limit` is not given.
pub const READ_DEFAULT_LIMIT: u64 = 1024 * 1024;
/// Largest read, and largest file an edit handles.
pub const READ_MAX_LIMIT: u64 = 16 * 1024 * 1024;
/// Largest write.
pub const WRITE_MAX_BYTES: usize = 16 * 1024 * 1024;
/// Request body limit of `files/write` (16 MiB as base64, plus JSON).
pub const WRITE_BODY_LIMIT: usize = 23 * 1024 * 1024;

/// The guard every files script starts with: the policy checked again inside the
/// guest, on what a path really reaches. `FLUID_DENIED` holds `policy.denied_paths`,
/// one a line. A refusal exits 6 with the reason on stderr (the controller answers 403
/// and audits it).
const GUARD_SH: &str = r#"deny() { printf '%s\n' "$*" >&2; exit 6; }
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
const READ_SH: &str = r#"p=$FLUID_PATH
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
const WRITE_SH: &str = r#"set -e
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

const CREATE_SH: &str = r#"set -e
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
const DENIED_EXIT: i32 = 6;

/// Turns an operation's end into an error when it did not succeed: exit 3 is "not
/// found" (404), 4 "wrong kind of file" (422), 5 "exists" (409), other failures 422
/// with the command's stderr; a lost or failed run is 503.
pub fn check_outcome(o: &Outcome, what: &str) -> Result<(), ServiceError> {
    let r = &o.record;
    if r.status != "completed" {
        return Err(ServiceError::Unavailable(format!(
            "{what}: {} ({})",
            r.status,
            r.error.clone().unwrap_or_default()
        )));
    }
    let stderr = String::from_utf8_lossy(&o.stderr).trim().to_owned();
    match r.exit_code {
        Some(0) => Ok(()),
        Some(3) => Err(ServiceError::NotFound(format!("{what}: {stderr}"))),
        Some(5) => Err(ServiceError::Conflict(format!("{what}: {stderr}"))),
        _ if r.timed_out => Err(ServiceError::Unprocessable(format!("{what}: timed out"))),
        code => Err(ServiceError::Unprocessable(format!(
            "{what}: failed (exit {}): {stderr}",
            code.unwrap_or(-1)
        ))),
    }
}

/// The reason a files script gave for its refusal: the first line of its stderr,
/// printable, at most 1 KiB.
fn denial_reason(o: &Outcome) -> String {
    let text = String::from_utf8_lossy(&o.stderr);
    let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let mut reason: String = line
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(1024)
        .collect();
    if reason.is_empty() {
        reason = "the path resolves to a file policy.denied_paths refuses".into();
    }
    reason
}

/// Byte offsets of the first `max` non-overlapping occurrences of `needle`.
pub fn occurrences(hay: &[u8], needle: &[u8], max: usize) -> Vec<usize> {
    let mut found = Vec::new();
    if needle.is_empty() {
        return found;
    }
    let mut i = 0;
    while i + needle.len() <= hay.len() && found.len() < max {
        if &hay[i..i + needle.len()] == needle {
            found.push(i);
            i += needle.len();
        } else {
            i += 1;
        }
    }
    found
}

fn check_mode(mode: &str) -> Result<(), ServiceError> {
    let digits = mode.len();
    if !(3..=4).contains(&digits) || !mode.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(ServiceError::Invalid(format!(
            "mode: {mode:?} is not octal permission bits (e.g. \"0644\")"
        )));
    }
    Ok(())
}

/// The stdout of a size-printing script: `<size>\n<rest>`.
fn split_size(out: &[u8]) -> Result<(u64, &[u8]), ServiceError> {
    let nl = out
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| ServiceError::Unavailable("the sandbox answered no file size".into()))?;
    let size = std::str::from_utf8(&out[..nl])
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| ServiceError::Unavailable("the sandbox answered a bad file size".into()))?;
    Ok((size, &out[nl + 1..]))
}

pub struct FileService {
    commands: Arc<CommandService>,
}

impl std::fmt::Debug for FileService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileService").finish_non_exhaustive()
    }
}

impl FileService {
    pub fn new(commands: Arc<CommandService>) -> Self {
        Self { commands }
    }

    fn spec(
        &self,
        kind: &'static str,
        audit: String,
        script: &str,
        env: &[(&str, String)],
        stdin: Vec<u8>,
        output_cap: u64,
    ) -> ExecSpec {
        let mut env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        env.insert(
            "FLUID_DENIED".into(),
            self.commands.policy().denied_paths().join("\n"),
        );
        ExecSpec {
            kind,
            command: format!("{GUARD_SH}{script}"),
            audit_command: audit,
            user: "root".into(),
            workdir: None,
            env,
            timeout_seconds: 300,
            stdin,
            output_cap,
            audit_stdout: false,
        }
    }

    /// Validates the path and the policy (a refusal is audited): the sandbox and path.
    async fn prepare(
        &self,
        id: &SandboxId,
        path: &str,
        spec: &ExecSpec,
    ) -> Result<SandboxRecord, ServiceError> {
        let row = self.commands.sandbox(id).await?;
        if let Err(reason) = self.commands.policy().check_path(path) {
            return Err(self.commands.deny(&row, spec, reason).await);
        }
        Ok(row)
    }

    /// Runs a files script; a refusal by its in-guest policy check is a 403 with an
    /// audit row of its own (status `denied`, the reason), like the controller's.
    async fn exec(&self, row: &SandboxRecord, spec: ExecSpec) -> Result<Outcome, ServiceError> {
        let what = spec.audit_command.clone();
        let mut probe = spec.clone();
        probe.stdin = Vec::new();
        let o = self.commands.start(row, spec).await?.finish().await?;
        if o.record.status == "completed" && o.record.exit_code == Some(DENIED_EXIT) {
            return Err(self.commands.deny(row, &probe, denial_reason(&o)).await);
        }
        check_outcome(&o, &what)?;
        Ok(o)
    }

    async fn read_bytes(
        &self,
        row: &SandboxRecord,
        kind: &'static str,
        path: &str,
        offset: u64,
        limit: u64,
    ) -> Result<(u64, Vec<u8>), ServiceError> {
        let spec = self.spec(
            kind,
            format!("read {path} (offset {offset}, limit {limit})"),
            READ_SH,
            &[
                ("FLUID_OP", "read".into()),
                ("FLUID_PATH", path.to_owned()),
                ("FLUID_OFFSET", offset.to_string()),
                ("FLUID_LIMIT", limit.to_string()),
            ],
            Vec::new(),
            limit + 32,
        );
        let o = self.exec(row, spec).await?;
        let (size, content) = split_size(&o.stdout)?;
        Ok((size, content.to_vec()))
    }

    pub async fn read(
        &self,
        id: &SandboxId,
        req: ReadFileRequest,
    ) -> Result<ReadFileResponse, ServiceError> {
        let path = check_abs_path("path", &req.path)?;
        let offset = req.offset.unwrap_or(0);
        let limit = req.limit.unwrap_or(READ_DEFAULT_LIMIT);
        if limit == 0 || limit > READ_MAX_LIMIT {
            return Err(ServiceError::Invalid(format!(
                "limit: must be 1-{READ_MAX_LIMIT}"
            )));
        }
        let probe = self.spec(
            "file_read",
            format!("read {path}"),
            READ_SH,
            &[],
            Vec::new(),
            1,
        );
        let row = self.prepare(id, &path, &probe).await?;
        let (size, content) = self
            .read_bytes(&row, "file_read", &path, offset, limit)
            .await?;
        let truncated = offset.saturating_add(content.len() as u64) < size;
        let (content, encoding) = match String::from_utf8(content) {
            Ok(s) => (s, "utf-8"),
            Err(e) => (B64.encode(e.into_bytes()), "base64"),
        };
        Ok(ReadFileResponse {
            path,
            content,
            size,
            truncated,
            encoding: encoding.into(),
        })
    }

    async fn write_bytes(
        &self,
        row: &SandboxRecord,
        kind: &'static str,
        path: &str,
        content: Vec<u8>,
        mode: Option<String>,
        create: bool,
    ) -> Result<u64, ServiceError> {
        let mut env = vec![
            (
                "FLUID_OP",
                if create { "create" } else { "write" }.to_owned(),
            ),
            ("FLUID_PATH", path.to_owned()),
        ];
        if let Some(m) = &mode {
            env.push(("FLUID_MODE", m.clone()));
        }
        let audit = format!(
            "{} {path} ({} bytes{})",
            if create { "create" } else { "write" },
            content.len(),
            mode.map(|m| format!(", mode {m}")).unwrap_or_default()
        );
        let script = if create { CREATE_SH } else { WRITE_SH };
        let spec = self.spec(kind, audit, script, &env, content, 4096);
        let o = self.exec(row, spec).await?;
        let (size, _) = split_size(&o.stdout)?;
        Ok(size)
    }

    pub async fn write(
        &self,
        id: &SandboxId,
        req: WriteFileRequest,
    ) -> Result<WriteFileResponse, ServiceError> {
        let path = check_abs_path("path", &req.path)?;
        let content = match req.encoding.as_deref() {
            None | Some("utf-8" | "utf8" | "") => req.content.into_bytes(),
            Some("base64") => B64
                .decode(req.content.as_bytes())
                .map_err(|e| ServiceError::Invalid(format!("content: not base64: {e}")))?,
            Some(other) => {
                return Err(ServiceError::Invalid(format!(
                    "encoding: {other:?} is not utf-8 or base64"
                )));
            }
        };
        if content.len() > WRITE_MAX_BYTES {
            return Err(ServiceError::Invalid(format!(
                "content: larger than {WRITE_MAX_BYTES} bytes"
            )));
        }
        if let Some(m) = &req.mode {
            check_mode(m)?;
        }
        let probe = self.spec(
            "file_write",
            format!("write {path}"),
            WRITE_SH,
            &[],
            Vec::new(),
            1,
        );
        let row = self.prepare(id, &path, &probe).await?;
        let size = self
            .write_bytes(&row, "file_write", &path, content, req.mode, false)
            .await?;
        Ok(WriteFileResponse { path, size })
    }

    /// Replaces the one occurrence of `old_str` (0 matches: 422, several: 409), or with
    /// an empty `old_str` creates the file (409 when it exists).
    pub async fn edit(
        &self,
        id: &SandboxId,
        req: EditFileRequest,
    ) -> Result<EditFileResponse, ServiceError> {
        let path = check_abs_path("path", &req.path)?;
        if req.new_str.len() > WRITE_MAX_BYTES {
            return Err(ServiceError::Invalid(format!(
                "new_str: larger than {WRITE_MAX_BYTES} bytes"
            )));
        }
        let probe = self.spec(
            "file_edit",
            format!("edit {path}"),
            READ_SH,
            &[],
            Vec::new(),
            1,
        );
        let row = self.prepare(id, &path, &probe).await?;
        if req.old_str.is_empty() {
            self.write_bytes(
                &row,
                "file_edit",
                &path,
                req.new_str.into_bytes(),
                None,
                true,
            )
            .await?;
            return Ok(EditFileResponse { path, replaced: 0 });
        }
        let (size, content) = self
            .read_bytes(&row, "file_edit", &path, 0, READ_MAX_LIMIT)
            .await?;
        if (content.len() as u64) < size {
            return Err(ServiceError::Unprocessable(format!(
                "{path} is larger than {READ_MAX_LIMIT} bytes; edit cannot handle it"
            )));
        }
        let found = occurrences(&content, req.old_str.as_bytes(), 2);
        let at = match found.as_slice() {
            [] => {
                return Err(ServiceError::Unprocessable(format!(
                    "old_str does not occur in {path}"
                )));
            }
            [one] => *one,
            _ => {
                return Err(ServiceError::Conflict(format!(
                    "old_str occurs more than once in {path}; include more context so it matches exactly once"
                )));
            }
        };
        let mut new = Vec::with_capacity(content.len() + req.new_str.len());
        new.extend_from_slice(&content[..at]);
        new.extend_from_slice(req.new_str.as_bytes());
        new.extend_from_slice(&content[at + req.old_str.len()..]);
        if new.len() > WRITE_MAX_BYTES {
            return Err(ServiceError::Unprocessable(format!(
                "{path} would be larger than {WRITE_MAX_BYTES} bytes"
            )));
        }
        self.write_bytes(&row, "file_edit", &path, new, None, false)
            .await?;
        Ok(EditFileResponse { path, replaced: 1 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn occurrences_are_counted_without_overlap() {
        assert_eq!(occurrences(b"aaaa", b"aa", 10), vec![0, 2]);
        assert_eq!(occurrences(b"abcabc", b"bc", 1), vec![1]);
        assert!(occurrences(b"abc", b"", 10).is_empty());
        assert!(occurrences(b"ab", b"abc", 10).is_empty());
    }

    #[test]
    fn modes_are_octal() {
        assert!(check_mode("644").is_ok());
        assert!(check_mode("0755").is_ok());
        for bad in ["", "9", "0o644", "u+x", "77777"] {
            assert!(check_mode(bad).is_err(), "{bad}");
        }
    }

    /// Runs a files script as the guest would (`sh -c`, env as given), here on the
    /// build machine's own file system; answers (exit code, stdout, stderr).
    fn guest(script: &str, env: &[(&str, &str)], stdin: &[u8]) -> (i32, String, String) {
        use std::io::Write as _;
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{GUARD_SH}{script}"))
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

    #[test]
    fn sizes_split() {
        let (n, rest) = split_size(b"12\nhello").expect("size");
        assert_eq!((n, rest), (12, &b"hello"[..]));
        assert!(split_size(b"x\n").is_err());
    }
}
