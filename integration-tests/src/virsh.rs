//! Looks at libvirt from outside the product, with `virsh`, to check what the agent
//! left behind.

use std::process::Command;

use anyhow::{Context, Result, bail};

fn virsh(args: &[&str]) -> Result<String> {
    let out = Command::new("virsh")
        .args(["-c", "qemu:///system"])
        .args(args)
        .output()
        .context("running virsh")?;
    if !out.status.success() {
        bail!(
            "virsh {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Names of all domains, running or not.
pub fn domains() -> Result<Vec<String>> {
    Ok(virsh(&["list", "--all", "--name"])?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}

/// `running`, `shut off`, …; None when the domain does not exist.
pub fn domain_state(name: &str) -> Option<String> {
    virsh(&["domstate", name]).ok().map(|s| s.trim().to_owned())
}

/// The DHCP lease lines of the `default` network.
pub fn leases() -> Result<String> {
    virsh(&["net-dhcp-leases", "default"])
}
