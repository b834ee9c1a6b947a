//! An async client for the controller's REST API.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::types::*;

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
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|source| ClientError::Transport {
                url: base_url.to_owned(),
                source,
            })?;
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

    /// Sends a request and decodes a JSON answer (or an [`ErrorBody`]).
    pub async fn request<B: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<R, ClientError> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.http.request(method, &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
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
            let body = serde_json::from_slice::<ErrorBody>(&bytes).unwrap_or_else(|_| ErrorBody {
                error: String::from_utf8_lossy(&bytes).into_owned(),
                code: status.as_u16(),
                details: String::new(),
            });
            return Err(ClientError::Api { status, body });
        }
        let bytes = if bytes.is_empty() {
            &b"null"[..]
        } else {
            &bytes[..]
        };
        serde_json::from_slice(bytes).map_err(|e| ClientError::Decode {
            url,
            reason: e.to_string(),
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
