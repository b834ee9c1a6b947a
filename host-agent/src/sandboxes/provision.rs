//! How a new sandbox reaches its first running state: restored from a memory template
//! of its image and shape (`crate::templates`) when one is ready, else cold-booted.
//!
//! A restore, in order: the clone's save image (the template's, with this sandbox's
//! domain XML: its name, UUID, MAC, tap, overlay, and the NIC's link down) → libvirt
//! restores it as the sandbox's defined domain → its address is admitted → the NIC's
//! link goes up → through the guest agent, the guest takes its identity (clock, RNG
//! reseed, sandbox id and user CAs, machine-id, hostname, a fresh SSH host key the
//! agent generated and pins, MAC, address) → the sandbox is handed over. Until the
//! identity step, the guest's frames carry the template's MAC, which its tap's rules
//! drop. Any failure falls back to a cold boot of the same overlay.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fluid_proto::guest::identity::CloneIdentity;
use fluid_proto::model::CreateSandbox;
use russh::keys::PrivateKey;
use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::Ed25519Keypair;
use tokio::time::Instant;

use super::Sandboxes;
use super::scratch::ScratchFile;
use crate::error::ServiceError;
use crate::hypervisor::{Hypervisor, RevertTo, domain_xml};
use crate::images::ResolvedImage;
use crate::state::{SandboxRecord, StateStore};
use crate::templates::build::BuildContext;
use crate::templates::{Shape, Template, Templates, save_image};

/// How long the identity step may take in the guest.
const IDENTITY_TIMEOUT: Duration = Duration::from_secs(60);

/// How a new sandbox reaches its first running state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provision {
    /// Start the defined domain; the guest boots from scratch (~30 s under TCG).
    ColdBoot,
    /// Restore the template's saved state as the domain, then give it its identity.
    Restore(Template),
    /// A live fork: restore its running source's saved state (this save image, used
    /// once) as the domain, then give it its identity.
    Fork { state: PathBuf },
    /// A fork from a snapshot with memory: redefine that snapshot (`name`, its libvirt
    /// `xml`) on the domain, whose overlay holds it, revert to it, give the guest its
    /// identity, and delete the snapshot.
    Snapshot { name: String, xml: String },
}

impl Provision {
    /// `boot`, `restore` or `fork`: what the sandbox's `start_path` says.
    pub fn path(&self) -> &'static str {
        match self {
            Provision::ColdBoot => "boot",
            Provision::Restore(_) => "restore",
            Provision::Fork { .. } | Provision::Snapshot { .. } => "fork",
        }
    }
}

/// The saved state a restore starts from.
enum Saved<'a> {
    /// A save image, restored as the new domain.
    Image(SaveImage<'a>),
    /// A snapshot in the domain's overlay: its name and libvirt XML.
    Snapshot(&'a str, &'a str),
}

