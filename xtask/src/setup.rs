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
    components()?;
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

/// `rust-src` to build `core` for the BPF target; rustfmt and clippy for `cargo xtask test`.
fn components() -> Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        NIGHTLY,
    ]))
    .unwrap_or_default();
    let missing: Vec<&str> = ["rust-src", "rustfmt", "clippy"]
        .into_iter()
        .filter(|c| !has_component(&installed, c))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    status(
        Command::new("rustup")
            .args(["component", "add", "--toolchain", NIGHTLY])
            .args(&missing),
    )
}

fn bpf_linker() -> Result<()> {
    let version = output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if is_version(&version, BPF_LINKER_VERSION) {
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

/// Whether `--version` output names exactly `want` (`bpf-linker 0.10.4`, not `0.10.40`).
fn is_version(output: &str, want: &str) -> bool {
    output.split_whitespace().any(|w| w == want)
}

/// Whether `component` is in `rustup component list --installed` output (`rust-src`, or
/// `clippy-x86_64-unknown-linux-gnu` for `clippy`).
fn has_component(installed: &str, component: &str) -> bool {
    installed.lines().map(str::trim).any(|l| {
        l == component
            || l.strip_prefix(component)
                .is_some_and(|rest| rest.starts_with('-'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bpf_linker_version_must_match_exactly() {
        assert!(is_version("bpf-linker 0.10.4\n", "0.10.4"));
        assert!(!is_version("bpf-linker 0.10.40\n", "0.10.4"));
        assert!(!is_version("bpf-linker 0.11.0\n", "0.10.4"));
        assert!(!is_version("", "0.10.4"));
    }

    #[test]
    fn components_are_found_with_or_without_target_suffix() {
        let list = "cargo-x86_64-unknown-linux-gnu\nclippy-x86_64-unknown-linux-gnu\nrust-src\n";
        assert!(has_component(list, "rust-src"));
        assert!(has_component(list, "clippy"));
        assert!(!has_component(list, "rustfmt"));
        assert!(!has_component("rust-src-extra\n", "rust-srcx"));
    }
}
