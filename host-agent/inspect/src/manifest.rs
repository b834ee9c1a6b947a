//! A manifest of one disk state: every path outside the volatile prefixes with its
//! metadata and content hash, plus the facts read from the guest's own databases
//! (accounts, dpkg, systemd). Content is always hashed in full: a hostile guest can
//! forge timestamps, sizes and inode fields, so nothing is skipped on metadata.

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use ext4_view::{Ext4, FileType, Metadata};
use serde::{Deserialize, Serialize};

use crate::accounts::Accounts;
use crate::dpkg::{self, Dpkg};
use crate::error::{InspectError, Result};
use crate::files::{display_path, join, link_target};
use crate::hashing::{Job, hash_all};
use crate::image::{DiskImage, guarded};
use crate::options::{DiffOptions, Limits, PrefixSet};
use crate::systemd::{self, Service};

/// What a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// A regular file.
    Regular,
    /// A directory.
    Directory,
    /// A symbolic link.
    Symlink,
    /// A device, fifo or socket.
    Other,
}

/// One path of a disk state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// What it is.
    pub kind: Kind,
    /// Permission bits with setuid/setgid/sticky (the low 12 bits of `st_mode`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes as the inode records it.
    pub size: u64,
    /// SHA-256 of a regular file's content (None for other kinds and metadata-only paths).
    pub sha256: Option<[u8; 32]>,
    /// A symlink's target (non-UTF-8 bytes as `\xNN`).
    pub link_target: Option<String>,
    /// The path's bytes when they are not UTF-8 (the manifest key shows them escaped).
    pub raw_path: Option<Vec<u8>>,
}

impl Entry {
    /// The path's bytes in the image (`key` is this entry's manifest key).
    pub fn raw<'a>(&'a self, key: &'a str) -> &'a [u8] {
        self.raw_path.as_deref().unwrap_or(key.as_bytes())
    }

    /// The hex SHA-256, or empty.
    pub fn sha256_hex(&self) -> String {
        self.sha256.map(hex::encode).unwrap_or_default()
    }
}

/// Everything compared about one disk state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Path → entry, sorted by path (`/` included).
    pub entries: BTreeMap<String, Entry>,
    /// Users and groups.
    pub accounts: Accounts,
    /// Installed packages, conffiles and file owners.
    pub dpkg: Dpkg,
    /// systemd units by name.
    pub services: BTreeMap<String, Service>,
    /// Bytes of file content hashed.
    pub bytes_hashed: u64,
    /// Time spent building the manifest.
    pub elapsed_ms: u64,
}

/// Builds the manifest of `img` with the default [`Limits`]. Blocking.
pub fn manifest(img: &DiskImage, opts: &DiffOptions) -> Result<Manifest> {
    manifest_with_limits(img, opts, &Limits::default())
}

/// Builds the manifest of `img`; exceeding a limit is an error. Blocking (regular files
/// are hashed on up to 4 threads).
pub fn manifest_with_limits(
    img: &DiskImage,
    opts: &DiffOptions,
    limits: &Limits,
) -> Result<Manifest> {
    guarded("building the manifest", || {
        let started = Instant::now();
        let fs = img.fs();
        let budget = limits
            .max_hash_bytes
            .unwrap_or_else(|| img.fs_len().saturating_mul(2).saturating_add(1 << 30));
        let mut walk = Walk {
            fs,
            volatile: PrefixSet::new(&opts.volatile_paths),
            metadata_only: PrefixSet::new(&opts.metadata_only_paths),
            limits: *limits,
            budget,
            claimed: 0,
            jobs: Vec::new(),
            entries: BTreeMap::new(),
        };
        walk.run()?;
        let (hashes, bytes_hashed) = hash_all(img, &walk.jobs)?;
        for (job, sha) in walk.jobs.iter().zip(hashes) {
            if let Some(entry) = walk.entries.get_mut(&job.key) {
                entry.sha256 = Some(sha);
            }
        }
        let accounts = img.accounts()?.clone();
        let dpkg = dpkg::read(fs)?;
        let services = systemd::read(fs)?;
        Ok(Manifest {
            entries: walk.entries,
            accounts,
            dpkg,
            services,
            bytes_hashed,
            elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        })
    })
}

struct Walk<'a> {
    fs: &'a Ext4,
    volatile: PrefixSet,
    metadata_only: PrefixSet,
    limits: Limits,
    /// Most bytes of content to hash, and what the inodes claim so far.
    budget: u64,
    claimed: u64,
    /// Regular files to hash once the walk is done.
    jobs: Vec<Job>,
    entries: BTreeMap<String, Entry>,
}

fn kind_of(t: FileType) -> Kind {
    if t.is_regular_file() {
        Kind::Regular
    } else if t.is_dir() {
        Kind::Directory
    } else if t.is_symlink() {
        Kind::Symlink
    } else {
        Kind::Other
    }
}

