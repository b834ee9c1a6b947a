//! The public gRPC API over a real tonic server on 127.0.0.1:0, with the fake agent.

use std::net::SocketAddr;
use std::time::Duration;

use axum::http::StatusCode;
use fluid_proto::api;
use fluid_proto::api::command_event::Event;
use fluid_proto::api::sandboxes_client::SandboxesClient;
use futures::StreamExt as _;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::agents::ExecEvent;
use crate::config::Config;
use crate::http::tests::{TestApp, app, app_with};
use crate::testing::fake_agents::exit;

/// Sends `authorization: Bearer …` with every call (none: no header).
#[derive(Debug, Clone)]
pub(crate) struct Bearer(pub Option<String>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &self.0 {
            let v = format!("Bearer {t}")
                .parse()
                .map_err(|_| tonic::Status::invalid_argument("token"))?;
            req.metadata_mut().insert("authorization", v);
        }
        Ok(req)
    }
}

pub(crate) type AuthChannel = InterceptedService<Channel, Bearer>;

struct Grpc {
    client: SandboxesClient<AuthChannel>,
    stop: CancellationToken,
}

impl Drop for Grpc {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Serves the gRPC API of `app` on 127.0.0.1:0; the channel to it and the stop token.
pub(crate) async fn serve_api(app: &TestApp) -> (Channel, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    let stop = CancellationToken::new();
    tokio::spawn(super::serve(
        listener,
        app.state.clone(),
        None,
        stop.clone(),
    ));
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    (channel, stop)
}

async fn serve(app: &TestApp) -> Grpc {
    let (channel, stop) = serve_api(app).await;
    let client = SandboxesClient::with_interceptor(channel, Bearer(Some(app.admin_token.clone())));
    Grpc { client, stop }
}

async fn running(app: &TestApp) -> String {
    let v = app
        .create(json!({"source_vm_name": "debian-12", "agent_id": "agent-7"}))
        .await;
    v["sandbox"]["id"].as_str().expect("id").to_owned()
}

fn request(sandbox_id: &str, command: &str) -> api::ExecCommandRequest {
    api::ExecCommandRequest {
        sandbox_id: sandbox_id.to_owned(),
        command: command.to_owned(),
        ..Default::default()
    }
}

async fn wait_for_status(app: &TestApp, id: &str, want: &str) -> crate::store::CommandRecord {
    for _ in 0..200 {
        if let Some(c) = app.store.get_command(id).await.expect("store")
            && c.status.as_str() == want
        {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("command {id} never became {want}");
}

#[tokio::test]
async fn exec_streams_started_output_exit_in_order_and_audits() {
    let app = app().await;
    let id = running(&app).await;
    let mut g = serve(&app).await;
    let mut req = request(&id, "echo hi");
    req.env.insert("API_TOKEN".into(), "s3cret".into());
    req.stdin = b"\x00\xffbytes".to_vec();
    req.timeout_sec = 30;
    let mut stream = g.client.exec(req).await.expect("exec").into_inner();
    let mut events = Vec::new();
    while let Some(ev) = stream.next().await {
        events.push(ev.expect("event").event.expect("some event"));
    }
    assert_eq!(events.len(), 3, "{events:?}");
    let Event::Started(started) = &events[0] else {
        panic!("first is not started: {events:?}");
    };
    assert!(started.command_id.starts_with("CMD-"));
    assert!(started.started_at_unix_ms > 0);
    assert_eq!(events[1], Event::Stdout(b"ran: echo hi\n".to_vec()));
    let Event::Exit(x) = &events[2] else {
        panic!("last is not exit: {events:?}");
    };
    assert_eq!(x.command_id, started.command_id);
    assert_eq!((x.exit_code, x.status.as_str()), (0, "completed"));
    assert!(!x.timed_out && !x.truncated && x.error.is_empty());

    let sent = app.agents.execs.lock().expect("lock").clone();
    let last = sent.last().expect("an exec");
    assert_eq!(last.stdin, b"\x00\xffbytes", "stdin bytes pass as they are");
    assert_eq!(last.timeout_seconds, 30);
    let rec = wait_for_status(&app, &started.command_id, "completed").await;
    assert_eq!(
        (rec.kind.as_str(), rec.command.as_str()),
        ("command", "echo hi")
    );
    assert_eq!(rec.stdout, "ran: echo hi\n");
    assert!(rec.env_json.contains("***") && !rec.env_json.contains("s3cret"));
}

#[tokio::test]
async fn refusals_map_to_grpc_codes() {
    let mut config = Config::default();
    config.policy.command_deny = vec![r"\brm\s+-rf\b".into()];
    let app = app_with(config).await;
    let id = running(&app).await;
    let mut g = serve(&app).await;

    let e = g
        .client
        .exec(request(&id, "rm -rf /"))
        .await
        .expect_err("denied");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let (rows, _) = app.store.list_commands(&id, 10, 0).await.expect("commands");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status.as_str(), "denied", "a refusal is audited");

    let e = g
        .client
        .exec(request("SBX-nosuch000", "true"))
        .await
        .expect_err("unknown");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = g
        .client
        .exec(request("junk", "true"))
        .await
        .expect_err("bad id");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let mut bad_env = request(&id, "true");
    bad_env.env.insert("1BAD".into(), "x".into());
    let e = g.client.exec(bad_env).await.expect_err("bad env");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    let (s, v) = app.post_empty(&format!("/v1/sandboxes/{id}/stop")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let e = g
        .client
        .exec(request(&id, "true"))
        .await
        .expect_err("stopped");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
}

#[tokio::test]
async fn the_command_goes_on_when_the_client_leaves() {
    let app = app().await;
    let id = running(&app).await;
    app.agents.script_exec(|_| {
        futures::stream::iter(vec![
            ExecEvent::Started { at_unix_ms: 1 },
            ExecEvent::Stdout(b"one\n".to_vec()),
            ExecEvent::Stdout(b"two\n".to_vec()),
            exit(7),
        ])
        .then(|ev| async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            Ok(ev)
        })
        .boxed()
    });
    let mut g = serve(&app).await;
    let mut stream = g
        .client
        .exec(request(&id, "slow"))
        .await
        .expect("exec")
        .into_inner();
    let first = stream.next().await.expect("one event").expect("ok");
    let Some(Event::Started(started)) = first.event else {
        panic!("not started: {first:?}");
    };
    drop(stream);
    drop(g);
    let rec = wait_for_status(&app, &started.command_id, "completed").await;
    assert_eq!(rec.exit_code, Some(7));
    assert_eq!(rec.stdout, "one\ntwo\n");
}

#[tokio::test]
async fn get_sandbox_carries_the_start_path() {
    let app = app().await;
    let started = running(&app).await;
    let unstarted = app
        .create(json!({"source_vm_name": "debian-12", "agent_id": "agent-7", "auto_start": false}))
        .await;
    let unstarted = unstarted["sandbox"]["id"].as_str().expect("id").to_owned();
    let mut g = serve(&app).await;
    let mut start_path = async |id: &str| {
        g.client
            .get_sandbox(api::GetSandboxRequest {
                sandbox_id: id.to_owned(),
            })
            .await
            .expect("get")
            .into_inner()
            .start_path
    };
    assert_eq!(start_path(&started).await, "boot");
    assert_eq!(start_path(&unstarted).await, "", "empty while unknown");
}
