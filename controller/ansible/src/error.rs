//! The crate's errors: what callers branch on.

use std::path::PathBuf;

/// Input that is not a valid playbook, task or host pattern. The message names the
/// field and says what is accepted, so it can be returned as-is with a 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ValidationError {
    /// The offending field (`name`, `module`, `options.notify`, `tasks[2].params`, …).
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ValidationError {
    /// An error on `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The same error, its field prefixed (`tasks[2]` + `module` → `tasks[2].module`).
    pub fn within(self, prefix: &str) -> Self {
        Self {
            field: format!("{prefix}.{}", self.field),
            reason: self.reason,
        }
    }
}

/// Turning a playbook into YAML failed.
#[derive(Debug, thiserror::Error)]
pub enum YamlError {
    /// The playbook does not validate (a 400 when it came from a request).
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The YAML emitter failed (a bug, not bad input).
    #[error("emitting YAML: {0}")]
    Emit(String),
}

/// Running `ansible-playbook` failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The binary does not exist (or is not executable).
    #[error(
        "ansible-playbook not found at {path}: install ansible-core \
         (e.g. `python3 -m venv /opt/fluid-ansible && /opt/fluid-ansible/bin/pip install ansible-core`) \
         and point the controller at its ansible-playbook"
    )]
    NotInstalled {
        /// The path that was tried.
        path: PathBuf,
    },
    /// The run was asked for with values that cannot be written safely into an
    /// inventory (a host name with spaces, a template in an address, …).
    #[error("invalid run: {0}")]
    Invalid(String),
    /// ansible-playbook cannot be confined as configured (bwrap or the sandbox user
    /// missing): the run is refused rather than run unconfined.
    #[error("{0}")]
    Unconfinable(String),
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// `ansible-playbook --syntax-check` refused the playbook; `output` is what it said.
    #[error("the playbook fails ansible-playbook --syntax-check:\n{output}")]
    SyntaxCheck {
        /// ansible-playbook's stdout and stderr.
        output: String,
    },
    /// A short helper run (`--version`, `--syntax-check`) did not succeed or finish.
    #[error("{what} failed ({status}): {output}")]
    Command {
        /// What was run.
        what: String,
        /// Exit status or "timed out".
        status: String,
        /// Its output.
        output: String,
    },
}

impl RunError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}
