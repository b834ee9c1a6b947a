//! One ansible-playbook run of a job: a private working directory with the job's
//! playbook, the run itself through the [`PlaybookRunner`](super::runner::PlaybookRunner),
//! and its output pumped line by line into the job.

use std::path::Path;

use fluid_ansible::{InventoryHost, RunError, RunOutcome, RunSpec};
use tokio::sync::mpsc;

use super::JobService;
use super::access::write_atomic;
use super::runner::resolve_ansible_playbook;
use crate::playbooks::{AnsibleError, sha256_hex};
use crate::store::JobRecord;

/// Lines buffered between ansible-playbook and the job's output.
const LINE_BUFFER: usize = 256;

impl From<RunError> for AnsibleError {
    fn from(e: RunError) -> Self {
        match e {
            RunError::NotInstalled { .. } => Self::Unavailable(e.to_string()),
            RunError::Invalid(m) => Self::Invalid(m),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl JobService {
    /// A private (0700) working directory for one job, removed when dropped.
    pub(crate) fn work_dir(&self, job: &JobRecord) -> Result<tempfile::TempDir, AnsibleError> {
        use std::os::unix::fs::DirBuilderExt as _;
        let root = &self.settings.work_dir;
        let fail = |e: std::io::Error| {
            AnsibleError::Internal(format!(
                "creating a working directory in {}: {e}",
                root.display()
            ))
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(fail)?;
        tempfile::Builder::new()
            .prefix(&format!("{}-", job.id))
            .tempdir_in(root)
            .map_err(fail)
    }

    /// Runs the job's playbook (exactly the YAML fixed in the job) on `hosts`.
    pub(crate) async fn run_playbook(
        &self,
        job: &JobRecord,
        dir: &Path,
        hosts: Vec<InventoryHost>,
        check: bool,
        extra_args: Vec<String>,
    ) -> Result<RunOutcome, AnsibleError> {
        if sha256_hex(&job.playbook_yaml) != job.playbook_sha256 {
            return Err(AnsibleError::Internal(format!(
                "job {}: its playbook does not match its SHA-256; refusing to run it",
                job.id
            )));
        }
        let playbook_path = dir.join("playbook.yml");
        write_atomic(&playbook_path, job.playbook_yaml.as_bytes(), 0o600).map_err(|e| {
            AnsibleError::Internal(format!("writing {}: {e}", playbook_path.display()))
        })?;
        let (ansible_playbook, _) = resolve_ansible_playbook(&self.settings.ansible_playbook);
        let spec = RunSpec {
            ansible_playbook,
            playbook_path,
            hosts,
            check,
            diff: true,
            work_dir: dir.to_owned(),
            timeout: self.settings.job_timeout,
            extra_args,
        };
        let (tx, mut rx) = mpsc::channel::<String>(LINE_BUFFER);
        let pump = async {
            while let Some(line) = rx.recv().await {
                self.say(&job.id, &line);
            }
        };
        let (outcome, ()) = tokio::join!(self.runner.run(&spec, tx), pump);
        Ok(outcome?)
    }

    /// What the job printed after its output had `from` bytes.
    pub(crate) fn output_since(&self, job_id: &str, from: usize) -> String {
        self.hubs
            .output(job_id)
            .and_then(|(o, _)| o.get(from..).map(str::to_owned))
            .unwrap_or_default()
    }

    /// How long the job's output is now.
    pub(crate) fn output_len(&self, job_id: &str) -> usize {
        self.hubs.output(job_id).map_or(0, |(o, _)| o.len())
    }
}
