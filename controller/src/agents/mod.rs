//! Where a request crosses to a host: the controller's side of the host-agent gRPC API.
//!
//! [`AgentConnector`] is "talk to the agent at host H"; the service logic only sees this
//! trait (tests put a fake behind it). It speaks the `fluid_proto::model` types both
//! ways (requests such as [`Exec`] and [`AttachOpen`]; answers such as [`ExecEvent`],
//! [`ImageInfo`] and [`EgressState`], re-exported here for its callers); wire messages
//! (`pb`) stay inside [`GrpcAgents`], which implements it over mTLS with one lazily
//! connected tonic channel per agent address (tonic reconnects by itself), a connect
//! timeout and a deadline per call: it converts each request with the model's `From`
//! and validates every reply on receipt with its `TryFrom`. Every call goes through the
//! `fluid_telemetry` gRPC layer: a span whose W3C `traceparent` travels in the metadata,
//! the RPC and code in [`Metrics`].

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use fluid_proto::model::{
    AttachOpen, CreateSandbox, EgressPolicy, Exec, HostStatus, SandboxId, SandboxInfo,
    check_ssh_public_key,
};
// The trait's answers, for its callers.
pub use fluid_proto::model::{EgressState, ExecEvent, ExecExit, ImageInfo};
use fluid_proto::pb;
use fluid_proto::pb::host_agent_client::HostAgentClient;
use fluid_proto::tls::TlsMaterial;
use fluid_telemetry::grpc::{GrpcLayer, GrpcService};
use futures::StreamExt as _;
use futures::stream::BoxStream;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use tower::Layer as _;

use fluid_client::types::SandboxState;

use crate::metrics::Metrics;
use crate::support::addr::check_address;

// Snapshots, out-of-band disk reads and the SSH tunnel: a supertrait, in its own file.
pub mod locate;
mod snapshots;
pub use snapshots::{
    AgentSnapshot, DIFF_TIMEOUT, READ_FILE_MAX, SnapshotAgent, TunnelInputStream, TunnelStream,
    read_cap,
};

/// The agent a call goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentTarget {
    pub name: String,
    /// `host:port`.
    pub address: String,
}

/// How a call to an agent failed, in the few kinds callers branch on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    /// Could not reach the agent (connection refused, TLS refused, agent down).
    #[error("agent {host} unreachable: {message}")]
    Unavailable { host: String, message: String },
    #[error("agent {host} did not answer within {seconds} s")]
    Timeout { host: String, seconds: u64 },
    #[error("agent {host}: not found: {message}")]
    NotFound { host: String, message: String },
    /// The agent refused the operation in the sandbox's current state, or is full.
    #[error("agent {host} refused: {message}")]
    Refused { host: String, message: String },
    /// The agent failed, or answered something invalid.
    #[error("agent {host} failed: {message}")]
    Failed { host: String, message: String },
    /// The host's disk cannot take what the operation would write (the agent checked
    /// before writing anything): HTTP 507.
    #[error("agent {host}: {message}")]
    InsufficientStorage { host: String, message: String },
    /// Too many at once on the agent (RESOURCE_EXHAUSTED: commands in one sandbox,
    /// tunnels, disk-heavy operations); retry later: HTTP 429.
    #[error("agent {host} busy: {message}")]
    Busy { host: String, message: String },
}

/// The gRPC metadata key by which an agent's RESOURCE_EXHAUSTED says what ran out
/// (`storage`: the disk; `busy`: a concurrency cap).
pub const EXHAUSTED_KEY: &str = "fluid-exhausted";

impl AgentError {
    fn from_status(host: &str, s: &tonic::Status) -> Self {
        let host = host.to_owned();
        let message = s.message().to_owned();
        match s.code() {
            Code::Unavailable | Code::Unauthenticated | Code::PermissionDenied => {
                Self::Unavailable { host, message }
            }
            Code::DeadlineExceeded => Self::Timeout { host, seconds: 0 },
            Code::ResourceExhausted => {
                match s
                    .metadata()
                    .get(EXHAUSTED_KEY)
                    .and_then(|v| v.to_str().ok())
                {
                    Some("storage") => Self::InsufficientStorage { host, message },
                    _ => Self::Busy { host, message },
                }
            }
            Code::NotFound => Self::NotFound { host, message },
            Code::FailedPrecondition | Code::AlreadyExists | Code::Aborted => {
                Self::Refused { host, message }
            }
            _ => Self::Failed {
                host,
                message: format!("{:?}: {message}", s.code()),
            },
        }
    }

