//! libvirt's QEMU save image, the file `virsh save` writes and `virsh restore` reads:
//! a fixed header, the domain XML (and a cookie) in a zero-padded data block, then
//! QEMU's migration stream, which holds the guest's memory and device state.
//!
//! A clone of a memory template is the template's image with the clone's own domain
//! XML (its name, UUID, MAC, tap, disk) in place of the template's ([`write_clone`]).
//! libvirt itself refuses that change (`virsh restore --xml` checks that the new XML
//! keeps the UUID and MACs), so the agent writes the header. The layout is libvirt's
//! ABI (`src/qemu/qemu_saveimage.h`: "this magic string is ABI"), version 2:
//!
//! ```text
//! magic "LibvirtQemudSave" | version u32 | data_len u32 | was_running u32
//! | compressed u32 | cookie_offset u32 | unused [u32; 14]      (native byte order)
//! data_len bytes: XML \0 cookie \0 zeros
//! QEMU migration stream ("QEVM" …)
//! ```
//!
//! The stream is copied unchanged (`std::io::copy`: `copy_file_range` in the kernel).
//! Whether it fits the clone's XML is QEMU's to check when it loads it: the clone is
//! rendered from the same spec as the template, so its devices are the same.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 16] = b"LibvirtQemudSave";
const VERSION: u32 = 2;
/// The header: magic, five fields, fourteen unused words.
const HEADER_LEN: usize = 16 + 4 * 19;
/// The most XML and cookie a header may announce (libvirt pads to a few KiB).
const MAX_DATA: u32 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SaveImageError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a save image this agent can clone: {why}")]
    Format { path: PathBuf, why: String },
}

/// The fields of a save image's header that matter here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub data_len: u32,
    pub was_running: u32,
    pub cookie_offset: u32,
    raw: [u8; HEADER_LEN],
}

fn word(raw: &[u8; HEADER_LEN], index: usize) -> u32 {
    let at = 16 + 4 * index;
    u32::from_ne_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]])
}

impl Header {
    /// Parses a header; only an uncompressed version-2 image is accepted.
    pub fn parse(raw: [u8; HEADER_LEN]) -> Result<Self, String> {
        if &raw[..16] != MAGIC {
            return Err("wrong magic (a partial or foreign file)".into());
        }
        let (version, data_len, was_running, compressed, cookie_offset) = (
            word(&raw, 0),
            word(&raw, 1),
            word(&raw, 2),
            word(&raw, 3),
            word(&raw, 4),
        );
        if version != VERSION {
            return Err(format!("version {version}, expected {VERSION}"));
        }
        if compressed != 0 {
            return Err(format!("compressed (format {compressed})"));
        }
        if data_len == 0 || data_len > MAX_DATA {
            return Err(format!("data length {data_len}"));
        }
        if cookie_offset >= data_len {
            return Err(format!("cookie offset {cookie_offset} past the data"));
        }
        Ok(Self {
            data_len,
            was_running,
            cookie_offset,
            raw,
        })
    }

    /// This header with another cookie offset (the data block keeps its length).
    fn with_cookie_offset(&self, cookie_offset: u32) -> [u8; HEADER_LEN] {
        let mut raw = self.raw;
        raw[32..36].copy_from_slice(&cookie_offset.to_ne_bytes());
        raw
    }
}

/// The data block of a clone: `xml`, then the template's cookie, zero-padded to the
/// template's length (so the stream starts where it did). `None` when it does not fit.
fn clone_data(header: &Header, data: &[u8], xml: &str) -> Option<(Vec<u8>, u32)> {
    let cookie = data.get(header.cookie_offset as usize..)?;
    let cookie = &cookie[..cookie.iter().position(|b| *b == 0).unwrap_or(cookie.len())];
    let mut out = Vec::with_capacity(header.data_len as usize);
    out.extend_from_slice(xml.as_bytes());
    out.push(0);
    let cookie_offset = u32::try_from(out.len()).ok()?;
    if !cookie.is_empty() {
        out.extend_from_slice(cookie);
        out.push(0);
    }
    if out.len() > header.data_len as usize {
        return None;
    }
    out.resize(header.data_len as usize, 0);
    Some((out, cookie_offset))
}

