//! An in-memory agent fleet behind [`AgentConnector`], for tests of the service logic.
//!
//! Exec: by default a command prints `ran: <command>` and exits 0; the files and access
//! operations (recognised by their `FLUID_OP` variable) act on an in-memory file map.
//! Tests replace the behaviour with [`FakeAgents::script_exec`]. Each Exec and Attach
//! opening is also recorded as the wire message the gRPC connector would send for it
//! (the model's `From`), so tests read what an agent receives.
//!
//! Attach: a toy shell that greets, echoes stdin, reports resizes as text, exits 0 on
//! a line containing `exit` and -1 ("hung up") when its input ends.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use std::sync::Arc;

use async_trait::async_trait;
use fluid_proto::model::{
    AttachOpen, CreateSandbox, EgressPolicy, Exec, HostStatus, ImageKind, ObservedState,
    PoolStatus, SandboxId, SandboxInfo, StartPath,
};
use fluid_proto::pb;
use futures::StreamExt as _;

use crate::agents::{
    AgentConnector, AgentError, AgentStatus, AgentTarget, AttachInput, AttachInputStream,
    AttachOutput, AttachStream, EgressState, ExecEvent, ExecExit, ExecStream, ImageInfo,
};

/// A scripted Exec: gets the request, answers the event stream.
pub type ExecScript = Arc<dyn Fn(Exec) -> ExecStream + Send + Sync>;

/// The agent's exec key in tests.
pub const AGENT_SSH_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl agent";

pub struct FakeAgents {
    pub images: Vec<String>,
    /// Sandboxes per host name.
    pub sandboxes: Mutex<HashMap<String, HashMap<String, SandboxInfo>>>,
    /// Hosts that do not answer.
    pub down: Mutex<HashSet<String>>,
    pub fail_create: AtomicBool,
    pub destroys: AtomicUsize,
    /// Every Exec received, as its wire request.
    pub execs: Mutex<Vec<pb::ExecRequest>>,
    /// Files of the sandboxes' in-memory file system (all sandboxes share it).
    pub files: Mutex<HashMap<String, Vec<u8>>>,
    pub exec_script: Mutex<Option<ExecScript>>,
    /// Answer Exec with this error (RESOURCE_EXHAUSTED, say) while set.
    pub exec_error: Mutex<Option<AgentError>>,
    /// The `ssh_user_ca_keys` of the last create.
    pub last_ca_keys: Mutex<Vec<String>>,
    /// Every Attach opening received, as its wire message.
    pub attaches: Mutex<Vec<pb::AttachOpen>>,
    /// Every Attach input received (all sessions).
    pub attach_inputs: Arc<Mutex<Vec<AttachInput>>>,
    /// The egress policy each sandbox has (from its create, then SetEgressPolicy).
    pub egress: Mutex<HashMap<String, EgressPolicy>>,
    /// How many SetEgressPolicy calls arrived.
    pub egress_sets: AtomicUsize,
    /// Snapshots, diffs, file reads, tunnels ([`snapshots`]).
    pub snap: snapshots::SnapshotFake,
    /// The warm pool every host reports in its status.
    pub pools: Mutex<Vec<PoolStatus>>,
}

// The fake's `SnapshotAgent` half.
mod snapshots;

impl Default for FakeAgents {
    fn default() -> Self {
        Self {
            images: vec!["debian-12".into()],
            sandboxes: Mutex::default(),
            down: Mutex::default(),
            fail_create: AtomicBool::new(false),
            destroys: AtomicUsize::new(0),
            execs: Mutex::default(),
            files: Mutex::default(),
            exec_script: Mutex::default(),
            exec_error: Mutex::default(),
            last_ca_keys: Mutex::default(),
            attaches: Mutex::default(),
            attach_inputs: Arc::default(),
            egress: Mutex::default(),
            egress_sets: AtomicUsize::new(0),
            snap: snapshots::SnapshotFake::default(),
            pools: Mutex::default(),
        }
    }
}

impl std::fmt::Debug for FakeAgents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeAgents").finish_non_exhaustive()
    }
}

const IP: Ipv4Addr = Ipv4Addr::new(192, 168, 122, 10);

/// A stream of the given events.
pub fn events(evs: Vec<ExecEvent>) -> ExecStream {
    futures::stream::iter(evs.into_iter().map(Ok)).boxed()
}

pub fn exit(code: i32) -> ExecEvent {
    ExecEvent::Exit(ExecExit {
        exit_code: code,
        duration_ms: 5,
        ..Default::default()
    })
}

fn started() -> ExecEvent {
    ExecEvent::Started {
        at_unix_ms: chrono::Utc::now().timestamp_millis(),
    }
}

