//! The agent calls of snapshots, out-of-band reads of disk states (diff, one file) and
//! the TCP tunnel to a sandbox's SSH port: [`SnapshotAgent`], a supertrait of
//! [`AgentConnector`](super::AgentConnector) (so every connector has them and they are
//! callable on an `Arc<dyn AgentConnector>`), implemented here for [`GrpcAgents`].
//! Replies are validated on receipt like the rest of [`super`].

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use fluid_proto::model::{DiskState, SandboxId, SandboxInfo, SnapshotName, SnapshotRef};
use fluid_proto::pb;
use futures::StreamExt as _;
use futures::stream::BoxStream;
use tonic::Code;

use super::{AgentError, AgentTarget, GrpcAgents, ReceiverStream, sandbox_reply, status_error};

/// Deadline of a diff (the agent reads two disk images whole) and of reading one file.
pub const DIFF_TIMEOUT: Duration = Duration::from_secs(600);
/// Largest file [`SnapshotAgent::read_snapshot_file`] collects (the agent's default).
pub const READ_FILE_MAX: u64 = 64 * 1024 * 1024;

/// A snapshot as its agent reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSnapshot {
    pub name: SnapshotName,
    /// Memory state included (taken while running).
    pub memory: bool,
    /// `running` or `shutoff` when taken.
    pub vm_state: String,
    /// The agent's clock.
    pub created_at: DateTime<Utc>,
    /// `ok`, `skipped: not running` or `failed: <why>` (the in-guest `sync`).
    pub guest_sync: String,
    /// Services the guest reported active (informative: reported by the guest).
    pub active_services: Vec<String>,
}

impl AgentSnapshot {
    fn from_reply(host: &str, id: &SandboxId, s: pb::SnapshotInfo) -> Result<Self, AgentError> {
        if !s.sandbox_id.is_empty() && s.sandbox_id != id.as_str() {
            return Err(AgentError::bad_reply(
                host,
                format!("snapshot of {} when {id} was asked", s.sandbox_id),
            ));
        }
        let name =
            SnapshotName::parse("name", &s.name).map_err(|e| AgentError::bad_reply(host, e))?;
        let created_at = DateTime::from_timestamp(s.created_at_unix, 0).ok_or_else(|| {
            AgentError::bad_reply(host, format!("created_at_unix {}", s.created_at_unix))
        })?;
        Ok(Self {
            name,
            memory: s.memory,
            vm_state: s.vm_state,
            created_at,
            guest_sync: s.guest_sync,
            active_services: s.active_services,
        })
    }
}

/// What is written into a tunnel (after its `open`); ending it closes the connection's
/// write side.
pub type TunnelInputStream = BoxStream<'static, Vec<u8>>;
/// What comes back through a tunnel, as it comes.
pub type TunnelStream = BoxStream<'static, Result<Vec<u8>, AgentError>>;

