//! Facts about the host the agent runs on: privileges, kernel release, tracefs.

use std::path::{Path, PathBuf};

mod caps;

pub use caps::{Missing, NotPrivileged, Privileges};

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".to_owned(), |s| s.trim().to_owned())
}

const TRACEFS: &str = "/sys/kernel/tracing";
const TRACEFS_DEBUGFS: &str = "/sys/kernel/debug/tracing";

/// Where tracefs is mounted, mounting it at `/sys/kernel/tracing` when it is not. `None` when
/// it cannot be had: only the classic tracepoint fallbacks need it.
pub fn tracefs() -> Option<PathBuf> {
    let usable = |p: &Path| p.join("events").is_dir();
    for p in [TRACEFS, TRACEFS_DEBUGFS] {
        if usable(Path::new(p)) {
            return Some(PathBuf::from(p));
        }
    }
    let mounted = crate::sys::mount(c"tracefs", c"/sys/kernel/tracing");
    if mounted.is_ok() && usable(Path::new(TRACEFS)) {
        tracing::info!(path = TRACEFS, "mounted tracefs");
        return Some(PathBuf::from(TRACEFS));
    }
    None
}

/// `BPF_FS_MAGIC` from `include/uapi/linux/magic.h`.
const BPF_FS_MAGIC: u64 = 0xcafe_4a11;

/// bpffs is not usable for pinning.
#[derive(Debug, thiserror::Error)]
#[error("pin directory {dir}: {why}")]
pub struct PinDirError {
    dir: String,
    why: String,
}

/// Makes `dir` a directory on bpffs, mounting bpffs on its parent when that is a plain
/// directory (as `/sys/fs/bpf` is on hosts that do not mount it).
pub fn pin_dir(dir: &Path) -> Result<(), PinDirError> {
    let err = |why: String| PinDirError {
        dir: dir.display().to_string(),
        why,
    };
    let parent = dir
        .parent()
        .ok_or_else(|| err("has no parent directory".to_owned()))?;
    if !is_bpffs(parent) {
        let target = std::ffi::CString::new(parent.as_os_str().as_encoded_bytes())
            .map_err(|_| err("path contains NUL".to_owned()))?;
        if let Err(e) = crate::sys::mount(c"bpf", &target) {
            return Err(err(format!(
                "{} is not on bpffs and mounting bpffs there failed: {e}",
                parent.display(),
            )));
        }
        tracing::info!(path = %parent.display(), "mounted bpffs");
    }
    std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    if !is_bpffs(dir) {
        return Err(err("is not on bpffs".to_owned()));
    }
    Ok(())
}

fn is_bpffs(p: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    crate::sys::fs_magic(&c).is_ok_and(|t| t == BPF_FS_MAGIC)
}
