//! Pure rendering: tables, detail views, JSON and error lines. Nothing here does I/O, so
//! all of it is unit-tested with hand-made values.

use chrono::{DateTime, Utc};
use comfy_table::{ContentArrangement, Table, presets};
use fluid_client::ClientError;
use fluid_client::governance::SandboxMode;
use fluid_client::types::{Host, HostError, HostState, Sandbox, StartPath, Vm};

mod activity;
mod ansible;
mod governance;
mod network;
mod pools;
mod snapshots;
pub use activity::*;
pub use ansible::*;
pub use governance::*;
pub use network::*;
pub use pools::*;
pub use snapshots::*;

/// Placeholder for absent values.
const NONE: &str = "-";

/// Pretty JSON of an API answer.
pub fn json<T: serde::Serialize + ?Sized>(value: &T) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(value)?)
}

/// A borderless, kubectl-style table: columns two spaces apart, no trailing blanks.
pub(crate) fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .force_no_tty()
        .set_header(header.to_vec());
    for row in rows {
        t.add_row(row);
    }
    let last = header.len().saturating_sub(1);
    for (i, col) in t.column_iter_mut().enumerate() {
        col.set_padding((0, if i == last { 0 } else { 2 }));
    }
    t.lines()
        .map(|l| l.trim_end().to_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

/// `45s`, `12m`, `5h`, `3d` (negative clock skew reads as `0s`).
pub fn human_duration(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

pub(crate) fn age(then: DateTime<Utc>, now: DateTime<Utc>) -> String {
    human_duration((now - then).num_seconds())
}

/// A timestamp to the second, in UTC: `2025-03-01T12:00:00Z`.
fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn opt(s: Option<&str>) -> String {
    s.filter(|s| !s.is_empty()).unwrap_or(NONE).to_owned()
}

fn mem(mb: u64) -> String {
    format!("{mb} MiB")
}

/// The state, with `(read-only)` when the sandbox refuses changes.
fn sandbox_state(s: &Sandbox) -> String {
    if s.read_only {
        format!("{} (read-only)", s.state)
    } else {
        s.state.to_string()
    }
}

/// `ID NAME STATE IP HOST IMAGE CPU MEM AGE`; the state says `(read-only)` when the
/// sandbox is.
pub fn sandbox_table(sandboxes: &[Sandbox], now: DateTime<Utc>) -> String {
    if sandboxes.is_empty() {
        return "No sandboxes.".to_owned();
    }
    let rows = sandboxes
        .iter()
        .map(|s| {
            vec![
                s.id.clone(),
                s.sandbox_name.clone(),
                sandbox_state(s),
                opt(s.ip_address.as_deref()),
                opt(s.host_name.as_deref()),
                s.base_image.clone(),
                s.cpu.to_string(),
                mem(s.memory_mb),
                age(s.created_at, now),
            ]
        })
        .collect();
    table(
        &[
            "ID", "NAME", "STATE", "IP", "HOST", "IMAGE", "CPU", "MEM", "AGE",
        ],
        rows,
    )
}

/// The footer of a limited listing, when the controller has more than it sent.
pub fn list_footer(shown: usize, total: u64) -> Option<String> {
    (u64::try_from(shown).unwrap_or(u64::MAX) < total)
        .then(|| format!("({shown} of {total} sandboxes shown; use --limit/--offset for more)"))
}

/// One sandbox as `KEY: value` lines. `ip` overrides the record's address (the create
/// and start answers carry the fresh lease separately).
pub fn sandbox_detail(s: &Sandbox, ip: Option<&str>, now: DateTime<Utc>) -> String {
    let ip = ip.or(s.ip_address.as_deref());
    let ttl = s
        .ttl_seconds
        .map_or_else(|| "none".to_owned(), |t| format!("{t}s"));
    let mode = if s.read_only {
        SandboxMode::ReadOnly
    } else {
        SandboxMode::ReadWrite
    };
    let fields: [(&str, String); 16] = [
        ("ID", s.id.clone()),
        ("NAME", s.sandbox_name.clone()),
        ("STATE", sandbox_state(s)),
        ("MODE", mode.as_str().to_owned()),
        ("START", opt(s.start_path.map(StartPath::as_str))),
        ("IP", opt(ip)),
        ("HOST", opt(s.host_name.as_deref())),
        ("IMAGE", s.base_image.clone()),
        ("AGENT", s.agent_id.clone()),
        ("JOB", s.job_id.clone()),
        ("NETWORK", opt(Some(&s.network))),
        ("CPU", s.cpu.to_string()),
        ("MEMORY", mem(s.memory_mb)),
        ("TTL", ttl),
        (
            "CREATED",
            format!(
                "{} ({} ago)",
                s.created_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                age(s.created_at, now)
            ),
        ),
        (
            "UPDATED",
            s.updated_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        ),
    ];
    key_values(&fields)
}

fn key_values(fields: &[(&str, String)]) -> String {
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    fields
        .iter()
        .map(|(k, v)| format!("{:<width$} {v}", format!("{k}:")))
        .collect::<Vec<_>>()
        .join("\n")
}

pub(crate) fn host_state(s: HostState) -> &'static str {
    match s {
        HostState::Unknown => "UNKNOWN",
        HostState::Online => "ONLINE",
        HostState::Offline => "OFFLINE",
    }
}

/// `NAME ADDRESS STATE CPUS(free/total) MEM(free/total MiB) SANDBOXES LAST-SEEN`
pub fn host_table(hosts: &[Host], now: DateTime<Utc>) -> String {
    if hosts.is_empty() {
        return "No hosts registered (add one with `fluidctl hosts add NAME ADDRESS`).".to_owned();
    }
    let rows = hosts
        .iter()
        .map(|h| {
            vec![
                h.name.clone(),
                h.address.clone(),
                if h.simulated {
                    format!("{} (simulated)", host_state(h.state))
                } else {
                    host_state(h.state).to_owned()
                },
                format!("{}/{}", h.cpus_free, h.cpus_total),
                format!("{}/{}", h.memory_mb_free, h.memory_mb_total),
                h.sandboxes.to_string(),
                h.last_seen
                    .map_or_else(|| "never".to_owned(), |t| format!("{} ago", age(t, now))),
                pool_summary(&h.pools),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "ADDRESS",
            "STATE",
            "CPUS(free/total)",
            "MEM(free/total MiB)",
            "SANDBOXES",
            "LAST-SEEN",
            "POOL",
        ],
        rows,
    )
}

/// Hosts whose agent reported a problem, one line each.
pub fn host_problems(hosts: &[Host]) -> Vec<String> {
    hosts
        .iter()
        .filter_map(|h| {
            h.last_error
                .as_deref()
                .filter(|e| !e.is_empty())
                .map(|e| format!("host {}: {}", h.name, one_line(e)))
        })
        .collect()
}

/// `NAME HOST STATE PERSISTENT DISK`
pub fn vm_table(vms: &[Vm]) -> String {
    if vms.is_empty() {
        return "No source VMs found.".to_owned();
    }
    let rows = vms
        .iter()
        .map(|v| {
            vec![
                v.name.clone(),
                v.host_name.clone(),
                v.state.clone(),
                if v.persistent { "yes" } else { "no" }.to_owned(),
                opt(Some(&v.disk_path)),
            ]
        })
        .collect();
    table(&["NAME", "HOST", "STATE", "PERSISTENT", "DISK"], rows)
}

/// `GET /v1/vms` answers partially when some hosts fail; one warning line per host.
pub fn host_error_lines(errors: &[HostError]) -> Vec<String> {
    errors
        .iter()
        .map(|e| {
            format!(
                "warning: host {} ({}) did not answer: {}",
                e.host_name,
                e.host_address,
                one_line(&e.error)
            )
        })
        .collect()
}

/// What a 401 adds to the controller's message.
pub const AUTH_HINT: &str = "set FLUID_TOKEN or --token (fluid-controller token create …)";

/// Collapses whitespace runs (newlines included) so a message stays on one line.
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The text after `error: ` for a failed command. API errors show the controller's
/// message, details and status (a 401 with a hint where a token comes from); transport
/// errors say the controller is unreachable.
pub fn error_message(err: &anyhow::Error, base_url: &str) -> String {
    let mut context = Vec::new();
    let mut client_err = None;
    for cause in err.chain() {
        if let Some(ce) = cause.downcast_ref::<ClientError>() {
            client_err = Some(ce);
            break;
        }
        context.push(cause.to_string());
    }
    let Some(ce) = client_err else {
        // Not from the client: the whole chain, like anyhow's `{:#}`.
        return one_line(&format!("{err:#}"));
    };
    let msg = match ce {
        ClientError::Api { status, body } => {
            let what = if body.error.trim().is_empty() {
                status.canonical_reason().unwrap_or("request failed")
            } else {
                body.error.trim()
            };
            let details = body.details.trim();
            let msg = if details.is_empty() {
                format!("{what} (HTTP {})", status.as_u16())
            } else {
                format!("{what}: {details} (HTTP {})", status.as_u16())
            };
            if status.as_u16() == 401 {
                format!("{msg}; {AUTH_HINT}")
            } else {
                msg
            }
        }
        ClientError::Transport { source, .. } => {
            // reqwest's own text is "error sending request for url (…)"; the innermost
            // cause ("Connection refused") is what a person needs.
            let mut root: &dyn std::error::Error = source;
            while let Some(next) = root.source() {
                root = next;
            }
            format!("the controller is unreachable at {base_url}: {root}")
        }
        ClientError::Decode { .. } => ce.to_string(),
    };
    context.push(msg);
    one_line(&context.join(": "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use fluid_client::types::{ErrorBody, SandboxState};

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0)
            .single()
            .expect("valid time")
    }

    pub(crate) fn sandbox(id: &str, state: SandboxState, ip: Option<&str>) -> Sandbox {
        Sandbox {
            id: id.to_owned(),
            job_id: "JOB-1234abcd".to_owned(),
            agent_id: "alice".to_owned(),
            sandbox_name: format!("sbx-{}", id.to_lowercase()),
            base_image: "ubuntu-24.04".to_owned(),
            network: "default".to_owned(),
            ip_address: ip.map(str::to_owned),
            state,
            ttl_seconds: Some(3600),
            created_at: t0(),
            updated_at: t0() + chrono::Duration::seconds(5),
            host_name: Some("host-a".to_owned()),
            cpu: 2,
            memory_mb: 2048,
            read_only: false,
            start_path: None,
        }
    }

    fn host(name: &str, state: HostState, last_seen: Option<DateTime<Utc>>) -> Host {
        Host {
            name: name.to_owned(),
            address: format!("{name}.lan:50051"),
            state,
            cpus_total: 16,
            cpus_free: 12,
            memory_mb_total: 65536,
            memory_mb_free: 61440,
            sandboxes: 2,
            last_seen,
            images: vec!["ubuntu-24.04".to_owned()],
            agent_version: None,
            last_error: None,
            pools: vec![],
            simulated: false,
        }
    }

    #[test]
    fn durations() {
        assert_eq!(human_duration(-5), "0s");
        assert_eq!(human_duration(59), "59s");
        assert_eq!(human_duration(60), "1m");
        assert_eq!(human_duration(3599), "59m");
        assert_eq!(human_duration(7200), "2h");
        assert_eq!(human_duration(3 * 86_400 + 5), "3d");
    }

    #[test]
    fn sandbox_table_layout() {
        let now = t0() + chrono::Duration::minutes(12);
        let mut b = sandbox("SBX-bbbbbbbb", SandboxState::Starting, None);
        b.host_name = None;
        let out = sandbox_table(
            &[
                sandbox("SBX-aaaaaaaa", SandboxState::Running, Some("10.0.0.5")),
                b,
            ],
            now,
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        let header: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(
            header,
            [
                "ID", "NAME", "STATE", "IP", "HOST", "IMAGE", "CPU", "MEM", "AGE"
            ]
        );
        let row: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            row,
            [
                "SBX-aaaaaaaa",
                "sbx-sbx-aaaaaaaa",
                "RUNNING",
                "10.0.0.5",
                "host-a",
                "ubuntu-24.04",
                "2",
                "2048",
                "MiB",
                "12m"
            ]
        );
        let row: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(&row[2..5], ["STARTING", "-", "-"]);
        // Columns line up: STATE starts at the same offset in every line.
        let col = lines[0].find("STATE").expect("STATE header");
        assert_eq!(lines[1].find("RUNNING"), Some(col));
        assert_eq!(lines[2].find("STARTING"), Some(col));
        assert!(
            lines
                .iter()
                .all(|l| !l.ends_with(' ') && !l.starts_with(' '))
        );
    }

    #[test]
    fn empty_tables_say_so() {
        assert_eq!(sandbox_table(&[], t0()), "No sandboxes.");
        assert!(host_table(&[], t0()).contains("fluidctl hosts add"));
        assert_eq!(vm_table(&[]), "No source VMs found.");
    }

    #[test]
    fn footer_only_when_truncated() {
        assert_eq!(list_footer(3, 3), None);
        assert_eq!(
            list_footer(2, 10).as_deref(),
            Some("(2 of 10 sandboxes shown; use --limit/--offset for more)")
        );
    }

    #[test]
    fn sandbox_detail_fields() {
        let s = sandbox("SBX-aaaaaaaa", SandboxState::Running, None);
        let out = sandbox_detail(&s, Some("10.0.0.9"), t0() + chrono::Duration::hours(2));
        assert!(out.contains("ID:      SBX-aaaaaaaa"), "{out}");
        assert!(out.contains("IP:      10.0.0.9"), "{out}");
        assert!(out.contains("HOST:    host-a"), "{out}");
        assert!(out.contains("STATE:   RUNNING"), "{out}");
        assert!(out.contains("TTL:     3600s"), "{out}");
        assert!(
            out.contains("CREATED: 2025-03-01T12:00:00Z (2h ago)"),
            "{out}"
        );
        assert!(out.contains("START:   -\n"), "{out}");
        let mut s = s;
        s.ttl_seconds = None;
        s.start_path = Some(StartPath::Restore);
        let out = sandbox_detail(&s, None, t0());
        assert!(out.contains("IP:      -"), "{out}");
        assert!(out.contains("TTL:     none"), "{out}");
        assert!(out.contains("START:   restore\n"), "{out}");
    }

    #[test]
    fn read_only_sandboxes_are_marked() {
        let mut s = sandbox("SBX-aaaaaaaa", SandboxState::Running, None);
        let out = sandbox_detail(&s, None, t0());
        assert!(out.contains("STATE:   RUNNING\n"), "{out}");
        assert!(out.contains("MODE:    read-write"), "{out}");
        s.read_only = true;
        let out = sandbox_detail(&s, None, t0());
        assert!(out.contains("STATE:   RUNNING (read-only)"), "{out}");
        assert!(out.contains("MODE:    read-only"), "{out}");
        let table = sandbox_table(&[s], t0());
        let row: Vec<&str> = table
            .lines()
            .nth(1)
            .expect("a row")
            .split_whitespace()
            .collect();
        assert_eq!(&row[2..4], ["RUNNING", "(read-only)"]);
    }

    #[test]
    fn unauthorized_errors_say_where_tokens_come_from() {
        let api = |status, error: &str| {
            anyhow::Error::new(ClientError::Api {
                status,
                body: ErrorBody {
                    error: error.to_owned(),
                    code: status.as_u16(),
                    details: String::new(),
                },
            })
        };
        let msg = error_message(
            &api(reqwest::StatusCode::UNAUTHORIZED, "missing bearer token"),
            "http://x",
        );
        assert_eq!(msg, format!("missing bearer token (HTTP 401); {AUTH_HINT}"));
        // A 403 is the controller's word alone.
        let msg = error_message(
            &api(
                reqwest::StatusCode::FORBIDDEN,
                "role readonly may not stop sandboxes",
            ),
            "http://x",
        );
        assert_eq!(msg, "role readonly may not stop sandboxes (HTTP 403)");
    }

    #[test]
    fn host_table_layout() {
        let now = t0() + chrono::Duration::seconds(30);
        let mut a = host("host-a", HostState::Online, Some(t0()));
        a.pools = vec![fluid_client::types::HostPool {
            image: "debian-12".to_owned(),
            cpus: 1,
            memory_mb: 512,
            size: 2,
            ready: 2,
            filling: 0,
            hits: 5,
            misses: 1,
        }];
        let out = host_table(&[a, host("host-b", HostState::Unknown, None)], now);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            [
                "NAME",
                "ADDRESS",
                "STATE",
                "CPUS(free/total)",
                "MEM(free/total",
                "MiB)",
                "SANDBOXES",
                "LAST-SEEN",
                "POOL"
            ]
        );
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            [
                "host-a",
                "host-a.lan:50051",
                "ONLINE",
                "12/16",
                "61440/65536",
                "2",
                "30s",
                "ago",
                "debian-12",
                "1c/512M",
                "2/2",
                "ready,",
                "5",
                "hits",
                "1",
                "miss"
            ]
        );
        let b: Vec<&str> = lines[2].split_whitespace().collect();
        assert!(
            b.contains(&"UNKNOWN") && b.ends_with(&["never", "-"]),
            "{out}"
        );
    }

    #[test]
    fn host_problem_lines() {
        let mut bad = host("host-b", HostState::Offline, None);
        bad.last_error = Some("tls handshake\nfailed".to_owned());
        let lines = host_problems(&[host("host-a", HostState::Online, None), bad]);
        assert_eq!(lines, ["host host-b: tls handshake failed"]);
    }

    #[test]
    fn vm_table_and_host_errors() {
        let vm = Vm {
            name: "ubuntu-24.04".to_owned(),
            uuid: "u-1".to_owned(),
            state: "shut off".to_owned(),
            persistent: true,
            disk_path: "/var/lib/fluid/images/ubuntu-24.04.qcow2".to_owned(),
            host_name: "host-a".to_owned(),
            host_address: "host-a.lan:50051".to_owned(),
        };
        let out = vm_table(&[vm]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["NAME", "HOST", "STATE", "PERSISTENT", "DISK"]
        );
        assert!(lines[1].starts_with("ubuntu-24.04  host-a"), "{out}");
        assert!(lines[1].contains("shut off"));
        assert!(lines[1].ends_with("ubuntu-24.04.qcow2"));
        let errs = host_error_lines(&[HostError {
            host_name: "host-b".to_owned(),
            host_address: "10.0.0.2:50051".to_owned(),
            error: "deadline exceeded".to_owned(),
        }]);
        assert_eq!(
            errs,
            ["warning: host host-b (10.0.0.2:50051) did not answer: deadline exceeded"]
        );
    }

    #[test]
    fn json_is_the_api_shape() {
        let s = sandbox("SBX-aaaaaaaa", SandboxState::Running, Some("10.0.0.5"));
        let out = json(&fluid_client::types::GetSandboxResponse {
            sandbox: s.clone(),
            commands: None,
        })
        .expect("serialise");
        assert!(out.starts_with("{\n  \"sandbox\": {"), "{out}");
        assert!(out.contains("\"state\": \"RUNNING\""));
        assert!(out.contains("\"created_at\": \"2025-03-01T12:00:00Z\""));
        let back: fluid_client::types::GetSandboxResponse =
            serde_json::from_str(&out).expect("round trip");
        assert_eq!(back.sandbox, s);
        assert!(!out.contains("commands"));
        // Unknown: absent, as before the field existed.
        assert!(!out.contains("start_path"), "{out}");
    }

    #[test]
    fn api_error_message() {
        let err = anyhow::Error::new(ClientError::Api {
            status: reqwest::StatusCode::CONFLICT,
            body: ErrorBody {
                error: "no host can place the sandbox".to_owned(),
                code: 409,
                details: "host-a: image ubuntu missing\nhost-b: offline".to_owned(),
            },
        })
        .context("cannot create the sandbox");
        assert_eq!(
            error_message(&err, "http://ctl:8080"),
            "cannot create the sandbox: no host can place the sandbox: \
             host-a: image ubuntu missing host-b: offline (HTTP 409)"
        );
        let err = anyhow::Error::new(ClientError::Api {
            status: reqwest::StatusCode::NOT_FOUND,
            body: ErrorBody {
                error: String::new(),
                code: 404,
                details: String::new(),
            },
        });
        assert_eq!(error_message(&err, "http://ctl"), "Not Found (HTTP 404)");
    }

    #[test]
    fn transport_error_message() {
        let source = reqwest::Client::new()
            .get("http://[::1")
            .build()
            .expect_err("an invalid URL does not build");
        let err = anyhow::Error::new(ClientError::Transport {
            url: "http://[::1/v1/health".to_owned(),
            source,
        });
        let msg = error_message(&err, "http://127.0.0.1:8080");
        assert!(
            msg.starts_with("the controller is unreachable at http://127.0.0.1:8080: "),
            "{msg}"
        );
        assert!(!msg.contains('\n'));
    }

    #[test]
    fn other_errors_keep_their_chain() {
        let err = anyhow::anyhow!("sandbox SBX-1 has no IP address yet");
        assert_eq!(
            error_message(&err, "http://x"),
            "sandbox SBX-1 has no IP address yet"
        );
        let err = ClientError::Decode {
            url: "http://x/v1/hosts".to_owned(),
            reason: "missing field `hosts`".to_owned(),
        };
        assert_eq!(
            error_message(&anyhow::Error::new(err), "http://x"),
            "unexpected answer from http://x/v1/hosts: missing field `hosts`"
        );
    }
}
