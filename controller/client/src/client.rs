//! An async client for the controller's REST API.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::types::*;

// The calls of the human-in-the-loop API (tokens, approvals, modes, audit trail).
#[path = "client_governance.rs"]
mod client_governance;
pub use client_governance::{
    ASK_GRACE, ApprovalQuery, AuditQuery, CreateOutcome, DEFAULT_ASK_TIMEOUT_SECS,
};

// A sandbox's egress allow-list and the requests for more.
#[path = "client_network.rs"]
mod client_network;
pub use client_network::{DEFAULT_EGRESS_TIMEOUT_SECS, EgressOutcome};

// Snapshots, restore, fork and diffs.
#[path = "client_snapshots.rs"]
mod client_snapshots;

// Ansible playbooks, generation, verification and jobs.
#[path = "client_ansible.rs"]
mod client_ansible;
pub use client_ansible::{VerifyOutcome, job_stream_url};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The controller answered with an error body.
    #[error("{status}: {}{}", body.error, if body.details.is_empty() { String::new() } else { format!(" ({})", body.details) })]
    Api { status: StatusCode, body: ErrorBody },
    #[error("cannot reach the controller at {url}: {source}")]
    Transport { url: String, source: reqwest::Error },
    #[error("unexpected answer from {url}: {reason}")]
    Decode { url: String, reason: String },
}

impl ClientError {
    /// The HTTP status, when the controller answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A client bound to one controller base URL (e.g. `http://127.0.0.1:8080`).
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

impl Client {
    pub fn new(base_url: &str) -> Result<Self, ClientError> {
        Self::with_ca(base_url, None)
    }

    /// A client that also trusts the CA certificate(s) in `ca_pem` (PEM) for an
    /// `https://` base URL: the fleet's `ca.pem` when the controller's `[api_tls]`
    /// certificate comes from `fluid-controller pki api`. The public roots stay trusted.
    pub fn with_ca(base_url: &str, ca_pem: Option<&[u8]>) -> Result<Self, ClientError> {
        let transport = |source| ClientError::Transport {
            url: base_url.to_owned(),
            source,
        };
        let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(10));
        if let Some(pem) = ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(transport)?;
            if certs.is_empty() {
                return Err(ClientError::Decode {
                    url: base_url.to_owned(),
                    reason: "the CA file holds no PEM certificate".into(),
                });
            }
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let http = builder.build().map_err(transport)?;
        Ok(Self {
            base: base_url.trim_end_matches('/').to_owned(),
            http,
            token: None,
        })
    }

    /// Sends `Authorization: Bearer <token>` with every request.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The WebSocket URL of an interactive session in `sandbox_id` (see [`attach_url`];
    /// add `&user=…&term=…` to change the defaults root and xterm-256color).
    pub fn attach_url(&self, sandbox_id: &str, cols: u32, rows: u32) -> String {
        attach_url(&self.base, sandbox_id, cols, rows)
    }

    /// Sends a request and decodes a JSON answer (or an [`ErrorBody`]).
    pub async fn request<B: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<R, ClientError> {
        let answer = self.send(method, path, body, None).await?;
        answer.decode()
    }

