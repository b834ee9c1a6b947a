//! Unit tests of the sandbox service against the fake hypervisor.

use std::path::PathBuf;
use std::sync::Arc;

use fluid_proto::model::Name;

use super::*;
use crate::hypervisor::simulated::SimulatedHypervisor;
use crate::network::nft::recording::RecordingNft;
use crate::network::test_settings;

pub(crate) struct Env {
    pub _tmp: tempfile::TempDir,
    pub s: Sandboxes<SimulatedHypervisor>,
    pub hv: Arc<SimulatedHypervisor>,
    /// The kernel stand-in behind the (enforcing) firewall.
    pub nft: Arc<RecordingNft>,
    image: PathBuf,
}

pub(crate) async fn env() -> Env {
    env_with("").await
}

/// [`env`] with `extra` appended to the agent's configuration (e.g. a `[disk]` table).
pub(crate) async fn env_with(extra: &str) -> Env {
    let tmp = tempfile::tempdir().expect("tmp");
    let image = tmp.path().join("disk.qcow2");
    let st = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&image)
        .arg("16M")
        .status()
        .expect("qemu-img is needed by these tests");
    assert!(st.success());
    let config = AgentConfig::from_toml(&format!(
        r#"
host_name = "kvm-1"
state_dir = "{dir}"
virt_type = "qemu"
stop_timeout_seconds = 1
[tls]
ca_cert = "/a"
cert = "/b"
key = "/c"
[[images]]
name = "debian-12"
path = "{image}"
kernel = "/k"
[[images]]
name = "from-vm"
source_domain = "golden"
{extra}
{templates}
"#,
        dir = tmp.path().display(),
        image = image.display(),
        // No background template builds unless a test asks for templates.
        templates = if extra.contains("[templates]") {
            ""
        } else {
            "[templates]\non_demand = false"
        },
    ))
    .expect("config");
    let store = StateStore::open(&config.db_path()).await.expect("store");
    let hv = Arc::new(SimulatedHypervisor::new("kvm-1"));
    let nft = Arc::new(RecordingNft::default());
    let firewall = Arc::new(Firewall::new(test_settings(), nft.clone()));
    let s = Sandboxes::new(
        config,
        hv.clone(),
        store,
        crate::exec::AgentKey::generate("test").expect("key"),
        firewall,
    )
    .with_poll(Duration::from_millis(5));
    s.overlays.ensure_dir().await.expect("dir");
    overlay::ensure_dir(&s.config.console_dir())
        .await
        .expect("dir");
    Env {
        _tmp: tmp,
        s,
        hv,
        nft,
        image,
    }
}

impl Env {
    /// The image the sandboxes' overlays are backed by.
    pub fn image(&self) -> &std::path::Path {
        &self.image
    }
}

/// What the overlay at `path` is backed by (`qemu-img info`'s `backing-filename`).
pub(crate) fn backing_of(path: &std::path::Path) -> String {
    let info = std::process::Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(path)
        .output()
        .expect("qemu-img");
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).expect("json");
    info["backing-filename"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

pub(crate) fn id(s: &str) -> SandboxId {
    SandboxId::parse("id", s).expect("id")
}

pub(crate) fn req(sid: &str, name: &str, start: bool) -> CreateSandbox {
    CreateSandbox {
        id: id(sid),
        name: Name::parse("name", name).expect("name"),
        image: Name::parse("image", "debian-12").expect("image"),
        cpus: 2,
        memory_mb: 1024,
        start,
        ssh_user_ca_keys: Vec::new(),
        egress: Default::default(),
        from_snapshot: None,
        fork_of_running: None,
    }
}

#[tokio::test]
async fn create_is_idempotent_by_id() {
    let e = env().await;
    let a =
        e.s.create(req("SBX-aaaaaaaa", "a", false))
            .await
            .expect("create");
    assert_eq!(a.state, ObservedState::Created);
    assert!(a.record.overlay_path.exists());
    assert!(a.record.mac.starts_with("52:54:00:"));
    let again =
        e.s.create(req("SBX-aaaaaaaa", "a", false))
            .await
            .expect("again");
    assert_eq!(again.record, a.record);
    assert_eq!(e.hv.owned_count(), 1);
    assert_eq!(e.hv.lock().defines, 1);
    // Repeating with start=true starts the existing sandbox.
    let started =
        e.s.create(req("SBX-aaaaaaaa", "a", true))
            .await
            .expect("start");
    assert_eq!(started.state, ObservedState::Running);
    assert!(started.ip.is_some());
    assert_eq!(e.hv.owned_count(), 1);
}

#[tokio::test]
async fn concurrent_creates_of_one_id_make_one_domain() {
    let e = env().await;
    let s = Arc::new(e.s);
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.create(req("SBX-aaaaaaaa", "a", true)).await
        }));
    }
    for t in tasks {
        t.await.expect("join").expect("create");
    }
    assert_eq!(e.hv.owned_count(), 1);
    assert_eq!(e.hv.lock().defines, 1);
}

