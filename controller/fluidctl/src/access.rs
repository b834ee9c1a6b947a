//! `fluidctl ssh` and `fluidctl access …`: short-lived SSH certificates for people.
//!
//! `ssh` does the whole dance: a throwaway ed25519 key (unless `--identity`), a
//! certificate for it from the controller's CA, then `exec ssh` with both.

use std::ffi::OsString;
use std::os::unix::fs::DirBuilderExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use fluid_client::types::{AccessRequest, AccessResponse};

use crate::sandboxes::{check_id, default_agent_id};
use crate::{Ctx, emit, emit_json, render};

/// Overrides the ssh program, split on whitespace (e.g. `ip netns exec fluid ssh`).
pub const SSH_ENV: &str = "FLUIDCTL_SSH";

#[derive(Debug, Args)]
#[command(after_help = "\
Without --identity a throwaway ed25519 key is generated (ssh-keygen) in a private \
temporary directory. If the sandbox network is only reachable from inside a network \
namespace, run fluidctl there or set FLUIDCTL_SSH, e.g. FLUIDCTL_SSH='ip netns exec fluid ssh'.")]
pub struct SshArgs {
    /// Sandbox id (`SBX-…`).
    pub sandbox: String,
    /// Unix user to log in as [default: root].
    #[arg(long, short = 'u', value_name = "USER")]
    pub user: Option<String>,
    /// Private key to use; `<KEY>.pub` must exist beside it [default: a throwaway key].
    #[arg(long, short = 'i', value_name = "KEY")]
    pub identity: Option<PathBuf>,
    /// Lifetime of the certificate in minutes (1-10).
    #[arg(long, value_name = "MINUTES", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=10))]
    pub ttl_minutes: u32,
    /// Print the ssh command line instead of running it.
    #[arg(long)]
    pub print: bool,
}

#[derive(Debug, Subcommand)]
pub enum AccessCmd {
    /// List the SSH certificates the controller issued.
    #[command(visible_alias = "ls")]
    List,
    /// Revoke a certificate (also on the sandbox's sshd).
    Revoke {
        /// Certificate id (`CRT-…`).
        id: String,
    },
    /// Print the CA public key sandboxes trust.
    Ca,
}

/// Everything the ssh command line needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    pub key: PathBuf,
    pub certificate: PathBuf,
    pub known_hosts: PathBuf,
    pub user: String,
    pub ip: String,
    pub port: u16,
}

/// The program and leading arguments: `$FLUIDCTL_SSH` split on whitespace, else `ssh`.
pub fn ssh_program(env: Option<&str>) -> Vec<OsString> {
    let words: Vec<OsString> = env
        .unwrap_or_default()
        .split_whitespace()
        .map(OsString::from)
        .collect();
    if words.is_empty() {
        vec![OsString::from("ssh")]
    } else {
        words
    }
}

/// `ssh -i KEY -o CertificateFile=… -o IdentitiesOnly=yes -o StrictHostKeyChecking=accept-new
/// -o UserKnownHostsFile=… -p PORT USER@IP`, after the program words.
pub fn ssh_argv(program: &[OsString], t: &SshTarget) -> Vec<OsString> {
    let opt = |name: &str, path: &Path| {
        let mut s = OsString::from(format!("{name}="));
        s.push(path.as_os_str());
        s
    };
    let mut argv: Vec<OsString> = program.to_vec();
    argv.push("-i".into());
    argv.push(t.key.clone().into_os_string());
    argv.push("-o".into());
    argv.push(opt("CertificateFile", &t.certificate));
    argv.push("-o".into());
    argv.push("IdentitiesOnly=yes".into());
    argv.push("-o".into());
    argv.push("StrictHostKeyChecking=accept-new".into());
    argv.push("-o".into());
    argv.push(opt("UserKnownHostsFile", &t.known_hosts));
    argv.push("-p".into());
    argv.push(t.port.to_string().into());
    argv.push(format!("{}@{}", t.user, t.ip).into());
    argv
}

