//! `fluidctl status`: health and host count.

use fluid_client::ClientError;
use fluid_client::types::{HealthResponse, HostState, ListHostsResponse};

use crate::{Ctx, emit, emit_json};

/// The health answer; a 503 carries the failing part, which is a result to show, not a
/// failure of the command itself.
fn health_from(res: Result<HealthResponse, ClientError>) -> Result<HealthResponse, ClientError> {
    match res {
        Err(ClientError::Api { status, body }) if status.as_u16() == 503 => {
            // The body is either `{status, error}` (kept raw by the client because it is
            // not an ErrorBody) or a regular ErrorBody.
            Ok(
                serde_json::from_str::<HealthResponse>(&body.error).unwrap_or_else(|_| {
                    let mut error = body.error;
                    if !body.details.is_empty() {
                        error = format!("{error}: {}", body.details);
                    }
                    HealthResponse {
                        status: "degraded".to_owned(),
                        error: Some(error),
                    }
                }),
            )
        }
        other => other,
    }
}

pub fn render(url: &str, health: &HealthResponse, hosts: &ListHostsResponse) -> String {
    let online = hosts
        .hosts
        .iter()
        .filter(|h| h.state == HostState::Online)
        .count();
    let mut health_line = health.status.clone();
    if let Some(e) = health.error.as_deref().filter(|e| !e.is_empty()) {
        health_line = format!("{health_line} ({})", crate::render::one_line(e));
    }
    format!(
        "controller: {url}\nhealth:     {health_line}\nhosts:      {} ({online} online)",
        hosts.hosts.len()
    )
}

pub fn render_json(
    url: &str,
    health: &HealthResponse,
    hosts: &ListHostsResponse,
) -> serde_json::Value {
    let online = hosts
        .hosts
        .iter()
        .filter(|h| h.state == HostState::Online)
        .count();
    serde_json::json!({
        "url": url,
        "health": health,
        "hosts": { "total": hosts.hosts.len(), "online": online },
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
                crate::render::one_line(cause)
            )));
        }
        Err(e) => return Err(e.into()),
    };
    if ctx.json {
        emit_json(&render_json(&ctx.url, &health, &hosts))?;
    } else {
        emit(&render(&ctx.url, &health, &hosts));
    }
    if health.status != "ok" {
        anyhow::bail!("the controller reports itself {}", health.status);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fluid_client::types::{ErrorBody, Host};

    fn host(state: HostState) -> Host {
        Host {
            name: "h".to_owned(),
            address: "h:1".to_owned(),
            state,
            cpus_total: 1,
            cpus_free: 1,
            memory_mb_total: 1,
            memory_mb_free: 1,
            sandboxes: 0,
            last_seen: None,
            images: vec![],
            agent_version: None,
            last_error: None,
        }
    }

    #[test]
    fn renders_health_and_hosts() {
        let health = HealthResponse {
            status: "ok".to_owned(),
            error: None,
        };
        let hosts = ListHostsResponse {
            hosts: vec![
                host(HostState::Online),
                host(HostState::Offline),
                host(HostState::Online),
            ],
        };
        assert_eq!(
            render("http://ctl:8080", &health, &hosts),
            "controller: http://ctl:8080\nhealth:     ok\nhosts:      3 (2 online)"
        );
        let v = render_json("http://ctl:8080", &health, &hosts);
        assert_eq!(v["health"]["status"], "ok");
        assert_eq!(v["hosts"]["total"], 3);
        assert_eq!(v["hosts"]["online"], 2);
    }

    #[test]
    fn degraded_health_is_a_result() {
        let raw = ClientError::Api {
            status: reqwest::StatusCode::SERVICE_UNAVAILABLE,
            body: ErrorBody {
                error: r#"{"status":"degraded","error":"store: connection refused"}"#.to_owned(),
                code: 503,
                details: String::new(),
            },
        };
        let h = health_from(Err(raw)).expect("503 is a health answer");
        assert_eq!(h.status, "degraded");
        assert_eq!(h.error.as_deref(), Some("store: connection refused"));

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
        let out = render("http://x", &h, &ListHostsResponse { hosts: vec![] });
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
