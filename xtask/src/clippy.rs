//! `cargo xtask clippy`: `-D warnings` on the host crates, then on the eBPF crate for its own
//! target (aya:xtask/src/clippy.rs).

use std::process::Command;

use anyhow::Result;

use crate::{setup::NIGHTLY, status};

pub(crate) fn run() -> Result<()> {
    status(Command::new("cargo").args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    status(Command::new("cargo").args([
        &format!("+{NIGHTLY}"),
        "clippy",
        "--package",
        "observer-ebpf",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--",
        "-D",
        "warnings",
    ]))
}
