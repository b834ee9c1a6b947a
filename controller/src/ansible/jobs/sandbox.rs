//! A job against a sandbox: the controller cannot route to VM networks, so the run's
//! inventory points at a loopback listener whose connections the sandbox's agent
//! bridges to its port 22 ([`super::tunnel`]); ansible logs in as root with the job's
//! own key and a short-lived certificate ([`super::access`]). Host keys are not
//! checked: the tunnel itself is authenticated (mTLS to the agent that runs the VM).

use std::sync::Arc;
use std::time::Duration;

use fluid_ansible::{InventoryHost, RunOutcome};
use fluid_proto::pb;

use super::access::JobKey;
use super::tunnel::{TunnelListener, TunnelOpener, ssh_answers};
use super::{JobEnd, JobService, PHASE_APPLY, PHASE_CHECK};
use crate::agents::AgentTarget;
use crate::agents::locate;
use crate::error::ServiceError;
use crate::store::{JobRecord, SandboxRecord};

/// SSH options of a sandbox run: the tunnel, not the host key, authenticates the far end.
pub const SANDBOX_SSH_ARGS: [&str; 4] = [
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
];

/// How long one probe waits for sshd's banner.
const PROBE_WAIT: Duration = Duration::from_secs(10);

impl JobService {
    pub(super) async fn drive_sandbox(&self, job: &JobRecord, sb: &SandboxRecord) -> JobEnd {
        let phase = if job.check { PHASE_CHECK } else { PHASE_APPLY };
        if let Err(e) = self.start(job, phase).await {
            return JobEnd::failed(e.to_string());
        }
        self.say(
            &job.id,
            &format!(
                "=== ansible-playbook{} on sandbox {} ({}) ===",
                if job.check { " --check --diff" } else { "" },
                sb.id,
                sb.name
            ),
        );
        JobEnd::of_run(&self.run_on_sandbox(job, sb, job.check).await)
    }

    /// The agent that runs `sb` (its host must be online).
    pub(crate) async fn agent_target(
        &self,
        sb: &SandboxRecord,
    ) -> Result<AgentTarget, ServiceError> {
        Ok(locate::agent_of(&*self.store, sb).await?)
    }

    /// Opens tunnels to `sb`'s port 22 through its agent.
    pub(crate) fn opener(&self, target: AgentTarget, sandbox_id: &str) -> TunnelOpener {
        let agents = self.agents.clone();
        let sandbox_id = sandbox_id.to_owned();
        Arc::new(move |input| {
            let (agents, t) = (agents.clone(), target.clone());
            let open = pb::TunnelOpen {
                sandbox_id: sandbox_id.clone(),
                port: 22,
            };
            Box::pin(async move { agents.tunnel(&t, open, input).await })
        })
    }

    /// Waits (up to `within`) until `sb`'s sshd answers through its agent.
    pub(crate) async fn wait_for_ssh(
        &self,
        sb: &SandboxRecord,
        within: Duration,
    ) -> Result<(), ServiceError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let target = self.agent_target(sb).await?;
            if ssh_answers(&self.opener(target, &sb.id), PROBE_WAIT).await {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ServiceError::Unavailable(format!(
                    "sandbox {}: sshd did not answer within {} s",
                    sb.id,
                    within.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    /// Runs the job's playbook on `sb` (with `--check --diff` when `check`).
    pub(crate) async fn run_on_sandbox(
        &self,
        job: &JobRecord,
        sb: &SandboxRecord,
        check: bool,
    ) -> Result<RunOutcome, ServiceError> {
        let target = self.agent_target(sb).await?;
        let listener = TunnelListener::start(self.opener(target, &sb.id), job.id.clone())
            .await
            .map_err(|e| ServiceError::Internal(format!("opening a loopback listener: {e}")))?;
        let dir = self.work_dir(job)?;
        let key = JobKey::create(dir.path(), &self.ca, &job.id, &sb.id)
            .map_err(|e| ServiceError::Internal(format!("the job's SSH key: {e}")))?;
        let _renew = key.keep_fresh(self.ca.clone());
        let host = InventoryHost {
            name: sb.name.clone(),
            address: "127.0.0.1".into(),
            port: listener.port(),
            user: "root".into(),
            private_key: Some(key.key_path.clone()),
            certificate: Some(key.cert_path.clone()),
            ssh_common_args: SANDBOX_SSH_ARGS.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        };
        let r = self
            .run_playbook(job, dir.path(), vec![host], check, Vec::new())
            .await;
        drop(listener);
        r
    }
}
