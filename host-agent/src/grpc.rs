//! The `fluid.agent.v1.HostAgent` gRPC service. Thin handlers: validate the request
//! with `fluid_proto::model`, call the sandbox service, map errors to a status at the
//! boundary. Authorisation (the controller's client certificate) is the interceptor's.
//! Attach's message sequencing lives in [`attach`], Tunnel's in [`tunnel`], and the
//! snapshot RPCs' request and answer conversions in [`snapshots`].

use std::sync::Arc;

use std::pin::Pin;

use fluid_proto::model::{
    CreateSandbox, Exec, ExecEvent, SandboxId, SetEgressPolicy, SnapshotRef, StopSandbox, WaitForIp,
};
use fluid_proto::pb;
use fluid_proto::pb::host_agent_server::HostAgent;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status};

use crate::metrics::{Op, metrics};

pub mod attach;
pub mod snapshots;
pub mod tunnel;

use crate::hypervisor::Hypervisor;
use crate::sandboxes::{SandboxView, Sandboxes};

/// The gRPC face of [`Sandboxes`].
pub struct AgentService<H> {
    sandboxes: Arc<Sandboxes<H>>,
}

impl<H> std::fmt::Debug for AgentService<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentService")
    }
}

impl<H> AgentService<H> {
    pub fn new(sandboxes: Arc<Sandboxes<H>>) -> Self {
        Self { sandboxes }
    }
}

fn sandbox_pb(v: SandboxView) -> pb::Sandbox {
    let r = v.record;
    pb::Sandbox {
        id: r.id.to_string(),
        name: r.name.to_string(),
        image: r.image.to_string(),
        cpus: r.cpus,
        memory_mb: r.memory_mb,
        state: pb::SandboxState::from(v.state) as i32,
        mac_address: r.mac,
        ip_address: v.ip.map(|ip| ip.to_string()).unwrap_or_default(),
        domain_uuid: r.domain_uuid,
        overlay_path: r.overlay_path.display().to_string(),
        network: r.network.to_string(),
        created_at_unix: r.created_at_unix,
        error: v.error.unwrap_or_default(),
        start_path: r.start_path.unwrap_or_default(),
    }
}

/// The stream an Exec returns.
pub type ExecStream = Pin<Box<dyn Stream<Item = Result<pb::ExecEvent, Status>> + Send>>;

/// Runs a sandbox operation, counted and timed as `op` in the metrics.
async fn timed<T>(
    op: Op,
    fut: impl std::future::Future<Output = Result<T, crate::error::ServiceError>>,
) -> Result<T, crate::error::ServiceError> {
    let started = std::time::Instant::now();
    let r = fut.await;
    metrics().op(op, r.is_ok(), started.elapsed());
    r
}

/// Logs a failed call where it is handled (here), then returns it.
fn fail(op: &'static str, e: crate::error::ServiceError) -> Status {
    let status = Status::from(e);
    match status.code() {
        tonic::Code::Internal | tonic::Code::Unavailable => {
            tracing::error!(op, code = ?status.code(), "{}", status.message());
        }
        _ => tracing::info!(op, code = ?status.code(), "{}", status.message()),
    }
    status
}

#[tonic::async_trait]
impl<H: Hypervisor> HostAgent for AgentService<H> {
    type ExecStream = ExecStream;
    type AttachStream = attach::AttachStream;
    type ReadSnapshotFileStream = snapshots::FileStream;
    type TunnelStream = tunnel::TunnelStream;

    async fn attach(
        &self,
        req: Request<tonic::Streaming<pb::AttachInput>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let mut input = req.into_inner();
        let open = attach::first_open(&mut input).await.inspect_err(|s| {
            tracing::info!(op = "attach", code = ?s.code(), "{}", s.message());
        })?;
        let shell = self
            .sandboxes
            .attach(open)
            .await
            .map_err(|e| fail("attach", e))?;
        Ok(Response::new(attach::session_stream(input, shell)))
    }

