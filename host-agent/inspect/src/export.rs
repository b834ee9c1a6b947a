//! Exporting one disk state (a qcow2 overlay, optionally at an internal snapshot) to a
//! sparse raw file with `qemu-img convert`, and how much that writes at most
//! (`qemu-img measure`).

use std::ffi::OsString;
use std::path::Path;
use std::process::Stdio;

use crate::error::{InspectError, Result};

/// qemu-img's stderr kept in an error.
const MAX_STDERR: usize = 4096;

/// Checks a snapshot name before it goes into qemu-img's option string.
fn validate_snapshot(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
        return Err(InspectError::InvalidSnapshotName(
            name.chars().take(64).collect(),
        ));
    }
    Ok(())
}

/// A path qemu-img cannot mistake for an option.
fn path_arg(p: &Path) -> OsString {
    if p.as_os_str().as_encoded_bytes().starts_with(b"-") {
        Path::new(".").join(p).into_os_string()
    } else {
        p.as_os_str().to_owned()
    }
}

/// At most how many bytes [`export_raw`] writes for this disk state: the data the
/// qcow2 chain (overlay and backing files) has allocated at that state, as
/// `qemu-img measure -O qcow2` reports it (`required`: allocated clusters plus a little
/// metadata). `qemu-img convert` writes a sparse raw file and skips unallocated and
/// zero areas, so this bounds what it writes; an internal snapshot never changes, so
/// the figure cannot grow between this call and the copy. Read without taking qemu's
/// image lock (`file.locking=off`): the image may be open by a running qemu.
pub async fn export_size(overlay: &Path, snapshot: Option<&str>) -> Result<u64> {
    let path = overlay
        .to_str()
        .ok_or_else(|| InspectError::QemuImg(format!("{}: not UTF-8", overlay.display())))?;
    let mut cmd = tokio::process::Command::new("qemu-img");
    cmd.args(["measure", "--output=json", "-O", "qcow2"]);
    if let Some(snap) = snapshot {
        validate_snapshot(snap)?;
        cmd.arg("-l")
            .arg(format!("snapshot.name={}", snap.replace(',', ",,")));
    }
    cmd.arg("--image-opts").arg(format!(
        "driver=qcow2,file.driver=file,file.locking=off,file.filename={}",
        path.replace(',', ",,")
    ));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = cmd.output().await?;
    if !out.status.success() {
        return Err(InspectError::QemuImg(stderr_text(&out)));
    }
    #[derive(serde::Deserialize)]
    struct Measure {
        required: u64,
    }
    let m: Measure = serde_json::from_slice(&out.stdout).map_err(|e| {
        InspectError::QemuImg(format!("qemu-img measure printed something else: {e}"))
    })?;
    Ok(m.required)
}

/// qemu-img's stderr, trimmed and capped, or its exit status.
fn stderr_text(out: &std::process::Output) -> String {
    let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    if stderr.len() > MAX_STDERR {
        let mut cut = MAX_STDERR;
        while !stderr.is_char_boundary(cut) {
            cut -= 1;
        }
        stderr.truncate(cut);
    }
    if stderr.is_empty() {
        stderr = format!("exited with {}", out.status);
    }
    stderr
}

/// Exports one disk state to a sparse raw file:
/// `qemu-img convert -U -O raw [-l snapshot.name=<snap>] <overlay> <dest>`.
///
/// `-U` because the image may be open by a running qemu (an internal snapshot is
/// immutable, so reading it then is safe; the live disk state reads as a crash-consistent
/// copy at best). `dest` is overwritten, and removed on failure. Errors: `QemuImg` with
/// qemu-img's stderr, `InvalidSnapshotName`, `Io` when qemu-img cannot be started.
pub async fn export_raw(overlay: &Path, snapshot: Option<&str>, dest: &Path) -> Result<()> {
    let mut cmd = tokio::process::Command::new("qemu-img");
    cmd.args(["convert", "-U", "-O", "raw"]);
    if let Some(snap) = snapshot {
        validate_snapshot(snap)?;
        // qemu's option syntax: a comma inside a value is written twice.
        cmd.arg("-l")
            .arg(format!("snapshot.name={}", snap.replace(',', ",,")));
    }
    cmd.arg(path_arg(overlay)).arg(path_arg(dest));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let started = std::time::Instant::now();
    let out = cmd.output().await?;
    if out.status.success() {
        tracing::debug!(
            overlay = %overlay.display(),
            snapshot,
            ms = started.elapsed().as_millis() as u64,
            "exported a disk state"
        );
        return Ok(());
    }
    if let Err(e) = tokio::fs::remove_file(dest).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dest = %dest.display(), error = %e, "could not remove a failed export");
    }
    Err(InspectError::QemuImg(stderr_text(&out)))
}
