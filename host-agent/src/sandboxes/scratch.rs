//! Files the agent writes for one operation and removes when it is done with them.

use std::path::{Path, PathBuf};

/// A file removed when dropped (a missing file is fine), unless [`kept`](Self::keep).
#[derive(Debug)]
pub(super) struct ScratchFile(Option<PathBuf>);

impl ScratchFile {
    pub(super) fn new(path: PathBuf) -> Self {
        Self(Some(path))
    }

    pub(super) fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new(""))
    }

    /// The file stays: its path, now the caller's.
    pub(super) fn keep(mut self) -> PathBuf {
        self.0.take().unwrap_or_default()
    }
}

impl Drop for ScratchFile {
    fn drop(&mut self) {
        let Some(path) = self.0.take() else {
            return;
        };
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path = %path.display(), "removing a scratch file: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scratch_file_goes_when_dropped_and_stays_when_kept() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let (gone, kept) = (dir.path().join("gone"), dir.path().join("kept"));
        std::fs::write(&gone, b"x")?;
        std::fs::write(&kept, b"x")?;
        drop(ScratchFile::new(gone.clone()));
        assert_eq!(ScratchFile::new(kept.clone()).keep(), kept);
        drop(ScratchFile::new(dir.path().join("never-written")));
        assert!(!gone.exists() && kept.exists());
        Ok(())
    }
}
