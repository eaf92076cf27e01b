//! `cargo xtask bench`: the measured benchmarks, in release mode, each printing a table and
//! writing JSON under `target/bench/`. Never part of `cargo xtask test`'s pass/fail.

use std::process::Command;

use anyhow::Result;

use crate::{setup, status};

/// Debian packages the overhead benchmark drives.
const PACKAGES: &[(&str, &[&str])] = &[
    ("wrk", &["sh", "-c", "command -v wrk"]),
    ("nginx", &["nginx", "-v"]),
];

pub(crate) fn run() -> Result<()> {
    setup::run()?;
    crate::test::install_missing(PACKAGES)?;
    for bench in ["store", "overhead"] {
        status(Command::new("cargo").args(["bench", "--package", "observer", "--bench", bench]))?;
    }
    Ok(())
}
