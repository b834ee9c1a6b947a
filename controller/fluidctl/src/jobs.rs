//! `fluidctl job run|show|list|watch`: Ansible jobs. `watch` follows a job's output
//! over the controller's WebSocket and exits 0 when the job finished, 1 when it failed.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;
use fluid_client::ansible::{CreateJobRequest, JobStatus};
use fluid_client::types::ErrorBody;
use fluid_client::{ClientError, encode_component};
use futures::StreamExt as _;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::{HeaderValue, header};
use tokio_tungstenite::tungstenite::{self, Message};

use crate::{Ctx, emit, emit_json, render};

#[derive(Debug, Subcommand)]
#[command(after_help = "\
TARGET is a sandbox (id or name) or a production target from the controller's \
[[ansible.targets]]. A production run first runs --check --diff and waits for a human \
to approve the `production_apply` request (`fluidctl approvals`); rejected or expired, \
nothing is applied.")]
pub enum JobCmd {
    /// Run a playbook on a target.
    Run {
        /// The playbook.
        playbook: String,
        /// A sandbox id or name, or a production target.
        target: String,
        /// Only `--check --diff` (no approval is needed; nothing changes).
        #[arg(long)]
        check: bool,
        /// Follow the output until the job ends (exit 1 when it fails).
        #[arg(long, short)]
        watch: bool,
    },
    /// Show a job: its state and output.
    #[command(visible_alias = "get")]
    Show {
        /// The job's id (`JOB-…`).
        job_id: String,
    },
    /// List jobs, newest first.
    #[command(visible_alias = "ls")]
    List {
        /// Only jobs of this playbook.
        #[arg(long)]
        playbook: Option<String>,
        /// Only jobs in this status: pending, running, finished, failed.
        #[arg(long)]
        status: Option<String>,
    },
    /// Follow a job's output; exits 0 when it finished, 1 when it failed.
    Watch {
        /// The job's id (`JOB-…`).
        job_id: String,
    },
}

pub async fn run(ctx: &Ctx, cmd: JobCmd) -> anyhow::Result<ExitCode> {
    let c = &ctx.client;
    match cmd {
        JobCmd::Run {
            playbook,
            target,
            check,
            watch,
        } => {
            let req = CreateJobRequest {
                vm_name: target,
                playbook,
                check,
            };
            let r = c.create_job(&req).await?;
            if ctx.json && !watch {
                emit_json(&r)?;
                return Ok(ExitCode::SUCCESS);
            }
            eprintln!(
                "started job {} ({} on {} {}{})",
                r.job_id,
                r.job.playbook,
                r.job.target_kind,
                r.job.vm_name,
                if check { ", --check" } else { "" }
            );
            if r.job.target_kind == "production" && !check {
                eprintln!("it runs --check --diff, then waits for a production_apply approval");
            }
            if watch {
                return follow(ctx, &r.job_id).await;
            }
            emit(&r.job_id);
        }
        JobCmd::Show { job_id } => {
            let r = c.get_job(&job_id).await?;
            if ctx.json {
                emit_json(&r)?;
            } else {
                emit(&render::job_detail(&r.job));
            }
        }
        JobCmd::List { playbook, status } => {
            let mut q = vec!["limit=100".to_owned()];
            if let Some(p) = playbook {
                q.push(format!("playbook={}", encode_component(&p)));
            }
            if let Some(s) = status {
                q.push(format!("status={}", encode_component(&s)));
            }
            let r = c.list_jobs(&q.join("&")).await?;
            if ctx.json {
                emit_json(&r)?;
            } else {
                emit(&render::job_table(&r.jobs, chrono::Utc::now()));
            }
        }
        JobCmd::Watch { job_id } => return follow(ctx, &job_id).await,
    }
    Ok(ExitCode::SUCCESS)
}

/// The last frame of a job's stream.
#[derive(Debug, serde::Deserialize)]
struct End {
    status: JobStatus,
    #[serde(default)]
    exit_code: Option<i32>,
    #[serde(default)]
    error: Option<String>,
}

/// The job's end, when `text` is its final frame.
fn parse_end(text: &str) -> Option<End> {
    if !text.starts_with('{') {
        return None;
    }
    serde_json::from_str(text).ok()
}

/// Prints the job's output as it comes; the exit code follows its status.
async fn follow(ctx: &Ctx, job_id: &str) -> anyhow::Result<ExitCode> {
    let url = ctx.client.job_stream_url(job_id);
    if url.starts_with("wss://") {
        anyhow::bail!(
            "watching over https:// (wss://) is not supported by this fluidctl; use an http:// --url or `fluidctl job show`"
        );
    }
    let mut req = url
        .as_str()
        .into_client_request()
        .with_context(|| format!("`{url}` is not a valid URL"))?;
    if let Some(t) = &ctx.token {
        let value = HeaderValue::from_str(&format!("Bearer {t}"))
            .context("the token cannot be sent in an HTTP header")?;
        req.headers_mut().insert(header::AUTHORIZATION, value);
    }
    let (mut ws, _) = match tokio_tungstenite::connect_async(req).await {
        Ok(ok) => ok,
        Err(tungstenite::Error::Http(resp)) => {
            let status = resp.status();
            let bytes = resp.body().as_deref().unwrap_or_default();
            let body = serde_json::from_slice::<ErrorBody>(bytes).unwrap_or_else(|_| ErrorBody {
                error: String::from_utf8_lossy(bytes).trim().to_owned(),
                code: status.as_u16(),
                details: String::new(),
            });
            return Err(ClientError::Api { status, body }.into());
        }
        Err(e) => anyhow::bail!("the WebSocket to {} failed: {e}", ctx.url),
    };
    while let Some(frame) = ws.next().await {
        let text = match frame {
            Ok(Message::Text(t)) => t.to_string(),
            Ok(Message::Close(_)) => break,
            Ok(_) => continue,
            Err(e) => anyhow::bail!("the job's stream broke: {e}"),
        };
        if let Some(end) = parse_end(&text) {
            let code = end
                .exit_code
                .map_or_else(String::new, |c| format!(", exit code {c}"));
            let why = end.error.map(|e| format!(": {e}")).unwrap_or_default();
            eprintln!("job {job_id} {}{code}{why}", end.status.as_str());
            return Ok(if end.status == JobStatus::Finished {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        emit(&text);
    }
    anyhow::bail!("the job's stream ended before the job did; `fluidctl job show {job_id}`")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_frame_is_the_status() {
        let e = parse_end(r#"{"status":"failed","exit_code":2,"error":"ansible-playbook exited with 2","job_id":"JOB-1"}"#)
            .expect("end");
        assert_eq!((e.status, e.exit_code), (JobStatus::Failed, Some(2)));
        assert!(parse_end("PLAY [all] ***").is_none());
        assert!(parse_end("{ not json").is_none());
    }
}
