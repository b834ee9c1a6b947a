//! Network isolation and egress control with real VMs under TCG: two sandboxes A and
//! B, a simulated internet (a namespace of the test's own behind a veth, with an HTTP
//! server on two ports and a DNS server), and the agent's nftables rules.
//!
//! One shared fixture (the stack, the internet, A and B booted once, a warm pool of one
//! on the agent); each test is one scenario named after what it proves, and sets A's
//! allow-list itself first, so the tests hold in any order. Sandboxes start restored
//! from the memory template or claimed from the pool; one test makes a pooled and a
//! forked one and proves them sealed, and their egress their own.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use fluid_client::Client;
use fluid_client::governance::ApprovalStatus;
use fluid_client::types::{HostState, WriteFileRequest};
use fluid_prereq::shared::{Shared, Teardown};
use integration_tests::api::Api;
use integration_tests::guest;
use integration_tests::internet::{HTTP_PORT, HTTP_PORT_2, Internet};
use integration_tests::stack::{AgentOptions, Stack, StoreKind, free_port};
use reqwest::Method;
use serde_json::json;

/// Probes from inside a sandbox; prints `OK …` or `FAIL <why>`; exit 0 on success.
const PROBE: &str = include_str!("probe.py");

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

/// The shared fixture: a stack with one agent, the simulated internet, and two booted
/// sandboxes A and B (owned by `agent-net`) with the probe installed; B serves UDP
/// echo on 5000.
struct Net {
    stack: Stack,
    inet: Internet,
    api: Api,
    agent_token: String,
    operator_token: String,
    a: String,
    a_ip: Ipv4Addr,
    b: String,
    b_ip: Ipv4Addr,
    host_port: u16,
    _host_service: std::net::TcpListener,
}

impl Net {
    fn admin(&self) -> &Client {
        &self.stack.client
    }

    fn url(&self) -> String {
        format!("http://{}:{HTTP_PORT}/", self.inet.server)
    }

    /// Sets A's allow-list as an operator (`[]`: sealed).
    async fn allow(&self, allow: serde_json::Value) -> Result<()> {
        self.allow_for(&self.a, allow).await
    }

    /// Sets sandbox `id`'s allow-list as an operator (`[]`: sealed).
    async fn allow_for(&self, id: &str, allow: serde_json::Value) -> Result<()> {
        let (s, v) = self
            .api
            .send(
                &self.operator_token,
                Method::PUT,
                &format!("/v1/sandboxes/{id}/network"),
                Some(json!({ "allow": allow })),
            )
            .await?;
        ensure!(s == 200, "setting {id}'s allow-list: {s} {v}");
        Ok(())
    }

    /// A's allow-list: allowed.test on the first HTTP port.
    async fn allow_the_domain(&self) -> Result<()> {
        self.allow(json!([{"domain": "allowed.test", "protocol": "tcp", "port": HTTP_PORT}]))
            .await
    }
}

impl Teardown for Net {
    async fn teardown(self) {
        for id in [&self.a, &self.b] {
            if let Err(e) = self.stack.client.destroy_sandbox(id).await {
                eprintln!("teardown: destroying {id}: {e}");
            }
        }
        drop(self.stack);
        drop(self.inet);
        println!("teardown: the shared stack and internet are gone");
    }
}

static NET: Shared<Net> = Shared::new();

async fn setup() -> Result<Net> {
    let tag = format!("{:04x}", std::process::id() & 0xffff);
    let inet = Internet::start(&tag, 77, &["allowed.test", "other.test"])?;
    println!(
        "internet: {} in namespace {} (dns {})",
        inet.server, inet.namespace, inet.dns
    );
    // Two sandboxes boot at once: 300 s for their leases, not the default 180, on a
    // loaded host.
    let mut stack = Stack::start_configured(
        StoreKind::Sqlite,
        vec![
            AgentOptions::new("a")
                .network(&format!("dns_upstream = {:?}", inet.dns))
                .warm_pool(1),
        ],
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
        install_probe(&admin, id).await?;
    }
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
    Ok(Net {
        stack,
        inet,
        api,
        agent_token,
        operator_token,
        a,
        a_ip,
        b,
        b_ip,
        host_port,
        _host_service: host_service,
    })
}

async fn install_probe(c: &Client, id: &str) -> Result<()> {
    c.write_file(
        id,
        &WriteFileRequest {
            path: "/usr/local/bin/probe".into(),
            content: PROBE.into(),
            encoding: None,
            mode: Some("0755".into()),
        },
    )
    .await?;
    Ok(())
}

/// Runs one scenario on the shared fixture.
fn scenario(test: impl AsyncFnOnce(&mut Net) -> Result<()>) -> Result<()> {
    NET.run(setup, test)
}

