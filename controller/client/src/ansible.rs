//! Bodies of the Ansible API (`/v1/ansible/…`, `/v1/sandboxes/{id}/generate/ansible`).
//! Shapes follow fluid-remote v1; fields marked *new* are fluid's.
//! Requests reject unknown fields (the API answers 400).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /v1/ansible/playbooks`. Names: `[A-Za-z0-9][A-Za-z0-9._-]{0,62}`, no `..`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePlaybookRequest {
    pub name: String,
    /// Default `all`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<String>,
    /// Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#become: Option<bool>,
}

/// *new*: where a generated playbook came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PlaybookSource {
    pub sandbox_id: String,
    pub base_image: String,
    pub from_snapshot: String,
    pub to_snapshot: String,
    pub diff_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Playbook {
    pub id: String,
    pub name: String,
    pub hosts: String,
    pub r#become: bool,
    /// Where the controller keeps the exported YAML.
    pub file_path: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// *new*
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<PlaybookSource>,
    /// *new*: the last verification's result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,
    /// The agent id of the token that created it (a generated one: its source
    /// sandbox's agent); absent for an operator's or admin's. A scoped token sees only
    /// its own agent's playbooks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_agent_id: Option<String>,
    /// The name of the token that created it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PlaybookResponse {
    pub playbook: Playbook,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PlaybookList {
    pub playbooks: Vec<Playbook>,
    pub total: u64,
}

/// A task: an Ansible module call. `params` are the module's arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Task {
    pub id: String,
    pub playbook_id: String,
    pub position: i64,
    pub name: String,
    /// `copy`, `ansible.builtin.apt`, … (`[a-z_][a-z0-9_]*` in up to three dotted parts).
    pub module: String,
    pub params: serde_json::Value,
    pub created_at: DateTime<Utc>,
    /// *new*: task keywords beside the module (`notify`, `tags`, `when`,
    /// `ignore_errors`, `listen`, …), an object.
    #[serde(default, skip_serializing_if = "is_empty_object")]
    pub options: serde_json::Value,
    /// *new*: a handler (under `handlers:`), not a task.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub handler: bool,
}

fn is_empty_object(v: &serde_json::Value) -> bool {
    v.is_null() || v.as_object().is_some_and(|o| o.is_empty())
}

/// `GET /v1/ansible/playbooks/{name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PlaybookWithTasks {
    pub playbook: Playbook,
    pub tasks: Vec<Task>,
}

/// `POST /v1/ansible/playbooks/{name}/tasks`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTaskRequest {
    pub name: String,
    pub module: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<serde_json::Value>,
    /// *new*
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<serde_json::Value>,
    /// *new*
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<bool>,
}

/// `PUT /v1/ansible/playbooks/{name}/tasks/{task_id}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTaskRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<serde_json::Value>,
    /// *new*
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TaskResponse {
    pub task: Task,
}

/// `PATCH /v1/ansible/playbooks/{name}/tasks/reorder`: every task id, in the new order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReorderTasksRequest {
    pub task_ids: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExportResponse {
    pub yaml: String,
}

/// `POST /v1/sandboxes/{id}/generate/ansible`: a playbook from the diff between two
/// snapshots (default: the sandbox's first snapshot and now).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateAnsibleRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_snapshot: Option<String>,
    /// A snapshot name or `now` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_snapshot: Option<String>,
    /// The playbook's name (default `<sandbox id in lower case>-<to_snapshot>`);
    /// an existing playbook of that name is a 409.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<String>,
}

/// `201` answer to a generate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GenerateAnsibleResponse {
    pub playbook: Playbook,
    pub tasks: Vec<Task>,
    pub diff_id: String,
    /// What a human must look at: tasks marked for review (tag `fluid_review`, which
    /// also carries `never`, so they run only when asked for), and why.
    pub review: Vec<String>,
    pub yaml: String,
}

/// `POST /v1/ansible/jobs`. `vm_name` is a sandbox (id or name) or a production target
/// declared in the controller's config; a production run needs an approval.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateJobRequest {
    pub vm_name: String,
    pub playbook: String,
    /// `--check --diff` only.
    #[serde(default)]
    pub check: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Pending,
    Running,
    Finished,
    Failed,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Finished => "finished",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "running" => Some(Self::Running),
            "finished" => Some(Self::Finished),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, Self::Finished | Self::Failed)
    }
}

/// `201` answer to `POST /v1/ansible/jobs` (and to a verify).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreateJobResponse {
    pub job_id: String,
    /// WebSocket of the job's output (text frames, one per line; then a final
    /// `{"status": …}` text frame).
    pub ws_url: String,
    /// *new*
    pub job: Job,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Job {
    pub id: String,
    /// `run` or `verify` (*new*).
    pub kind: String,
    pub playbook: String,
    pub vm_name: String,
    /// `sandbox` or `production` (*new*).
    pub target_kind: String,
    pub check: bool,
    pub status: JobStatus,
    /// *new*: `check`, `awaiting_approval`, `apply`, `verify`, `done` — where it is.
    pub phase: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
    /// *new*: output of the `--check --diff` run shown with the approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_output: Option<String>,
    /// ansible-playbook's output (capped).
    pub output: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// *new*: a verify's result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobResponse {
    pub job: Job,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<Job>,
    pub total: u64,
}

/// *new*: `POST /v1/ansible/playbooks/{name}/verify`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// Block until done (default false: 201 with the job at once).
    #[serde(default)]
    pub wait: bool,
}

/// One difference between the original sandbox and the playbook's reproduction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Difference {
    /// `file`, `package` or `service`.
    pub what: String,
    /// The path, package or unit.
    pub name: String,
    /// In the original (the playbook's source `to_snapshot`).
    pub expected: String,
    /// In the fresh sandbox the playbook was applied to.
    pub actual: String,
}

/// *new*: whether applying a playbook to a fresh sandbox of the same image reproduces
/// the original sandbox, on every tracked path, package and service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Verification {
    pub reproduces: bool,
    pub differences: Vec<Difference>,
    pub job_id: String,
    pub verify_sandbox_id: String,
    pub verified_at: DateTime<Utc>,
}
