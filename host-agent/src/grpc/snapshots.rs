//! The snapshot RPCs' wire side: requests checked into the service's types
//! (`fluid_proto::model` for ids, names and disk states; sizes and paths are checked by
//! the service), answers built (a diff and a file's metadata from `fluid_inspect`'s
//! types), and a file cut into [`CHUNK`]-byte messages.

use std::pin::Pin;

use fluid_inspect::{ChangeKind, Kind};
use fluid_proto::model::{DiskState, SandboxId, SnapshotName, SnapshotRef, ValidationError};
use fluid_proto::pb;
use tokio_stream::Stream;
use tonic::Status;

use crate::sandboxes::inspect::{DiffRequest, ReadFileRequest};
use crate::sandboxes::snapshots::{CreateSnapshot, SnapshotView};

/// Bytes per ReadSnapshotFile message.
pub const CHUNK: usize = 256 * 1024;

/// The stream a ReadSnapshotFile returns.
pub type FileStream = Pin<Box<dyn Stream<Item = Result<pb::FileChunk, Status>> + Send>>;

fn missing(field: &'static str) -> Status {
    Status::from(ValidationError::new(field, "is required"))
}

pub fn create_request(r: pb::CreateSnapshotRequest) -> Result<CreateSnapshot, Status> {
    Ok(CreateSnapshot {
        sandbox_id: SandboxId::parse("sandbox_id", &r.sandbox_id)?,
        name: SnapshotName::parse("name", &r.name)?,
        disk_only: r.disk_only,
        ssh_certificate: r.ssh_certificate,
    })
}

pub fn revert_request(r: pb::RevertSnapshotRequest) -> Result<(SnapshotRef, bool), Status> {
    let snapshot = r.snapshot.ok_or_else(|| missing("snapshot"))?;
    Ok((SnapshotRef::try_from(snapshot)?, r.start))
}

fn disk_state(field: &'static str, d: Option<pb::DiskState>) -> Result<DiskState, Status> {
    Ok(DiskState::try_from(d.ok_or_else(|| missing(field))?)?)
}

pub fn diff_request(r: pb::DiffSnapshotsRequest) -> Result<DiffRequest, Status> {
    Ok(DiffRequest {
        from: disk_state("from", r.from)?,
        to: disk_state("to", r.to)?,
        volatile_paths: r.volatile_paths,
        metadata_only_paths: r.metadata_only_paths,
        text_limit_bytes: r.text_limit_bytes,
        ssh_certificate: r.ssh_certificate,
    })
}

pub fn read_request(r: pb::ReadSnapshotFileRequest) -> Result<ReadFileRequest, Status> {
    Ok(ReadFileRequest {
        state: disk_state("state", r.state)?,
        path: r.path,
        max_bytes: r.max_bytes,
        ssh_certificate: r.ssh_certificate,
    })
}

pub fn snapshot_pb(v: SnapshotView) -> pb::SnapshotInfo {
    pb::SnapshotInfo {
        sandbox_id: v.sandbox_id.to_string(),
        name: v.name,
        memory: v.memory,
        vm_state: v.vm_state,
        created_at_unix: v.created_at_unix,
        guest_sync: v.guest_sync,
        active_services: v.active_services,
    }
}

/// The diff as the wire answer.
pub fn diff_pb(d: fluid_inspect::SnapshotDiff) -> pb::SnapshotDiff {
    pb::SnapshotDiff {
        files: d.files.into_iter().map(file_change_pb).collect(),
        packages: d
            .packages
            .into_iter()
            .map(|p| pb::PackageChange {
                name: p.name,
                before_version: p.before_version,
                after_version: p.after_version,
                architecture: p.architecture,
                auto_installed: p.auto_installed,
            })
            .collect(),
        services: d
            .services
            .into_iter()
            .map(|s| pb::ServiceChange {
                name: s.name,
                before_enablement: s.before_enablement,
                after_enablement: s.after_enablement,
                before_active: s.before_active,
                after_active: s.after_active,
                unit_path: s.unit_path,
            })
            .collect(),
        from_entries: d.from_entries,
        to_entries: d.to_entries,
        elapsed_ms: d.elapsed_ms,
    }
}

fn file_change_pb(c: fluid_inspect::FileChange) -> pb::FileChange {
    pb::FileChange {
        path: c.path,
        change: match c.change {
            ChangeKind::Added => pb::ChangeKind::Added,
            ChangeKind::Removed => pb::ChangeKind::Removed,
            ChangeKind::Modified => pb::ChangeKind::Modified,
        } as i32,
        before: c.before.map(file_meta_pb),
        after: c.after.map(file_meta_pb),
        text: c.text,
        before_text: c.before_text,
        after_text: c.after_text,
        package: c.package,
        conffile_modified: c.conffile_modified,
    }
}

/// A file's metadata as the wire carries it.
pub fn file_meta_pb(m: fluid_inspect::FileMeta) -> pb::FileMeta {
    pb::FileMeta {
        kind: match m.kind {
            Kind::Regular => pb::FileKind::Regular,
            Kind::Directory => pb::FileKind::Directory,
            Kind::Symlink => pb::FileKind::Symlink,
            Kind::Other => pb::FileKind::Other,
        } as i32,
        mode: m.mode,
        uid: m.uid,
        gid: m.gid,
        owner: m.owner,
        group: m.group,
        size: m.size,
        sha256: m.sha256,
        link_target: m.link_target,
    }
}