#[test]
fn a_sealed_sandbox_reaches_no_other_sandbox_the_host_or_the_internet() -> Result<()> {
    scenario(async |n| {
        n.allow(json!([])).await?;
        let (admin, a, b) = (n.admin(), &n.a, &n.b);
        let (a_ip, b_ip, url) = (n.a_ip, n.b_ip, n.url());
        let server = n.inet.server;
        ensure!(!probe(admin, a, "A → internet http", &format!("http {url}")).await?);
        ensure!(!probe(admin, a, "A → internet icmp", &format!("icmp {server}")).await?);
        ensure!(!probe(admin, a, "A → B tcp/22 (sshd)", &format!("tcp {b_ip} 22")).await?);
        ensure!(!probe(admin, a, "A → B icmp", &format!("icmp {b_ip}")).await?);
        ensure!(
            !probe(
                admin,
                a,
                "A → B udp/5000 (echo)",
                &format!("udp {b_ip} 5000")
            )
            .await?
        );
        ensure!(!probe(admin, b, "B → A tcp/22 (sshd)", &format!("tcp {a_ip} 22")).await?);
        ensure!(!probe(admin, b, "B → A icmp", &format!("icmp {a_ip}")).await?);
        let agent_port = n
            .stack
            .agents
            .get("a")
            .context("agent")?
            .address
            .rsplit(':')
            .next()
            .unwrap_or("0")
            .to_owned();
        let host_port = n.host_port;
        for (what, target) in [
            (
                "A → host service (bridge address)",
                format!("tcp 192.168.122.1 {host_port}"),
            ),
            (
                "A → host service (veth address)",
                format!("tcp {} {host_port}", n.inet.gateway),
            ),
            (
                "A → agent gRPC port on the bridge",
                format!("tcp 192.168.122.1 {agent_port}"),
            ),
            ("A → host SSH port", "tcp 192.168.122.1 22".to_owned()),
            ("A → cloud metadata", "tcp 169.254.169.254 80".to_owned()),
        ] {
            ensure!(!probe(admin, a, what, &target).await?, "{what}");
        }
        // The DNS proxy answers only names of A's policy: sealed, A resolves nothing
        // (a_domain_entry_… shows the name resolving once A's policy names it).
        ensure!(
            !probe(
                admin,
                a,
                "A resolves allowed.test (not in its policy)",
                "resolve allowed.test"
            )
            .await?
        );
        Ok(())
    })
}

