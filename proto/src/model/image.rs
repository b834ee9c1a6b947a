//! Images a sandbox's disk is cloned from, as `ListImages` reports them.

use crate::pb;

/// What an image is on its host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    /// A golden qcow2 image.
    Qcow2,
    /// An existing shut-off domain ("source VM").
    SourceVm,
}

/// One image or source VM an agent can clone from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub name: String,
    pub kind: ImageKind,
    pub disk_path: String,
    /// A source VM's domain UUID (empty for a qcow2 image).
    pub uuid: String,
    /// A source VM's domain state (empty for a qcow2 image).
    pub state: String,
    pub persistent: bool,
    /// Whether a sandbox can be cloned from it now.
    pub available: bool,
    /// Why it is not available.
    pub error: Option<String>,
}

impl From<pb::Image> for ImageInfo {
    /// An unknown kind is a qcow2 image.
    fn from(i: pb::Image) -> Self {
        Self {
            kind: match i.kind() {
                pb::ImageKind::SourceVm => ImageKind::SourceVm,
                _ => ImageKind::Qcow2,
            },
            name: i.name,
            disk_path: i.disk_path,
            uuid: i.uuid,
            state: i.state,
            persistent: i.persistent,
            available: i.available,
            error: (!i.error.is_empty()).then_some(i.error),
        }
    }
}

impl From<ImageInfo> for pb::Image {
    fn from(i: ImageInfo) -> Self {
        Self {
            name: i.name,
            kind: match i.kind {
                ImageKind::Qcow2 => pb::ImageKind::Qcow2,
                ImageKind::SourceVm => pb::ImageKind::SourceVm,
            } as i32,
            disk_path: i.disk_path,
            uuid: i.uuid,
            state: i.state,
            persistent: i.persistent,
            available: i.available,
            error: i.error.unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_cross_the_wire_and_back() {
        let source = ImageInfo {
            name: "web-template".into(),
            kind: ImageKind::SourceVm,
            disk_path: "/var/lib/libvirt/images/web.qcow2".into(),
            uuid: "4b2f".into(),
            state: "running".into(),
            persistent: true,
            available: false,
            error: Some("the source domain must be shut off to be cloned".into()),
        };
        let golden = ImageInfo {
            name: "debian-12".into(),
            kind: ImageKind::Qcow2,
            disk_path: "/var/lib/fluid/images/debian-12.qcow2".into(),
            uuid: String::new(),
            state: String::new(),
            persistent: true,
            available: true,
            error: None,
        };
        for i in [source, golden] {
            assert_eq!(ImageInfo::from(pb::Image::from(i.clone())), i);
        }
        let unknown = pb::Image {
            kind: 99,
            ..Default::default()
        };
        assert_eq!(ImageInfo::from(unknown).kind, ImageKind::Qcow2);
    }
}
