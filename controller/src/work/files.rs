//! The files API: read, write and edit files in a sandbox, binary-safe, through the
//! agent's Exec running the guest scripts of `fluid_proto::guest::files` (paths and
//! sizes travel as environment variables, content on standard input — nothing is
//! interpolated into a shell line). Paths must be absolute and normalised and outside
//! `policy.denied_paths` (403, audited; the scripts check again in the guest what a
//! path really reaches). Each operation leaves an audit row like a command (the file's
//! bytes are not copied into the audit).

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use fluid_client::types::{
    EditFileRequest, EditFileResponse, ReadFileRequest, ReadFileResponse, WriteFileRequest,
    WriteFileResponse,
};
use fluid_proto::guest::files::{CREATE_SH, DENIED_EXIT, READ_SH, WRITE_SH, guarded};
use fluid_proto::model::{SandboxId, check_abs_path};

use crate::error::ServiceError;
use crate::governance::auth::{Caller, Permission};
use crate::store::{CommandStatus, SandboxRecord};
use crate::work::commands::{CommandService, ExecSpec, Outcome};

/// Bytes a read returns when `limit` is not given.
pub const READ_DEFAULT_LIMIT: u64 = 1024 * 1024;
/// Largest read, and largest file an edit handles.
pub const READ_MAX_LIMIT: u64 = 16 * 1024 * 1024;
/// Largest write.
pub const WRITE_MAX_BYTES: usize = 16 * 1024 * 1024;
/// Request body limit of `files/write` (16 MiB as base64, plus JSON).
pub const WRITE_BODY_LIMIT: usize = 23 * 1024 * 1024;

/// Turns an operation's end into an error when it did not succeed: exit 3 is "not
/// found" (404), 4 "wrong kind of file" (422), 5 "exists" (409), other failures 422
/// with the command's stderr; a lost or failed run is 503.
pub fn check_outcome(o: &Outcome, what: &str) -> Result<(), ServiceError> {
    let r = &o.record;
    if r.status != CommandStatus::Completed {
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
            command: guarded(script),
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
        if o.record.status == CommandStatus::Completed && o.record.exit_code == Some(DENIED_EXIT) {
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
        caller: &Caller,
        id: &SandboxId,
        req: ReadFileRequest,
    ) -> Result<ReadFileResponse, ServiceError> {
        self.commands
            .authorized(caller, id, Permission::Read)
            .await?;
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
        caller: &Caller,
        id: &SandboxId,
        req: WriteFileRequest,
    ) -> Result<WriteFileResponse, ServiceError> {
        self.commands
            .authorized(caller, id, Permission::Work)
            .await?;
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
        caller: &Caller,
        id: &SandboxId,
        req: EditFileRequest,
    ) -> Result<EditFileResponse, ServiceError> {
        self.commands
            .authorized(caller, id, Permission::Work)
            .await?;
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

    #[test]
    fn sizes_split() {
        let (n, rest) = split_size(b"12\nhello").expect("size");
        assert_eq!((n, rest), (12, &b"hello"[..]));
        assert!(split_size(b"x\n").is_err());
    }
}
