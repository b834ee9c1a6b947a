//! Start-up reconciliation of the local records (intent) with libvirt (observed):
//!
//! - an owned domain without a record is an orphan: powered off, undefined, its
//!   overlay and console log removed;
//! - a record without a domain is redefined from the record when its overlay still
//!   exists (left stopped), otherwise kept and marked in error (a redefined domain has
//!   lost libvirt's record of its snapshots; their data stays in the overlay, unlisted);
//! - an overlay file without a record is deleted.
//!
//! Only domains carrying this agent's ownership mark are ever considered.

use std::collections::{HashMap, HashSet};

use fluid_proto::model::SandboxId;

use crate::error::ServiceError;
use crate::hypervisor::Hypervisor;
use crate::sandboxes::{Sandboxes, remove_domain};

/// What one reconciliation did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReconcileReport {
    pub orphans_removed: Vec<String>,
    pub redefined: Vec<SandboxId>,
    pub marked_error: Vec<SandboxId>,
    pub overlays_removed: Vec<SandboxId>,
}

pub async fn reconcile<H: Hypervisor>(s: &Sandboxes<H>) -> Result<ReconcileReport, ServiceError> {
    let mut report = ReconcileReport::default();
    let records = s.store.list().await?;
    let domains = s.hv.list_owned().await?;
    let by_uuid: HashMap<&str, &str> = records
        .iter()
        .map(|r| (r.domain_uuid.as_str(), r.id.as_str()))
        .collect();
    let record_ids: HashSet<&str> = records.iter().map(|r| r.id.as_str()).collect();

    for d in &domains {
        if by_uuid.contains_key(d.uuid.as_str()) {
            continue;
        }
        tracing::warn!(uuid = %d.uuid, name = %d.name, id = %d.meta.id, "orphan domain (no record); removing it");
        remove_domain(s.hv.as_ref(), &d.uuid).await?;
        // Files are only removed when no record still refers to this id.
        if let Ok(id) = SandboxId::parse("id", &d.meta.id)
            && !record_ids.contains(id.as_str())
        {
            s.overlays.remove(&s.overlays.path_for(&id)).await?;
            crate::overlay::remove_file(&s.console_log(&id)).await?;
        }
        report.orphans_removed.push(d.uuid.clone());
    }

    let domain_uuids: HashSet<&str> = domains.iter().map(|d| d.uuid.as_str()).collect();
    for r in &records {
        if domain_uuids.contains(r.domain_uuid.as_str()) || r.error.is_some() {
            continue;
        }
        if tokio::fs::try_exists(&r.overlay_path)
            .await
            .unwrap_or(false)
        {
            tracing::warn!(id = %r.id, "domain missing; redefining it from the record (left stopped)");
            s.hv.define(&s.spec_for(r)).await?;
            report.redefined.push(r.id.clone());
        } else {
            let message = format!(
                "the domain and its overlay {} are gone; the sandbox cannot be recovered",
                r.overlay_path.display()
            );
            tracing::error!(id = %r.id, "{message}");
            let mut r = r.clone();
            r.error = Some(message);
            s.store.put(&r).await?;
            report.marked_error.push(r.id);
        }
    }

    // By path: a sandbox claimed from the warm pool keeps its member's overlay.
    let overlays_in_use: HashSet<&std::path::Path> =
        records.iter().map(|r| r.overlay_path.as_path()).collect();
    for id in s.overlays.list().await? {
        if !overlays_in_use.contains(s.overlays.path_for(&id).as_path()) {
            tracing::warn!(%id, "overlay without a record; deleting it");
            s.overlays.remove(&s.overlays.path_for(&id)).await?;
            report.overlays_removed.push(id);
        }
    }

    tracing::info!(
        records = records.len(),
        domains = domains.len(),
        orphans_removed = report.orphans_removed.len(),
        redefined = report.redefined.len(),
        marked_error = report.marked_error.len(),
        overlays_removed = report.overlays_removed.len(),
        "reconciled local state with libvirt"
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::AgentConfig;
    use crate::hypervisor::DomainState;
    use crate::hypervisor::simulated::SimulatedHypervisor;
    use crate::state::{StateStore, test_record};

    async fn setup() -> (
        tempfile::TempDir,
        Sandboxes<SimulatedHypervisor>,
        Arc<SimulatedHypervisor>,
    ) {
        let tmp = tempfile::tempdir().expect("tmp");
        let config = AgentConfig::from_toml(&format!(
            "host_name = 'kvm-1'\nstate_dir = '{}'\n[tls]\nca_cert='/a'\ncert='/b'\nkey='/c'\n",
            tmp.path().display()
        ))
        .expect("config");
        let store = StateStore::open(&config.db_path()).await.expect("store");
        let hv = Arc::new(SimulatedHypervisor::new("kvm-1"));
        let s = Sandboxes::new(
            config,
            hv.clone(),
            store,
            crate::exec::AgentKey::generate("test").expect("key"),
            Arc::new(crate::network::Firewall::disabled()),
        );
        s.overlays.ensure_dir().await.expect("dir");
        (tmp, s, hv)
    }

    #[tokio::test]
    async fn heals_every_kind_of_drift() {
        let (_tmp, s, hv) = setup().await;
        // 1. A healthy sandbox: record + domain + overlay.
        let mut ok = test_record("SBX-aaaaaaaa", "ok");
        ok.overlay_path = s.overlays.path_for(&ok.id);
        std::fs::write(&ok.overlay_path, b"").expect("overlay");
        s.store.put(&ok).await.expect("put");
        hv.insert(
            &ok.domain_uuid,
            "ok",
            "SBX-aaaaaaaa",
            "kvm-1",
            DomainState::Running,
        );
        // 2. An orphan domain of ours, with an overlay.
        hv.insert(
            "orphan-uuid",
            "orphan",
            "SBX-bbbbbbbb",
            "kvm-1",
            DomainState::Running,
        );
        let orphan_overlay = s
            .overlays
            .path_for(&SandboxId::parse("id", "SBX-bbbbbbbb").expect("id"));
        std::fs::write(&orphan_overlay, b"").expect("overlay");
        // 3. Another agent's domain: never touched.
        hv.insert(
            "foreign-uuid",
            "foreign",
            "SBX-cccccccc",
            "kvm-2",
            DomainState::Running,
        );
        // 4. A record whose domain is gone but whose overlay is there.
        let mut lost = test_record("SBX-dddddddd", "lost");
        lost.overlay_path = s.overlays.path_for(&lost.id);
        std::fs::write(&lost.overlay_path, b"").expect("overlay");
        s.store.put(&lost).await.expect("put");
        // 5. A record whose domain and overlay are gone.
        let mut gone = test_record("SBX-eeeeeeee", "gone");
        gone.overlay_path = s.overlays.path_for(&gone.id);
        s.store.put(&gone).await.expect("put");
        // 6. A stray overlay.
        let stray = s
            .overlays
            .path_for(&SandboxId::parse("id", "SBX-ffffffff").expect("id"));
        std::fs::write(&stray, b"").expect("overlay");

        let report = reconcile(&s).await.expect("reconcile");
        assert_eq!(report.orphans_removed, vec!["orphan-uuid".to_string()]);
        assert_eq!(report.redefined, vec![lost.id.clone()]);
        assert_eq!(report.marked_error, vec![gone.id.clone()]);
        assert_eq!(
            report.overlays_removed,
            vec![SandboxId::parse("id", "SBX-ffffffff").expect("id")]
        );
        {
            let st = hv.lock();
            assert!(!st.domains.contains_key("orphan-uuid"));
            assert_eq!(st.domains["foreign-uuid"].state, DomainState::Running);
            assert_eq!(st.domains[&ok.domain_uuid].state, DomainState::Running);
            assert_eq!(st.domains[&lost.domain_uuid].state, DomainState::ShutOff);
        }
        assert!(!orphan_overlay.exists());
        assert!(!stray.exists());
        assert!(ok.overlay_path.exists());

        let views = s.list().await.expect("list");
        let state = |id: &SandboxId| {
            views
                .iter()
                .find(|v| &v.record.id == id)
                .map(|v| (v.state, v.error.clone()))
                .expect("listed")
        };
        assert_eq!(state(&ok.id).0, fluid_proto::model::ObservedState::Running);
        assert_eq!(
            state(&lost.id).0,
            fluid_proto::model::ObservedState::Created
        );
        let (st, err) = state(&gone.id);
        assert_eq!(st, fluid_proto::model::ObservedState::Error);
        assert!(err.expect("message").contains("cannot be recovered"));

        // A second pass finds nothing to do.
        let again = reconcile(&s).await.expect("reconcile");
        assert_eq!(again, ReconcileReport::default());
    }

    #[tokio::test]
    async fn libvirt_down_is_an_error_not_a_wipe() {
        let (_tmp, s, hv) = setup().await;
        let mut r = test_record("SBX-aaaaaaaa", "a");
        r.overlay_path = s.overlays.path_for(&r.id);
        std::fs::write(&r.overlay_path, b"").expect("overlay");
        s.store.put(&r).await.expect("put");
        hv.lock().unavailable = true;
        let e = reconcile(&s).await.expect_err("unavailable");
        assert!(matches!(e, ServiceError::Unavailable(_)), "{e:?}");
        assert!(r.overlay_path.exists());
        assert!(s.store.get(&r.id).await.expect("get").is_some());
    }
}