#[tokio::test]
async fn name_clashes_are_refused() {
    let e = env().await;
    e.s.create(req("SBX-aaaaaaaa", "a", false))
        .await
        .expect("create");
    let err =
        e.s.create(req("SBX-bbbbbbbb", "a", false))
            .await
            .expect_err("same name");
    assert!(matches!(err, ServiceError::AlreadyExists(_)), "{err:?}");
    // A domain that is not ours also blocks the name.
    e.hv.insert("u", "taken", "SBX-cccccccc", "kvm-2", DomainState::ShutOff);
    let err =
        e.s.create(req("SBX-bbbbbbbb", "taken", false))
            .await
            .expect_err("foreign domain");
    assert!(matches!(err, ServiceError::AlreadyExists(_)), "{err:?}");
    // Nothing was left behind by the refused creates.
    assert!(
        e.s.store
            .get(&id("SBX-bbbbbbbb"))
            .await
            .expect("get")
            .is_none()
    );
    assert!(!e.s.overlays.path_for(&id("SBX-bbbbbbbb")).exists());
}

#[tokio::test]
async fn unknown_or_unusable_images_are_refused() {
    let e = env().await;
    let mut r = req("SBX-aaaaaaaa", "a", false);
    r.image = Name::parse("image", "nope").expect("name");
    let err = e.s.create(r).await.expect_err("unknown image");
    assert!(matches!(err, ServiceError::NotFound(_)), "{err:?}");

    let mut r = req("SBX-aaaaaaaa", "a", false);
    r.image = Name::parse("image", "from-vm").expect("name");
    let err = e.s.create(r.clone()).await.expect_err("no source domain");
    assert!(
        matches!(err, ServiceError::FailedPrecondition(_)),
        "{err:?}"
    );

    e.hv.lock().sources.insert(
        "golden".into(),
        crate::hypervisor::SourceDomain {
            uuid: "src".into(),
            state: DomainState::Running,
            persistent: true,
            disk_path: e.image.clone(),
            disk_format: "qcow2".into(),
            boot: crate::hypervisor::Boot::Disk,
        },
    );
    let err = e.s.create(r.clone()).await.expect_err("running source");
    assert!(err.to_string().contains("running"), "{err}");
    if let Some(src) = e.hv.lock().sources.get_mut("golden") {
        src.state = DomainState::ShutOff;
    }
    let v = e.s.create(r).await.expect("clone a stopped source domain");
    assert_eq!(v.record.boot, crate::hypervisor::Boot::Disk);
}

#[tokio::test]
async fn failed_define_or_start_leaves_nothing() {
    let e = env().await;
    e.hv.lock().fail_define = true;
    e.s.create(req("SBX-aaaaaaaa", "a", true))
        .await
        .expect_err("define fails");
    e.hv.lock().fail_define = false;
    e.hv.lock().fail_start = true;
    e.s.create(req("SBX-aaaaaaaa", "a", true))
        .await
        .expect_err("start fails");
    assert_eq!(e.hv.owned_count(), 0);
    assert!(e.s.store.list().await.expect("list").is_empty());
    assert!(e.s.overlays.list().await.expect("overlays").is_empty());
}

#[tokio::test]
async fn stop_and_start_transitions() {
    let e = env().await;
    let v =
        e.s.create(req("SBX-aaaaaaaa", "a", true))
            .await
            .expect("create");
    assert_eq!(v.state, ObservedState::Running);
    let stop = |force| StopSandbox {
        id: id("SBX-aaaaaaaa"),
        force,
        timeout_seconds: None,
    };
    let v = e.s.stop(stop(false)).await.expect("stop");
    assert_eq!(v.state, ObservedState::Stopped);
    assert_eq!(v.ip, None);
    assert!(
        e.hv.lock().leases.is_empty(),
        "a stopped sandbox's lease is released"
    );
    let v = e.s.stop(stop(false)).await.expect("stop again");
    assert_eq!(v.state, ObservedState::Stopped);
    let v = e.s.start(&id("SBX-aaaaaaaa")).await.expect("start");
    assert_eq!(v.state, ObservedState::Running);
    let v = e.s.start(&id("SBX-aaaaaaaa")).await.expect("start again");
    assert_eq!(v.state, ObservedState::Running);
    let v = e.s.stop(stop(true)).await.expect("force stop");
    assert_eq!(v.state, ObservedState::Stopped);
    let err = e.s.start(&id("SBX-zzzzzzzz")).await.expect_err("unknown");
    assert!(matches!(err, ServiceError::NotFound(_)), "{err:?}");
}

