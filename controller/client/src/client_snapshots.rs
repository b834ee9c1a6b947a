//! The client's calls of snapshots, restore, fork and diffs
//! (`/v1/sandboxes/{id}/snapshots…`, `/fork`, `/diff`, `/diffs`). Shapes in
//! [`crate::snapshots`].

use reqwest::Method;

use super::{Client, ClientError};
use crate::percent::encode_component;
use crate::snapshots::*;
use crate::types::CreateSandboxResponse;

fn sandbox_path(sandbox_id: &str, rest: &str) -> String {
    format!("/v1/sandboxes/{}/{rest}", encode_component(sandbox_id))
}

fn snapshot_path(sandbox_id: &str, name: &str) -> String {
    sandbox_path(sandbox_id, &format!("snapshots/{}", encode_component(name)))
}

impl Client {
    /// `POST /v1/sandboxes/{id}/snapshots`: with memory when the sandbox runs,
    /// disk-only when it is stopped.
    pub async fn create_snapshot(
        &self,
        sandbox_id: &str,
        req: &CreateSnapshotRequest,
    ) -> Result<SnapshotResponse, ClientError> {
        self.request(
            Method::POST,
            &sandbox_path(sandbox_id, "snapshots"),
            Some(req),
        )
        .await
    }

    /// `GET /v1/sandboxes/{id}/snapshots`, oldest first.
    pub async fn list_snapshots(&self, sandbox_id: &str) -> Result<SnapshotList, ClientError> {
        self.get(&sandbox_path(sandbox_id, "snapshots")).await
    }

    /// `POST /v1/sandboxes/{id}/snapshots/{name}/restore`.
    pub async fn restore_snapshot(
        &self,
        sandbox_id: &str,
        name: &str,
    ) -> Result<SnapshotResponse, ClientError> {
        let path = format!("{}/restore", snapshot_path(sandbox_id, name));
        self.request::<(), _>(Method::POST, &path, None).await
    }

    /// `DELETE /v1/sandboxes/{id}/snapshots/{name}` (204).
    pub async fn delete_snapshot(&self, sandbox_id: &str, name: &str) -> Result<(), ClientError> {
        self.send::<()>(Method::DELETE, &snapshot_path(sandbox_id, name), None, None)
            .await
            .map(|_| ())
    }

    /// `POST /v1/sandboxes/{id}/fork`: a new sandbox from one of `sandbox_id`'s
    /// snapshots, on the same host.
    pub async fn fork_sandbox(
        &self,
        sandbox_id: &str,
        req: &ForkRequest,
    ) -> Result<CreateSandboxResponse, ClientError> {
        self.request(Method::POST, &sandbox_path(sandbox_id, "fork"), Some(req))
            .await
    }

    /// `POST /v1/sandboxes/{id}/diff` (the agent reads both disk images: this may take
    /// minutes on a large disk; no client time-out applies).
    pub async fn diff_sandbox(
        &self,
        sandbox_id: &str,
        req: &DiffRequest,
    ) -> Result<DiffResponse, ClientError> {
        self.request(Method::POST, &sandbox_path(sandbox_id, "diff"), Some(req))
            .await
    }

    /// `GET /v1/sandboxes/{id}/diffs`, newest first.
    pub async fn list_diffs(
        &self,
        sandbox_id: &str,
        limit: Option<u32>,
        offset: Option<u64>,
    ) -> Result<DiffList, ClientError> {
        let mut q = Vec::new();
        if let Some(l) = limit {
            q.push(format!("limit={l}"));
        }
        if let Some(o) = offset {
            q.push(format!("offset={o}"));
        }
        let mut path = sandbox_path(sandbox_id, "diffs");
        if !q.is_empty() {
            path = format!("{path}?{}", q.join("&"));
        }
        self.get(&path).await
    }

    /// `GET /v1/sandboxes/{id}/diffs/{diff_id}`.
    pub async fn get_diff(
        &self,
        sandbox_id: &str,
        diff_id: &str,
    ) -> Result<DiffResponse, ClientError> {
        self.get(&sandbox_path(
            sandbox_id,
            &format!("diffs/{}", encode_component(diff_id)),
        ))
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_encoded() {
        assert_eq!(
            snapshot_path("SBX-1", "before"),
            "/v1/sandboxes/SBX-1/snapshots/before"
        );
        assert_eq!(
            snapshot_path("SBX-1", "a/b c"),
            "/v1/sandboxes/SBX-1/snapshots/a%2Fb%20c"
        );
        assert_eq!(sandbox_path("../x", "diff"), "/v1/sandboxes/..%2Fx/diff");
    }

    #[test]
    fn diffs_decode() {
        let body = serde_json::json!({"diff": {
            "id": "DIF-1", "sandbox_id": "SBX-1", "from_snapshot": "a", "to_snapshot": "now",
            "diff_json": {
                "files_added": [{"path": "/etc/x", "kind": "file", "mode": "0644", "owner": "root",
                    "group": "root", "uid": 0, "gid": 0, "size": 3, "binary": false}],
                "files_modified": [], "files_removed": [], "packages_added": [],
                "packages_removed": [], "services_changed": [],
                "commands_run": [{"cmd": "ls", "exit_code": 0, "at": "2025-03-01T12:00:00Z"}]
            },
            "text_diffs": [], "created_at": "2025-03-01T12:00:00Z"
        }});
        let d: DiffResponse = serde_json::from_value(body).expect("decodes");
        assert_eq!(d.diff.diff_json.files_added[0].meta.mode, "0644");
        assert!(d.diff.diff_json.packages_upgraded.is_empty());
    }
}
