//! Attacks on the platform itself (hole 11 and 12 of issue 12), against real
//! `fluid-controller` processes (no VM needed):
//! - a controller bound to a network address without TLS: it refuses to start;
//! - with `[api_tls]`: REST and public gRPC over TLS work for a client that trusts the
//!   CA; plain HTTP to the TLS port and a client that does not trust the CA get nothing;
//! - `/metrics` without a token, with an agent token: refused;
//! - `pki init` / `pki agent` / `pki api` and the controller's data directory under a
//!   `umask 000`: the directory 0700, keys and the SQLite files 0600;
//! - a refused mutating call leaves exactly one audit event, and when the audit table
//!   cannot be written the refusal answers 503 (REST) / UNAVAILABLE (gRPC) instead of a
//!   silent 403.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use fluid_client::Client;
use fluid_client::client::AuditQuery;
use integration_tests::api::Api;
use integration_tests::env::TestEnv;
use integration_tests::pki::Pki;
use integration_tests::process::Service;
use integration_tests::stack::{Stack, StoreKind, free_port};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn mode(p: &Path) -> Result<u32> {
    Ok(std::fs::metadata(p)
        .with_context(|| format!("stat {}", p.display()))?
        .permissions()
        .mode()
        & 0o7777)
}

/// Runs `fluid-controller ARGS` under `umask 000` (so only explicit modes count) and
/// returns its output; fails unless it succeeds.
fn controller_cli(bin: &Path, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("umask 000; exec \"$0\" \"$@\"")
        .arg(bin)
        .args(args)
        .output()
        .context("running fluid-controller")?;
    ensure!(
        out.status.success(),
        "fluid-controller {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn quote(p: &Path) -> String {
    serde_json::to_string(&p.to_string_lossy()).unwrap_or_default()
}

/// A controller configuration with `top` keys; no hosts (nothing here needs an agent).
fn controller_toml(pki: &Pki, data_dir: &Path, top: &str, tables: &str) -> String {
    let tls = pki.controller();
    format!(
        "data_dir = {}\n{top}\n[tls]\nca_cert = {}\ncert = {}\nkey = {}\n{tables}\n",
        quote(data_dir),
        quote(&tls.ca_cert),
        quote(&tls.cert),
        quote(&tls.key),
    )
}

/// Starts `fluid-controller serve` with `toml` (written to `dir/<name>.toml`).
fn run_controller(env: &TestEnv, dir: &Path, name: &str, toml: &str) -> Result<Service> {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, toml)?;
    let path = path.to_string_lossy().into_owned();
    let mut svc = Service::new(
        name,
        &env.bin_dir.join("fluid-controller"),
        &["serve", "--config", &path],
        dir,
    );
    svc.start()?;
    Ok(svc)
}

