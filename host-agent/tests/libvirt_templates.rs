//! Memory templates against real libvirt: the agent builds the template of its
//! configured shape in the background; two sandboxes restored from it start in
//! seconds and differ in every item of a machine's identity; a template whose image
//! changed is never cloned (the create cold-boots) and is rebuilt.
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
use fluid_agent::{AgentConfig, Sandboxes};
use fluid_proto::model::SandboxId;
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

async fn open(tag: &str, image_dir: &Path) -> Agent {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("fluid_agent=info")
        .try_init();
    let (_, name) = common::unique(tag);
    let state_dir = PathBuf::from(format!("/var/tmp/{name}"));
    // Its own folder: this test proves the build.
    let toml = common::agent_toml_with(&format!("{name}-host"), &state_dir, image_dir, SHAPE);
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
        let (id, name) = common::unique(tag);
        let t = Instant::now();
        self.s
            .create(common::create_request(&id, &name, self.ca_line.clone()))
            .await
            .expect("create");
        (id, name, t)
    }

    /// Runs `command`; stdout and exit code.
    async fn exec(&self, id: &SandboxId, command: &str) -> (String, i32) {
        let cert = common::certificate(&self.ca, self.s.ssh_public_key(), id, false);
        common::run(&self.s, id, &cert, command)
            .await
            .expect("exec")
    }

    async fn teardown(self, ids: &[SandboxId]) {
        for id in ids {
            let _ = self.s.destroy(id).await;
        }
        drop(self.s);
        common::remove_agent_leftovers(&self.table, &self.state_dir);
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

fn parse(out: &str) -> BTreeMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

#[tokio::test]
async fn clones_of_one_template_start_fast_and_each_is_its_own_machine() {
    if !common::real_host() {
        return;
    }
    let dir = common::image_dir().expect("a golden image");
    let agent = open("tpl", &dir).await;
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
        let clock: i64 = got["clock"].parse().expect("clock");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("now")
            .as_secs() as i64;
        assert!(
            (clock - now).abs() <= 5,
            "the guest's clock is {clock}, the host's {now}"
        );
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
    for key in [
        "hostname",
        "machine_id",
        "mac",
        "ip",
        "host_key",
        "random",
        "sandbox_id",
    ] {
        assert_ne!(seen[0][key], seen[1][key], "two clones share their {key}");
    }
    agent.teardown(&ids).await;
}
