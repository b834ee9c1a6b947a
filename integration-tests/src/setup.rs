//! What the harness's processes are set up with, for a [`crate::Stack`] and a
//! [`crate::fleet::SimFleet`] alike: TOML pieces, API tokens made with the controller's
//! own CLI, and PostgreSQL databases of their own.

use std::path::Path;

use anyhow::{Context, Result, bail};
use fluid_proto::tls::TlsFiles;

/// `s` as a TOML string.
pub fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
}

pub fn quote_path(p: &Path) -> String {
    quote(&p.to_string_lossy())
}

/// The `[tls]` table of `tls`.
pub fn tls_toml(tls: &TlsFiles) -> String {
    format!(
        "[tls]\nca_cert = {}\ncert = {}\nkey = {}\n",
        quote_path(&tls.ca_cert),
        quote_path(&tls.cert),
        quote_path(&tls.key)
    )
}

/// Six hex digits that differ between runs (names of hosts, databases).
pub fn random_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{:06x}", (nanos ^ std::process::id()) & 0xff_ffff)
}

/// Creates an API token with `fluid-controller token create` (as an operator would, on
/// the database of the controller configured by `config`) and returns its secret.
pub fn token_create(
    bin_dir: &Path,
    config: &Path,
    name: &str,
    role: &str,
    agent_id: Option<&str>,
) -> Result<String> {
    let config = config.to_string_lossy().into_owned();
    let mut args = vec![
        "token", "create", "--config", &config, "--role", role, "--name", name,
    ];
    if let Some(a) = agent_id {
        args.extend(["--agent-id", a]);
    }
    let out = std::process::Command::new(bin_dir.join("fluid-controller"))
        .args(&args)
        .output()
        .context("running fluid-controller token create")?;
    if !out.status.success() {
        bail!(
            "fluid-controller token create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let secret = String::from_utf8(out.stdout)?.trim().to_owned();
    if !secret.starts_with("fluid_") || secret.contains('\n') {
        bail!("fluid-controller token create printed {secret:?}");
    }
    Ok(secret)
}

/// A fresh PostgreSQL database `fluid_<suffix>` on the server of
/// `FLUID_TEST_DATABASE_URL`: its name and URL. [`drop_database`] removes it.
pub fn create_database(base: Option<&str>, suffix: &str) -> Result<(String, String)> {
    let base = base.context(
        "FLUID_TEST_DATABASE_URL is unset: the PostgreSQL runs need it (scripts/test.sh sets it)",
    )?;
    let db = format!("fluid_{suffix}");
    let out = std::process::Command::new("su")
        .args(["postgres", "-c", &format!("createdb -O root {db}")])
        .output()?;
    if !out.status.success() {
        bail!("createdb {db}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let url = base.replace("/fluid_test", &format!("/{db}"));
    Ok((db, url))
}

/// Drops database `db` (best effort: the harness is tearing down).
pub fn drop_database(db: &str) {
    let _ = std::process::Command::new("su")
        .args(["postgres", "-c", &format!("dropdb --force {db}")])
        .output();
}