    fn bad_reply(host: &str, e: impl std::fmt::Display) -> Self {
        Self::Failed {
            host: host.to_owned(),
            message: format!("invalid reply: {e}"),
        }
    }
}

/// What `GetStatus` says, with the agent's exec key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentStatus {
    pub status: HostStatus,
    /// The agent's SSH public key for exec (OpenSSH line), when it reported a valid one.
    pub ssh_public_key: Option<String>,
}

/// The events of one Exec, as they come; ends after `Exit` (or an error).
pub type ExecStream = BoxStream<'static, Result<ExecEvent, AgentError>>;

/// What a person sends into an interactive session (after its `open`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachInput {
    Stdin(Vec<u8>),
    Resize { cols: u32, rows: u32 },
}

impl From<AttachInput> for pb::AttachInput {
    fn from(i: AttachInput) -> Self {
        use pb::attach_input::Input;
        let input = match i {
            AttachInput::Stdin(b) => Input::Stdin(b),
            AttachInput::Resize { cols, rows } => Input::Resize(pb::TerminalSize { cols, rows }),
        };
        Self { input: Some(input) }
    }
}

/// What an interactive session answers: terminal bytes, then one `Exit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachOutput {
    Data(Vec<u8>),
    /// `exit_code` is -1 when the shell had no exit status.
    Exit {
        exit_code: i32,
        error: Option<String>,
    },
}

/// The input of one Attach (ending it hangs up).
pub type AttachInputStream = BoxStream<'static, AttachInput>;
/// The output of one Attach, as it comes; ends after `Exit` (or an error).
pub type AttachStream = BoxStream<'static, Result<AttachOutput, AgentError>>;

/// "Talk to the agent at host H". Snapshots, diffs, file reads and the SSH tunnel are
/// in the supertrait [`SnapshotAgent`].
#[async_trait]
pub trait AgentConnector: SnapshotAgent + Send + Sync + 'static {
    async fn status(&self, t: &AgentTarget) -> Result<AgentStatus, AgentError>;
    /// Starts a command; the stream carries its output and exit.
    async fn exec(&self, t: &AgentTarget, req: Exec) -> Result<ExecStream, AgentError>;
    /// Opens an interactive shell: `open` first, then `input` (stdin, resizes) as it
    /// comes; the stream carries the terminal's output and the exit.
    async fn attach(
        &self,
        t: &AgentTarget,
        open: AttachOpen,
        input: AttachInputStream,
    ) -> Result<AttachStream, AgentError>;
    async fn list_images(&self, t: &AgentTarget) -> Result<Vec<ImageInfo>, AgentError>;
    async fn list_sandboxes(&self, t: &AgentTarget) -> Result<Vec<SandboxInfo>, AgentError>;
    async fn get_sandbox(&self, t: &AgentTarget, id: &SandboxId)
    -> Result<SandboxInfo, AgentError>;
    async fn create_sandbox(
        &self,
        t: &AgentTarget,
        req: &CreateSandbox,
    ) -> Result<SandboxInfo, AgentError>;
    async fn start_sandbox(
        &self,
        t: &AgentTarget,
        id: &SandboxId,
    ) -> Result<SandboxInfo, AgentError>;
    async fn stop_sandbox(
        &self,
        t: &AgentTarget,
        id: &SandboxId,
        force: bool,
    ) -> Result<SandboxInfo, AgentError>;
    /// `Ok(existed)`; destroying an unknown id succeeds.
    async fn destroy_sandbox(&self, t: &AgentTarget, id: &SandboxId) -> Result<bool, AgentError>;
    /// `Ok(None)` when the sandbox has no lease yet after `timeout_seconds`.
    async fn wait_for_ip(
        &self,
        t: &AgentTarget,
        id: &SandboxId,
        timeout_seconds: u32,
    ) -> Result<Option<Ipv4Addr>, AgentError>;
    /// Replaces the sandbox's egress allow-list; what the agent enforces now.
    async fn set_egress_policy(
        &self,
        t: &AgentTarget,
        id: &SandboxId,
        policy: &EgressPolicy,
    ) -> Result<EgressState, AgentError>;
    /// The allow-list the agent enforces, and what its domains resolve to.
    async fn get_egress_policy(
        &self,
        t: &AgentTarget,
        id: &SandboxId,
    ) -> Result<EgressState, AgentError>;
}

/// Deadlines of agent calls.
#[derive(Debug, Clone, Copy)]
pub struct AgentTimeouts {
    pub connect: Duration,
    /// Plain calls.
    pub call: Duration,
    /// Create (clones a disk, defines and boots a domain).
    pub create: Duration,
}

