//! Acceptance: the warm pool on real libvirt (TCG). An agent keeps one sandbox
//! restored ahead of time; creates claim pool members (`start_path: pool`), and each
//! claimed sandbox is its own machine: its id for sshd, its name, the controller's
//! CA only, its clock, and (as every clone) its machine-id, MAC, address and host key.
//! Claimed sandboxes are isolated like any other. Killing the agent while it refills
//! the pool leaves no domain, overlay, rule or address reservation of the half-made
//! member once it has restarted, and the claimed sandboxes live on.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use fluid_client::Client;
use fluid_client::types::{CreateSandboxRequest, HostState, StartPath};
use fluid_proto::pb;
use integration_tests::guest::must;
use integration_tests::{AgentOptions, Stack, StoreKind, virsh};

/// The identity items two clones must not share, read in the guest.
const IDENTITY: &str = "echo hostname=$(hostname); echo sandbox_id=$(cat /run/fluid-identity/sandbox_id); \
     echo machine_id=$(cat /etc/machine-id); echo mac=$(cat /sys/class/net/eth0/address); \
     echo ip=$(ip -4 -o addr show eth0 | awk '{print $4}'); \
     echo host_key=$(cut -d' ' -f2 /etc/ssh/ssh_host_ed25519_key.pub); \
     echo boot_id=$(cat /proc/sys/kernel/random/boot_id); echo uuid=$(cat /proc/sys/kernel/random/uuid); \
     echo ca_keys=$(grep -c . /etc/ssh/fluid_user_ca.pub); echo clock=$(date +%s)";

fn parse(out: &str) -> BTreeMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The agent's pool as its GetStatus reports it: (ready, filling, hits).
async fn pool(stack: &Stack) -> Result<(u32, u32, u64)> {
    let ctl = stack.pki.controller();
    let mut grpc = stack.agent_grpc("a", Some(&ctl), &ctl.ca_cert).await?;
    let status = grpc.get_status(pb::GetStatusRequest {}).await?.into_inner();
    let p = status.pools.first().context("the agent reports no pool")?;
    Ok((p.ready, p.filling, p.hits))
}

