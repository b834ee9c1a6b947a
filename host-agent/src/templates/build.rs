//! Building a memory template: boot the image with its NIC unplugged, wait until its
//! sshd is up, stop its DHCP client, save it. Never on a create's critical path: the
//! agent builds the configured shapes after it starts, and a shape a create asked for
//! (on demand) after that create cold-booted.
//!
//! One builder per template at a time, across agents sharing the folder: an exclusive
//! lock on `<name>.lock` (released by the kernel when the builder dies). A crashed
//! build leaves `.build-<name>` (removed by the next build of that name, or at start)
//! and a transient domain (gone with the host, or removed by the reconciler, which
//! owns every domain marked with this agent's name and no record).

use std::path::Path;
use std::time::{Duration, Instant};

use fluid_proto::model::{Name, SandboxId};

use super::{FORMAT, Meta, Shape, Template, Templates};
use crate::config::VirtType;
use crate::hypervisor::{DomainSpec, Hypervisor, random_mac};
use crate::images::ResolvedImage;
use crate::network::tap_name;
use crate::overlay::{self, OverlayError};

/// What the template's guest is asked until it says it is ready: sshd is up; then its
/// DHCP client stops (the NIC is unplugged, and each clone gets its own address).
const PREPARE: &str = "systemctl is-active --quiet ssh.service || exit 75
systemctl stop 'ifup@*.service' 2>/dev/null || true
sync";

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("another builder holds {0}")]
    Busy(String),
    #[error("{0}")]
    Io(String),
    #[error(transparent)]
    Overlay(#[from] OverlayError),
    #[error("hypervisor: {0}")]
    Hypervisor(#[from] crate::hypervisor::HypervisorError),
    #[error("the template's guest was not ready after {0} s")]
    NotReady(u64),
}

fn io(what: &Path) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
    move |e| BuildError::Io(format!("{}: {e}", what.display()))
}

/// The parts of the agent a build uses.
pub struct BuildContext<'a, H> {
    pub hv: &'a H,
    pub agent: &'a Name,
    pub network: &'a Name,
    pub virt_type: VirtType,
}