/// The domain XML a save image restores with.
pub fn read_xml(path: &Path) -> Result<String, SaveImageError> {
    let (_, data) = read_head(path, &mut open(path)?)?;
    let xml = &data[..data.iter().position(|b| *b == 0).unwrap_or(data.len())];
    Ok(String::from_utf8_lossy(xml).into_owned())
}

/// Writes `clone`: the save image `template` restoring as the domain `xml` describes.
/// The file is created (0600, replacing any); on error nothing is left behind.
pub fn write_clone(template: &Path, clone: &Path, xml: &str) -> Result<(), SaveImageError> {
    let mut src = open(template)?;
    let (header, data) = read_head(template, &mut src)?;
    let (data, cookie_offset) = fitted(template, &header, &data, xml)?;
    let io = |source| SaveImageError::Io {
        path: clone.to_owned(),
        source,
    };
    let written = (|| {
        use std::os::unix::fs::OpenOptionsExt;
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(clone)?;
        out.write_all(&header.with_cookie_offset(cookie_offset))?;
        out.write_all(&data)?;
        std::io::copy(&mut src, &mut out)?;
        out.flush()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(clone);
        return Err(io(e));
    }
    Ok(())
}

/// Rewrites the save image at `path` in place to restore as the domain `xml`
/// describes (a live fork's: the image its source was saved to, used once).
pub fn rewrite_in_place(path: &Path, xml: &str) -> Result<(), SaveImageError> {
    use std::os::unix::fs::FileExt;
    let io = |source| SaveImageError::Io {
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io)?;
    let (header, data) = read_head(path, &mut f)?;
    let (data, cookie_offset) = fitted(path, &header, &data, xml)?;
    f.write_all_at(&header.with_cookie_offset(cookie_offset), 0)
        .and_then(|()| f.write_all_at(&data, HEADER_LEN as u64))
        .and_then(|()| f.sync_data())
        .map_err(io)
}

/// [`clone_data`], or why `xml` does not fit.
fn fitted(
    path: &Path,
    header: &Header,
    data: &[u8],
    xml: &str,
) -> Result<(Vec<u8>, u32), SaveImageError> {
    clone_data(header, data, xml).ok_or_else(|| SaveImageError::Format {
        path: path.to_owned(),
        why: format!(
            "the clone's domain XML ({} bytes) does not fit its {}-byte data block",
            xml.len(),
            header.data_len
        ),
    })
}

fn open(path: &Path) -> Result<std::fs::File, SaveImageError> {
    std::fs::File::open(path).map_err(|source| SaveImageError::Io {
        path: path.to_owned(),
        source,
    })
}

fn read_head(path: &Path, f: &mut std::fs::File) -> Result<(Header, Vec<u8>), SaveImageError> {
    let io = |source| SaveImageError::Io {
        path: path.to_owned(),
        source,
    };
    let mut raw = [0u8; HEADER_LEN];
    f.read_exact(&mut raw).map_err(io)?;
    let header = Header::parse(raw).map_err(|why| SaveImageError::Format {
        path: path.to_owned(),
        why,
    })?;
    let mut data = vec![0u8; header.data_len as usize];
    f.read_exact(&mut data).map_err(io)?;
    Ok((header, data))
}

/// A save image of `xml` with a stand-in stream, as the simulated hypervisor saves one.
pub(crate) fn simulated_image(xml: &str) -> Vec<u8> {
    image(xml, "<cookie/>", 4096, b"QEVM simulated stream")
}

/// A save image as libvirt lays it out: header, XML, cookie, padding, stream.
fn image(xml: &str, cookie: &str, pad: usize, stream: &[u8]) -> Vec<u8> {
    let mut data = xml.as_bytes().to_vec();
    data.push(0);
    let cookie_offset = data.len() as u32;
    data.extend_from_slice(cookie.as_bytes());
    data.push(0);
    data.resize(data.len() + pad, 0);
    let mut out = MAGIC.to_vec();
    for w in [VERSION, data.len() as u32, 1, 0, cookie_offset] {
        out.extend_from_slice(&w.to_ne_bytes());
    }
    out.resize(HEADER_LEN, 0);
    out.extend_from_slice(&data);
    out.extend_from_slice(stream);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clone_keeps_the_stream_and_cookie_and_carries_its_own_xml() {
        let dir = tempfile::tempdir().expect("tempdir");
        let template = dir.path().join("t.save");
        let clone = dir.path().join("c.save");
        let stream = b"QEVM\0\0\0\x03 the guest's memory";
        let original = image("<domain><name>t</name></domain>", "<cookie/>", 64, stream);
        std::fs::write(&template, &original).expect("write");
        let xml = "<domain><name>a-longer-clone-name</name></domain>";
        write_clone(&template, &clone, xml).expect("clone");
        let out = std::fs::read(&clone).expect("read");
        assert_eq!(out.len(), original.len(), "the stream starts where it did");
        assert!(out.ends_with(stream));
        assert_eq!(read_xml(&clone).expect("xml"), xml);
        let mut raw = [0u8; HEADER_LEN];
        raw.copy_from_slice(&out[..HEADER_LEN]);
        let h = Header::parse(raw).expect("header");
        assert_eq!(h.was_running, 1);
        let cookie = &out[HEADER_LEN + h.cookie_offset as usize..][..9];
        assert_eq!(cookie, b"<cookie/>");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&clone)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_rewrite_in_place_changes_only_the_xml() {
        let dir = tempfile::tempdir().expect("tempdir");
        let saved = dir.path().join("s.save");
        let stream = b"QEVM the source's memory";
        let original = image(
            "<domain><name>source</name></domain>",
            "<cookie/>",
            64,
            stream,
        );
        std::fs::write(&saved, &original).expect("write");
        let xml = "<domain><name>its-fork</name></domain>";
        rewrite_in_place(&saved, xml).expect("rewrite");
        let out = std::fs::read(&saved).expect("read");
        assert_eq!(out.len(), original.len());
        assert!(out.ends_with(stream));
        assert_eq!(read_xml(&saved).expect("xml"), xml);
        let err = rewrite_in_place(&saved, &"x".repeat(400)).expect_err("too long");
        assert!(err.to_string().contains("does not fit"), "{err}");
        assert_eq!(
            read_xml(&saved).expect("xml"),
            xml,
            "a refused rewrite writes nothing"
        );
    }

    #[test]
    fn an_xml_too_long_for_the_data_block_is_refused_and_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let template = dir.path().join("t.save");
        let clone = dir.path().join("c.save");
        std::fs::write(&template, image("<d/>", "<c/>", 4, b"QEVM")).expect("write");
        let err = write_clone(&template, &clone, &"x".repeat(100)).expect_err("too long");
        assert!(err.to_string().contains("does not fit"), "{err}");
        assert!(!clone.exists());
    }

    #[test]
    fn foreign_partial_and_compressed_files_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.save");
        let mut partial = image("<d/>", "<c/>", 8, b"QEVM");
        partial[..16].copy_from_slice(b"LibvirtQemudPart");
        let mut compressed = image("<d/>", "<c/>", 8, b"QEVM");
        compressed[16 + 12..16 + 16].copy_from_slice(&1u32.to_ne_bytes());
        for (bytes, why) in [
            (partial, "magic"),
            (compressed, "compressed"),
            (b"short".to_vec(), "failed to fill"),
        ] {
            std::fs::write(&path, bytes).expect("write");
            let err = read_xml(&path).expect_err(why).to_string();
            assert!(err.contains(why), "{why}: {err}");
        }
    }
}
