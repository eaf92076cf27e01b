//! `cargo xtask bench`: the measured benchmarks, in release mode, each printing a table and
//! writing JSON under `target/bench/`. Never part of `cargo xtask test`'s pass/fail.

use std::process::Command;

use anyhow::Result;

use crate::{setup, status};

pub(crate) fn run() -> Result<()> {
    setup::run()?;
    // The overhead benchmark drives wrk and nginx, which the tests install too.
    crate::test::install_packages()?;
    for bench in ["store", "abuse", "overhead"] {
        status(Command::new("cargo").args(["bench", "--package", "observer", "--bench", bench]))?;
    }
    Ok(())
}
