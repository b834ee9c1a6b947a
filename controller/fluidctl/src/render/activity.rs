//! Rendering of sandbox activity: the command history, live `watch` lines and SSH
//! certificates. Pure, like the rest of [`super`].

use chrono::{DateTime, TimeZone, Utc};
use fluid_client::types::{AccessCertificate, Command, CommandStarted};

use super::{NONE, age, one_line, rfc3339, table};

/// Longest command text shown in a table cell.
const COMMAND_WIDTH: usize = 60;

/// `850ms`, `1.2s`, `2m03s`, `1h02m`.
pub fn duration_ms(ms: u64) -> String {
    match ms {
        ms if ms < 1_000 => format!("{ms}ms"),
        ms if ms < 60_000 => format!("{}.{}s", ms / 1_000, ms % 1_000 / 100),
        ms if ms < 3_600_000 => format!("{}m{:02}s", ms / 60_000, ms % 60_000 / 1_000),
        ms => format!("{}h{:02}m", ms / 3_600_000, ms % 3_600_000 / 60_000),
    }
}

/// `CMD-a1b2c3d4e5` → `a1b2c3d4`: enough to tell concurrent commands apart.
pub fn short_id(id: &str) -> &str {
    let rest = id.strip_prefix("CMD-").unwrap_or(id);
    match rest.char_indices().nth(8) {
        Some((i, _)) => &rest[..i],
        None => rest,
    }
}