#[async_trait]
pub trait SnapshotAgent: Send + Sync + 'static {
    /// Takes an internal snapshot named `name` (idempotent by name: an existing one is
    /// returned as it is). `disk_only` on a running sandbox is refused by the agent.
    /// `ssh_certificate` (for the agent's exec key; empty: none) lets the agent connect
    /// to a running guest to `sync` first.
    async fn create_snapshot(
        &self,
        t: &AgentTarget,
        id: &SandboxId,
        name: &SnapshotName,
        disk_only: bool,
        ssh_certificate: &str,
    ) -> Result<AgentSnapshot, AgentError>;
    async fn list_snapshots(
        &self,
        t: &AgentTarget,
        id: &SandboxId,
    ) -> Result<Vec<AgentSnapshot>, AgentError>;
    /// Reverts disk (and memory, when the snapshot has it). A disk-only snapshot leaves
    /// the sandbox stopped, or boots it when `start`. Answers the sandbox as it is now.
    async fn revert_snapshot(
        &self,
        t: &AgentTarget,
        snapshot: &SnapshotRef,
        start: bool,
    ) -> Result<SandboxInfo, AgentError>;
    /// `Ok(existed)`; deleting an unknown snapshot succeeds.
    async fn delete_snapshot(
        &self,
        t: &AgentTarget,
        snapshot: &SnapshotRef,
    ) -> Result<bool, AgentError>;
    /// Compares two disk states on the agent's host, read out-of-band from the images
    /// (deadline [`DIFF_TIMEOUT`]).
    async fn diff_snapshots(
        &self,
        t: &AgentTarget,
        req: pb::DiffSnapshotsRequest,
    ) -> Result<pb::SnapshotDiff, AgentError>;
    /// One file of a disk state, whole: its metadata and content. A file larger than
    /// `max_bytes` (0: [`READ_FILE_MAX`]) is [`AgentError::Refused`].
    /// `ssh_certificate` as for [`Self::create_snapshot`] (a running sandbox's "now").
    async fn read_snapshot_file(
        &self,
        t: &AgentTarget,
        state: &DiskState,
        path: &str,
        max_bytes: u64,
        ssh_certificate: &str,
    ) -> Result<(pb::FileMeta, Vec<u8>), AgentError>;
    /// A byte stream to the sandbox's TCP port `open.port` (only 22): `input` is
    /// written to it, the answer carries what it sends back. The deadline covers the
    /// opening only.
    async fn tunnel(
        &self,
        t: &AgentTarget,
        open: pb::TunnelOpen,
        input: TunnelInputStream,
    ) -> Result<TunnelStream, AgentError>;
}

/// The cap a read applies.
pub fn read_cap(max_bytes: u64) -> u64 {
    if max_bytes == 0 {
        READ_FILE_MAX
    } else {
        max_bytes.min(READ_FILE_MAX)
    }
}

/// The error of a file read: the agent's OUT_OF_RANGE (too large) is a refusal.
fn read_error(t: &AgentTarget, deadline: Duration, s: &tonic::Status) -> AgentError {
    if s.code() == Code::OutOfRange {
        return AgentError::Refused {
            host: t.name.clone(),
            message: s.message().to_owned(),
        };
    }
    status_error(t, deadline, s)
}

fn too_large(t: &AgentTarget, path: &str, cap: u64) -> AgentError {
    AgentError::Refused {
        host: t.name.clone(),
        message: format!("{path} is larger than {cap} bytes"),
    }
}

/// Reads a file's chunks to the end: the metadata of the first, the bytes of all, at
/// most `cap` of them.
pub(crate) async fn collect_file(
    t: &AgentTarget,
    path: &str,
    cap: u64,
    mut chunks: BoxStream<'static, Result<pb::FileChunk, tonic::Status>>,
) -> Result<(pb::FileMeta, Vec<u8>), AgentError> {
    let mut meta = None;
    let mut data = Vec::new();
    while let Some(c) = chunks.next().await {
        let c = c.map_err(|s| read_error(t, DIFF_TIMEOUT, &s))?;
        if meta.is_none() {
            let m = c
                .meta
                .ok_or_else(|| AgentError::bad_reply(&t.name, "the first chunk has no metadata"))?;
            if m.size > cap {
                return Err(too_large(t, path, cap));
            }
            meta = Some(m);
        }
        if (data.len() as u64).saturating_add(c.data.len() as u64) > cap {
            return Err(too_large(t, path, cap));
        }
        data.extend_from_slice(&c.data);
    }
    let meta = meta.ok_or_else(|| AgentError::bad_reply(&t.name, "no chunk at all"))?;
    Ok((meta, data))
}

#[async_trait]
impl SnapshotAgent for GrpcAgents {
    async fn create_snapshot(
        &self,
        t: &AgentTarget,
        id: &SandboxId,
        name: &SnapshotName,
        disk_only: bool,
        ssh_certificate: &str,
    ) -> Result<AgentSnapshot, AgentError> {
        let msg = pb::CreateSnapshotRequest {
            sandbox_id: id.to_string(),
            name: name.to_string(),
            disk_only,
            ssh_certificate: ssh_certificate.to_owned(),
        };
        // Saving a running VM's memory takes about as long as booting one.
        let s = self
            .call(t, self.timeouts.create, |mut c| async move {
                c.create_snapshot(msg).await
            })
            .await?;
        AgentSnapshot::from_reply(&t.name, id, s)
    }