#[tokio::test]
async fn stop_powers_off_a_guest_that_ignores_acpi() {
    let e = env().await;
    e.s.create(req("SBX-aaaaaaaa", "a", true))
        .await
        .expect("create");
    e.hv.lock().ignore_shutdown = true;
    let t = Instant::now();
    let v =
        e.s.stop(StopSandbox {
            id: id("SBX-aaaaaaaa"),
            force: false,
            timeout_seconds: Some(1),
        })
        .await
        .expect("stop");
    assert_eq!(v.state, ObservedState::Stopped);
    assert!(t.elapsed() >= Duration::from_secs(1));
}

#[tokio::test]
async fn destroy_cleans_everything_and_is_idempotent() {
    let e = env().await;
    let v =
        e.s.create(req("SBX-aaaaaaaa", "a", true))
            .await
            .expect("create");
    let ip =
        e.s.wait_for_ip(WaitForIp {
            id: id("SBX-aaaaaaaa"),
            timeout_seconds: 1,
        })
        .await
        .expect("ip");
    std::fs::write(e.s.console_log(&v.record.id), b"boot log").expect("log");
    assert!(e.s.destroy(&id("SBX-aaaaaaaa")).await.expect("destroy"));
    assert_eq!(e.hv.owned_count(), 0);
    assert!(e.hv.lock().leases.is_empty());
    assert_eq!(e.hv.lock().released[0].ip, ip);
    assert!(!v.record.overlay_path.exists());
    assert!(!e.s.console_log(&v.record.id).exists());
    assert!(e.s.store.get(&v.record.id).await.expect("get").is_none());
    assert!(!e.s.destroy(&id("SBX-aaaaaaaa")).await.expect("again"));
    // The name is free again.
    e.s.create(req("SBX-bbbbbbbb", "a", false))
        .await
        .expect("reuse name");
}

#[tokio::test]
async fn destroy_finds_a_domain_whose_record_was_lost() {
    let e = env().await;
    e.hv.insert("u1", "x", "SBX-aaaaaaaa", "kvm-1", DomainState::Running);
    e.hv.insert("u2", "y", "SBX-aaaaaaaa", "kvm-2", DomainState::Running);
    assert!(e.s.destroy(&id("SBX-aaaaaaaa")).await.expect("destroy"));
    let st = e.hv.lock();
    assert!(!st.domains.contains_key("u1"));
    assert!(
        st.domains.contains_key("u2"),
        "another agent's domain is not touched"
    );
}

#[tokio::test]
async fn wait_for_ip_times_out_or_refuses_a_stopped_sandbox() {
    let e = env().await;
    e.s.create(req("SBX-aaaaaaaa", "a", false))
        .await
        .expect("create");
    let w = |t| WaitForIp {
        id: id("SBX-aaaaaaaa"),
        timeout_seconds: t,
    };
    let err = e.s.wait_for_ip(w(1)).await.expect_err("not running");
    assert!(
        matches!(err, ServiceError::FailedPrecondition(_)),
        "{err:?}"
    );
    e.s.start(&id("SBX-aaaaaaaa")).await.expect("start");
    e.hv.lock().leases.clear();
    let err = e.s.wait_for_ip(w(1)).await.expect_err("no lease");
    assert!(matches!(err, ServiceError::DeadlineExceeded(_)), "{err:?}");
    let err =
        e.s.wait_for_ip(WaitForIp {
            id: id("SBX-zzzzzzzz"),
            timeout_seconds: 1,
        })
        .await
        .expect_err("unknown");
    assert!(matches!(err, ServiceError::NotFound(_)), "{err:?}");
}

#[tokio::test]
async fn list_reports_missing_and_crashed_domains() {
    let e = env().await;
    let a = e.s.create(req("SBX-aaaaaaaa", "a", true)).await.expect("a");
    let b = e.s.create(req("SBX-bbbbbbbb", "b", true)).await.expect("b");
    e.hv.lock().domains.remove(&a.record.domain_uuid);
    if let Some(d) = e.hv.lock().domains.get_mut(&b.record.domain_uuid) {
        d.state = DomainState::Crashed;
    }
    let views = e.s.list().await.expect("list");
    assert_eq!(views.len(), 2);
    for v in views {
        assert_eq!(v.state, ObservedState::Error);
        assert!(v.error.is_some());
    }
}

