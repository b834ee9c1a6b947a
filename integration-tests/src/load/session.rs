//! One agent session of a load run: its own token and sandboxes, a loop of operations
//! drawn from the mix until the deadline or its operation budget, whichever is first.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use tokio::time::Instant;

use super::caller::Caller;

/// What a session does, with the weight of each.
#[derive(Debug, Clone, PartialEq)]
pub struct Mix {
    pub exec: u32,
    pub read: u32,
    pub write: u32,
    pub snapshot: u32,
    pub list: u32,
    pub approval: u32,
}

impl Default for Mix {
    fn default() -> Self {
        Self {
            exec: 50,
            read: 12,
            write: 12,
            snapshot: 4,
            list: 18,
            approval: 4,
        }
    }
}

impl std::str::FromStr for Mix {
    type Err = String;
    /// `exec=50,read=12,…` (names left out weigh 0).
    fn from_str(s: &str) -> Result<Self, String> {
        let mut m = Self {
            exec: 0,
            read: 0,
            write: 0,
            snapshot: 0,
            list: 0,
            approval: 0,
        };
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected name=weight"))?;
            let w: u32 = weight
                .parse()
                .map_err(|_| format!("{part:?}: the weight is not a number"))?;
            match name {
                "exec" => m.exec = w,
                "read" => m.read = w,
                "write" => m.write = w,
                "snapshot" => m.snapshot = w,
                "list" => m.list = w,
                "approval" => m.approval = w,
                _ => {
                    return Err(format!(
                        "{name:?}: not one of exec, read, write, snapshot, list, approval"
                    ));
                }
            }
        }
        if m.total() == 0 {
            return Err("every weight is 0".into());
        }
        Ok(m)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Exec,
    Read,
    Write,
    Snapshot,
    List,
    Approval,
}

impl Mix {
    fn total(&self) -> u32 {
        self.exec + self.read + self.write + self.snapshot + self.list + self.approval
    }

    /// The operation at `draw` (0..total).
    fn pick(&self, mut draw: u32) -> Op {
        for (w, op) in [
            (self.exec, Op::Exec),
            (self.read, Op::Read),
            (self.write, Op::Write),
            (self.snapshot, Op::Snapshot),
            (self.list, Op::List),
        ] {
            if draw < w {
                return op;
            }
            draw -= w;
        }
        Op::Approval
    }
}

/// One session: an agent token's caller, its sandboxes, and an operator's caller
/// (who decides the session's egress requests).
#[derive(Debug, Clone)]
pub struct Session {
    pub agent: Caller,
    pub operator: Caller,
    pub sandboxes: Vec<String>,
    pub mix: Mix,
    /// Pause between two operations (an agent thinking).
    pub think: Duration,
}

impl Session {
    /// Runs until `deadline` or `budget` operations; answers how many ran.
    pub async fn run(self, deadline: Instant, budget: u64) -> u64 {
        if self.sandboxes.is_empty() {
            return 0;
        }
        let mut done = 0u64;
        let mut snapshots: Vec<(String, String)> = Vec::new();
        while done < budget && Instant::now() < deadline {
            let id = &self.sandboxes[(done as usize) % self.sandboxes.len()];
            let op = self.mix.pick(rand_below(self.mix.total()));
            self.step(op, id, done, &mut snapshots).await;
            done += 1;
            if !self.think.is_zero() {
                tokio::time::sleep(
                    self.think
                        .min(deadline.saturating_duration_since(Instant::now())),
                )
                .await;
            }
        }
        done
    }

