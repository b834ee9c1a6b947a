//! `fluidctl playbook …` (playbooks and their tasks) and `fluidctl ansible generate|verify`
//! (a playbook from a sandbox's changes, and the proof that it reproduces them).

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use fluid_client::ansible::{CreatePlaybookRequest, CreateTaskRequest, GenerateAnsibleRequest};
use fluid_client::client::VerifyOutcome;

use crate::progress::with_spinner;
use crate::sandboxes::check_id;
use crate::{Ctx, emit, emit_json, render};

#[derive(Debug, Subcommand)]
#[command(after_help = "\
Names: a letter or digit, then letters, digits, '.', '_' or '-' (at most 63, no `..`). \
Each change rewrites the playbook's YAML file on the controller.")]
pub enum PlaybookCmd {
    /// List playbooks.
    #[command(visible_alias = "ls")]
    List,
    /// Show a playbook and its tasks.
    #[command(visible_alias = "get")]
    Show { name: String },
    /// Create an empty playbook.
    Create {
        name: String,
        /// Host pattern of the play.
        #[arg(long, default_value = "all")]
        hosts: String,
        /// Do not `become` root.
        #[arg(long)]
        no_become: bool,
    },
    /// Delete a playbook (and its file).
    #[command(visible_alias = "rm")]
    Delete { name: String },
    /// Print a playbook as Ansible YAML.
    Export { name: String },
    /// Add or remove a playbook's tasks.
    #[command(subcommand)]
    Task(TaskCmd),
}

#[derive(Debug, Subcommand)]
pub enum TaskCmd {
    /// Append a task (or a handler) to a playbook.
    Add(TaskAddArgs),
    /// Remove a task.
    #[command(visible_alias = "rm")]
    Remove {
        /// The playbook.
        playbook: String,
        /// The task's id (`TSK-…`; `fluidctl playbook show` lists them).
        task_id: String,
    },
}

#[derive(Debug, Args)]
pub struct TaskAddArgs {
    /// The playbook.
    pub playbook: String,
    /// The task's name.
    #[arg(long)]
    pub name: String,
    /// The module, e.g. `ansible.builtin.apt`.
    #[arg(long)]
    pub module: String,
    /// The module's arguments, a JSON object.
    #[arg(long, value_name = "JSON")]
    pub params: Option<String>,
    /// Task keywords, a JSON object (`{"notify": ["restart nginx"]}`).
    #[arg(long, value_name = "JSON")]
    pub options: Option<String>,
    /// A handler rather than a task.
    #[arg(long)]
    pub handler: bool,
}

fn json_arg(flag: &str, s: Option<&str>) -> anyhow::Result<Option<serde_json::Value>> {
    s.map(|s| serde_json::from_str(s).with_context(|| format!("--{flag} is not JSON")))
        .transpose()
}

impl TaskAddArgs {
    pub fn request(&self) -> anyhow::Result<CreateTaskRequest> {
        Ok(CreateTaskRequest {
            name: self.name.clone(),
            module: self.module.clone(),
            params: json_arg("params", self.params.as_deref())?,
            options: json_arg("options", self.options.as_deref())?,
            handler: self.handler.then_some(true),
        })
    }
}

