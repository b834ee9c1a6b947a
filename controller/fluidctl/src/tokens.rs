//! `fluidctl token …` (API tokens, admin only) and `fluidctl whoami`.

use anyhow::Context as _;
use clap::Subcommand;
use fluid_client::governance::{CreateTokenRequest, Role};

use crate::{Ctx, emit, emit_json, render};

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Create a token; its secret is printed once, alone on stdout.
    #[command(after_help = "\
The secret is the only line on stdout (the notes go to stderr), so \
`export FLUID_TOKEN=$(fluidctl token create --name ci --role agent --agent-id ci)` works. \
It is never shown again: the controller keeps only its hash.")]
    Create {
        /// A unique name (it appears as the actor in the audit trail).
        #[arg(long, short = 'n', value_name = "NAME")]
        name: String,
        /// admin, operator, agent or readonly.
        #[arg(long, short = 'r', value_name = "ROLE", value_parser = parse_role, ignore_case = true)]
        role: Role,
        /// The agent id the token is scoped to (required for the agent role).
        #[arg(long, value_name = "ID", required_if_eq("role", "agent"))]
        agent_id: Option<String>,
    },
    /// List the tokens (never their secrets).
    #[command(visible_alias = "ls")]
    List,
    /// Revoke a token by id (`TOK-…`) or name.
    #[command(visible_alias = "rm")]
    Revoke {
        /// Token id or name.
        id_or_name: String,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(&s.to_ascii_lowercase()).ok_or_else(|| {
        let all: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
        format!("unknown role `{s}` (one of {})", all.join(", "))
    })
}

pub async fn run(ctx: &Ctx, cmd: TokenCmd) -> anyhow::Result<()> {
    match cmd {
        TokenCmd::Create {
            name,
            role,
            agent_id,
        } => {
            let req = CreateTokenRequest {
                name,
                role,
                agent_id,
            };
            let resp = ctx
                .client
                .create_token(&req)
                .await
                .with_context(|| format!("cannot create token {}", req.name))?;
            if ctx.json {
                return emit_json(&resp);
            }
            let (before, after) = render::token_created_notes(&resp);
            eprintln!("{before}");
            emit(&resp.token);
            eprintln!("{after}");
        }
        TokenCmd::List => {
            let resp = ctx.client.list_tokens().await?;
            if ctx.json {
                return emit_json(&resp);
            }
            emit(&render::token_table(&resp.tokens, chrono::Utc::now()));
        }
        TokenCmd::Revoke { id_or_name } => {
            let id = id_or_name.trim();
            if id.is_empty() {
                anyhow::bail!("a token id or name is required");
            }
            let resp = ctx
                .client
                .revoke_token(id)
                .await
                .with_context(|| format!("cannot revoke token {id}"))?;
            if ctx.json {
                return emit_json(&resp);
            }
            emit(&render::token_revoked(&resp));
        }
    }
    Ok(())
}

/// `fluidctl whoami`.
pub async fn whoami(ctx: &Ctx) -> anyhow::Result<()> {
    let resp = ctx.client.whoami().await?;
    if ctx.json {
        return emit_json(&resp);
    }
    emit(&render::whoami(&resp));
    Ok(())
}

/// `fluidctl roles`.
pub async fn roles(ctx: &Ctx) -> anyhow::Result<()> {
    let resp = ctx.client.roles().await?;
    if ctx.json {
        return emit_json(&resp);
    }
    emit(&render::roles(&resp));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cli, Command};
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        let mut full = vec!["fluidctl"];
        full.extend_from_slice(args);
        Cli::try_parse_from(full).map(|c| c.command)
    }

    #[test]
    fn create_needs_name_role_and_an_agent_for_agents() {
        match parse(&["token", "create", "--name", "ops", "--role", "Operator"]) {
            Ok(Command::Token(TokenCmd::Create {
                name,
                role,
                agent_id,
            })) => {
                assert_eq!(name, "ops");
                assert_eq!(role, Role::Operator);
                assert_eq!(agent_id, None);
            }
            other => panic!("unexpected {other:?}"),
        }
        let e = parse(&["token", "create", "--name", "ci", "--role", "agent"])
            .expect_err("agent without agent id");
        assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert!(
            parse(&[
                "token",
                "create",
                "--name",
                "ci",
                "--role",
                "agent",
                "--agent-id",
                "ci-7"
            ])
            .is_ok()
        );
        let e =
            parse(&["token", "create", "--name", "x", "--role", "root"]).expect_err("unknown role");
        assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation);
        assert!(parse(&["token", "create", "--role", "admin"]).is_err());
    }

    #[test]
    fn list_revoke_and_whoami_parse() {
        assert!(matches!(
            parse(&["tokens", "ls"]),
            Ok(Command::Token(TokenCmd::List))
        ));
        assert!(matches!(
            parse(&["token", "revoke", "ci bot"]),
            Ok(Command::Token(TokenCmd::Revoke { id_or_name })) if id_or_name == "ci bot"
        ));
        assert!(matches!(parse(&["whoami"]), Ok(Command::Whoami)));
        assert!(matches!(parse(&["roles"]), Ok(Command::Roles)));
    }
}
