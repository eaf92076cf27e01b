//! `cargo xtask setup`: what building the eBPF programs needs beyond cargo. Each step checks
//! first and does nothing when it is already done.

use std::process::Command;

use anyhow::{Context as _, Result};

use crate::{output, status};

/// The toolchain that builds the eBPF crate (aya-build's default).
pub(crate) const NIGHTLY: &str = "nightly";
/// bpf-linker 0.10.4 dlopens the toolchain's LLVM 22; later releases need LLVM 23.
const BPF_LINKER_VERSION: &str = "0.10.4";

pub(crate) fn run() -> Result<()> {
    nightly()?;
    rust_src()?;
    bpf_linker()?;
    eprintln!("xtask: setup complete");
    Ok(())
}

fn nightly() -> Result<()> {
    let list = output(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is needed to build the eBPF programs: install it from rustup.rs")?;
    if list.lines().any(|l| l.starts_with(NIGHTLY)) {
        return Ok(());
    }
    status(Command::new("rustup").args(["toolchain", "install", NIGHTLY, "--profile", "minimal"]))
}

fn rust_src() -> Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        NIGHTLY,
    ]))
    .unwrap_or_default();
    if installed.lines().any(|l| l.trim() == "rust-src") {
        return Ok(());
    }
    status(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))
}

fn bpf_linker() -> Result<()> {
    let version = output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if version.split_whitespace().any(|w| w == BPF_LINKER_VERSION) {
        return Ok(());
    }
    if !version.is_empty() {
        eprintln!(
            "xtask: replacing {} with bpf-linker {BPF_LINKER_VERSION}",
            version.trim()
        );
    }
    status(Command::new("cargo").args([
        "install",
        "bpf-linker",
        "--version",
        BPF_LINKER_VERSION,
        "--locked",
        "--force",
    ]))
}