/// A save image a sandbox resumes from.
enum SaveImage<'a> {
    /// A template's, copied with the clone's domain XML (the template stays).
    Template(&'a Template),
    /// A live fork's, rewritten in place with the fork's domain XML.
    Fork(&'a Path),
}

/// A template a cold-booted create found missing: built after the create.
pub(super) struct Missing {
    shape: Shape,
    key: String,
    image: ResolvedImage,
}

impl<H: Hypervisor> Sandboxes<H> {
    /// The way `req` starts: a ready template of its shape, unless it is a fork (its
    /// disk is another sandbox's) or its address is not reserved (the identity step
    /// sets it). With no template, the shape's to build.
    pub(super) async fn provision_for(
        &self,
        req: &CreateSandbox,
        image: &ResolvedImage,
        static_ip: Option<Ipv4Addr>,
    ) -> (Provision, Option<Missing>) {
        let fork = req.from_snapshot.is_some() || req.fork_of_running.is_some();
        if !self.templates.config.enabled || fork || static_ip.is_none() {
            return (Provision::ColdBoot, None);
        }
        let shape = Shape {
            image: req.image.to_string(),
            cpus: req.cpus,
            memory_mb: req.memory_mb,
        };
        let (ready, key) = self.ready_template(&shape, image).await;
        match ready {
            Some(t) => (Provision::Restore(t), None),
            None => (
                Provision::ColdBoot,
                Some(Missing {
                    shape,
                    key,
                    image: image.clone(),
                }),
            ),
        }
    }

    /// The ready template of `shape` made from `image` as it is now, if any, and its
    /// key.
    pub(super) async fn ready_template(
        &self,
        shape: &Shape,
        image: &ResolvedImage,
    ) -> (Option<Template>, String) {
        let key = self
            .templates
            .key(shape, image, self.config.virt_type)
            .await;
        (self.templates.ready(shape, &key).await, key)
    }

    /// Brings the defined, stopped sandbox `record` to running, as `provision` says;
    /// the path it took (a failed restore cold-boots).
    pub(super) async fn provision(
        &self,
        provision: &Provision,
        record: &SandboxRecord,
    ) -> Result<&'static str, ServiceError> {
        let saved = match provision {
            Provision::ColdBoot => None,
            Provision::Restore(t) => Some((Saved::Image(SaveImage::Template(t)), t.name.as_str())),
            Provision::Fork { state } => {
                Some((Saved::Image(SaveImage::Fork(state)), "its source's memory"))
            }
            Provision::Snapshot { name, xml } => {
                Some((Saved::Snapshot(name, xml), "a snapshot's memory"))
            }
        };
        if let Some((saved, from)) = saved {
            // A live fork's saved state is this create's: gone whatever happens.
            let _fork_state = match provision {
                Provision::Fork { state } => Some(ScratchFile::new(state.clone())),
                _ => None,
            };
            let started = Instant::now();
            let restored = self.restore_from(saved, record).await;
            // Its memory is the fork's now: the copy of the source's snapshot goes.
            if let Provision::Snapshot { name, .. } = provision {
                if restored.is_err() {
                    let _ = self.hv.power_off(&record.domain_uuid).await;
                }
                if let Err(e) = self.hv.snapshot_delete(&record.domain_uuid, name).await {
                    tracing::warn!(id = %record.id, snapshot = %name, "deleting the fork's copy of its snapshot: {e}");
                }
            }
            match restored {
                Ok(()) => {
                    tracing::info!(id = %record.id, from, restore_ms = started.elapsed().as_millis(), "sandbox restored from a saved state");
                    return Ok(provision.path());
                }
                Err(e) => {
                    tracing::warn!(id = %record.id, from, "restore failed, cold-booting instead: {e}");
                    let _ = self.hv.power_off(&record.domain_uuid).await;
                }
            }
        }
        self.hv.start(&record.domain_uuid).await?;
        Ok("boot")
    }

    async fn restore_from(
        &self,
        saved: Saved<'_>,
        record: &SandboxRecord,
    ) -> Result<(), ServiceError> {
        let ip = record.static_ip.ok_or_else(|| {
            ServiceError::FailedPrecondition("a restore needs a reserved address".into())
        })?;
        let net = self.hv.network_info(record.network.as_str()).await?;
        let gateway = net.ipv4.ok_or_else(|| {
            ServiceError::FailedPrecondition(format!(
                "network {} has no IPv4 address",
                record.network
            ))
        })?;
        let mut spec = self.spec_for(record);
        spec.link_down = true;
        let xml = domain_xml::render(&spec)
            .map_err(|e| ServiceError::Internal(format!("domain XML: {e}")))?;
        let up = domain_xml::interface_link_up(&spec)
            .map_err(|e| ServiceError::Internal(format!("interface XML: {e}")))?;
        match saved {
            Saved::Snapshot(name, snapshot_xml) => {
                let rehomed = crate::hypervisor::snapshot_xml::rehome(snapshot_xml, &xml)
                    .map_err(ServiceError::Internal)?;
                self.hv
                    .snapshot_redefine(&record.domain_uuid, &rehomed)
                    .await?;
                self.hv
                    .snapshot_revert(&record.domain_uuid, name, RevertTo::Running)
                    .await?;
            }
            Saved::Image(image) => self.restore_save_image(image, record, xml).await?,
        }
        self.take_identity(record, ip, &gateway, &up).await
    }

    /// Restores a save image (a template's copy, or a live fork's) as `record`'s domain,
    /// with the domain XML `xml`.
    async fn restore_save_image(
        &self,
        image: SaveImage<'_>,
        record: &SandboxRecord,
        xml: String,
    ) -> Result<(), ServiceError> {
        let dir = self.config.state_dir.join("restore");
        crate::overlay::ensure_dir(&dir)
            .await
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        // A template's clone is a copy of its memory: room for it until it is restored.
        // A template's clone is this restore's file (gone once restored, or if it
        // cannot be written or restored); a fork's saved state is `provision`'s.
        let (clone_path, template_state, _room, _clone) = match image {
            SaveImage::Template(t) => {
                let clone = dir.join(format!("{}.save", record.id));
                let room = self.room.reserve(
                    &dir,
                    record.memory_mb.saturating_mul(1024 * 1024),
                    &format!(
                        "the saved memory of sandbox {} until its restore",
                        record.id
                    ),
                )?;
                let scratch = ScratchFile::new(clone.clone());
                (clone, Some(t.state()), Some(room), Some(scratch))
            }
            SaveImage::Fork(state) => (state.to_owned(), None, None, None),
        };
        let restore_path = clone_path.clone();
        tokio::task::spawn_blocking(move || match template_state {
            Some(template_state) => save_image::write_clone(&template_state, &clone_path, &xml),
            None => save_image::rewrite_in_place(&clone_path, &xml),
        })
        .await
        .map_err(|e| ServiceError::Internal(format!("writing the clone's save image: {e}")))?
        .map_err(|e| ServiceError::Internal(e.to_string()))?;
        Ok(self.hv.restore(&restore_path).await?)
    }

    /// The restored guest's identity: its address admitted, its NIC's link up, then
    /// (through the guest agent) everything in which it must differ from the machine
    /// it was saved from; its fresh host key is pinned.
    async fn take_identity(
        &self,
        record: &SandboxRecord,
        ip: Ipv4Addr,
        gateway: &ipnet::Ipv4Net,
        up: &str,
    ) -> Result<(), ServiceError> {
        // The rules admit its address before it can use it.
        self.admit_ip(&record.id, ip).await?;
        self.hv.update_interface(&record.domain_uuid, up).await?;
        let mut host_key = PrivateKey::from(Ed25519Keypair::from_seed(&rand::random()));
        host_key.set_comment(format!("root@{}", record.name));
        let host_key_private = host_key
            .to_openssh(LineEnding::LF)
            .map_err(|e| ServiceError::Internal(format!("encoding a host key: {e}")))?;
        let host_key_public = host_key
            .public_key()
            .to_openssh()
            .map_err(|e| ServiceError::Internal(format!("encoding a host key: {e}")))?;
        let identity = CloneIdentity {
            sandbox_id: record.id.to_string(),
            hostname: record.name.to_string(),
            now_unix: crate::unix_now(),
            mac: record.mac.clone(),
            address: format!("{ip}/{}", gateway.prefix_len()),
            gateway: gateway.addr().to_string(),
            machine_id: hex::encode(rand::random::<[u8; 16]>()),
            entropy_hex: hex::encode(rand::random::<[u8; 32]>()),
            host_key_private: host_key_private.to_string(),
            host_key_public: host_key_public.clone(),
            user_ca_keys: record.ssh_user_ca_keys.clone(),
        };
        let out = self
            .hv
            .guest_exec(&record.domain_uuid, &identity.argv(), IDENTITY_TIMEOUT)
            .await?;
        if out.exit_code != 0 {
            return Err(ServiceError::Internal(format!(
                "the clone's identity step exited {}: {}",
                out.exit_code,
                out.stderr.trim()
            )));
        }
        // Pinned before anyone connects: no trust on first use for a clone.
        let mut r = self
            .store
            .get(&record.id)
            .await?
            .unwrap_or_else(|| record.clone());
        r.ssh_host_key = Some(host_key_public);
        r.known_ip = Some(ip);
        r.last_ip = Some(ip);
        self.store.put(&r).await?;
        Ok(())
    }

    /// At start: removes what crashed builds and restores left, then builds the
    /// configured shapes' templates in the background (those not built yet).
    pub async fn start_templates(&self) {
        self.templates.clean_crashed_builds().await;
        let _ = tokio::fs::remove_dir_all(self.config.state_dir.join("restore")).await;
        if !self.templates.config.enabled {
            return;
        }
        let mut todo = Vec::new();
        for configured in &self.templates.config.shapes {
            let shape = Shape::from(configured);
            let Some(image_config) = self.config.image(&configured.image) else {
                continue;
            };
            let image = match crate::images::resolve(self.hv.as_ref(), image_config).await {
                Ok(image) => image,
                Err(e) => {
                    tracing::warn!(image = %shape.image, "memory template not built: {e}");
                    continue;
                }
            };
            let key = self
                .templates
                .key(&shape, &image, self.config.virt_type)
                .await;
            if self.templates.ready(&shape, &key).await.is_none()
                && self.templates.begin_build(&shape, true)
            {
                todo.push((shape, key, image));
            }
        }
        if !todo.is_empty() {
            spawn_build(
                Arc::clone(&self.hv),
                Arc::clone(&self.templates),
                self.config.clone(),
                todo,
                self.store.clone(),
            );
        }
    }

    /// Builds, in the background, the template a create found missing.
    pub(super) fn build_later(&self, missing: Missing) {
        if !self.templates.begin_build(&missing.shape, false) {
            return;
        }
        spawn_build(
            Arc::clone(&self.hv),
            Arc::clone(&self.templates),
            self.config.clone(),
            vec![(missing.shape, missing.key, missing.image)],
            self.store.clone(),
        );
    }
}

/// Builds `shapes` one after the other, each marked by [`Templates::begin_build`].
pub(crate) fn spawn_build<H: Hypervisor>(
    hv: Arc<H>,
    templates: Arc<Templates>,
    config: crate::config::AgentConfig,
    shapes: Vec<(Shape, String, ResolvedImage)>,
    store: StateStore,
) {
    tokio::spawn(async move {
        for (shape, key, image) in shapes {
            let cx = BuildContext {
                hv: hv.as_ref(),
                agent: &config.host_name,
                network: &config.network.name,
                virt_type: config.virt_type,
            };
            match templates.build(&cx, &shape, &image, &key).await {
                Ok(t) => match store.list().await {
                    // Templates the sandboxes' overlays are backed by stay.
                    Ok(records) => {
                        let in_use: Vec<String> =
                            records.into_iter().filter_map(|r| r.template).collect();
                        templates.remove_stale(&shape, &t.name, &in_use).await;
                    }
                    Err(e) => tracing::warn!("stale templates kept: {e}"),
                },
                Err(e) => {
                    tracing::warn!(image = %shape.image, cpus = shape.cpus, memory_mb = shape.memory_mb, "memory template not built: {e}")
                }
            }
            templates.built(&shape);
        }
    });
}
