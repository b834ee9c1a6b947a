//! The snapshot RPCs' wire side: requests checked into the service's types
//! (`fluid_proto::model` for ids, names and disk states; sizes and paths are checked by
//! the service), answers built, and a file cut into [`CHUNK`]-byte messages.

use std::pin::Pin;

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
