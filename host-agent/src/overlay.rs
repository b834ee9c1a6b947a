//! Sandbox disks: one qcow2 overlay per sandbox on top of its image's disk
//! (`state_dir/overlays/<sandbox id>.qcow2`), so a sandbox never writes to the image.
//! A fork's overlay is another sandbox's snapshot exported onto the same image
//! ([`Overlays::create_from_snapshot`]). Files must be readable by libvirt's
//! `libvirt-qemu` user: directories 0755, files 0644.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use fluid_proto::model::SandboxId;

const EXTENSION: &str = "qcow2";

#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("qemu-img {op} {overlay}: {message}")]
    QemuImg {
        op: &'static str,
        overlay: PathBuf,
        message: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OverlayError + '_ {
    move |source| OverlayError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Creates `dir` (and parents) and makes it world-readable and traversable.
pub async fn ensure_dir(dir: &Path) -> Result<(), OverlayError> {
    tokio::fs::create_dir_all(dir).await.map_err(io(dir))?;
    tokio::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .await
        .map_err(io(dir))
}

/// What writes the overlay files: qemu-img on a real host ([`QemuImg`]); a simulated
/// host, whose domains never read a disk, writes placeholders ([`SimulatedImages`]).
#[async_trait::async_trait]
pub trait ImageTool: std::fmt::Debug + Send + Sync + 'static {
    /// Runs `cmd` (a qemu-img command line) that writes `overlay`, then makes it 0644.
    async fn run(
        &self,
        op: &'static str,
        cmd: tokio::process::Command,
        overlay: &Path,
    ) -> Result<(), OverlayError>;
}

/// The real overlays: qemu-img.
#[derive(Debug)]
pub struct QemuImg;

#[async_trait::async_trait]
impl ImageTool for QemuImg {
    async fn run(
        &self,
        op: &'static str,
        cmd: tokio::process::Command,
        overlay: &Path,
    ) -> Result<(), OverlayError> {
        run_qemu_img(op, cmd, overlay).await
    }
}

/// A simulated host's overlays: a placeholder file each, where qemu-img would write one.
#[derive(Debug)]
pub struct SimulatedImages;

#[async_trait::async_trait]
impl ImageTool for SimulatedImages {
    async fn run(
        &self,
        op: &'static str,
        _cmd: tokio::process::Command,
        overlay: &Path,
    ) -> Result<(), OverlayError> {
        let text = format!("simulated overlay ({op})\n");
        tokio::fs::write(overlay, text).await.map_err(io(overlay))?;
        tokio::fs::set_permissions(overlay, std::fs::Permissions::from_mode(0o644))
            .await
            .map_err(io(overlay))
    }
}

/// The overlay directory.
#[derive(Debug, Clone)]
pub struct Overlays {
    dir: PathBuf,
    tool: std::sync::Arc<dyn ImageTool>,
}

