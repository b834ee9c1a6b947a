//! The fake fleet's snapshots, diffs, file reads and tunnel ([`SnapshotAgent`]).
//!
//! Snapshots live in memory per sandbox; a running sandbox's snapshot has memory, and
//! reverting to it leaves the sandbox running. A diff answers the canned
//! [`SnapshotFake::diff`] (empty by default) after checking both sides exist; a file
//! read answers [`SnapshotFake::files`] by path; a tunnel echoes its input.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use fluid_proto::model::{
    DiskState, ObservedState, SandboxId, SandboxInfo, SnapshotName, SnapshotRef,
};
use fluid_proto::pb;
use futures::StreamExt as _;

use super::{FakeAgents, fail};
use crate::agents::{
    AgentError, AgentSnapshot, AgentTarget, SnapshotAgent, TunnelInputStream, TunnelStream,
    read_cap,
};

/// What the fake keeps for [`SnapshotAgent`].
#[derive(Debug, Default)]
pub struct SnapshotFake {
    /// Snapshots per sandbox id, oldest first.
    pub snapshots: Mutex<HashMap<String, Vec<AgentSnapshot>>>,
    /// What DiffSnapshots answers.
    pub diff: Mutex<pb::SnapshotDiff>,
    /// Every DiffSnapshots request received.
    pub diff_requests: Mutex<Vec<pb::DiffSnapshotsRequest>>,
    /// Every RevertSnapshot received: the snapshot and `start`.
    pub reverts: Mutex<Vec<(SnapshotRef, bool)>>,
    /// What ReadSnapshotFile answers, by path (any disk state).
    pub files: Mutex<HashMap<String, (pb::FileMeta, Vec<u8>)>>,
    /// The `from_snapshot` of every create that had one.
    pub forks: Mutex<Vec<(SandboxId, SnapshotRef)>>,
    /// The `fork_of_running` of every create that had one: (fork, source).
    pub live_forks: Mutex<Vec<(SandboxId, SandboxId)>>,
    /// Every tunnel opened.
    pub tunnels: Mutex<Vec<pb::TunnelOpen>>,
}

impl FakeAgents {
    /// Sets what DiffSnapshots answers.
    pub fn set_diff(&self, d: pb::SnapshotDiff) {
        if let Ok(mut x) = self.snap.diff.lock() {
            *x = d;
        }
    }

    /// The snapshot names the fake holds for a sandbox.
    pub fn snapshot_names(&self, id: &str) -> Vec<String> {
        self.snap
            .snapshots
            .lock()
            .map(|m| {
                m.get(id)
                    .map(|v| v.iter().map(|s| s.name.to_string()).collect())
                    .unwrap_or_default()
            })
            .unwrap_or_default()
    }

    fn has_snapshot(&self, t: &AgentTarget, d: &DiskState) -> Result<(), AgentError> {
        self.with(t, &d.sandbox_id, |_| ())?;
        let Some(name) = &d.snapshot else {
            return Ok(());
        };
        let m = self
            .snap
            .snapshots
            .lock()
            .map_err(|_| fail(t, "poisoned"))?;
        if m.get(d.sandbox_id.as_str())
            .is_some_and(|v| v.iter().any(|s| &s.name == name))
        {
            Ok(())
        } else {
            Err(not_found(t, &d.sandbox_id, name))
        }
    }
}

fn not_found(t: &AgentTarget, id: &SandboxId, name: &SnapshotName) -> AgentError {
    AgentError::NotFound {
        host: t.name.clone(),
        message: format!("no snapshot {name} of {id}"),
    }
}

#[async_trait]
impl SnapshotAgent for FakeAgents {
    async fn create_snapshot(
        &self,
        t: &AgentTarget,
        id: &SandboxId,
        name: &SnapshotName,
        disk_only: bool,
        _ssh_certificate: &str,
    ) -> Result<AgentSnapshot, AgentError> {
        let state = self.with(t, id, |s| s.state)?;
        let mut m = self
            .snap
            .snapshots
            .lock()
            .map_err(|_| fail(t, "poisoned"))?;
        let list = m.entry(id.to_string()).or_default();
        if let Some(s) = list.iter().find(|s| &s.name == name) {
            return Ok(s.clone());
        }
        let running = state == ObservedState::Running;
        if running && disk_only {
            return Err(AgentError::Refused {
                host: t.name.clone(),
                message: "a disk-only snapshot of a running domain".into(),
            });
        }
        let s = AgentSnapshot {
            name: name.clone(),
            memory: running,
            vm_state: if running { "running" } else { "shutoff" }.into(),
            created_at: chrono::Utc::now(),
            guest_sync: if running {
                "ok"
            } else {
                "skipped: not running"
            }
            .into(),
            active_services: if running {
                vec!["ssh.service".into()]
            } else {
                Vec::new()
            },
        };
        list.push(s.clone());
        Ok(s)
    }

