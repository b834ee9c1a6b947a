//! The client's calls of the Ansible API: playbooks and their tasks
//! (`/v1/ansible/playbooks…`), generation from a sandbox's diff
//! (`/v1/sandboxes/{id}/generate/ansible`), verification and jobs
//! (`/v1/ansible/jobs…`). Shapes in [`crate::ansible`].

use reqwest::{Method, StatusCode};

use super::{Client, ClientError};
use crate::ansible::*;
use crate::percent::encode_component;

fn playbook_path(name: &str) -> String {
    format!("/v1/ansible/playbooks/{}", encode_component(name))
}

fn task_path(playbook: &str, task_id: &str) -> String {
    format!(
        "{}/tasks/{}",
        playbook_path(playbook),
        encode_component(task_id)
    )
}

/// The WebSocket URL of a job's output on the controller at `base`
/// (`http(s)://…` becomes `ws(s)://…`).
pub fn job_stream_url(base: &str, job_id: &str) -> String {
    let base = base.trim_end_matches('/');
    let ws = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_owned()
    };
    format!("{ws}/v1/ansible/jobs/{}/stream", encode_component(job_id))
}

/// What `POST /v1/ansible/playbooks/{name}/verify` answered.
#[derive(Debug, Clone, PartialEq)]
pub enum VerifyOutcome {
    /// `wait: true`: the finished job, with its verification.
    Done(JobResponse),
    /// `wait: false`: the job, running.
    Started(CreateJobResponse),
}

impl Client {
    /// The WebSocket URL of a job's output (see [`job_stream_url`]).
    pub fn job_stream_url(&self, job_id: &str) -> String {
        job_stream_url(self.base_url(), job_id)
    }

    /// `GET /v1/ansible/playbooks`.
    pub async fn list_playbooks(&self) -> Result<PlaybookList, ClientError> {
        self.get("/v1/ansible/playbooks?limit=1000").await
    }

    /// `POST /v1/ansible/playbooks`.
    pub async fn create_playbook(
        &self,
        req: &CreatePlaybookRequest,
    ) -> Result<PlaybookResponse, ClientError> {
        self.request(Method::POST, "/v1/ansible/playbooks", Some(req))
            .await
    }

    /// `GET /v1/ansible/playbooks/{name}`: the playbook and its tasks.
    pub async fn get_playbook(&self, name: &str) -> Result<PlaybookWithTasks, ClientError> {
        self.get(&playbook_path(name)).await
    }

    /// `DELETE /v1/ansible/playbooks/{name}` (204).
    pub async fn delete_playbook(&self, name: &str) -> Result<(), ClientError> {
        self.send::<()>(Method::DELETE, &playbook_path(name), None, None)
            .await
            .map(|_| ())
    }

    /// `GET /v1/ansible/playbooks/{name}/export`: the YAML.
    pub async fn export_playbook(&self, name: &str) -> Result<ExportResponse, ClientError> {
        self.get(&format!("{}/export", playbook_path(name))).await
    }

    /// `POST /v1/ansible/playbooks/{name}/tasks`.
    pub async fn add_task(
        &self,
        playbook: &str,
        req: &CreateTaskRequest,
    ) -> Result<TaskResponse, ClientError> {
        let path = format!("{}/tasks", playbook_path(playbook));
        self.request(Method::POST, &path, Some(req)).await
    }

    /// `PUT /v1/ansible/playbooks/{name}/tasks/{task_id}`.
    pub async fn update_task(
        &self,
        playbook: &str,
        task_id: &str,
        req: &UpdateTaskRequest,
    ) -> Result<TaskResponse, ClientError> {
        self.request(Method::PUT, &task_path(playbook, task_id), Some(req))
            .await
    }

    /// `DELETE /v1/ansible/playbooks/{name}/tasks/{task_id}` (204).
    pub async fn delete_task(&self, playbook: &str, task_id: &str) -> Result<(), ClientError> {
        self.send::<()>(Method::DELETE, &task_path(playbook, task_id), None, None)
            .await
            .map(|_| ())
    }

    /// `PATCH /v1/ansible/playbooks/{name}/tasks/reorder`: every task id, in order.
    pub async fn reorder_tasks(
        &self,
        playbook: &str,
        req: &ReorderTasksRequest,
    ) -> Result<PlaybookWithTasks, ClientError> {
        let path = format!("{}/tasks/reorder", playbook_path(playbook));
        self.request(Method::PATCH, &path, Some(req)).await
    }

    /// `POST /v1/sandboxes/{id}/generate/ansible`.
    pub async fn generate_ansible(
        &self,
        sandbox_id: &str,
        req: &GenerateAnsibleRequest,
    ) -> Result<GenerateAnsibleResponse, ClientError> {
        let path = format!(
            "/v1/sandboxes/{}/generate/ansible",
            encode_component(sandbox_id)
        );
        self.request(Method::POST, &path, Some(req)).await
    }

    /// `POST /v1/ansible/playbooks/{name}/verify`; with `wait`, blocks until the
    /// verification is done (a fresh sandbox boots: minutes).
    pub async fn verify_playbook(
        &self,
        name: &str,
        wait: bool,
    ) -> Result<VerifyOutcome, ClientError> {
        let path = format!("{}/verify", playbook_path(name));
        let answer = self
            .send(Method::POST, &path, Some(&VerifyRequest { wait }), None)
            .await?;
        if answer.status == StatusCode::CREATED {
            answer.decode().map(VerifyOutcome::Started)
        } else {
            answer.decode().map(VerifyOutcome::Done)
        }
    }

    /// `POST /v1/ansible/jobs`: runs a playbook on a sandbox, or on a production target
    /// after a `production_apply` approval.
    pub async fn create_job(
        &self,
        req: &CreateJobRequest,
    ) -> Result<CreateJobResponse, ClientError> {
        self.request(Method::POST, "/v1/ansible/jobs", Some(req))
            .await
    }

    /// `GET /v1/ansible/jobs` (`query` without `?`, e.g. `status=running`).
    pub async fn list_jobs(&self, query: &str) -> Result<JobList, ClientError> {
        let path = if query.is_empty() {
            "/v1/ansible/jobs".to_owned()
        } else {
            format!("/v1/ansible/jobs?{query}")
        };
        self.get(&path).await
    }

    /// `GET /v1/ansible/jobs/{job_id}`.
    pub async fn get_job(&self, job_id: &str) -> Result<JobResponse, ClientError> {
        self.get(&format!("/v1/ansible/jobs/{}", encode_component(job_id)))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_encoded() {
        assert_eq!(playbook_path("web"), "/v1/ansible/playbooks/web");
        assert_eq!(playbook_path("../x"), "/v1/ansible/playbooks/..%2Fx");
        assert_eq!(
            task_path("web", "TSK-1"),
            "/v1/ansible/playbooks/web/tasks/TSK-1"
        );
        assert_eq!(
            job_stream_url("https://ctl.example/", "JOB-1"),
            "wss://ctl.example/v1/ansible/jobs/JOB-1/stream"
        );
        assert_eq!(
            job_stream_url("http://127.0.0.1:8080", "JOB-1"),
            "ws://127.0.0.1:8080/v1/ansible/jobs/JOB-1/stream"
        );
    }
}
