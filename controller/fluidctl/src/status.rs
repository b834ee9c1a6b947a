//! `fluidctl status`: the controller's health, store and version, and each host with
//! its state and agent version.

use chrono::{DateTime, Utc};
use fluid_client::ClientError;
use fluid_client::types::{HealthResponse, Host, HostState, ListHostsResponse};

use crate::render::{age, host_state, one_line, table};
use crate::{Ctx, emit, emit_json};

/// Placeholder for what an older controller does not report.
const NONE: &str = "-";

/// The health answer; a 503 carries the failing part, which is a result to show, not a
/// failure of the command itself.
fn health_from(res: Result<HealthResponse, ClientError>) -> Result<HealthResponse, ClientError> {
    match res {
        Err(ClientError::Api { status, body }) if status.as_u16() == 503 => {
            // The body is either `{status, error, store, version}` (kept raw by the
            // client because it is not an ErrorBody) or a regular ErrorBody.
            Ok(
                serde_json::from_str::<HealthResponse>(&body.error).unwrap_or_else(|_| {
                    let mut error = body.error;
                    if !body.details.is_empty() {
                        error = format!("{error}: {}", body.details);
                    }
                    HealthResponse {
                        status: "degraded".to_owned(),
                        error: Some(error),
                        ..Default::default()
                    }
                }),
            )
        }
        other => other,
    }
}

fn count(hosts: &[Host], s: HostState) -> usize {
    hosts.iter().filter(|h| h.state == s).count()
}

/// `NAME STATE AGENT-VERSION LAST-SEEN`
fn hosts_table(hosts: &[Host], now: DateTime<Utc>) -> String {
    let rows = hosts
        .iter()
        .map(|h| {
            vec![
                h.name.clone(),
                host_state(h.state).to_owned(),
                h.agent_version.clone().unwrap_or_else(|| NONE.to_owned()),
                h.last_seen
                    .map_or_else(|| "never".to_owned(), |t| format!("{} ago", age(t, now))),
            ]
        })
        .collect();
    table(&["NAME", "STATE", "AGENT-VERSION", "LAST-SEEN"], rows)
}

pub fn render(
    url: &str,
    health: &HealthResponse,
    hosts: &ListHostsResponse,
    now: DateTime<Utc>,
) -> String {
    let mut health_line = health.status.clone();
    if let Some(e) = health.error.as_deref().filter(|e| !e.is_empty()) {
        health_line = format!("{health_line} ({})", one_line(e));
    }
    let h = &hosts.hosts;
    let mut counts = format!("{} online", count(h, HostState::Online));
    for (n, what) in [
        (count(h, HostState::Offline), "offline"),
        (count(h, HostState::Unknown), "not heard from yet"),
    ] {
        if n > 0 {
            counts.push_str(&format!(", {n} {what}"));
        }
    }
    let mut out = format!(
        "controller: {url}\nhealth:     {health_line}\nstore:      {}\nversion:    {}\nhosts:      {} ({counts})",
        health
            .store
            .as_deref()
            .map_or_else(|| NONE.to_owned(), one_line),
        health.version.as_deref().unwrap_or(NONE),
        h.len(),
    );
    if !h.is_empty() {
        out.push_str("\n\n");
        out.push_str(&hosts_table(h, now));
    }
    out
}

pub fn render_json(
    url: &str,
    health: &HealthResponse,
    hosts: &ListHostsResponse,
) -> serde_json::Value {
    let h = &hosts.hosts;
    serde_json::json!({
        "url": url,
        "health": health,
        "hosts": {
            "total": h.len(),
            "online": count(h, HostState::Online),
            "offline": count(h, HostState::Offline),
            "unknown": count(h, HostState::Unknown),
            "items": h.iter().map(|x| serde_json::json!({
                "name": x.name,
                "state": x.state,
                "agent_version": x.agent_version,
                "last_seen": x.last_seen,
            })).collect::<Vec<_>>(),
        },
    })
}

