//! `fluidctl hosts …`

use anyhow::Context as _;
use clap::Subcommand;
use fluid_client::types::AddHostRequest;

use crate::{Ctx, emit, emit_json, render};

#[derive(Debug, Subcommand)]
pub enum HostsCmd {
    /// List the registered host agents and their free capacity.
    #[command(visible_alias = "ls")]
    List,
    /// Register a host agent.
    Add {
        /// A unique name for the host.
        name: String,
        /// `host:port` of the agent's gRPC endpoint; its certificate must name `host`.
        #[arg(value_parser = parse_address)]
        address: String,
    },
}

/// `host:port` with a numeric port (`[v6]:port` included).
fn parse_address(s: &str) -> Result<String, String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("`{s}` is not host:port"))?;
    if host.is_empty() || host == "[]" {
        return Err(format!("`{s}` names no host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(s.to_owned()),
        _ => Err(format!("`{port}` is not a port number")),
    }
}

pub async fn run(ctx: &Ctx, cmd: HostsCmd) -> anyhow::Result<()> {
    let now = chrono::Utc::now();
    match cmd {
        HostsCmd::List => {
            let resp = ctx.client.list_hosts().await?;
            if ctx.json {
                return emit_json(&resp);
            }
            emit(&render::host_table(&resp.hosts, now));
            for line in render::host_problems(&resp.hosts) {
                eprintln!("warning: {line}");
            }
        }
        HostsCmd::Add { name, address } => {
            let req = AddHostRequest { name, address };
            let resp = ctx
                .client
                .add_host(&req)
                .await
                .with_context(|| format!("cannot add host {}", req.name))?;
            if ctx.json {
                return emit_json(&resp);
            }
            emit(&render::host_table(std::slice::from_ref(&resp.host), now));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cli, Command};
    use clap::Parser;

    #[test]
    fn parses_list_and_add() {
        let cli = Cli::try_parse_from(["fluidctl", "hosts", "list"]).expect("parses");
        assert!(matches!(cli.command, Command::Hosts(HostsCmd::List)));
        let cli = Cli::try_parse_from(["fluidctl", "hosts", "add", "host-a", "10.0.0.2:50051"])
            .expect("parses");
        match cli.command {
            Command::Hosts(HostsCmd::Add { name, address }) => {
                assert_eq!(name, "host-a");
                assert_eq!(address, "10.0.0.2:50051");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn add_needs_both_args_and_a_port() {
        assert!(Cli::try_parse_from(["fluidctl", "hosts", "add", "host-a"]).is_err());
        for bad in [
            "host-a",
            "host-a:",
            "host-a:http",
            ":50051",
            "h:70000",
            "h:0",
        ] {
            assert!(
                Cli::try_parse_from(["fluidctl", "hosts", "add", "x", bad]).is_err(),
                "{bad} should be rejected"
            );
        }
        assert_eq!(parse_address("[::1]:50051").as_deref(), Ok("[::1]:50051"));
    }
}
