//! The client's calls of a sandbox's network egress API: the allow-list
//! (`/v1/sandboxes/{id}/network`) and requests for one more destination, which wait
//! for a human (`/v1/sandboxes/{id}/network/requests`). Shapes in [`crate::network`].

use std::time::Duration;

use reqwest::{Method, StatusCode};

use super::client_governance::ASK_GRACE;
use super::{Client, ClientError};
use crate::network::*;
use crate::percent::encode_component;

/// How long the controller waits for a decision on an egress request by default
/// (`[approvals] egress_timeout_secs`); a blocking request waits this plus
/// [`ASK_GRACE`] for its answer.
pub const DEFAULT_EGRESS_TIMEOUT_SECS: u64 = 900;

/// What `POST /v1/sandboxes/{id}/network/requests?wait=false` answered.
#[derive(Debug, Clone, PartialEq)]
pub enum EgressOutcome {
    /// `200`: already decided (or nothing to decide).
    Decided(EgressResponse),
    /// `202`: waiting for a human.
    Pending(PendingEgressResponse),
}

fn network_path(sandbox_id: &str) -> String {
    format!("/v1/sandboxes/{}/network", encode_component(sandbox_id))
}

impl Client {
    /// `GET /v1/sandboxes/{id}/network`: the allow-list, with what its domains resolve
    /// to when the sandbox's agent answers.
    pub async fn get_network(
        &self,
        sandbox_id: &str,
    ) -> Result<NetworkPolicyResponse, ClientError> {
        self.get(&network_path(sandbox_id)).await
    }

    /// `PUT /v1/sandboxes/{id}/network` (operator, admin): replaces the allow-list.
    /// A `503` means it is stored but the agent did not get it yet (the controller
    /// pushes it when the agent is back).
    pub async fn put_network(
        &self,
        sandbox_id: &str,
        req: &PutNetworkRequest,
    ) -> Result<NetworkPolicyResponse, ClientError> {
        self.request(Method::PUT, &network_path(sandbox_id), Some(req))
            .await
    }

    /// `POST /v1/sandboxes/{id}/network/requests`: blocks until a human decides (or
    /// the request expires); waits at most `wait` (default
    /// [`DEFAULT_EGRESS_TIMEOUT_SECS`]) plus [`ASK_GRACE`] for the answer.
    pub async fn request_egress(
        &self,
        sandbox_id: &str,
        req: &EgressRequest,
        wait: Option<Duration>,
    ) -> Result<EgressResponse, ClientError> {
        let wait = wait
            .unwrap_or(Duration::from_secs(DEFAULT_EGRESS_TIMEOUT_SECS))
            .saturating_add(ASK_GRACE);
        let path = format!("{}/requests", network_path(sandbox_id));
        self.send(Method::POST, &path, Some(req), Some(wait))
            .await?
            .decode()
    }

    /// `POST /v1/sandboxes/{id}/network/requests?wait=false`: answers at once with the
    /// approval to decide.
    pub async fn request_egress_nowait(
        &self,
        sandbox_id: &str,
        req: &EgressRequest,
    ) -> Result<EgressOutcome, ClientError> {
        let path = format!("{}/requests?wait=false", network_path(sandbox_id));
        let answer = self.send(Method::POST, &path, Some(req), None).await?;
        if answer.status == StatusCode::ACCEPTED {
            answer.decode().map(EgressOutcome::Pending)
        } else {
            answer.decode().map(EgressOutcome::Decided)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_encoded() {
        assert_eq!(network_path("SBX-1"), "/v1/sandboxes/SBX-1/network");
        assert_eq!(network_path("../x"), "/v1/sandboxes/..%2Fx/network");
    }

    #[test]
    fn pending_requests_decode() {
        let body = serde_json::json!({
            "request_id": "APR-1",
            "status": "pending",
            "approval": {
                "id": "APR-1",
                "kind": "egress",
                "requested_by": "bot",
                "summary": "SBX-1 wants tcp/443 to a.example: updates",
                "details": {},
                "status": "pending",
                "created_at": "2025-03-01T12:00:00Z",
                "expires_at": "2025-03-01T12:15:00Z"
            }
        });
        let answer = super::super::Answer {
            url: "http://x/v1/sandboxes/SBX-1/network/requests?wait=false".into(),
            status: StatusCode::ACCEPTED,
            bytes: body.to_string().into_bytes(),
        };
        let p: PendingEgressResponse = answer.decode().expect("decodes");
        assert_eq!(p.request_id, "APR-1");
    }
}
