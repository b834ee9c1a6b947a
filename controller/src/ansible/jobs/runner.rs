//! What runs ansible-playbook: a small trait, so the job logic is tested with a
//! recording fake (behind `cfg(test)`), and its product implementation, which is
//! `fluid_ansible::run` inside bubblewrap ([`Sandbox`], `[ansible] sandbox`): it fails
//! closed (a job fails with the reason) when bwrap or the sandbox user is missing, and
//! runs unconfined only when an admin set `sandbox = "off"`.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use fluid_ansible::{InventoryHost, RunError, RunOutcome, RunSpec};
use tokio::sync::mpsc;

/// Where ansible-core is installed when it is not on `PATH` (`scripts/install-deps.sh`).
pub const FALLBACK_BIN_DIR: &str = "/opt/fluid-ansible/bin";

#[async_trait]
pub trait PlaybookRunner: Send + Sync + 'static {
    /// Runs one ansible-playbook, sending its output line by line to `lines`.
    async fn run(
        &self,
        spec: &RunSpec,
        lines: mpsc::Sender<String>,
    ) -> Result<RunOutcome, RunError>;

    /// `ansible-playbook --syntax-check` of `playbook` (its YAML text).
    async fn syntax_check(&self, ansible_playbook: &Path, playbook: &str) -> Result<(), RunError>;
}

/// How the product runner confines ansible-playbook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sandbox {
    /// bubblewrap (`bwrap`: a path or a name in `PATH`), as `user` when not empty.
    Bwrap { bwrap: String, user: String },
    /// Unconfined (`[ansible] sandbox = "off"`).
    Off,
}

impl Sandbox {
    pub fn from_config(a: &crate::config::AnsibleConfig) -> Self {
        match a.sandbox {
            crate::config::AnsibleSandbox::Bwrap => Self::Bwrap {
                bwrap: a.bwrap.clone(),
                user: a.sandbox_user.clone(),
            },
            crate::config::AnsibleSandbox::Off => Self::Off,
        }
    }

    /// The confinement of a run now, or why there can be none (the job fails).
    pub fn resolve(&self) -> Result<Option<fluid_ansible::Confinement>, RunError> {
        let Self::Bwrap { bwrap, user } = self else {
            return Ok(None);
        };
        let (path, found) = resolve_binary(bwrap, Path::new("/usr/bin"));
        if !found {
            return Err(RunError::Unconfinable(format!(
                "the Ansible sandbox needs bubblewrap, and {} is not there: install it \
                 (apt-get install bubblewrap), or set [ansible] bwrap to its path; \
                 refusing to run ansible-playbook unconfined",
                path.display()
            )));
        }
        let user = match user.trim() {
            "" => None,
            name => {
                let u = fluid_ansible::runner::confine::lookup_user(name)?.ok_or_else(|| {
                    RunError::Unconfinable(format!(
                        "the Ansible sandbox user {name:?} does not exist: create it \
                         (adduser --system --group {name}; scripts/install-deps.sh does), \
                         or set [ansible] sandbox_user = \"\"; refusing to run ansible-playbook"
                    ))
                })?;
                Some(u)
            }
        };
        Ok(Some(fluid_ansible::Confinement { bwrap: path, user }))
    }
}

/// The product runner: ansible-playbook itself, confined as [`Sandbox`] says.
#[derive(Debug)]
pub struct AnsibleRunner {
    pub sandbox: Sandbox,
}

impl AnsibleRunner {
    /// A runner as `[ansible]` says; warns loudly when confinement is off.
    pub fn from_config(a: &crate::config::AnsibleConfig) -> Self {
        let sandbox = Sandbox::from_config(a);
        if sandbox == Sandbox::Off {
            tracing::warn!(
                "[ansible] sandbox = \"off\": ansible-playbook runs UNCONFINED, as the controller's user, \
                 with the controller's keys and database in reach of every playbook; set sandbox = \"bwrap\""
            );
        }
        Self { sandbox }
    }
}

#[async_trait]
impl PlaybookRunner for AnsibleRunner {
    async fn run(
        &self,
        spec: &RunSpec,
        lines: mpsc::Sender<String>,
    ) -> Result<RunOutcome, RunError> {
        let confine = self.sandbox.resolve()?;
        if confine.is_none() {
            let _ = lines
                .send(
                    "[fluid: WARNING: [ansible] sandbox = \"off\": this run is not confined]"
                        .into(),
                )
                .await;
        }
        let hosts = match confine {
            Some(_) => stage_keys(&spec.work_dir, spec.hosts.clone())?,
            None => spec.hosts.clone(),
        };
        let spec = RunSpec {
            confine,
            hosts,
            ..spec.clone()
        };
        fluid_ansible::run(&spec, lines).await
    }

    /// Confined like a run: the playbook was generated from a guest's files.
    async fn syntax_check(&self, ansible_playbook: &Path, playbook: &str) -> Result<(), RunError> {
        let confine = self.sandbox.resolve()?;
        fluid_ansible::syntax_check_text(ansible_playbook, playbook, confine.as_ref()).await
    }
}

