//! Pooled and forked sandboxes: sealed like any other, and their egress their own.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use fluid_client::snapshots::ForkRequest;
use fluid_client::types::{CreateSandboxRequest, CreateSandboxResponse, StartPath};
use integration_tests::internet::HTTP_PORT;
use serde_json::json;

use super::{Net, install_probe, nft, probe, ready, scenario, suffix};

/// Waits until the agent's warm pool has a member ready (`GET /v1/hosts`).
async fn pool_ready(n: &Net) -> Result<()> {
    let host = n.stack.host("a");
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let hosts = n.admin().list_hosts().await?;
        let ready = hosts
            .hosts
            .iter()
            .find(|h| h.name == host)
            .and_then(|h| h.pools.first())
            .is_some_and(|p| p.ready >= 1);
        if ready {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the warm pool never had a member ready"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The id and address of sandbox `who` just `created`, which must have started by `path`.
fn started_by(
    who: &str,
    created: &CreateSandboxResponse,
    path: StartPath,
) -> Result<(String, Ipv4Addr)> {
    let id = created.sandbox.id.clone();
    ensure!(
        created.sandbox.start_path == Some(path),
        "{who} {id} started by {:?}, not by {path:?}",
        created.sandbox.start_path
    );
    let ip = created
        .ip_address
        .as_deref()
        .with_context(|| format!("{who} has no IP"))?
        .parse()?;
    Ok((id, ip))
}

#[test]
fn pooled_and_forked_sandboxes_are_sealed_and_their_egress_is_their_own() -> Result<()> {
    scenario(async |n| {
        n.allow(json!([])).await?;
        let (admin, a, b, url) = (n.admin(), n.a.clone(), n.b.clone(), n.url());
        let (a_ip, b_ip, server) = (n.a_ip, n.b_ip, n.inet.server);
        // P: claimed from the warm pool.
        pool_ready(n).await?;
        let agent = n.stack.client_with(&n.agent_token)?;
        let created = agent
            .create_sandbox(&CreateSandboxRequest {
                source_vm_name: "debian-12".into(),
                agent_id: "agent-net".into(),
                vm_name: Some("net-p".into()),
                cpu: Some(1),
                memory_mb: Some(512),
                wait_for_ip: Some(true),
                ..Default::default()
            })
            .await?;
        let (p, p_ip) = started_by("P", &created, StartPath::Pool)?;
        ready(admin, &p).await?;
        install_probe(admin, &p).await?;
        // F: a live fork of A (the probe comes with A's disk).
        let forked = admin
            .fork_sandbox(
                &a,
                &ForkRequest {
                    vm_name: Some("net-f".into()),
                    wait_for_ip: Some(true),
                    ..Default::default()
                },
            )
            .await?;
        let (f, f_ip) = started_by("F", &forked, StartPath::Fork)?;
        ready(admin, &f).await?;
        println!("  P {p} {p_ip} (pool), F {f} {f_ip} (live fork of A)");
        ensure!(
            f_ip != a_ip && p_ip != a_ip && p_ip != b_ip,
            "addresses are shared"
        );

        // Sealed: neither reaches the internet, another sandbox, or the host.
        let host_port = n.host_port;
        for (who, id, others) in [
            ("P", &p, [("A", a_ip), ("B", b_ip), ("F", f_ip)]),
            ("F", &f, [("A", a_ip), ("B", b_ip), ("P", p_ip)]),
        ] {
            ensure!(
                !probe(
                    admin,
                    id,
                    &format!("{who} → internet http"),
                    &format!("http {url}")
                )
                .await?
            );
            ensure!(
                !probe(
                    admin,
                    id,
                    &format!("{who} → internet icmp"),
                    &format!("icmp {server}")
                )
                .await?
            );
            for (other, ip) in others {
                let what = format!("{who} → {other} tcp/22 (sshd)");
                ensure!(
                    !probe(admin, id, &what, &format!("tcp {ip} 22")).await?,
                    "{what}"
                );
            }
            let what = format!("{who} → host service");
            ensure!(
                !probe(admin, id, &what, &format!("tcp 192.168.122.1 {host_port}")).await?,
                "{what}"
            );
        }
        ensure!(
            !probe(
                admin,
                &a,
                "A → F tcp/22 (its own fork)",
                &format!("tcp {f_ip} 22")
            )
            .await?
        );
        ensure!(!probe(admin, &b, "B → P tcp/22", &format!("tcp {p_ip} 22")).await?);

        // Egress is each sandbox's own: P's rule opens P only, then F's opens F only.
        let server_rule =
            json!([{"cidr": format!("{server}/32"), "protocol": "tcp", "port": HTTP_PORT}]);
        for (who, id, other, other_id) in [("P", &p, "F", &f), ("F", &f, "P", &p)] {
            n.allow_for(id, server_rule.clone()).await?;
            ensure!(
                probe(
                    admin,
                    id,
                    &format!("{who} → internet http (its rule)"),
                    &format!("http {url}")
                )
                .await?
            );
            ensure!(
                !probe(
                    admin,
                    other_id,
                    &format!("{other} → internet http (not its rule)"),
                    &format!("http {url}")
                )
                .await?
            );
            ensure!(
                !probe(
                    admin,
                    &a,
                    "A → internet http (not its rule)",
                    &format!("http {url}")
                )
                .await?
            );
            n.allow_for(id, json!([])).await?;
            ensure!(
                !probe(
                    admin,
                    id,
                    &format!("{who} → internet http (sealed again)"),
                    &format!("http {url}")
                )
                .await?
            );
        }

        // Destroyed, neither leaves a rule behind.
        for id in [&p, &f] {
            admin.destroy_sandbox(id).await?;
        }
        let ruleset = nft(&["list", "ruleset"])?;
        for (who, id) in [("P", &p), ("F", &f)] {
            let left = ruleset.lines().filter(|l| l.contains(&suffix(id))).count();
            ensure!(left == 0, "{left} lines of rules of {who} {id} are left");
        }
        Ok(())
    })
}
