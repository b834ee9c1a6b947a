//! Network isolation and egress control with real VMs under TCG: two sandboxes A and
//! B, a simulated internet (a namespace of the test's own behind a veth, with an HTTP
//! server on two ports and a DNS server), and the agent's nftables rules.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use fluid_client::Client;
use fluid_client::governance::ApprovalStatus;
use fluid_client::types::{HostState, WriteFileRequest};
use integration_tests::api::Api;
use integration_tests::guest;
use integration_tests::internet::{HTTP_PORT, HTTP_PORT_2, Internet};
use integration_tests::stack::{AgentOptions, Stack, StoreKind, free_port};
use serde_json::json;

/// Probes from inside a sandbox; prints `OK …` or `FAIL <why>`; exit 0 on success.
const PROBE: &str = r#"#!/usr/bin/env python3
import os, socket, struct, sys, time, urllib.request
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff
mode, args = sys.argv[1], sys.argv[2:]
try:
    if mode == "http":
        body = urllib.request.urlopen(args[0], timeout=5).read().decode().strip()
        print("OK", body)
    elif mode == "tcp":
        socket.create_connection((args[0], int(args[1])), timeout=5).close()
        print("OK connected")
    elif mode == "icmp":
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        s.settimeout(4)
        hdr = struct.pack("!BBHHH", 8, 0, 0, 0x1234, 1) + b"fluid-probe!"
        pkt = struct.pack("!BBHHH", 8, 0, csum(hdr), 0x1234, 1) + b"fluid-probe!"
        s.sendto(pkt, (args[0], 0))
        deadline = time.time() + 4
        while True:
            s.settimeout(max(0.1, deadline - time.time()))
            data, addr = s.recvfrom(1500)
            if addr[0] == args[0] and data[20] == 0:
                print("OK echo reply"); break
    elif mode == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(4)
        s.sendto(b"fluid-probe", (args[0], int(args[1])))
        s.recvfrom(1500); print("OK udp reply")
    elif mode == "udp-echo":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", int(args[0])))
        while True:
            data, addr = s.recvfrom(1500); s.sendto(data, addr)
    elif mode == "resolve":
        print("OK", socket.gethostbyname(args[0]))
    else:
        print("FAIL unknown mode"); sys.exit(2)
except Exception as e:
    print("FAIL", type(e).__name__, e); sys.exit(1)
"#;

async fn run(c: &Client, id: &str, cmd: &str) -> Result<(i32, String)> {
    guest::run(c, id, cmd, 60).await
}

/// Runs a probe; `true` when it reached its target.
async fn probe(c: &Client, id: &str, what: &str, args: &str) -> Result<bool> {
    let (code, out) = run(c, id, &format!("/usr/local/bin/probe {args}")).await?;
    println!("  {what:<44} {out}");
    Ok(code == 0)
}

async fn create(c: &Client, name: &str) -> Result<(String, Ipv4Addr)> {
    guest::create(c, "agent-net", name).await
}

async fn ready(c: &Client, id: &str) -> Result<()> {
    guest::ready(c, id, Duration::from_secs(180)).await
}