impl Overlays {
    /// Overlays in `dir`, written by qemu-img.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self::with_tool(dir, std::sync::Arc::new(QemuImg))
    }

    pub fn with_tool(dir: impl Into<PathBuf>, tool: std::sync::Arc<dyn ImageTool>) -> Self {
        Self {
            dir: dir.into(),
            tool,
        }
    }

    pub async fn ensure_dir(&self) -> Result<(), OverlayError> {
        ensure_dir(&self.dir).await
    }

    pub fn path_for(&self, id: &SandboxId) -> PathBuf {
        self.dir.join(format!("{id}.{EXTENSION}"))
    }

    /// `qemu-img create -f qcow2 -F <format> -b <backing> <overlay>`. An existing file is
    /// replaced (it can only be the leftover of a failed create of the same id).
    pub async fn create(
        &self,
        id: &SandboxId,
        backing: &Path,
        backing_format: &str,
    ) -> Result<PathBuf, OverlayError> {
        let overlay = self.path_for(id);
        remove_file(&overlay).await?;
        self.run(
            "create",
            create_command(&overlay, backing, backing_format),
            &overlay,
        )
        .await?;
        Ok(overlay)
    }

    /// A fork's overlay: the disk of snapshot `snapshot` inside `source` (another
    /// sandbox's overlay, which may be in use: `-U`), or with `None` its current disk
    /// (a live fork's, copied while the source is saved), written as a new overlay on
    /// `backing`, holding only what differs from it:
    /// `qemu-img convert -U [-l snapshot.name=<snapshot>] -O qcow2 -B <backing> -F <format>
    /// <source> <overlay>`. None of `source`'s snapshots is copied. An existing file is
    /// replaced.
    pub async fn create_from_snapshot(
        &self,
        id: &SandboxId,
        source: &Path,
        snapshot: Option<&str>,
        backing: &Path,
        backing_format: &str,
    ) -> Result<PathBuf, OverlayError> {
        let overlay = self.path_for(id);
        self.remove(&overlay).await?;
        let mut cmd = tokio::process::Command::new("qemu-img");
        cmd.args(["convert", "-U"]);
        if let Some(snapshot) = snapshot {
            cmd.arg("-l").arg(format!("snapshot.name={snapshot}"));
        }
        cmd.args(["-O", "qcow2", "-B"])
            .arg(backing)
            .args(["-F", backing_format])
            .arg(source)
            .arg(&overlay);
        if let Err(e) = self.run("convert", cmd, &overlay).await {
            // A failed convert may leave a partial file.
            let _ = self.remove(&overlay).await;
            return Err(e);
        }
        Ok(overlay)
    }

    /// A fork's overlay that keeps a snapshot's memory: a whole copy of `source` (which
    /// no QEMU may have open: the caller has its domain saved or stopped), its other
    /// snapshots deleted (`qemu-img snapshot -d`) and its disk set to `snapshot`'s
    /// (`-a`, so a cold boot of it boots the snapshot's disk). The snapshot stays in
    /// it, for the fork's domain to revert to. An existing file is replaced.
    pub async fn copy_at_snapshot(
        &self,
        id: &SandboxId,
        source: &Path,
        snapshot: &str,
        others: &[String],
    ) -> Result<PathBuf, OverlayError> {
        let overlay = self.path_for(id);
        self.remove(&overlay).await?;
        let made = async {
            tokio::fs::copy(source, &overlay)
                .await
                .map_err(io(&overlay))?;
            for other in others {
                let mut cmd = tokio::process::Command::new("qemu-img");
                cmd.args(["snapshot", "-d", other]).arg(&overlay);
                self.run("snapshot -d", cmd, &overlay).await?;
            }
            let mut cmd = tokio::process::Command::new("qemu-img");
            cmd.args(["snapshot", "-a", snapshot]).arg(&overlay);
            self.run("snapshot -a", cmd, &overlay).await
        };
        if let Err(e) = made.await {
            let _ = self.remove(&overlay).await;
            return Err(e);
        }
        Ok(overlay)
    }

    /// Runs one qemu-img command that writes `overlay`, then makes it 0644.
    async fn run(
        &self,
        op: &'static str,
        cmd: tokio::process::Command,
        overlay: &Path,
    ) -> Result<(), OverlayError> {
        self.tool.run(op, cmd, overlay).await
    }
}

/// The command line of `qemu-img create -f qcow2 -F <format> -b <backing> <overlay>`.
fn create_command(overlay: &Path, backing: &Path, backing_format: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("qemu-img");
    cmd.args(["create", "-q", "-f", "qcow2", "-F", backing_format, "-b"])
        .arg(backing)
        .arg(overlay);
    cmd
}

/// `qemu-img create -f qcow2 -F <format> -b <backing> <overlay>` (0644). An existing
/// file is replaced.
pub async fn create_overlay(
    overlay: &Path,
    backing: &Path,
    backing_format: &str,
) -> Result<(), OverlayError> {
    remove_file(overlay).await?;
    run_qemu_img(
        "create",
        create_command(overlay, backing, backing_format),
        overlay,
    )
    .await
}

