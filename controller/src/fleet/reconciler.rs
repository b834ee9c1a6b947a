//! Closes the gap between intent (the store) and what agents observe. For every online
//! host, each tick:
//! - sandboxes on the agent that the store does not know, or knows as DESTROYED, are
//!   orphans: destroyed on the agent;
//! - live rows placed on the host but missing from its inventory for longer than a grace
//!   period are marked ERROR ("lost");
//! - observed state changes (RUNNING ↔ STOPPED, ERROR) and IP addresses are written back;
//! - each RUNNING or STOPPED sandbox's egress allow-list (intent) is compared with the
//!   one its agent enforces (`GetEgressPolicy`, a small call per settled sandbox per
//!   tick, at most [`EGRESS_CHECKS`] at once) and, when they differ, the stored one is
//!   re-read and pushed: after a PUT the agent missed, or an agent that lost its state.
//!
//! Writes are compare-and-set on the state the tick read, so a concurrent API operation
//! wins over a stale observation.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use fluid_client::types::{HostState, SandboxState};
use fluid_proto::model::{SandboxId, SandboxInfo};
use futures::StreamExt as _;
use futures::future::join_all;

use crate::agents::{AgentConnector, AgentTarget};
use crate::agents::{api_start_path, observed_state};
use crate::store::{HostRecord, SandboxRecord, SandboxUpdate, Store, StoreError};

pub struct Reconciler {
    store: Arc<dyn Store>,
    agents: Arc<dyn AgentConnector>,
    /// How long a settled row may be missing from its host before it is "lost".
    grace: Duration,
    /// The same for a row whose create or start may still be in flight.
    in_flight_grace: Duration,
}

impl std::fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconciler")
            .field("grace", &self.grace)
            .finish_non_exhaustive()
    }
}

/// Egress comparisons in flight per host.
pub const EGRESS_CHECKS: usize = 8;

/// Default grace period before a missing sandbox is declared lost.
pub const LOST_GRACE: Duration = Duration::from_secs(60);

impl Reconciler {
    pub fn new(
        store: Arc<dyn Store>,
        agents: Arc<dyn AgentConnector>,
        grace: Duration,
        in_flight_grace: Duration,
    ) -> Self {
        Self {
            store,
            agents,
            grace,
            in_flight_grace,
        }
    }

    pub async fn tick(&self) -> Result<(), StoreError> {
        let hosts = self.store.list_hosts().await?;
        let online = hosts.iter().filter(|h| h.state == HostState::Online);
        let results = join_all(online.map(|h| self.reconcile_host(h))).await;
        results.into_iter().collect()
    }

