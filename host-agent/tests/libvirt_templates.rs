//! Memory templates against real libvirt: the agent builds the template of its
//! configured shape in the background; two sandboxes restored from it start in
//! seconds and differ in every item of a machine's identity; a template whose image
//! changed is never cloned (a create gets an overlay on the new image) and is
//! rebuilt. A live fork of a restored sandbox has its parent's files and processes and
//! its own identity, and the two diverge; a fork from a snapshot with memory resumes
//! that memory.
//!
//! Needs what the other real-VM tests need (see `libvirt_lifecycle.rs`); by hand:
//!
//! ```text
//! source scripts/lib/netns.sh; fluid_libvirt_up fluid-test
//! ip netns exec fluid-test env PATH=$PATH FLUID_TEST_IMAGE_DIR=… \
//!   cargo test -p fluid-agent --test libvirt_templates -- --nocapture
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fluid_agent::hypervisor::libvirt::Libvirt;
use fluid_agent::sandboxes::snapshots::CreateSnapshot;
use fluid_agent::{AgentConfig, Sandboxes};
use fluid_proto::model::{SandboxId, SnapshotName, SnapshotRef};
use russh::keys::PrivateKey;
use russh::keys::ssh_key::private::Ed25519Keypair;

mod common;

const SHAPE: &str = r#"
[templates]
shapes = [{ image = "debian-12", cpus = 1, memory_mb = 512 }]
"#;

struct Agent {
    s: Arc<Sandboxes<Libvirt>>,
    ca: PrivateKey,
    ca_line: String,
    state_dir: PathBuf,
    table: String,
}

/// An agent with its own template folder: it builds its template.
async fn open(tag: &str, image_dir: &Path) -> Agent {
    open_with(tag, image_dir, |host, state_dir| {
        common::agent_toml_with(host, state_dir, image_dir, SHAPE)
    })
    .await
}

/// An agent on the suites' shared template folder (built before the tests).
async fn open_shared(tag: &str, image_dir: &Path) -> Agent {
    open_with(tag, image_dir, |host, state_dir| {
        common::agent_toml(host, state_dir, image_dir)
    })
    .await
}

async fn open_with(
    tag: &str,
    _image_dir: &Path,
    toml: impl FnOnce(&str, &Path) -> String,
) -> Agent {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("fluid_agent=info")
        .try_init();
    let (_, name) = common::unique(tag);
    let state_dir = PathBuf::from(format!("/var/tmp/{name}"));
    let toml = toml(&format!("{name}-host"), &state_dir);
    let config = AgentConfig::from_toml(&toml).expect("config");
    let table = config.network.nft_table.clone();
    let s = fluid_agent::open(config).await.expect("open the agent");
    let ca = PrivateKey::from(Ed25519Keypair::from_seed(&rand::random()));
    let ca_line = ca.public_key().to_openssh().expect("CA line");
    Agent {
        s,
        ca,
        ca_line,
        state_dir,
        table,
    }
}

