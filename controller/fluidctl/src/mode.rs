//! `fluidctl mode SANDBOX [read-only|read-write]`: show or set a sandbox's mode. A
//! read-only sandbox refuses every operation that would change it.

use anyhow::Context as _;
use clap::Args;
use fluid_client::governance::{ModeResponse, SandboxMode};

use crate::sandboxes::check_id;
use crate::{Ctx, emit, emit_json};

#[derive(Debug, Args)]
pub struct ModeArgs {
    /// Sandbox id (`SBX-…`).
    pub sandbox: String,
    /// The new mode (operator, admin); without it, show the current one.
    #[arg(value_name = "read-only|read-write", value_parser = parse_mode)]
    pub mode: Option<SandboxMode>,
}

fn parse_mode(s: &str) -> Result<SandboxMode, String> {
    match s.to_ascii_lowercase().replace('_', "-").as_str() {
        "read-only" | "ro" => Ok(SandboxMode::ReadOnly),
        "read-write" | "rw" => Ok(SandboxMode::ReadWrite),
        _ => Err(format!("unknown mode `{s}` (read-only or read-write)")),
    }
}

/// `SBX-1 read-only`.
pub fn mode_line(m: &ModeResponse) -> String {
    format!("{} {}", m.sandbox_id, m.mode.as_str())
}

pub async fn run(ctx: &Ctx, args: ModeArgs) -> anyhow::Result<()> {
    let id = check_id(&args.sandbox)?;
    let resp = match args.mode {
        None => ctx.client.get_mode(id).await?,
        Some(mode) => ctx
            .client
            .set_mode(id, mode)
            .await
            .with_context(|| format!("cannot make {id} {}", mode.as_str()))?,
    };
    if ctx.json {
        return emit_json(&resp);
    }
    emit(&mode_line(&resp));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cli, Command};
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<ModeArgs, clap::Error> {
        let mut full = vec!["fluidctl", "mode"];
        full.extend_from_slice(args);
        Cli::try_parse_from(full).map(|c| match c.command {
            Command::Mode(a) => a,
            other => panic!("unexpected {other:?}"),
        })
    }

    #[test]
    fn mode_shows_or_sets() {
        let a = parse(&["SBX-1"]).expect("parses");
        assert_eq!((a.sandbox.as_str(), a.mode), ("SBX-1", None));
        let a = parse(&["SBX-1", "read-only"]).expect("parses");
        assert_eq!(a.mode, Some(SandboxMode::ReadOnly));
        let a = parse(&["SBX-1", "RW"]).expect("parses");
        assert_eq!(a.mode, Some(SandboxMode::ReadWrite));
        assert!(parse(&["SBX-1", "frozen"]).is_err());
        assert!(parse(&[]).is_err());
        assert_eq!(
            mode_line(&ModeResponse {
                sandbox_id: "SBX-1".into(),
                mode: SandboxMode::ReadOnly
            }),
            "SBX-1 read-only"
        );
    }
}
