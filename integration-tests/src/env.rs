//! What the integration tests need from the machine, read from the environment that
//! `scripts/test.sh` sets up.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

#[derive(Debug, Clone)]
pub struct TestEnv {
    /// Directory holding `fluid-controller` and `fluid-agent`.
    pub bin_dir: PathBuf,
    /// Golden image directory (disk.qcow2, vmlinuz, initrd.img).
    pub image_dir: PathBuf,
    /// PostgreSQL URL for the PostgreSQL runs.
    pub database_url: Option<String>,
    /// A local Debian package repository (`scripts/build-apt-mirror.sh`) for tests whose
    /// sandboxes install packages.
    pub apt_mirror_dir: Option<PathBuf>,
}

impl TestEnv {
    /// Reads the environment; fails with what is missing.
    pub fn load() -> Result<Self> {
        let bin_dir = bin_dir()?;
        let image_dir =
            PathBuf::from(std::env::var_os("FLUID_GOLDEN_IMAGE_DIR").context(
                "FLUID_GOLDEN_IMAGE_DIR is unset: run these tests through scripts/test.sh",
            )?);
        if !image_dir.join("disk.qcow2").exists() {
            bail!("no golden image in {}", image_dir.display());
        }
        if !nix_is_root() {
            bail!("integration tests need root (libvirt, network namespaces)");
        }
        Ok(Self {
            bin_dir,
            image_dir,
            database_url: std::env::var("FLUID_TEST_DATABASE_URL").ok(),
            apt_mirror_dir: std::env::var_os("FLUID_APT_MIRROR_DIR").map(PathBuf::from),
        })
    }
}

/// The directory of `fluid-controller` and `fluid-agent`: `FLUID_BIN_DIR`, or the
/// target directory this test or bench binary was built in.
pub fn bin_dir() -> Result<PathBuf> {
    let bin_dir = match std::env::var_os("FLUID_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        // A test runs from target/debug/deps/, a bench binary from target/debug/.
        None => {
            let exe = std::env::current_exe()?;
            let dir = exe.parent().context("cannot locate the target directory")?;
            if dir.join("fluid-controller").exists() {
                dir.to_owned()
            } else {
                dir.parent()
                    .map(PathBuf::from)
                    .context("cannot locate the target directory")?
            }
        }
    };
    for bin in ["fluid-controller", "fluid-agent"] {
        if !bin_dir.join(bin).exists() {
            bail!(
                "{} is missing: run `cargo build --workspace` (or scripts/test.sh)",
                bin_dir.join(bin).display()
            );
        }
    }
    Ok(bin_dir)
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1))
                == Some("0")
        })
        .unwrap_or(false)
}
