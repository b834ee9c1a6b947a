//! The sandbox firewall against a real kernel, inside network namespaces this test
//! creates (nothing leaves them, docs/BUILD-HOSTS.md):
//!
//! ```text
//!   ns -s1 (sandbox 1)  ns -s2 (sandbox 2)  ns -s3 (not ours)
//!        eth0 ── fx<id1>   eth0 ── fx<id2>    eth0 ── fxforeign
//!                     \        |        /
//!   ns -h ("host"):    bridge fxbr0 10.99.0.1/24, ip_forward, the agent's tables
//!                      fxup0 10.98.0.1/24 ── eth0 10.98.0.2 in ns -i ("internet")
//! ```
//!
//! It applies the rules of two sandboxes, lists them back, checks what each sandbox
//! can reach (which also shows that `ether saddr` matches in the inet hooks for
//! packets from the bridge), adds a resolved address, restores deleted tables, then
//! removes the sandboxes one by one and checks nothing of them is left.
//!
//! Needs root, `ip`, `nft` and OpenBSD `nc`:
//!
//! ```text
//! cargo test -p fluid-agent --test nft_isolation -- --nocapture
//! ```

use std::io::Read;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fluid_agent::hypervisor::Boot;
use fluid_agent::network::allow::parse_rule;
use fluid_agent::network::nft::NftCommand;
use fluid_agent::network::{Firewall, NetworkSettings, tap_name};
use fluid_agent::state::SandboxRecord;
use fluid_proto::model::{EgressPolicy, Name, SandboxId};

const TABLE: &str = "fluid_nfttest";
const MAC1: &str = "52:54:00:10:00:01";
const MAC2: &str = "52:54:00:10:00:02";
const MAC3: &str = "52:54:00:10:00:03";
const IP1: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 11);
const IP2: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 12);

/// Runs a command; its stdout, or a panic with its stderr.
fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command in namespace `ns`.
fn ns_run(ns: &str, args: &[&str]) -> String {
    let mut all = vec!["ip", "netns", "exec", ns];
    all.extend_from_slice(args);
    run(&all)
}

/// The namespaces and processes of one test run; removed on drop.
struct Lab {
    prefix: String,
    children: Vec<Child>,
}

