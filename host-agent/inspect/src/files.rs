//! Reading files inside an image safely: path validation, symlink resolution that checks
//! each link before following it (ext4-view would allocate a link's claimed size), and
//! streaming reads with caps.

use ext4_view::Ext4;
use md5::Md5;
use sha2::{Digest, Sha256};

use crate::error::{InspectError, Result};

/// Linux's limits: a path, and a symlink's target.
pub(crate) const PATH_MAX: usize = 4096;
const MAX_SYMLINKS: usize = 40;
/// Bytes read from ext4-view per call are at most one block; buffer several per hash update.
const CHUNK: usize = 256 * 1024;

/// How a path is shown: as is when UTF-8, otherwise invalid bytes as `\xNN`.
pub(crate) fn display_path(raw: &[u8]) -> String {
    match std::str::from_utf8(raw) {
        Ok(s) => s.to_owned(),
        Err(_) => {
            let mut out = String::with_capacity(raw.len() + 8);
            for chunk in raw.utf8_chunks() {
                out.push_str(chunk.valid());
                for b in chunk.invalid() {
                    out.push_str(&format!("\\x{b:02x}"));
                }
            }
            out
        }
    }
}

/// Checks a path given by a caller: absolute, normalised (no empty, `.` or `..`
/// component, no trailing `/` except the root), no NUL, at most `PATH_MAX` bytes and
/// components of at most 255 bytes.
pub fn validate_path(path: &str) -> Result<()> {
    let bad = |reason| {
        let shown: String = path.chars().take(200).collect();
        Err(InspectError::InvalidPath {
            path: shown,
            reason,
        })
    };
    if path.is_empty() || !path.starts_with('/') {
        return bad("not absolute");
    }
    if path.len() > PATH_MAX {
        return bad("longer than 4096 bytes");
    }
    if path.contains('\0') {
        return bad("contains NUL");
    }
    if path == "/" {
        return Ok(());
    }
    for comp in path[1..].split('/') {
        match comp {
            "" => return bad("empty component (// or trailing /)"),
            "." | ".." => return bad("contains . or .. components"),
            c if c.len() > 255 => return bad("a component is longer than 255 bytes"),
            _ => {}
        }
    }
    Ok(())
}

