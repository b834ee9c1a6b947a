//! The controller's resources during a load run: resident memory and CPU, sampled from
//! `/proc` every second, and the database's size.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::process::rss_kib;

/// Clock ticks per second of `/proc/<pid>/stat` (Linux's USER_HZ).
const TICKS_PER_SEC: f64 = 100.0;

/// CPU time (user + system) of `pid` so far.
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command (which may hold spaces) start after its ')'.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_secs_f64(ticks as f64 / TICKS_PER_SEC))
}

/// Samples a process until stopped.
#[derive(Debug)]
pub struct Monitor {
    pid: u32,
    started: Instant,
    cpu_at_start: Duration,
    peak_rss_kib: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

/// What a [`Monitor`] saw.
#[derive(Debug, Clone, PartialEq)]
pub struct Usage {
    pub peak_rss_mib: f64,
    pub rss_mib_now: f64,
    /// Average CPU over the window, in cores (1.0: one core busy).
    pub cpu_cores: f64,
    pub window: Duration,
}

impl Monitor {
    pub fn start(pid: u32) -> Self {
        let peak = Arc::new(AtomicU64::new(rss_kib(pid).unwrap_or(0)));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                if let Some(kib) = rss_kib(pid) {
                    p.fetch_max(kib, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        Self {
            pid,
            started: Instant::now(),
            cpu_at_start: cpu_time(pid).unwrap_or_default(),
            peak_rss_kib: peak,
            stop,
        }
    }

    /// The figures since the start; sampling ends.
    pub fn finish(self) -> Usage {
        self.stop.store(true, Ordering::Relaxed);
        let window = self.started.elapsed();
        let cpu = cpu_time(self.pid)
            .unwrap_or_default()
            .saturating_sub(self.cpu_at_start);
        let now = rss_kib(self.pid).unwrap_or(0);
        let peak = self.peak_rss_kib.load(Ordering::Relaxed).max(now);
        Usage {
            peak_rss_mib: peak as f64 / 1024.0,
            rss_mib_now: now as f64 / 1024.0,
            cpu_cores: cpu.as_secs_f64() / window.as_secs_f64().max(1e-3),
            window,
        }
    }
}

/// Bytes of the SQLite database in `data_dir` (with its WAL).
pub fn sqlite_bytes(data_dir: &Path) -> u64 {
    ["fluid.db", "fluid.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(data_dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

/// Bytes of PostgreSQL database `db` (`pg_database_size`).
pub fn postgres_bytes(db: &str) -> Option<u64> {
    let out = std::process::Command::new("su")
        .args([
            "postgres",
            "-c",
            &format!("psql -tAc \"SELECT pg_database_size('{db}')\""),
        ])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn this_process_has_memory_and_spends_cpu() {
        let m = Monitor::start(std::process::id());
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(300) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let u = m.finish();
        assert!(u.peak_rss_mib > 1.0, "{u:?}");
        assert!(u.cpu_cores > 0.2, "a busy loop of 300 ms: {u:?}");
    }
}
