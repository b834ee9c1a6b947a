//! Exporting one disk state (a qcow2 overlay, optionally at an internal snapshot) to a
//! sparse raw file with `qemu-img convert`.

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
    Err(InspectError::QemuImg(stderr))
}
