//! `fluidctl net …`: a sandbox's network egress. `show` reads the allow-list; `allow`
//! and `deny` change it (operator, admin: read, edit, write back); `request` is the
//! agent's side, a request a human approves (like `ask`).

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use fluid_client::client::{DEFAULT_EGRESS_TIMEOUT_SECS, EgressOutcome};
use fluid_client::network::{EgressProtocol, EgressRequest, EgressRuleBody, PutNetworkRequest};

use crate::progress::with_spinner;
use crate::sandboxes::check_id;
use crate::{Ctx, emit, emit_json, render};

#[derive(Debug, Subcommand)]
#[command(after_help = "\
A sandbox reaches nothing beyond the baseline (DHCP, DNS through its agent's resolver, \
the management SSH path) until its allow-list says so. DEST is a CIDR, an address or a \
domain name; --port needs a protocol and takes tcp when --proto is not given.")]
pub enum NetCmd {
    /// Show a sandbox's egress allow-list and what its domains resolve to.
    #[command(visible_alias = "get")]
    Show {
        /// Sandbox id (`SBX-…`).
        sandbox: String,
    },
    /// Allow a destination (operator, admin).
    Allow(RuleArgs),
    /// Remove an allow-list entry (operator, admin); it must match exactly.
    #[command(visible_alias = "rm")]
    Deny(RuleArgs),
    /// Ask a human to allow a destination; exits 0 when approved, 1 when rejected or
    /// expired.
    Request(RequestArgs),
}

#[derive(Debug, Args)]
pub struct RuleArgs {
    /// Sandbox id (`SBX-…`).
    pub sandbox: String,
    /// A CIDR, an address or a domain name.
    #[arg(value_name = "DEST")]
    pub destination: String,
    /// Only this port (1-65535).
    #[arg(long, short = 'p', value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
    /// Only this protocol: tcp or udp [default: any, or tcp with --port].
    #[arg(long, value_name = "tcp|udp", value_parser = parse_proto)]
    pub proto: Option<EgressProtocol>,
}

impl RuleArgs {
    /// The entry, as the controller stores it.
    pub fn rule(&self) -> EgressRuleBody {
        let proto = self.proto.or(self.port.map(|_| EgressProtocol::Tcp));
        EgressRuleBody::for_destination(&self.destination, proto, self.port).normalized()
    }
}

#[derive(Debug, Args)]
pub struct RequestArgs {
    #[command(flatten)]
    pub rule: RuleArgs,
    /// Why, for the human who decides.
    #[arg(long, short = 'r', value_name = "TEXT")]
    pub reason: String,
    /// Do not wait: print the request to decide and exit 0.
    #[arg(long)]
    pub no_wait: bool,
}

impl RequestArgs {
    pub fn to_request(&self) -> EgressRequest {
        EgressRequest {
            destination: self.rule.destination.trim().to_owned(),
            port: self.rule.port,
            protocol: self.rule.proto.map(|p| p.as_str().to_owned()),
            reason: self.reason.clone(),
        }
    }
}

fn parse_proto(s: &str) -> Result<EgressProtocol, String> {
    EgressProtocol::parse(s).ok_or_else(|| format!("unknown protocol `{s}` (tcp or udp)"))
}

/// The list without `rule`; an error that names the entries for its destination when
/// none matches exactly.
fn without(allow: &[EgressRuleBody], rule: &EgressRuleBody) -> anyhow::Result<Vec<EgressRuleBody>> {
    if allow.contains(rule) {
        return Ok(allow.iter().filter(|r| *r != rule).cloned().collect());
    }
    let same: Vec<String> = allow
        .iter()
        .filter(|r| r.destination() == rule.destination())
        .map(EgressRuleBody::service)
        .collect();
    if same.is_empty() {
        anyhow::bail!("no entry for {} in the allow-list", rule.destination());
    }
    anyhow::bail!(
        "no entry {rule}; the allow-list has {} for {} (give --port/--proto to match)",
        same.join(", "),
        rule.destination()
    )
}

pub async fn run(ctx: &Ctx, cmd: NetCmd) -> anyhow::Result<ExitCode> {
    let resp = match cmd {
        NetCmd::Show { sandbox } => ctx.client.get_network(check_id(&sandbox)?).await?,
        NetCmd::Allow(args) => {
            let id = check_id(&args.sandbox)?;
            let rule = args.rule();
            let current = ctx.client.get_network(id).await?;
            if current.network.allow.contains(&rule) {
                eprintln!("{rule} is already allowed");
                current
            } else {
                let mut allow = current.network.allow;
                allow.push(rule.clone());
                ctx.client
                    .put_network(id, &PutNetworkRequest { allow })
                    .await
                    .with_context(|| format!("cannot allow {rule} for {id}"))?
            }
        }
        NetCmd::Deny(args) => {
            let id = check_id(&args.sandbox)?;
            let rule = args.rule();
            let current = ctx.client.get_network(id).await?.network.allow;
            let allow = without(&current, &rule)?;
            ctx.client
                .put_network(id, &PutNetworkRequest { allow })
                .await
                .with_context(|| format!("cannot remove {rule} for {id}"))?
        }
        NetCmd::Request(args) => return request(ctx, &args).await,
    };
    if ctx.json {
        emit_json(&resp)?;
    } else {
        emit(&render::network_view(&resp.network));
    }
    Ok(ExitCode::SUCCESS)
}

/// `fluidctl net request`: 0 when approved (or, with `--no-wait`, asked), 1 otherwise.
async fn request(ctx: &Ctx, args: &RequestArgs) -> anyhow::Result<ExitCode> {
    let id = check_id(&args.rule.sandbox)?;
    let req = args.to_request();
    let rule = args.rule.rule();
    if args.no_wait {
        let out = ctx
            .client
            .request_egress_nowait(id, &req)
            .await
            .context("cannot request egress")?;
        return Ok(match out {
            EgressOutcome::Pending(p) => {
                if ctx.json {
                    emit_json(&p)?;
                } else {
                    emit(&format!(
                        "pending ({}): {rule} waits for a human (fluidctl approvals approve {})",
                        p.request_id, p.request_id
                    ));
                }
                ExitCode::SUCCESS
            }
            EgressOutcome::Decided(r) => outcome(ctx, &r, &rule)?,
        });
    }
    let msg = format!(
        "waiting up to {} for a human to allow {rule} (fluidctl approvals list)",
        render::human_duration(i64::try_from(DEFAULT_EGRESS_TIMEOUT_SECS).unwrap_or(i64::MAX))
    );
    let resp = with_spinner(
        ctx.interactive(),
        msg,
        ctx.client.request_egress(id, &req, None),
    )
    .await
    .context("cannot request egress")?;
    outcome(ctx, &resp, &rule)
}

fn outcome(
    ctx: &Ctx,
    r: &fluid_client::network::EgressResponse,
    rule: &EgressRuleBody,
) -> anyhow::Result<ExitCode> {
    if ctx.json {
        emit_json(r)?;
    } else {
        emit(&render::egress_outcome(r, rule));
    }
    Ok(if r.approved {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cli, Command};
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<NetCmd, clap::Error> {
        let mut full = vec!["fluidctl", "net"];
        full.extend_from_slice(args);
        Cli::try_parse_from(full).map(|c| match c.command {
            Command::Net(n) => n,
            other => panic!("unexpected {other:?}"),
        })
    }

    #[test]
    fn rules_from_arguments() {
        let Ok(NetCmd::Allow(a)) = parse(&["allow", "SBX-1", "Deb.Debian.org", "--port", "443"])
        else {
            panic!("allow")
        };
        assert_eq!(
            serde_json::to_value(a.rule()).expect("json"),
            serde_json::json!({"domain": "deb.debian.org", "protocol": "tcp", "port": 443})
        );
        let Ok(NetCmd::Deny(a)) = parse(&["deny", "SBX-1", "10.0.0.1", "--proto", "UDP"]) else {
            panic!("deny")
        };
        assert_eq!(a.rule().to_string(), "udp to 10.0.0.1/32");
        assert!(parse(&["allow", "SBX-1", "x.example", "--proto", "icmp"]).is_err());
        assert!(parse(&["allow", "SBX-1", "x.example", "--port", "0"]).is_err());
        assert!(parse(&["allow", "SBX-1"]).is_err());
        assert!(matches!(parse(&["show", "SBX-1"]), Ok(NetCmd::Show { .. })));
    }

    #[test]
    fn requests_send_only_what_was_given() {
        let Ok(NetCmd::Request(r)) = parse(&[
            "request",
            "SBX-1",
            "pypi.org",
            "--port",
            "443",
            "--reason",
            "pip",
            "--no-wait",
        ]) else {
            panic!("request")
        };
        assert!(r.no_wait);
        assert_eq!(
            serde_json::to_value(r.to_request()).expect("json"),
            serde_json::json!({"destination": "pypi.org", "port": 443, "reason": "pip"})
        );
        assert!(
            parse(&["request", "SBX-1", "pypi.org"]).is_err(),
            "needs --reason"
        );
    }

    #[test]
    fn deny_needs_an_exact_match() {
        let allow = vec![
            EgressRuleBody::for_destination("a.example", Some(EgressProtocol::Tcp), Some(443)),
            EgressRuleBody::for_destination("10.0.0.0/8", None, None),
        ];
        let rule = EgressRuleBody::for_destination("10.0.0.0/8", None, None);
        assert_eq!(without(&allow, &rule).expect("match"), allow[..1]);
        let e = without(
            &allow,
            &EgressRuleBody::for_destination("a.example", None, None),
        )
        .expect_err("no exact match");
        assert!(e.to_string().contains("has tcp/443 for a.example"), "{e}");
        let e = without(
            &allow,
            &EgressRuleBody::for_destination("b.example", None, None),
        )
        .expect_err("nothing");
        assert!(e.to_string().contains("no entry for b.example"), "{e}");
    }
}
