//! `cargo xtask test --kernel 6.1`: the kernel tests on another kernel than the host's, in a
//! QEMU guest booted by virtme-ng on the host's own root filesystem (read-only, with writable
//! overlays), so the guest runs the binaries cargo just built.
//!
//! Everything is fetched by name from the registries a fresh machine reaches: QEMU, `depmod`
//! and busybox (virtme-ng's initramfs) from Debian, virtme-ng from PyPI into
//! `target/tools/virtme-ng`, and the kernel as Debian's own package, unpacked into
//! `target/kernels/` without being installed. Debian's package lists carry the 6.1 line only.
//!
//! The guest runs under TCG (`--disable-kvm`): on the development and CI machines, themselves
//! VMs, a KVM guest hangs before the kernel prints anything. CPU-heavy steps run 10-50x slower
//! there; the whole kernel suite still fits (about five minutes), with the tests' patience
//! scaled by [`TIME_SCALE`]. Results come back through a directory the guest may write
//! (`target/vm/<kernel>/`): the console carries only the boot log.

use std::{
    fs,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{apt::install_missing, output, status};

/// Debian packages the guest needs, with a command proving each is installed.
const PACKAGES: &[(&str, &[&str])] = &[
    ("qemu-system-x86", &["qemu-system-x86_64", "--version"]),
    ("kmod", &["depmod", "--version"]),
    ("busybox-static", &["sh", "-c", "command -v busybox"]),
];

/// virtme-ng, pinned: the release whose console fallback and `--rwdir` were measured here.
const VIRTME_NG: &str = "virtme-ng==1.42";
const VIRTME_VENV: &str = "target/tools/virtme-ng";

/// How much longer the tests wait in the guest than on the host (`OBSERVER_TEST_TIME_SCALE`).
const TIME_SCALE: &str = "6";

/// A kernel line the guest can boot.
struct Line {
    /// `6.1`.
    version: &'static str,
}

impl Line {
    fn parse(name: &str) -> Result<Self> {
        match name {
            "6.1" => Ok(Self { version: "6.1" }),
            other => bail!(
                "no guest kernel {other:?}: Debian's package lists carry the 6.1 line only \
                 (try --kernel 6.1)"
            ),
        }
    }
}

/// Builds the kernel tests, boots the guest kernel `kernel` and runs them all inside it with
/// `OBSERVER_REQUIRE_BPF=1`; fails unless `observer check` and every test pass there.
pub(crate) fn test(kernel: &str) -> Result<()> {
    let line = Line::parse(kernel)?;
    install_missing(PACKAGES)?;
    let vng = virtme_ng()?;
    let image = kernel_image(&line)?;
    let tests = build_kernel_tests()?;
    let previous = crate::previous::build()?;
    let out = PathBuf::from(format!("target/vm/{}", line.version));
    if out.exists() {
        fs::remove_dir_all(&out).with_context(|| format!("clearing {}", out.display()))?;
    }
    fs::create_dir_all(&out)?;
    let script = out.join("guest.sh");
    fs::write(&script, guest_script(&tests, &previous, &out))?;
    let cwd = std::env::current_dir()?;
    eprintln!(
        "xtask: booting {} under TCG to run the kernel tests",
        image.display()
    );
    let console = fs::File::create(out.join("console.log"))?;
    let mut guest = Command::new(&vng)
        .arg("--run")
        .arg(&image)
        .args(["--disable-kvm", "--force-9p", "--verbose"])
        .args(["--memory", "4G", "--cpus", "2"])
        .arg("--rwdir")
        .arg(cwd.join(&out))
        .arg("--cwd")
        .arg(&cwd)
        .arg("--")
        .arg(format!("bash {}", script.display()))
        .env("PATH", path_with(vng.parent()))
        .stdout(console.try_clone()?)
        .stderr(console)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", vng.display()))?;
    let booted = wait_guest(&mut guest, &out.join("console.log"))?;
    report(&out, booted)
}

/// How long the guest may run; its whole suite takes about 10 minutes under TCG.
const GUEST_LIMIT: std::time::Duration = std::time::Duration::from_mins(25);
/// Soft lockups reported on the console after which the guest is given up: its CPUs are
/// stuck in the kernel and the suite will not finish.
const LOCKUPS: usize = 20;

/// Waits for the guest to exit; kills it (QEMU included: its process group) after
/// [`GUEST_LIMIT`] or once its kernel reports [`LOCKUPS`] soft lockups, naming why.
fn wait_guest(guest: &mut std::process::Child, console: &Path) -> Result<bool> {
    let started = std::time::Instant::now();
    loop {
        if let Some(st) = guest.try_wait()? {
            return Ok(st.success());
        }
        let log = fs::read_to_string(console).unwrap_or_default();
        let lockups = log.matches("BUG: soft lockup").count();
        if started.elapsed() > GUEST_LIMIT || lockups >= LOCKUPS {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", guest.id())])
                .status();
            let _ = guest.wait();
            let last = log
                .lines()
                .rfind(|l| l.contains("soft lockup") || l.contains("RIP: 0010"))
                .unwrap_or("none");
            bail!(
                "the guest was stopped after {:?}: {lockups} soft lockups on its console (last: \
                 {last}); console: {}",
                started.elapsed(),
                console.display()
            );
        }
        std::thread::sleep(std::time::Duration::from_secs(5));
    }
}

/// Prints what the guest wrote and fails unless `check` and the tests passed.
fn report(out: &Path, booted: bool) -> Result<()> {
    let read = |name: &str| fs::read_to_string(out.join(name)).unwrap_or_default();
    let (check, tests) = (read("check.log"), read("tests.log"));
    eprintln!("xtask: guest kernel {}", read("uname").trim());
    eprintln!("{check}");
    eprintln!("{tests}");
    let rc = |name: &str| read(name).trim().parse::<i32>().ok();
    if rc("check.rc").is_none() {
        bail!(
            "the guest did not run its script (vng exit ok: {booted}); console: {}",
            out.join("console.log").display()
        );
    }
    ensure!(
        rc("check.rc") == Some(0),
        "observer check failed in the guest"
    );
    ensure!(
        rc("tests.rc") == Some(0),
        "kernel tests failed in the guest (console: {})",
        out.join("console.log").display()
    );
    Ok(())
}

/// The guest's script: bpffs mounted once (agents started side by side would each mount it,
/// one over the other's pins), the open-file limit a node has, the kernel release, `observer
/// check`, then the tests, each with its exit code in a file of its own.
fn guest_script(tests: &Path, previous: &Path, out: &Path) -> String {
    let out = out.display();
    let env = crate::previous::ENV;
    format!(
        "set -u\n\
         mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf\n\
         ulimit -Hn 65536; ulimit -n 65536\n\
         uname -r > {out}/uname\n\
         ./target/debug/observer check > {out}/check.log 2>&1; echo $? > {out}/check.rc\n\
         OBSERVER_REQUIRE_BPF=1 OBSERVER_TEST_TIME_SCALE={TIME_SCALE} {env}={previous} {tests} \
         --test-threads 2 > {out}/tests.log 2>&1; echo $? > {out}/tests.rc\n",
        tests = tests.display(),
        previous = previous.display(),
    )
}

/// `vng` from a virtualenv of the project's own, installed there unless it is.
fn virtme_ng() -> Result<PathBuf> {
    let bin = Path::new(VIRTME_VENV).join("bin");
    let vng = bin.join("vng");
    if !vng.exists() {
        status(Command::new("python3").args(["-m", "venv", VIRTME_VENV]))?;
        status(Command::new(bin.join("pip")).args(["install", "--quiet", VIRTME_NG]))?;
    }
    Ok(std::env::current_dir()?.join(vng))
}

/// `PATH` with `dir` first: `vng` runs `virtme-run` from its own virtualenv.
fn path_with(dir: Option<&Path>) -> String {
    let rest = std::env::var("PATH").unwrap_or_default();
    match dir {
        Some(d) => format!("{}:{rest}", d.display()),
        None => rest,
    }
}

/// The newest Debian kernel image package of `line`, downloaded and unpacked into
/// `target/kernels/<package>` unless it is; returns its `vmlinuz`.
fn kernel_image(line: &Line) -> Result<PathBuf> {
    let package = newest_package(line)?;
    let dir = PathBuf::from(format!("target/kernels/{package}"));
    let boot = dir.join("root/boot");
    if let Some(image) = vmlinuz(&boot) {
        return Ok(image);
    }
    fs::create_dir_all(&dir)?;
    status(
        Command::new("apt-get")
            .args(["download", "-qq", &package])
            .current_dir(&dir),
    )?;
    let deb = fs::read_dir(&dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .with_context(|| format!("apt-get download {package} left no .deb"))?;
    status(
        Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(dir.join("root")),
    )?;
    fs::remove_file(&deb)?;
    vmlinuz(&boot).with_context(|| format!("{package} has no vmlinuz in /boot"))
}

fn vmlinuz(boot: &Path) -> Option<PathBuf> {
    fs::read_dir(boot)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
}

/// `linux-image-<line>.0-<n>-amd64` with the highest `n` Debian's lists name.
fn newest_package(line: &Line) -> Result<String> {
    let pattern = format!(
        "^linux-image-{}\\.0-[0-9]+-amd64$",
        line.version.replace('.', "\\.")
    );
    let search = || output(Command::new("apt-cache").args(["search", "--names-only", &pattern]));
    let mut found = search().unwrap_or_default();
    if found.trim().is_empty() {
        status(Command::new("apt-get").args(["update", "-qq"]))?;
        found = search().unwrap_or_default();
    }
    newest(&found, line.version).with_context(|| {
        format!(
            "Debian's package lists name no linux-image-{}.0-<n>-amd64",
            line.version
        )
    })
}

/// The package of `apt-cache search` output with the highest ABI number.
fn newest(search: &str, version: &str) -> Option<String> {
    let prefix = format!("linux-image-{version}.0-");
    search
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|name| {
            let abi = name.strip_prefix(&prefix)?.strip_suffix("-amd64")?;
            Some((abi.parse::<u32>().ok()?, name.to_owned()))
        })
        .max()
        .map(|(_, name)| name)
}

/// Builds the kernel test binary (and the agent it runs) and returns the test binary's path.
fn build_kernel_tests() -> Result<PathBuf> {
    let json = output(Command::new("cargo").args([
        "test",
        "--package",
        "observer",
        "--test",
        "kernel",
        "--no-run",
        "--message-format=json",
    ]))
    .context("building the kernel tests")?;
    executable(&json).context("cargo named no kernel test executable")
}

/// The `"executable"` of the last compiler artifact in cargo's JSON messages that has one.
fn executable(json: &str) -> Option<PathBuf> {
    json.lines()
        .filter(|l| l.contains("\"reason\":\"compiler-artifact\""))
        .filter_map(|l| {
            let rest = l.split("\"executable\":\"").nth(1)?;
            Some(PathBuf::from(rest.split('"').next()?))
        })
        .next_back()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_kernel_package_is_chosen_by_abi_number() {
        let search = "linux-image-6.1.0-9-amd64 - Linux 6.1 for 64-bit PCs (signed)\n\
                      linux-image-6.1.0-57-amd64 - Linux 6.1 for 64-bit PCs (signed)\n\
                      linux-image-6.1.0-57-amd64-dbg - debug symbols\n\
                      linux-image-6.1.0-12-cloud-amd64 - cloud\n";
        assert_eq!(
            newest(search, "6.1").as_deref(),
            Some("linux-image-6.1.0-57-amd64")
        );
        assert_eq!(newest("", "6.1"), None);
    }

    #[test]
    fn only_known_lines_boot() {
        assert!(Line::parse("6.1").is_ok());
        let e = Line::parse("5.10").err().unwrap().to_string();
        assert!(e.contains("6.1 line only"), "{e}");
    }

    #[test]
    fn the_test_executable_is_read_from_cargo_messages() {
        let json = "{\"reason\":\"compiler-artifact\",\"executable\":null}\n\
                    {\"reason\":\"compiler-artifact\",\"target\":{},\"executable\":\"/r/target/debug/deps/kernel-ab12\",\"fresh\":true}\n\
                    {\"reason\":\"build-finished\",\"success\":true}\n";
        assert_eq!(
            executable(json),
            Some(PathBuf::from("/r/target/debug/deps/kernel-ab12"))
        );
    }
}