/// Waits until the pool reports what `done` wants.
async fn wait_pool(
    stack: &Stack,
    what: &str,
    done: impl Fn((u32, u32, u64)) -> bool,
) -> Result<Duration> {
    let t = Instant::now();
    let deadline = t + Duration::from_secs(240);
    loop {
        if let Ok(p) = pool(stack).await
            && done(p)
        {
            return Ok(t.elapsed());
        }
        ensure!(Instant::now() < deadline, "pool never {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Creates a sandbox, which must come from the pool; its id and the time from the
/// request to its first successful command.
async fn claim(c: &Client, name: &str) -> Result<(String, Duration)> {
    let t = Instant::now();
    let r = c
        .create_sandbox(&CreateSandboxRequest {
            source_vm_name: "debian-12".into(),
            agent_id: "pool".into(),
            vm_name: Some(name.into()),
            cpu: Some(1),
            memory_mb: Some(512),
            wait_for_ip: Some(true),
            ..Default::default()
        })
        .await?;
    ensure!(
        r.sandbox.start_path == Some(StartPath::Pool),
        "{name} started by {:?}, not from the pool",
        r.sandbox.start_path
    );
    must(c, &r.sandbox.id, "true", 30).await?;
    Ok((r.sandbox.id, t.elapsed()))
}

/// Names of the warm pool's domains on the host now.
fn pool_domains() -> Result<Vec<String>> {
    Ok(virsh::domains()?
        .into_iter()
        .filter(|d| d.starts_with("fluid-pool-"))
        .collect())
}

/// The agent's nftables tables (inet and bridge), as `nft` prints them.
fn nft_tables(host: &str) -> String {
    let table: String = host
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    ["inet", "bridge"]
        .iter()
        .filter_map(|family| {
            std::process::Command::new("nft")
                .args(["list", "table", family, &format!("fluid_{table}")])
                .output()
                .ok()
        })
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_sandboxes_are_their_own_machines_and_a_killed_refill_leaves_nothing() -> Result<()>
{
    let mut stack =
        Stack::start(StoreKind::Sqlite, vec![AgentOptions::new("a").warm_pool(1)]).await?;
    stack
        .wait_host("a", HostState::Online, Duration::from_secs(30))
        .await?;
    let filled = wait_pool(&stack, "filled", |(ready, _, _)| ready == 1).await?;
    println!("pool filled in {:.1} s", filled.as_secs_f64());

    // Two claims, each a machine of its own.
    let (a, took_a) = claim(&stack.client, &format!("{}-pa", stack.prefix)).await?;
    wait_pool(&stack, "refilled", |(ready, _, hits)| {
        ready == 1 && hits == 1
    })
    .await?;
    let (b, took_b) = claim(&stack.client, &format!("{}-pb", stack.prefix)).await?;
    println!(
        "create → first command from the pool: {:.2} s, {:.2} s",
        took_a.as_secs_f64(),
        took_b.as_secs_f64()
    );
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
    };
    let ia = parse(&must(&stack.client, &a, IDENTITY, 30).await?);
    let ib = parse(&must(&stack.client, &b, IDENTITY, 30).await?);
    println!("{a}: {ia:?}\n{b}: {ib:?}");
    for (id, i, name) in [(&a, &ia, "pa"), (&b, &ib, "pb")] {
        ensure!(
            i["sandbox_id"] == *id,
            "{id}: sshd's id is {}",
            i["sandbox_id"]
        );
        ensure!(
            i["hostname"] == format!("{}-{name}", stack.prefix),
            "{id}: hostname {}",
            i["hostname"]
        );
        // The controller's user CA only: the pool's CA is gone.
        ensure!(
            i["ca_keys"] == "1",
            "{id}: {} CA keys trusted",
            i["ca_keys"]
        );
        let clock: i64 = i["clock"].parse()?;
        ensure!(
            (clock - now()).abs() < 30,
            "{id}: guest clock {clock}, host {}",
            now()
        );
    }
    // Not boot_id: the kernel sets it once per boot, and clones share the template's.
    for item in [
        "hostname",
        "sandbox_id",
        "machine_id",
        "mac",
        "ip",
        "host_key",
        "uuid",
    ] {
        ensure!(
            ia[item] != ib[item],
            "both pooled sandboxes have {item} {}",
            ia[item]
        );
    }
    // Isolated like any sandbox: no TCP to the other sandbox's sshd.
    let probe = format!(
        "timeout 5 bash -c 'exec 3<>/dev/tcp/{}/22' 2>/dev/null && echo open || echo closed",
        ib["ip"].split('/').next().unwrap_or_default()
    );
    let reach = must(&stack.client, &a, &probe, 30).await?;
    ensure!(reach == "closed", "{a} reached {b}'s sshd: {reach}");

    // Kill the agent while it restores the next member.
    wait_pool(&stack, "refilling", |(_, filling, hits)| {
        filling == 1 && hits == 2
    })
    .await?;
    // The claimed sandboxes keep their members' domains (libvirt renames no running
    // domain): the one being made is the other.
    let ctl = stack.pki.controller();
    let mut grpc = stack.agent_grpc("a", Some(&ctl), &ctl.ca_cert).await?;
    let mut claimed = Vec::new();
    for id in [&a, &b] {
        let s = grpc
            .get_sandbox(pb::SandboxRef { id: id.clone() })
            .await?
            .into_inner();
        claimed.push(s.name);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let half_made = loop {
        let d = pool_domains()?;
        if let Some(name) = d.iter().find(|d| !claimed.contains(d)) {
            break name.clone();
        }
        ensure!(
            Instant::now() < deadline,
            "no pool domain appeared during the refill"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let suffix = half_made.trim_start_matches("fluid-pool-").to_owned();
    let xml = std::process::Command::new("virsh")
        .args(["dumpxml", &half_made])
        .output()?;
    let xml = String::from_utf8_lossy(&xml.stdout).into_owned();
    let mac = xml
        .split("<mac address='")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .context("the member's domain has no MAC")?
        .to_owned();
    let state_dir = stack.agent("a")?.state_dir.clone();
    stack.agent("a")?.service.kill().await?;
    println!("agent killed while {half_made} was being made");
    let overlays = state_dir.join("overlays");
    let has_overlay = |dir: &std::path::Path| -> bool {
        std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .any(|e| e.file_name().to_string_lossy().contains(&suffix))
            })
            .unwrap_or(false)
    };
    stack.agent("a")?.service.start()?;
    // The restarted agent answers at once, and removes the members an earlier agent
    // left in the background, before its first refill.
    if let Err(e) = wait_pool(&stack, "answered after the restart", |_| true).await {
        bail!(
            "{e}; the agent's log:\n{}",
            stack.agent("a")?.service.log_tail(40)
        );
    }
    // What is left of the half-made member: none of its domain, overlay, rules and
    // address reservation, once the restarted agent has removed it.
    let left = || -> Result<Vec<String>> {
        let mut left = Vec::new();
        if virsh::domains()?.contains(&half_made) {
            left.push("its domain".to_owned());
        }
        if has_overlay(&overlays) {
            left.push("its overlay".to_owned());
        }
        let rules = nft_tables(&stack.host("a"));
        ensure!(!rules.is_empty(), "no bridge table of the agent");
        if rules.contains(&suffix) {
            left.push(format!("its rules:\n{rules}"));
        }
        let net = std::process::Command::new("virsh")
            .args(["net-dumpxml", "default"])
            .output()?;
        let net = String::from_utf8_lossy(&net.stdout);
        if net.contains(&mac) {
            left.push(format!("its address reservation ({mac}):\n{net}"));
        }
        Ok(left)
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let now_left = left()?;
        if now_left.is_empty() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "120 s after the agent restarted, {half_made} left {}; the agent's log:\n{}",
            now_left.join("; "),
            stack.agent("a")?.service.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The claimed sandboxes lived on, reachable with their own identity.
    for (id, i) in [(&a, &ia), (&b, &ib)] {
        let again = parse(&must(&stack.client, id, IDENTITY, 60).await?);
        ensure!(
            again["machine_id"] == i["machine_id"],
            "{id} changed across the restart"
        );
    }
    println!(
        "after the kill: no domain, overlay, rule or reservation of {half_made}; both sandboxes run"
    );

    for id in [&a, &b] {
        stack.client.destroy_sandbox(id).await?;
    }
    Ok(())
}
