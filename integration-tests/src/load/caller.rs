//! One client of the load run: REST calls with a token, each timed and recorded under
//! its route (method and path template), with its error kind when it fails.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;

use super::record::{QUOTA, Recorder};

/// The longest a call may take before it counts as a timeout.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct Caller {
    http: reqwest::Client,
    base: String,
    token: String,
    rec: Arc<Recorder>,
}

/// How a call failed (already recorded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed(pub String);

impl Caller {
    pub fn new(http: reqwest::Client, base: &str, token: &str, rec: Arc<Recorder>) -> Self {
        Self {
            http,
            base: base.to_owned(),
            token: token.to_owned(),
            rec,
        }
    }

    fn kind(status: u16, body: &str) -> String {
        let message = serde_json::from_str::<Value>(body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_else(|| body.chars().take(80).collect());
        match status {
            429 => QUOTA.to_owned(),
            _ => format!("{status} {}", message.chars().take(100).collect::<String>()),
        }
    }

    /// Sends a JSON call; answers the body when the status is one of `expect`.
    pub async fn json(
        &self,
        route: &'static str,
        method: Method,
        path: &str,
        body: Option<Value>,
        expect: &[u16],
    ) -> Result<Value, Failed> {
        let t = Instant::now();
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .timeout(CALL_TIMEOUT);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let sent = async {
            let resp = req.send().await?;
            let status = resp.status().as_u16();
            Ok::<_, reqwest::Error>((status, resp.text().await?))
        };
        match sent.await {
            Ok((status, text)) if expect.contains(&status) => {
                self.rec.ok(route, t.elapsed());
                Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
            }
            Ok((status, text)) => Err(self.fail(route, Self::kind(status, &text))),
            Err(e) if e.is_timeout() => Err(self.fail(route, "timeout".into())),
            Err(e) => Err(self.fail(route, format!("transport: {e}"))),
        }
    }

    fn fail(&self, route: &'static str, kind: String) -> Failed {
        self.rec.error(route, kind.clone());
        Failed(kind)
    }

    /// Runs `command` with streamed output (`/run?stream=true`), reading every event to
    /// the exit. Records the start (request to first event) and the whole run; answers
    /// the bytes of output read and the exit code.
    pub async fn exec_streamed(&self, id: &str, command: &str) -> Result<(usize, i64), Failed> {
        const START: &str = "POST /v1/sandboxes/{id}/run?stream (start)";
        const WHOLE: &str = "POST /v1/sandboxes/{id}/run?stream (to exit)";
        let t = Instant::now();
        let resp = self
            .http
            .post(format!("{}/v1/sandboxes/{id}/run?stream=true", self.base))
            .bearer_auth(&self.token)
            .timeout(CALL_TIMEOUT)
            .json(&serde_json::json!({"command": command, "timeout_sec": 60}))
            .send()
            .await;
        let mut resp = match resp {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => {
                let status = r.status().as_u16();
                let text = r.text().await.unwrap_or_default();
                return Err(self.fail(START, Self::kind(status, &text)));
            }
            Err(e) => return Err(self.fail(START, format!("transport: {e}"))),
        };
        let mut first = true;
        let mut text = String::new();
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    if first {
                        self.rec.ok(START, t.elapsed());
                        first = false;
                    }
                    text.push_str(&String::from_utf8_lossy(&chunk));
                }
                Ok(None) => break,
                Err(e) => return Err(self.fail(WHOLE, format!("stream: {e}"))),
            }
        }
        // The last event is `exit`, with the command record.
        let exit = text
            .split("\n\n")
            .filter_map(fluid_client::client::parse_sse)
            .find(|e| e.event == "exit");
        let Some(exit) = exit else {
            return Err(self.fail(WHOLE, "the stream ended without an exit event".into()));
        };
        let data = exit.data;
        let command = &data["command"];
        let code = command["exit_code"].as_i64().unwrap_or(-1);
        let bytes = command["stdout"].as_str().map_or(0, str::len);
        self.rec.ok(WHOLE, t.elapsed());
        Ok((bytes, code))
    }
}