    async fn list_snapshots(
        &self,
        t: &AgentTarget,
        id: &SandboxId,
    ) -> Result<Vec<AgentSnapshot>, AgentError> {
        let msg = pb::SandboxRef { id: id.to_string() };
        let r = self
            .call(t, self.timeouts.call, |mut c| async move {
                c.list_snapshots(msg).await
            })
            .await?;
        r.snapshots
            .into_iter()
            .map(|s| AgentSnapshot::from_reply(&t.name, id, s))
            .collect()
    }

    async fn revert_snapshot(
        &self,
        t: &AgentTarget,
        snapshot: &SnapshotRef,
        start: bool,
    ) -> Result<SandboxInfo, AgentError> {
        let msg = pb::RevertSnapshotRequest {
            snapshot: Some(pb::SnapshotRef::from(snapshot)),
            start,
        };
        let s = self
            .call(t, self.timeouts.create, |mut c| async move {
                c.revert_snapshot(msg).await
            })
            .await?;
        sandbox_reply(&t.name, s)
    }

    async fn delete_snapshot(
        &self,
        t: &AgentTarget,
        snapshot: &SnapshotRef,
    ) -> Result<bool, AgentError> {
        let msg = pb::SnapshotRef::from(snapshot);
        let r = self
            .call(t, self.timeouts.create, |mut c| async move {
                c.delete_snapshot(msg).await
            })
            .await?;
        Ok(r.existed)
    }

    async fn diff_snapshots(
        &self,
        t: &AgentTarget,
        req: pb::DiffSnapshotsRequest,
    ) -> Result<pb::SnapshotDiff, AgentError> {
        self.call(t, DIFF_TIMEOUT, |mut c| async move {
            c.diff_snapshots(req).await
        })
        .await
    }

    async fn read_snapshot_file(
        &self,
        t: &AgentTarget,
        state: &DiskState,
        path: &str,
        max_bytes: u64,
        ssh_certificate: &str,
    ) -> Result<(pb::FileMeta, Vec<u8>), AgentError> {
        let cap = read_cap(max_bytes);
        let msg = pb::ReadSnapshotFileRequest {
            state: Some(pb::DiskState::from(state)),
            path: path.to_owned(),
            max_bytes: cap,
            ssh_certificate: ssh_certificate.to_owned(),
        };
        let mut client = self.client(t)?;
        let read = async move {
            let stream = client
                .read_snapshot_file(msg)
                .await
                .map_err(|s| read_error(t, DIFF_TIMEOUT, &s))?
                .into_inner();
            collect_file(t, path, cap, stream.boxed()).await
        };
        tokio::time::timeout(DIFF_TIMEOUT, read)
            .await
            .map_err(|_| AgentError::Timeout {
                host: t.name.clone(),
                seconds: DIFF_TIMEOUT.as_secs(),
            })?
    }

