//! Working inside sandboxes through the controller, as an agent would: create one,
//! wait until it runs commands, run commands.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use fluid_client::Client;
use fluid_client::types::{CreateSandboxRequest, RunCommandRequest};

/// Runs `cmd` as root with a timeout; answers its exit code and its trimmed stdout
/// followed by its stderr.
pub async fn run(c: &Client, id: &str, cmd: &str, timeout_sec: u32) -> Result<(i32, String)> {
    let r = c
        .run_command(
            id,
            &RunCommandRequest {
                command: cmd.into(),
                user: None,
                timeout_sec: Some(timeout_sec),
                env: None,
                workdir: None,
                stdin: None,
            },
        )
        .await?;
    Ok((
        r.command.exit_code,
        format!("{}{}", r.command.stdout, r.command.stderr)
            .trim()
            .to_owned(),
    ))
}

/// Runs `cmd` and fails unless it exits 0; answers its output.
pub async fn must(c: &Client, id: &str, cmd: &str, timeout_sec: u32) -> Result<String> {
    let (code, out) = run(c, id, cmd, timeout_sec).await?;
    ensure!(code == 0, "{id}: `{cmd}` exited {code}: {out}");
    Ok(out)
}

/// Creates and starts a 1-vCPU, 512 MiB sandbox of the golden image for `agent_id`;
/// answers its id and IP address.
pub async fn create(c: &Client, agent_id: &str, name: &str) -> Result<(String, Ipv4Addr)> {
    let r = c
        .create_sandbox(&CreateSandboxRequest {
            source_vm_name: "debian-12".into(),
            agent_id: agent_id.into(),
            vm_name: Some(name.into()),
            cpu: Some(1),
            memory_mb: Some(512),
            ttl_seconds: None,
            auto_start: Some(true),
            wait_for_ip: Some(true),
        })
        .await?;
    let ip = r.ip_address.context("no IP")?.parse()?;
    Ok((r.sandbox.id, ip))
}

/// Waits until the sandbox runs a command (sshd starts after the DHCP lease).
pub async fn ready(c: &Client, id: &str, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok((0, _)) = run(c, id, "true", 20).await {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{id}: no command ran within {within:?}"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
