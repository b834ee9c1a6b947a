//! An in-memory agent fleet behind [`AgentConnector`], for tests of the service logic.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use async_trait::async_trait;
use fluid_proto::model::{CreateSandbox, HostStatus, ObservedState, SandboxId, SandboxInfo};

use crate::agents::{AgentConnector, AgentError, AgentTarget, ImageInfo};

#[derive(Debug)]
pub(crate) struct FakeAgents {
    pub images: Vec<String>,
    /// Sandboxes per host name.
    pub sandboxes: Mutex<HashMap<String, HashMap<String, SandboxInfo>>>,
    /// Hosts that do not answer.
    pub down: Mutex<HashSet<String>>,
    pub fail_create: AtomicBool,
    pub destroys: AtomicUsize,
}

impl Default for FakeAgents {
    fn default() -> Self {
        Self {
            images: vec!["debian-12".into()],
            sandboxes: Mutex::default(),
            down: Mutex::default(),
            fail_create: AtomicBool::new(false),
            destroys: AtomicUsize::new(0),
        }
    }
}

const IP: Ipv4Addr = Ipv4Addr::new(192, 168, 122, 10);

impl FakeAgents {
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

pub(crate) fn info(id: &str, name: &str, state: ObservedState) -> SandboxInfo {
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
    }
}

#[async_trait]
impl AgentConnector for FakeAgents {
    async fn status(&self, t: &AgentTarget) -> Result<HostStatus, AgentError> {
        self.check_up(t)?;
        Ok(HostStatus {
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
        })
    }

    async fn list_images(&self, t: &AgentTarget) -> Result<Vec<ImageInfo>, AgentError> {
        self.check_up(t)?;
        Ok(self
            .images
            .iter()
            .map(|i| ImageInfo {
                name: i.clone(),
                source_vm: false,
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
}