/// One line of at most `width` characters, with `…` when cut.
pub fn truncate(s: &str, width: usize) -> String {
    let s = one_line(s);
    if s.chars().count() <= width {
        return s;
    }
    let mut out: String = s.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// What the API says about how a command ended, in one word.
fn command_status(c: &Command) -> String {
    if c.timed_out {
        "timed-out".to_owned()
    } else if c.status.is_empty() {
        if c.ended_at.is_some() {
            "completed".to_owned()
        } else {
            "running".to_owned()
        }
    } else {
        c.status.clone()
    }
}

fn command_duration(c: &Command) -> String {
    c.duration_ms
        .or_else(|| {
            c.ended_at
                .and_then(|end| u64::try_from((end - c.started_at).num_milliseconds()).ok())
        })
        .map_or_else(|| NONE.to_owned(), duration_ms)
}

fn exit_code(c: &Command) -> String {
    if c.exit_code < 0 {
        NONE.to_owned()
    } else {
        c.exit_code.to_string()
    }
}

/// What ran, with the kind in brackets when it was not a plain command.
fn command_text(c: &Command) -> String {
    match c.kind.as_str() {
        "" | "command" => c.command.clone(),
        kind => format!("[{kind}] {}", c.command),
    }
}

/// `ID STARTED DURATION EXIT STATUS COMMAND`, newest first as the API sends them.
pub fn commands_table(commands: &[Command], now: DateTime<Utc>) -> String {
    if commands.is_empty() {
        return "No commands.".to_owned();
    }
    let rows = commands
        .iter()
        .map(|c| {
            vec![
                c.id.clone(),
                format!("{} ago", age(c.started_at, now)),
                command_duration(c),
                exit_code(c),
                command_status(c),
                truncate(&command_text(c), COMMAND_WIDTH),
            ]
        })
        .collect();
    table(
        &["ID", "STARTED", "DURATION", "EXIT", "STATUS", "COMMAND"],
        rows,
    )
}

/// The footer of a limited command listing.
pub fn commands_footer(shown: usize, total: u64) -> Option<String> {
    (u64::try_from(shown).unwrap_or(u64::MAX) < total)
        .then(|| format!("({shown} of {total} commands shown; use --limit/--offset for more)"))
}

/// `ID SANDBOX USER VALID-UNTIL REVOKED`
pub fn certificates_table(certs: &[AccessCertificate], now: DateTime<Utc>) -> String {
    if certs.is_empty() {
        return "No certificates issued.".to_owned();
    }
    let rows = certs
        .iter()
        .map(|c| {
            let until = if c.valid_until <= now {
                format!("{} (expired)", rfc3339(c.valid_until))
            } else {
                rfc3339(c.valid_until)
            };
            let principals = if c.principals.is_empty() {
                c.user_id.clone()
            } else {
                format!("{} ({})", c.user_id, c.principals.join(","))
            };
            vec![
                c.id.clone(),
                c.sandbox_id.clone(),
                principals,
                until,
                c.revoked_at.map_or_else(|| NONE.to_owned(), rfc3339),
            ]
        })
        .collect();
    table(&["ID", "SANDBOX", "USER", "VALID-UNTIL", "REVOKED"], rows)
}

fn clock<Tz: TimeZone>(t: DateTime<Utc>, tz: &Tz) -> String
where
    Tz::Offset: std::fmt::Display,
{
    t.with_timezone(tz).format("%H:%M:%S").to_string()
}

/// `watch`: `[12:00:00] a1b2c3d4 $ apt-get update`
pub fn watch_started<Tz: TimeZone>(ev: &CommandStarted, tz: &Tz) -> String
where
    Tz::Offset: std::fmt::Display,
{
    format!(
        "[{}] {} $ {}",
        clock(ev.started_at, tz),
        short_id(&ev.command_id),
        one_line(&ev.command)
    )
}

/// `watch`: `[12:00:03] a1b2c3d4 exit 0 (2.5s)`, with how it ended when not normally.
pub fn watch_exit<Tz: TimeZone>(c: &Command, tz: &Tz) -> String
where
    Tz::Offset: std::fmt::Display,
{
    let at = clock(c.ended_at.unwrap_or(c.started_at), tz);
    let mut notes = vec![command_duration(c)];
    let status = command_status(c);
    if status != "completed" {
        notes.push(status);
    }
    if c.truncated {
        notes.push("output truncated".to_owned());
    }
    if let Some(e) = c.error.as_deref().filter(|e| !e.is_empty()) {
        notes.push(one_line(e));
    }
    format!(
        "[{at}] {} exit {} ({})",
        short_id(&c.id),
        exit_code(c),
        notes.join(", ")
    )
}

/// `watch`: one output line, prefixed with its command.
pub fn watch_output(command_id: &str, line: &str) -> String {
    format!("{} | {line}", short_id(command_id))
}

/// `watch`: the controller dropped events because this watcher was slow.
pub fn watch_lagged<Tz: TimeZone>(skipped: u64, now: DateTime<Utc>, tz: &Tz) -> String
where
    Tz::Offset: std::fmt::Display,
{
    format!(
        "[{}] (fell behind: {skipped} events skipped)",
        clock(now, tz)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0)
            .single()
            .expect("valid time")
    }

    pub(crate) fn command(id: &str, cmd: &str) -> Command {
        Command {
            id: id.to_owned(),
            sandbox_id: "SBX-aaaaaaaa".to_owned(),
            command: cmd.to_owned(),
            env_json: "{}".to_owned(),
            stdout: String::new(),
            stderr: String::new(),
            exit_code: 0,
            started_at: t0(),
            ended_at: Some(t0() + Duration::milliseconds(2_500)),
            truncated: false,
            timed_out: false,
            user: "root".to_owned(),
            workdir: None,
            duration_ms: Some(2_500),
            status: "completed".to_owned(),
            kind: "command".to_owned(),
            agent_id: "alice".to_owned(),
            error: None,
            output_expired: false,
        }
    }

    #[test]
    fn durations_and_short_ids() {
        assert_eq!(duration_ms(0), "0ms");
        assert_eq!(duration_ms(999), "999ms");
        assert_eq!(duration_ms(1_250), "1.2s");
        assert_eq!(duration_ms(123_000), "2m03s");
        assert_eq!(duration_ms(3_720_000), "1h02m");
        assert_eq!(short_id("CMD-a1b2c3d4e5"), "a1b2c3d4");
        assert_eq!(short_id("CMD-abc"), "abc");
        assert_eq!(short_id("other"), "other");
    }

    #[test]
    fn truncation_keeps_one_line() {
        assert_eq!(truncate("echo hi", 60), "echo hi");
        assert_eq!(truncate("a\nb", 60), "a b");
        let long = "x".repeat(100);
        let cut = truncate(&long, 60);
        assert_eq!(cut.chars().count(), 60);
        assert!(cut.ends_with('…'));
        assert_eq!(truncate("ééééé", 3), "éé…");
    }

    #[test]
    fn commands_table_layout() {
        let now = t0() + Duration::minutes(5);
        let done = command("CMD-aaaaaaaaaa", "apt-get update");
        let mut running = command("CMD-bbbbbbbbbb", &format!("sh -c '{}'", "y".repeat(80)));
        running.exit_code = -1;
        running.ended_at = None;
        running.duration_ms = None;
        running.status = "running".to_owned();
        let mut timed_out = command("CMD-cccccccccc", "sleep 100");
        timed_out.exit_code = -1;
        timed_out.timed_out = true;
        timed_out.status = "failed".to_owned();
        let mut write = command("CMD-dddddddddd", "/etc/motd");
        write.kind = "file_write".to_owned();
        write.duration_ms = None;
        let out = commands_table(&[done, running, timed_out, write], now);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 5, "{out}");
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["ID", "STARTED", "DURATION", "EXIT", "STATUS", "COMMAND"]
        );
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            [
                "CMD-aaaaaaaaaa",
                "5m",
                "ago",
                "2.5s",
                "0",
                "completed",
                "apt-get",
                "update"
            ]
        );
        let row: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(&row[3..6], ["-", "-", "running"], "{out}");
        let col = lines[0].find("COMMAND").expect("COMMAND header");
        assert_eq!(lines[2][col..].chars().count(), 60, "{out}");
        assert!(lines[2].ends_with('…'));
        let row: Vec<&str> = lines[3].split_whitespace().collect();
        assert_eq!(&row[4..6], ["-", "timed-out"], "{out}");
        // Durations fall back to the timestamps.
        assert!(lines[4].contains("2.5s") && lines[4].ends_with("[file_write] /etc/motd"));
        assert_eq!(lines[1].find("completed"), lines[0].find("STATUS"));
        assert!(lines.iter().all(|l| !l.ends_with(' ')));
        assert_eq!(commands_table(&[], now), "No commands.");
    }

    #[test]
    fn commands_footer_only_when_more() {
        assert_eq!(commands_footer(2, 2), None);
        assert_eq!(
            commands_footer(20, 31).as_deref(),
            Some("(20 of 31 commands shown; use --limit/--offset for more)")
        );
    }

    #[test]
    fn certificates_table_layout() {
        let cert = |id: &str, revoked: Option<DateTime<Utc>>| AccessCertificate {
            id: id.to_owned(),
            sandbox_id: "SBX-aaaaaaaa".to_owned(),
            user_id: "alice".to_owned(),
            public_key: "ssh-ed25519 AAAA".to_owned(),
            principals: vec!["root".to_owned()],
            serial: 7,
            valid_after: t0(),
            valid_until: t0() + Duration::minutes(5),
            created_at: t0(),
            revoked_at: revoked,
        };
        let out = certificates_table(
            &[
                cert("CRT-1", None),
                cert("CRT-2", Some(t0() + Duration::minutes(1))),
            ],
            t0() + Duration::minutes(2),
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["ID", "SANDBOX", "USER", "VALID-UNTIL", "REVOKED"]
        );
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            [
                "CRT-1",
                "SBX-aaaaaaaa",
                "alice",
                "(root)",
                "2025-03-01T12:05:00Z",
                "-"
            ]
        );
        assert!(lines[2].ends_with("2025-03-01T12:01:00Z"), "{out}");
        let later = certificates_table(&[cert("CRT-1", None)], t0() + Duration::hours(1));
        assert!(later.contains("12:05:00Z (expired)"), "{later}");
        assert_eq!(certificates_table(&[], t0()), "No certificates issued.");
    }

    #[test]
    fn watch_lines() {
        let started = CommandStarted {
            command_id: "CMD-a1b2c3d4e5".to_owned(),
            sandbox_id: "SBX-aaaaaaaa".to_owned(),
            command: "apt-get\nupdate".to_owned(),
            started_at: t0(),
        };
        assert_eq!(
            watch_started(&started, &Utc),
            "[12:00:00] a1b2c3d4 $ apt-get update"
        );
        let mut c = command("CMD-a1b2c3d4e5", "apt-get update");
        assert_eq!(watch_exit(&c, &Utc), "[12:00:02] a1b2c3d4 exit 0 (2.5s)");
        c.exit_code = -1;
        c.timed_out = true;
        c.truncated = true;
        assert_eq!(
            watch_exit(&c, &Utc),
            "[12:00:02] a1b2c3d4 exit - (2.5s, timed-out, output truncated)"
        );
        assert_eq!(watch_output("CMD-a1b2c3d4e5", "hi"), "a1b2c3d4 | hi");
        assert_eq!(
            watch_lagged(12, t0(), &Utc),
            "[12:00:00] (fell behind: 12 events skipped)"
        );
    }
}