    async fn exec(
        &self,
        req: Request<pb::ExecRequest>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        let exec = Exec::try_from(req.into_inner())?;
        let started = std::time::Instant::now();
        let rx = self.sandboxes.exec(exec).await.map_err(|e| {
            metrics().op(Op::Exec, false, started.elapsed());
            fail("exec", e)
        })?;
        // The command is timed to its exit.
        let stream = ReceiverStream::new(rx).map(move |e| {
            if let ExecEvent::Exit(x) = &e {
                metrics().op(Op::Exec, x.error.is_none(), started.elapsed());
            }
            Ok(pb::ExecEvent::from(e))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_status(
        &self,
        _req: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::HostStatus>, Status> {
        let c = self
            .sandboxes
            .capacity()
            .await
            .map_err(|e| fail("get_status", e))?;
        let config = self.sandboxes.config();
        Ok(Response::new(pb::HostStatus {
            host_name: config.host_name.to_string(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            virt_type: config.virt_type.to_string(),
            cpus_total: c.cpus_total,
            cpus_reserved: c.cpus_reserved,
            memory_mb_total: c.memory_mb_total,
            memory_mb_reserved: c.memory_mb_reserved,
            memory_mb_free: c.memory_mb_free,
            sandboxes: c.sandboxes,
            images: c.images,
            ssh_public_key: self.sandboxes.ssh_public_key().to_owned(),
            pools: self
                .sandboxes
                .pool_stats()
                .into_iter()
                .map(pb::PoolStatus::from)
                .collect(),
            simulated: config.simulated.is_some(),
        }))
    }

    async fn list_images(
        &self,
        _req: Request<pb::ListImagesRequest>,
    ) -> Result<Response<pb::ListImagesResponse>, Status> {
        let images = self
            .sandboxes
            .images()
            .await
            .map_err(|e| fail("list_images", e))?;
        Ok(Response::new(pb::ListImagesResponse {
            images: images.into_iter().map(pb::Image::from).collect(),
        }))
    }

    async fn list_sandboxes(
        &self,
        _req: Request<pb::ListSandboxesRequest>,
    ) -> Result<Response<pb::ListSandboxesResponse>, Status> {
        let list = self
            .sandboxes
            .list()
            .await
            .map_err(|e| fail("list_sandboxes", e))?;
        Ok(Response::new(pb::ListSandboxesResponse {
            sandboxes: list.into_iter().map(sandbox_pb).collect(),
        }))
    }

    async fn get_sandbox(
        &self,
        req: Request<pb::SandboxRef>,
    ) -> Result<Response<pb::Sandbox>, Status> {
        let id = SandboxId::try_from(req.into_inner())?;
        let v = self
            .sandboxes
            .get(&id)
            .await
            .map_err(|e| fail("get_sandbox", e))?;
        Ok(Response::new(sandbox_pb(v)))
    }

    async fn create_sandbox(
        &self,
        req: Request<pb::CreateSandboxRequest>,
    ) -> Result<Response<pb::Sandbox>, Status> {
        let create = CreateSandbox::try_from(req.into_inner())?;
        let v = timed(Op::Create, self.sandboxes.create(create))
            .await
            .map_err(|e| fail("create_sandbox", e))?;
        Ok(Response::new(sandbox_pb(v)))
    }

    async fn start_sandbox(
        &self,
        req: Request<pb::SandboxRef>,
    ) -> Result<Response<pb::Sandbox>, Status> {
        let id = SandboxId::try_from(req.into_inner())?;
        let v = timed(Op::Start, self.sandboxes.start(&id))
            .await
            .map_err(|e| fail("start_sandbox", e))?;
        Ok(Response::new(sandbox_pb(v)))
    }

    async fn stop_sandbox(
        &self,
        req: Request<pb::StopSandboxRequest>,
    ) -> Result<Response<pb::Sandbox>, Status> {
        let stop = StopSandbox::try_from(req.into_inner())?;
        let v = timed(Op::Stop, self.sandboxes.stop(stop))
            .await
            .map_err(|e| fail("stop_sandbox", e))?;
        Ok(Response::new(sandbox_pb(v)))
    }

    async fn destroy_sandbox(
        &self,
        req: Request<pb::SandboxRef>,
    ) -> Result<Response<pb::DestroySandboxResponse>, Status> {
        let id = SandboxId::try_from(req.into_inner())?;
        let existed = timed(Op::Destroy, self.sandboxes.destroy(&id))
            .await
            .map_err(|e| fail("destroy_sandbox", e))?;
        Ok(Response::new(pb::DestroySandboxResponse { existed }))
    }

    async fn set_egress_policy(
        &self,
        req: Request<pb::SetEgressPolicyRequest>,
    ) -> Result<Response<pb::EgressPolicyState>, Status> {
        let set = SetEgressPolicy::try_from(req.into_inner())?;
        let id = set.sandbox_id.clone();
        let state = self
            .sandboxes
            .set_egress_policy(set)
            .await
            .map_err(|e| fail("set_egress_policy", e))?;
        Ok(Response::new(state.into_pb(&id)))
    }

    async fn get_egress_policy(
        &self,
        req: Request<pb::SandboxRef>,
    ) -> Result<Response<pb::EgressPolicyState>, Status> {
        let id = SandboxId::try_from(req.into_inner())?;
        let state = self
            .sandboxes
            .egress_policy(&id)
            .await
            .map_err(|e| fail("get_egress_policy", e))?;
        Ok(Response::new(state.into_pb(&id)))
    }

    async fn create_snapshot(
        &self,
        req: Request<pb::CreateSnapshotRequest>,
    ) -> Result<Response<pb::SnapshotInfo>, Status> {
        let create = snapshots::create_request(req.into_inner())?;
        let v = timed(Op::Snapshot, self.sandboxes.create_snapshot(create))
            .await
            .map_err(|e| fail("create_snapshot", e))?;
        Ok(Response::new(snapshots::snapshot_pb(v)))
    }

    async fn list_snapshots(
        &self,
        req: Request<pb::SandboxRef>,
    ) -> Result<Response<pb::ListSnapshotsResponse>, Status> {
        let id = SandboxId::try_from(req.into_inner())?;
        let list = self
            .sandboxes
            .list_snapshots(&id)
            .await
            .map_err(|e| fail("list_snapshots", e))?;
        Ok(Response::new(pb::ListSnapshotsResponse {
            snapshots: list.into_iter().map(snapshots::snapshot_pb).collect(),
        }))
    }

    async fn revert_snapshot(
        &self,
        req: Request<pb::RevertSnapshotRequest>,
    ) -> Result<Response<pb::Sandbox>, Status> {
        let (sref, start) = snapshots::revert_request(req.into_inner())?;
        let v = timed(Op::Revert, self.sandboxes.revert_snapshot(&sref, start))
            .await
            .map_err(|e| fail("revert_snapshot", e))?;
        Ok(Response::new(sandbox_pb(v)))
    }

    async fn delete_snapshot(
        &self,
        req: Request<pb::SnapshotRef>,
    ) -> Result<Response<pb::DeleteSnapshotResponse>, Status> {
        let sref = SnapshotRef::try_from(req.into_inner())?;
        let existed = self
            .sandboxes
            .delete_snapshot(&sref)
            .await
            .map_err(|e| fail("delete_snapshot", e))?;
        Ok(Response::new(pb::DeleteSnapshotResponse { existed }))
    }

    async fn diff_snapshots(
        &self,
        req: Request<pb::DiffSnapshotsRequest>,
    ) -> Result<Response<pb::SnapshotDiff>, Status> {
        let diff = snapshots::diff_request(req.into_inner())?;
        let d = timed(Op::Diff, self.sandboxes.diff(diff))
            .await
            .map_err(|e| fail("diff_snapshots", e))?;
        Ok(Response::new(snapshots::diff_pb(d)))
    }

    async fn read_snapshot_file(
        &self,
        req: Request<pb::ReadSnapshotFileRequest>,
    ) -> Result<Response<Self::ReadSnapshotFileStream>, Status> {
        let read = snapshots::read_request(req.into_inner())?;
        let (meta, data) = self
            .sandboxes
            .read_snapshot_file(read)
            .await
            .map_err(|e| fail("read_snapshot_file", e))?;
        Ok(Response::new(snapshots::chunks(
            snapshots::file_meta_pb(meta),
            data,
        )))
    }

    async fn tunnel(
        &self,
        req: Request<tonic::Streaming<pb::TunnelInput>>,
    ) -> Result<Response<Self::TunnelStream>, Status> {
        let mut input = req.into_inner();
        let open = tunnel::first_open(&mut input).await.inspect_err(|s| {
            tracing::info!(op = "tunnel", code = ?s.code(), "{}", s.message());
        })?;
        let conn = self
            .sandboxes
            .open_tunnel(&open.sandbox_id, open.port)
            .await
            .map_err(|e| fail("tunnel", e))?;
        Ok(Response::new(tunnel::bridge(
            input,
            conn.stream,
            conn.permit,
        )))
    }

    async fn wait_for_ip(
        &self,
        req: Request<pb::WaitForIpRequest>,
    ) -> Result<Response<pb::SandboxIp>, Status> {
        let wait = WaitForIp::try_from(req.into_inner())?;
        let ip = self
            .sandboxes
            .wait_for_ip(wait)
            .await
            .map_err(|e| fail("wait_for_ip", e))?;
        Ok(Response::new(pb::SandboxIp {
            ip_address: ip.to_string(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use fluid_proto::model::{ObservedState, SandboxInfo, StartPath};

    use super::*;

    #[test]
    fn the_start_path_goes_on_the_wire() {
        let view = |start_path: Option<&str>| {
            let mut record = crate::state::test_record("SBX-aaaaaaaa", "a");
            record.start_path = start_path.map(str::to_owned);
            SandboxView {
                record,
                state: ObservedState::Running,
                ip: None,
                error: None,
            }
        };
        let pb = sandbox_pb(view(Some("restore")));
        assert_eq!(pb.start_path, "restore");
        let info = SandboxInfo::try_from(pb).expect("the controller accepts it");
        assert_eq!(info.start_path, Some(StartPath::Restore));
        assert_eq!(sandbox_pb(view(None)).start_path, "");
    }
}