#[tokio::test]
async fn capacity_sums_the_records() {
    let e = env().await;
    e.s.create(req("SBX-aaaaaaaa", "a", false))
        .await
        .expect("a");
    e.s.create(req("SBX-bbbbbbbb", "b", true)).await.expect("b");
    let c = e.s.capacity().await.expect("capacity");
    assert_eq!(c.cpus_total, 16);
    assert_eq!(c.cpus_reserved, 4);
    assert_eq!(c.memory_mb_total, 65536);
    assert_eq!(c.memory_mb_reserved, 2048);
    assert_eq!(
        c.memory_mb_free, 61440,
        "the simulated host keeps a sixteenth"
    );
    assert_eq!(c.sandboxes, 2);
    assert_eq!(
        c.images,
        vec!["debian-12".to_string(), "from-vm".to_string()]
    );
}

#[tokio::test]
async fn libvirt_down_maps_to_unavailable() {
    let e = env().await;
    e.s.create(req("SBX-aaaaaaaa", "a", false))
        .await
        .expect("a");
    e.hv.lock().unavailable = true;
    let err = e.s.list().await.expect_err("down");
    assert!(matches!(err, ServiceError::Unavailable(_)), "{err:?}");
}

fn exec_req(sid: &str, cert: &str) -> fluid_proto::model::Exec {
    fluid_proto::model::Exec::try_from(fluid_proto::pb::ExecRequest {
        sandbox_id: sid.into(),
        command_id: "CMD-0123abcd".into(),
        command: "true".into(),
        output_cap_bytes: 1024,
        ssh_certificate: cert.into(),
        ..Default::default()
    })
    .expect("valid")
}

#[tokio::test]
async fn exec_refuses_before_any_stream() {
    let e = env().await;
    let err = |r: Result<_, ServiceError>| r.expect_err("refused");
    assert!(matches!(
        err(e.s.exec(exec_req("SBX-aaaaaaaa", "x")).await),
        ServiceError::NotFound(_)
    ));
    e.s.create(req("SBX-aaaaaaaa", "a", false))
        .await
        .expect("create");
    assert!(matches!(
        err(e.s.exec(exec_req("SBX-aaaaaaaa", "x")).await),
        ServiceError::FailedPrecondition(m) if m.contains("not running")
    ));
    e.s.start(&id("SBX-aaaaaaaa")).await.expect("start");
    let leases = std::mem::take(&mut e.hv.lock().leases);
    assert!(matches!(
        err(e.s.exec(exec_req("SBX-aaaaaaaa", "x")).await),
        ServiceError::FailedPrecondition(m) if m.contains("no IP")
    ));
    e.hv.lock().leases = leases;
    // A certificate that is not one is refused before any connection is tried.
    assert!(matches!(
        err(e.s.exec(exec_req("SBX-aaaaaaaa", "not a certificate")).await),
        ServiceError::InvalidArgument(m) if m.contains("ssh_certificate")
    ));
    assert!(e.s.ssh_public_key().starts_with("ssh-ed25519 "));
}

fn attach_req(sid: &str, cert: &str) -> fluid_proto::model::AttachOpen {
    fluid_proto::model::AttachOpen::try_from(fluid_proto::pb::AttachOpen {
        sandbox_id: sid.into(),
        session_id: "SES-0123abcd".into(),
        ssh_certificate: cert.into(),
        ..Default::default()
    })
    .expect("valid")
}

#[tokio::test]
async fn attach_refuses_like_exec_before_any_stream() {
    let e = env().await;
    let err = |r: Result<_, ServiceError>| r.expect_err("refused");
    assert!(matches!(
        err(e.s.attach(attach_req("SBX-aaaaaaaa", "x")).await),
        ServiceError::NotFound(_)
    ));
    e.s.create(req("SBX-aaaaaaaa", "a", false))
        .await
        .expect("create");
    assert!(matches!(
        err(e.s.attach(attach_req("SBX-aaaaaaaa", "x")).await),
        ServiceError::FailedPrecondition(m) if m.contains("not running")
    ));
    e.s.start(&id("SBX-aaaaaaaa")).await.expect("start");
    let leases = std::mem::take(&mut e.hv.lock().leases);
    assert!(matches!(
        err(e.s.attach(attach_req("SBX-aaaaaaaa", "x")).await),
        ServiceError::FailedPrecondition(m) if m.contains("no IP")
    ));
    e.hv.lock().leases = leases;
    assert!(matches!(
        err(e.s.attach(attach_req("SBX-aaaaaaaa", "not a certificate")).await),
        ServiceError::InvalidArgument(m) if m.contains("ssh_certificate")
    ));
}
