//! `cargo xtask image`: builds `localhost/observer:<version>` with buildah, no registry needed.
//! The static binary (musl) is built here, then the `Dockerfile`'s runtime stage runs with that
//! binary standing in for its `build` stage, so the image is made by the release's own recipe.

use std::{fs, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{apt, output, setup, status};

/// The target of the static binary.
const MUSL: &str = "x86_64-unknown-linux-musl";
/// Where the binary is staged as the `build` stage's root, and the (empty) build context.
const STAGE: &str = "target/image/build";
const CONTEXT: &str = "target/image/context";

/// Names the image for `observer/tests/image.rs`.
pub(crate) const ENV: &str = "OBSERVER_IMAGE";

/// Debian packages the build and the image test use.
pub(crate) const PACKAGES: &[(&str, &[&str])] = &[
    ("musl-tools", &["musl-gcc", "--version"]),
    ("buildah", &["buildah", "--version"]),
    ("podman", &["podman", "--version"]),
    ("runc", &["runc", "--version"]),
];

/// The image's name: `localhost/observer:<workspace version>`.
pub(crate) fn name() -> Result<String> {
    let manifest = fs::read_to_string("Cargo.toml").context("reading Cargo.toml")?;
    let version = workspace_version(&manifest).context("no version in Cargo.toml")?;
    Ok(format!("localhost/observer:{version}"))
}

/// Builds the image and prints its name and size.
pub(crate) fn run() -> Result<String> {
    setup::run()?;
    apt::install_missing(PACKAGES)?;
    let installed =
        output(Command::new("rustup").args(["target", "list", "--installed"])).unwrap_or_default();
    if !installed.lines().any(|l| l.trim() == MUSL) {
        status(Command::new("rustup").args(["target", "add", MUSL]))?;
    }
    status(Command::new("cargo").args([
        "build",
        "--release",
        "--locked",
        "--package",
        "observer",
        "--target",
        MUSL,
    ]))?;
    let binary = format!("target/{MUSL}/release/observer");
    for dir in [STAGE, CONTEXT] {
        fs::create_dir_all(dir).with_context(|| format!("creating {dir}"))?;
    }
    fs::copy(&binary, Path::new(STAGE).join("observer"))
        .with_context(|| format!("staging {binary}"))?;
    let name = name()?;
    let id = |name: &str| {
        output(Command::new("podman").args(["image", "inspect", "--format", "{{.Id}}", name]))
    };
    let previous = id(&name);
    status(Command::new("buildah").args([
        "build",
        "--quiet",
        "--layers=false",
        "--file",
        "Dockerfile",
        "--target",
        "runtime",
        "--build-context",
        &format!("build={STAGE}"),
        "--tag",
        &name,
        CONTEXT,
    ]))?;
    // The image this one replaces keeps no name: remove it rather than leave it dangling (it
    // stays while a container uses it).
    if let Some(old) = previous.filter(|old| id(&name).as_ref() != Some(old)) {
        let _ = output(Command::new("podman").args(["rmi", old.trim()]));
    }
    let size =
        output(Command::new("podman").args(["image", "inspect", "--format", "{{.Size}}", &name]))
            .context("podman cannot inspect the image it built")?;
    let bytes: u64 = size.trim().parse().unwrap_or(0);
    if bytes == 0 {
        bail!("podman reports no size for {name}");
    }
    eprintln!("xtask: built {name}, {:.1} MB", bytes as f64 / 1e6);
    Ok(name)
}

/// `version = "..."` of `[workspace.package]` in the workspace manifest.
fn workspace_version(manifest: &str) -> Option<&str> {
    let section = manifest.split("[workspace.package]").nth(1)?;
    section
        .lines()
        .take_while(|l| !l.starts_with('['))
        .find_map(|l| l.strip_prefix("version = \""))?
        .strip_suffix('"')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_comes_from_the_workspace_package() {
        let manifest = "[workspace]\nmembers = []\n\n[workspace.package]\nversion = \"1.2.3\"\n\n[workspace.dependencies]\nfoo = { version = \"9\" }\n";
        assert_eq!(workspace_version(manifest), Some("1.2.3"));
        assert_eq!(
            workspace_version("[workspace.dependencies]\nversion = \"9\"\n"),
            None
        );
    }
}