impl Agent {
    /// Waits (polling, 600 s at most) until a template is built; its name.
    async fn template_built(&self, not: Option<&str>) -> String {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let built = self.s.templates().list().await;
            if let Some(t) = built.iter().find(|t| Some(t.name.as_str()) != not) {
                println!(
                    "template {} built in {:.1} s, save image {} MiB",
                    t.name,
                    t.meta.build_ms as f64 / 1000.0,
                    t.meta.state_bytes >> 20
                );
                return t.name.clone();
            }
            assert!(Instant::now() < deadline, "no template after 600 s");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn create(&self, tag: &str) -> (SandboxId, String, Instant) {
        self.create_forking(tag, None).await
    }

    /// [`Agent::create`], as a live fork of `source` when given.
    async fn create_forking(
        &self,
        tag: &str,
        source: Option<&SandboxId>,
    ) -> (SandboxId, String, Instant) {
        self.create_with(tag, |req| req.fork_of_running = source.cloned())
            .await
    }

    /// [`Agent::create`] with `edit` applied to the request.
    async fn create_with(
        &self,
        tag: &str,
        edit: impl FnOnce(&mut fluid_proto::model::CreateSandbox),
    ) -> (SandboxId, String, Instant) {
        let (id, name) = common::unique(tag);
        let mut req = common::create_request(&id, &name, self.ca_line.clone());
        edit(&mut req);
        let t = Instant::now();
        self.s.create(req).await.expect("create");
        (id, name, t)
    }

    /// Runs `command`; stdout and exit code.
    async fn exec(&self, id: &SandboxId, command: &str) -> (String, i32) {
        let cert = common::certificate(&self.ca, self.s.ssh_public_key(), id, false);
        common::run(&self.s, id, &cert, command)
            .await
            .expect("exec")
    }

    /// Destroys every sandbox of the agent and removes what it leaves on the host.
    async fn teardown(self) {
        for v in self.s.list().await.unwrap_or_default() {
            let _ = self.s.destroy(&v.record.id).await;
        }
        drop(self.s);
        common::remove_agent_leftovers(&self.table, &self.state_dir);
    }
}

/// Runs `body` with `agent`, then tears the agent down whether `body` passed or
/// panicked (a failed assertion leaves no domain, overlay, rule or lease behind).
async fn checked<F, Fut>(agent: Agent, body: F)
where
    F: FnOnce(Arc<Agent>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let agent = Arc::new(agent);
    let outcome = tokio::spawn(body(agent.clone())).await;
    match Arc::try_unwrap(agent) {
        Ok(agent) => agent.teardown().await,
        Err(_) => panic!("the test body kept its agent"),
    }
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// Everything in which two machines must differ, read inside the guest.
const IDENTITY: &str = "echo hostname=$(hostname); echo machine_id=$(cat /etc/machine-id); \
echo mac=$(cat /sys/class/net/eth0/address); \
echo ip=$(ip -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1); \
echo host_key=$(cut -d' ' -f1,2 /etc/ssh/ssh_host_ed25519_key.pub); \
echo random=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'); \
echo boot_id=$(cat /proc/sys/kernel/random/boot_id); \
echo clock=$(date +%s); echo sandbox_id=$(cat /run/fluid-identity/sandbox_id)";

/// The items of [`IDENTITY`] in which two machines must differ.
const DISTINCT: [&str; 7] = [
    "hostname",
    "machine_id",
    "mac",
    "ip",
    "host_key",
    "random",
    "sandbox_id",
];

/// `clock` (the guest's `date +%s`) is within 5 s of the host's.
fn assert_clock_is_now(clock: &str, who: &str) {
    let clock: i64 = clock.trim().parse().expect("clock");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("now")
        .as_secs() as i64;
    assert!(
        (clock - now).abs() <= 5,
        "{who}'s clock is {clock}, the host's {now}"
    );
}

fn parse(out: &str) -> BTreeMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

/// A copy of the golden image's folder (disk, kernel, initrd) that a test may change.
fn copy_of_image(golden: &Path) -> PathBuf {
    let (_, name) = common::unique("img");
    let copy = PathBuf::from(format!("/var/tmp/{name}"));
    let st = std::process::Command::new("cp")
        .args(["-a", "--reflink=auto"])
        .arg(golden)
        .arg(&copy)
        .status()
        .expect("cp");
    assert!(st.success(), "copying {}", golden.display());
    copy
}

#[tokio::test]
async fn clones_of_one_template_start_fast_and_each_is_its_own_machine() {
    if !common::real_host() {
        return;
    }
    let dir = copy_of_image(&common::image_dir().expect("a golden image"));
    let agent = open("tpl", &dir).await;
    checked(agent, {
        let dir = dir.clone();
        move |agent| async move { clones_and_an_image_change(&agent, &dir).await }
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

async fn clones_and_an_image_change(agent: &Agent, dir: &Path) {
    agent.template_built(None).await;

    let mut ids = Vec::new();
    let mut seen: Vec<BTreeMap<String, String>> = Vec::new();
    for tag in ["clonea", "cloneb"] {
        let (id, name, t) = agent.create(tag).await;
        let view = agent.s.get(&id).await.expect("get");
        assert_eq!(view.record.start_path.as_deref(), Some("restore"));
        let (out, code) = agent.exec(&id, IDENTITY).await;
        println!(
            "{id}: create → first exec {:.2} s ({:?})",
            t.elapsed().as_secs_f64(),
            view.record.start_path
        );
        assert_eq!(code, 0, "{out}");
        let got = parse(&out);
        println!("{id}: {got:?}");
        let r = &view.record;
        assert_eq!(got["hostname"], name);
        assert_eq!(got["mac"], r.mac);
        assert_eq!(
            got["ip"],
            r.static_ip.expect("a reserved address").to_string()
        );
        assert_eq!(got["sandbox_id"], id.to_string());
        let pinned = r.ssh_host_key.as_deref().expect("the host key is pinned");
        assert!(
            pinned.starts_with(&got["host_key"]),
            "{pinned} vs {}",
            got["host_key"]
        );
        assert_clock_is_now(&got["clock"], "the clone");
        assert_eq!(got["machine_id"].len(), 32);
        // journalctl reads the journal of the new machine-id: journald follows it.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (lines, _) = agent
                .exec(&id, "journalctl -q --no-pager -n 1 2>/dev/null | wc -l")
                .await;
            if lines.trim() != "0" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "journalctl finds no journal in {id}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        ids.push(id);
        seen.push(got);
    }
    for key in DISTINCT {
        assert_ne!(seen[0][key], seen[1][key], "two clones share their {key}");
    }

    // The image changes (a new file in its place): no clone is made from the stale
    // template, which is rebuilt in the background and then replaced.
    for id in ids.drain(..) {
        agent.s.destroy(&id).await.expect("destroy");
    }
    let old = agent.template_built(None).await;
    let disk = dir.join("disk.qcow2");
    let changed = dir.join("disk.qcow2.new");
    std::fs::copy(&disk, &changed).expect("a new image file");
    std::fs::rename(&changed, &disk).expect("in place");
    // Not started (a cold boot would only slow the rebuild down on 2 cores): what
    // matters is the disk it was given.
    let (stale, _, _) = agent.create_with("changed", |req| req.start = false).await;
    let view = agent.s.get(&stale).await.expect("get");
    assert_eq!(
        view.record.template, None,
        "a create after the change is not based on the stale template"
    );
    let backing = std::process::Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(&view.record.overlay_path)
        .output()
        .expect("qemu-img");
    let backing: serde_json::Value = serde_json::from_slice(&backing.stdout).expect("json");
    assert_eq!(
        backing["backing-filename"],
        disk.display().to_string(),
        "its overlay is on the new image"
    );
    let new = agent.template_built(Some(&old)).await;
    let old_dir = agent.s.templates().dir().join(&old);
    let deadline = Instant::now() + Duration::from_secs(60);
    while old_dir.exists() {
        assert!(Instant::now() < deadline, "the stale template {old} stays");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (fresh, _, _) = agent.create("rebuilt").await;
    let view = agent.s.get(&fresh).await.expect("get");
    assert_eq!(view.record.start_path.as_deref(), Some("restore"));
    assert_eq!(view.record.template.as_deref(), Some(new.as_str()));
    println!("image changed: template {old} replaced by {new}");
}

/// What a live fork must carry over: a file written and a process started before it.
const BEFORE_FORK: &str = "head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \\n' >/root/at-fork; \
setsid sleep 4242 </dev/null >/dev/null 2>&1 & \
for i in $(seq 50); do pgrep -x sleep >/dev/null && break; sleep 0.1; done; \
cat /root/at-fork; echo; pgrep -fx 'sleep 4242'";

#[tokio::test]
async fn a_live_fork_has_its_parents_files_and_processes_then_diverges() {
    if !common::real_host() {
        return;
    }
    let dir = common::image_dir().expect("a golden image");
    let agent = open_shared("lfork", &dir).await;
    checked(agent, |agent| async move { live_forks(&agent).await }).await;
}

async fn live_forks(agent: &Agent) {
    agent.template_built(None).await;
    let (parent, _, _) = agent.create("parent").await;
    let (out, code) = agent.exec(&parent, BEFORE_FORK).await;
    assert_eq!(code, 0, "{out}");
    let mut lines = out.lines();
    let marker = lines.next().expect("the marker").trim().to_owned();
    let sleeper = lines.next().expect("the sleeper's pid").trim().to_owned();
    assert_eq!(marker.len(), 24, "{out}");
    let before = parse(&agent.exec(&parent, IDENTITY).await.0);
    // A snapshot with memory now, for a fork from it later; it has a parent (libvirt
    // records it), which the fork's domain does not have.
    for name in ["earlier", "at-fork"] {
        let cert = common::certificate(&agent.ca, agent.s.ssh_public_key(), &parent, false);
        let snap = agent
            .s
            .create_snapshot(CreateSnapshot {
                sandbox_id: parent.clone(),
                name: SnapshotName::parse("name", name).expect("name"),
                disk_only: false,
                ssh_certificate: cert,
            })
            .await
            .expect("a snapshot with memory");
        assert!(snap.memory, "{snap:?}");
    }

    let (fork, fork_name, t) = agent.create_forking("forked", Some(&parent)).await;
    let view = agent.s.get(&fork).await.expect("get");
    assert_eq!(view.record.start_path.as_deref(), Some("fork"));
    let (out, code) = agent
        .exec(&fork, "cat /root/at-fork; echo; pgrep -fx 'sleep 4242'")
        .await;
    println!(
        "{fork}: live fork of {parent} → first exec {:.2} s",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(code, 0, "the parent's process runs in the fork: {out}");
    let mut lines = out.lines();
    assert_eq!(lines.next().map(str::trim), Some(marker.as_str()));
    assert_eq!(
        lines.next().map(str::trim),
        Some(sleeper.as_str()),
        "the same process, with the same pid"
    );
    let got = parse(&agent.exec(&fork, IDENTITY).await.0);
    println!("parent {parent}: {before:?}\nfork {fork}: {got:?}");
    assert_eq!(got["hostname"], fork_name);
    assert_eq!(got["sandbox_id"], fork.to_string());
    assert_eq!(got["mac"], view.record.mac);
    for key in DISTINCT {
        assert_ne!(before[key], got[key], "the fork shares its parent's {key}");
    }

    // The parent ran on, and the two diverge from here.
    let (out, code) = agent
        .exec(
            &parent,
            "pgrep -fx 'sleep 4242'; date +%s; echo p >/root/only-parent",
        )
        .await;
    assert_eq!(code, 0, "the parent's process survives the fork: {out}");
    assert_clock_is_now(out.lines().nth(1).unwrap_or_default(), "the parent");
    agent.exec(&fork, "echo f >/root/only-fork").await;
    let (out, _) = agent
        .exec(&parent, "ls /root/only-fork /root/only-parent 2>&1")
        .await;
    assert!(out.contains("cannot access '/root/only-fork'"), "{out}");
    let (out, _) = agent
        .exec(&fork, "ls /root/only-fork /root/only-parent 2>&1")
        .await;
    assert!(out.contains("cannot access '/root/only-parent'"), "{out}");

    // A fork from the snapshot resumes its memory: the file and process it held, not
    // what the parent wrote since.
    let (from_snap, snap_name, t) = agent
        .create_with("fromsnap", |req| {
            req.from_snapshot = Some(SnapshotRef {
                sandbox_id: parent.clone(),
                name: SnapshotName::parse("name", "at-fork").expect("name"),
            })
        })
        .await;
    let view = agent.s.get(&from_snap).await.expect("get");
    assert_eq!(view.record.start_path.as_deref(), Some("fork"));
    let (out, code) = agent
        .exec(
            &from_snap,
            "cat /root/at-fork; echo; pgrep -fx 'sleep 4242'; hostname; ls /root/only-parent 2>&1",
        )
        .await;
    println!(
        "{from_snap}: fork of {parent}'s memory snapshot → first exec {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(lines.first(), Some(&marker.as_str()), "{out}");
    assert_eq!(lines.get(1), Some(&sleeper.as_str()), "{out}");
    assert_eq!(lines.get(2), Some(&snap_name.as_str()), "{out}");
    assert!(out.contains("cannot access '/root/only-parent'"), "{out}");
    assert_ne!(code, 0, "ls of the missing file fails: {out}");
    let snapshots = agent.s.list_snapshots(&from_snap).await.expect("list");
    assert!(
        snapshots.is_empty(),
        "the fork has no snapshots: {snapshots:?}"
    );
}