/// The hosts with every private key outside the run's directory copied into it (0600):
/// a confined run sees its directory, not the controller's key files.
fn stage_keys(dir: &Path, hosts: Vec<InventoryHost>) -> Result<Vec<InventoryHost>, RunError> {
    let mut staged: Vec<(std::path::PathBuf, std::path::PathBuf)> = Vec::new();
    hosts
        .into_iter()
        .map(|mut h| {
            if let Some(key) = h.private_key.clone()
                && !key.starts_with(dir)
            {
                let to = match staged.iter().find(|(from, _)| *from == key) {
                    Some((_, to)) => to.clone(),
                    None => {
                        let to = dir.join(format!("target_key_{}", staged.len()));
                        let bytes = std::fs::read(&key).map_err(|e| {
                            RunError::Unconfinable(format!(
                                "reading the target's key {}: {e}",
                                key.display()
                            ))
                        })?;
                        crate::support::atomic::write_atomic(&to, &bytes, 0o600).map_err(|e| {
                            RunError::Io {
                                what: format!("writing {}", to.display()),
                                source: e,
                            }
                        })?;
                        staged.push((key.clone(), to.clone()));
                        to
                    }
                };
                h.private_key = Some(to);
            }
            Ok(h)
        })
        .collect()
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The ansible-playbook to run for `configured`: a path as it is; a bare name from
/// `PATH`, else from [`FALLBACK_BIN_DIR`]. `None` when none is installed (a bare name
/// that is nowhere comes back as the fallback path, so errors name a real place).
pub fn resolve_ansible_playbook(configured: &str) -> (PathBuf, bool) {
    resolve_binary(configured, Path::new(FALLBACK_BIN_DIR))
}

/// A binary: a path as it is; a bare name from `PATH`, else from `fallback`.
pub fn resolve_binary(configured: &str, fallback: &Path) -> (PathBuf, bool) {
    let configured = configured.trim();
    if configured.contains('/') {
        let p = PathBuf::from(configured);
        let ok = is_executable(&p);
        return (p, ok);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(configured);
            if is_executable(&p) {
                return (p, true);
            }
        }
    }
    let p = fallback.join(configured);
    let ok = is_executable(&p);
    (p, ok)
}

#[cfg(test)]
pub(crate) mod fake {
    //! A runner that records what it was asked and answers what the test says.

    use std::sync::Mutex;
    use std::sync::atomic::{AtomicI32, Ordering};

    use super::*;

    /// One recorded run.
    #[derive(Debug, Clone, PartialEq)]
    pub struct Invocation {
        pub check: bool,
        pub diff: bool,
        pub hosts: Vec<(String, String, u16, String)>,
        pub playbook: String,
        pub extra_args: Vec<String>,
    }

    #[derive(Debug, Default)]
    pub struct FakeRunner {
        pub runs: Mutex<Vec<Invocation>>,
        /// Exit code of the next runs (default 0).
        pub exit_code: AtomicI32,
        /// `--syntax-check` refuses with this output.
        pub syntax_error: Mutex<Option<String>>,
        /// How long a run takes after printing its lines.
        pub pause: Mutex<Option<std::time::Duration>>,
    }

    impl FakeRunner {
        pub fn runs(&self) -> Vec<Invocation> {
            self.runs.lock().map(|r| r.clone()).unwrap_or_default()
        }
    }

    #[async_trait]
    impl PlaybookRunner for FakeRunner {
        async fn run(
            &self,
            spec: &RunSpec,
            lines: mpsc::Sender<String>,
        ) -> Result<RunOutcome, RunError> {
            let playbook = std::fs::read_to_string(&spec.playbook_path).unwrap_or_default();
            let inv = Invocation {
                check: spec.check,
                diff: spec.diff,
                hosts: spec
                    .hosts
                    .iter()
                    .map(|h| (h.name.clone(), h.address.clone(), h.port, h.user.clone()))
                    .collect(),
                playbook,
                extra_args: spec.extra_args.clone(),
            };
            if let Ok(mut r) = self.runs.lock() {
                r.push(inv);
            }
            let mode = if spec.check { "check" } else { "apply" };
            for l in [format!("PLAY [{mode}]"), "TASK [fake] ok".to_owned()] {
                let _ = lines.send(l).await;
            }
            let pause = self.pause.lock().ok().and_then(|p| *p);
            if let Some(p) = pause {
                tokio::time::sleep(p).await;
            }
            Ok(RunOutcome {
                exit_code: Some(self.exit_code.load(Ordering::SeqCst)),
                timed_out: false,
                dropped_lines: 0,
            })
        }

        async fn syntax_check(&self, _: &Path, _: &str) -> Result<(), RunError> {
            match self.syntax_error.lock().ok().and_then(|e| e.clone()) {
                Some(output) => Err(RunError::SyntaxCheck { output }),
                None => Ok(()),
            }
        }
    }
}
