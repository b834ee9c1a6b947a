//! Notifies a configured URL of approval requests and decisions, so a human hears of
//! them (chat bot, pager, ticket). Each delivery is a JSON `POST`:
//!
//! ```text
//! X-Fluid-Event: approval.requested | approval.decided
//! X-Fluid-Delivery: <uuid>
//! X-Fluid-Timestamp: <unix seconds>
//! X-Fluid-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>
//! {"event": "...", "approval": {...}}
//! ```
//!
//! A receiver recomputes the HMAC over the timestamp and the raw body with the shared
//! secret ([`verify`]) and rejects stale timestamps, so a captured delivery cannot be
//! replayed later. Deliveries run in the background and are retried with back-off;
//! they never delay the request that caused them.

use std::time::Duration;

use fluid_client::governance::Approval;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

/// Attempts per delivery (the first and its retries).
pub const ATTEMPTS: u32 = 5;
/// Deadline of one attempt.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

pub const SIGNATURE_HEADER: &str = "x-fluid-signature";
pub const TIMESTAMP_HEADER: &str = "x-fluid-timestamp";
pub const EVENT_HEADER: &str = "x-fluid-event";
pub const DELIVERY_HEADER: &str = "x-fluid-delivery";

#[derive(Debug, Clone, Serialize)]
struct Payload<'a> {
    event: &'a str,
    approval: &'a Approval,
}

/// `sha256=<hex>` of `"<timestamp>.<body>"` under `secret`.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Whether `signature` (the header's value) signs `timestamp` and `body`; compared in
/// constant time.
pub fn verify(secret: &[u8], timestamp: i64, body: &[u8], signature: &str) -> bool {
    let Some(hex_sig) = signature.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

/// The configured receiver.
#[derive(Clone)]
pub struct Webhook {
    url: String,
    secret: Vec<u8>,
    http: reqwest::Client,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Webhook {
    pub fn new(url: &str, secret: &[u8]) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(ATTEMPT_TIMEOUT)
            .build()?;
        Ok(Self {
            url: url.to_owned(),
            secret: secret.to_vec(),
            http,
        })
    }

    /// Delivers `event` about `approval` in the background.
    pub fn notify(&self, event: &'static str, approval: &Approval) {
        let body = match serde_json::to_vec(&Payload { event, approval }) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "encoding a webhook payload");
                return;
            }
        };
        let this = self.clone();
        let id = approval.id.clone();
        tokio::spawn(async move {
            let delivery = uuid::Uuid::new_v4().to_string();
            let mut backoff = Duration::from_secs(1);
            for attempt in 1..=ATTEMPTS {
                match this.send(event, &delivery, &body).await {
                    Ok(()) => {
                        tracing::debug!(approval = %id, event, attempt, "webhook delivered");
                        return;
                    }
                    Err(e) if attempt < ATTEMPTS => {
                        tracing::warn!(approval = %id, event, attempt, error = %e, "webhook delivery failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff *= 2;
                    }
                    Err(e) => {
                        tracing::error!(approval = %id, event, error = %e, "webhook delivery failed; giving up");
                    }
                }
            }
        });
    }

    async fn send(&self, event: &str, delivery: &str, body: &[u8]) -> anyhow::Result<()> {
        let ts = chrono::Utc::now().timestamp();
        let resp = self
            .http
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(EVENT_HEADER, event)
            .header(DELIVERY_HEADER, delivery)
            .header(TIMESTAMP_HEADER, ts.to_string())
            .header(SIGNATURE_HEADER, sign(&self.secret, ts, body))
            .body(body.to_vec())
            .send()
            .await?;
        if !resp.status().is_success() {
            anyhow::bail!("{} answered {}", self.url, resp.status());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_its_own_body_and_time() {
        let sig = sign(b"s3cret", 1_700_000_000, b"{\"a\":1}");
        assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64);
        assert!(verify(b"s3cret", 1_700_000_000, b"{\"a\":1}", &sig));
        assert!(!verify(b"s3cret", 1_700_000_001, b"{\"a\":1}", &sig));
        assert!(!verify(b"s3cret", 1_700_000_000, b"{\"a\":2}", &sig));
        assert!(!verify(b"other", 1_700_000_000, b"{\"a\":1}", &sig));
        assert!(!verify(b"s3cret", 1_700_000_000, b"{\"a\":1}", "sha256=zz"));
        assert!(!verify(b"s3cret", 1_700_000_000, b"{\"a\":1}", "md5=00"));
    }
}
