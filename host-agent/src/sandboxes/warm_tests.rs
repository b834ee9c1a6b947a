//! Unit tests of the warm pool's bookkeeping and of what the fake hypervisor can show:
//! members are never listed, an earlier agent's are removed, a member that cannot be
//! claimed is destroyed and the create goes on without it. A claim's success path
//! (the rebind over SSH) runs against real guests in `integration-tests/tests/pool.rs`.

use fluid_proto::model::ObservedState;
use russh::keys::ssh_key::Certificate;

use super::*;
use crate::config::PoolShape;
use crate::hypervisor::DomainState;
use crate::sandboxes::tests::{env_with, id, req};

const POOL: &str =
    "[pool]\nshapes = [{ image = \"debian-12\", cpus = 2, memory_mb = 1024, size = 1 }]";

fn shape(size: u32) -> PoolShape {
    PoolShape {
        image: Name::parse("image", "debian-12").expect("image"),
        cpus: 2,
        memory_mb: 1024,
        size,
    }
}

/// A running member, as a refill makes it (before its pause).
async fn member(e: &crate::sandboxes::tests::Env) -> SandboxRecord {
    e.s.create_member(req("SBX-aaaaaaaapool", "fluid-pool-aaaaaaaa", true))
        .await
        .expect("member")
        .record
}

#[test]
fn ready_members_are_handed_out_once_and_counted() {
    let pool = WarmPool::new(&[shape(2)]);
    let image = Name::parse("image", "debian-12").expect("image");
    // Nothing ready: a miss, and two members to make.
    assert_eq!(pool.take(&image, 2, 1024), None);
    let first = pool.next_to_fill().expect("short of two");
    let second = pool.next_to_fill().expect("short of one");
    assert_eq!(pool.next_to_fill(), None, "two are being made");
    pool.filled(&first, Some(id("SBX-aaaaaaaapool")));
    pool.filled(&second, None);
    let s = &pool.stats()[0];
    assert_eq!(
        (s.size, s.ready, s.filling, s.hits, s.misses),
        (2, 1, 0, 0, 1)
    );
    // Another shape is not served by this pool, and counts nothing.
    assert_eq!(pool.take(&image, 1, 1024), None);
    assert_eq!(pool.take(&image, 2, 1024), Some(id("SBX-aaaaaaaapool")));
    assert_eq!(pool.take(&image, 2, 1024), None);
    let s = &pool.stats()[0];
    assert_eq!((s.ready, s.hits, s.misses), (0, 1, 2));
}

#[test]
fn a_held_shape_lets_the_next_one_fill_until_its_hold_ends() {
    let other = PoolShape {
        cpus: 1,
        memory_mb: 512,
        ..shape(1)
    };
    let pool = WarmPool::new(&[shape(1), other.clone()]);
    let first = pool.next_to_fill().expect("the first shape is short");
    // It could not start (no template, say): held, the other shape comes next.
    pool.filled(&first, None);
    pool.hold(&first, Duration::from_secs(3600));
    let next = pool.next_to_fill().expect("the other shape is short");
    assert_eq!(next, other);
    pool.filled(&next, None);
    pool.hold(&next, Duration::from_secs(3600));
    assert_eq!(pool.next_to_fill(), None, "both are held");
    // A hold that has ended no longer counts.
    pool.hold(&first, Duration::ZERO);
    assert_eq!(pool.next_to_fill(), Some(first));
}

#[test]
fn a_pool_certificate_opens_its_member_only_and_only_for_root() {
    let pool = WarmPool::new(&[shape(1)]);
    let key = crate::exec::AgentKey::generate("test").expect("key");
    let member = id("SBX-0123456789abpool");
    let text = pool.certificate(&member, &key).expect("certificate");
    let cert = Certificate::from_openssh(&text).expect("OpenSSH certificate");
    assert_eq!(cert.valid_principals(), ["sbx:SBX-0123456789abpool:root"]);
    assert_eq!(cert.public_key(), key.private().public_key().key_data());
    let ca = russh::keys::PublicKey::from_openssh(&pool.ca_public).expect("CA key");
    assert_eq!(cert.signature_key(), ca.key_data());
    assert!(cert.valid_before() - cert.valid_after() <= CERT_TTL_SECS + 60);
    assert!(
        cert.extensions().is_empty(),
        "no PTY for the pool's connection"
    );
}

