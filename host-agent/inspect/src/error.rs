//! The crate's error type: callers (the agent's gRPC handlers) branch on it to pick a status.

use ext4_view::Ext4Error;

/// Why reading or comparing a disk state failed.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// The path does not exist in the disk state.
    #[error("{0}: no such file in the disk state")]
    NotFound(String),
    /// The path exists but is not a regular file (a directory, device, …).
    #[error("{0}: not a regular file")]
    NotAFile(String),
    /// A file (or the sum of what a comparison would read) is over its limit.
    #[error("{path}: {size} bytes is over the limit of {max}")]
    TooLarge {
        /// What was too large (a path, or a description of a budget).
        path: String,
        /// Its size in bytes.
        size: u64,
        /// The limit in bytes.
        max: u64,
    },
    /// A path given by a caller is not absolute and normalised.
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath {
        /// The path as given (possibly shortened).
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A snapshot name that cannot be passed to qemu-img.
    #[error("invalid snapshot name {0:?}")]
    InvalidSnapshotName(String),
    /// The image holds nothing this crate can read (no ext4 file system, an unsupported
    /// ext4 feature, …).
    #[error("unsupported disk: {0}")]
    Unsupported(String),
    /// The file system's bytes are inconsistent (possibly crafted by the guest).
    #[error("corrupt file system: {0}")]
    Corrupt(String),
    /// An I/O error on the host (the raw image, a temporary file, spawning qemu-img).
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// qemu-img failed; carries its stderr.
    #[error("qemu-img: {0}")]
    QemuImg(String),
}

/// Shorthand used across the crate.
pub type Result<T, E = InspectError> = std::result::Result<T, E>;

impl InspectError {
    /// Maps an ext4-view error met while working on `path` (an image path, for messages).
    pub(crate) fn from_ext4(path: &str, err: Ext4Error) -> Self {
        match err {
            Ext4Error::NotFound | Ext4Error::NotADirectory => Self::NotFound(path.to_owned()),
            Ext4Error::IsADirectory | Ext4Error::IsASpecialFile => Self::NotAFile(path.to_owned()),
            Ext4Error::Io(e) => Self::Io(std::io::Error::other(e.to_string())),
            Ext4Error::Incompatible(e) => Self::Unsupported(format!("{path}: {e}")),
            Ext4Error::Encrypted => Self::Unsupported(format!("{path}: encrypted")),
            other => Self::Corrupt(format!("{path}: {other}")),
        }
    }

    /// True when the error says the file is absent (or not a file): facts read from such
    /// a path are simply missing rather than a failure.
    pub(crate) fn is_absent(&self) -> bool {
        matches!(self, Self::NotFound(_) | Self::NotAFile(_))
    }
}
