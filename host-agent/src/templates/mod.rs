//! Memory templates: per image and shape (vCPUs, memory), the golden image booted once
//! until its sshd is up, then saved (memory and device state), so that a sandbox of
//! that shape is *restored* in about a second instead of cold-booted in about half a
//! minute. ARCHITECTURE.md ("Fast start") says why this design and not another.
//!
//! On disk, under `templates.dir` (default `<state_dir>/templates`), one folder per
//! template, named `<image>-<cpus>c-<memory>m-<key>`:
//!
//! ```text
//! disk.qcow2    the template's overlay on the image, frozen at the save; every clone's
//!               overlay is backed by it (so it is removed only when no sandbox uses it)
//! state.save    libvirt's save image of the running template (`save_image`)
//! meta.json     what it was built from and when ([`Meta`])
//! ```
//!
//! `<key>` hashes everything the saved state depends on: the image's files (path,
//! length, modification time), the kernel command line, the shape, the virtualisation
//! type, the QEMU binary, and [`FORMAT`]. A create computes the key afresh, so a changed
//! image or QEMU never matches an old template: it cold-boots, and a new template is
//! built in the background. A folder is complete once renamed from `.build-<name>`;
//! anything else found in the folder at start is a crashed build, removed.

pub mod build;
pub mod save_image;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{TemplateShape, TemplatesConfig, VirtType};
use crate::hypervisor::Boot;
use crate::images::ResolvedImage;

/// Bumped when what a template holds, or how clones use it, changes.
pub const FORMAT: u32 = 1;

/// The emulator libvirt runs for x86_64 guests; part of the key.
const QEMU_BINARY: &str = "/usr/bin/qemu-system-x86_64";

/// A built template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// The folder's name.
    pub name: String,
    pub dir: PathBuf,
    pub meta: Meta,
}

impl Template {
    /// The overlay every clone's overlay (and every fork's of a clone) is backed by.
    pub fn disk(&self) -> PathBuf {
        self.dir.join("disk.qcow2")
    }

    /// The save image.
    pub fn state(&self) -> PathBuf {
        self.dir.join("state.save")
    }
}

/// `meta.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub format: u32,
    pub key: String,
    pub image: String,
    pub cpus: u32,
    pub memory_mb: u64,
    pub built_at_unix: i64,
    /// From the template's start to its save.
    pub build_ms: u64,
    /// The save image's size.
    pub state_bytes: u64,
}

/// What a template is for: an image at a shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Shape {
    pub image: String,
    pub cpus: u32,
    pub memory_mb: u64,
}

impl From<&TemplateShape> for Shape {
    fn from(s: &TemplateShape) -> Self {
        Self {
            image: s.image.to_string(),
            cpus: s.cpus,
            memory_mb: s.memory_mb,
        }
    }
}

/// The templates of this host.
#[derive(Debug)]
pub struct Templates {
    pub config: TemplatesConfig,
    dir: PathBuf,
    /// Shapes whose build this agent has running.
    building: Mutex<HashSet<Shape>>,
}

/// One file's identity in a key: path, length, modification time.
async fn fingerprint(path: &Path) -> String {
    match tokio::fs::metadata(path).await {
        Ok(m) => {
            let mtime = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            format!("{}:{}:{mtime}", path.display(), m.len())
        }
        Err(_) => format!("{}:missing", path.display()),
    }
}

impl Templates {
    pub fn new(config: TemplatesConfig, state_dir: &Path) -> Self {
        let dir = config
            .dir
            .clone()
            .unwrap_or_else(|| state_dir.join("templates"));
        Self {
            config,
            dir,
            building: Mutex::new(HashSet::new()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The overlay of the template named `name` (a folder's name), whether or not it
    /// is there.
    pub fn disk_of(&self, name: &str) -> PathBuf {
        self.dir.join(name).join("disk.qcow2")
    }

    /// The key of `shape` built from `image` now.
    pub async fn key(&self, shape: &Shape, image: &ResolvedImage, virt_type: VirtType) -> String {
        let mut parts = vec![
            format!("format={FORMAT}"),
            format!("image={}", shape.image),
            format!("cpus={}", shape.cpus),
            format!("memory_mb={}", shape.memory_mb),
            format!("virt_type={}", virt_type.as_str()),
            format!("disk={}", fingerprint(&image.backing).await),
            format!("disk_format={}", image.backing_format),
            format!("qemu={}", fingerprint(Path::new(QEMU_BINARY)).await),
        ];
        if let Boot::Kernel {
            kernel,
            initrd,
            cmdline,
        } = &image.boot
        {
            parts.push(format!("kernel={}", fingerprint(kernel).await));
            if let Some(initrd) = initrd {
                parts.push(format!("initrd={}", fingerprint(initrd).await));
            }
            parts.push(format!("cmdline={}", cmdline.as_deref().unwrap_or("")));
        }
        let digest = Sha256::digest(parts.join("\n").as_bytes());
        hex::encode(&digest[..8])
    }

    /// The folder name of `shape` at `key`.
    pub fn name_of(shape: &Shape, key: &str) -> String {
        format!("{}-{}c-{}m-{key}", shape.image, shape.cpus, shape.memory_mb)
    }

    /// The template of `shape` at `key`, when it is built and whole.
    pub async fn ready(&self, shape: &Shape, key: &str) -> Option<Template> {
        let name = Self::name_of(shape, key);
        let dir = self.dir.join(&name);
        let meta: Meta =
            serde_json::from_slice(&tokio::fs::read(dir.join("meta.json")).await.ok()?).ok()?;
        if meta.key != key || meta.format != FORMAT {
            return None;
        }
        let t = Template { name, dir, meta };
        let whole = tokio::fs::try_exists(t.disk()).await.unwrap_or(false)
            && tokio::fs::try_exists(t.state()).await.unwrap_or(false);
        whole.then_some(t)
    }

    /// Whether a build of `shape` may start now: enabled, configured or on demand,
    /// within `max`, not already running here. Marks it running; [`Templates::built`]
    /// clears the mark.
    pub fn begin_build(&self, shape: &Shape, configured: bool) -> bool {
        if !self.config.enabled || !(configured || self.config.on_demand) {
            return false;
        }
        let mut building = self.building.lock().unwrap_or_else(|e| e.into_inner());
        if building.contains(shape) || building.len() >= self.config.max {
            return false;
        }
        building.insert(shape.clone());
        true
    }

    /// The build of `shape` ended (either way).
    pub fn built(&self, shape: &Shape) {
        self.building
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(shape);
    }

    /// Template folders present: (name, meta) of the whole ones.
    pub async fn list(&self) -> Vec<Template> {
        let mut out = Vec::new();
        let Ok(mut entries) = tokio::fs::read_dir(&self.dir).await else {
            return out;
        };
        while let Ok(Some(e)) = entries.next_entry().await {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !e.path().is_dir() {
                continue;
            }
            let Ok(bytes) = tokio::fs::read(e.path().join("meta.json")).await else {
                continue;
            };
            if let Ok(meta) = serde_json::from_slice::<Meta>(&bytes) {
                out.push(Template {
                    name,
                    dir: e.path(),
                    meta,
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

#[cfg(test)]
mod tests;