impl Walk<'_> {
    /// Depth-first over real directories only (symlinks are recorded, never followed).
    fn run(&mut self) -> Result<()> {
        if !self.volatile.matches("/") {
            let meta = self
                .fs
                .symlink_metadata("/")
                .map_err(|e| InspectError::from_ext4("/", e))?;
            self.add(b"/".to_vec(), &meta)?;
        }
        let mut stack: Vec<(Vec<u8>, usize)> = vec![(b"/".to_vec(), 0)];
        while let Some((dir, depth)) = stack.pop() {
            let rd = self
                .fs
                .read_dir(dir.as_slice())
                .map_err(|e| InspectError::from_ext4(&display_path(&dir), e))?;
            // A directory's names (16 bytes of their SHA-256 each), to refuse duplicates
            // in linear time and memory: a crafted directory may hold one name many
            // times, and the kernel would only ever open the first, so a manifest listing
            // either would mislead.
            let mut seen: HashSet<[u8; 16]> = HashSet::new();
            let mut duplicates = Duplicates::default();
            for de in rd {
                let de = de.map_err(|e| InspectError::from_ext4(&display_path(&dir), e))?;
                let name = de.file_name();
                let name: &[u8] = name.as_ref();
                if name == b"." || name == b".." {
                    continue;
                }
                if !seen.insert(name_digest(name)) {
                    duplicates.add(name);
                    continue;
                }
                if duplicates.count > 0 {
                    // Only counted from here on: the directory is refused once read.
                    continue;
                }
                let child = join(&dir, name);
                if self.volatile.matches(&display_path(&child)) {
                    continue;
                }
                let meta = de
                    .metadata()
                    .map_err(|e| InspectError::from_ext4(&display_path(&child), e))?;
                if meta.is_dir() {
                    if depth + 1 > self.limits.max_depth {
                        return Err(InspectError::Unsupported(format!(
                            "{}: directories nested deeper than {}",
                            display_path(&child),
                            self.limits.max_depth
                        )));
                    }
                    stack.push((child.clone(), depth + 1));
                }
                self.add(child, &meta)?;
            }
            if duplicates.count > 0 {
                return Err(duplicates.error(&dir));
            }
        }
        Ok(())
    }

    fn add(&mut self, raw: Vec<u8>, meta: &Metadata) -> Result<()> {
        if self.entries.len() >= self.limits.max_entries {
            return Err(InspectError::TooLarge {
                path: "entries in the file system".to_owned(),
                size: self.entries.len() as u64 + 1,
                max: self.limits.max_entries as u64,
            });
        }
        let mut key = display_path(&raw);
        let kind = kind_of(meta.file_type());
        let mut hash_later = false;
        let mut entry = Entry {
            kind,
            mode: u32::from(meta.mode()),
            uid: meta.uid(),
            gid: meta.gid(),
            size: meta.len(),
            sha256: None,
            link_target: None,
            raw_path: None,
        };
        match kind {
            Kind::Regular if !self.metadata_only.matches(&key) => {
                // Checked on the inodes' claimed sizes before anything is read.
                self.claimed = self.claimed.saturating_add(meta.len());
                if self.claimed > self.budget {
                    return Err(InspectError::TooLarge {
                        path: format!("file content to hash (at {key})"),
                        size: self.claimed,
                        max: self.budget,
                    });
                }
                hash_later = true;
            }
            Kind::Symlink => {
                entry.link_target = Some(display_path(&link_target(self.fs, &raw, meta.len())?));
            }
            _ => {}
        }
        // Only distinct raw paths whose escaped forms are equal collide (`\xff` as a
        // byte and as four characters): the raw bytes in hex make the key unique, since
        // raw paths are (duplicate names are refused). A real name equal to that key is
        // still possible, each such one costs the guest an entry: bounded, linear.
        if self.entries.contains_key(&key) {
            key.push('\u{FFFD}');
            key.push_str(&hex::encode(&raw));
            while self.entries.contains_key(&key) {
                key.push('\u{FFFD}');
            }
        }
        if key.as_bytes() != raw.as_slice() {
            entry.raw_path = Some(raw);
        }
        if hash_later {
            self.jobs.push(Job {
                raw: entry.raw(&key).to_vec(),
                key: key.clone(),
            });
        }
        self.entries.insert(key, entry);
        Ok(())
    }
}

/// What a directory's name is remembered by while the directory is read.
fn name_digest(name: &[u8]) -> [u8; 16] {
    use sha2::Digest as _;
    let full = sha2::Sha256::digest(name);
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

/// Names met more than once in one directory.
#[derive(Debug, Default)]
struct Duplicates {
    count: u64,
    first: Option<Vec<u8>>,
}

impl Duplicates {
    fn add(&mut self, name: &[u8]) {
        self.count += 1;
        if self.first.is_none() {
            self.first = Some(name.to_vec());
        }
    }

    fn error(&self, dir: &[u8]) -> InspectError {
        let first = self.first.as_deref().unwrap_or_default();
        let shown: String = display_path(first).chars().take(64).collect();
        InspectError::Corrupt(format!(
            "{}: {} duplicate directory entries (first: {shown:?}); a directory holds \
             each name once",
            display_path(dir),
            self.count
        ))
    }
}
