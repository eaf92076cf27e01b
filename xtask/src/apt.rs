//! Debian packages the tasks need, installed with apt-get where missing.

use std::process::Command;

use anyhow::{Result, bail};

use crate::status;

/// Installs the Debian packages of `packages` whose probe command fails.
pub(crate) fn install_missing(packages: &[(&str, &[&str])]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(_, probe)| crate::output(Command::new(probe[0]).args(&probe[1..])).is_none())
        .map(|(name, _)| *name)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if crate::output(Command::new("apt-get").arg("--version")).is_none() {
        bail!(
            "the tests need these Debian packages and apt-get is not available: {}",
            missing.join(" ")
        );
    }
    status(Command::new("apt-get").args(["update", "-qq"]))?;
    status(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}
