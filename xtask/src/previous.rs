//! The previous release's agent, for the kernel test `upgrade` (a rolling update onto this
//! build's pins): its source is taken from git at [`COMMIT`] and built with its own lock file
//! into `target/previous/`, once; the tests find it through `OBSERVER_PREVIOUS_RELEASE`.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result};

use crate::status;

/// The commit before pinned maps carried a layout version (its pins are version 1). The
/// release before it (ff8a17f) does not load on 6.1, so it cannot be upgraded from there.
const COMMIT: &str = "fcbd6c27a3af846eec5ac130b160956adda35767";

/// The environment variable the kernel tests read.
pub(crate) const ENV: &str = "OBSERVER_PREVIOUS_RELEASE";

/// Builds the previous release's `observer` unless it is built, and returns its path.
pub(crate) fn build() -> Result<PathBuf> {
    let root = std::env::current_dir()?
        .join("target/previous")
        .join(&COMMIT[..12]);
    let bin = root.join("target/debug/observer");
    if bin.exists() {
        return Ok(bin);
    }
    let src = root.join("src");
    if src.exists() {
        std::fs::remove_dir_all(&src)?;
    }
    std::fs::create_dir_all(&src)?;
    let archive = Command::new("git")
        .args(["archive", "--format=tar", COMMIT])
        .output()
        .context("git archive of the previous release (the upgrade test needs the history)")?;
    anyhow::ensure!(
        archive.status.success(),
        "git archive {COMMIT}: {}",
        String::from_utf8_lossy(&archive.stderr).trim()
    );
    let tar = src.join("release.tar");
    std::fs::write(&tar, &archive.stdout)?;
    status(Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(&src))?;
    std::fs::remove_file(&tar)?;
    eprintln!(
        "xtask: building the previous release ({}) for the upgrade test",
        &COMMIT[..12]
    );
    status(
        Command::new("cargo")
            .args([
                "build",
                "--locked",
                "--package",
                "observer",
                "--bin",
                "observer",
            ])
            .arg("--target-dir")
            .arg(root.join("target"))
            .current_dir(&src),
    )?;
    Ok(bin)
}