/// The file as messages: the first carries `meta` (and is sent for an empty file too).
pub fn chunks(meta: pb::FileMeta, data: Vec<u8>) -> FileStream {
    let mut out = Vec::with_capacity(data.len() / CHUNK + 1);
    let mut meta = Some(meta);
    let mut pieces = data.chunks(CHUNK).peekable();
    if pieces.peek().is_none() {
        out.push(Ok(pb::FileChunk {
            meta: meta.take(),
            data: Vec::new(),
        }));
    }
    for piece in pieces {
        out.push(Ok(pb::FileChunk {
            meta: meta.take(),
            data: piece.to_vec(),
        }));
    }
    Box::pin(tokio_stream::iter(out))
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt as _;

    use super::*;

    #[tokio::test]
    async fn files_go_in_chunks_with_the_meta_first() {
        let meta = pb::FileMeta {
            size: 600 * 1024,
            ..Default::default()
        };
        let data: Vec<u8> = (0..600 * 1024).map(|i| (i % 251) as u8).collect();
        let got: Vec<pb::FileChunk> = chunks(meta.clone(), data.clone())
            .map(|c| c.expect("chunk"))
            .collect()
            .await;
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].meta, Some(meta.clone()));
        assert!(got[1..].iter().all(|c| c.meta.is_none()));
        assert_eq!(got[0].data.len(), CHUNK);
        let joined: Vec<u8> = got.into_iter().flat_map(|c| c.data).collect();
        assert_eq!(joined, data);
        let empty: Vec<pb::FileChunk> = chunks(meta.clone(), Vec::new())
            .map(|c| c.expect("chunk"))
            .collect()
            .await;
        assert_eq!(empty.len(), 1);
        assert_eq!(empty[0].meta, Some(meta));
    }

    #[test]
    fn diffs_map_to_the_wire() {
        let meta = |kind| fluid_inspect::FileMeta {
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            owner: "root".into(),
            group: "root".into(),
            size: 2,
            sha256: "ab".into(),
            link_target: String::new(),
        };
        let change = |path: &str, change, before, after| fluid_inspect::FileChange {
            path: path.into(),
            change,
            before,
            after,
            text: false,
            before_text: String::new(),
            after_text: String::new(),
            package: "base-files".into(),
            conffile_modified: true,
        };
        let d = diff_pb(fluid_inspect::SnapshotDiff {
            files: vec![
                change("/a", ChangeKind::Added, None, Some(meta(Kind::Regular))),
                change("/d", ChangeKind::Removed, Some(meta(Kind::Directory)), None),
                change(
                    "/l",
                    ChangeKind::Modified,
                    Some(meta(Kind::Symlink)),
                    Some(meta(Kind::Other)),
                ),
            ],
            packages: vec![fluid_inspect::PackageChange {
                name: "nginx".into(),
                before_version: String::new(),
                after_version: "1.22".into(),
                architecture: "amd64".into(),
                auto_installed: false,
            }],
            services: vec![fluid_inspect::ServiceChange {
                name: "nginx.service".into(),
                before_enablement: "absent".into(),
                after_enablement: "enabled".into(),
                before_active: String::new(),
                after_active: "active".into(),
                unit_path: "/usr/lib/systemd/system/nginx.service".into(),
            }],
            from_entries: 10,
            to_entries: 11,
            elapsed_ms: 5,
        });
        let kinds: Vec<_> = d.files.iter().map(|f| f.change()).collect();
        assert_eq!(
            kinds,
            [
                pb::ChangeKind::Added,
                pb::ChangeKind::Removed,
                pb::ChangeKind::Modified
            ]
        );
        let file_kinds: Vec<_> = d
            .files
            .iter()
            .flat_map(|f| [&f.before, &f.after])
            .flatten()
            .map(|m| m.kind())
            .collect();
        assert_eq!(
            file_kinds,
            [
                pb::FileKind::Regular,
                pb::FileKind::Directory,
                pb::FileKind::Symlink,
                pb::FileKind::Other
            ]
        );
        assert_eq!(
            d.files[0]
                .after
                .as_ref()
                .map(|m| (m.mode, m.owner.as_str(), m.sha256.as_str())),
            Some((0o644, "root", "ab"))
        );
        assert!(d.files[0].conffile_modified && d.files[0].package == "base-files");
        assert_eq!(d.packages[0].after_version, "1.22");
        assert_eq!(d.services[0].after_active, "active");
        assert_eq!((d.from_entries, d.to_entries, d.elapsed_ms), (10, 11, 5));
    }

    #[test]
    fn requests_are_checked() {
        let e = create_request(pb::CreateSnapshotRequest {
            sandbox_id: "SBX-0123abcd".into(),
            name: "../x".into(),
            ..Default::default()
        })
        .expect_err("bad name");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let e = revert_request(pb::RevertSnapshotRequest::default()).expect_err("no ref");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("snapshot"), "{}", e.message());
        let e = diff_request(pb::DiffSnapshotsRequest {
            from: Some(pb::DiskState {
                sandbox_id: "SBX-0123abcd".into(),
                snapshot: String::new(),
            }),
            ..Default::default()
        })
        .expect_err("no to");
        assert!(e.message().contains("to"), "{}", e.message());
        let d = diff_request(pb::DiffSnapshotsRequest {
            from: Some(pb::DiskState {
                sandbox_id: "SBX-0123abcd".into(),
                snapshot: "a".into(),
            }),
            to: Some(pb::DiskState {
                sandbox_id: "SBX-0123abcd".into(),
                snapshot: String::new(),
            }),
            ..Default::default()
        })
        .expect("valid");
        assert_eq!(d.to.snapshot, None);
        let e = read_request(pb::ReadSnapshotFileRequest {
            state: Some(pb::DiskState {
                sandbox_id: "nope".into(),
                snapshot: String::new(),
            }),
            ..Default::default()
        })
        .expect_err("bad id");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }
}
