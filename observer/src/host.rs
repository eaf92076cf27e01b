//! Facts about the host the agent runs on: privileges, kernel release, tracefs.

use std::path::{Path, PathBuf};

/// `CAP_SYS_ADMIN`, `CAP_PERFMON` and `CAP_BPF` bit numbers (`include/uapi/linux/capability.h`).
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The process may not load tracing programs.
#[derive(Debug, thiserror::Error)]
#[error(
    "observer needs root or CAP_BPF and CAP_PERFMON to load its eBPF programs (this process has {have}); run it as root or in a privileged container"
)]
pub struct NotPrivileged {
    have: String,
}

/// Checks the effective capabilities in `/proc/self/status` before anything is loaded.
pub fn require_privileges() -> Result<(), NotPrivileged> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let caps = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .unwrap_or(0);
    let has = |bit: u32| caps & (1 << bit) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    let mut have: Vec<&str> = Vec::new();
    for (bit, name) in [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")] {
        if has(bit) {
            have.push(name);
        }
    }
    Err(NotPrivileged {
        have: if have.is_empty() {
            "neither".to_owned()
        } else {
            format!("only {}", have.join(" and "))
        },
    })
}

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
    let target = c"/sys/kernel/tracing";
    // SAFETY: NUL-terminated constant strings; mount(2) has no other memory preconditions.
    let rc = unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 && usable(Path::new(TRACEFS)) {
        tracing::info!(path = TRACEFS, "mounted tracefs");
        return Some(PathBuf::from(TRACEFS));
    }
    None
}