fn nft(args: &[&str]) -> Result<String> {
    let out = std::process::Command::new("nft").args(args).output()?;
    if !out.status.success() {
        bail!("nft {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn suffix(id: &str) -> String {
    id.trim_start_matches("SBX-").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandboxes_are_sealed_and_egress_opens_only_with_approval() -> Result<()> {
    let tag = format!("{:04x}", std::process::id() & 0xffff);
    let inet = Internet::start(&tag, 77, &["allowed.test", "other.test"])?;
    let server = inet.server;
    println!(
        "internet: {} in namespace {} (dns {})",
        server, inet.namespace, inet.dns
    );
    // Two sandboxes boot at once: 300 s for their leases, not the default 180, on a
    // loaded host.
    let mut stack = Stack::start_configured(
        StoreKind::Sqlite,
        vec![AgentOptions::new("a").network(&format!("dns_upstream = {:?}", inet.dns))],
        "wait_for_ip_timeout_secs = 300\n",
        "",
    )
    .await?;
    stack
        .wait_host("a", HostState::Online, Duration::from_secs(30))
        .await?;
    // A service on the host, on every address of the sandboxes' namespace.
    let host_port = free_port()?;
    let host_service = std::net::TcpListener::bind(("0.0.0.0", host_port))?;
    let admin = stack.client.clone();
    let agent_token = stack.token_cli("net-bot", "agent", Some("agent-net"))?;
    let operator_token = stack.token_cli("net-op", "operator", None)?;
    let agent = stack.client_with(&agent_token)?;
    let api = Api::new(&stack.api_url);

    let ((a, a_ip), (b, b_ip)) =
        tokio::try_join!(create(&agent, "net-a"), create(&agent, "net-b"))?;
    println!("sandboxes: A {a} {a_ip}, B {b} {b_ip}");
    tokio::try_join!(ready(&admin, &a), ready(&admin, &b))?;
    for id in [&a, &b] {
        admin
            .write_file(
                id,
                &WriteFileRequest {
                    path: "/usr/local/bin/probe".into(),
                    content: PROBE.into(),
                    encoding: None,
                    mode: Some("0755".into()),
                },
            )
            .await?;
    }
    let url = format!("http://{server}:{HTTP_PORT}/");
    // B serves UDP echo on 5000; the positive controls show B's services answer.
    run(
        &admin,
        &b,
        "setsid nohup /usr/local/bin/probe udp-echo 5000 >/dev/null 2>&1 < /dev/null &",
    )
    .await?;
    // The echo server answers once it is up: probe until it does (30 s at most).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !probe(
        &admin,
        &b,
        "B → itself udp/5000 (control)",
        "udp 127.0.0.1 5000",
    )
    .await?
    {
        ensure!(
            Instant::now() < deadline,
            "B's UDP echo server never answered"
        );
    }
    ensure!(
        probe(
            &admin,
            &b,
            "B → itself tcp/22 (control)",
            &format!("tcp {b_ip} 22")
        )
        .await?
    );
    ensure!(
        probe(
            &admin,
            &b,
            "B → itself icmp (control)",
            &format!("icmp {b_ip}")
        )
        .await?
    );

    println!("1. sealed by default");
    ensure!(!probe(&admin, &a, "A → internet http", &format!("http {url}")).await?);
    ensure!(!probe(&admin, &a, "A → internet icmp", &format!("icmp {server}")).await?);
    ensure!(!probe(&admin, &a, "A → B tcp/22 (sshd)", &format!("tcp {b_ip} 22")).await?);
    ensure!(!probe(&admin, &a, "A → B icmp", &format!("icmp {b_ip}")).await?);
    ensure!(
        !probe(
            &admin,
            &a,
            "A → B udp/5000 (echo)",
            &format!("udp {b_ip} 5000")
        )
        .await?
    );
    ensure!(!probe(&admin, &b, "B → A tcp/22 (sshd)", &format!("tcp {a_ip} 22")).await?);
    ensure!(!probe(&admin, &b, "B → A icmp", &format!("icmp {a_ip}")).await?);
    let agent_port = stack
        .agents
        .get("a")
        .context("agent")?
        .address
        .rsplit(':')
        .next()
        .unwrap_or("0")
        .to_owned();
    for (what, target) in [
        (
            "A → host service (bridge address)",
            format!("tcp 192.168.122.1 {host_port}"),
        ),
        (
            "A → host service (veth address)",
            format!("tcp {} {host_port}", inet.gateway),
        ),
        (
            "A → agent gRPC port on the bridge",
            format!("tcp 192.168.122.1 {agent_port}"),
        ),
        ("A → host SSH port", "tcp 192.168.122.1 22".to_owned()),
        ("A → cloud metadata", "tcp 169.254.169.254 80".to_owned()),
    ] {
        ensure!(!probe(&admin, &a, what, &target).await?, "{what}");
    }
    // The DNS proxy answers only names of A's policy: sealed, A resolves nothing
    // (section 3 shows the name resolving once A's policy names it).
    ensure!(
        !probe(
            &admin,
            &a,
            "A resolves allowed.test (not in its policy)",
            "resolve allowed.test"
        )
        .await?
    );

    println!("2. an egress request, approved by an operator");
    let req_path = format!("/v1/sandboxes/{a}/network/requests");
    let asker = {
        let (http, url, token, path) = (
            api.http.clone(),
            stack.api_url.clone(),
            agent_token.clone(),
            req_path.clone(),
        );
        tokio::spawn(async move {
            Api { http, url }
                .send(&token, reqwest::Method::POST, &path, Some(json!({"destination": server.to_string(), "port": HTTP_PORT, "protocol": "tcp", "reason": "fetch the test page"})))
                .await
        })
    };
    let operator = stack.client_with(&operator_token)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let pending = loop {
        let page = operator
            .list_approvals(&fluid_client::client::ApprovalQuery {
                status: Some(ApprovalStatus::Pending),
                ..Default::default()
            })
            .await?;
        if let Some(p) = page.approvals.into_iter().next() {
            break p;
        }
        ensure!(
            Instant::now() < deadline && !asker.is_finished(),
            "no pending approval within 60 s (the request answered early: {})",
            asker.is_finished()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!(
        "  pending {} {:?}: {}",
        pending.id, pending.kind, pending.summary
    );
    ensure!(pending.kind.as_str() == "egress");
    operator.approve(&pending.id, &Default::default()).await?;
    let (status, answer) = asker.await??;
    println!("  request answered {status}: {answer}");
    ensure!(
        status == 200 && answer["approved"] == json!(true),
        "{answer}"
    );
    ensure!(
        probe(
            &admin,
            &a,
            "A → internet http (approved)",
            &format!("http {url}")
        )
        .await?
    );
    ensure!(
        !probe(
            &admin,
            &a,
            "A → internet other port",
            &format!("http http://{server}:{HTTP_PORT_2}/")
        )
        .await?
    );
    ensure!(
        !probe(
            &admin,
            &b,
            "B → internet http (not B's rule)",
            &format!("http {url}")
        )
        .await?
    );
    let (s, v) = api
        .send(
            &operator_token,
            reqwest::Method::PUT,
            &format!("/v1/sandboxes/{a}/network"),
            Some(json!({"allow": []})),
        )
        .await?;
    ensure!(s == 200, "{v}");
    ensure!(
        !probe(
            &admin,
            &a,
            "A → internet http (rule removed)",
            &format!("http {url}")
        )
        .await?
    );

    println!("3. a domain entry");
    let (s, v) = api
        .send(&operator_token, reqwest::Method::PUT, &format!("/v1/sandboxes/{a}/network"), Some(json!({"allow": [{"domain": "allowed.test", "protocol": "tcp", "port": HTTP_PORT}]})))
        .await?;
    ensure!(s == 200, "{v}");
    ensure!(
        probe(
            &admin,
            &a,
            "A → http://allowed.test:8080",
            &format!("http http://allowed.test:{HTTP_PORT}/")
        )
        .await?
    );
    ensure!(
        !probe(
            &admin,
            &a,
            "A → http://other.test:8081 (same server)",
            &format!("http http://other.test:{HTTP_PORT_2}/")
        )
        .await?
    );
    ensure!(
        !probe(
            &admin,
            &a,
            "A → http://allowed.test:8081",
            &format!("http http://allowed.test:{HTTP_PORT_2}/")
        )
        .await?
    );
    let (_, v) = api
        .send(
            &operator_token,
            reqwest::Method::GET,
            &format!("/v1/sandboxes/{a}/network"),
            None,
        )
        .await?;
    println!("  policy: {v}");

    println!("4. root in A changes its MAC and IP");
    let spoof = format!(
        "cat > /root/spoof.sh <<'EOF'\n\
         MAC=$(cat /sys/class/net/eth0/address); IP=$(ip -4 -o addr show eth0 | awk '{{print $4}}')\n\
         pkill dhclient; sleep 1\n\
         ip link set eth0 down; ip link set eth0 address 52:54:00:de:ad:01; ip link set eth0 up\n\
         ip addr flush dev eth0; ip addr add 192.168.122.250/24 dev eth0; ip route add default via 192.168.122.1\n\
         echo new-mac-new-ip; probe http http://allowed.test:{HTTP_PORT}/; probe http {url}; probe tcp {b_ip} 22; probe icmp {b_ip}; probe tcp 192.168.122.1 {host_port}\n\
         ip link set eth0 down; ip link set eth0 address $MAC; ip link set eth0 up\n\
         ip addr flush dev eth0; ip addr add 192.168.122.251/24 dev eth0; ip route add default via 192.168.122.1\n\
         echo own-mac-new-ip; probe http {url}; probe tcp {b_ip} 22; probe icmp {b_ip}\n\
         ip addr flush dev eth0; ip addr add $IP dev eth0; ip route add default via 192.168.122.1\n\
         echo restored; probe http http://allowed.test:{HTTP_PORT}/\n\
         echo done\n\
         EOF\n\
         setsid nohup sh /root/spoof.sh > /root/spoof.out 2>&1 < /dev/null &"
    );
    run(&admin, &a, &spoof).await?;
    // Poll for the script's last line (180 s at most). While it runs A has another
    // address, so most polls fail until it is restored.
    let deadline = Instant::now() + Duration::from_secs(180);
    let out = loop {
        if let Ok((0, out)) = run(&admin, &a, "cat /root/spoof.out").await
            && out.contains("done")
        {
            break out;
        }
        ensure!(
            Instant::now() < deadline,
            "the spoofing script did not finish within 180 s"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    println!("{out}");
    let sections: Vec<&str> = out.split("own-mac-new-ip").collect();
    ensure!(sections.len() == 2, "{out}");
    let spoofed = format!(
        "{}{}",
        sections[0],
        sections[1].split("restored").next().unwrap_or("")
    );
    ensure!(
        !spoofed.contains("OK"),
        "a spoofed sandbox reached something:\n{out}"
    );
    ensure!(
        out.rsplit("restored").next().unwrap_or("").contains("OK"),
        "after restoring, the allowed fetch works again:\n{out}"
    );

    println!("5. the agent restores its rules after a restart");
    let tables = nft(&["list", "tables"])?;
    let own: Vec<String> = tables
        .lines()
        .filter(|l| l.contains(&stack.prefix))
        .map(str::to_owned)
        .collect();
    println!("  agent tables: {own:?}");
    ensure!(own.len() >= 2, "{tables}");
    {
        let agent_a = stack.agent("a")?;
        agent_a.service.stop().await?;
    }
    let still = nft(&["list", "tables"])?;
    ensure!(
        own.iter().all(|t| still.contains(t.as_str())),
        "a stopped agent leaves its rules in place: {still}"
    );
    println!("  agent stopped: its tables stay in force");
    for t in &own {
        let words: Vec<&str> = t.split_whitespace().collect();
        nft(&["delete", "table", words[1], words[2]])?;
    }
    ensure!(!nft(&["list", "tables"])?.contains(&stack.prefix));
    let restarted = Instant::now();
    stack.agent("a")?.service.start()?;
    let ruleset = loop {
        let r = nft(&["list", "ruleset"])?;
        if r.contains(&suffix(&a)) && r.contains(&suffix(&b)) {
            break r;
        }
        if restarted.elapsed() > Duration::from_secs(60) {
            let log = stack.agent("a")?.service.log_tail(60);
            bail!("rules not restored within 60 s; agent log:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "  rules back {:.1} s after the agent was started",
        restarted.elapsed().as_secs_f64()
    );
    stack
        .wait_host("a", HostState::Online, Duration::from_secs(60))
        .await?;
    println!(
        "  restored: {} lines mention A",
        ruleset.lines().filter(|l| l.contains(&suffix(&a))).count()
    );
    ensure!(
        !probe(
            &admin,
            &a,
            "A → internet other port (still sealed)",
            &format!("http http://{server}:{HTTP_PORT_2}/")
        )
        .await?
    );
    ensure!(
        !probe(
            &admin,
            &a,
            "A → B tcp/22 (still sealed)",
            &format!("tcp {b_ip} 22")
        )
        .await?
    );
    ensure!(
        probe(
            &admin,
            &a,
            "A → http://allowed.test:8080 (policy kept)",
            &format!("http http://allowed.test:{HTTP_PORT}/")
        )
        .await?
    );

    println!("6. destroying A leaves none of its rules");
    admin.destroy_sandbox(&a).await?;
    let ruleset = nft(&["list", "ruleset"])?;
    let left: Vec<&str> = ruleset
        .lines()
        .filter(|l| l.contains(&suffix(&a)))
        .collect();
    println!("  lines mentioning A after destroy: {}", left.len());
    ensure!(left.is_empty(), "{left:?}");
    ensure!(ruleset.contains(&suffix(&b)), "B's rules stay");
    admin.destroy_sandbox(&b).await?;
    drop(host_service);
    Ok(())
}