impl AgentTimeouts {
    pub fn new(call: Duration) -> Self {
        Self {
            connect: Duration::from_secs(5),
            call,
            create: call * 4,
        }
    }
}

/// The real connector: gRPC over mTLS, one channel per agent address.
pub struct GrpcAgents {
    tls: TlsMaterial,
    timeouts: AgentTimeouts,
    channels: Mutex<HashMap<String, Channel>>,
    /// Traces and counts every call.
    layer: GrpcLayer,
}

/// A channel to an agent, through the tracing and metrics layer.
pub type AgentChannel = GrpcService<Channel>;

impl std::fmt::Debug for GrpcAgents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcAgents")
            .field("timeouts", &self.timeouts)
            .finish_non_exhaustive()
    }
}

/// Largest message taken from an agent: a diff carries both sides' text of every
/// changed text file (tonic's default of 4 MiB is too small after a package install).
pub const AGENT_MAX_MESSAGE_BYTES: usize = 64 << 20;

impl GrpcAgents {
    /// `metrics` counts every call by RPC and gRPC code.
    pub fn new(tls: TlsMaterial, timeouts: AgentTimeouts, metrics: Arc<Metrics>) -> Self {
        Self {
            tls,
            timeouts,
            channels: Mutex::new(HashMap::new()),
            layer: GrpcLayer::client(fluid_proto::pb::host_agent_server::SERVICE_NAME, metrics),
        }
    }

    fn agent_client(&self, ch: Channel) -> HostAgentClient<AgentChannel> {
        HostAgentClient::new(self.layer.layer(ch))
            .max_decoding_message_size(AGENT_MAX_MESSAGE_BYTES)
    }

    fn client(&self, t: &AgentTarget) -> Result<HostAgentClient<AgentChannel>, AgentError> {
        let unavailable = |message: String| AgentError::Unavailable {
            host: t.name.clone(),
            message,
        };
        let mut channels = self
            .channels
            .lock()
            .map_err(|_| unavailable("channel pool poisoned".into()))?;
        if let Some(ch) = channels.get(&t.address) {
            return Ok(self.agent_client(ch.clone()));
        }
        let host = check_address(&t.address).map_err(unavailable)?;
        let endpoint = Endpoint::from_shared(format!("https://{}", t.address))
            .map_err(|e| unavailable(e.to_string()))?
            .tls_config(self.tls.client_config(host))
            .map_err(|e| unavailable(e.to_string()))?
            .connect_timeout(self.timeouts.connect)
            .tcp_keepalive(Some(Duration::from_secs(30)))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10));
        let ch = endpoint.connect_lazy();
        channels.insert(t.address.clone(), ch.clone());
        Ok(self.agent_client(ch))
    }

    async fn call<T, F, Fut>(
        &self,
        t: &AgentTarget,
        deadline: Duration,
        f: F,
    ) -> Result<T, AgentError>
    where
        F: FnOnce(HostAgentClient<AgentChannel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let client = self.client(t)?;
        match tokio::time::timeout(deadline, f(client)).await {
            Ok(Ok(resp)) => Ok(resp.into_inner()),
            Ok(Err(status)) => Err(status_error(t, deadline, &status)),
            Err(_) => Err(AgentError::Timeout {
                host: t.name.clone(),
                seconds: deadline.as_secs(),
            }),
        }
    }
}

/// A receiver as a stream.
struct ReceiverStream<T>(tokio::sync::mpsc::Receiver<T>);

impl<T> futures::Stream for ReceiverStream<T> {
    type Item = T;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        self.0.poll_recv(cx)
    }
}

/// An agent call's failure, with the transport's reasons.
fn status_error(t: &AgentTarget, deadline: Duration, status: &tonic::Status) -> AgentError {
    let mut err = AgentError::from_status(&t.name, status);
    if let AgentError::Timeout { seconds, .. } = &mut err {
        *seconds = deadline.as_secs();
    }
    if let AgentError::Unavailable { message, .. } = &mut err {
        // The transport error's source chain says why (refused, TLS, DNS).
        let mut src = std::error::Error::source(status);
        while let Some(s) = src {
            let s_text = s.to_string();
            if !message.contains(&s_text) {
                message.push_str(&format!(": {s_text}"));
            }
            src = s.source();
        }
    }
    err
}

fn sandbox_reply(host: &str, s: pb::Sandbox) -> Result<SandboxInfo, AgentError> {
    SandboxInfo::try_from(s).map_err(|e| AgentError::bad_reply(host, e))
}

fn egress_reply(host: &str, s: pb::EgressPolicyState) -> Result<EgressState, AgentError> {
    EgressState::try_from(s).map_err(|e| AgentError::bad_reply(host, e))
}

