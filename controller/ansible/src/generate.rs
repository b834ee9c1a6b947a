//! A playbook from a diff: what changed in a sandbox, as tasks a human can review
//! before they reach production.
//!
//! Order: APT sources and keys (so packages from an added repository install), then
//! packages, files, services, and last the commands that could not be expressed
//! declaratively (shell tasks tagged `fluid_review` + `never`: they run only when
//! asked for with `--tags fluid_review`). Handlers restart a service whose
//! configuration was changed. Anything left out that a human should know about is a
//! line in [`Generated::review`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use fluid_client::snapshots::{DiffJson, FileEntry, ServiceEntry};
use serde_json::{Value, json};

use crate::model::TaskSpec;

mod commands;
mod files;
mod handlers;
mod packages;
mod paths;
mod services;
#[cfg(test)]
mod tests;

pub use commands::{CommandClass, classify_command};

/// Tag of the tasks a human must review; they also carry `never`.
pub const REVIEW_TAG: &str = "fluid_review";
/// Value of `ignore_errors` on tasks that may fail in a `--check` run only because an
/// earlier task (a package, a directory) was not really applied.
pub const IGNORE_IN_CHECK_MODE: &str = "{{ ansible_check_mode }}";

/// How to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerateOptions {
    /// Where the controller keeps binary and large files, each named by its SHA-256
    /// (hex); `copy` tasks of such files read `src: <artefact_dir>/<sha256>`.
    pub artefact_dir: PathBuf,
    /// Text files larger than this are copied from an artefact, not inlined.
    pub text_limit_bytes: u64,
}

/// A file the controller must store as `<artefact_dir>/<sha256>` (from the diff's
/// "after" side) for the playbook to run. One per distinct `sha256`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtefactNeed {
    /// A path in the sandbox with this content.
    pub path: String,
    /// SHA-256 of the content, hex.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// What [`generate`] produced.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Generated {
    /// Tasks, in order.
    pub tasks: Vec<TaskSpec>,
    /// Handlers (`handler: true`), sorted by name.
    pub handlers: Vec<TaskSpec>,
    /// What a human must look at, one sentence each.
    pub review: Vec<String>,
    /// Artefacts the tasks copy from.
    pub artefacts: Vec<ArtefactNeed>,
}

/// The tasks, handlers, review notes and artefacts that reproduce `diff`.
/// `after_texts` holds the content after the change of text files (path → text);
/// a file changed in content without an entry there is copied from an artefact.
pub fn generate(
    diff: &DiffJson,
    after_texts: &BTreeMap<String, String>,
    opts: &GenerateOptions,
) -> Generated {
    let ctx = Ctx::new(diff);
    let mut out = Generated::default();

    let pkg_tasks = packages::tasks(diff);
    let mut file_tasks = files::tasks(&ctx, after_texts, opts, &mut out);
    let handlers = handlers::attach(&ctx, &mut file_tasks);
    let unit_files_copied = file_tasks
        .iter()
        .any(|f| f.content_written && paths::is_unit_file(&f.path));
    let service_tasks = services::tasks(&ctx, unit_files_copied);
    let (review_tasks, review_lines) = commands::review_tasks(&diff.commands_run);

    let (apt_config, other_files): (Vec<_>, Vec<_>) = file_tasks
        .into_iter()
        .partition(|f| paths::is_apt_config(&f.path));
    out.tasks.extend(apt_config.into_iter().map(|f| f.task));
    out.tasks.extend(pkg_tasks);
    out.tasks.extend(other_files.into_iter().map(|f| f.task));
    out.tasks.extend(service_tasks);
    out.tasks.extend(review_tasks);
    out.handlers = handlers;
    out.review.extend(review_lines);
    out
}

/// What the parts of the generator look up in the diff.
struct Ctx<'a> {
    diff: &'a DiffJson,
    /// Packages added, upgraded or removed (by name).
    packages_changed: BTreeSet<&'a str>,
    packages_removed: BTreeSet<&'a str>,
    /// Paths of `files_added`.
    added_paths: BTreeSet<&'a str>,
    /// Directories among `files_added`: they do not exist before the playbook runs.
    added_dirs: BTreeSet<&'a str>,
    /// `services_changed` by unit name.
    services: BTreeMap<&'a str, &'a ServiceEntry>,
    /// An account database changed (users or groups may be new).
    accounts_changed: bool,
}

impl<'a> Ctx<'a> {
    fn new(diff: &'a DiffJson) -> Self {
        let packages_changed = diff
            .packages_added
            .iter()
            .chain(&diff.packages_removed)
            .map(|p| p.name.as_str())
            .chain(diff.packages_upgraded.iter().map(|p| p.name.as_str()))
            .collect();
        let all_files = || {
            diff.files_added
                .iter()
                .chain(&diff.files_modified)
                .chain(&diff.files_removed)
        };
        Self {
            diff,
            packages_changed,
            packages_removed: diff
                .packages_removed
                .iter()
                .map(|p| p.name.as_str())
                .collect(),
            added_paths: diff.files_added.iter().map(|f| f.path.as_str()).collect(),
            added_dirs: diff
                .files_added
                .iter()
                .filter(|f| f.meta.kind == "dir")
                .map(|f| f.path.as_str())
                .collect(),
            services: diff
                .services_changed
                .iter()
                .map(|s| (s.name.as_str(), s))
                .collect(),
            accounts_changed: all_files().any(|f| paths::is_account_db(&f.path)),
        }
    }

    /// True when a directory above `path` is new (created by a package or by an
    /// earlier task): in a `--check` run it does not exist yet.
    fn under_new_dir(&self, path: &str) -> bool {
        paths::ancestors(path).any(|a| self.added_dirs.contains(a))
    }
}

/// A task of the files section, with the path it is about.
struct FileTask {
    path: String,
    /// The package owning the path (a modified conffile), if any.
    package: Option<String>,
    task: TaskSpec,
    /// Writes content or a link, or removes: a change a service's configuration may see.
    content_written: bool,
}

/// A task name: one line, at most 256 characters, and never a template (a path that
/// holds `{{` must not be evaluated when Ansible prints the name).
fn task_name(s: &str) -> String {
    let one_line: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let defanged = one_line
        .replace("{{", "{ {")
        .replace("{%", "{ %")
        .replace("{#", "{ #");
    truncate_chars(&defanged, 256)
}

/// `s` cut to at most `max` characters, ending in `…` when cut.
fn truncate_chars(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// `ignore_errors` for tasks that can only fail in check mode.
fn ignore_in_check_mode() -> Value {
    json!(IGNORE_IN_CHECK_MODE)
}

/// Owner (or group) name of an entry, or its numeric id when the name is unknown.
fn owner_of(f: &FileEntry) -> String {
    if f.meta.owner.is_empty() {
        f.meta.uid.to_string()
    } else {
        f.meta.owner.clone()
    }
}

fn group_of(f: &FileEntry) -> String {
    if f.meta.group.is_empty() {
        f.meta.gid.to_string()
    } else {
        f.meta.group.clone()
    }
}

/// The mode as four octal digits (`644` → `0644`).
fn mode_of(mode: &str) -> String {
    if mode.len() < 4 && !mode.is_empty() && mode.bytes().all(|b| b.is_ascii_digit()) {
        format!("{mode:0>4}")
    } else {
        mode.to_owned()
    }
}
