//! Ansible playbooks for fluid, as a library (no database, no HTTP):
//!
//! - [`model`]: a playbook (one play) with its tasks and handlers;
//! - [`validate`]: what a request may put in one (names, modules, host patterns,
//!   task keywords), with errors fit for a 400;
//! - [`yaml`]: the playbook as Ansible YAML;
//! - [`generate`]: a playbook from a sandbox's diff (packages, files, services,
//!   handlers, and the commands a human must review);
//! - [`runner`]: running `ansible-playbook` (a playbook on some hosts, streamed and
//!   time-limited; `--syntax-check`; `--version`).

pub mod error;
pub mod generate;
pub mod model;
pub mod runner;
pub mod validate;
pub mod yaml;

pub use error::{RunError, ValidationError, YamlError};
pub use generate::{ArtefactNeed, GenerateOptions, Generated, generate};
pub use model::{PlaybookDoc, TaskSpec};
pub use runner::{
    Confinement, InventoryHost, RunOutcome, RunSpec, find_ansible_playbook, run, syntax_check,
    syntax_check_text, version,
};
pub use yaml::to_yaml;
