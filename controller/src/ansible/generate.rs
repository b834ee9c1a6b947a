//! `POST /v1/sandboxes/{id}/generate/ansible`: a playbook from what changed in a
//! sandbox.
//!
//! The diff (default: the sandbox's oldest snapshot against its disk now) is computed
//! and stored like any other; `fluid_ansible::generate` turns it into tasks; every
//! file the tasks copy from an artefact is read out of the disk image and kept under
//! `<data_dir>/artifacts/<sha256>` (its hash checked; files past [`ARTEFACT_MAX`]
//! become review notes instead of tasks); the playbook is stored with its `source`
//! (which verification needs) and passed through `ansible-playbook --syntax-check`
//! when ansible is installed. A syntax error is the generator's bug, not the user's:
//! the answer is still 201, with a review line saying so.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use fluid_ansible::{ArtefactNeed, GenerateOptions, TaskSpec};
use fluid_client::ansible::{GenerateAnsibleRequest, GenerateAnsibleResponse, PlaybookSource};
use fluid_client::snapshots::NOW;
use fluid_proto::model::SandboxId;
use sha2::{Digest as _, Sha256};

use crate::ansible::jobs::JobService;
use crate::ansible::jobs::runner::resolve_ansible_playbook;
use crate::ansible::playbooks::{DEFAULT_HOSTS, PlaybookService};
use crate::error::ServiceError;
use crate::governance::auth::{self, Caller, Permission};
use crate::sandboxes::diffs::{DiffService, DiffSpec, DiskSide};
use crate::store::{SandboxRecord, Store};
use crate::support::atomic::write_atomic;

/// Largest file a generated playbook copies from an artefact.
pub const ARTEFACT_MAX: u64 = 64 * 1024 * 1024;

pub struct Generator {
    store: Arc<dyn Store>,
    diffs: Arc<DiffService>,
    playbooks: Arc<PlaybookService>,
    jobs: Arc<JobService>,
    artefact_dir: PathBuf,
    text_limit_bytes: u64,
}

impl std::fmt::Debug for Generator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator")
            .field("artefact_dir", &self.artefact_dir)
            .finish_non_exhaustive()
    }
}