impl FakeAgents {
    /// Replaces the Exec behaviour.
    pub fn script_exec(&self, f: impl Fn(Exec) -> ExecStream + Send + Sync + 'static) {
        if let Ok(mut s) = self.exec_script.lock() {
            *s = Some(Arc::new(f));
        }
    }

    /// The egress policy the fake enforces for `id`, if it has one.
    pub fn egress_of(&self, id: &str) -> Option<EgressPolicy> {
        self.egress.lock().ok()?.get(id).cloned()
    }

    fn egress_state(&self, id: &SandboxId) -> EgressState {
        let policy = self.egress_of(id.as_str()).unwrap_or_default();
        // Every domain resolves to one documentation address.
        let resolved = policy
            .domains()
            .map(|d| (d.to_owned(), vec![std::net::IpAddr::from([192, 0, 2, 7])]))
            .collect();
        EgressState { policy, resolved }
    }

    pub fn file(&self, path: &str) -> Option<Vec<u8>> {
        self.files.lock().ok()?.get(path).cloned()
    }

    pub fn put_file(&self, path: &str, content: &[u8]) {
        if let Ok(mut f) = self.files.lock() {
            f.insert(path.to_owned(), content.to_vec());
        }
    }

    /// The default Exec: file operations on the in-memory map, anything else echoes.
    fn default_exec(&self, req: &Exec) -> ExecStream {
        let env = |k: &str| {
            req.env
                .iter()
                .find(|(name, _)| name == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let path = env("FLUID_PATH");
        let fail = |code: i32, msg: &str| {
            events(vec![
                started(),
                ExecEvent::Stderr(msg.as_bytes().to_vec()),
                exit(code),
            ])
        };
        let Ok(mut files) = self.files.lock() else {
            return fail(1, "poisoned");
        };
        match env("FLUID_OP").as_str() {
            "read" => {
                let Some(content) = files.get(&path) else {
                    return fail(3, "No such file or directory");
                };
                let offset: usize = env("FLUID_OFFSET").parse().unwrap_or(0);
                let limit: usize = env("FLUID_LIMIT").parse().unwrap_or(0);
                let start = offset.min(content.len());
                let end = start.saturating_add(limit).min(content.len());
                let mut out = format!("{}\n", content.len()).into_bytes();
                out.extend_from_slice(&content[start..end]);
                events(vec![started(), ExecEvent::Stdout(out), exit(0)])
            }
            "write" => {
                let size = req.stdin.len();
                files.insert(path, req.stdin.clone());
                events(vec![
                    started(),
                    ExecEvent::Stdout(format!("{size}\n").into_bytes()),
                    exit(0),
                ])
            }
            "create" => {
                if files.contains_key(&path) {
                    return fail(5, "File exists");
                }
                let size = req.stdin.len();
                files.insert(path, req.stdin.clone());
                events(vec![
                    started(),
                    ExecEvent::Stdout(format!("{size}\n").into_bytes()),
                    exit(0),
                ])
            }
            "sshkey" => {
                let p = format!("/home/{}/.ssh/authorized_keys", env("FLUID_USER"));
                let entry = files.entry(p).or_default();
                entry.extend_from_slice(format!("{}\n", env("FLUID_KEY")).as_bytes());
                events(vec![started(), exit(0)])
            }
            "revoke" => {
                files.insert("/etc/ssh/fluid_revoked_keys".into(), req.stdin.clone());
                events(vec![started(), exit(0)])
            }
            _ => events(vec![
                started(),
                ExecEvent::Stdout(format!("ran: {}\n", req.command).into_bytes()),
                exit(0),
            ]),
        }
    }

    fn check_up(&self, t: &AgentTarget) -> Result<(), AgentError> {
        let down = self.down.lock().map_err(|_| fail(t, "poisoned"))?;
        if down.contains(&t.name) {
            return Err(AgentError::Unavailable {
                host: t.name.clone(),
                message: "connection refused".into(),
            });
        }
        Ok(())
    }

    /// Puts a sandbox on a host as if created behind the controller's back.
    pub fn plant(&self, host: &str, info: SandboxInfo) {
        if let Ok(mut all) = self.sandboxes.lock() {
            all.entry(host.to_owned())
                .or_default()
                .insert(info.id.to_string(), info);
        }
    }

    pub fn on_host(&self, host: &str) -> Vec<SandboxInfo> {
        self.sandboxes
            .lock()
            .map(|all| {
                all.get(host)
                    .map(|m| m.values().cloned().collect())
                    .unwrap_or_default()
            })
            .unwrap_or_default()
    }

    fn with<T>(
        &self,
        t: &AgentTarget,
        id: &SandboxId,
        f: impl FnOnce(&mut SandboxInfo) -> T,
    ) -> Result<T, AgentError> {
        self.check_up(t)?;
        let mut all = self.sandboxes.lock().map_err(|_| fail(t, "poisoned"))?;
        let s = all
            .entry(t.name.clone())
            .or_default()
            .get_mut(id.as_str())
            .ok_or_else(|| AgentError::NotFound {
                host: t.name.clone(),
                message: format!("no sandbox {id}"),
            })?;
        Ok(f(s))
    }
}

fn fail(t: &AgentTarget, m: &str) -> AgentError {
    AgentError::Failed {
        host: t.name.clone(),
        message: m.into(),
    }
}

pub fn info(id: &str, name: &str, state: ObservedState) -> SandboxInfo {
    SandboxInfo {
        id: SandboxId::parse("id", id).expect("test id"),
        name: fluid_proto::model::Name::parse("name", name).expect("test name"),
        image: fluid_proto::model::Name::parse("image", "debian-12").expect("image"),
        cpus: 1,
        memory_mb: 512,
        state,
        mac_address: "52:54:00:00:00:01".into(),
        ip_address: None,
        domain_uuid: String::new(),
        network: "default".into(),
        error: None,
        start_path: None,
    }
}

#[async_trait]
impl AgentConnector for FakeAgents {
    async fn exec(&self, t: &AgentTarget, req: Exec) -> Result<ExecStream, AgentError> {
        self.check_up(t)?;
        if let Some(e) = self.exec_error.lock().ok().and_then(|e| e.clone()) {
            return Err(e);
        }
        if let Ok(mut e) = self.execs.lock() {
            e.push(pb::ExecRequest::from(req.clone()));
        }
        let script = self.exec_script.lock().ok().and_then(|s| s.clone());
        Ok(match script {
            Some(f) => f(req),
            None => self.default_exec(&req),
        })
    }

    async fn attach(
        &self,
        t: &AgentTarget,
        open: AttachOpen,
        input: AttachInputStream,
    ) -> Result<AttachStream, AgentError> {
        self.check_up(t)?;
        if let Ok(mut a) = self.attaches.lock() {
            a.push(pb::AttachOpen::from(open.clone()));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(toy_shell(open, input, tx, self.attach_inputs.clone()));
        Ok(futures::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|o| (Ok(o), rx)) },
        )
        .boxed())
    }

