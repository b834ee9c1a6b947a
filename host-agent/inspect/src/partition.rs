//! Finding file systems on a raw disk: a whole-disk ext4, or the partitions of an MBR
//! (with logical partitions) or GPT table. Only the table is parsed here; which
//! partition holds the root file system is decided by `image.rs`.

use std::io;

/// Where the ext4 superblock's magic number sits, from the start of a file system.
const EXT4_MAGIC_OFFSET: u64 = 1024 + 0x38;
const EXT4_MAGIC: [u8; 2] = [0x53, 0xEF];
/// Bounds against crafted tables.
const MAX_GPT_ENTRIES: u32 = 1024;
const MAX_LOGICAL_PARTITIONS: usize = 128;

/// Random access to the raw disk (a file, or bytes in tests).
pub(crate) trait ReadAt {
    /// Fills `buf` from `offset`; an error when the disk is shorter.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

impl ReadAt for std::fs::File {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

impl ReadAt for [u8] {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let end = start
            .checked_add(buf.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        let src = self.get(start..end).ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// Which partition table a partition came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum TableKind {
    /// A DOS partition table (primary or logical partition).
    Mbr,
    /// A GUID partition table.
    Gpt,
}

/// A byte range of the disk that a table declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Partition {
    /// 1-based number, as Linux names it (`vda1`; MBR logical partitions from 5).
    pub number: u32,
    /// Offset of its first byte on the disk.
    pub start: u64,
    /// Length in bytes (clipped to the disk's end).
    pub len: u64,
    /// The table it came from.
    pub table: TableKind,
}

/// True when an ext4 (or ext2/3) superblock magic sits at `start`.
pub(crate) fn has_ext4_magic(disk: &(impl ReadAt + ?Sized), start: u64) -> bool {
    let mut magic = [0u8; 2];
    let Some(at) = start.checked_add(EXT4_MAGIC_OFFSET) else {
        return false;
    };
    disk.read_at(at, &mut magic).is_ok() && magic == EXT4_MAGIC
}

/// The partitions that the disk's table declares (GPT first, then MBR), in table
/// order; empty when there is no table. Entries outside the disk are dropped.
pub(crate) fn partitions(disk: &(impl ReadAt + ?Sized), disk_len: u64) -> Vec<Partition> {
    for sector in [512u64, 4096] {
        if let Some(parts) = gpt(disk, disk_len, sector) {
            return parts;
        }
    }
    mbr(disk, disk_len).unwrap_or_default()
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

/// A partition from a sector range, or None when it does not lie on the disk.
fn range(
    number: u32,
    first_lba: u64,
    sectors: u64,
    sector: u64,
    disk_len: u64,
    table: TableKind,
) -> Option<Partition> {
    let start = first_lba.checked_mul(sector)?;
    let len = sectors.checked_mul(sector)?;
    if sectors == 0 || start >= disk_len {
        return None;
    }
    let len = len.min(disk_len - start);
    Some(Partition {
        number,
        start,
        len,
        table,
    })
}

fn gpt(disk: &(impl ReadAt + ?Sized), disk_len: u64, sector: u64) -> Option<Vec<Partition>> {
    let mut header = [0u8; 92];
    disk.read_at(sector, &mut header).ok()?;
    if &header[..8] != b"EFI PART" {
        return None;
    }
    let entries_lba = le_u64(&header, 72);
    let count = le_u32(&header, 80).min(MAX_GPT_ENTRIES);
    let entry_size = le_u32(&header, 84);
    if !(128..=4096).contains(&entry_size) || !entry_size.is_multiple_of(8) {
        return None;
    }
    let table_start = entries_lba.checked_mul(sector)?;
    let mut table = vec![0u8; usize::try_from(count.checked_mul(entry_size)?).ok()?];
    disk.read_at(table_start, &mut table).ok()?;
    let mut parts = Vec::new();
    for (i, entry) in table.chunks_exact(entry_size as usize).enumerate() {
        if entry[..16].iter().all(|b| *b == 0) {
            continue;
        }
        let first = le_u64(entry, 32);
        let last = le_u64(entry, 40);
        let Some(sectors) = last.checked_sub(first).and_then(|n| n.checked_add(1)) else {
            continue;
        };
        let number = u32::try_from(i + 1).ok()?;
        parts.extend(range(
            number,
            first,
            sectors,
            sector,
            disk_len,
            TableKind::Gpt,
        ));
    }
    Some(parts)
}

/// The four primary entries of an MBR or EBR sector: (type, first LBA, sectors).
fn mbr_entries(sector: &[u8; 512]) -> Option<[(u8, u64, u64); 4]> {
    if sector[510..512] != [0x55, 0xAA] {
        return None;
    }
    let mut out = [(0u8, 0u64, 0u64); 4];
    for (i, slot) in out.iter_mut().enumerate() {
        let e = 446 + 16 * i;
        *slot = (
            sector[e + 4],
            u64::from(le_u32(sector, e + 8)),
            u64::from(le_u32(sector, e + 12)),
        );
    }
    Some(out)
}

fn is_extended(kind: u8) -> bool {
    matches!(kind, 0x05 | 0x0F | 0x85)
}

fn mbr(disk: &(impl ReadAt + ?Sized), disk_len: u64) -> Option<Vec<Partition>> {
    let mut sector = [0u8; 512];
    disk.read_at(0, &mut sector).ok()?;
    let entries = mbr_entries(&sector)?;
    let mut parts = Vec::new();
    let mut extended = None;
    for (i, (kind, first, sectors)) in entries.into_iter().enumerate() {
        if kind == 0 || kind == 0xEE {
            continue;
        }
        if is_extended(kind) {
            extended.get_or_insert(first);
            continue;
        }
        let number = u32::try_from(i + 1).ok()?;
        parts.extend(range(number, first, sectors, 512, disk_len, TableKind::Mbr));
    }
    if let Some(ext_start) = extended {
        logical(disk, disk_len, ext_start, &mut parts);
    }
    Some(parts)
}

/// Follows the chain of extended boot records (bounded, so a looping chain ends).
fn logical(
    disk: &(impl ReadAt + ?Sized),
    disk_len: u64,
    ext_start: u64,
    parts: &mut Vec<Partition>,
) {
    let mut ebr = ext_start;
    for n in 0..MAX_LOGICAL_PARTITIONS {
        let mut sector = [0u8; 512];
        let Some(at) = ebr.checked_mul(512) else {
            return;
        };
        if disk.read_at(at, &mut sector).is_err() {
            return;
        }
        let Some(entries) = mbr_entries(&sector) else {
            return;
        };
        let (kind, rel, sectors) = entries[0];
        if kind != 0 {
            let number = u32::try_from(n + 5).unwrap_or(u32::MAX);
            if let Some(first) = ebr.checked_add(rel) {
                parts.extend(range(number, first, sectors, 512, disk_len, TableKind::Mbr));
            }
        }
        let (next_kind, next_rel, _) = entries[1];
        if next_kind == 0 || next_rel == 0 {
            return;
        }
        let Some(next) = ext_start.checked_add(next_rel) else {
            return;
        };
        ebr = next;
    }
}