pub async fn playbook(ctx: &Ctx, cmd: PlaybookCmd) -> anyhow::Result<()> {
    let c = &ctx.client;
    match cmd {
        PlaybookCmd::List => {
            let r = c.list_playbooks().await?;
            if ctx.json {
                return emit_json(&r);
            }
            emit(&render::playbook_table(&r.playbooks, chrono::Utc::now()));
        }
        PlaybookCmd::Show { name } => {
            let r = c.get_playbook(&name).await?;
            if ctx.json {
                return emit_json(&r);
            }
            emit(&render::playbook_detail(&r));
        }
        PlaybookCmd::Create {
            name,
            hosts,
            no_become,
        } => {
            let req = CreatePlaybookRequest {
                name,
                hosts: Some(hosts),
                r#become: Some(!no_become),
            };
            let r = c.create_playbook(&req).await?;
            if ctx.json {
                return emit_json(&r);
            }
            emit(&format!(
                "created playbook {} ({}): {}",
                r.playbook.name, r.playbook.id, r.playbook.file_path
            ));
        }
        PlaybookCmd::Delete { name } => {
            c.delete_playbook(&name).await?;
            if !ctx.json {
                emit(&format!("deleted playbook {name}"));
            }
        }
        PlaybookCmd::Export { name } => {
            let r = c.export_playbook(&name).await?;
            if ctx.json {
                return emit_json(&r);
            }
            emit(&r.yaml);
        }
        PlaybookCmd::Task(TaskCmd::Add(args)) => {
            let r = c.add_task(&args.playbook, &args.request()?).await?;
            if ctx.json {
                return emit_json(&r);
            }
            emit(&format!(
                "added {} {} ({}) at position {}",
                if r.task.handler { "handler" } else { "task" },
                r.task.id,
                r.task.name,
                r.task.position
            ));
        }
        PlaybookCmd::Task(TaskCmd::Remove { playbook, task_id }) => {
            c.delete_task(&playbook, &task_id).await?;
            if !ctx.json {
                emit(&format!("removed {task_id} from {playbook}"));
            }
        }
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum AnsibleCmd {
    /// Write a playbook from what changed in a sandbox (default: since its first
    /// snapshot, until now); prints the YAML and what a human must review.
    Generate(GenerateArgs),
    /// Apply a generated playbook to a fresh sandbox of the same image and compare it
    /// with the original; exits 0 when it reproduces, 1 when it does not.
    Verify {
        /// The playbook.
        playbook: String,
    },
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Sandbox id (`SBX-…`).
    pub sandbox: String,
    /// The snapshot the changes start from [default: the sandbox's first].
    #[arg(long)]
    pub from: Option<String>,
    /// The snapshot they end at, or `now` [default: now].
    #[arg(long)]
    pub to: Option<String>,
    /// The playbook's name [default: `<sandbox id>-<to>`].
    #[arg(long)]
    pub name: Option<String>,
    /// Host pattern of the play [default: all].
    #[arg(long)]
    pub hosts: Option<String>,
}

pub async fn ansible(ctx: &Ctx, cmd: AnsibleCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        AnsibleCmd::Generate(a) => {
            let req = GenerateAnsibleRequest {
                from_snapshot: a.from,
                to_snapshot: a.to,
                name: a.name,
                hosts: a.hosts,
            };
            let id = check_id(&a.sandbox)?;
            let r = with_spinner(
                ctx.interactive(),
                format!("reading the changes of {id}"),
                ctx.client.generate_ansible(id, &req),
            )
            .await?;
            if ctx.json {
                emit_json(&r)?;
            } else {
                emit(&render::generated(&r));
            }
            Ok(ExitCode::SUCCESS)
        }
        AnsibleCmd::Verify { playbook } => {
            let out = with_spinner(
                ctx.interactive(),
                format!("verifying {playbook} on a fresh sandbox"),
                ctx.client.verify_playbook(&playbook, true),
            )
            .await?;
            let job = match out {
                VerifyOutcome::Done(r) => r.job,
                VerifyOutcome::Started(r) => r.job,
            };
            if ctx.json {
                emit_json(&job)?;
            }
            let Some(v) = &job.verification else {
                anyhow::bail!(
                    "verification {} ended without a result: {}",
                    job.id,
                    job.error.as_deref().unwrap_or(job.status.as_str())
                );
            };
            if !ctx.json {
                emit(&render::verification(v));
            }
            Ok(if v.reproduces {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::{Cli, Command};

    fn parse(args: &[&str]) -> Command {
        let mut full = vec!["fluidctl"];
        full.extend_from_slice(args);
        match Cli::try_parse_from(full) {
            Ok(cli) => cli.command,
            Err(e) => panic!("{args:?} should parse: {e}"),
        }
    }

    #[test]
    fn playbook_and_ansible_commands_parse() {
        let Command::Playbook(PlaybookCmd::Task(TaskCmd::Add(a))) = parse(&[
            "playbook",
            "task",
            "add",
            "web",
            "--name",
            "nginx",
            "--module",
            "apt",
            "--params",
            r#"{"name": "nginx"}"#,
        ]) else {
            panic!("task add");
        };
        let req = a.request().expect("request");
        assert_eq!(req.params, Some(serde_json::json!({"name": "nginx"})));
        assert_eq!((req.options, req.handler), (None, None));
        let Command::Playbook(PlaybookCmd::Task(TaskCmd::Add(bad))) = parse(&[
            "pb", "task", "add", "web", "--name", "x", "--module", "copy", "--params", "{",
        ]) else {
            panic!("task add");
        };
        assert!(bad.request().is_err());
        assert!(matches!(
            parse(&["playbook", "task", "rm", "web", "TSK-1"]),
            Command::Playbook(PlaybookCmd::Task(TaskCmd::Remove { .. }))
        ));
        assert!(matches!(
            parse(&["playbooks", "ls"]),
            Command::Playbook(PlaybookCmd::List)
        ));
        let Command::Ansible(AnsibleCmd::Generate(g)) = parse(&[
            "ansible", "generate", "SBX-1", "--from", "a", "--name", "web",
        ]) else {
            panic!("generate");
        };
        assert_eq!(
            (g.from.as_deref(), g.to, g.name.as_deref()),
            (Some("a"), None, Some("web"))
        );
        assert!(matches!(
            parse(&["ansible", "verify", "web"]),
            Command::Ansible(AnsibleCmd::Verify { .. })
        ));
        assert!(matches!(
            parse(&["job", "run", "web", "prod-web", "--check"]),
            Command::Job(crate::jobs::JobCmd::Run { check: true, .. })
        ));
        assert!(matches!(
            parse(&["jobs", "watch", "JOB-1"]),
            Command::Job(crate::jobs::JobCmd::Watch { .. })
        ));
    }
}
