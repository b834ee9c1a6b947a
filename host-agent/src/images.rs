//! Images a sandbox's disk is cloned from: what each configured image resolves to
//! (backing file, its format, how the guest boots), and the inventory the controller
//! sees in `ListImages` (`fluid_proto::model::ImageInfo`).

use std::path::PathBuf;

use fluid_proto::model::{ImageInfo, ImageKind};

use crate::config::ImageConfig;
use crate::error::ServiceError;
use crate::hypervisor::{Boot, DomainState, Hypervisor, HypervisorError};

/// A configured image, resolved for one create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedImage {
    pub backing: PathBuf,
    pub backing_format: String,
    pub boot: Boot,
}

/// Resolves `image` now (a source domain is looked up, and must be shut off).
pub async fn resolve<H: Hypervisor>(
    hv: &H,
    image: &ImageConfig,
) -> Result<ResolvedImage, ServiceError> {
    match image {
        ImageConfig::Qcow2 {
            name,
            path,
            kernel,
            initrd,
            cmdline,
        } => {
            if !tokio::fs::try_exists(path).await.unwrap_or(false) {
                return Err(ServiceError::FailedPrecondition(format!(
                    "image {name}: disk {} is missing on this host",
                    path.display()
                )));
            }
            let boot = match kernel {
                Some(kernel) => Boot::Kernel {
                    kernel: kernel.clone(),
                    initrd: initrd.clone(),
                    cmdline: cmdline.clone(),
                },
                None => Boot::Disk,
            };
            Ok(ResolvedImage {
                backing: path.clone(),
                backing_format: "qcow2".into(),
                boot,
            })
        }
        ImageConfig::SourceDomain {
            name,
            source_domain,
        } => {
            let src = hv.source_domain(source_domain).await.map_err(|e| match e {
                HypervisorError::NotFound(_) => ServiceError::FailedPrecondition(format!(
                    "image {name}: source domain {source_domain} does not exist"
                )),
                other => other.into(),
            })?;
            if src.state != DomainState::ShutOff {
                return Err(ServiceError::FailedPrecondition(format!(
                    "image {name}: source domain {source_domain} is running; shut it down before cloning it"
                )));
            }
            Ok(ResolvedImage {
                backing: src.disk_path,
                backing_format: src.disk_format,
                boot: src.boot,
            })
        }
    }
}

fn state_name(s: &DomainState) -> String {
    match s {
        DomainState::Running => "running".into(),
        DomainState::ShutOff => "shut off".into(),
        DomainState::Paused => "paused".into(),
        DomainState::Crashed => "crashed".into(),
        DomainState::Other(o) => o.clone(),
    }
}

/// Describes every configured image, checking that its disk (or domain) is there.
pub async fn list<H: Hypervisor>(
    hv: &H,
    images: &[ImageConfig],
) -> Result<Vec<ImageInfo>, ServiceError> {
    let mut out = Vec::with_capacity(images.len());
    for image in images {
        let info = match image {
            ImageConfig::Qcow2 { name, path, .. } => {
                let available = tokio::fs::try_exists(path).await.unwrap_or(false);
                ImageInfo {
                    name: name.to_string(),
                    kind: ImageKind::Qcow2,
                    disk_path: path.display().to_string(),
                    uuid: String::new(),
                    state: String::new(),
                    persistent: true,
                    available,
                    error: (!available).then(|| format!("{} is missing", path.display())),
                }
            }
            ImageConfig::SourceDomain {
                name,
                source_domain,
            } => match hv.source_domain(source_domain).await {
                Ok(src) => ImageInfo {
                    name: name.to_string(),
                    kind: ImageKind::SourceVm,
                    disk_path: src.disk_path.display().to_string(),
                    uuid: src.uuid,
                    state: state_name(&src.state),
                    persistent: src.persistent,
                    available: src.state == DomainState::ShutOff,
                    error: (src.state != DomainState::ShutOff)
                        .then(|| "the source domain must be shut off to be cloned".into()),
                },
                Err(HypervisorError::Unavailable(m)) => {
                    return Err(ServiceError::Unavailable(format!("libvirt: {m}")));
                }
                Err(e) => ImageInfo {
                    name: name.to_string(),
                    kind: ImageKind::SourceVm,
                    disk_path: String::new(),
                    uuid: String::new(),
                    state: String::new(),
                    persistent: false,
                    available: false,
                    error: Some(format!("source domain {source_domain}: {e}")),
                },
            },
        };
        out.push(info);
    }
    Ok(out)
}