/// A command line as one shell-pasteable string.
pub fn shell_line(argv: &[OsString]) -> String {
    argv.iter()
        .map(|a| {
            let s = a.to_string_lossy();
            if !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"@%+=:,./_-".contains(&b))
            {
                s.into_owned()
            } else {
                format!("'{}'", s.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `~/x` → `$HOME/x` (a quoted `--identity '~/…'` reaches us unexpanded).
fn expand_home(p: &Path) -> PathBuf {
    match (p.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => p.to_owned(),
    }
}

/// `<key>-cert.pub` in `dir`.
pub fn certificate_path(dir: &Path, key: &Path) -> PathBuf {
    let mut name = key
        .file_name()
        .map_or_else(|| OsString::from("id"), ToOwned::to_owned);
    name.push("-cert.pub");
    dir.join(name)
}

/// A fresh directory only we can read, under `$XDG_RUNTIME_DIR` or the temp dir.
fn private_dir() -> anyhow::Result<PathBuf> {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let pid = std::process::id();
    let mut last = None;
    for attempt in 0..16u32 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = base.join(format!("fluidctl-ssh-{pid}-{nanos:x}{attempt}"));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) => last = Some(e),
        }
    }
    Err(anyhow::anyhow!(
        "cannot create a private directory in {}: {}",
        base.display(),
        last.map_or_else(String::new, |e| e.to_string())
    ))
}

/// `ssh-keygen -t ed25519 -N '' -f DIR/id_ed25519`.
fn generate_key(dir: &Path, comment: &str) -> anyhow::Result<PathBuf> {
    let key = dir.join("id_ed25519");
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(&key)
        .stdin(std::process::Stdio::null())
        .output()
        .context("cannot run ssh-keygen (install openssh-client, or pass --identity)")?;
    if !out.status.success() {
        anyhow::bail!(
            "ssh-keygen failed ({}): {}",
            out.status,
            render::one_line(&String::from_utf8_lossy(&out.stderr))
        );
    }
    Ok(key)
}

fn public_key_of(key: &Path) -> anyhow::Result<String> {
    let mut pub_path = key.as_os_str().to_owned();
    pub_path.push(".pub");
    let pub_path = PathBuf::from(pub_path);
    let text = std::fs::read_to_string(&pub_path).with_context(|| {
        format!(
            "cannot read the public key {} (make it with `ssh-keygen -y -f {} > {}`)",
            pub_path.display(),
            key.display(),
            pub_path.display()
        )
    })?;
    Ok(text.trim().to_owned())
}

/// The line printed before connecting.
pub fn validity_line(resp: &AccessResponse) -> String {
    format!(
        "certificate {} for {}@{} valid until {} ({})",
        resp.certificate_id,
        resp.username,
        resp.vm_ip_address,
        resp.valid_until
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        render::human_duration(i64::try_from(resp.ttl_seconds).unwrap_or(i64::MAX)),
    )
}

/// Key, certificate and access, ready to connect; on failure the caller removes `dir`.
async fn prepare(
    ctx: &Ctx,
    id: &str,
    args: &SshArgs,
    dir: &Path,
) -> anyhow::Result<(AccessResponse, SshTarget)> {
    let key = match &args.identity {
        Some(k) => expand_home(k),
        None => generate_key(dir, &format!("fluidctl-{id}"))?,
    };
    let req = AccessRequest {
        sandbox_id: id.to_owned(),
        user_id: default_agent_id(),
        public_key: public_key_of(&key)?,
        ttl_minutes: Some(args.ttl_minutes),
        username: args.user.clone(),
    };
    let resp = ctx
        .client
        .request_access(&req)
        .await
        .with_context(|| format!("cannot get SSH access to {id}"))?;
    let certificate = certificate_path(dir, &key);
    std::fs::write(&certificate, format!("{}\n", resp.certificate.trim()))
        .with_context(|| format!("cannot write {}", certificate.display()))?;
    let target = SshTarget {
        key,
        certificate,
        known_hosts: dir.join("known_hosts"),
        user: resp.username.clone(),
        ip: resp.vm_ip_address.clone(),
        port: resp.ssh_port,
    };
    Ok((resp, target))
}

pub async fn ssh(ctx: &Ctx, args: SshArgs) -> anyhow::Result<()> {
    let id = check_id(&args.sandbox)?;
    let dir = private_dir()?;
    let (resp, target) = match prepare(ctx, id, &args, &dir).await {
        Ok(ready) => ready,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
    };
    let argv = ssh_argv(
        &ssh_program(std::env::var(SSH_ENV).ok().as_deref()),
        &target,
    );
    if ctx.json {
        // The key stays for the caller to use: say where it is.
        return emit_json(&serde_json::json!({
            "access": resp,
            "identity_file": target.key,
            "certificate_file": target.certificate,
            "ssh_command": shell_line(&argv),
        }));
    }
    eprintln!("{}", validity_line(&resp));
    if args.print {
        emit(&shell_line(&argv));
        return Ok(());
    }
    let Some((program, rest)) = argv.split_first() else {
        anyhow::bail!("no ssh program to run");
    };
    // Replaces this process; only returns when the exec failed. The private directory
    // stays behind (the certificate expires within minutes).
    let err = std::process::Command::new(program).args(rest).exec();
    let _ = std::fs::remove_dir_all(&dir);
    Err(anyhow::Error::new(err).context(format!(
        "cannot run {} (set {SSH_ENV} to another ssh)",
        program.to_string_lossy()
    )))
}

pub async fn access(ctx: &Ctx, cmd: AccessCmd) -> anyhow::Result<()> {
    match cmd {
        AccessCmd::List => {
            let resp = ctx.client.list_certificates().await?;
            if ctx.json {
                return emit_json(&resp);
            }
            emit(&render::certificates_table(
                &resp.certificates,
                chrono::Utc::now(),
            ));
        }
        AccessCmd::Revoke { id } => {
            let id = check_id(&id)
                .map_err(|_| anyhow::anyhow!("`{id}` is not a certificate id (expected CRT-…)"))?;
            let resp = ctx
                .client
                .revoke_certificate(id)
                .await
                .with_context(|| format!("cannot revoke {id}"))?;
            if ctx.json {
                return emit_json(&resp);
            }
            emit(&format!(
                "revoked {} ({} on {})",
                resp.certificate.id, resp.certificate.user_id, resp.certificate.sandbox_id
            ));
            if resp.revocation_applied == Some(false) {
                eprintln!(
                    "warning: the sandbox's sshd was not updated{}; the certificate expires at {}",
                    resp.revocation_error
                        .as_deref()
                        .map_or_else(String::new, |e| format!(": {}", render::one_line(e))),
                    resp.certificate
                        .valid_until
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                );
            }
        }
        AccessCmd::Ca => {
            let resp = ctx.client.ca_pubkey().await?;
            if ctx.json {
                return emit_json(&resp);
            }
            emit(resp.public_key.trim());
        }
    }
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

    fn strings(argv: &[OsString]) -> Vec<String> {
        argv.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn ssh_parses() {
        let Ok(Command::Ssh(a)) = parse(&["ssh", "SBX-1"]) else {
            panic!("ssh")
        };
        assert_eq!(
            (a.user, a.identity, a.ttl_minutes, a.print),
            (None, None, 5, false)
        );
        let Ok(Command::Ssh(a)) = parse(&[
            "ssh",
            "SBX-1",
            "--user",
            "dev",
            "-i",
            "/k/id",
            "--ttl-minutes",
            "10",
            "--print",
        ]) else {
            panic!("ssh")
        };
        assert_eq!(a.user.as_deref(), Some("dev"));
        assert_eq!(a.identity, Some(PathBuf::from("/k/id")));
        assert_eq!(a.ttl_minutes, 10);
        assert!(a.print);
        for ttl in ["0", "11"] {
            assert_eq!(
                parse(&["ssh", "SBX-1", "--ttl-minutes", ttl])
                    .map(|_| ())
                    .expect_err(ttl)
                    .kind(),
                clap::error::ErrorKind::ValueValidation
            );
        }
    }

    #[test]
    fn access_parses() {
        assert!(matches!(
            parse(&["access", "list"]),
            Ok(Command::Access(AccessCmd::List))
        ));
        assert!(matches!(
            parse(&["access", "ls"]),
            Ok(Command::Access(AccessCmd::List))
        ));
        assert!(matches!(
            parse(&["access", "ca"]),
            Ok(Command::Access(AccessCmd::Ca))
        ));
        assert!(matches!(
            parse(&["access", "revoke", "CRT-1"]),
            Ok(Command::Access(AccessCmd::Revoke { id })) if id == "CRT-1"
        ));
        assert!(parse(&["access", "revoke"]).is_err());
    }

    #[test]
    fn ssh_command_line() {
        let t = SshTarget {
            key: PathBuf::from("/run/user/1000/fluidctl-ssh-1/id_ed25519"),
            certificate: PathBuf::from("/run/user/1000/fluidctl-ssh-1/id_ed25519-cert.pub"),
            known_hosts: PathBuf::from("/run/user/1000/fluidctl-ssh-1/known_hosts"),
            user: "root".to_owned(),
            ip: "10.0.0.5".to_owned(),
            port: 22,
        };
        assert_eq!(
            strings(&ssh_argv(&ssh_program(None), &t)),
            [
                "ssh",
                "-i",
                "/run/user/1000/fluidctl-ssh-1/id_ed25519",
                "-o",
                "CertificateFile=/run/user/1000/fluidctl-ssh-1/id_ed25519-cert.pub",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "StrictHostKeyChecking=accept-new",
                "-o",
                "UserKnownHostsFile=/run/user/1000/fluidctl-ssh-1/known_hosts",
                "-p",
                "22",
                "root@10.0.0.5",
            ]
        );
        let argv = ssh_argv(&ssh_program(Some("  ip netns exec fluid  ssh ")), &t);
        assert_eq!(strings(&argv[..5]), ["ip", "netns", "exec", "fluid", "ssh"]);
        assert_eq!(strings(&ssh_program(Some("   "))), ["ssh"]);
        assert_eq!(
            shell_line(&[
                OsString::from("ssh"),
                OsString::from("-o"),
                OsString::from("UserKnownHostsFile=/tmp/a b"),
                OsString::from("it's"),
            ]),
            r"ssh -o 'UserKnownHostsFile=/tmp/a b' 'it'\''s'"
        );
    }

    #[test]
    fn key_paths() {
        assert_eq!(
            certificate_path(Path::new("/tmp/d"), Path::new("/home/a/.ssh/id_ed25519")),
            PathBuf::from("/tmp/d/id_ed25519-cert.pub")
        );
        if let Some(home) = std::env::var_os("HOME") {
            assert_eq!(
                expand_home(Path::new("~/.ssh/id")),
                PathBuf::from(home).join(".ssh/id")
            );
        }
        assert_eq!(expand_home(Path::new("/abs/id")), PathBuf::from("/abs/id"));
    }

    #[test]
    fn throwaway_key_and_private_dir() {
        let dir = private_dir().expect("private dir");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&dir).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // ssh-keygen is a runtime dependency; skip quietly where it is not installed.
        if let Ok(key) = generate_key(&dir, "test") {
            let line = public_key_of(&key).expect("public key");
            assert!(line.starts_with("ssh-ed25519 "), "{line}");
        }
        assert!(public_key_of(&dir.join("missing")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn validity() {
        let resp = AccessResponse {
            certificate_id: "CRT-1".to_owned(),
            certificate: "ssh-ed25519-cert-v01@openssh.com AAAA".to_owned(),
            vm_ip_address: "10.0.0.5".to_owned(),
            ssh_port: 22,
            username: "root".to_owned(),
            valid_until: chrono::DateTime::UNIX_EPOCH,
            ttl_seconds: 300,
            connect_command: String::new(),
            instructions: String::new(),
        };
        assert_eq!(
            validity_line(&resp),
            "certificate CRT-1 for root@10.0.0.5 valid until 1970-01-01T00:00:00Z (5m)"
        );
    }
}