    async fn status(&self, t: &AgentTarget) -> Result<AgentStatus, AgentError> {
        self.check_up(t)?;
        let status = HostStatus {
            host_name: t.name.clone(),
            agent_version: "0.1.0-fake".into(),
            virt_type: "qemu".into(),
            cpus_total: 8,
            cpus_reserved: 0,
            memory_mb_total: 8192,
            memory_mb_reserved: 0,
            memory_mb_free: 8192,
            sandboxes: 0,
            images: self.images.clone(),
            pools: self.pools.lock().map(|p| p.clone()).unwrap_or_default(),
            simulated: false,
        };
        Ok(AgentStatus {
            status,
            ssh_public_key: Some(AGENT_SSH_KEY.into()),
        })
    }

    async fn list_images(&self, t: &AgentTarget) -> Result<Vec<ImageInfo>, AgentError> {
        self.check_up(t)?;
        Ok(self
            .images
            .iter()
            .map(|i| ImageInfo {
                name: i.clone(),
                kind: ImageKind::Qcow2,
                disk_path: format!("/var/lib/fluid/images/{i}.qcow2"),
                uuid: String::new(),
                state: String::new(),
                persistent: false,
                available: true,
                error: None,
            })
            .collect())
    }

    async fn list_sandboxes(&self, t: &AgentTarget) -> Result<Vec<SandboxInfo>, AgentError> {
        self.check_up(t)?;
        Ok(self.on_host(&t.name))
    }

    async fn get_sandbox(
        &self,
        t: &AgentTarget,
        id: &SandboxId,
    ) -> Result<SandboxInfo, AgentError> {
        self.with(t, id, |s| s.clone())
    }

