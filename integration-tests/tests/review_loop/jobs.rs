//! Ansible jobs on the review loop's production target, through the REST API.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use fluid_client::types::HostState;
use integration_tests::api::Api;
use integration_tests::stack::Stack;
use reqwest::Method;
use serde_json::{Value, json};

/// Adds the production target `prod-web` to the controller's config (sandbox `p`,
/// reached as root with a key of its own) and restarts the controller.
pub async fn add_target(stack: &mut Stack, api: &Api, admin_token: &str, p: &str) -> Result<()> {
    let key = stack.dir.path().join("prod_key");
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .output()?;
    ensure!(
        out.status.success(),
        "ssh-keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = std::fs::read_to_string(key.with_extension("pub"))?;
    let (status, body) = api
        .send(
            admin_token,
            Method::POST,
            &format!("/v1/sandboxes/{p}/sshkey"),
            Some(json!({"public_key": public.trim(), "username": "root"})),
        )
        .await?;
    ensure!(status == 204, "sshkey: {status} {body}");
    let prod_ip = stack
        .client
        .get_sandbox(p)
        .await?
        .sandbox
        .ip_address
        .context("production IP")?;
    let mut config = std::fs::read_to_string(&stack.controller_config)?;
    config += &format!(
        "\n[[ansible.targets]]\nname = \"prod-web\"\nhosts = [\"{prod_ip}\"]\nuser = \"root\"\nprivate_key = {:?}\nssh_common_args = [\"-o\", \"StrictHostKeyChecking=no\", \"-o\", \"UserKnownHostsFile=/dev/null\"]\n",
        key.to_string_lossy()
    );
    std::fs::write(&stack.controller_config, config)?;
    stack.restart_controller().await?;
    stack
        .wait_host("a", HostState::Online, Duration::from_secs(30))
        .await
}

/// Starts a (non-check) job of `playbook` on the `prod-web` target; its id.
pub async fn start(api: &Api, token: &str, playbook: &str) -> Result<String> {
    let (status, body) = api
        .send(
            token,
            Method::POST,
            "/v1/ansible/jobs",
            Some(json!({"vm_name": "prod-web", "playbook": playbook, "check": false})),
        )
        .await?;
    ensure!(status == 201, "job: {status} {body}");
    Ok(body["job_id"].as_str().context("job_id")?.to_owned())
}

/// The job's approval once its check run is done: its id, and the approval as shown.
pub async fn approval(api: &Api, token: &str, id: &str) -> Result<(String, String)> {
    let deadline = Instant::now() + Duration::from_secs(600);
    let approval_id = loop {
        let j = get(api, token, id).await?;
        if let Some(a) = j["approval_id"].as_str()
            && j["phase"] == "awaiting_approval"
        {
            break a.to_owned();
        }
        ensure!(
            j["status"] != "failed" && j["status"] != "finished",
            "job {id} ended before its approval: {j}"
        );
        ensure!(
            Instant::now() < deadline,
            "job {id}: no approval within 600 s"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let (_, shown) = api
        .send(
            token,
            Method::GET,
            &format!("/v1/approvals/{approval_id}"),
            None,
        )
        .await?;
    Ok((approval_id, shown.to_string()))
}

/// Approves or rejects (`verdict`) an approval.
pub async fn decide(api: &Api, token: &str, approval_id: &str, verdict: &str) -> Result<()> {
    let (status, body) = api
        .send(
            token,
            Method::POST,
            &format!("/v1/approvals/{approval_id}/{verdict}"),
            Some(json!({"comment": verdict})),
        )
        .await?;
    ensure!(status == 200, "{verdict}: {status} {body}");
    Ok(())
}

/// The job once it has ended (finished or failed).
pub async fn ended(api: &Api, token: &str, id: &str) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let j = get(api, token, id).await?;
        if j["status"] == "failed" || j["status"] == "finished" {
            return Ok(j);
        }
        ensure!(
            Instant::now() < deadline,
            "job {id} did not end within 900 s"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn get(api: &Api, token: &str, id: &str) -> Result<Value> {
    let (_, body) = api
        .send(token, Method::GET, &format!("/v1/ansible/jobs/{id}"), None)
        .await?;
    Ok(body["job"].clone())
}
