//! File tasks: directories, copies (inline text, or from an artefact), links,
//! mode/owner changes and removals, sorted by path (a directory before its content).

use std::collections::{BTreeMap, BTreeSet};

use fluid_client::snapshots::FileEntry;
use serde_json::{Map, Value, json};

use super::paths::{self, Skip};
use super::{
    ArtefactNeed, Ctx, FileTask, GenerateOptions, Generated, group_of, ignore_in_check_mode,
    mode_of, owner_of, task_name,
};
use crate::model::{TaskSpec, literal};
use crate::validate::PARAMS_MAX_BYTES;

const COPY: &str = "ansible.builtin.copy";
const FILE: &str = "ansible.builtin.file";

/// The file tasks; review notes and artefacts go into `out`.
pub(super) fn tasks(
    ctx: &Ctx<'_>,
    texts: &BTreeMap<String, String>,
    opts: &GenerateOptions,
    out: &mut Generated,
) -> Vec<FileTask> {
    let mut tasks = Vec::new();
    let mut accounts = BTreeSet::new();

    let mut changed: Vec<(&FileEntry, bool)> = ctx
        .diff
        .files_added
        .iter()
        .map(|f| (f, true))
        .chain(ctx.diff.files_modified.iter().map(|f| (f, false)))
        .collect();
    changed.sort_by(|a, b| a.0.path.cmp(&b.0.path));

    for (f, added) in changed {
        match paths::skip(f) {
            Some(Skip::Accounts) => {
                accounts.insert(f.path.clone());
                continue;
            }
            Some(Skip::Package) => {
                let pkg = f.package.as_deref().unwrap_or_default();
                if ctx.packages_changed.contains(pkg) {
                    // The apt task brings it.
                    continue;
                }
                // Changed by hand while its package stayed as it was: reproduced, and
                // worth a look (the next upgrade of the package may overwrite it).
                out.review.push(format!(
                    "{} (from package {pkg}) was changed outside the package manager; \
                     the playbook copies it, and an upgrade of {pkg} may overwrite it",
                    f.path
                ));
            }
            Some(_) => continue,
            None => {}
        }
        if let Some(t) = change_task(ctx, f, added, texts, opts, out) {
            tasks.push(t);
        }
    }

    removals(ctx, &mut tasks, &mut accounts, out);

    if !accounts.is_empty() {
        let list: Vec<String> = accounts.into_iter().collect();
        out.review.push(format!(
            "accounts changed ({}): they are never copied; use ansible.builtin.user/group for users \
             or groups created by hand (those created by a package's install scripts come with the apt task)",
            list.join(", ")
        ));
    }
    tasks
}

fn owner_params(f: &FileEntry, p: &mut Map<String, Value>) {
    p.insert("mode".into(), json!(mode_of(&f.meta.mode)));
    p.insert("owner".into(), literal(owner_of(f)));
    p.insert("group".into(), literal(group_of(f)));
}

/// Whether a `--check` run may fail on this task only because earlier tasks were not
/// really applied: its directory is new, or its owner may be a new account.
fn may_fail_in_check_mode(ctx: &Ctx<'_>, f: &FileEntry, needs_parent: bool) -> bool {
    let new_account = ctx.accounts_changed && (owner_of(f) != "root" || group_of(f) != "root");
    new_account || (needs_parent && ctx.under_new_dir(&f.path))
}

fn finish(
    ctx: &Ctx<'_>,
    f: &FileEntry,
    task: TaskSpec,
    content_written: bool,
    needs_parent: bool,
) -> FileTask {
    let task = if may_fail_in_check_mode(ctx, f, needs_parent) {
        task.with_option("ignore_errors", ignore_in_check_mode())
    } else {
        task
    };
    FileTask {
        path: f.path.clone(),
        package: f.package.clone(),
        task,
        content_written,
    }
}

fn change_task(
    ctx: &Ctx<'_>,
    f: &FileEntry,
    added: bool,
    texts: &BTreeMap<String, String>,
    opts: &GenerateOptions,
    out: &mut Generated,
) -> Option<FileTask> {
    let path = f.path.as_str();
    if let Some(prev) = &f.previous
        && prev.kind != f.meta.kind
    {
        out.review.push(format!(
            "{path} changed from a {} to a {}: the task may fail where the old {} is still there",
            prev.kind, f.meta.kind, prev.kind
        ));
    }
    match f.meta.kind.as_str() {
        "dir" => {
            let attrs_changed = f.previous.as_ref().is_none_or(|p| {
                p.kind != "dir"
                    || p.mode != f.meta.mode
                    || p.uid != f.meta.uid
                    || p.gid != f.meta.gid
            });
            if !added && !attrs_changed {
                return None;
            }
            let mut p = Map::new();
            p.insert("path".into(), literal(path));
            p.insert("state".into(), json!("directory"));
            owner_params(f, &mut p);
            let verb = if added {
                "Create directory"
            } else {
                "Set mode and owner of directory"
            };
            let task = TaskSpec::new(task_name(&format!("{verb} {path}")), FILE, Value::Object(p));
            Some(finish(ctx, f, task, false, false))
        }
        "symlink" => {
            let Some(target) = f.meta.link_target.as_deref() else {
                out.review.push(format!(
                    "{path}: a symbolic link whose target is unknown; not reproduced"
                ));
                return None;
            };
            let task = TaskSpec::new(
                task_name(&format!("Link {path} -> {target}")),
                FILE,
                json!({
                    "src": literal(target),
                    "dest": literal(path),
                    "state": "link",
                    "force": true,
                }),
            );
            Some(finish(ctx, f, task, true, true))
        }
        "file" => file_task(ctx, f, added, texts, opts, out),
        other => {
            out.review.push(format!(
                "{path}: a special file ({other}) changed; not reproduced"
            ));
            None
        }
    }
}

