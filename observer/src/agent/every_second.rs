//! What the agent looks at every second besides the pipeline: whether the on-demand read
//! hook should run, the drop counters (kernel and userspace) into metrics and status, and the
//! programs' rare diagnostics into the log.

use std::{sync::Mutex, time::Duration};

use observer_common::event::Stat;
use tracing::{info, warn};

use crate::{
    api,
    events::reader,
    metrics::{self, Deltas, SelfMetrics},
    probes::{Probes, Purpose},
};

/// `--read-hook on-demand`: the read hook runs while a socket has waited in CLOSE_WAIT
/// [`READS_AFTER_MS`] or more (the live view, as of the tracker's last scan), and until
/// [`READS_QUIET`] after the last one left. Everything the read hook adds is reported for
/// sockets in CLOSE_WAIT only; a socket read while it was detached has no last read (null).
#[derive(Default)]
pub(super) struct ReadsOnDemand {
    /// Since when no socket has waited, while the hook is still attached.
    quiet_since: Option<std::time::Instant>,
}

/// How long a socket waits in CLOSE_WAIT before the on-demand read hook is attached: longer
/// than the microseconds an owner that closes on EOF takes, so a healthy node never pays.
const READS_AFTER_MS: u64 = 1000;
/// How long the on-demand read hook stays attached after the last waiting socket left.
const READS_QUIET: Duration = Duration::from_mins(1);

impl ReadsOnDemand {
    pub(super) fn update(&mut self, probes: &mut Probes, state: &api::State, m: &SelfMetrics) {
        let Some(attached) = probes.reads_on_demand() else {
            return;
        };
        let waiting = state
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .first()
            .is_some_and(|v| v.close_wait_ms >= READS_AFTER_MS);
        let want = if waiting {
            self.quiet_since = None;
            true
        } else if attached {
            self.quiet_since
                .get_or_insert_with(std::time::Instant::now)
                .elapsed()
                < READS_QUIET
        } else {
            false
        };
        if want == attached {
            return;
        }
        if let Err(e) = probes.watch_reads(want) {
            warn!(error = %e, "the on-demand read hook could not be switched");
            return;
        }
        self.quiet_since = None;
        if want {
            info!("read hook attached: a socket has waited in CLOSE_WAIT");
        } else {
            info!("read hook detached: no socket has waited in CLOSE_WAIT for a minute");
        }
        show_reads(probes, state, m);
    }
}

/// Shows whether the on-demand read hook is attached now, in `/api/v1/status` and
/// `observer_probe_attached`; nothing unless `--read-hook on-demand` decides.
pub(super) fn show_reads(probes: &Probes, state: &api::State, m: &SelfMetrics) {
    let Some(attached) = probes.reads_on_demand() else {
        return;
    };
    if let Some(p) = probes.plan().iter().find(|p| p.purpose == Purpose::Reads) {
        m.probe_attached(p, attached);
    }
    let mut s = state
        .status
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(p) = s
        .probes
        .iter_mut()
        .find(|p| p.purpose == Purpose::Reads.as_str())
    {
        p.attached = attached;
        p.on_demand = true;
    }
}

/// Feeds the kernel's per-CPU counters and the userspace drop counters into the metrics and
/// the status, and logs each source when it moves.
#[derive(Default)]
pub(super) struct Drops {
    kernel: Deltas,
    misses: Deltas,
}

impl Drops {
    pub(super) fn update(
        &self,
        probes: &Probes,
        counters: &reader::Counters,
        m: &SelfMetrics,
        status: &Mutex<api::Status>,
    ) {
        use std::sync::atomic::Ordering::Relaxed;
        let kernel = probes.stats();
        let totals: Vec<u64> = kernel.iter().map(|(_, n)| *n).collect();
        let deltas = self.kernel.since_last(&totals);
        for ((stat, total), d) in kernel.iter().zip(&deltas) {
            if *d == 0 {
                continue;
            }
            match stat {
                Stat::ReadFailed => {
                    m.kernel_read_errors.inc_by(*d);
                }
                Stat::FlowsFull => {
                    m.flows_full.inc_by(*d);
                }
                _ => m.lost(stat.name(), *d),
            }
            warn!(counter = stat.name(), total, "kernel-side drops or errors");
        }
        let misses = probes.recursion_misses();
        let totals: Vec<u64> = misses.iter().map(|(_, n)| *n).collect();
        for ((program, total), d) in misses.iter().zip(self.misses.since_last(&totals)) {
            if d > 0 {
                m.program_misses
                    .get_or_create(&metrics::ProgramLabels {
                        program: (*program).to_owned(),
                    })
                    .inc_by(d);
                warn!(
                    program,
                    total, "the kernel skipped runs of a program (recursion)"
                );
            }
        }
        let user = [("decode_error", counters.decode_errors.load(Relaxed))];
        let mut s = status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (name, total) in user {
            let before = s.drops.get(name).copied().unwrap_or(0);
            if total > before {
                m.lost(name, total - before);
                warn!(counter = name, total, "userspace drops");
            }
            s.drops.insert(name.to_owned(), total);
        }
        for (stat, total) in kernel {
            s.drops.insert(stat.name().to_owned(), total);
        }
    }
}

/// Forwards the programs' rare aya-log diagnostics into this log.
pub(super) async fn diagnostics(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    let Ok(mut fd) = crate::sys::readable(logger) else {
        warn!("eBPF diagnostics unavailable: cannot poll their ring buffer");
        return;
    };
    while let Ok(mut guard) = fd.readable_mut().await {
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}