#[async_trait]
impl AgentConnector for GrpcAgents {
    async fn status(&self, t: &AgentTarget) -> Result<AgentStatus, AgentError> {
        let s = self
            .call(t, self.timeouts.call, |mut c| async move {
                c.get_status(pb::GetStatusRequest {}).await
            })
            .await?;
        let key = s.ssh_public_key.clone();
        let ssh_public_key = if key.is_empty() {
            None
        } else {
            match check_ssh_public_key("ssh_public_key", &key) {
                Ok(k) => Some(k),
                Err(e) => {
                    tracing::warn!(host = %t.name, error = %e, "agent reported a bad SSH key");
                    None
                }
            }
        };
        Ok(AgentStatus {
            status: HostStatus::try_from(s).map_err(|e| AgentError::bad_reply(&t.name, e))?,
            ssh_public_key,
        })
    }

    async fn exec(&self, t: &AgentTarget, req: Exec) -> Result<ExecStream, AgentError> {
        let msg = pb::ExecRequest::from(req);
        let stream = self
            .call(
                t,
                self.timeouts.call,
                |mut c| async move { c.exec(msg).await },
            )
            .await?;
        let host = t.name.clone();
        Ok(stream
            .filter_map(move |item| {
                let host = host.clone();
                async move {
                    match item {
                        Ok(pb::ExecEvent { event: Some(e) }) => Some(Ok(ExecEvent::from(e))),
                        Ok(pb::ExecEvent { event: None }) => None,
                        Err(s) => Some(Err(AgentError::from_status(&host, &s))),
                    }
                }
            })
            .boxed())
    }

