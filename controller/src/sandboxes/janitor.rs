//! Destroys sandboxes whose `ttl_seconds` has passed (counted from creation).

use std::sync::Arc;

use chrono::Utc;
use fluid_proto::model::SandboxId;

use crate::sandboxes::SandboxService;
use crate::store::{Store, StoreError};

pub struct Janitor {
    store: Arc<dyn Store>,
    sandboxes: Arc<SandboxService>,
}

impl std::fmt::Debug for Janitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Janitor").finish_non_exhaustive()
    }
}

impl Janitor {
    pub fn new(store: Arc<dyn Store>, sandboxes: Arc<SandboxService>) -> Self {
        Self { store, sandboxes }
    }

    /// Destroys every expired sandbox; returns how many were destroyed.
    pub async fn tick(&self) -> Result<usize, StoreError> {
        let now = Utc::now();
        let mut destroyed = 0;
        for r in self.store.sandboxes_with_ttl().await? {
            let Some(ttl) = r.ttl_seconds else { continue };
            if r.created_at + chrono::Duration::seconds(ttl) > now {
                continue;
            }
            let Ok(id) = SandboxId::parse("id", &r.id) else {
                continue;
            };
            match self.sandboxes.destroy_unchecked(&id).await {
                Ok(_) => {
                    tracing::info!(sandbox = %r.id, ttl, "TTL expired: destroyed");
                    destroyed += 1;
                }
                Err(e) => {
                    tracing::warn!(sandbox = %r.id, error = %e, "TTL expired, destroy failed")
                }
            }
        }
        Ok(destroyed)
    }
}

#[cfg(test)]
mod tests {
    use fluid_client::types::SandboxState;

    use super::*;
    use crate::config::Config;
    use crate::store::Reservation;
    use crate::testing::fake_agents::{FakeAgents, test_ca};

    #[tokio::test]
    async fn expired_sandboxes_are_destroyed() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = crate::store::tests::sqlite(&dir).await;
        store
            .upsert_host("kvm-1", "kvm-1:7443")
            .await
            .expect("host");
        let agents = Arc::new(FakeAgents::default());
        let state = crate::build_state(store.clone(), agents, &Config::default(), test_ca())
            .expect("state");
        state.hosts.beat_all().await.expect("beat");
        let reserve = |id: &str, name: &str, ttl: i64| Reservation {
            id: id.into(),
            legacy_job_id: "JOB-x".into(),
            agent_id: "a".into(),
            name: name.into(),
            image: "debian-12".into(),
            ttl_seconds: Some(ttl),
            host_name: "kvm-1".into(),
            cpus: 1,
            memory_mb: 128,
            cpu_overcommit_ratio: 4.0,
            allow_overcommit: false,
            max_owned: None,
            now: Utc::now() - chrono::Duration::minutes(10),
        };
        store
            .reserve(&reserve("SBX-expired0001", "old", 60))
            .await
            .expect("reserve");
        store
            .reserve(&reserve("SBX-fresh000001", "new", 3600))
            .await
            .expect("reserve");

        let janitor = Janitor::new(store.clone(), state.sandboxes.clone());
        assert_eq!(janitor.tick().await.expect("tick"), 1);
        let old = store
            .get_sandbox("SBX-expired0001")
            .await
            .expect("get")
            .expect("row");
        assert_eq!(old.state, SandboxState::Destroyed);
        let new = store
            .get_sandbox("SBX-fresh000001")
            .await
            .expect("get")
            .expect("row");
        assert_eq!(new.state, SandboxState::Created);
        assert_eq!(janitor.tick().await.expect("tick"), 0);
    }
}
