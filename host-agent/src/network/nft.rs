//! Applying batches to the kernel: the [`NftBackend`] trait and its implementation
//! over the `nft` binary (JSON on stdin, `nft -j -f -`).
//!
//! Why not `nftables::helper::apply_ruleset`: it blocks the calling thread (std
//! `Command`) and does not capture `nft`'s stderr, so a refused batch would be reported
//! without its reason. The batches are still the crate's typed schema; only the
//! process is run here, with tokio, stderr captured and a deadline.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use nftables::schema::Nftables;
use nftables::types::NfFamily;
use tokio::io::AsyncWriteExt as _;

#[cfg(test)]
pub mod recording;
pub mod simulated;

/// How long one `nft` run may take.
const NFT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("running {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{program} {what}: {detail}")]
    Failed {
        program: String,
        what: &'static str,
        detail: String,
    },
    #[error("{program} {what} took longer than {NFT_TIMEOUT:?}")]
    Timeout { program: String, what: &'static str },
    #[error("nft output: {0}")]
    Output(String),
}

/// Where batches go: the kernel ([`NftCommand`]); on simulated hosts a stand-in that
/// counts what the tables hold ([`simulated::SimulatedNft`]); in unit tests one that
/// records it.
#[async_trait]
pub trait NftBackend: Send + Sync + 'static {
    /// Applies `batch` as one transaction: all of it or nothing.
    async fn apply(&self, batch: &Nftables<'static>) -> Result<(), NftError>;
    /// `nft -j list table <family> <table>`; `None` when the table does not exist.
    async fn list_table(
        &self,
        family: NfFamily,
        table: &str,
    ) -> Result<Option<serde_json::Value>, NftError>;
}

pub fn family_name(family: NfFamily) -> &'static str {
    match family {
        NfFamily::IP => "ip",
        NfFamily::IP6 => "ip6",
        NfFamily::INet => "inet",
        NfFamily::ARP => "arp",
        NfFamily::Bridge => "bridge",
        NfFamily::NetDev => "netdev",
    }
}

/// The `nft` binary, optionally behind a prefix (e.g. `ip netns exec <ns> nft`).
#[derive(Debug, Clone)]
pub struct NftCommand {
    program: PathBuf,
    args: Vec<OsString>,
}

impl Default for NftCommand {
    fn default() -> Self {
        Self {
            program: PathBuf::from("nft"),
            args: Vec::new(),
        }
    }
}

impl NftCommand {
    /// `program args… <nft arguments>`; `program` must end up running `nft`.
    pub fn with_prefix(
        program: impl Into<PathBuf>,
        args: impl IntoIterator<Item = impl Into<OsString>>,
    ) -> Self {
        Self {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
        }
    }

    fn describe(&self) -> String {
        std::iter::once(self.program.display().to_string())
            .chain(self.args.iter().map(|a| a.to_string_lossy().into_owned()))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Runs with `extra` arguments and `stdin`; the process's stdout, or why it failed.
    async fn run(
        &self,
        what: &'static str,
        extra: &[&str],
        stdin: Option<Vec<u8>>,
    ) -> Result<Result<String, String>, NftError> {
        let program = self.describe();
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(&self.args)
            .args(extra)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|source| NftError::Spawn {
            program: program.clone(),
            source,
        })?;
        let run = async {
            if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
                pipe.write_all(&input).await?;
                drop(pipe);
            }
            child.wait_with_output().await
        };
        let out = tokio::time::timeout(NFT_TIMEOUT, run)
            .await
            .map_err(|_| NftError::Timeout {
                program: program.clone(),
                what,
            })?
            .map_err(|source| NftError::Spawn {
                program: program.clone(),
                source,
            })?;
        if out.status.success() {
            Ok(Ok(String::from_utf8_lossy(&out.stdout).into_owned()))
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            Ok(Err(format!("{} ({})", stderr, out.status)))
        }
    }
}

#[async_trait]
impl NftBackend for NftCommand {
    async fn apply(&self, batch: &Nftables<'static>) -> Result<(), NftError> {
        let json = serde_json::to_vec(batch).map_err(|e| NftError::Output(e.to_string()))?;
        self.run("apply", &["-j", "-f", "-"], Some(json))
            .await?
            .map(drop)
            .map_err(|detail| NftError::Failed {
                program: self.describe(),
                what: "apply",
                detail,
            })
    }

    async fn list_table(
        &self,
        family: NfFamily,
        table: &str,
    ) -> Result<Option<serde_json::Value>, NftError> {
        let family = family_name(family);
        match self
            .run("list", &["-j", "list", "table", family, table], None)
            .await?
        {
            Ok(out) => serde_json::from_str(&out)
                .map(Some)
                .map_err(|e| NftError::Output(format!("listing {family} {table}: {e}"))),
            Err(detail) if detail.contains("No such file or directory") => Ok(None),
            Err(detail) => Err(NftError::Failed {
                program: self.describe(),
                what: "list",
                detail,
            }),
        }
    }
}
