//! `cargo xtask bench`: the measured benchmarks, in release mode, each printing a table and
//! writing JSON under `target/bench/`. Never part of `cargo xtask test`'s pass/fail.

use std::process::Command;

use anyhow::Result;

use crate::{setup, status};

pub(crate) fn run() -> Result<()> {
    setup::run()?;
    status(Command::new("cargo").args(["bench", "--package", "observer", "--bench", "store"]))
}
