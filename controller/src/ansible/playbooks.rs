//! Ansible playbooks: the store's rows rendered as YAML. Every change is validated with
//! `fluid_ansible` (a bad name, module or keyword is a 400), stored, and then the
//! playbook's file `<data_dir>/playbooks/<name>.yml` is rewritten (a temporary file and
//! a rename, so a reader never sees half a playbook); a delete removes it. Changes are
//! serialised per controller so files are written in the order the rows changed.
//!
//! A playbook has an owner: the agent id of the token that created it (a generated
//! one: its source sandbox's agent), or none when an operator or admin created it. A
//! caller scoped to an agent (an `agent` token, a scoped `readonly` one) reads, edits,
//! deletes, exports, verifies and runs only its own agent's playbooks: another's is a
//! 403 (like another agent's sandbox), and is left out of lists.
//!
//! Content from an `agent` or `readonly` token is untrusted: on top of the ordinary
//! validation, [`fluid_ansible::validate::untrusted`] refuses anything that would run
//! on the controller host or be templated there (delegation, `connection`,
//! `check_mode`, controller-side modules, `ansible_*` variables, templates and
//! lookups), with a 400 naming the field. Operators and admins are trusted with the
//! whole of Ansible (their playbooks still run in the confined runner).

use std::path::PathBuf;
use std::sync::Arc;

use chrono::Utc;
use fluid_ansible::{PlaybookDoc, TaskSpec};
use fluid_client::ansible::{
    CreatePlaybookRequest, CreateTaskRequest, Playbook, PlaybookWithTasks, Task, UpdateTaskRequest,
};

use crate::error::{ErrorKind, ServiceError};
use crate::governance::auth::trusted;
use crate::governance::auth::{self, Caller, Permission};
use crate::store::{PlaybookRecord, Store, StoreError, TaskRecord, TaskWrite};
use crate::support::atomic::write_atomic;
use crate::support::ids::new_id;

/// Default `hosts` of a playbook.
pub const DEFAULT_HOSTS: &str = "all";

/// A playbook and its tasks, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub playbook: PlaybookRecord,
    pub tasks: Vec<TaskRecord>,
}

impl Stored {
    /// The document `fluid_ansible` renders.
    pub fn doc(&self) -> PlaybookDoc {
        PlaybookDoc::from_tasks(
            self.playbook.name.clone(),
            self.playbook.hosts.clone(),
            self.playbook.r#become,
            self.tasks.iter().map(|t| TaskSpec::from_api(&t.to_api())),
        )
    }

    /// The playbook as YAML.
    pub fn yaml(&self) -> Result<String, ServiceError> {
        render(&self.doc())
    }
}

/// `doc` as YAML; a document that does not validate is a 400.
pub fn render(doc: &PlaybookDoc) -> Result<String, ServiceError> {
    fluid_ansible::to_yaml(doc).map_err(|e| match e {
        fluid_ansible::YamlError::Invalid(v) => ServiceError::Invalid(v.to_string()),
        other => {
            tracing::error!(playbook = %doc.name, error = %other, "rendering a playbook");
            ServiceError::Internal(other.to_string())
        }
    })
}

/// Params as stored: absent or null is `{}`.
fn params_of(v: Option<serde_json::Value>) -> serde_json::Value {
    match v {
        None | Some(serde_json::Value::Null) => serde_json::Value::Object(Default::default()),
        Some(v) => v,
    }
}

/// Who a new playbook belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The creating token's agent id (scoped callers see only their own); `None` for
    /// an operator's or admin's playbook.
    pub agent_id: Option<String>,
    /// The creating token's name (or what created it).
    pub created_by: String,
}

pub struct PlaybookService {
    store: Arc<dyn Store>,
    /// `<data_dir>/playbooks`.
    dir: PathBuf,
    /// `<data_dir>/artifacts`: the only `src` an untrusted caller may name.
    artefact_dir: String,
    /// Held from a change's write to the store to its file's rename.
    writes: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for PlaybookService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlaybookService")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl PlaybookService {
    pub fn new(store: Arc<dyn Store>, data_dir: &std::path::Path) -> Self {
        Self {
            store,
            dir: data_dir.join("playbooks"),
            artefact_dir: data_dir.join("artifacts").display().to_string(),
            writes: tokio::sync::Mutex::new(()),
        }
    }