    async fn reconcile_host(&self, h: &HostRecord) -> Result<(), StoreError> {
        let target = AgentTarget::from(h);
        let inventory = match self.agents.list_sandboxes(&target).await {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(host = %h.name, error = %e, "no inventory this round");
                return Ok(());
            }
        };
        let rows = self.store.sandboxes_on_host(&h.name).await?;
        let by_id: HashMap<&str, &SandboxRecord> =
            rows.iter().map(|r| (r.id.as_str(), r)).collect();
        for s in &inventory {
            let row = match by_id.get(s.id.as_str()) {
                Some(r) => Some((*r).clone()),
                None => self.store.get_sandbox(s.id.as_str()).await?,
            };
            match row {
                None => {
                    self.destroy_orphan(&target, s, "unknown to the store")
                        .await
                }
                Some(r) if r.state == SandboxState::Destroyed => {
                    self.destroy_orphan(&target, s, "destroyed in the store")
                        .await
                }
                Some(r) if r.host_name.as_deref() == Some(h.name.as_str()) => {
                    self.observe(&r, s).await?
                }
                Some(_) => {}
            }
        }
        let seen: std::collections::HashSet<&str> =
            inventory.iter().map(|s| s.id.as_str()).collect();
        let now = Utc::now();
        for r in rows
            .iter()
            .filter(|r| r.is_live() && !seen.contains(r.id.as_str()))
        {
            let grace = match r.state {
                SandboxState::Created | SandboxState::Starting => self.in_flight_grace,
                _ => self.grace,
            };
            let age = (now - r.updated_at).to_std().unwrap_or_default();
            if age < grace {
                continue;
            }
            let msg = format!("lost: not on host {}", h.name);
            tracing::warn!(sandbox = %r.id, host = %h.name, "sandbox lost");
            self.store
                .update_sandbox(
                    &r.id,
                    &SandboxUpdate {
                        state: Some(SandboxState::Error),
                        error: Some(Some(msg)),
                        ip_address: Some(None),
                        expect_state: Some(r.state),
                        ..Default::default()
                    },
                    now,
                )
                .await?;
        }
        self.reconcile_egress(&target, &seen).await
    }

    /// Pushes the stored allow-list of each settled sandbox the agent lists whose
    /// enforced one differs.
    async fn reconcile_egress(
        &self,
        target: &AgentTarget,
        seen: &std::collections::HashSet<&str>,
    ) -> Result<(), StoreError> {
        let stored = self.store.egress_on_host(&target.name).await?;
        futures::stream::iter(
            stored
                .into_iter()
                .filter(|(id, _)| seen.contains(id.as_str())),
        )
        .for_each_concurrent(EGRESS_CHECKS, |(id, text)| async move {
            self.check_egress(target, &id, &text).await;
        })
        .await;
        Ok(())
    }

    async fn check_egress(&self, target: &AgentTarget, id: &str, text: &str) {
        let (Ok(sid), Ok(want)) = (
            SandboxId::parse("id", id),
            crate::network::egress::policy_from_json(text),
        ) else {
            tracing::warn!(sandbox = %id, "stored allow-list unreadable; not reconciled");
            return;
        };
        match self.agents.get_egress_policy(target, &sid).await {
            Ok(s) if s.policy == want => {}
            Ok(s) => {
                tracing::info!(sandbox = %id, host = %target.name, agent_entries = s.policy.allow.len(), entries = want.allow.len(), "agent's allow-list differs; pushing the stored one");
                // Re-read at push time: an API change since this tick began wins.
                let pushed =
                    crate::network::egress::push_stored(&*self.store, &*self.agents, target, &sid)
                        .await;
                if let Err(e) = pushed {
                    tracing::warn!(sandbox = %id, host = %target.name, error = %e, "allow-list not pushed");
                }
            }
            Err(e) => {
                tracing::debug!(sandbox = %id, host = %target.name, error = %e, "no egress view this round");
            }
        }
    }

    async fn destroy_orphan(&self, target: &AgentTarget, s: &SandboxInfo, why: &str) {
        tracing::info!(sandbox = %s.id, host = %target.name, why, "destroying orphan");
        if let Err(e) = self.agents.destroy_sandbox(target, &s.id).await {
            tracing::warn!(sandbox = %s.id, host = %target.name, error = %e, "orphan not destroyed");
        }
    }

    async fn observe(&self, r: &SandboxRecord, s: &SandboxInfo) -> Result<(), StoreError> {
        // A create or start in flight owns the row; an ERROR row stays until destroyed.
        if !matches!(
            r.state,
            SandboxState::Created | SandboxState::Running | SandboxState::Stopped
        ) {
            return Ok(());
        }
        let state = observed_state(s.state);
        let ip = s.ip_address.map(|ip| ip.to_string());
        // Filled when the store does not know it yet (a start the create did not see).
        let start_path = s
            .start_path
            .map(api_start_path)
            .filter(|_| r.start_path.is_none());
        if state == r.state && ip == r.ip_address && start_path.is_none() {
            return Ok(());
        }
        if state != r.state {
            tracing::info!(sandbox = %r.id, from = %r.state, to = %state, "observed state change");
        }
        let error = (state == SandboxState::Error).then(|| {
            s.error
                .clone()
                .unwrap_or_else(|| "agent reports an error".into())
        });
        self.store
            .update_sandbox(
                &r.id,
                &SandboxUpdate {
                    state: Some(state),
                    ip_address: Some(ip),
                    error: error.map(Some),
                    start_path,
                    expect_state: Some(r.state),
                    ..Default::default()
                },
                Utc::now(),
            )
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use fluid_client::types::{CreateSandboxRequest, Sandbox, StartPath as ApiStartPath};
    use fluid_proto::model::{ObservedState, StartPath};

    use super::*;
    use crate::config::Config;
    use crate::governance::auth::Caller;
    use crate::sandboxes::overcommit::CreateOutcome;
    use crate::store::Reservation;
    use crate::testing::fake_agents::{FakeAgents, info, test_ca};

    /// Who creates the tests' sandboxes (`CreateSandbox`: an admin).
    fn admin() -> Caller {
        Caller {
            token_id: "TOK-test".into(),
            name: "test-admin".into(),
            role: fluid_client::governance::Role::Admin,
            agent_id: None,
        }
    }

    /// A SQLite store in `dir` with host kvm-1 online behind the fake agents.
    async fn fleet(
        dir: &tempfile::TempDir,
    ) -> (Arc<dyn Store>, Arc<FakeAgents>, crate::http::AppState) {
        let store = crate::store::tests::sqlite(dir).await;
        store
            .upsert_host("kvm-1", "kvm-1:7443")
            .await
            .expect("host");
        let agents = Arc::new(FakeAgents::default());
        let state =
            crate::build_state(store.clone(), agents.clone(), &Config::default(), test_ca())
                .expect("state");
        state.hosts.beat_all().await.expect("beat");
        (store, agents, state)
    }

    /// Creates a sandbox of agent `a` (started when `start`), as an admin.
    async fn create(state: &crate::http::AppState, start: bool) -> Sandbox {
        let created = state
            .sandboxes
            .create(
                &admin(),
                CreateSandboxRequest {
                    source_vm_name: "debian-12".into(),
                    agent_id: "a".into(),
                    auto_start: Some(start),
                    ..Default::default()
                },
                true,
            )
            .await
            .expect("create");
        let CreateOutcome::Created(created) = created else {
            panic!("the create waits for an approval")
        };
        created.sandbox
    }

    #[tokio::test]
    async fn an_unknown_start_path_is_filled_never_changed() {
        let dir = tempfile::tempdir().expect("tmp");
        let (store, agents, state) = fleet(&dir).await;
        let created = create(&state, false).await;
        let id = created.id;
        assert_eq!(created.start_path, None);
        let stored = async |path: Option<ApiStartPath>| {
            let row = store.get_sandbox(&id).await.expect("get").expect("row");
            assert_eq!((row.state, row.start_path), (SandboxState::Created, path));
        };
        // The agent reports how it started (nothing else changed): written back.
        let mut s = info(&id, &created.sandbox_name, ObservedState::Created);
        s.start_path = Some(StartPath::Restore);
        agents.plant("kvm-1", s.clone());
        let r = Reconciler::new(store.clone(), agents.clone(), LOST_GRACE, LOST_GRACE);
        r.tick().await.expect("tick");
        stored(Some(ApiStartPath::Restore)).await;
        // Once known, a different report does not change it.
        s.start_path = Some(StartPath::Pool);
        agents.plant("kvm-1", s);
        r.tick().await.expect("tick");
        stored(Some(ApiStartPath::Restore)).await;
    }

    #[tokio::test]
    async fn orphans_lost_sandboxes_and_observed_changes() {
        let dir = tempfile::tempdir().expect("tmp");
        let (store, agents, state) = fleet(&dir).await;

        // Orphans: unknown to the store, and destroyed in the store.
        agents.plant(
            "kvm-1",
            info("SBX-orphan0001", "o1", ObservedState::Running),
        );
        // A sandbox the agent runs and the store knows.
        let live = create(&state, true).await;
        let live_id = live.id.clone();
        // A row the host no longer has, last touched long ago.
        let past = Utc::now() - chrono::Duration::minutes(5);
        store
            .reserve(&Reservation {
                id: "SBX-lost00000001".into(),
                legacy_job_id: "JOB-x".into(),
                agent_id: "a".into(),
                name: "lost".into(),
                image: "debian-12".into(),
                ttl_seconds: None,
                host_name: "kvm-1".into(),
                cpus: 1,
                memory_mb: 128,
                cpu_overcommit_ratio: 4.0,
                allow_overcommit: false,
                max_owned: None,
                now: past,
            })
            .await
            .expect("reserve");
        store
            .update_sandbox(
                "SBX-lost00000001",
                &SandboxUpdate {
                    state: Some(SandboxState::Running),
                    ..Default::default()
                },
                past,
            )
            .await
            .expect("update");
        // The live sandbox stopped behind our back.
        let mut stopped = info(&live_id, &live.sandbox_name, ObservedState::Stopped);
        stopped.network = "default".into();
        agents.plant("kvm-1", stopped);

        let r = Reconciler::new(store.clone(), agents.clone(), LOST_GRACE, LOST_GRACE);
        r.tick().await.expect("tick");

        let on_host: Vec<String> = agents
            .on_host("kvm-1")
            .iter()
            .map(|s| s.id.to_string())
            .collect();
        assert_eq!(
            on_host,
            std::slice::from_ref(&live_id),
            "orphan destroyed, live one kept"
        );
        let lost = store
            .get_sandbox("SBX-lost00000001")
            .await
            .expect("get")
            .expect("row");
        assert_eq!(lost.state, SandboxState::Error);
        assert_eq!(lost.error.as_deref(), Some("lost: not on host kvm-1"));
        let live = store
            .get_sandbox(&live_id)
            .await
            .expect("get")
            .expect("row");
        assert_eq!(live.state, SandboxState::Stopped);

        // A destroyed row whose domain reappears is an orphan too.
        state
            .sandboxes
            .destroy_unchecked(&fluid_proto::model::SandboxId::parse("id", &live_id).expect("id"))
            .await
            .expect("destroy");
        agents.plant("kvm-1", info(&live_id, "again", ObservedState::Running));
        r.tick().await.expect("tick");
        assert!(agents.on_host("kvm-1").is_empty());
    }

    #[tokio::test]
    async fn a_stored_allow_list_the_agent_lost_is_pushed_again() {
        let dir = tempfile::tempdir().expect("tmp");
        let (store, agents, state) = fleet(&dir).await;
        let sb = create(&state, true).await;
        // The intent changes while the agent is down: stored, not pushed.
        agents.down.lock().expect("lock").insert("kvm-1".into());
        let caller = crate::governance::auth::Caller {
            token_id: "TOK-x".into(),
            name: "op".into(),
            role: fluid_client::governance::Role::Operator,
            agent_id: None,
        };
        let id = crate::error::parse_id(&sb.id).expect("id");
        let allow = vec![fluid_client::network::EgressRuleBody::for_destination(
            "deb.debian.org",
            Some(fluid_client::network::EgressProtocol::Tcp),
            Some(443),
        )];
        let e = state
            .egress
            .put(&caller, &id, &allow)
            .await
            .expect_err("agent down");
        assert!(
            e.to_string().contains("pushed when the agent is back"),
            "{e}"
        );
        assert_eq!(
            agents.egress_of(&sb.id).map(|p| p.allow.len()),
            Some(0),
            "created sealed, and the agent did not get the change"
        );
        agents.down.lock().expect("lock").clear();
        let r = Reconciler::new(store.clone(), agents.clone(), LOST_GRACE, LOST_GRACE);
        r.tick().await.expect("tick");
        let got = agents.egress_of(&sb.id).expect("policy");
        assert_eq!(got.allow.len(), 1);
        assert_eq!(got.allow[0].to_string(), "deb.debian.org tcp/443");
        // In sync: the next tick pushes nothing.
        let sets = agents.egress_sets.load(std::sync::atomic::Ordering::SeqCst);
        r.tick().await.expect("tick");
        assert_eq!(
            agents.egress_sets.load(std::sync::atomic::Ordering::SeqCst),
            sets
        );
        // An agent that lost its state gets it back.
        agents.egress.lock().expect("lock").remove(&sb.id);
        r.tick().await.expect("tick");
        assert_eq!(agents.egress_of(&sb.id), Some(got));
    }
}