    /// Sends a request and reads the whole answer; a non-2xx status is a
    /// [`ClientError::Api`]. `timeout` bounds the whole exchange (without it only the
    /// connect timeout applies: the controller may hold a request for long, e.g. while
    /// a VM boots or a human decides).
    async fn send<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        timeout: Option<Duration>,
    ) -> Result<Answer, ClientError> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.http.request(method, &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        let resp = req.send().await.map_err(|source| ClientError::Transport {
            url: url.clone(),
            source,
        })?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|source| ClientError::Transport {
                url: url.clone(),
                source,
            })?;
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        Ok(Answer {
            url,
            status,
            bytes: Vec::from(bytes),
        })
    }

    async fn get<R: DeserializeOwned>(&self, path: &str) -> Result<R, ClientError> {
        self.request::<(), R>(Method::GET, path, None).await
    }

    pub async fn health(&self) -> Result<HealthResponse, ClientError> {
        self.get("/v1/health").await
    }

    pub async fn list_hosts(&self) -> Result<ListHostsResponse, ClientError> {
        self.get("/v1/hosts").await
    }

    pub async fn add_host(&self, req: &AddHostRequest) -> Result<HostResponse, ClientError> {
        self.request(Method::POST, "/v1/hosts", Some(req)).await
    }

    pub async fn list_vms(&self) -> Result<ListVmsResponse, ClientError> {
        self.get("/v1/vms").await
    }

    /// `POST /v1/sandboxes`. When no host has room, the controller holds the request
    /// until a human decides on the over-commit (no client time-out applies); a
    /// rejection is a `409` [`ClientError::Api`]. See [`Client::create_sandbox_nowait`].
    pub async fn create_sandbox(
        &self,
        req: &CreateSandboxRequest,
    ) -> Result<CreateSandboxResponse, ClientError> {
        self.request(Method::POST, "/v1/sandboxes", Some(req)).await
    }

    /// `query` is appended as is (e.g. `state=RUNNING&limit=10`).
    pub async fn list_sandboxes(&self, query: &str) -> Result<ListSandboxesResponse, ClientError> {
        let path = if query.is_empty() {
            "/v1/sandboxes".to_owned()
        } else {
            format!("/v1/sandboxes?{query}")
        };
        self.get(&path).await
    }

    pub async fn get_sandbox(&self, id: &str) -> Result<GetSandboxResponse, ClientError> {
        self.get(&format!("/v1/sandboxes/{id}")).await
    }

    pub async fn start_sandbox(
        &self,
        id: &str,
        wait_for_ip: bool,
    ) -> Result<StartSandboxResponse, ClientError> {
        let body = StartSandboxRequest {
            wait_for_ip: Some(wait_for_ip),
        };
        self.request(
            Method::POST,
            &format!("/v1/sandboxes/{id}/start"),
            Some(&body),
        )
        .await
    }

    pub async fn stop_sandbox(&self, id: &str) -> Result<StopSandboxResponse, ClientError> {
        self.request::<(), _>(Method::POST, &format!("/v1/sandboxes/{id}/stop"), None)
            .await
    }

    pub async fn destroy_sandbox(&self, id: &str) -> Result<DestroySandboxResponse, ClientError> {
        self.request::<(), _>(Method::DELETE, &format!("/v1/sandboxes/{id}"), None)
            .await
    }

    pub async fn sandbox_ip(&self, id: &str) -> Result<SandboxIpResponse, ClientError> {
        self.get(&format!("/v1/sandboxes/{id}/ip")).await
    }
}

/// A 2xx answer, read whole.
#[derive(Debug)]
struct Answer {
    url: String,
    status: StatusCode,
    bytes: Vec<u8>,
}

impl Answer {
    /// The body as JSON (an empty body reads as `null`).
    fn decode<R: DeserializeOwned>(&self) -> Result<R, ClientError> {
        let bytes = if self.bytes.is_empty() {
            &b"null"[..]
        } else {
            &self.bytes[..]
        };
        serde_json::from_slice(bytes).map_err(|e| ClientError::Decode {
            url: self.url.clone(),
            reason: e.to_string(),
        })
    }
}

/// The error of a non-2xx answer: its [`ErrorBody`], else its text as the message.
fn api_error(status: StatusCode, bytes: &[u8]) -> ClientError {
    let body = serde_json::from_slice::<ErrorBody>(bytes).unwrap_or_else(|_| ErrorBody {
        error: String::from_utf8_lossy(bytes).into_owned(),
        code: status.as_u16(),
        details: String::new(),
    });
    ClientError::Api { status, body }
}

/// One Server-Sent Event: its `event` name and `data` (JSON).
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub event: String,
    pub data: serde_json::Value,
}

impl Client {
    pub async fn run_command(
        &self,
        sandbox_id: &str,
        req: &RunCommandRequest,
    ) -> Result<RunCommandResponse, ClientError> {
        self.request(
            Method::POST,
            &format!("/v1/sandboxes/{sandbox_id}/run"),
            Some(req),
        )
        .await
    }