    /// Where a playbook's YAML file lives.
    pub fn file_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.yml"))
    }

    fn api(&self, p: &PlaybookRecord) -> Playbook {
        p.to_api(self.file_path(&p.name).display().to_string())
    }

    /// Whether `caller` may see a playbook: a scoped caller only its own agent's.
    fn check_visible(&self, caller: &Caller, p: &PlaybookRecord) -> Result<(), ServiceError> {
        if caller.scope().is_none() {
            return Ok(());
        }
        auth::check_owner(
            caller,
            p.owner_agent_id.as_deref().unwrap_or_default(),
            &format!("playbook {:?}", p.name),
        )?;
        Ok(())
    }

    /// Checks content `caller` wrote: untrusted callers get the stricter rules.
    pub fn check_content(&self, caller: &Caller, doc: &PlaybookDoc) -> Result<(), ServiceError> {
        if !trusted(caller) {
            fluid_ansible::validate::check_untrusted_playbook(doc, &self.artefact_dir)?;
        }
        Ok(())
    }

    fn check_task(&self, caller: &Caller, t: &TaskSpec) -> Result<(), ServiceError> {
        if !trusted(caller) {
            fluid_ansible::validate::check_untrusted_task(t, &self.artefact_dir)?;
        }
        Ok(())
    }

    /// Writes the playbook's file (the caller holds `writes`).
    async fn write_file(&self, s: &Stored) -> Result<String, ServiceError> {
        let yaml = s.yaml()?;
        let path = self.file_path(&s.playbook.name);
        let dir = self.dir.clone();
        let text = yaml.clone();
        tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(&dir)?;
            write_atomic(&path, text.as_bytes(), 0o640)
        })
        .await
        .map_err(|e| ServiceError::Internal(format!("writing a playbook file: {e}")))?
        .map_err(|e| {
            let path = self.file_path(&s.playbook.name);
            tracing::error!(path = %path.display(), error = %e, "writing a playbook file");
            ServiceError::Internal(format!(
                "the change is stored, but writing {} failed: {e}",
                path.display()
            ))
        })?;
        Ok(yaml)
    }

    /// The playbook named `name` and its tasks (404 when unknown).
    pub async fn stored(&self, name: &str) -> Result<Stored, ServiceError> {
        fluid_ansible::validate::validate_playbook_name(name)?;
        let playbook = self
            .store
            .get_playbook(name)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("playbook {name:?} not found")))?;
        let tasks = self.store.list_tasks(&playbook.id).await?;
        Ok(Stored { playbook, tasks })
    }

    /// [`Self::stored`], for a caller that must be allowed to see it.
    pub async fn stored_for(&self, caller: &Caller, name: &str) -> Result<Stored, ServiceError> {
        let s = self.stored(name).await?;
        self.check_visible(caller, &s.playbook)?;
        Ok(s)
    }

    /// A stored playbook in its API shape.
    pub fn view(&self, s: &Stored) -> PlaybookWithTasks {
        PlaybookWithTasks {
            playbook: self.api(&s.playbook),
            tasks: s.tasks.iter().map(TaskRecord::to_api).collect(),
        }
    }

    pub async fn create(
        &self,
        caller: &Caller,
        req: &CreatePlaybookRequest,
    ) -> Result<Playbook, ServiceError> {
        auth::check(caller, Permission::Playbooks)?;
        let hosts = req.hosts.as_deref().unwrap_or(DEFAULT_HOSTS).trim();
        let r#become = req.r#become.unwrap_or(true);
        self.check_content(
            caller,
            &PlaybookDoc::from_tasks(req.name.clone(), hosts, r#become, []),
        )?;
        let owner = Owner {
            agent_id: caller.scope().map(str::to_owned),
            created_by: caller.name.clone(),
        };
        let s = self
            .create_stored(&req.name, hosts, r#become, None, owner, Vec::new())
            .await?;
        Ok(self.api(&s.playbook))
    }

    /// Creates a playbook with its tasks and handlers (validated as a whole) and
    /// writes its file: what a generate stores.
    pub async fn create_stored(
        &self,
        name: &str,
        hosts: &str,
        r#become: bool,
        source: Option<fluid_client::ansible::PlaybookSource>,
        owner: Owner,
        specs: Vec<TaskSpec>,
    ) -> Result<Stored, ServiceError> {
        fluid_ansible::validate::validate_playbook_name(name)?;
        fluid_ansible::validate::validate_hosts(hosts)?;
        let now = Utc::now();
        let playbook = PlaybookRecord {
            id: new_id("PBK-"),
            name: name.to_owned(),
            hosts: hosts.to_owned(),
            r#become,
            source,
            verification: None,
            owner_agent_id: owner.agent_id,
            created_by: Some(owner.created_by),
            created_at: now,
            updated_at: now,
        };
        let doc = PlaybookDoc::from_tasks(name, hosts, r#become, specs);
        fluid_ansible::validate::validate_playbook(&doc)?;
        let tasks: Vec<TaskRecord> = doc
            .tasks
            .iter()
            .chain(&doc.handlers)
            .enumerate()
            .map(|(i, t)| TaskRecord {
                id: new_id("TSK-"),
                playbook_id: playbook.id.clone(),
                position: i64::try_from(i).unwrap_or(i64::MAX),
                name: t.name.clone(),
                module: t.module.clone(),
                params: t.params.clone(),
                options: serde_json::Value::Object(t.options.clone()),
                handler: t.handler,
                created_at: now,
            })
            .collect();
        let _w = self.writes.lock().await;
        self.store
            .create_playbook(&playbook, &tasks)
            .await
            .map_err(|e| match e {
                StoreError::Conflict(_) => {
                    ServiceError::Conflict(format!("playbook {name:?} already exists"))
                }
                e => e.into(),
            })?;
        let s = Stored { playbook, tasks };
        self.write_file(&s).await?;
        tracing::info!(playbook = %name, tasks = s.tasks.len(), "playbook created");
        Ok(s)
    }

    pub async fn get(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<PlaybookWithTasks, ServiceError> {
        auth::check(caller, Permission::Read)?;
        Ok(self.view(&self.stored_for(caller, name).await?))
    }

    /// A page of the playbooks the caller may see, and their total.
    pub async fn list(
        &self,
        caller: &Caller,
        limit: u32,
        offset: u64,
    ) -> Result<(Vec<Playbook>, u64), ServiceError> {
        auth::check(caller, Permission::Read)?;
        let (rows, mut total) = self.store.list_playbooks(limit, offset).await?;
        let mut out = Vec::with_capacity(rows.len());
        for p in rows {
            match self.check_visible(caller, &p) {
                Ok(()) => out.push(self.api(&p)),
                Err(e) if e.kind() == ErrorKind::Forbidden => total = total.saturating_sub(1),
                Err(e) => return Err(e),
            }
        }
        Ok((out, total))
    }

    pub async fn delete(&self, caller: &Caller, name: &str) -> Result<(), ServiceError> {
        auth::check(caller, Permission::Playbooks)?;
        let s = self.stored_for(caller, name).await?;
        let _w = self.writes.lock().await;
        if !self.store.delete_playbook(name).await? {
            return Err(ServiceError::NotFound(format!(
                "playbook {name:?} not found"
            )));
        }
        let path = self.file_path(&s.playbook.name);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "removing a deleted playbook's file")
            }
        }
        tracing::info!(playbook = %name, "playbook deleted");
        Ok(())
    }

    pub async fn export(&self, caller: &Caller, name: &str) -> Result<String, ServiceError> {
        auth::check(caller, Permission::Read)?;
        self.stored_for(caller, name).await?.yaml()
    }

    /// Checks that the playbook with `changed` in place of its tasks still renders, so
    /// a change that would make it invalid (too many tasks, …) is refused up front.
    fn check_whole(s: &Stored, changed: Vec<TaskRecord>) -> Result<(), ServiceError> {
        let whole = Stored {
            playbook: s.playbook.clone(),
            tasks: changed,
        };
        fluid_ansible::validate::validate_playbook(&whole.doc())?;
        Ok(())
    }

    /// After a task change: re-reads the playbook and rewrites its file.
    async fn rewrite(&self, name: &str) -> Result<(), ServiceError> {
        let s = self.stored(name).await?;
        self.write_file(&s).await?;
        Ok(())
    }

    fn task_result(w: TaskWrite, name: &str, task_id: &str) -> Result<TaskRecord, ServiceError> {
        match w {
            TaskWrite::Done(t) => Ok(t),
            TaskWrite::NoPlaybook => Err(ServiceError::NotFound(format!(
                "playbook {name:?} not found"
            ))),
            TaskWrite::NoTask => Err(ServiceError::NotFound(format!(
                "task {task_id} not found in playbook {name:?}"
            ))),
        }
    }

    pub async fn add_task(
        &self,
        caller: &Caller,
        name: &str,
        req: CreateTaskRequest,
    ) -> Result<Task, ServiceError> {
        auth::check(caller, Permission::Playbooks)?;
        let s = self.stored_for(caller, name).await?;
        let spec = TaskSpec {
            name: req.name.trim().to_owned(),
            module: req.module.trim().to_owned(),
            params: params_of(req.params),
            options: fluid_ansible::validate::options_object(req.options.as_ref())?,
            handler: req.handler.unwrap_or(false),
        };
        fluid_ansible::validate::validate_task(&spec)?;
        self.check_task(caller, &spec)?;
        let now = Utc::now();
        let rec = TaskRecord {
            id: new_id("TSK-"),
            playbook_id: s.playbook.id.clone(),
            position: i64::try_from(s.tasks.len()).unwrap_or(i64::MAX),
            name: spec.name,
            module: spec.module,
            params: spec.params,
            options: serde_json::Value::Object(spec.options),
            handler: spec.handler,
            created_at: now,
        };
        let mut all = s.tasks.clone();
        all.push(rec.clone());
        Self::check_whole(&s, all)?;
        let _w = self.writes.lock().await;
        let t = Self::task_result(self.store.add_task(&rec, now).await?, name, &rec.id)?;
        self.rewrite(name).await?;
        Ok(t.to_api())
    }

    pub async fn update_task(
        &self,
        caller: &Caller,
        name: &str,
        task_id: &str,
        req: UpdateTaskRequest,
    ) -> Result<Task, ServiceError> {
        auth::check(caller, Permission::Playbooks)?;
        if req.name.is_none()
            && req.module.is_none()
            && req.params.is_none()
            && req.options.is_none()
        {
            return Err(ServiceError::Invalid(
                "give at least one of name, module, params, options".into(),
            ));
        }
        let s = self.stored_for(caller, name).await?;
        let mut rec = s
            .tasks
            .iter()
            .find(|t| t.id == task_id)
            .cloned()
            .ok_or_else(|| {
                ServiceError::NotFound(format!("task {task_id} not found in playbook {name:?}"))
            })?;
        if let Some(n) = req.name {
            rec.name = n.trim().to_owned();
        }
        if let Some(m) = req.module {
            rec.module = m.trim().to_owned();
        }
        if let Some(p) = req.params {
            rec.params = params_of(Some(p));
        }
        if req.options.is_some() {
            rec.options = serde_json::Value::Object(fluid_ansible::validate::options_object(
                req.options.as_ref(),
            )?);
        }
        let spec = TaskSpec::from_api(&rec.to_api());
        fluid_ansible::validate::validate_task(&spec)?;
        self.check_task(caller, &spec)?;
        let all = s
            .tasks
            .iter()
            .map(|t| {
                if t.id == rec.id {
                    rec.clone()
                } else {
                    t.clone()
                }
            })
            .collect();
        Self::check_whole(&s, all)?;
        let _w = self.writes.lock().await;
        let t = Self::task_result(
            self.store.update_task(&rec, Utc::now()).await?,
            name,
            task_id,
        )?;
        self.rewrite(name).await?;
        Ok(t.to_api())
    }

    pub async fn delete_task(
        &self,
        caller: &Caller,
        name: &str,
        task_id: &str,
    ) -> Result<Task, ServiceError> {
        auth::check(caller, Permission::Playbooks)?;
        let s = self.stored_for(caller, name).await?;
        let _w = self.writes.lock().await;
        let t = Self::task_result(
            self.store
                .delete_task(&s.playbook.id, task_id, Utc::now())
                .await?,
            name,
            task_id,
        )?;
        self.rewrite(name).await?;
        Ok(t.to_api())
    }

    /// Puts the tasks in the order of `task_ids`, which must name each of them
    /// exactly once.
    pub async fn reorder(
        &self,
        caller: &Caller,
        name: &str,
        task_ids: &[String],
    ) -> Result<PlaybookWithTasks, ServiceError> {
        auth::check(caller, Permission::Playbooks)?;
        let s = self.stored_for(caller, name).await?;
        check_order(&s.tasks, task_ids)?;
        let _w = self.writes.lock().await;
        if !self
            .store
            .reorder_tasks(&s.playbook.id, task_ids, Utc::now())
            .await?
        {
            return Err(ServiceError::Conflict(format!(
                "the tasks of playbook {name:?} changed meanwhile; read them and try again"
            )));
        }
        let s = self.stored(name).await?;
        self.write_file(&s).await?;
        Ok(self.view(&s))
    }

    /// Stores a verification's result on the playbook (when it still exists).
    pub async fn set_verification(
        &self,
        name: &str,
        v: &fluid_client::ansible::Verification,
    ) -> Result<(), ServiceError> {
        if !self
            .store
            .set_playbook_verification(name, v, Utc::now())
            .await?
        {
            tracing::info!(playbook = %name, "verified playbook no longer exists");
        }
        Ok(())
    }
}

/// `ids` must name every task exactly once.
fn check_order(tasks: &[TaskRecord], ids: &[String]) -> Result<(), ServiceError> {
    let mut seen = std::collections::HashSet::new();
    for id in ids {
        if !seen.insert(id.as_str()) {
            return Err(ServiceError::Invalid(format!(
                "task_ids: {id} is listed twice"
            )));
        }
        if !tasks.iter().any(|t| &t.id == id) {
            return Err(ServiceError::Invalid(format!(
                "task_ids: {id} is not a task of this playbook"
            )));
        }
    }
    if let Some(missing) = tasks.iter().find(|t| !seen.contains(t.id.as_str())) {
        return Err(ServiceError::Invalid(format!(
            "task_ids: must list every task exactly once; {} is missing",
            missing.id
        )));
    }
    Ok(())
}