    async fn list_snapshots(
        &self,
        t: &AgentTarget,
        id: &SandboxId,
    ) -> Result<Vec<AgentSnapshot>, AgentError> {
        self.with(t, id, |_| ())?;
        let m = self
            .snap
            .snapshots
            .lock()
            .map_err(|_| fail(t, "poisoned"))?;
        Ok(m.get(id.as_str()).cloned().unwrap_or_default())
    }

    async fn revert_snapshot(
        &self,
        t: &AgentTarget,
        snapshot: &SnapshotRef,
        start: bool,
    ) -> Result<SandboxInfo, AgentError> {
        let memory = {
            let m = self
                .snap
                .snapshots
                .lock()
                .map_err(|_| fail(t, "poisoned"))?;
            m.get(snapshot.sandbox_id.as_str())
                .and_then(|v| v.iter().find(|s| s.name == snapshot.name))
                .map(|s| s.memory)
                .ok_or_else(|| not_found(t, &snapshot.sandbox_id, &snapshot.name))?
        };
        if let Ok(mut r) = self.snap.reverts.lock() {
            r.push((snapshot.clone(), start));
        }
        self.with(t, &snapshot.sandbox_id, |s| {
            s.state = if memory || start {
                ObservedState::Running
            } else {
                ObservedState::Stopped
            };
            s.clone()
        })
    }

    async fn delete_snapshot(
        &self,
        t: &AgentTarget,
        snapshot: &SnapshotRef,
    ) -> Result<bool, AgentError> {
        self.check_up(t)?;
        let mut m = self
            .snap
            .snapshots
            .lock()
            .map_err(|_| fail(t, "poisoned"))?;
        let Some(list) = m.get_mut(snapshot.sandbox_id.as_str()) else {
            return Ok(false);
        };
        let before = list.len();
        list.retain(|s| s.name != snapshot.name);
        Ok(list.len() < before)
    }

    async fn diff_snapshots(
        &self,
        t: &AgentTarget,
        req: pb::DiffSnapshotsRequest,
    ) -> Result<pb::SnapshotDiff, AgentError> {
        for side in [&req.from, &req.to] {
            let d = DiskState::try_from(side.clone().unwrap_or_default()).map_err(|e| {
                AgentError::Refused {
                    host: t.name.clone(),
                    message: e.to_string(),
                }
            })?;
            self.has_snapshot(t, &d)?;
        }
        if let Ok(mut r) = self.snap.diff_requests.lock() {
            r.push(req);
        }
        Ok(self
            .snap
            .diff
            .lock()
            .map_err(|_| fail(t, "poisoned"))?
            .clone())
    }

    async fn read_snapshot_file(
        &self,
        t: &AgentTarget,
        state: &DiskState,
        path: &str,
        max_bytes: u64,
        _ssh_certificate: &str,
    ) -> Result<(pb::FileMeta, Vec<u8>), AgentError> {
        self.has_snapshot(t, state)?;
        let files = self.snap.files.lock().map_err(|_| fail(t, "poisoned"))?;
        let (meta, data) = files
            .get(path)
            .cloned()
            .ok_or_else(|| AgentError::NotFound {
                host: t.name.clone(),
                message: format!("{path}: no such file"),
            })?;
        let cap = read_cap(max_bytes);
        if data.len() as u64 > cap {
            return Err(AgentError::Refused {
                host: t.name.clone(),
                message: format!("{path} is larger than {cap} bytes"),
            });
        }
        Ok((meta, data))
    }

    async fn tunnel(
        &self,
        t: &AgentTarget,
        open: pb::TunnelOpen,
        input: TunnelInputStream,
    ) -> Result<TunnelStream, AgentError> {
        let id =
            SandboxId::parse("sandbox_id", &open.sandbox_id).map_err(|e| AgentError::Refused {
                host: t.name.clone(),
                message: e.to_string(),
            })?;
        self.with(t, &id, |_| ())?;
        if open.port != 22 {
            return Err(AgentError::Refused {
                host: t.name.clone(),
                message: format!("port {} is not tunnelled (only 22)", open.port),
            });
        }
        if let Ok(mut x) = self.snap.tunnels.lock() {
            x.push(open);
        }
        Ok(input.map(Ok).boxed())
    }
}