#[test]
fn an_approved_egress_request_opens_its_port_until_the_rule_is_removed() -> Result<()> {
    scenario(async |n| {
        n.allow(json!([])).await?;
        let (admin, a, b, url) = (n.admin(), &n.a, &n.b, n.url());
        let server = n.inet.server;
        let req_path = format!("/v1/sandboxes/{a}/network/requests");
        let asker = {
            let (http, api_url, token, path) = (
                n.api.http.clone(),
                n.stack.api_url.clone(),
                n.agent_token.clone(),
                req_path.clone(),
            );
            tokio::spawn(async move {
                Api { http, url: api_url }
                    .send(&token, Method::POST, &path, Some(json!({"destination": server.to_string(), "port": HTTP_PORT, "protocol": "tcp", "reason": "fetch the test page"})))
                    .await
            })
        };
        let operator = n.stack.client_with(&n.operator_token)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let pending = loop {
            let page = operator
                .list_approvals(&fluid_client::client::ApprovalQuery {
                    status: Some(ApprovalStatus::Pending),
                    ..Default::default()
                })
                .await?;
            if let Some(p) = page
                .approvals
                .into_iter()
                .find(|p| p.kind.as_str() == "egress")
            {
                break p;
            }
            ensure!(
                Instant::now() < deadline && !asker.is_finished(),
                "no pending egress approval within 60 s (the request answered early: {})",
                asker.is_finished()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        println!(
            "  pending {} {:?}: {}",
            pending.id, pending.kind, pending.summary
        );
        operator.approve(&pending.id, &Default::default()).await?;
        let (status, answer) = asker.await??;
        println!("  request answered {status}: {answer}");
        ensure!(
            status == 200 && answer["approved"] == json!(true),
            "{answer}"
        );
        ensure!(
            probe(
                admin,
                a,
                "A → internet http (approved)",
                &format!("http {url}")
            )
            .await?
        );
        ensure!(
            !probe(
                admin,
                a,
                "A → internet other port",
                &format!("http http://{server}:{HTTP_PORT_2}/")
            )
            .await?
        );
        ensure!(
            !probe(
                admin,
                b,
                "B → internet http (not B's rule)",
                &format!("http {url}")
            )
            .await?
        );
        n.allow(json!([])).await?;
        ensure!(
            !probe(
                admin,
                a,
                "A → internet http (rule removed)",
                &format!("http {url}")
            )
            .await?
        );
        Ok(())
    })
}

#[test]
fn a_domain_entry_opens_that_name_on_that_port_only() -> Result<()> {
    scenario(async |n| {
        n.allow_the_domain().await?;
        let (admin, a) = (n.admin(), &n.a);
        ensure!(
            probe(
                admin,
                a,
                "A → http://allowed.test:8080",
                &format!("http http://allowed.test:{HTTP_PORT}/")
            )
            .await?
        );
        ensure!(
            !probe(
                admin,
                a,
                "A → http://other.test:8081 (same server)",
                &format!("http http://other.test:{HTTP_PORT_2}/")
            )
            .await?
        );
        ensure!(
            !probe(
                admin,
                a,
                "A → http://allowed.test:8081",
                &format!("http http://allowed.test:{HTTP_PORT_2}/")
            )
            .await?
        );
        let (_, v) = n
            .api
            .send(
                &n.operator_token,
                Method::GET,
                &format!("/v1/sandboxes/{a}/network"),
                None,
            )
            .await?;
        println!("  policy: {v}");
        Ok(())
    })
}

#[test]
fn root_that_changes_its_mac_and_ip_reaches_nothing() -> Result<()> {
    scenario(async |n| {
        n.allow_the_domain().await?;
        let (admin, a, b_ip, url, host_port) = (n.admin(), &n.a, n.b_ip, n.url(), n.host_port);
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
             rm -f /root/spoof.out; setsid nohup sh /root/spoof.sh > /root/spoof.out 2>&1 < /dev/null &"
        );
        run(admin, a, &spoof).await?;
        // Poll for the script's last line (180 s at most). While it runs A has another
        // address, so most polls fail until it is restored.
        let deadline = Instant::now() + Duration::from_secs(180);
        let out = loop {
            if let Ok((0, out)) = run(admin, a, "cat /root/spoof.out").await
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
        Ok(())
    })
}

#[test]
fn the_agent_restores_its_rules_after_a_restart() -> Result<()> {
    scenario(async |n| {
        n.allow_the_domain().await?;
        let (a, b) = (n.a.clone(), n.b.clone());
        let tables = nft(&["list", "tables"])?;
        let own: Vec<String> = tables
            .lines()
            .filter(|l| l.contains(&n.stack.prefix))
            .map(str::to_owned)
            .collect();
        println!("  agent tables: {own:?}");
        ensure!(own.len() >= 2, "{tables}");
        n.stack.agent("a")?.service.stop().await?;
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
        ensure!(!nft(&["list", "tables"])?.contains(&n.stack.prefix));
        let restarted = Instant::now();
        n.stack.agent("a")?.service.start()?;
        let ruleset = loop {
            let r = nft(&["list", "ruleset"])?;
            if r.contains(&suffix(&a)) && r.contains(&suffix(&b)) {
                break r;
            }
            if restarted.elapsed() > Duration::from_secs(60) {
                let log = n.stack.agent("a")?.service.log_tail(60);
                bail!("rules not restored within 60 s; agent log:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        println!(
            "  rules back {:.1} s after the agent was started",
            restarted.elapsed().as_secs_f64()
        );
        n.stack
            .wait_host("a", HostState::Online, Duration::from_secs(60))
            .await?;
        println!(
            "  restored: {} lines mention A",
            ruleset.lines().filter(|l| l.contains(&suffix(&a))).count()
        );
        let (admin, server, b_ip) = (n.admin(), n.inet.server, n.b_ip);
        ensure!(
            !probe(
                admin,
                &a,
                "A → internet other port (still sealed)",
                &format!("http http://{server}:{HTTP_PORT_2}/")
            )
            .await?
        );
        ensure!(
            !probe(
                admin,
                &a,
                "A → B tcp/22 (still sealed)",
                &format!("tcp {b_ip} 22")
            )
            .await?
        );
        ensure!(
            probe(
                admin,
                &a,
                "A → http://allowed.test:8080 (policy kept)",
                &format!("http http://allowed.test:{HTTP_PORT}/")
            )
            .await?
        );
        Ok(())
    })
}

/// A third sandbox C, made and destroyed here, so A and B stay for the other tests.
#[test]
fn destroying_a_sandbox_leaves_none_of_its_rules() -> Result<()> {
    scenario(async |n| {
        let agent = n.stack.client_with(&n.agent_token)?;
        let (c, c_ip) = create(&agent, "net-c").await?;
        ready(n.admin(), &c).await?;
        let ruleset = nft(&["list", "ruleset"])?;
        let before = ruleset.lines().filter(|l| l.contains(&suffix(&c))).count();
        println!("  C {c} {c_ip}: {before} lines of rules mention it");
        ensure!(before > 0, "C has no rules to remove: {ruleset}");
        n.admin().destroy_sandbox(&c).await?;
        let ruleset = nft(&["list", "ruleset"])?;
        let left: Vec<&str> = ruleset
            .lines()
            .filter(|l| l.contains(&suffix(&c)))
            .collect();
        println!("  lines mentioning C after destroy: {}", left.len());
        ensure!(left.is_empty(), "{left:?}");
        ensure!(
            ruleset.contains(&suffix(&n.a)) && ruleset.contains(&suffix(&n.b)),
            "A's and B's rules stay"
        );
        Ok(())
    })
}

mod pooled_forked;