/// Waits until `svc` exits on its own; its log.
async fn wait_exit(svc: &mut Service, within: Duration) -> Result<String> {
    let deadline = Instant::now() + within;
    while svc.is_running() {
        if Instant::now() > deadline {
            bail!("still running after {within:?}:\n{}", svc.log_tail(20));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // All of it: under RUST_BACKTRACE the error is followed by a long backtrace.
    Ok(svc.log_tail(10_000))
}

#[tokio::test]
async fn a_network_listener_without_tls_is_refused() -> Result<()> {
    let env = TestEnv::load()?;
    let dir = tempfile::tempdir()?;
    let pki = Pki::init(
        &env.bin_dir.join("fluid-controller"),
        &dir.path().join("pki"),
    )?;
    let data = dir.path().join("data");
    for (name, top) in [
        (
            "rest",
            format!("listen = \"0.0.0.0:{}\"\ngrpc_listen = \"\"", free_port()?),
        ),
        (
            "grpc",
            format!(
                "listen = \"127.0.0.1:{}\"\ngrpc_listen = \"0.0.0.0:{}\"",
                free_port()?,
                free_port()?
            ),
        ),
    ] {
        let started = Instant::now();
        let mut svc = run_controller(
            &env,
            dir.path(),
            &format!("insecure-{name}"),
            &controller_toml(&pki, &data, &top, ""),
        )?;
        let log = wait_exit(&mut svc, Duration::from_secs(20)).await?;
        println!(
            "{name}: refused in {:?}: {}",
            started.elapsed(),
            log.lines()
                .find(|l| l.contains("allow_insecure_listen"))
                .unwrap_or("")
        );
        ensure!(
            log.contains("is not a loopback address")
                && log.contains("[api_tls]")
                && log.contains("allow_insecure_listen = true"),
            "{name}: the refusal does not name the settings:\n{log}"
        );
    }
    // The same address with the explicit opt-out: it starts (binding is local).
    let port = free_port()?;
    let mut svc = run_controller(
        &env,
        dir.path(),
        "insecure-allowed",
        &controller_toml(
            &pki,
            &data,
            &format!(
                "listen = \"0.0.0.0:{port}\"\ngrpc_listen = \"\"\nallow_insecure_listen = true"
            ),
            "",
        ),
    )?;
    let client = Client::new(&format!("http://127.0.0.1:{port}"))?;
    wait_healthy(&client, &mut svc).await?;
    svc.stop().await?;
    Ok(())
}

async fn wait_healthy(client: &Client, svc: &mut Service) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if client.health().await.is_ok() {
            return Ok(());
        }
        if !svc.is_running() || Instant::now() > deadline {
            bail!("controller not healthy:\n{}", svc.log_tail(30));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends a plain-HTTP request to `addr` and returns what came back before the close.
async fn plain_http(addr: &str) -> Result<Vec<u8>> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .context("the TLS port kept a plain-HTTP connection open")?
        .ok();
    Ok(buf)
}

fn bearer(
    token: &str,
) -> Result<impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone> {
    let value: tonic::metadata::AsciiMetadataValue = format!("Bearer {token}").parse()?;
    Ok(move |mut req: tonic::Request<()>| {
        req.metadata_mut().insert("authorization", value.clone());
        Ok(req)
    })
}

#[tokio::test]
async fn the_api_over_tls() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let env = TestEnv::load()?;
    let dir = tempfile::tempdir()?;
    let bin = env.bin_dir.join("fluid-controller");
    let pki_dir = dir.path().join("pki");
    let pki = Pki::init(&bin, &pki_dir)?;
    controller_cli(
        &bin,
        &[
            "pki",
            "api",
            "--dir",
            &pki_dir.to_string_lossy(),
            "--san",
            "127.0.0.1",
            "--san",
            "localhost",
        ],
    )?;
    let (port, grpc_port) = (free_port()?, free_port()?);
    let data = dir.path().join("data");
    let toml = controller_toml(
        &pki,
        &data,
        &format!("listen = \"127.0.0.1:{port}\"\ngrpc_listen = \"127.0.0.1:{grpc_port}\""),
        &format!(
            "[api_tls]\ncert = {}\nkey = {}\n",
            quote(&pki_dir.join("api.pem")),
            quote(&pki_dir.join("api.key"))
        ),
    );
    let config = dir.path().join("tls.toml");
    std::fs::write(&config, &toml)?;
    let token = controller_cli(
        &bin,
        &[
            "token",
            "create",
            "--config",
            &config.to_string_lossy(),
            "--role",
            "operator",
            "--name",
            "tls-operator",
        ],
    )?
    .trim()
    .to_owned();
    let mut svc = run_controller(&env, dir.path(), "tls", &toml)?;
    let ca = std::fs::read(pki.ca_cert())?;
    let url = format!("https://127.0.0.1:{port}");
    let trusted = Client::with_ca(&url, Some(&ca))?.with_token(Some(token.clone()));
    wait_healthy(&trusted, &mut svc).await?;

    // REST over https with the CA: an authenticated call works.
    let who = trusted.whoami().await?;
    println!("https whoami: {} ({:?})", who.name, who.role);
    ensure!(who.name == "tls-operator");

    // fluidctl (a real process) over https: --ca-cert, then FLUID_CA_CERT; without it,
    // the certificate is refused.
    let fluidctl = env.bin_dir.join("fluidctl");
    let ca_path = pki.ca_cert();
    let out = std::process::Command::new(&fluidctl)
        .args(["--url", &url, "--token", &token, "--ca-cert"])
        .arg(&ca_path)
        .arg("whoami")
        .output()?;
    ensure!(
        out.status.success(),
        "fluidctl --ca-cert: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new(&fluidctl)
        .args(["--url", &url, "--token", &token, "status"])
        .env("FLUID_CA_CERT", &ca_path)
        .output()?;
    ensure!(
        out.status.success(),
        "FLUID_CA_CERT: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new(&fluidctl)
        .args(["--url", &url, "--token", &token, "whoami"])
        .env_remove("FLUID_CA_CERT")
        .stdin(Stdio::null())
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    println!("fluidctl without the CA: {}", err.trim());
    ensure!(
        !out.status.success() && err.to_lowercase().contains("certificate"),
        "fluidctl without the CA: {err}"
    );

    // A client that does not trust the CA gets no answer.
    let untrusting = Client::new(&url)?.with_token(Some(token.clone()));
    let e = untrusting
        .whoami()
        .await
        .expect_err("an unknown CA must be refused");
    let mut root: &dyn std::error::Error = &e;
    while let Some(next) = root.source() {
        root = next;
    }
    println!("client without the CA: {root}");
    ensure!(e.status().is_none(), "the controller answered: {e}");

    // Plain HTTP to the TLS ports: no HTTP answer, the connection is closed.
    for p in [port, grpc_port] {
        let got = plain_http(&format!("127.0.0.1:{p}")).await?;
        ensure!(
            !got.starts_with(b"HTTP/"),
            "plain HTTP on TLS port {p} got an HTTP answer: {}",
            String::from_utf8_lossy(&got)
        );
        println!(
            "plain HTTP to TLS port {p}: {} bytes back, no HTTP",
            got.len()
        );
    }
    let plain = Client::new(&format!("http://127.0.0.1:{port}"))?.with_token(Some(token.clone()));
    ensure!(
        plain.whoami().await.is_err(),
        "http:// to the TLS port answered"
    );

    // Public gRPC over TLS with the CA works; h2c to it does not; without the CA neither.
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&ca))
        .domain_name("localhost");
    let channel = tonic::transport::Channel::from_shared(format!("https://localhost:{grpc_port}"))?
        .tls_config(tls)?
        .connect()
        .await
        .context("gRPC over TLS")?;
    let mut approvals = fluid_proto::api::approvals_client::ApprovalsClient::with_interceptor(
        channel,
        bearer(&token)?,
    );
    let listed = approvals
        .list_approvals(fluid_proto::api::ListApprovalsRequest::default())
        .await
        .context("ListApprovals over TLS")?;
    println!(
        "gRPC over TLS: ListApprovals answered ({} pending)",
        listed.into_inner().approvals.len()
    );
    let h2c = async {
        let ch = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{grpc_port}"))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .connect()
            .await?;
        let mut c = fluid_proto::api::approvals_client::ApprovalsClient::with_interceptor(
            ch,
            bearer(&token)?,
        );
        c.list_approvals(fluid_proto::api::ListApprovalsRequest::default())
            .await?;
        anyhow::Ok(())
    }
    .await;
    ensure!(h2c.is_err(), "h2c to the TLS gRPC port answered");
    let untrusted = async {
        let ch = tonic::transport::Channel::from_shared(format!("https://localhost:{grpc_port}"))?
            .tls_config(tonic::transport::ClientTlsConfig::new().domain_name("localhost"))?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await?;
        let mut c = fluid_proto::api::approvals_client::ApprovalsClient::with_interceptor(
            ch,
            bearer(&token)?,
        );
        c.list_approvals(fluid_proto::api::ListApprovalsRequest::default())
            .await?;
        anyhow::Ok(())
    }
    .await;
    ensure!(untrusted.is_err(), "gRPC without the CA answered");
    println!(
        "gRPC: h2c refused ({:?}); without the CA refused",
        h2c.err().map(|e| e.to_string())
    );

    // The data directory and the SQLite files the controller made (under umask 000 for
    // `token create`, the first to open the store).
    let data_mode = mode(&data)?;
    let db_mode = mode(&data.join("fluid.db"))?;
    println!("data_dir {data_mode:o}, fluid.db {db_mode:o}");
    ensure!(data_mode == 0o700, "data_dir is {data_mode:o}");
    ensure!(db_mode == 0o600, "fluid.db is {db_mode:o}");
    for side in ["fluid.db-wal", "fluid.db-shm"] {
        let p = data.join(side);
        if p.exists() {
            let m = mode(&p)?;
            ensure!(m == 0o600, "{side} is {m:o}");
        }
    }
    svc.stop().await?;
    Ok(())
}

#[tokio::test]
async fn pki_files_are_private() -> Result<()> {
    let env = TestEnv::load()?;
    let bin = env.bin_dir.join("fluid-controller");
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("fleet/pki");
    let d = dir.to_string_lossy().into_owned();
    controller_cli(&bin, &["pki", "init", "--dir", &d])?;
    controller_cli(
        &bin,
        &[
            "pki", "agent", "--dir", &d, "--name", "kvm-1", "--san", "10.0.0.5",
        ],
    )?;
    controller_cli(&bin, &["pki", "api", "--dir", &d, "--san", "fluid.example"])?;
    let dir_mode = mode(&dir)?;
    ensure!(dir_mode == 0o700, "pki dir is {dir_mode:o}");
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let p: PathBuf = entry?.path();
        let m = mode(&p)?;
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let want = if name.ends_with(".key") { 0o600 } else { 0o644 };
        ensure!(m == want, "{name} is {m:o}, not {want:o}");
        seen.push(format!("{name} {m:o}"));
    }
    seen.sort();
    println!("under umask 000: pki dir {dir_mode:o}; {}", seen.join(", "));
    ensure!(seen.len() == 8, "{seen:?}");
    Ok(())
}

