//! Acceptance: bad input gets a 4xx with a clear JSON message, never a 500.

use std::time::Duration;

use anyhow::{Result, ensure};
use fluid_client::types::{CreateSandboxRequest, HostState};
use integration_tests::{AgentOptions, Stack, StoreKind};
use serde_json::{Value, json};

/// What is sent, and what must come back: status and a word the message must contain.
type Case<'a> = (
    &'a str,
    reqwest::Method,
    String,
    Option<String>,
    u16,
    &'a str,
);

async fn send(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<String>,
    token: &str,
) -> Result<(u16, Value)> {
    let mut req = http.request(method, url).bearer_auth(token);
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    let text = resp.text().await?;
    let json: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, json))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_4xx() -> Result<()> {
    let mut stack = Stack::start(StoreKind::Sqlite, vec![AgentOptions::new("a")]).await?;
    stack
        .wait_host("a", HostState::Online, Duration::from_secs(30))
        .await?;
    let http = reqwest::Client::new();
    let create = format!("{}/v1/sandboxes", stack.api_url);
    let dup = format!("{}-dup", stack.prefix);
    let ok = |extra: Value| {
        let mut base =
            json!({"source_vm_name": "debian-12", "agent_id": "it", "auto_start": false});
        if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                b.insert(k.clone(), v.clone());
            }
        }
        base.to_string()
    };

    // The first create with this name succeeds; the duplicate below must not.
    stack
        .client
        .create_sandbox(&CreateSandboxRequest {
            source_vm_name: "debian-12".into(),
            agent_id: "it".into(),
            vm_name: Some(dup.clone()),
            auto_start: Some(false),
            ..Default::default()
        })
        .await?;

    let big = format!("{{\"source_vm_name\":\"{}\"}}", "x".repeat(2 << 20));
    let cases: Vec<Case> = vec![
        (
            "missing source_vm_name",
            reqwest::Method::POST,
            create.clone(),
            Some(json!({"agent_id": "it"}).to_string()),
            400,
            "source_vm_name",
        ),
        (
            "unknown image",
            reqwest::Method::POST,
            create.clone(),
            Some(ok(json!({"source_vm_name": "no-such-image"}))),
            400,
            "no-such-image",
        ),
        (
            "memory_mb 0",
            reqwest::Method::POST,
            create.clone(),
            Some(ok(json!({"memory_mb": 0}))),
            400,
            "memory_mb",
        ),
        (
            "memory_mb 10^9",
            reqwest::Method::POST,
            create.clone(),
            Some(ok(json!({"memory_mb": 1_000_000_000u64}))),
            400,
            "memory_mb",
        ),
        (
            "cpu 0",
            reqwest::Method::POST,
            create.clone(),
            Some(ok(json!({"cpu": 0}))),
            400,
            "cpu",
        ),
        (
            "malformed JSON",
            reqwest::Method::POST,
            create.clone(),
            Some("{\"source_vm_name\": ".into()),
            400,
            "invalid request body",
        ),
        (
            "unknown field",
            reqwest::Method::POST,
            create.clone(),
            Some(ok(json!({"colour": "blue"}))),
            400,
            "colour",
        ),
        (
            "body over 1 MiB",
            reqwest::Method::POST,
            create.clone(),
            Some(big),
            413,
            "larger than this route's limit",
        ),
        (
            "unknown sandbox id",
            reqwest::Method::GET,
            format!("{create}/SBX-doesnotexist"),
            None,
            404,
            "SBX-doesnotexist",
        ),
        (
            "unknown sandbox id (delete)",
            reqwest::Method::DELETE,
            format!("{create}/SBX-doesnotexist"),
            None,
            404,
            "SBX-doesnotexist",
        ),
        (
            "malformed sandbox id",
            reqwest::Method::GET,
            format!("{create}/..%2Fetc"),
            None,
            400,
            "is not a sandbox id",
        ),
        (
            "duplicate vm_name",
            reqwest::Method::POST,
            create.clone(),
            Some(ok(json!({"vm_name": dup}))),
            409,
            &dup,
        ),
        (
            "bad state filter",
            reqwest::Method::GET,
            format!("{create}?state=SLEEPING"),
            None,
            400,
            "SLEEPING",
        ),
    ];
    let mut failures = Vec::new();
    for (what, method, url, body, want, mention) in cases {
        let (status, json) = send(&http, method, &url, body, &stack.admin_token).await?;
        let error = json.get("error").and_then(Value::as_str).unwrap_or("");
        let details = json.get("details").and_then(Value::as_str).unwrap_or("");
        let text = format!("{error} {details}");
        println!("{what:30} → {status} {}", text.trim());
        if status != want
            || error.is_empty()
            || json.get("code").and_then(Value::as_u64) != Some(u64::from(want))
            || !text.contains(mention)
        {
            failures.push(format!(
                "{what}: got {status} {json}, want {want} mentioning {mention:?}"
            ));
        }
    }
    ensure!(failures.is_empty(), "bad answers:\n{}", failures.join("\n"));
    Ok(())
}
