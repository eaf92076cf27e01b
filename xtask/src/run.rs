//! `cargo xtask run`: set up, build in release mode, run the agent.

use std::process::Command;

use anyhow::Result;

use crate::{setup, status};

pub(crate) fn run(args: &[String]) -> Result<()> {
    setup::run()?;
    status(Command::new("cargo").args(["build", "--release", "--package", "observer"]))?;
    let mut agent = Command::new("target/release/observer");
    agent.arg("agent").args(args);
    status(&mut agent)
}