fn file_task(
    ctx: &Ctx<'_>,
    f: &FileEntry,
    added: bool,
    texts: &BTreeMap<String, String>,
    opts: &GenerateOptions,
    out: &mut Generated,
) -> Option<FileTask> {
    let path = f.path.as_str();
    let same_content = !added
        && f.previous
            .as_ref()
            .is_some_and(|p| p.kind == "file" && p.sha256.is_some() && p.sha256 == f.meta.sha256);
    if same_content {
        let p = f.previous.as_ref()?;
        if p.mode == f.meta.mode && p.uid == f.meta.uid && p.gid == f.meta.gid {
            return None;
        }
        let mut params = Map::new();
        params.insert("path".into(), literal(path));
        owner_params(f, &mut params);
        let task = TaskSpec::new(
            task_name(&format!("Set mode and owner of {path}")),
            FILE,
            Value::Object(params),
        );
        return Some(finish(ctx, f, task, false, true));
    }

    let text = texts
        .get(path)
        .filter(|_| !f.binary && f.meta.size <= opts.text_limit_bytes);
    if let Some(text) = text {
        let mut params = Map::new();
        params.insert("dest".into(), literal(path));
        owner_params(f, &mut params);
        params.insert("content".into(), literal(text.as_str()));
        let params = Value::Object(params);
        let size = serde_json::to_vec(&params)
            .map(|b| b.len())
            .unwrap_or(usize::MAX);
        if size <= PARAMS_MAX_BYTES {
            let task = TaskSpec::new(task_name(&format!("Copy {path}")), COPY, params);
            return Some(finish(ctx, f, task, true, true));
        }
    }

    let Some(sha) = f.meta.sha256.as_deref() else {
        out.review.push(format!(
            "{path}: its content is not known (no text and no hash in the diff); not copied"
        ));
        return None;
    };
    let why = if f.binary {
        "binary".to_owned()
    } else {
        format!("large, {} bytes", f.meta.size)
    };
    let short: String = sha.chars().take(12).collect();
    let src = opts.artefact_dir.join(sha);
    let mut params = Map::new();
    params.insert("src".into(), literal(src.to_string_lossy().into_owned()));
    params.insert("dest".into(), literal(path));
    owner_params(f, &mut params);
    let task = TaskSpec::new(
        task_name(&format!(
            "Copy {path} ({why}, from artefact sha256:{short}…)"
        )),
        COPY,
        Value::Object(params),
    );
    if !out.artefacts.iter().any(|a| a.sha256 == sha) {
        out.artefacts.push(ArtefactNeed {
            path: path.to_owned(),
            sha256: sha.to_owned(),
            size: f.meta.size,
        });
    }
    out.review.push(format!(
        "{path} ({why}) is copied from the controller's artefact sha256:{sha}: check that it is meant to ship"
    ));
    Some(finish(ctx, f, task, true, true))
}

/// `file state=absent` per removed path; what a removed directory contained goes with it.
fn removals(
    ctx: &Ctx<'_>,
    tasks: &mut Vec<FileTask>,
    accounts: &mut BTreeSet<String>,
    out: &mut Generated,
) {
    let mut removed: Vec<&FileEntry> = ctx.diff.files_removed.iter().collect();
    removed.sort_by(|a, b| a.path.cmp(&b.path));
    let mut removed_dirs: Vec<&str> = Vec::new();
    for f in removed {
        let path = f.path.as_str();
        if removed_dirs.iter().any(|d| paths::under(path, d)) {
            continue;
        }
        match paths::skip(f) {
            Some(Skip::Accounts) => {
                accounts.insert(f.path.clone());
                continue;
            }
            Some(Skip::Package) => {
                let pkg = f.package.as_deref().unwrap_or_default();
                if ctx.packages_removed.contains(pkg) {
                    // The apt removal takes it away.
                    continue;
                }
                // Removed by hand while its package stays installed: reproduced; a
                // reinstall or upgrade of the package would bring it back.
                out.review.push(format!(
                    "{path} (from package {pkg}, still installed) was removed by hand; \
                     the playbook removes it, and an upgrade of {pkg} may restore it"
                ));
            }
            Some(_) => continue,
            None => {}
        }
        let is_dir = f.meta.kind == "dir";
        if is_dir {
            removed_dirs.push(path);
        }
        let name = if is_dir {
            format!("Remove directory {path} and its content")
        } else {
            format!("Remove {path}")
        };
        tasks.push(FileTask {
            path: f.path.clone(),
            package: f.package.clone(),
            task: TaskSpec::new(
                task_name(&name),
                FILE,
                json!({"path": literal(path), "state": "absent"}),
            ),
            content_written: true,
        });
    }
}
