//! Reading one file of a disk state for a caller.

use sha2::{Digest, Sha256};

use crate::changes::FileMeta;
use crate::error::{InspectError, Result};
use crate::files::{display_path, read_capped, resolve, validate_path};
use crate::image::{DiskImage, guarded};
use crate::manifest::Kind;

/// The cap when the caller gives 0.
pub const DEFAULT_READ_LIMIT: u64 = 64 * 1024 * 1024;

/// Reads the regular file at `path` (absolute and normalised, else `InvalidPath`),
/// following symlinks like `open(2)` would but never leaving the image's root. The
/// metadata is the file's (after links), with names from this disk state's accounts and
/// the content's SHA-256. Errors: `NotFound`, `NotAFile` (directory, device, …),
/// `TooLarge` over `max_bytes` (0: [`DEFAULT_READ_LIMIT`]). Blocking.
pub fn read_file(img: &DiskImage, path: &str, max_bytes: u64) -> Result<(FileMeta, Vec<u8>)> {
    validate_path(path)?;
    let max = if max_bytes == 0 {
        DEFAULT_READ_LIMIT
    } else {
        max_bytes
    };
    guarded("reading a file", || {
        let fs = img.fs();
        let real = resolve(fs, path.as_bytes())?;
        let meta = fs
            .symlink_metadata(real.as_slice())
            .map_err(|e| InspectError::from_ext4(path, e))?;
        if !meta.file_type().is_regular_file() {
            return Err(InspectError::NotAFile(path.to_owned()));
        }
        if meta.len() > max {
            return Err(InspectError::TooLarge {
                path: path.to_owned(),
                size: meta.len(),
                max,
            });
        }
        let bytes = read_capped(fs, &real, max)?;
        let accounts = img.accounts()?;
        let file_meta = FileMeta {
            kind: Kind::Regular,
            mode: u32::from(meta.mode()),
            uid: meta.uid(),
            gid: meta.gid(),
            owner: accounts.user(meta.uid()).to_owned(),
            group: accounts.group(meta.gid()).to_owned(),
            size: meta.len(),
            sha256: hex::encode(Sha256::digest(&bytes)),
            link_target: String::new(),
        };
        tracing::debug!(path, real = %display_path(&real), size = meta.len(), "read a file out-of-band");
        Ok((file_meta, bytes))
    })
}