pub async fn run(ctx: &Ctx) -> anyhow::Result<()> {
    let health = health_from(ctx.client.health().await)?;
    let hosts = match ctx.client.list_hosts().await {
        Ok(hosts) => hosts,
        // A degraded store usually fails the host listing too: report the cause.
        Err(e) if health.status != "ok" => {
            let cause = health.error.as_deref().unwrap_or("no detail given");
            return Err(anyhow::Error::new(e).context(format!(
                "the controller at {} reports itself {} ({})",
                ctx.url,
                health.status,
                one_line(cause)
            )));
        }
        Err(e) => return Err(e.into()),
    };
    if ctx.json {
        emit_json(&render_json(&ctx.url, &health, &hosts))?;
    } else {
        emit(&render(&ctx.url, &health, &hosts, Utc::now()));
    }
    if health.status != "ok" {
        anyhow::bail!("the controller reports itself {}", health.status);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fluid_client::types::{ErrorBody, HealthHosts};

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-01T12:00:00Z")
            .expect("time")
            .with_timezone(&Utc)
    }

    fn host(name: &str, state: HostState, version: Option<&str>) -> Host {
        Host {
            name: name.to_owned(),
            address: "h:1".to_owned(),
            state,
            cpus_total: 1,
            cpus_free: 1,
            memory_mb_total: 1,
            memory_mb_free: 1,
            sandboxes: 0,
            last_seen: (state == HostState::Online).then(t0),
            images: vec![],
            agent_version: version.map(str::to_owned),
            last_error: None,
            pools: vec![],
            simulated: false,
        }
    }

    #[test]
    fn renders_health_store_version_and_hosts() {
        let health = HealthResponse {
            status: "ok".to_owned(),
            store: Some("ok".to_owned()),
            version: Some("0.1.0".to_owned()),
            hosts: Some(HealthHosts {
                online: 2,
                offline: 1,
                unknown: 0,
                total: 3,
            }),
            ..Default::default()
        };
        let hosts = ListHostsResponse {
            hosts: vec![
                host("kvm-1", HostState::Online, Some("0.1.0")),
                host("kvm-2", HostState::Offline, Some("0.0.9")),
                host("kvm-3", HostState::Online, Some("0.1.0")),
            ],
            total: None,
        };
        let out = render(
            "http://ctl:8080",
            &health,
            &hosts,
            t0() + chrono::Duration::seconds(4),
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[..5],
            [
                "controller: http://ctl:8080",
                "health:     ok",
                "store:      ok",
                "version:    0.1.0",
                "hosts:      3 (2 online, 1 offline)",
            ]
        );
        assert_eq!(
            lines[6].split_whitespace().collect::<Vec<_>>(),
            ["NAME", "STATE", "AGENT-VERSION", "LAST-SEEN"]
        );
        assert_eq!(
            lines[7].split_whitespace().collect::<Vec<_>>(),
            ["kvm-1", "ONLINE", "0.1.0", "4s", "ago"]
        );
        assert_eq!(
            lines[8].split_whitespace().collect::<Vec<_>>(),
            ["kvm-2", "OFFLINE", "0.0.9", "never"]
        );
        let v = render_json("http://ctl:8080", &health, &hosts);
        assert_eq!(v["health"]["status"], "ok");
        assert_eq!(v["health"]["store"], "ok");
        assert_eq!(v["health"]["version"], "0.1.0");
        assert_eq!(v["hosts"]["total"], 3);
        assert_eq!(v["hosts"]["online"], 2);
        assert_eq!(v["hosts"]["offline"], 1);
        assert_eq!(v["hosts"]["items"][1]["agent_version"], "0.0.9");
        assert_eq!(v["hosts"]["items"][1]["state"], "OFFLINE");
    }

    #[test]
    fn an_older_controller_shows_placeholders() {
        let health: HealthResponse = serde_json::from_str(r#"{"status":"ok"}"#).expect("old");
        let hosts = ListHostsResponse {
            hosts: vec![host("kvm-1", HostState::Unknown, None)],
            total: None,
        };
        let out = render("http://x", &health, &hosts, t0());
        assert!(out.contains("store:      -\nversion:    -\n"), "{out}");
        assert!(
            out.contains("hosts:      1 (0 online, 1 not heard from yet)"),
            "{out}"
        );
        let row = out.lines().last().expect("row");
        assert_eq!(
            row.split_whitespace().collect::<Vec<_>>(),
            ["kvm-1", "UNKNOWN", "-", "never"]
        );
    }

    #[test]
    fn degraded_health_is_a_result() {
        let raw = ClientError::Api {
            status: reqwest::StatusCode::SERVICE_UNAVAILABLE,
            body: ErrorBody {
                error: r#"{"status":"degraded","error":"store unavailable","store":"connection refused","version":"0.1.0"}"#.to_owned(),
                code: 503,
                details: String::new(),
            },
        };
        let h = health_from(Err(raw)).expect("503 is a health answer");
        assert_eq!(h.status, "degraded");
        assert_eq!(h.error.as_deref(), Some("store unavailable"));
        assert_eq!(h.store.as_deref(), Some("connection refused"));
        let out = render(
            "http://x",
            &h,
            &ListHostsResponse {
                hosts: vec![],
                total: None,
            },
            t0(),
        );
        assert!(out.contains("store:      connection refused"), "{out}");

        let plain = ClientError::Api {
            status: reqwest::StatusCode::SERVICE_UNAVAILABLE,
            body: ErrorBody {
                error: "store down".to_owned(),
                code: 503,
                details: "sqlite locked".to_owned(),
            },
        };
        let h = health_from(Err(plain)).expect("503 is a health answer");
        assert_eq!(h.error.as_deref(), Some("store down: sqlite locked"));
        let out = render(
            "http://x",
            &h,
            &ListHostsResponse {
                hosts: vec![],
                total: None,
            },
            t0(),
        );
        assert!(out.contains("health:     degraded (store down: sqlite locked)"));

        let other = ClientError::Api {
            status: reqwest::StatusCode::UNAUTHORIZED,
            body: ErrorBody {
                error: "unauthorized".to_owned(),
                code: 401,
                details: String::new(),
            },
        };
        assert!(health_from(Err(other)).is_err());
    }
}