    /// Runs a command with `?stream=true` and calls `on_event` for each event
    /// (`started`, `stdout`, `stderr`, `exit`). Returns the final record.
    pub async fn run_command_streaming(
        &self,
        sandbox_id: &str,
        req: &RunCommandRequest,
        mut on_event: impl FnMut(&SseEvent),
    ) -> Result<RunCommandResponse, ClientError> {
        let url = format!("{}/v1/sandboxes/{sandbox_id}/run?stream=true", self.base);
        let transport = |source| ClientError::Transport {
            url: url.clone(),
            source,
        };
        let mut builder = self.http.post(&url).json(req);
        if let Some(t) = &self.token {
            builder = builder.bearer_auth(t);
        }
        let mut resp = builder.send().await.map_err(transport)?;
        let status = resp.status();
        if !status.is_success() {
            let bytes = resp.bytes().await.map_err(transport)?;
            return Err(api_error(status, &bytes));
        }
        let mut buf: Vec<u8> = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(transport)? {
            buf.extend_from_slice(&chunk);
            while let Some(end) = find_blank_line(&buf) {
                let block: Vec<u8> = buf.drain(..end + 2).collect();
                let Some(ev) = parse_sse(&String::from_utf8_lossy(&block)) else {
                    continue;
                };
                on_event(&ev);
                if ev.event == "exit" {
                    return serde_json::from_value(ev.data).map_err(|e| ClientError::Decode {
                        url: url.clone(),
                        reason: e.to_string(),
                    });
                }
            }
        }
        Err(ClientError::Decode {
            url: url.clone(),
            reason: "the stream ended without an exit event".into(),
        })
    }

    /// `query` is appended as is (e.g. `limit=10&offset=20`).
    pub async fn list_commands(
        &self,
        sandbox_id: &str,
        query: &str,
    ) -> Result<ListCommandsResponse, ClientError> {
        let mut path = format!("/v1/sandboxes/{sandbox_id}/commands");
        if !query.is_empty() {
            path = format!("{path}?{query}");
        }
        self.get(&path).await
    }

    pub async fn read_file(
        &self,
        sandbox_id: &str,
        req: &ReadFileRequest,
    ) -> Result<ReadFileResponse, ClientError> {
        self.request(
            Method::POST,
            &format!("/v1/sandboxes/{sandbox_id}/files/read"),
            Some(req),
        )
        .await
    }

    pub async fn write_file(
        &self,
        sandbox_id: &str,
        req: &WriteFileRequest,
    ) -> Result<WriteFileResponse, ClientError> {
        self.request(
            Method::POST,
            &format!("/v1/sandboxes/{sandbox_id}/files/write"),
            Some(req),
        )
        .await
    }

    pub async fn edit_file(
        &self,
        sandbox_id: &str,
        req: &EditFileRequest,
    ) -> Result<EditFileResponse, ClientError> {
        self.request(
            Method::POST,
            &format!("/v1/sandboxes/{sandbox_id}/files/edit"),
            Some(req),
        )
        .await
    }

    pub async fn add_ssh_key(
        &self,
        sandbox_id: &str,
        req: &AddSshKeyRequest,
    ) -> Result<(), ClientError> {
        self.request::<_, serde_json::Value>(
            Method::POST,
            &format!("/v1/sandboxes/{sandbox_id}/sshkey"),
            Some(req),
        )
        .await
        .map(|_| ())
    }

    pub async fn request_access(&self, req: &AccessRequest) -> Result<AccessResponse, ClientError> {
        self.request(Method::POST, "/v1/access/request", Some(req))
            .await
    }

    pub async fn ca_pubkey(&self) -> Result<CaPublicKeyResponse, ClientError> {
        self.get("/v1/access/ca-pubkey").await
    }

    pub async fn list_certificates(&self) -> Result<ListCertificatesResponse, ClientError> {
        self.get("/v1/access/certificates").await
    }

    pub async fn get_certificate(&self, id: &str) -> Result<CertificateResponse, ClientError> {
        self.get(&format!("/v1/access/certificate/{id}")).await
    }

    pub async fn revoke_certificate(&self, id: &str) -> Result<CertificateResponse, ClientError> {
        self.request::<(), _>(
            Method::DELETE,
            &format!("/v1/access/certificate/{id}"),
            None,
        )
        .await
    }
}

