//! Builds the eBPF programs (`observer-ebpf`, target `bpfel-unknown-none`) with aya-build and
//! leaves the object in `OUT_DIR/observer`, which `probes.rs` embeds with `include_bytes_aligned!`.
//! Needs the nightly toolchain with `rust-src` and `bpf-linker` (`cargo xtask setup`).

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let root_dir = std::path::Path::new(&manifest_dir)
        .parent()
        .context("observer crate has no parent directory")?
        .join("observer-ebpf");
    let root_dir = root_dir
        .to_str()
        .context("observer-ebpf path is not UTF-8")?;
    // aya-build watches only the eBPF crate; the programs also compile in observer-common.
    let common = std::path::Path::new(&manifest_dir).join("../observer-common");
    println!("cargo:rerun-if-changed={}", common.display());
    let package = aya_build::Package {
        name: "observer-ebpf",
        root_dir,
        ..Default::default()
    };
    // The toolchain that builds the programs: `nightly` by default; a dated one (e.g.
    // `nightly-2026-05-19`) where the nightly must match bpf-linker's LLVM, as in the Dockerfile.
    println!("cargo:rerun-if-env-changed=OBSERVER_EBPF_TOOLCHAIN");
    let toolchain = std::env::var("OBSERVER_EBPF_TOOLCHAIN").ok();
    let toolchain = toolchain
        .as_deref()
        .map_or(aya_build::Toolchain::Nightly, aya_build::Toolchain::Custom);
    aya_build::build_ebpf([package], toolchain).context(
        "building the eBPF programs: run `cargo xtask setup` first (nightly rust-src, bpf-linker)",
    )
}