impl Lab {
    fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    fn new() -> Self {
        let prefix = format!("fluid-nft-{:08x}", rand::random::<u32>());
        let lab = Lab {
            prefix,
            children: Vec::new(),
        };
        for role in ["h", "s1", "s2", "s3", "i"] {
            run(&["ip", "netns", "add", &lab.ns(role)]);
            ns_run(&lab.ns(role), &["ip", "link", "set", "lo", "up"]);
        }
        let h = lab.ns("h");
        ns_run(&h, &["ip", "link", "add", "fxbr0", "type", "bridge"]);
        ns_run(&h, &["ip", "addr", "add", "10.99.0.1/24", "dev", "fxbr0"]);
        ns_run(&h, &["ip", "link", "set", "fxbr0", "up"]);
        ns_run(&h, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        lab
    }

    /// A "sandbox": namespace `role` with eth0 (`mac`, `ip`) on the bridge via `tap`.
    fn sandbox(&self, role: &str, tap: &str, mac: &str, ip: Ipv4Addr) {
        let (h, s) = (self.ns("h"), self.ns(role));
        ns_run(
            &h,
            &[
                "ip", "link", "add", tap, "type", "veth", "peer", "name", "eth0", "netns", &s,
            ],
        );
        ns_run(&h, &["ip", "link", "set", tap, "master", "fxbr0", "up"]);
        ns_run(&s, &["ip", "link", "set", "eth0", "address", mac, "up"]);
        ns_run(
            &s,
            &["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
        );
        ns_run(&s, &["ip", "route", "add", "default", "via", "10.99.0.1"]);
    }

    fn internet(&self) {
        let (h, i) = (self.ns("h"), self.ns("i"));
        ns_run(
            &h,
            &[
                "ip", "link", "add", "fxup0", "type", "veth", "peer", "name", "eth0", "netns", &i,
            ],
        );
        ns_run(&h, &["ip", "addr", "add", "10.98.0.1/24", "dev", "fxup0"]);
        ns_run(&h, &["ip", "link", "set", "fxup0", "up"]);
        ns_run(&i, &["ip", "addr", "add", "10.98.0.2/24", "dev", "eth0"]);
        ns_run(&i, &["ip", "link", "set", "eth0", "up"]);
        ns_run(
            &i,
            &["ip", "route", "add", "10.99.0.0/24", "via", "10.98.0.1"],
        );
    }

    /// A TCP listener (`nc -lk`) in `role`, listening when this returns.
    fn listen(&mut self, role: &str, addr: &str, port: u16) {
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns(role),
                "nc",
                "-lk",
                addr,
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nc");
        self.children.push(child);
        self.wait_bound(role, "-t", port);
    }

    /// Waits until a socket of `proto` (`-t`, `-u`) is bound to `port` in `role` (an
    /// event `ss` shows), 10 s at most.
    fn wait_bound(&self, role: &str, proto: &str, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let filter = format!("sport = :{port}");
        while ns_run(&self.ns(role), &["ss", "-Hln", proto, &filter])
            .trim()
            .is_empty()
        {
            assert!(
                Instant::now() < deadline,
                "nothing bound to {proto} port {port} in {role} within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// True when a TCP connection from `role` to `addr:port` (optionally from `src`)
    /// is accepted within 2 s.
    fn connects(&self, role: &str, addr: &str, port: u16, src: Option<&str>) -> bool {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(role), "nc", "-z", "-w", "2"]);
        if let Some(src) = src {
            cmd.args(["-s", src]);
        }
        cmd.args([addr, &port.to_string()]);
        cmd.status().expect("nc").success()
    }

    /// Starts a UDP listener in namespace `at` (`nc -u -l <listen…>`, the port last),
    /// waits until it is bound, runs the shell command `send` in namespace `role`, and
    /// answers whether the listener got `expect`: as soon as it shows, or `false` when
    /// it has not 1 s after `send` ended (time for a datagram that was let through to
    /// arrive: nothing else says that one was dropped).
    fn udp_received(
        &self,
        at: &str,
        listen: &[&str],
        role: &str,
        send: &str,
        expect: &str,
    ) -> bool {
        let mut listener = Command::new("ip")
            .args(["netns", "exec", &self.ns(at), "nc", "-u", "-l"])
            .args(listen)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("nc");
        let port = listen
            .last()
            .and_then(|p| p.parse().ok())
            .expect("the port last");
        self.wait_bound(at, "-u", port);
        let mut stdout = listener.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = stdout.read(&mut buf) {
                if tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        let _ = Command::new("ip")
            .args(["netns", "exec", &self.ns(role), "sh", "-c", send])
            .status();
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut got = Vec::new();
        let seen = loop {
            if String::from_utf8_lossy(&got).contains(expect) {
                break true;
            }
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(chunk) => got.extend(chunk),
                Err(_) => break false,
            }
        };
        let _ = listener.kill();
        let _ = listener.wait();
        let _ = reader.join();
        seen
    }

    /// Sends `query` over UDP from `role` to `to:port`; true when it arrived where the
    /// DNS proxy listens (10.99.0.1:5353).
    fn dns_reaches_proxy(&self, role: &str, to: &str, port: u16) -> bool {
        let send = format!("printf query | nc -u -w 1 {to} {port}");
        self.udp_received("h", &["10.99.0.1", "5353"], role, &send, "query")
    }

    /// A DHCP request (udp 68 → 255.255.255.255:67, a BOOTP message whose `chaddr` is
    /// `chaddr`) from `role`; true when the host got it.
    fn dhcp_reaches_host(&self, role: &str, chaddr: &str) -> bool {
        let send = format!(
            "python3 -c \"import socket, struct; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); \
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1); s.bind(('0.0.0.0', 68)); \
            ch = bytes.fromhex('{}'); \
            m = struct.pack('!BBBBIHH16s16s64s128s', 1, 1, 6, 0, 7, 0, 0x8000, bytes(16), ch + bytes(10), b'fluid-dhcp-probe', b'') + bytes.fromhex('63825363350101ff'); \
            s.sendto(m, ('255.255.255.255', 67))\"",
            chaddr.replace(':', "")
        );
        self.udp_received("h", &["67"], role, &send, "fluid-dhcp-probe")
    }

    /// One UDP datagram from `role` to the internet (10.98.0.2:`port`); true when it
    /// arrived. One way on purpose: rules that let a sandbox's packets out but drop the
    /// answers still leak what it sends, and a TCP connect would not show it.
    fn udp_reaches_internet(&self, role: &str, port: u16) -> bool {
        let mark = format!("one-way-from-{role}");
        let send = format!("printf {mark} | nc -u -w 1 10.98.0.2 {port}");
        self.udp_received("i", &["10.98.0.2", &port.to_string()], role, &send, &mark)
    }

    fn nft(&self, args: &[&str]) -> String {
        let mut all = vec!["nft"];
        all.extend_from_slice(args);
        ns_run(&self.ns("h"), &all)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for role in ["h", "s1", "s2", "s3", "i"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(role)])
                .status();
        }
    }
}

fn record(id: &str, mac: &str, allow: &[&str]) -> SandboxRecord {
    let n = |s: &str| Name::parse("n", s).expect("name");
    SandboxRecord {
        id: SandboxId::parse("id", id).expect("id"),
        name: n(id),
        image: n("debian-12"),
        cpus: 1,
        memory_mb: 512,
        mac: mac.into(),
        domain_uuid: "unused".into(),
        overlay_path: PathBuf::from("/unused"),
        network: n("default"),
        boot: Boot::Disk,
        created_at_unix: 0,
        started: true,
        last_ip: None,
        error: None,
        ssh_user_ca_keys: Vec::new(),
        ssh_host_key: None,
        egress: EgressPolicy::new(allow.iter().map(|l| parse_rule(l).expect("rule")).collect())
            .expect("policy"),
        known_ip: None,
        static_ip: None,
        template: None,
        start_path: None,
        pooled: false,
        tap: None,
        hostname: None,
    }
}

/// Names in the listing that belong to the sandbox with this id suffix, MAC or IP.
fn remnants(listing: &str, suffix: &str, mac: &str, ip: Ipv4Addr) -> Vec<String> {
    listing
        .lines()
        .filter(|l| l.contains(suffix) || l.contains(mac) || l.contains(&ip.to_string()))
        .map(str::to_owned)
        .collect()
}

fn check(what: &str, got: bool, want: bool) {
    println!("  {what:<58} {}", if got { "reached" } else { "blocked" });
    assert_eq!(got, want, "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_seal_sandboxes_in_a_real_kernel() {
    let root = nix::unistd::geteuid().is_root();
    let tools = ["ip", "nft", "nc"].iter().all(|t| {
        Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !fluid_prereq::available("nftables", root && tools, "needs root, ip, nft and nc") {
        return;
    }
    let mut lab = Lab::new();
    let s1 = record(
        "SBX-nfttest001",
        MAC1,
        &["10.98.0.2/32 tcp/8080", "allowed.test tcp/8081"],
    );
    let s2 = record("SBX-nfttest002", MAC2, &[]);
    lab.sandbox("s1", &tap_name(&s1.id), MAC1, IP1);
    lab.sandbox("s2", &tap_name(&s2.id), MAC2, IP2);
    lab.sandbox("s3", "fxforeign", MAC3, Ipv4Addr::new(10, 99, 0, 13));
    lab.internet();
    lab.listen("i", "10.98.0.2", 8080);
    lab.listen("i", "10.98.0.2", 8081);
    lab.listen("h", "10.99.0.1", 2222);
    lab.listen("s1", &IP1.to_string(), 22);
    lab.listen("s2", &IP2.to_string(), 22);
    let version = lab.nft(&["--version"]);
    println!("{} in {}", version.trim(), lab.ns("h"));

    println!("without rules (the lab itself works):");
    check(
        "host → s1 tcp/22",
        lab.connects("h", &IP1.to_string(), 22, None),
        true,
    );
    check(
        "s1 → internet tcp/8080",
        lab.connects("s1", "10.98.0.2", 8080, None),
        true,
    );
    check(
        "s1 → host tcp/2222",
        lab.connects("s1", "10.99.0.1", 2222, None),
        true,
    );

    let settings = NetworkSettings {
        table: TABLE.into(),
        bridge: "fxbr0".into(),
        host: "10.99.0.1/24".parse().expect("net"),
        dns_listen: "10.99.0.1:5353".parse().expect("addr"),
        dns_upstream: "10.99.0.1:53".parse().expect("addr"),
        always_allow: Vec::new(),
        // The lab's "internet" is private (10.98.0.0/16): permitted explicitly.
        resolved_private_allow: vec!["10.98.0.0/16".parse().expect("net")],
        dns_caps: Default::default(),
        resolved_min: fluid_agent::network::firewall::RESOLVED_MIN,
    };
    let nft = NftCommand::with_prefix("ip", ["netns", "exec", &lab.ns("h"), "nft"]);
    let fw = Arc::new(Firewall::new(settings, Arc::new(nft)));
    fw.upsert(&s1);
    fw.upsert(&s2);
    fw.apply().await.expect("apply two sealed sandboxes");

    println!("sealed, addresses not known yet:");
    check(
        "s1 DHCP broadcast → host udp/67",
        lab.dhcp_reaches_host("s1", MAC1),
        true,
    );
    check(
        "s1 DHCP broadcast with s2's chaddr → host udp/67",
        lab.dhcp_reaches_host("s1", MAC2),
        false,
    );
    check(
        "s1 DHCP broadcast with a random chaddr → host udp/67",
        lab.dhcp_reaches_host("s1", "02:de:ad:00:00:01"),
        false,
    );
    check(
        "host → s1 tcp/22 (address not admitted yet)",
        lab.connects("h", &IP1.to_string(), 22, None),
        false,
    );
    check(
        "s1 → host tcp/2222",
        lab.connects("s1", "10.99.0.1", 2222, None),
        false,
    );
    check(
        "s1 → internet tcp/8080 (allowed, IP unknown)",
        lab.connects("s1", "10.98.0.2", 8080, None),
        false,
    );

    fw.set_ip(&s1.id, Some(IP1));
    fw.set_ip(&s2.id, Some(IP2));
    fw.sync().await.expect("admit the addresses");

    let inet = lab.nft(&["-j", "list", "table", "inet", TABLE]);
    let bridge = lab.nft(&["-j", "list", "table", "bridge", TABLE]);
    for (listing, names) in [
        (
            &bridge,
            vec![
                "\"prerouting\"",
                "\"forward\"",
                "\"tap_nfttest001\"",
                "\"tap_nfttest002\"",
                "\"taps\"",
            ],
        ),
        (
            &inet,
            vec![
                "\"prerouting\"",
                "\"input\"",
                "\"sandbox_to_host\"",
                "\"forward\"",
                "\"egress\"",
                "\"sbx_nfttest001\"",
                "\"sbx_nfttest002\"",
                "\"macs\"",
                "\"ips\"",
                "\"d_nfttest001_0\"",
            ],
        ),
    ] {
        for name in names {
            assert!(listing.contains(name), "{name} missing from {listing}");
        }
    }

    println!("rules in force (s1: 10.98.0.2/32 tcp/8080 and allowed.test tcp/8081; s2 sealed):");
    check(
        "host → s1 tcp/22 (the agent's SSH path)",
        lab.connects("h", &IP1.to_string(), 22, None),
        true,
    );
    check(
        "s2 → s1 tcp/22",
        lab.connects("s2", &IP1.to_string(), 22, None),
        false,
    );
    check(
        "s1 DHCP broadcast → host udp/67 (address known)",
        lab.dhcp_reaches_host("s1", MAC1),
        true,
    );
    check(
        "s1 DHCP from its own address with s2's chaddr → host udp/67",
        lab.dhcp_reaches_host("s1", MAC2),
        false,
    );
    check(
        "s1 → internet tcp/8080 (its CIDR entry)",
        lab.connects("s1", "10.98.0.2", 8080, None),
        true,
    );
    check(
        "s1 → internet tcp/8081 (domain not resolved yet)",
        lab.connects("s1", "10.98.0.2", 8081, None),
        false,
    );
    check(
        "s2 → internet tcp/8080 (sealed)",
        lab.connects("s2", "10.98.0.2", 8080, None),
        false,
    );
    check(
        "s2 → internet udp/9000, one way (sealed)",
        lab.udp_reaches_internet("s2", 9000),
        false,
    );
    check(
        "s1 → internet udp/9000, one way (not in its list)",
        lab.udp_reaches_internet("s1", 9000),
        false,
    );
    check(
        "s1 → host tcp/2222 (inet input keyed on ether saddr)",
        lab.connects("s1", "10.99.0.1", 2222, None),
        false,
    );
    check(
        "s1 → s2 tcp/22 (bridge forward)",
        lab.connects("s1", &IP2.to_string(), 22, None),
        false,
    );
    check(
        "s3 (not ours) → internet udp/9000, one way (control)",
        lab.udp_reaches_internet("s3", 9000),
        true,
    );
    check(
        "s3 (not ours) → internet tcp/8080",
        lab.connects("s3", "10.98.0.2", 8080, None),
        true,
    );
    check(
        "s3 (not ours) → host tcp/2222",
        lab.connects("s3", "10.99.0.1", 2222, None),
        true,
    );
    check(
        "s3 (not ours) → s2 tcp/22",
        lab.connects("s3", &IP2.to_string(), 22, None),
        false,
    );
    ns_run(
        &lab.ns("s1"),
        &["ip", "addr", "add", "10.99.0.50/24", "dev", "eth0"],
    );
    let spoofed_ip = lab.connects("s1", "10.98.0.2", 8080, Some("10.99.0.50"));
    ns_run(
        &lab.ns("s1"),
        &["ip", "addr", "del", "10.99.0.50/24", "dev", "eth0"],
    );
    check(
        "s1 → internet tcp/8080 from a spoofed IP",
        spoofed_ip,
        false,
    );
    ns_run(
        &lab.ns("s1"),
        &["ip", "link", "set", "eth0", "address", "52:54:00:de:ad:01"],
    );
    let spoofed_mac = lab.connects("s1", "10.98.0.2", 8080, None);
    ns_run(
        &lab.ns("s1"),
        &["ip", "link", "set", "eth0", "address", MAC1],
    );
    check(
        "s1 → internet tcp/8080 from a spoofed MAC",
        spoofed_mac,
        false,
    );
    check(
        "s1 → internet tcp/8080 (own MAC again)",
        lab.connects("s1", "10.98.0.2", 8080, None),
        true,
    );

    check(
        "s1 DNS to the bridge address → the DNS proxy (nat, ether saddr)",
        lab.dns_reaches_proxy("s1", "10.99.0.1", 53),
        true,
    );
    check(
        "s1 DNS to an outside resolver → the DNS proxy",
        lab.dns_reaches_proxy("s1", "10.98.0.2", 53),
        true,
    );
    check(
        "s3 (not ours) DNS → not redirected",
        lab.dns_reaches_proxy("s3", "10.99.0.1", 53),
        false,
    );

    // An answer naming the host's subnet or loopback opens nothing.
    let inward = fw
        .allow_resolved(
            IP1,
            "allowed.test",
            &[
                "10.99.0.1".parse().expect("ip"),
                "127.0.0.1".parse().expect("ip"),
            ],
            Duration::from_secs(5),
        )
        .await
        .expect("allow resolved");
    assert!(!inward, "an answer admitted the host subnet or loopback");
    let added = fw
        .allow_resolved(
            IP1,
            "Allowed.Test.",
            &["10.98.0.2".parse().expect("ip")],
            Duration::from_secs(5),
        )
        .await
        .expect("allow resolved");
    assert!(added);
    let set = lab.nft(&["list", "set", "inet", TABLE, "d_nfttest001_0"]);
    assert!(set.contains("10.98.0.2 timeout 30s"), "{set}");
    check(
        "s1 → internet tcp/8081 (allowed.test resolved)",
        lab.connects("s1", "10.98.0.2", 8081, None),
        true,
    );
    check(
        "s2 → internet tcp/8081",
        lab.connects("s2", "10.98.0.2", 8081, None),
        false,
    );

    assert!(!fw.check().await.expect("check"), "nothing changed yet");
    lab.nft(&["delete", "table", "inet", TABLE]);
    assert!(
        fw.check().await.expect("check"),
        "a deleted table is restored"
    );
    let set = lab.nft(&["list", "set", "inet", TABLE, "d_nfttest001_0"]);
    assert!(
        set.contains("10.98.0.2"),
        "resolved addresses survive a rebuild: {set}"
    );
    check(
        "s2 → internet tcp/8080 (after the restore)",
        lab.connects("s2", "10.98.0.2", 8080, None),
        false,
    );

    assert!(fw.remove(&s2.id));
    fw.sync().await.expect("without s2");
    let inet_text = lab.nft(&["list", "table", "inet", TABLE]);
    let bridge_text = lab.nft(&["list", "table", "bridge", TABLE]);
    println!(
        "\n--- nft list table inet {TABLE} (one sandbox: one CIDR and one domain entry)\n{inet_text}"
    );
    println!("--- nft list table bridge {TABLE}\n{bridge_text}");
    let left = remnants(
        &format!("{inet_text}{bridge_text}"),
        "nfttest002",
        MAC2,
        IP2,
    );
    assert!(left.is_empty(), "s2 left {left:?}");
    check(
        "s1 → internet tcp/8080 (s2 removed)",
        lab.connects("s1", "10.98.0.2", 8080, None),
        true,
    );

    assert!(fw.remove(&s1.id));
    fw.sync().await.expect("without s1");
    let all = format!(
        "{}{}",
        lab.nft(&["list", "table", "inet", TABLE]),
        lab.nft(&["list", "table", "bridge", TABLE])
    );
    let left = remnants(&all, "nfttest001", MAC1, IP1);
    assert!(left.is_empty(), "s1 left {left:?}");
    assert!(!all.contains("set d_"), "no domain set is left: {all}");
    check(
        "s1 (removed) → host tcp/2222",
        lab.connects("s1", "10.99.0.1", 2222, None),
        true,
    );
}
