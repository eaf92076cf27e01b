//! `cargo xtask test`: everything CI checks, in the order that fails fastest: setup, the
//! Debian packages the tests drive, formatting, clippy, the container image (`image`), then
//! every test (the kernel tests need root; with `OBSERVER_REQUIRE_BPF=1` a skipped kernel test
//! fails instead of passing), the fuzz targets for a bounded time (`fuzz`), then the kernel
//! tests in a guest running Debian 12's 6.1 kernel (`vm`).

use std::process::Command;

use anyhow::Result;

use crate::{apt, clippy, fuzz, image, previous, setup, setup::NIGHTLY, status, vm};

/// Debian packages the tests use as real clients and servers, with a command proving each is
/// installed.
const PACKAGES: &[(&str, &[&str])] = &[
    ("curl", &["curl", "--version"]),
    (
        "python3-requests",
        &["/usr/bin/python3", "-c", "import requests"],
    ),
    ("python3-redis", &["/usr/bin/python3", "-c", "import redis"]),
    ("redis-server", &["redis-server", "--version"]),
    ("iproute2", &["ss", "-V"]),
    ("prometheus", &["promtool", "--version"]),
    ("wrk", &["sh", "-c", "command -v wrk"]),
    ("nginx", &["nginx", "-v"]),
    ("bpftool", &["sh", "-c", "command -v bpftool"]),
];

/// checkov (PyPI), in a virtualenv of the project's own: the Kubernetes manifest lint.
const CHECKOV: &str = "checkov==3.3.30";
const CHECKOV_VENV: &str = "target/tools/checkov";

/// The guest kernel `cargo xtask test` runs the kernel tests on after the host's.
const GUEST_KERNEL: &str = "6.1";

/// Everything (`kernel` `None`), the host part only (`host`) or one guest kernel only.
pub(crate) fn run(kernel: Option<&str>) -> Result<()> {
    setup::run()?;
    install_packages()?;
    match kernel {
        Some("host") => host(),
        Some(guest) => vm::test(guest),
        None => {
            host()?;
            vm::test(GUEST_KERNEL)
        }
    }
}

/// Formatting, clippy and every test, on the host's kernel.
fn host() -> Result<()> {
    checkov()?;
    status(Command::new("cargo").args([&format!("+{NIGHTLY}"), "fmt", "--all", "--check"]))?;
    clippy::run()?;
    let previous = previous::build()?;
    // The image test (`observer/tests/image.rs`) runs the image built from this tree.
    let image = image::run()?;
    status(
        Command::new("cargo")
            .args(["test", "--all-targets"])
            .env(previous::ENV, previous)
            .env(image::ENV, image),
    )?;
    fuzz::run(fuzz::CI_SECONDS)
}

/// Installs the Debian packages the tests (and the benchmarks) drive, where missing.
pub(crate) fn install_packages() -> Result<()> {
    apt::install_missing(PACKAGES)
}

/// Installs checkov into `target/tools/checkov` unless it is there.
fn checkov() -> Result<()> {
    let bin = std::path::Path::new(CHECKOV_VENV).join("bin");
    if bin.join("checkov").exists() {
        return Ok(());
    }
    status(Command::new("python3").args(["-m", "venv", CHECKOV_VENV]))?;
    status(Command::new(bin.join("pip")).args(["install", "--quiet", CHECKOV]))
}