    async fn attach(
        &self,
        t: &AgentTarget,
        open: AttachOpen,
        input: AttachInputStream,
    ) -> Result<AttachStream, AgentError> {
        let first = pb::AttachInput {
            input: Some(pb::attach_input::Input::Open(pb::AttachOpen::from(open))),
        };
        // A concrete stream type for tonic (a boxed one trips the compiler's Send
        // proof); a task pumps the person's input into it.
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut input = input;
            if tx.send(first).await.is_err() {
                return;
            }
            while let Some(i) = input.next().await {
                if tx.send(pb::AttachInput::from(i)).await.is_err() {
                    return;
                }
            }
        });
        let outbound = ReceiverStream(rx);
        // The deadline covers the opening only; the session lasts as long as it lasts.
        let deadline = self.timeouts.call;
        let mut client = self.client(t)?;
        let stream = match tokio::time::timeout(deadline, client.attach(outbound)).await {
            Ok(Ok(resp)) => resp.into_inner(),
            Ok(Err(status)) => return Err(status_error(t, deadline, &status)),
            Err(_) => {
                return Err(AgentError::Timeout {
                    host: t.name.clone(),
                    seconds: deadline.as_secs(),
                });
            }
        };
        let host = t.name.clone();
        Ok(stream
            .filter_map(move |item| {
                let host = host.clone();
                async move {
                    use pb::attach_output::Output;
                    match item {
                        Ok(pb::AttachOutput {
                            output: Some(Output::Data(b)),
                        }) => Some(Ok(AttachOutput::Data(b))),
                        Ok(pb::AttachOutput {
                            output: Some(Output::Exit(x)),
                        }) => Some(Ok(AttachOutput::Exit {
                            exit_code: x.exit_code,
                            error: (!x.error.is_empty()).then_some(x.error),
                        })),
                        Ok(pb::AttachOutput { output: None }) => None,
                        Err(s) => Some(Err(AgentError::from_status(&host, &s))),
                    }
                }
            })
            .boxed())
    }

    async fn list_images(&self, t: &AgentTarget) -> Result<Vec<ImageInfo>, AgentError> {
        let r = self
            .call(t, self.timeouts.call, |mut c| async move {
                c.list_images(pb::ListImagesRequest {}).await
            })
            .await?;
        Ok(r.images.into_iter().map(ImageInfo::from).collect())
    }

    async fn list_sandboxes(&self, t: &AgentTarget) -> Result<Vec<SandboxInfo>, AgentError> {
        let r = self
            .call(t, self.timeouts.call, |mut c| async move {
                c.list_sandboxes(pb::ListSandboxesRequest {}).await
            })
            .await?;
        r.sandboxes
            .into_iter()
            .map(|s| sandbox_reply(&t.name, s))
            .collect()
    }

    async fn get_sandbox(
        &self,
        t: &AgentTarget,
        id: &SandboxId,
    ) -> Result<SandboxInfo, AgentError> {
        let msg = pb::SandboxRef { id: id.to_string() };
        let s = self
            .call(t, self.timeouts.call, |mut c| async move {
                c.get_sandbox(msg).await
            })
            .await?;
        sandbox_reply(&t.name, s)
    }

    async fn create_sandbox(
        &self,
        t: &AgentTarget,
        req: &CreateSandbox,
    ) -> Result<SandboxInfo, AgentError> {
        let msg = pb::CreateSandboxRequest::from(req);
        let s = self
            .call(t, self.timeouts.create, |mut c| async move {
                c.create_sandbox(msg).await
            })
            .await?;
        sandbox_reply(&t.name, s)
    }

    async fn start_sandbox(
        &self,
        t: &AgentTarget,
        id: &SandboxId,
    ) -> Result<SandboxInfo, AgentError> {
        let msg = pb::SandboxRef { id: id.to_string() };
        let s = self
            .call(t, self.timeouts.create, |mut c| async move {
                c.start_sandbox(msg).await
            })
            .await?;
        sandbox_reply(&t.name, s)
    }

    async fn stop_sandbox(
        &self,
        t: &AgentTarget,
        id: &SandboxId,
        force: bool,
    ) -> Result<SandboxInfo, AgentError> {
        let msg = pb::StopSandboxRequest {
            id: id.to_string(),
            force,
            timeout_seconds: 0,
        };
        let s = self
            .call(t, self.timeouts.create, |mut c| async move {
                c.stop_sandbox(msg).await
            })
            .await?;
        sandbox_reply(&t.name, s)
    }

    async fn destroy_sandbox(&self, t: &AgentTarget, id: &SandboxId) -> Result<bool, AgentError> {
        let msg = pb::SandboxRef { id: id.to_string() };
        let r = self
            .call(t, self.timeouts.create, |mut c| async move {
                c.destroy_sandbox(msg).await
            })
            .await?;
        Ok(r.existed)
    }

    async fn wait_for_ip(
        &self,
        t: &AgentTarget,
        id: &SandboxId,
        timeout_seconds: u32,
    ) -> Result<Option<Ipv4Addr>, AgentError> {
        let msg = pb::WaitForIpRequest {
            id: id.to_string(),
            timeout_seconds,
        };
        let deadline = Duration::from_secs(u64::from(timeout_seconds)) + self.timeouts.call;
        let r = self
            .call(t, deadline, |mut c| async move { c.wait_for_ip(msg).await })
            .await?;
        if r.ip_address.is_empty() {
            return Ok(None);
        }
        r.ip_address.parse().map(Some).map_err(|_| {
            AgentError::bad_reply(
                &t.name,
                format!("{:?} is not an IPv4 address", r.ip_address),
            )
        })
    }

    async fn set_egress_policy(
        &self,
        t: &AgentTarget,
        id: &SandboxId,
        policy: &EgressPolicy,
    ) -> Result<EgressState, AgentError> {
        let msg = pb::SetEgressPolicyRequest {
            sandbox_id: id.to_string(),
            policy: Some(pb::EgressPolicy::from(policy)),
        };
        let s = self
            .call(t, self.timeouts.call, |mut c| async move {
                c.set_egress_policy(msg).await
            })
            .await?;
        egress_reply(&t.name, s)
    }

    async fn get_egress_policy(
        &self,
        t: &AgentTarget,
        id: &SandboxId,
    ) -> Result<EgressState, AgentError> {
        let msg = pb::SandboxRef { id: id.to_string() };
        let s = self
            .call(t, self.timeouts.call, |mut c| async move {
                c.get_egress_policy(msg).await
            })
            .await?;
        egress_reply(&t.name, s)
    }
}

/// The store state an agent's observation corresponds to.
pub fn observed_state(s: fluid_proto::model::ObservedState) -> SandboxState {
    use fluid_proto::model::ObservedState;
    match s {
        ObservedState::Created => SandboxState::Created,
        ObservedState::Running | ObservedState::Paused => SandboxState::Running,
        ObservedState::Stopped => SandboxState::Stopped,
        ObservedState::Error => SandboxState::Error,
    }
}

/// The REST API's name for how an agent reports a sandbox first started.
pub fn api_start_path(p: fluid_proto::model::StartPath) -> fluid_client::types::StartPath {
    use fluid_client::types::StartPath as Api;
    use fluid_proto::model::StartPath;
    match p {
        StartPath::Boot => Api::Boot,
        StartPath::Restore => Api::Restore,
        StartPath::Fork => Api::Fork,
        StartPath::Pool => Api::Pool,
    }
}

#[cfg(test)]
mod tests;
