//! observer's developer tasks, for what cargo alone cannot do:
//!
//! * `cargo xtask setup` — installs the nightly's `rust-src` and bpf-linker 0.10.4 (idempotent,
//!   quick when done).
//! * `cargo xtask run [-- ARGS]` — setup, build, then `observer agent` with the defaults (or ARGS).
//! * `cargo xtask test` — setup, the Debian packages the tests drive, `cargo fmt --check`, clippy
//!   on host and eBPF target with `-D warnings`, then every test, kernel tests included, the
//!   fuzz targets for 20 s each, then the kernel tests again on Debian 12's 6.1 kernel in a
//!   QEMU guest. `--kernel host` runs the
//!   host part only, `--kernel 6.1` the guest part only.
//! * `cargo xtask clippy` — clippy on the host crates, then on the eBPF crate.
//! * `cargo xtask bench` — the measured benchmarks; tables on stdout, JSON in `target/bench/`.
//! * `cargo xtask fuzz [--seconds N]` — every fuzz target of `fuzz/` for N seconds each.
//! * `cargo xtask image` — the container image `localhost/observer:<version>`, with buildah.

use anyhow::Result;
use clap::{Parser, Subcommand};

mod apt;
mod bench;
mod clippy;
mod fuzz;
mod image;
mod previous;
mod run;
mod setup;
mod test;
mod vm;

#[derive(Parser)]
#[command(name = "xtask", about = "observer's developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building the eBPF programs needs: nightly rust-src, bpf-linker 0.10.4.
    Setup,
    /// Set up, build in release mode and run `observer agent` (extra ARGS go to the agent).
    Run {
        /// Arguments for `observer agent`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, check formatting and clippy (host and eBPF), run every test on the host, then
    /// the kernel tests in a QEMU guest running Debian 12's 6.1 kernel.
    Test {
        /// Only one kernel: `host` (the host suite) or `6.1` (the guest).
        #[arg(long, value_name = "KERNEL")]
        kernel: Option<String>,
    },
    /// Run clippy with -D warnings on the host crates and on the eBPF crate.
    Clippy,
    /// Run the measured benchmarks (release mode) and print their tables.
    Bench,
    /// Run every fuzz target of `fuzz/` (cargo-fuzz, nightly) for a bounded time each.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = fuzz::CI_SECONDS)]
        seconds: u64,
    },
    /// Build the container image `localhost/observer:<version>` with buildah (static musl
    /// binary, the Dockerfile's runtime stage) and print its size.
    Image,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::run(),
        Command::Run { args } => run::run(&args),
        Command::Test { kernel } => test::run(kernel.as_deref()),
        Command::Clippy => clippy::run(),
        Command::Bench => bench::run(),
        Command::Fuzz { seconds } => fuzz::run(seconds),
        Command::Image => image::run().map(drop),
    }
}

/// Runs `cmd`, failing with its command line when it does not succeed.
pub(crate) fn status(cmd: &mut std::process::Command) -> Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let st = cmd
        .status()
        .map_err(|e| anyhow::anyhow!("starting {cmd:?}: {e}"))?;
    anyhow::ensure!(st.success(), "{cmd:?} failed: {st}");
    Ok(())
}

/// Standard output of `cmd`, or `None` when it cannot run or fails.
pub(crate) fn output(cmd: &mut std::process::Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}