    async fn tunnel(
        &self,
        t: &AgentTarget,
        open: pb::TunnelOpen,
        input: TunnelInputStream,
    ) -> Result<TunnelStream, AgentError> {
        use pb::tunnel_input::Kind;
        let first = pb::TunnelInput {
            kind: Some(Kind::Open(open)),
        };
        // A concrete stream type for tonic, fed by a task (as for Attach).
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut input = input;
            if tx.send(first).await.is_err() {
                return;
            }
            while let Some(data) = input.next().await {
                let msg = pb::TunnelInput {
                    kind: Some(Kind::Data(data)),
                };
                if tx.send(msg).await.is_err() {
                    return;
                }
            }
        });
        let deadline = self.timeouts.call;
        let mut client = self.client(t)?;
        let stream = match tokio::time::timeout(deadline, client.tunnel(ReceiverStream(rx))).await {
            Ok(Ok(resp)) => resp.into_inner(),
            Ok(Err(status)) => return Err(status_error(t, deadline, &status)),
            Err(_) => {
                return Err(AgentError::Timeout {
                    host: t.name.clone(),
                    seconds: deadline.as_secs(),
                });
            }
        };
        let host = t.name.clone();
        Ok(stream
            .map(move |item| match item {
                Ok(out) => Ok(out.data),
                Err(s) => Err(AgentError::from_status(&host, &s)),
            })
            .boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> AgentTarget {
        AgentTarget {
            name: "h".into(),
            address: "h:1".into(),
        }
    }

    fn chunk(meta: Option<u64>, data: &[u8]) -> Result<pb::FileChunk, tonic::Status> {
        Ok(pb::FileChunk {
            meta: meta.map(|size| pb::FileMeta {
                size,
                ..Default::default()
            }),
            data: data.to_vec(),
        })
    }

    #[tokio::test]
    async fn files_are_collected_within_their_cap() {
        let t = target();
        let s = futures::stream::iter(vec![chunk(Some(5), b"ab"), chunk(None, b"cde")]).boxed();
        let (m, d) = collect_file(&t, "/x", 10, s).await.expect("read");
        assert_eq!((m.size, d), (5, b"abcde".to_vec()));
        // Announced too large, or larger than announced: refused.
        let s = futures::stream::iter(vec![chunk(Some(50), b"ab")]).boxed();
        let e = collect_file(&t, "/x", 10, s).await.expect_err("too large");
        assert!(matches!(e, AgentError::Refused { .. }), "{e}");
        let s =
            futures::stream::iter(vec![chunk(Some(1), b"abcdef"), chunk(None, b"ghijkl")]).boxed();
        let e = collect_file(&t, "/x", 10, s).await.expect_err("too large");
        assert!(e.to_string().contains("larger than 10 bytes"), "{e}");
        // No metadata, or nothing at all: a bad reply.
        let s = futures::stream::iter(vec![chunk(None, b"ab")]).boxed();
        assert!(matches!(
            collect_file(&t, "/x", 10, s).await,
            Err(AgentError::Failed { .. })
        ));
        let s = futures::stream::iter(Vec::new()).boxed();
        assert!(matches!(
            collect_file(&t, "/x", 10, s).await,
            Err(AgentError::Failed { .. })
        ));
        // The agent's OUT_OF_RANGE is a refusal.
        let s = futures::stream::iter(vec![Err(tonic::Status::out_of_range("too big"))]).boxed();
        assert!(matches!(
            collect_file(&t, "/x", 10, s).await,
            Err(AgentError::Refused { .. })
        ));
        assert_eq!(read_cap(0), READ_FILE_MAX);
        assert_eq!(read_cap(u64::MAX), READ_FILE_MAX);
        assert_eq!(read_cap(7), 7);
    }

    #[test]
    fn snapshot_replies_are_validated() {
        let id = SandboxId::parse("id", "SBX-abcdefgh").expect("id");
        let ok = pb::SnapshotInfo {
            sandbox_id: "SBX-abcdefgh".into(),
            name: "before".into(),
            memory: true,
            vm_state: "running".into(),
            created_at_unix: 1_700_000_000,
            guest_sync: "ok".into(),
            active_services: vec!["ssh.service".into()],
        };
        let s = AgentSnapshot::from_reply("h", &id, ok.clone()).expect("valid");
        assert_eq!(s.name.as_str(), "before");
        assert_eq!(s.created_at.timestamp(), 1_700_000_000);
        let mut bad = ok.clone();
        bad.name = "../x".into();
        assert!(AgentSnapshot::from_reply("h", &id, bad).is_err());
        let mut other = ok;
        other.sandbox_id = "SBX-otherxyz".into();
        assert!(AgentSnapshot::from_reply("h", &id, other).is_err());
    }
}