impl Templates {
    /// Builds the template of `shape` from `image` at `key` (unless it is there).
    pub async fn build<H: Hypervisor>(
        &self,
        cx: &BuildContext<'_, H>,
        shape: &Shape,
        image: &ResolvedImage,
        key: &str,
    ) -> Result<Template, BuildError> {
        if let Some(t) = self.ready(shape, key).await {
            return Ok(t);
        }
        overlay::ensure_dir(self.dir()).await?;
        let name = Templates::name_of(shape, key);
        let lock_path = self.dir().join(format!(".{name}.lock"));
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(BuildError::Busy(name)),
            Err(std::fs::TryLockError::Error(e)) => return Err(io(&lock_path)(e)),
        }
        // Built by another agent while this one waited for the lock?
        if let Some(t) = self.ready(shape, key).await {
            return Ok(t);
        }
        let staging = self.dir().join(format!(".build-{name}"));
        let _ = tokio::fs::remove_dir_all(&staging).await;
        overlay::ensure_dir(&staging).await?;
        let started = Instant::now();
        let spec = match self.spec(cx, shape, image, key, &staging).await {
            Ok(spec) => spec,
            Err(e) => {
                let _ = tokio::fs::remove_dir_all(&staging).await;
                return Err(e);
            }
        };
        if let Err(e) = self.boot_and_save(cx, &spec, &staging).await {
            // Transient: powered off (if it ever started), it is gone.
            let _ = cx.hv.power_off(&spec.uuid).await;
            let _ = tokio::fs::remove_dir_all(&staging).await;
            return Err(e);
        }
        let state_bytes = tokio::fs::metadata(staging.join("state.save"))
            .await
            .map_err(io(&staging))?
            .len();
        let meta = Meta {
            format: FORMAT,
            key: key.to_owned(),
            image: shape.image.clone(),
            cpus: shape.cpus,
            memory_mb: shape.memory_mb,
            built_at_unix: crate::unix_now(),
            build_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            state_bytes,
        };
        let meta_path = staging.join("meta.json");
        let bytes = serde_json::to_vec_pretty(&meta).map_err(|e| BuildError::Io(e.to_string()))?;
        tokio::fs::write(&meta_path, bytes)
            .await
            .map_err(io(&meta_path))?;
        let dir = self.dir().join(&name);
        let _ = tokio::fs::remove_dir_all(&dir).await;
        tokio::fs::rename(&staging, &dir).await.map_err(io(&dir))?;
        tracing::info!(
            template = %name, build_ms = meta.build_ms, state_mib = state_bytes >> 20,
            domain = %spec.name, "memory template built"
        );
        drop(lock);
        let _ = tokio::fs::remove_file(&lock_path).await;
        Ok(Template { name, dir, meta })
    }

    /// The template's domain, its overlay made in `staging`.
    async fn spec<H: Hypervisor>(
        &self,
        cx: &BuildContext<'_, H>,
        shape: &Shape,
        image: &ResolvedImage,
        key: &str,
        staging: &Path,
    ) -> Result<DomainSpec, BuildError> {
        let disk = staging.join("disk.qcow2");
        overlay::create_overlay(&disk, &image.backing, &image.backing_format).await?;
        let invalid = |e: fluid_proto::model::ValidationError| BuildError::Io(e.to_string());
        let id = SandboxId::parse("template", &format!("SBX-tpl{key}")).map_err(invalid)?;
        let name = Name::parse("template", &format!("fluid-template-{key}")).map_err(invalid)?;
        Ok(DomainSpec {
            tap: tap_name(&id),
            id,
            hostname: name.clone(),
            name,
            uuid: uuid::Uuid::new_v4().to_string(),
            agent: cx.agent.clone(),
            image: Name::parse("template", &shape.image).map_err(invalid)?,
            virt_type: cx.virt_type,
            cpus: shape.cpus,
            memory_mb: shape.memory_mb,
            boot: image.boot.clone(),
            overlay: disk,
            network: cx.network.clone(),
            mac: random_mac(),
            console_log: staging.join("console.log"),
            ssh_user_ca_keys: Vec::new(),
            link_down: true,
        })
    }

    /// Boots the template `spec` and, once it is ready, saves it in `staging`.
    async fn boot_and_save<H: Hypervisor>(
        &self,
        cx: &BuildContext<'_, H>,
        spec: &DomainSpec,
        staging: &Path,
    ) -> Result<(), BuildError> {
        cx.hv.start_transient(spec).await?;
        let timeout = Duration::from_secs(u64::from(self.config.build_timeout_secs));
        let deadline = Instant::now() + timeout;
        let prepare = ["/bin/sh".to_owned(), "-c".to_owned(), PREPARE.to_owned()];
        loop {
            // Errors while the guest agent is not up yet, 75 while sshd is not.
            let ready = cx
                .hv
                .guest_exec(&spec.uuid, &prepare, Duration::from_secs(60))
                .await
                .is_ok_and(|o| o.exit_code == 0);
            if ready {
                break;
            }
            if Instant::now() >= deadline {
                return Err(BuildError::NotReady(timeout.as_secs()));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        // Created by the agent first: libvirtd (root) truncates and fills it, and it
        // keeps the agent as its owner, so an agent that is not root can read it.
        let state = staging.join("state.save");
        tokio::fs::write(&state, b"").await.map_err(io(&state))?;
        cx.hv.save(&spec.uuid, &state).await?;
        Ok(())
    }

    /// Builds every configured shape's template now, in the foreground, waiting for
    /// another builder of the same template rather than failing; a line per shape.
    pub async fn build_configured<H: Hypervisor>(
        &self,
        cx: &BuildContext<'_, H>,
        images: &[crate::config::ImageConfig],
    ) -> anyhow::Result<Vec<String>> {
        self.clean_crashed_builds().await;
        let mut lines = Vec::new();
        for configured in &self.config.shapes {
            let shape = Shape::from(configured);
            let image_config = images
                .iter()
                .find(|i| *i.name() == configured.image)
                .ok_or_else(|| anyhow::anyhow!("image {} is not configured", shape.image))?;
            let image = crate::images::resolve(cx.hv, image_config).await?;
            let key = self.key(&shape, &image, cx.virt_type).await;
            if let Some(t) = self.ready(&shape, &key).await {
                lines.push(format!("{}: ready, {}", t.name, t.dir.display()));
                continue;
            }
            let deadline =
                Instant::now() + Duration::from_secs(u64::from(self.config.build_timeout_secs));
            let t = loop {
                match self.build(cx, &shape, &image, &key).await {
                    Err(BuildError::Busy(_)) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    other => break other?,
                }
            };
            let how = format!("built in {:.1} s", t.meta.build_ms as f64 / 1000.0);
            lines.push(format!(
                "{}: {how}, save image {} MiB, {}",
                t.name,
                t.meta.state_bytes >> 20,
                t.dir.display()
            ));
        }
        Ok(lines)
    }

    /// Removes what crashed builds left: `.build-*` folders no builder holds.
    pub async fn clean_crashed_builds(&self) {
        let Ok(mut entries) = tokio::fs::read_dir(self.dir()).await else {
            return;
        };
        while let Ok(Some(e)) = entries.next_entry().await {
            let file = e.file_name().to_string_lossy().into_owned();
            let Some(name) = file.strip_prefix(".build-") else {
                continue;
            };
            let lock_path = self.dir().join(format!(".{name}.lock"));
            let held = std::fs::OpenOptions::new()
                .write(true)
                .open(&lock_path)
                .is_ok_and(|f| f.try_lock().is_err());
            if !held {
                tracing::info!(build = %file, "removing a crashed template build");
                let _ = tokio::fs::remove_dir_all(e.path()).await;
            }
        }
    }

    /// Removes the templates of `shape` other than `keep`, unless a sandbox's overlay
    /// is backed by them (`in_use`: template names).
    pub async fn remove_stale(&self, shape: &Shape, keep: &str, in_use: &[String]) {
        let prefix = format!("{}-{}c-{}m-", shape.image, shape.cpus, shape.memory_mb);
        for t in self.list().await {
            if t.name.starts_with(&prefix) && t.name != keep && !in_use.contains(&t.name) {
                tracing::info!(template = %t.name, "removing a stale memory template");
                let _ = tokio::fs::remove_dir_all(&t.dir).await;
            }
        }
    }
}