    async fn create_sandbox(
        &self,
        t: &AgentTarget,
        req: &CreateSandbox,
    ) -> Result<SandboxInfo, AgentError> {
        self.check_up(t)?;
        if let Ok(mut k) = self.last_ca_keys.lock() {
            k.clone_from(&req.ssh_user_ca_keys);
        }
        if let Ok(mut e) = self.egress.lock() {
            e.insert(req.id.to_string(), req.egress.clone());
        }
        if let (Some(from), Ok(mut f)) = (&req.from_snapshot, self.snap.forks.lock()) {
            f.push((req.id.clone(), from.clone()));
        }
        if let (Some(source), Ok(mut f)) = (&req.fork_of_running, self.snap.live_forks.lock()) {
            f.push((req.id.clone(), source.clone()));
        }
        if self.fail_create.load(Ordering::SeqCst) {
            return Err(fail(t, "qemu-img: disk full"));
        }
        let mut s = info(
            req.id.as_str(),
            req.name.as_str(),
            if req.start {
                ObservedState::Running
            } else {
                ObservedState::Created
            },
        );
        s.cpus = req.cpus;
        s.memory_mb = req.memory_mb;
        // Like an agent without a memory template: the first start cold-boots.
        s.start_path = req.start.then_some(StartPath::Boot);
        self.plant(&t.name, s.clone());
        Ok(s)
    }

    async fn start_sandbox(
        &self,
        t: &AgentTarget,
        id: &SandboxId,
    ) -> Result<SandboxInfo, AgentError> {
        self.with(t, id, |s| {
            s.state = ObservedState::Running;
            s.start_path.get_or_insert(StartPath::Boot);
            s.clone()
        })
    }

    async fn stop_sandbox(
        &self,
        t: &AgentTarget,
        id: &SandboxId,
        _force: bool,
    ) -> Result<SandboxInfo, AgentError> {
        self.with(t, id, |s| {
            s.state = ObservedState::Stopped;
            s.ip_address = None;
            s.clone()
        })
    }

    async fn destroy_sandbox(&self, t: &AgentTarget, id: &SandboxId) -> Result<bool, AgentError> {
        self.check_up(t)?;
        self.destroys.fetch_add(1, Ordering::SeqCst);
        let mut all = self.sandboxes.lock().map_err(|_| fail(t, "poisoned"))?;
        Ok(all
            .get_mut(&t.name)
            .and_then(|m| m.remove(id.as_str()))
            .is_some())
    }

    async fn wait_for_ip(
        &self,
        t: &AgentTarget,
        id: &SandboxId,
        _timeout_seconds: u32,
    ) -> Result<Option<Ipv4Addr>, AgentError> {
        self.with(t, id, |s| {
            if s.state == ObservedState::Running {
                s.ip_address = Some(IP);
            }
            s.ip_address
        })
    }

    async fn set_egress_policy(
        &self,
        t: &AgentTarget,
        id: &SandboxId,
        policy: &EgressPolicy,
    ) -> Result<EgressState, AgentError> {
        self.with(t, id, |_| ())?;
        self.egress_sets.fetch_add(1, Ordering::SeqCst);
        self.egress
            .lock()
            .map_err(|_| fail(t, "poisoned"))?
            .insert(id.to_string(), policy.clone());
        Ok(self.egress_state(id))
    }

    async fn get_egress_policy(
        &self,
        t: &AgentTarget,
        id: &SandboxId,
    ) -> Result<EgressState, AgentError> {
        self.with(t, id, |_| ())?;
        Ok(self.egress_state(id))
    }
}

/// The fake's interactive shell (see the module docs).
async fn toy_shell(
    open: AttachOpen,
    mut input: AttachInputStream,
    tx: tokio::sync::mpsc::Sender<AttachOutput>,
    seen: Arc<Mutex<Vec<AttachInput>>>,
) {
    let hello = format!("welcome {}\r\n", open.user);
    if tx
        .send(AttachOutput::Data(hello.into_bytes()))
        .await
        .is_err()
    {
        return;
    }
    let exit = loop {
        let Some(i) = input.next().await else {
            break AttachOutput::Exit {
                exit_code: -1,
                error: Some("hung up".into()),
            };
        };
        if let Ok(mut s) = seen.lock() {
            s.push(i.clone());
        }
        let out = match i {
            AttachInput::Stdin(b) if String::from_utf8_lossy(&b).contains("exit") => {
                break AttachOutput::Exit {
                    exit_code: 0,
                    error: None,
                };
            }
            AttachInput::Stdin(b) => b,
            AttachInput::Resize { cols, rows } => format!("[{cols}x{rows}]").into_bytes(),
        };
        if tx.send(AttachOutput::Data(out)).await.is_err() {
            return;
        }
    };
    let _ = tx.send(exit).await;
}

/// A fresh in-memory SSH user CA.
pub fn test_ca() -> Arc<crate::work::ssh_ca::SshCa> {
    Arc::new(crate::work::ssh_ca::SshCa::generate().expect("CA key"))
}