    async fn step(&self, op: Op, id: &str, n: u64, snapshots: &mut Vec<(String, String)>) {
        // Each call records its own latency and error; a failed one ends the step.
        let _ = match op {
            Op::Exec => self
                .agent
                .exec_streamed(id, &format!("make -C /srv/app step-{n}"))
                .await
                .map(drop),
            Op::Write => self
                .agent
                .json(
                    "POST /v1/sandboxes/{id}/files/write",
                    Method::POST,
                    &format!("/v1/sandboxes/{id}/files/write"),
                    Some(json!({"path": format!("/srv/app/out-{}.txt", n % 8), "content": format!("step {n}\n")})),
                    &[200],
                )
                .await
                .map(drop),
            Op::Read => self
                .agent
                .json(
                    "POST /v1/sandboxes/{id}/files/read",
                    Method::POST,
                    &format!("/v1/sandboxes/{id}/files/read"),
                    Some(json!({"path": "/etc/hostname"})),
                    &[200, 404],
                )
                .await
                .map(drop),
            Op::List => {
                let listed = self
                    .agent
                    .json(
                        "GET /v1/sandboxes?limit=50",
                        Method::GET,
                        "/v1/sandboxes?limit=50",
                        None,
                        &[200],
                    )
                    .await;
                match listed {
                    Ok(_) => self
                        .agent
                        .json(
                            "GET /v1/sandboxes/{id}",
                            Method::GET,
                            &format!("/v1/sandboxes/{id}"),
                            None,
                            &[200],
                        )
                        .await
                        .map(drop),
                    Err(e) => Err(e),
                }
            }
            Op::Snapshot => self.snapshot(id, n, snapshots).await,
            Op::Approval => self.approval(id, n).await,
        };
    }

    /// Takes a snapshot; past three per session, deletes the oldest (storage stays
    /// bounded, as an agent's would).
    async fn snapshot(
        &self,
        id: &str,
        n: u64,
        snapshots: &mut Vec<(String, String)>,
    ) -> Result<(), super::caller::Failed> {
        let name = format!("s{n}");
        self.agent
            .json(
                "POST /v1/sandboxes/{id}/snapshots",
                Method::POST,
                &format!("/v1/sandboxes/{id}/snapshots"),
                Some(json!({"name": name})),
                &[201],
            )
            .await?;
        snapshots.push((id.to_owned(), name));
        if snapshots.len() > 3 {
            let (sid, old) = snapshots.remove(0);
            self.agent
                .json(
                    "DELETE /v1/sandboxes/{id}/snapshots/{name}",
                    Method::DELETE,
                    &format!("/v1/sandboxes/{sid}/snapshots/{old}"),
                    None,
                    &[200, 204],
                )
                .await?;
        }
        Ok(())
    }

    /// An egress request by the agent, approved by the operator.
    async fn approval(&self, id: &str, n: u64) -> Result<(), super::caller::Failed> {
        let pending = self
            .agent
            .json(
                "POST /v1/sandboxes/{id}/network/requests",
                Method::POST,
                &format!("/v1/sandboxes/{id}/network/requests?wait=false"),
                Some(json!({"destination": format!("10.{}.{}.{}", 20 + n % 200, n % 250, 1 + n % 250), "port": 443, "protocol": "tcp", "reason": "load test"})),
                &[202],
            )
            .await?;
        let Some(request) = pending["request_id"].as_str() else {
            return Ok(());
        };
        self.operator
            .json(
                "POST /v1/approvals/{id}/approve",
                Method::POST,
                &format!("/v1/approvals/{request}/approve"),
                Some(json!({"comment": "load test"})),
                &[200],
            )
            .await
            .map(drop)
    }
}

/// A random number in `0..n` (`n` > 0).
fn rand_below(n: u32) -> u32 {
    rand::random_range(0..n.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mix_is_parsed_and_every_draw_names_an_operation() {
        let m: Mix = "exec=2,list=1".parse().expect("mix");
        assert_eq!(m.total(), 3);
        assert_eq!(m.pick(0), Op::Exec);
        assert_eq!(m.pick(1), Op::Exec);
        assert_eq!(m.pick(2), Op::List);
        assert!("exec=0".parse::<Mix>().is_err());
        assert!("run=1".parse::<Mix>().is_err());
        assert!("exec".parse::<Mix>().is_err());
        let d = Mix::default();
        assert_eq!(d.pick(0), Op::Exec);
        assert_eq!(d.pick(d.total() - 1), Op::Approval);
    }
}