#[tokio::test]
async fn metrics_need_a_fleet_token() -> Result<()> {
    let stack = Stack::start(StoreKind::Sqlite, vec![]).await?;
    let api = Api::new(&stack.api_url);
    let anonymous = reqwest::get(format!("{}/metrics", stack.api_url)).await?;
    ensure!(
        anonymous.status() == 401,
        "no token: {}",
        anonymous.status()
    );
    let agent = stack.token_cli("metrics-agent", "agent", Some("agent-1"))?;
    let readonly = stack.token_cli("metrics-reader", "readonly", None)?;
    let operator = stack.token_cli("metrics-operator", "operator", None)?;
    let mut seen = Vec::new();
    for (who, token, want) in [
        ("agent", &agent, 403),
        ("readonly", &readonly, 200),
        ("operator", &operator, 200),
    ] {
        let (status, body) = api
            .send(token, reqwest::Method::GET, "/metrics", None)
            .await?;
        ensure!(status == want, "{who}: {status} {body}");
        if status == 200 {
            ensure!(
                body.as_str()
                    .is_some_and(|t| t.contains("fluid_http_requests_total")),
                "{who}: not an exposition"
            );
        }
        seen.push(format!("{who} {status}"));
    }
    println!("/metrics: no token 401, {}", seen.join(", "));
    Ok(())
}

