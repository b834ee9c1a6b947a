//! One ansible-playbook run of a job: a private working directory with the job's
//! playbook, the run itself through the [`PlaybookRunner`](super::runner::PlaybookRunner),
//! and its output pumped line by line into the job.

use std::path::Path;

use fluid_ansible::{InventoryHost, RunError, RunOutcome, RunSpec};
use tokio::sync::mpsc;

use super::JobService;
use super::runner::resolve_ansible_playbook;
use crate::error::ServiceError;
use crate::store::JobRecord;
use crate::support::atomic::write_atomic;
use crate::support::hash::sha256_hex;

/// Lines buffered between ansible-playbook and the job's output.
const LINE_BUFFER: usize = 256;

impl From<RunError> for ServiceError {
    fn from(e: RunError) -> Self {
        match e {
            RunError::NotInstalled { .. } | RunError::Unconfinable(_) => {
                Self::Unavailable(e.to_string())
            }
            RunError::Invalid(m) => Self::Invalid(m),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl JobService {
    /// A private (0700) working directory for one job, removed when dropped.
    pub(crate) fn work_dir(&self, job: &JobRecord) -> Result<tempfile::TempDir, ServiceError> {
        use std::os::unix::fs::DirBuilderExt as _;
        let root = &self.settings.work_dir;
        let fail = |e: std::io::Error| {
            ServiceError::Internal(format!(
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
    ) -> Result<RunOutcome, ServiceError> {
        if sha256_hex(&job.playbook_yaml) != job.playbook_sha256 {
            return Err(ServiceError::Internal(format!(
                "job {}: its playbook does not match its SHA-256; refusing to run it",
                job.id
            )));
        }
        let playbook_path = dir.join("playbook.yml");
        write_atomic(&playbook_path, job.playbook_yaml.as_bytes(), 0o600).map_err(|e| {
            ServiceError::Internal(format!("writing {}: {e}", playbook_path.display()))
        })?;
        let (ansible_playbook, _) = resolve_ansible_playbook(&self.settings.ansible_playbook);
        let mut read_only = artefacts_in(&job.playbook_yaml, &self.settings.artefact_dir);
        read_only.extend(known_hosts_files(&hosts));
        let spec = RunSpec {
            ansible_playbook,
            playbook_path,
            hosts,
            check,
            diff: true,
            work_dir: dir.to_owned(),
            timeout: self.settings.job_timeout,
            extra_args,
            confine: None,
            read_only,
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

/// The artefacts (`<artefact_dir>/<sha256>`) a playbook's YAML names: the only files
/// of the controller's a confined run copies from.
pub fn artefacts_in(yaml: &str, artefact_dir: &Path) -> Vec<std::path::PathBuf> {
    let prefix = format!("{}/", artefact_dir.display());
    let mut out: Vec<std::path::PathBuf> = Vec::new();
    let mut rest = yaml;
    while let Some(i) = rest.find(&prefix) {
        let after = &rest[i + prefix.len()..];
        let hex: String = after
            .chars()
            .take_while(char::is_ascii_hexdigit)
            .take(65)
            .collect();
        if hex.len() == 64 {
            let p = artefact_dir.join(&hex);
            if p.is_file() && !out.contains(&p) {
                out.push(p);
            }
        }
        rest = after;
    }
    out
}

/// Files named by `UserKnownHostsFile=` / `GlobalKnownHostsFile=` in the hosts' SSH
/// arguments, so a confined run checks host keys as configured.
fn known_hosts_files(hosts: &[InventoryHost]) -> Vec<std::path::PathBuf> {
    let mut out: Vec<std::path::PathBuf> = Vec::new();
    for a in hosts.iter().flat_map(|h| &h.ssh_common_args) {
        for key in ["UserKnownHostsFile=", "GlobalKnownHostsFile="] {
            if let Some(v) = a.strip_prefix(key) {
                for f in v.split_whitespace() {
                    let p = std::path::PathBuf::from(f);
                    // Regular files only (`/dev/null` is the sandbox's own).
                    if p.is_absolute() && p.is_file() && !out.contains(&p) {
                        out.push(p);
                    }
                }
            }
        }
    }
    out
}