impl Client {
    /// Follows `GET /v1/sandboxes/{id}/stream`: calls `on_event` for every event
    /// (`started`, `stdout`, `stderr`, `exit`, `lagged`) until the controller closes the
    /// stream (the sandbox went away, or the controller stopped). Never times out on its
    /// own; drop the future to stop watching.
    pub async fn watch_sandbox(
        &self,
        sandbox_id: &str,
        mut on_event: impl FnMut(&SseEvent),
    ) -> Result<(), ClientError> {
        let url = format!("{}/v1/sandboxes/{sandbox_id}/stream", self.base);
        let transport = |source| ClientError::Transport {
            url: url.clone(),
            source,
        };
        let mut builder = self
            .http
            .get(&url)
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(t) = &self.token {
            builder = builder.bearer_auth(t);
        }
        let mut resp = builder.send().await.map_err(transport)?;
        let status = resp.status();
        if !status.is_success() {
            let bytes = resp.bytes().await.map_err(transport)?;
            return Err(api_error(status, &bytes));
        }
        let mut buf: Vec<u8> = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(transport)? {
            buf.extend_from_slice(&chunk);
            while let Some(end) = find_blank_line(&buf) {
                let block: Vec<u8> = buf.drain(..end + 2).collect();
                if let Some(ev) = parse_sse(&String::from_utf8_lossy(&block)) {
                    on_event(&ev);
                }
            }
        }
        Ok(())
    }
}

/// The WebSocket URL of an interactive session given the REST base URL: `http://` becomes
/// `ws://`, `https://` becomes `wss://` (any other base is kept as it is).
pub fn attach_url(base: &str, sandbox_id: &str, cols: u32, rows: u32) -> String {
    let base = base.trim_end_matches('/');
    let ws = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_owned()
    };
    format!("{ws}/v1/sandboxes/{sandbox_id}/attach?cols={cols}&rows={rows}")
}

fn find_blank_line(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\n\n")
}

/// Parses one SSE block (`event:` and `data:` lines); comments and keep-alives are `None`.
pub fn parse_sse(block: &str) -> Option<SseEvent> {
    let mut event = String::from("message");
    let mut data = String::new();
    for line in block.lines() {
        if let Some(v) = line.strip_prefix("event:") {
            event = v.trim().to_owned();
        } else if let Some(v) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(v.strip_prefix(' ').unwrap_or(v));
        }
    }
    if data.is_empty() {
        return None;
    }
    let data = serde_json::from_str(&data).unwrap_or(serde_json::Value::String(data));
    Some(SseEvent { event, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_blocks_parse() {
        let ev = parse_sse("event: stdout\ndata: {\"data\":\"hi\"}\n\n").expect("event");
        assert_eq!(ev.event, "stdout");
        assert_eq!(ev.data["data"], "hi");
        assert!(parse_sse(": keep-alive\n\n").is_none());
        assert_eq!(find_blank_line(b"a\n\nb"), Some(1));
    }

    #[test]
    fn attach_urls_follow_the_scheme() {
        assert_eq!(
            attach_url("http://127.0.0.1:8080/", "SBX-1", 120, 40),
            "ws://127.0.0.1:8080/v1/sandboxes/SBX-1/attach?cols=120&rows=40"
        );
        let c = Client::new("https://fluid.example").expect("client");
        assert_eq!(
            c.attach_url("SBX-1", 80, 24),
            "wss://fluid.example/v1/sandboxes/SBX-1/attach?cols=80&rows=24"
        );
    }

    #[test]
    fn attach_frames_have_their_shapes() {
        let r = serde_json::to_value(AttachControl::Resize(TerminalSize {
            cols: 100,
            rows: 30,
        }))
        .expect("json");
        assert_eq!(r, serde_json::json!({"resize": {"cols": 100, "rows": 30}}));
        let e: AttachEvent =
            serde_json::from_str(r#"{"exit":{"exit_code":0,"error":null}}"#).expect("exit");
        assert!(matches!(
            e,
            AttachEvent::Exit(AttachExit { exit_code: 0, .. })
        ));
    }
}