/// Runs one qemu-img command that writes `overlay`, then makes it 0644.
async fn run_qemu_img(
    op: &'static str,
    mut cmd: tokio::process::Command,
    overlay: &Path,
) -> Result<(), OverlayError> {
    let out = cmd
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| OverlayError::QemuImg {
            op,
            overlay: overlay.to_owned(),
            message: format!("running qemu-img: {e}"),
        })?;
    if !out.status.success() {
        return Err(OverlayError::QemuImg {
            op,
            overlay: overlay.to_owned(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    tokio::fs::set_permissions(overlay, std::fs::Permissions::from_mode(0o644))
        .await
        .map_err(io(overlay))
}

impl Overlays {
    /// Removes a file; a missing file is not an error.
    pub async fn remove(&self, path: &Path) -> Result<(), OverlayError> {
        remove_file(path).await
    }

    /// Sandbox ids of the overlay files present (files with other names are ignored).
    pub async fn list(&self) -> Result<Vec<SandboxId>, OverlayError> {
        let mut out = Vec::new();
        let mut dir = match tokio::fs::read_dir(&self.dir).await {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io(&self.dir)(e)),
        };
        while let Some(entry) = dir.next_entry().await.map_err(io(&self.dir))? {
            let name = entry.file_name();
            let Some(stem) = name
                .to_str()
                .and_then(|n| n.strip_suffix(&format!(".{EXTENSION}")))
            else {
                continue;
            };
            if let Ok(id) = SandboxId::parse("overlay", stem) {
                out.push(id);
            }
        }
        out.sort();
        Ok(out)
    }
}

/// Removes a file; a missing file is not an error.
pub async fn remove_file(path: &Path) -> Result<(), OverlayError> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SandboxId {
        SandboxId::parse("id", s).expect("id")
    }

    #[tokio::test]
    async fn lists_only_sandbox_overlays() {
        let tmp = tempfile::tempdir().expect("tmp");
        let o = Overlays::new(tmp.path().join("overlays"));
        assert!(o.list().await.expect("list").is_empty());
        o.ensure_dir().await.expect("dir");
        for f in [
            "SBX-0123abcd.qcow2",
            "notes.txt",
            "SBX-bad.qcow2",
            "x.qcow2",
        ] {
            std::fs::write(tmp.path().join("overlays").join(f), b"").expect("write");
        }
        assert_eq!(o.list().await.expect("list"), vec![id("SBX-0123abcd")]);
        o.remove(&o.path_for(&id("SBX-0123abcd")))
            .await
            .expect("remove");
        o.remove(&o.path_for(&id("SBX-0123abcd")))
            .await
            .expect("remove twice");
        assert!(o.list().await.expect("list").is_empty());
        let mode = std::fs::metadata(tmp.path().join("overlays"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
    }

    /// Needs `qemu-img` on the PATH.
    #[tokio::test]
    async fn creates_an_overlay_on_a_backing_file() {
        let installed = std::process::Command::new("qemu-img")
            .arg("--version")
            .output()
            .is_ok();
        if !fluid_prereq::available("qemu-img", installed, "qemu-img is not installed") {
            return;
        }
        let tmp = tempfile::tempdir().expect("tmp");
        let base = tmp.path().join("base.qcow2");
        let st = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&base)
            .arg("16M")
            .status()
            .expect("qemu-img");
        assert!(st.success());
        let o = Overlays::new(tmp.path().join("overlays"));
        o.ensure_dir().await.expect("dir");
        let p = o
            .create(&id("SBX-0123abcd"), &base, "qcow2")
            .await
            .expect("overlay");
        let mode = std::fs::metadata(&p).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        let e = o
            .create(
                &id("SBX-0123abce"),
                &tmp.path().join("missing.qcow2"),
                "qcow2",
            )
            .await
            .expect_err("missing backing");
        assert!(e.to_string().contains("qemu-img create"), "{e}");
    }

    /// Needs `qemu-img` on the PATH.
    #[tokio::test]
    async fn forks_an_overlay_from_a_snapshot() {
        let installed = std::process::Command::new("qemu-img")
            .arg("--version")
            .output()
            .is_ok();
        if !fluid_prereq::available("qemu-img", installed, "qemu-img is not installed") {
            return;
        }
        let qemu_img = |args: &[&str]| {
            let out = std::process::Command::new("qemu-img")
                .args(args)
                .output()
                .expect("qemu-img");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let tmp = tempfile::tempdir().expect("tmp");
        let path = |n: &str| tmp.path().join(n).display().to_string();
        qemu_img(&["create", "-q", "-f", "qcow2", &path("base.qcow2"), "4M"]);
        let o = Overlays::new(tmp.path().join("overlays"));
        o.ensure_dir().await.expect("dir");
        let src = o
            .create(&id("SBX-0123abcd"), &tmp.path().join("base.qcow2"), "qcow2")
            .await
            .expect("source overlay");
        let src_s = src.display().to_string();
        // Data in the snapshot, then different data after it.
        qemu_img(&["snapshot", "-c", "snap-1", &src_s]);
        let fork = o
            .create_from_snapshot(
                &id("SBX-0123abce"),
                &src,
                Some("snap-1"),
                &tmp.path().join("base.qcow2"),
                "qcow2",
            )
            .await
            .expect("fork");
        let mode = std::fs::metadata(&fork).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        let info = qemu_img(&["info", "--output=json", &fork.display().to_string()]);
        assert!(
            info.contains("base.qcow2"),
            "the fork is on the image: {info}"
        );
        assert!(
            !info.contains("snap-1"),
            "the fork has no snapshots: {info}"
        );

        // The current disk (a live fork's copy): none of the snapshots either.
        let live = o
            .create_from_snapshot(
                &id("SBX-0123abd0"),
                &src,
                None,
                &tmp.path().join("base.qcow2"),
                "qcow2",
            )
            .await
            .expect("live copy");
        let info = qemu_img(&["info", "--output=json", &live.display().to_string()]);
        assert!(
            info.contains("base.qcow2") && !info.contains("snap-1"),
            "{info}"
        );

        let e = o
            .create_from_snapshot(
                &id("SBX-0123abcf"),
                &src,
                Some("missing"),
                &tmp.path().join("base.qcow2"),
                "qcow2",
            )
            .await
            .expect_err("no such snapshot");
        assert!(e.to_string().contains("qemu-img convert"), "{e}");
        assert!(!o.path_for(&id("SBX-0123abcf")).exists(), "no partial file");
    }
}