/// The number of `api` audit events of `actor`.
async fn api_events(stack: &Stack, actor: &str) -> Result<Vec<(String, String)>> {
    let r = stack
        .client
        .list_audit(&AuditQuery {
            actor: Some(actor.to_owned()),
            kind: Some("api".into()),
            ..AuditQuery::default()
        })
        .await?;
    Ok(r.events
        .into_iter()
        .map(|e| (e.action, e.outcome))
        .collect())
}

/// Makes every insert into the audit table fail (a real write failure of the store),
/// or lifts that again: a trigger, added with the sqlite3 CLI while the controller runs.
fn break_audit_table(db: &Path, broken: bool) -> Result<()> {
    let sql = if broken {
        "CREATE TRIGGER it_audit_down BEFORE INSERT ON audit_events \
         BEGIN SELECT RAISE(ABORT, 'audit store down (test)'); END;"
    } else {
        "DROP TRIGGER it_audit_down;"
    };
    let out = std::process::Command::new("sqlite3")
        .arg("-cmd")
        .arg(".timeout 10000")
        .arg(db)
        .arg(sql)
        .output()
        .context("sqlite3 (scripts/install-deps.sh installs it)")?;
    ensure!(
        out.status.success(),
        "sqlite3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test]
async fn refusals_are_audited_or_fail_closed() -> Result<()> {
    let stack = Stack::start(StoreKind::Sqlite, vec![]).await?;
    let api = Api::new(&stack.api_url);
    let reader = stack.token_cli("hostile-reader", "readonly", None)?;
    let create = serde_json::json!({"source_vm_name": "debian-12", "agent_id": "x"});

    // A refused mutating call (a readonly token creating a sandbox): 403 and exactly one
    // audit event with that outcome.
    let (status, body) = api
        .send(
            &reader,
            reqwest::Method::POST,
            "/v1/sandboxes",
            Some(create.clone()),
        )
        .await?;
    ensure!(status == 403, "{status} {body}");
    let events = api_events(&stack, "hostile-reader").await?;
    println!("refused create: 403, audit events {events:?}");
    ensure!(
        events == [("POST /v1/sandboxes".to_owned(), "403".to_owned())],
        "{events:?}"
    );

    // The audit table cannot be written: the same refusal is a 503, never a 403
    // without its event.
    let db = stack.dir.path().join("controller/fluid.db");
    break_audit_table(&db, true)?;
    let (status, body) = api
        .send(
            &reader,
            reqwest::Method::POST,
            "/v1/sandboxes",
            Some(create.clone()),
        )
        .await?;
    println!("refused create, audit table broken: {status} {body}");
    ensure!(status == 503, "{status} {body}");
    ensure!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("audit trail unavailable")),
        "{body}"
    );

    // gRPC: the same (Exec by a readonly token is refused before any sandbox lookup).
    let channel = tonic::transport::Channel::from_shared(stack.grpc_url.clone())?
        .connect()
        .await?;
    let mut grpc = fluid_proto::api::sandboxes_client::SandboxesClient::with_interceptor(
        channel,
        bearer(&reader)?,
    );
    let exec = fluid_proto::api::ExecCommandRequest {
        sandbox_id: "SBX-00000000".into(),
        command: "true".into(),
        ..Default::default()
    };
    let broken = grpc
        .exec(exec.clone())
        .await
        .err()
        .context("gRPC Exec by a readonly token succeeded")?;
    println!(
        "gRPC refusal, audit table broken: {:?} {}",
        broken.code(),
        broken.message()
    );
    ensure!(broken.code() == tonic::Code::Unavailable, "{broken:?}");

    break_audit_table(&db, false)?;
    let refused = grpc
        .exec(exec)
        .await
        .err()
        .context("gRPC Exec by a readonly token succeeded")?;
    ensure!(
        refused.code() == tonic::Code::PermissionDenied,
        "{refused:?}"
    );
    let (status, _) = api
        .send(
            &reader,
            reqwest::Method::POST,
            "/v1/sandboxes",
            Some(create),
        )
        .await?;
    ensure!(status == 403);
    let events = api_events(&stack, "hostile-reader").await?;
    println!("after repair: audit events {events:?}");
    ensure!(
        events.len() == 3
            && events.iter().filter(|(_, o)| o == "403").count() == 2
            && events
                .iter()
                .any(|(a, o)| a == "gRPC Exec" && o.starts_with("refused:")),
        "{events:?}"
    );
    Ok(())
}
