//! The CLOSE_WAIT promotion iterator (`iter/tcp`, kernel side in `observer-ebpf`'s
//! `close_wait::promote`): loaded and pinned here, read by the CLOSE_WAIT tracker before each
//! scan. Reading the pinned link runs the program over the TCP sockets of the reader's network
//! namespace, so the tracker reads it once in each namespace a task is in.
//!
//! That walk visits every socket on the node (the established hash is shared by all
//! namespaces; its cost is in `docs/performance.md`), so it runs only when a socket has waited
//! for promotion a whole scan interval: each scan advances an epoch (`CW_EPOCH`), the
//! programs count the sockets waiting per entry epoch (`CW_PENDING`), and a storm of
//! connections that each pass through CLOSE_WAIT in microseconds never makes the agent walk
//! its sockets.

use std::{
    io,
    path::{Path, PathBuf},
    time::Duration,
};

use aya::{
    Btf, Ebpf,
    maps::{Array, MapData, PerCpuArray},
    programs::{Iter, links::FdLink},
};
use observer_common::maps::{self, CW_EPOCHS};

/// The program's name in the object.
const PROGRAM: &str = "promote";
/// The pinned link's file name in the pin directory.
const PIN: &str = "close_wait_promote";

/// The pinned iterator link (unpinned, and so detached, on drop) and the epoch maps.
pub struct Promoter {
    path: PathBuf,
    pending: PerCpuArray<MapData, u64>,
    epoch_slot: Array<MapData, u32>,
    epoch: u32,
    /// Namespaces whose iterator read failed, since start.
    failures: u64,
}

impl Promoter {
    /// Loads and attaches the iterator and pins its link in `pin_dir` (replacing one a
    /// previous agent left). An error means this kernel has no TCP iterator (before 5.9) or
    /// refused the program: the programs then insert every CLOSE_WAIT entry on entry.
    pub fn attach(ebpf: &mut Ebpf, btf: &Btf, pin_dir: &Path) -> Result<Self, String> {
        let program: &mut Iter = ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| format!("program {PROGRAM} not in the object"))?
            .try_into()
            .map_err(|e| format!("{e}"))?;
        program.load("tcp", btf).map_err(|e| format!("load: {e}"))?;
        let id = program.attach().map_err(|e| format!("attach: {e}"))?;
        let link: FdLink = program
            .take_link(id)
            .map_err(|e| format!("{e}"))?
            .try_into()
            .map_err(|e| format!("{e}"))?;
        let path = pin_dir.join(PIN);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(format!("removing the stale pin {}: {e}", path.display()));
            }
            _ => {}
        }
        // The pin holds the link (and the program) until `drop` removes it.
        link.pin(&path)
            .map_err(|e| format!("pinning {}: {e}", path.display()))?;
        // Taken last: a map dropped on an error path would be closed under the programs
        // loaded after this.
        let maps = super::take(ebpf, maps::CW_PENDING)
            .and_then(|pending| Ok((pending, super::take(ebpf, maps::CW_EPOCH)?)));
        match maps {
            Ok((pending, epoch_slot)) => Ok(Self {
                path,
                pending,
                epoch_slot,
                epoch: 0,
                failures: 0,
            }),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(e.to_string())
            }
        }
    }

    /// Starts a new epoch, then runs the iterator in each namespace `namespaces` lists if a
    /// socket entered CLOSE_WAIT two epochs ago or earlier and waits still, or if `all` (at
    /// start-up and at stop). Returns the namespaces where reading the iterator failed (a
    /// namespace that vanished before it was entered is not one) and the CPU time the
    /// namespace threads used; the 1st, 2nd, 4th, 8th... failure since start is logged as a
    /// warning, so a lasting one does not flood the log.
    pub fn run(
        &mut self,
        namespaces: impl FnOnce() -> crate::sock_diag::Namespaces,
        all: bool,
    ) -> (u64, Duration) {
        self.epoch = self.epoch.wrapping_add(1);
        let slot = self.epoch % CW_EPOCHS;
        if let Err(e) = self.epoch_slot.set(0, slot, 0) {
            tracing::warn!(error = %e, "writing the promotion epoch");
        }
        // The slot the next epoch reuses: its sockets entered before the previous scan.
        let oldest = (slot + 1) % CW_EPOCHS;
        if !all && self.waiting(oldest) == 0 {
            return (0, Duration::ZERO);
        }
        let visits = crate::sock_diag::visit_each(&namespaces(), |_| {
            // The program writes nothing: reading to the end walks every socket once. Inside
            // the namespace, a failure is the iterator's: passed on, not dropped.
            Ok(std::fs::File::open(&self.path)
                .and_then(|mut link| io::copy(&mut link, &mut io::sink())))
        });
        let mut failed = 0;
        for (netns, res) in visits.answers {
            if let Err(e) = res {
                failed += 1;
                self.failures += 1;
                if !self.failures.is_power_of_two() {
                    continue;
                }
                tracing::warn!(failures = self.failures, netns, link = %self.path.display(), error = %e, "CLOSE_WAIT promotion failed: the namespace's sockets get no leak entry this scan");
            }
        }
        (failed, visits.cpu)
    }

    /// Sockets of epoch slot `slot` still waiting for promotion (the per-CPU counts' sum; a
    /// count that cannot be read is taken as waiting).
    fn waiting(&self, slot: u32) -> u64 {
        self.pending.get(&slot, 0).map_or(1, |per_cpu| {
            per_cpu.iter().fold(0u64, |sum, n| sum.wrapping_add(*n))
        })
    }
}

impl Drop for Promoter {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
