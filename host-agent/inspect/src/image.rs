//! Opening a raw disk image read-only: find the root ext4 file system (whole disk, or
//! the first ext4 partition of an MBR/GPT table that has `/etc`) and load it with
//! ext4-view, which replays the journal in memory (an unclean snapshot reads as the
//! guest would see it after recovery).

use std::cell::OnceCell;
use std::fs::File;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use ext4_view::{Ext4, Ext4Read};

use crate::accounts::Accounts;
use crate::error::{InspectError, Result};
use crate::partition::{self, Partition, ReadAt};

/// An opened file system on a raw image.
///
/// Blocking, and `!Send` (ext4-view shares its state with `Rc`): open and use it inside
/// one `tokio::task::spawn_blocking` closure.
pub struct DiskImage {
    fs: Ext4,
    path: PathBuf,
    partition: Option<Partition>,
    fs_len: u64,
    accounts: OnceCell<Accounts>,
}

impl std::fmt::Debug for DiskImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskImage")
            .field("path", &self.path)
            .field("partition", &self.partition)
            .finish_non_exhaustive()
    }
}

/// One byte range of the raw file, given to ext4-view as its whole device.
struct RangeReader {
    file: File,
    start: u64,
    len: u64,
}

impl Ext4Read for RangeReader {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> std::result::Result<(), Box<dyn core::error::Error + Send + Sync + 'static>> {
        let past_end = || {
            std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "read of {} bytes at {start_byte} is past the file system's end",
                    dst.len()
                ),
            )
        };
        let in_range = start_byte
            .checked_add(dst.len() as u64)
            .is_some_and(|end| end <= self.len);
        let at = self
            .start
            .checked_add(start_byte)
            .filter(|_| in_range)
            .ok_or_else(past_end)?;
        self.file.read_at(at, dst)?;
        Ok(())
    }
}

impl DiskImage {
    /// Opens the raw image at `raw` (e.g. one written by [`crate::export_raw`]).
    ///
    /// Errors: `Io` when the file cannot be read, `Unsupported` when no ext4 root file
    /// system is found, `Corrupt` when it does not load.
    pub fn open(raw: &Path) -> Result<Self> {
        guarded("opening the image", || Self::open_inner(raw))
    }

    fn open_inner(raw: &Path) -> Result<Self> {
        let file = File::open(raw)?;
        let disk_len = file.metadata()?.len();
        let load = |start: u64, len: u64| load_range(&file, start, len);
        if partition::has_ext4_magic(&file, 0) {
            let fs = load(0, disk_len)?;
            return Ok(Self::new(fs, raw, None, disk_len));
        }
        let parts = partition::partitions(&file, disk_len);
        let mut last_err = None;
        for part in &parts {
            if !partition::has_ext4_magic(&file, part.start) {
                continue;
            }
            match load(part.start, part.len) {
                Ok(fs) if is_root(&fs) => return Ok(Self::new(fs, raw, Some(*part), part.len)),
                Ok(_) => {}
                Err(e) => last_err = Some(e),
            }
        }
        if let Some(e) = last_err {
            return Err(e);
        }
        Err(InspectError::Unsupported(if parts.is_empty() {
            "no ext4 file system and no partition table on the disk".to_owned()
        } else {
            format!(
                "none of the disk's {} partitions is an ext4 file system with /etc",
                parts.len()
            )
        }))
    }

    fn new(fs: Ext4, raw: &Path, partition: Option<Partition>, fs_len: u64) -> Self {
        Self {
            fs,
            path: raw.to_owned(),
            partition,
            fs_len,
            accounts: OnceCell::new(),
        }
    }

    /// The raw file this was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The partition holding the file system (None: the whole disk).
    pub fn partition(&self) -> Option<&Partition> {
        self.partition.as_ref()
    }

    /// Bytes of the device holding the file system (the partition, or the whole disk).
    pub fn fs_len(&self) -> u64 {
        self.fs_len
    }

    pub(crate) fn fs(&self) -> &Ext4 {
        &self.fs
    }

    /// Where the file system is, to open independent handles on other threads.
    pub(crate) fn locator(&self) -> Locator {
        Locator {
            path: self.path.clone(),
            start: self.partition.map_or(0, |p| p.start),
            len: self.fs_len,
        }
    }

    /// Users and groups of this disk state, read once.
    pub(crate) fn accounts(&self) -> Result<&Accounts> {
        if let Some(a) = self.accounts.get() {
            return Ok(a);
        }
        let accounts = Accounts::read(&self.fs)?;
        Ok(self.accounts.get_or_init(|| accounts))
    }
}

/// Where a file system lies in a raw file (`Send`, unlike [`DiskImage`]).
#[derive(Debug, Clone)]
pub(crate) struct Locator {
    path: PathBuf,
    start: u64,
    len: u64,
}

impl Locator {
    /// Another, independent handle on the file system.
    pub(crate) fn load(&self) -> Result<Ext4> {
        load_range(&File::open(&self.path)?, self.start, self.len)
    }
}

/// Loads the file system in `len` bytes from `start` of the raw file.
fn load_range(file: &File, start: u64, len: u64) -> Result<Ext4> {
    check_geometry(file, start, len)?;
    let reader = RangeReader {
        file: file.try_clone()?,
        start,
        len,
    };
    Ext4::load(Box::new(reader)).map_err(|e| InspectError::from_ext4("superblock", e))
}

/// Refuses a superblock whose geometry would make ext4-view allocate without bound
/// (a block-group table sized by a crafted block count): the file system must fit on its
/// device, and have a sane number of block groups.
fn check_geometry(disk: &File, start: u64, len: u64) -> Result<()> {
    const MAX_BLOCK_GROUPS: u64 = 1 << 20;
    let mut sb = [0u8; 0x154];
    disk.read_at(start.saturating_add(1024), &mut sb)?;
    let u32_at = |at: usize| u32::from_le_bytes([sb[at], sb[at + 1], sb[at + 2], sb[at + 3]]);
    let blocks = (u64::from(u32_at(0x150)) << 32) | u64::from(u32_at(0x4));
    let log_block_size = u32_at(0x18);
    let per_group = u64::from(u32_at(0x20));
    if log_block_size > 6 || per_group == 0 {
        // Invalid; ext4-view refuses it with a precise error.
        return Ok(());
    }
    let block_size = 1024u64 << log_block_size;
    let claimed = blocks.saturating_mul(block_size);
    if claimed > len {
        return Err(InspectError::Corrupt(format!(
            "the file system claims {claimed} bytes but its device holds {len}"
        )));
    }
    if blocks.div_ceil(per_group) > MAX_BLOCK_GROUPS {
        return Err(InspectError::Corrupt(format!(
            "{} block groups",
            blocks.div_ceil(per_group)
        )));
    }
    Ok(())
}

/// A root file system has a directory `/etc`.
fn is_root(fs: &Ext4) -> bool {
    fs.symlink_metadata("/etc")
        .map(|m| m.is_dir())
        .unwrap_or(false)
}

/// Runs `f`, turning a panic inside the ext4 reader (a bug reachable with crafted file
/// system bytes) into `Corrupt` instead of taking the agent down.
pub(crate) fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            tracing::warn!(what, msg, "ext4 reader panicked");
            Err(InspectError::Corrupt(format!(
                "{what}: the reader failed on this file system ({msg})"
            )))
        }
    }
}
