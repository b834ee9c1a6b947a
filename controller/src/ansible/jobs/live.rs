//! A running job's output: kept in memory (capped at [`OUTPUT_CAP`]), written to its
//! row in batches, and broadcast line by line to WebSocket watchers (a bounded
//! broadcast: a slow watcher lags, never grows memory).
//!
//! Subscribing returns the output so far and the receiver under one lock, so a
//! watcher that joins mid-run sees every line exactly once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use fluid_client::ansible::JobStatus;
use tokio::sync::broadcast;

/// Output kept per job (the row, and what a late watcher gets first).
pub const OUTPUT_CAP: usize = 1024 * 1024;
/// Lines buffered for watchers (then the slowest lags).
pub const WATCH_BUFFER: usize = 1024;
/// What replaces the rest of an output past the cap.
pub const TRUNCATED: &str = "[output truncated: the job's record keeps the first 1 MiB]\n";

/// What a watcher gets.
#[derive(Debug, Clone, PartialEq)]
pub enum JobEvent {
    /// One line of output (with its newline).
    Line(Arc<str>),
    /// The job ended.
    End {
        status: JobStatus,
        exit_code: Option<i32>,
        error: Option<String>,
    },
}

#[derive(Debug)]
struct Live {
    output: String,
    truncated: bool,
    /// Bumped at every change (the flusher writes only when it moved).
    version: u64,
    tx: broadcast::Sender<JobEvent>,
}

/// The running jobs of this controller.
#[derive(Debug, Default)]
pub struct JobHubs {
    map: Mutex<HashMap<String, Live>>,
}

impl JobHubs {
    /// Starts tracking a job whose stored output is `output`.
    pub fn open(&self, id: &str, output: String) {
        let Ok(mut m) = self.map.lock() else { return };
        let truncated = output.len() >= OUTPUT_CAP;
        m.entry(id.to_owned()).or_insert_with(|| Live {
            output,
            truncated,
            version: 0,
            tx: broadcast::channel(WATCH_BUFFER).0,
        });
    }

    /// Appends a line (a newline is added when missing) and sends it to watchers.
    pub fn push(&self, id: &str, line: &str) {
        let Ok(mut m) = self.map.lock() else { return };
        let Some(live) = m.get_mut(id) else { return };
        let mut text = line.to_owned();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        if !live.truncated {
            if live.output.len() + text.len() + TRUNCATED.len() <= OUTPUT_CAP {
                live.output.push_str(&text);
            } else {
                live.output.push_str(TRUNCATED);
                live.truncated = true;
            }
            live.version += 1;
        }
        // Nobody watching is fine.
        let _ = live.tx.send(JobEvent::Line(Arc::from(text)));
    }

    /// The output so far and its version.
    pub fn output(&self, id: &str) -> Option<(String, u64)> {
        let m = self.map.lock().ok()?;
        m.get(id).map(|l| (l.output.clone(), l.version))
    }

    /// The output so far and a receiver of what follows; `None` when the job is not
    /// running here.
    pub fn subscribe(&self, id: &str) -> Option<(String, broadcast::Receiver<JobEvent>)> {
        let m = self.map.lock().ok()?;
        m.get(id).map(|l| (l.output.clone(), l.tx.subscribe()))
    }

    /// Stops tracking a job another controller took over (its watchers' streams end;
    /// they fall back to reading its row).
    pub fn forget(&self, id: &str) {
        if let Ok(mut m) = self.map.lock() {
            m.remove(id);
        }
    }

    /// Tells watchers the job ended and stops tracking it.
    pub fn close(&self, id: &str, end: JobEvent) {
        let Ok(mut m) = self.map.lock() else { return };
        if let Some(live) = m.remove(id) {
            let _ = live.tx.send(end);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn watchers_see_every_line_once_and_the_end() {
        let hubs = JobHubs::default();
        hubs.open("JOB-1", "earlier\n".into());
        hubs.push("JOB-1", "one");
        let (so_far, mut rx) = hubs.subscribe("JOB-1").expect("running");
        assert_eq!(so_far, "earlier\none\n");
        hubs.push("JOB-1", "two\n");
        hubs.close(
            "JOB-1",
            JobEvent::End {
                status: JobStatus::Finished,
                exit_code: Some(0),
                error: None,
            },
        );
        assert_eq!(
            rx.recv().await.expect("line"),
            JobEvent::Line(Arc::from("two\n"))
        );
        assert!(matches!(
            rx.recv().await.expect("end"),
            JobEvent::End {
                status: JobStatus::Finished,
                ..
            }
        ));
        assert!(hubs.subscribe("JOB-1").is_none());
        // Unknown jobs are ignored.
        hubs.push("JOB-2", "x");
        assert!(hubs.output("JOB-2").is_none());
    }

    #[test]
    fn output_is_capped() {
        let hubs = JobHubs::default();
        hubs.open("JOB-1", String::new());
        let line = "x".repeat(1000);
        for _ in 0..2000 {
            hubs.push("JOB-1", &line);
        }
        let (out, _) = hubs.output("JOB-1").expect("running");
        assert!(out.len() <= OUTPUT_CAP, "{}", out.len());
        assert!(out.ends_with(TRUNCATED));
    }
}