/// Joins a directory path and a name (`/` + `etc` = `/etc`).
pub(crate) fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(dir.len() + 1 + name.len());
    p.extend_from_slice(dir);
    if p.last() != Some(&b'/') {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

fn ext4_err(path: &[u8], e: ext4_view::Ext4Error) -> InspectError {
    InspectError::from_ext4(&display_path(path), e)
}

/// The target of a symlink at the real path `path`, refusing targets longer than a
/// Linux path (a crafted inode could claim terabytes).
pub(crate) fn link_target(fs: &Ext4, path: &[u8], claimed_len: u64) -> Result<Vec<u8>> {
    if claimed_len == 0 || claimed_len >= PATH_MAX as u64 {
        return Err(InspectError::Corrupt(format!(
            "{}: symlink target of {claimed_len} bytes",
            display_path(path)
        )));
    }
    let target = fs.read_link(path).map_err(|e| ext4_err(path, e))?;
    Ok(target.as_ref().to_vec())
}

/// Resolves `path` inside the image like `open(2)` would, following symlinks (the final
/// one too) without ever leaving the image's root: `..` at the root stays there and
/// absolute targets restart from the image's root. Returns a path without symlinks.
pub(crate) fn resolve(fs: &Ext4, path: &[u8]) -> Result<Vec<u8>> {
    let mut pending: Vec<Vec<u8>> = split_rev(path);
    let mut cur: Vec<u8> = b"/".to_vec();
    let mut links = 0usize;
    while let Some(comp) = pending.pop() {
        match comp.as_slice() {
            b"" | b"." => continue,
            b".." => {
                parent(&mut cur);
                continue;
            }
            _ => {}
        }
        let candidate = join(&cur, &comp);
        if candidate.len() > PATH_MAX {
            return Err(InspectError::Corrupt(format!(
                "{}: path too long",
                display_path(path)
            )));
        }
        // Every component of `cur` is a real directory, so only `comp` could be a link.
        let meta = fs
            .symlink_metadata(candidate.as_slice())
            .map_err(|e| ext4_err(path, e))?;
        if meta.is_symlink() {
            links += 1;
            if links > MAX_SYMLINKS {
                return Err(InspectError::Corrupt(format!(
                    "{}: too many levels of symbolic links",
                    display_path(path)
                )));
            }
            let target = link_target(fs, &candidate, meta.len())?;
            if target.first() == Some(&b'/') {
                cur = b"/".to_vec();
            }
            pending.extend(split_rev(&target));
        } else {
            if !meta.is_dir() && pending.iter().any(|c| !c.is_empty()) {
                return Err(InspectError::NotFound(display_path(path)));
            }
            cur = candidate;
        }
    }
    Ok(cur)
}

/// Components in reverse order (so `pop` yields the first).
fn split_rev(path: &[u8]) -> Vec<Vec<u8>> {
    path.split(|b| *b == b'/')
        .rev()
        .map(<[u8]>::to_vec)
        .collect()
}

fn parent(cur: &mut Vec<u8>) {
    if let Some(i) = cur.iter().rposition(|b| *b == b'/') {
        cur.truncate(i.max(1));
    }
}

/// Opens the regular file at the real (symlink-free) path. The final component is
/// looked up first without following it: ext4-view's `open` would follow a symlink there
/// (a crafted directory can hold two entries of one name) and read its whole claimed
/// target into memory.
pub(crate) fn open_regular(fs: &Ext4, real: &[u8]) -> Result<ext4_view::File> {
    let meta = fs.symlink_metadata(real).map_err(|e| ext4_err(real, e))?;
    if !meta.file_type().is_regular_file() {
        return Err(InspectError::NotAFile(display_path(real)));
    }
    fs.open(real).map_err(|e| ext4_err(real, e))
}

/// Opens a regular file the manifest walk met, without the extra lookup: the walk has
/// already refused every symlink of the directory whose claimed target is too long, so
/// whatever entry the lookup finds is safe to open.
fn open_walked(fs: &Ext4, real: &[u8]) -> Result<ext4_view::File> {
    fs.open(real).map_err(|e| ext4_err(real, e))
}

/// Calls `each` with the file's content in order, in chunks of up to 256 KiB.
pub(crate) fn stream(
    file: &mut ext4_view::File,
    path: &[u8],
    mut each: impl FnMut(&[u8]),
) -> Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let n = file
                .read_bytes(&mut buf[filled..])
                .map_err(|e| ext4_err(path, e))?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            return Ok(total);
        }
        each(&buf[..filled]);
        total += filled as u64;
        if filled < buf.len() {
            return Ok(total);
        }
    }
}

/// Reads the whole regular file at the real path, refusing files over `max` bytes.
pub(crate) fn read_capped(fs: &Ext4, real: &[u8], max: u64) -> Result<Vec<u8>> {
    let mut file = open_regular(fs, real)?;
    let size = file.metadata().len();
    if size > max {
        return Err(InspectError::TooLarge {
            path: display_path(real),
            size,
            max,
        });
    }
    let mut out = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    stream(&mut file, real, |c| out.extend_from_slice(c))?;
    Ok(out)
}

/// Resolves `path` (following symlinks inside the image) and reads it with a cap.
/// Absent files (`NotFound`/`NotAFile`) are `Ok(None)`: facts files that may be missing.
pub(crate) fn read_fact(fs: &Ext4, path: &str, max: u64) -> Result<Option<Vec<u8>>> {
    let real = match resolve(fs, path.as_bytes()) {
        Ok(r) => r,
        Err(e) if e.is_absent() => return Ok(None),
        Err(e) => return Err(e),
    };
    match read_capped(fs, &real, max) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.is_absent() => Ok(None),
        Err(e) => Err(e),
    }
}

/// SHA-256 of the whole content of a regular file the manifest walk met, streamed.
pub(crate) fn sha256_file(fs: &Ext4, real: &[u8]) -> Result<([u8; 32], u64)> {
    let mut file = open_walked(fs, real)?;
    let mut h = Sha256::new();
    let n = stream(&mut file, real, |c| h.update(c))?;
    Ok((h.finalize().into(), n))
}

/// Hex MD5 of a regular file's whole content (dpkg's conffile checksum), streamed.
pub(crate) fn md5_file(fs: &Ext4, real: &[u8]) -> Result<String> {
    let mut file = open_regular(fs, real)?;
    let mut h = Md5::new();
    stream(&mut file, real, |c| h.update(c))?;
    Ok(hex::encode(h.finalize()))
}