#[test]
fn member_names_are_valid_ids_and_domain_names() {
    let (a, name) = member_names().expect("names");
    let (b, _) = member_names().expect("names");
    assert_ne!(a, b);
    assert!(a.as_str().ends_with("pool"));
    assert!(name.as_str().starts_with("fluid-pool-"));
}

#[tokio::test]
async fn members_are_not_listed_and_an_earlier_agents_are_removed() {
    let e = env_with(POOL).await;
    let member = member(&e).await;
    assert!(member.pooled);
    assert!(
        e.s.list().await.expect("list").is_empty(),
        "a member was listed"
    );
    let other =
        e.s.create(req("SBX-bbbbbbbb", "b", true))
            .await
            .expect("create");
    assert!(!other.record.pooled);
    e.s.remove_members().await.expect("remove");
    assert!(e.s.store.get(&member.id).await.expect("get").is_none());
    assert!(
        !member.overlay_path.exists(),
        "the member's overlay was left"
    );
    assert!(
        !e.hv.lock().domains.contains_key(&member.domain_uuid),
        "the member's domain was left"
    );
    let listed = e.s.list().await.expect("list");
    assert_eq!(listed.len(), 1, "the sandbox stays");
}

#[tokio::test]
async fn a_member_that_cannot_be_claimed_is_destroyed_and_the_create_goes_on() {
    let e = env_with(POOL).await;
    let member = member(&e).await;
    e.hv.suspend(&member.domain_uuid).await.expect("pause");
    let filling = e.s.warm.next_to_fill().expect("a member to make");
    e.s.warm.filled(&filling, Some(member.id.clone()));
    e.hv.lock().fail_resume = true;
    let created =
        e.s.create(req("SBX-bbbbbbbb", "b", true))
            .await
            .expect("create");
    assert_eq!(created.state, ObservedState::Running);
    assert_ne!(created.record.start_path.as_deref(), Some("pool"));
    assert_ne!(created.record.domain_uuid, member.domain_uuid);
    assert!(e.s.store.get(&member.id).await.expect("get").is_none());
    assert!(!e.hv.lock().domains.contains_key(&member.domain_uuid));
    let s = &e.s.pool_stats()[0];
    assert_eq!((s.ready, s.hits), (0, 1));
    // A fork or a create that does not start never takes a member.
    assert_eq!(
        e.s.claim(&req("SBX-cccccccc", "c", false))
            .await
            .expect("claim"),
        None
    );
}

#[tokio::test]
async fn a_paused_member_is_paused_and_resumes() {
    let e = env_with(POOL).await;
    let member = member(&e).await;
    e.hv.suspend(&member.domain_uuid).await.expect("pause");
    assert_eq!(
        e.hv.domain_state(&member.domain_uuid).await.expect("state"),
        DomainState::Paused
    );
    e.hv.resume(&member.domain_uuid).await.expect("resume");
    assert_eq!(
        e.hv.domain_state(&member.domain_uuid).await.expect("state"),
        DomainState::Running
    );
}

#[tokio::test]
async fn a_refill_never_takes_memory_the_host_does_not_have() {
    let e = env_with(&format!("{POOL}\n[templates]\nenabled = false")).await;
    assert!(e.s.ready_to_fill(&shape(1)).await, "1 GiB fits");
    // The fake host has 64 GiB.
    let huge = PoolShape {
        memory_mb: 100_000,
        ..shape(1)
    };
    assert!(!e.s.ready_to_fill(&huge).await, "100 GB does not");
}

#[tokio::test]
async fn a_refill_waits_for_its_template_when_templates_are_on() {
    let e = env_with(POOL).await;
    assert!(
        !e.s.ready_to_fill(&shape(1)).await,
        "no template is ready: a member would cold-boot"
    );
}

#[test]
fn a_claimed_members_connections_move_and_its_new_ones_keep_alive() {
    let pool =
        crate::exec::pool::SshPool::new(crate::exec::AgentKey::generate("test").expect("key"), 4);
    let (member, sandbox) = (id("SBX-aaaaaaaapool"), id("SBX-bbbbbbbb"));
    pool.make_quiet(&member);
    assert!(pool.is_quiet(&member));
    pool.rekey(&member, &sandbox);
    assert!(
        !pool.is_quiet(&sandbox),
        "the sandbox's new connections are quiet"
    );
    assert!(!pool.is_quiet(&member));
    assert_eq!(pool.connections(&member), 0);
}