/// The path an artefact is kept at.
pub fn artefact_path(dir: &std::path::Path, sha256: &str) -> PathBuf {
    dir.join(sha256)
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Generator {
    pub fn new(
        store: Arc<dyn Store>,
        diffs: Arc<DiffService>,
        playbooks: Arc<PlaybookService>,
        jobs: Arc<JobService>,
        data_dir: &std::path::Path,
        text_limit_bytes: u64,
    ) -> Self {
        Self {
            store,
            diffs,
            playbooks,
            jobs,
            artefact_dir: data_dir.join("artifacts"),
            text_limit_bytes,
        }
    }

    /// The sandbox's oldest snapshot: the default start of its changes.
    async fn oldest_snapshot(&self, sb: &SandboxRecord) -> Result<String, ServiceError> {
        self.store
            .list_snapshots(&sb.id)
            .await?
            .into_iter()
            .min_by_key(|s| s.created_at)
            .map(|s| s.name)
            .ok_or_else(|| {
                ServiceError::Invalid(format!(
                    "sandbox {} has no snapshot to compare with: take one before the changes \
                     (POST /v1/sandboxes/{}/snapshots) or give from_snapshot",
                    sb.id, sb.id
                ))
            })
    }

    /// Generates and stores a playbook from sandbox `id`'s changes. `caller` needs
    /// `Playbooks` (checked before `id` is parsed), then `Read` on the sandbox.
    pub async fn generate(
        &self,
        caller: &Caller,
        id: &str,
        req: &GenerateAnsibleRequest,
    ) -> Result<GenerateAnsibleResponse, ServiceError> {
        auth::check(caller, Permission::Playbooks)?;
        let id = crate::error::parse_id(id)?;
        let sb = &auth::authorized_sandbox(&*self.store, caller, &id, Permission::Read).await?;
        let from = match req.from_snapshot.as_deref().map(str::trim) {
            Some(f) if !f.is_empty() => f.to_owned(),
            _ => self.oldest_snapshot(sb).await?,
        };
        let to = req
            .to_snapshot
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .unwrap_or(NOW)
            .to_owned();
        let name = match &req.name {
            Some(n) => n.trim().to_owned(),
            None => format!("{}-{to}", sb.id.to_ascii_lowercase()),
        };
        fluid_ansible::validate::validate_playbook_name(&name)?;
        let hosts = req
            .hosts
            .as_deref()
            .unwrap_or(DEFAULT_HOSTS)
            .trim()
            .to_owned();
        fluid_ansible::validate::validate_hosts(&hosts)?;
        if self.store.get_playbook(&name).await?.is_some() {
            return Err(ServiceError::Conflict(format!(
                "playbook {name:?} already exists: give another name"
            )));
        }
        let id =
            SandboxId::parse("id", &sb.id).map_err(|e| ServiceError::Invalid(e.to_string()))?;
        let from_side = DiskSide::parse(&id, "from_snapshot", &from)?;
        let to_side = DiskSide::parse(&id, "to_snapshot", &to)?;
        let stored = self
            .diffs
            .diff(DiffSpec {
                owner: id,
                from: from_side,
                to: to_side.clone(),
                commands: true,
                store: true,
            })
            .await?;
        let after_texts: BTreeMap<String, String> = stored
            .detail
            .texts
            .iter()
            .filter_map(|(p, t)| t.after.clone().map(|a| (p.clone(), a)))
            .collect();
        let opts = GenerateOptions {
            artefact_dir: self.artefact_dir.clone(),
            text_limit_bytes: self.text_limit_bytes,
        };
        let generated = fluid_ansible::generate(&stored.diff.diff_json, &after_texts, &opts);
        let mut review = generated.review;
        let mut tasks = generated.tasks;
        for need in &generated.artefacts {
            if let Err(why) = self.keep_artefact(&to_side, need).await {
                let src = artefact_path(&self.artefact_dir, &need.sha256)
                    .display()
                    .to_string();
                let before = tasks.len();
                tasks.retain(|t| !copies_from(t, &src));
                review.push(format!(
                    "{}: not in the playbook ({why}); {} task(s) left out: copy it by hand",
                    need.path,
                    before - tasks.len()
                ));
            }
        }
        tasks.extend(generated.handlers);
        let source = PlaybookSource {
            sandbox_id: sb.id.clone(),
            base_image: sb.image.clone(),
            from_snapshot: from,
            to_snapshot: to,
            diff_id: stored.diff.id.clone(),
        };
        let s = self
            .playbooks
            .create_stored(
                &name,
                &hosts,
                true,
                Some(source),
                crate::ansible::playbooks::Owner {
                    agent_id: Some(sb.agent_id.clone()),
                    created_by: format!("generated from {}", sb.id),
                },
                tasks,
            )
            .await?;
        let yaml = s.yaml()?;
        if let Some(line) = self.syntax_check(&name, &yaml).await {
            review.push(line);
        }
        tracing::info!(playbook = %name, sandbox = %sb.id, diff = %stored.diff.id, tasks = s.tasks.len(), review = review.len(), "playbook generated");
        let api = self.playbooks.view(&s);
        Ok(GenerateAnsibleResponse {
            playbook: api.playbook,
            tasks: api.tasks,
            diff_id: stored.diff.id,
            review,
            yaml,
        })
    }

    /// Makes sure `<artefact_dir>/<sha256>` holds the file `need` names (read from the
    /// diff's "after" side, its hash checked). `Err` says why it cannot be.
    async fn keep_artefact(&self, side: &DiskSide, need: &ArtefactNeed) -> Result<(), String> {
        if !is_sha256(&need.sha256) {
            return Err(format!("{:?} is not a SHA-256", need.sha256));
        }
        if need.size > ARTEFACT_MAX {
            return Err(format!(
                "{} bytes, over the {} MiB an artefact may have",
                need.size,
                ARTEFACT_MAX / (1024 * 1024)
            ));
        }
        let path = artefact_path(&self.artefact_dir, &need.sha256);
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Ok(());
        }
        let (_, data) = self
            .diffs
            .read_file(side, &need.path, ARTEFACT_MAX)
            .await
            .map_err(|e| format!("reading it from the disk image: {e}"))?;
        let got = hex::encode(Sha256::digest(&data));
        if !got.eq_ignore_ascii_case(&need.sha256) {
            return Err(format!(
                "its content changed since the diff (SHA-256 {got}, expected {})",
                need.sha256
            ));
        }
        let dir = self.artefact_dir.clone();
        tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(&dir)?;
            write_atomic(&path, &data, 0o640)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| {
            tracing::error!(sha256 = %need.sha256, error = %e, "storing an artefact");
            format!("storing it failed: {e}")
        })
    }

    /// `ansible-playbook --syntax-check` of a generated playbook, when ansible is
    /// installed: a review line when it fails.
    async fn syntax_check(&self, name: &str, yaml: &str) -> Option<String> {
        let (bin, installed) = resolve_ansible_playbook(&self.jobs.settings().ansible_playbook);
        if !installed {
            tracing::debug!(playbook = %name, "ansible-playbook is not installed: no syntax check");
            return None;
        }
        match self.jobs.runner().syntax_check(&bin, yaml).await {
            Ok(()) => None,
            Err(e) => {
                tracing::error!(playbook = %name, error = %e, "a generated playbook fails the syntax check");
                Some(format!("syntax check failed: {e}"))
            }
        }
    }
}

/// Whether a task copies from the artefact at `src`.
fn copies_from(t: &TaskSpec, src: &str) -> bool {
    t.params.get("src").and_then(serde_json::Value::as_str) == Some(src)
}
