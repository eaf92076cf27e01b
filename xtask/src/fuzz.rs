//! `cargo xtask fuzz [--seconds N]`: every cargo-fuzz target of `fuzz/` (the parsers that read
//! outside input) for a bounded time each, starting from its seed corpus. `cargo xtask test`
//! runs them for [`CI_SECONDS`] each. A crash fails the run and leaves its input in
//! `fuzz/artifacts/<target>/`; added to `fuzz/corpus/<target>/`, it is replayed by every later
//! run, a regression test.

use std::{fs, path::Path, process::Command};

use anyhow::{Context as _, Result};

use crate::{output, setup::NIGHTLY, status};

/// cargo-fuzz, pinned.
const CARGO_FUZZ: &str = "0.13.2";

/// Every target, as `fuzz/Cargo.toml` names them.
const TARGETS: &[&str] = &["sock_diag", "btf", "query", "cgroup_path", "log_names"];

/// Seconds per target in CI.
pub(crate) const CI_SECONDS: u64 = 20;

/// Runs every target for `seconds`.
pub(crate) fn run(seconds: u64) -> Result<()> {
    install()?;
    for target in TARGETS {
        // libFuzzer adds what it finds to the first directory: a scratch copy, so the seeds
        // under version control stay as written.
        let scratch = Path::new("target/fuzz-corpus").join(target);
        fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
        status(
            Command::new("cargo")
                .args([&format!("+{NIGHTLY}"), "fuzz", "run", target])
                .arg(&scratch)
                .arg(Path::new("fuzz/corpus").join(target))
                .args(["--", &format!("-max_total_time={seconds}")]),
        )?;
    }
    Ok(())
}

/// Installs cargo-fuzz unless that version is there.
fn install() -> Result<()> {
    let version = output(Command::new("cargo").args(["fuzz", "--version"])).unwrap_or_default();
    if version.split_whitespace().nth(1) == Some(CARGO_FUZZ) {
        return Ok(());
    }
    status(Command::new("cargo").args([
        "install",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ,
        "--locked",
        "--force",
    ]))
}
