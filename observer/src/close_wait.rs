//! CLOSE_WAIT leak tracking (incident 2): the peer closed, the owner never does.
//!
//! The kernel keeps the set of sockets in CLOSE_WAIT in the pinned `CLOSE_WAIT` map, with their
//! true entry times (an agent restart loses nothing). This module owns everything else, in one
//! task ([`run`]) that every event passes through on its way to the writers:
//!
//! * every [`SCAN_EVERY`] (less often when a scan would use more than 1/[`SCAN_SHARE`] of a
//!   core: tens of thousands of sockets in CLOSE_WAIT; never less than every
//!   [`SCAN_EVERY_MAX`]), it reads the map and reports each
//!   socket past the threshold once (`close_wait_leak`; at most [`LEAKS_PER_SCAN`] per scan,
//!   the oldest first), marking the entry so the kernel reports its end
//!   (`close_wait_resolved`) and a restarted agent does not report it again;
//! * at start-up, it finds sockets already in CLOSE_WAIT through `sock_diag` ([`crate::sock_diag`]) in every
//!   network namespace, reports them the same way with `close_wait_lower_bound: true`, and
//!   deletes map entries whose socket left CLOSE_WAIT while no agent was running;
//! * it names owners the programs could not (an accepted socket never read, a socket found at
//!   start-up) from `/proc/*/fd` ([`crate::owners`]), cached per socket.
//!
//! The decisions (stale or kept, due or not, views, leak events, resolved completion) are
//! the pure core `book`, unit-tested; [`Tracker`] is the shell that reads and writes the map,
//! lists sockets and walks `/proc`.

use std::{
    collections::BTreeSet,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use aya::maps::{HashMap as BpfHashMap, IterableMap as _, MapData};
use observer_common::event::CloseWaitEntry;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

mod book;
mod metrics;
mod view;

use book::Book;
pub use metrics::Metrics;
pub use view::{Live, SocketView};

pub use crate::sock_diag::Tuple;
use crate::{
    enrich::Enricher,
    events::{
        Event,
        decode::{Decoder, monotonic_ns, thread_cpu_ns},
    },
    metrics::Labeller,
    owners,
    probes::Promoter,
    sock_diag as diag,
};

/// How often the map is read for leaks.
pub const SCAN_EVERY: Duration = Duration::from_secs(1);
/// A scan uses at most 1/`SCAN_SHARE` of a core: one that uses 50 ms of CPU is followed by
/// the next 2 s later, not 1 s (figures in `docs/performance.md`): the tracker's thread also
/// passes every event on to the writers.
pub const SCAN_SHARE: u32 = 40;
/// However much a scan used, the next one starts at most this long after it: a one-off
/// expensive scan (thousands of leaks reported at once, their owners looked up in `/proc`)
/// must not put the next leak off by minutes. Only scans of hundreds of thousands of sockets
/// in CLOSE_WAIT, each one, would use more than the share at this spacing.
pub const SCAN_EVERY_MAX: Duration = Duration::from_secs(10);
/// Leaks reported per scan at most, oldest first; the others wait for the next scans. Tens of
/// thousands of sockets crossing the threshold at once (a mass leak) are then reported over
/// some seconds instead of as one batch held in memory whole (the memory this saves is in
/// `docs/performance.md`).
pub const LEAKS_PER_SCAN: usize = 4096;
/// `BPF_EXIST`: update only an entry that is still there (the kernel may have removed it).
const BPF_EXIST: u64 = 2;

/// What start-up found and mended.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Startup {
    /// Namespaces whose sockets were listed.
    pub namespaces: usize,
    /// Sockets in CLOSE_WAIT the map did not know.
    pub discovered: usize,
    /// Map entries kept from a previous agent.
    pub kept: usize,
    /// Map entries dropped because their socket had left CLOSE_WAIT.
    pub stale: usize,
}

/// The CLOSE_WAIT state of the agent: the pinned map, the sockets found at start-up, the
/// owners found in `/proc`.
pub struct Tracker {
    map: BpfHashMap<MapData, u64, CloseWaitEntry>,
    threshold: Duration,
    decoder: Decoder,
    /// Sockets found at start-up and owners found in `/proc`.
    book: Book,
    metrics: Metrics,
    labeller: Arc<Labeller>,
    live: Live,
    enricher: Arc<Mutex<Enricher>>,
    /// The `iter/tcp` promotion, where the kernel has it.
    promoter: Option<Promoter>,
}

impl Tracker {
    /// A tracker over the programs' `CLOSE_WAIT` map.
    pub fn new(
        map: BpfHashMap<MapData, u64, CloseWaitEntry>,
        threshold: Duration,
        decoder: Decoder,
        metrics: Metrics,
        labeller: Arc<Labeller>,
        live: Live,
        enricher: Arc<Mutex<Enricher>>,
    ) -> Self {
        Self {
            map,
            threshold,
            decoder,
            book: Book::default(),
            metrics,
            labeller,
            live,
            enricher,
            promoter: None,
        }
    }

    /// Promotes sockets with `promoter` before each scan: the programs then record only the
    /// entry time as a socket enters CLOSE_WAIT (`Config::PROMOTE_CLOSE_WAIT`).
    #[must_use]
    pub fn with_promoter(mut self, promoter: Option<Promoter>) -> Self {
        self.promoter = promoter;
        self
    }

    /// Gives each socket still in CLOSE_WAIT in the namespaces `namespaces` lists its map
    /// entry, if one has waited a scan interval or `all` (see [`Promoter`]); nothing to do
    /// where the programs insert entries on entry. Returns the CPU time its namespace threads
    /// used.
    fn promote(
        &mut self,
        namespaces: impl FnOnce() -> crate::sock_diag::Namespaces,
        all: bool,
    ) -> Duration {
        let Some(p) = &mut self.promoter else {
            return Duration::ZERO;
        };
        let (failed, cpu) = p.run(namespaces, all);
        if failed > 0 {
            self.metrics.promotion_failures.inc_by(failed);
        }
        cpu
    }

    /// The live view the API reads.
    pub fn live(&self) -> Live {
        self.live.clone()
    }

    fn entries(&self) -> Vec<(u64, CloseWaitEntry)> {
        // In batches: one syscall per 4,096 entries (two per entry through aya's iterator,
        // which remains the fallback before Linux 5.6).
        crate::map_read::all(self.map.map(), || {
            self.map.iter().filter_map(Result::ok).collect()
        })
    }

    /// Lists the CLOSE_WAIT sockets of every namespace: those the map lacks are tracked from
    /// now, map entries whose socket is gone are deleted. Call after the programs are attached.
    pub fn startup(&mut self) -> Startup {
        let before = self.entries();
        let namespaces = diag::namespaces();
        let (dumped, sockets) = diag::close_wait_everywhere(&namespaces);
        // A socket that entered CLOSE_WAIT since the programs were attached is in the dump and
        // has its time in `SOCKS`: promoted, it is known, not discovered.
        self.promote(|| namespaces.clone(), true);
        let after = self.entries();
        let dumped: BTreeSet<u32> = dumped.into_iter().collect();
        let (stale, report) = self
            .book
            .startup(&before, &after, &dumped, sockets, monotonic_ns());
        for sk in stale {
            let _ = self.map.remove(&sk);
        }
        report
    }

    /// Reads the map, refreshes the live view and the gauges, and reports every socket past
    /// the threshold that was not reported yet. Also returns the CPU time the scan used, its
    /// namespace threads included.
    pub fn scan(&mut self) -> (Vec<Event>, Duration) {
        let cpu_before = thread_cpu_ns();
        let now = monotonic_ns();
        let threshold = u64::try_from(self.threshold.as_nanos()).unwrap_or(u64::MAX);
        let promotion = self.promote(diag::namespaces, false);
        let entries = self.entries();
        let due = self.book.due(&entries, now, threshold);
        let wanted = self.book.owners_wanted(&due);
        self.book
            .add_owners(owners::find(Path::new("/proc"), &wanted));
        let (out, reported) = self.book.report(due, now, &self.decoder);
        for (sk, e) in reported {
            // Gone meanwhile is fine: the kernel removed it as the socket left CLOSE_WAIT.
            let _ = self.map.insert(sk, e, BPF_EXIST);
        }
        let mut views = self.book.views(&entries, now);
        {
            let mut enricher = self
                .enricher
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for v in &mut views {
                v.owner.workload = enricher.lookup(v.owner.cgroup_id);
            }
        }
        self.metrics.set(&views, &self.labeller, entries.len());
        *self
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = views;
        let cpu = promotion + Duration::from_nanos(thread_cpu_ns().saturating_sub(cpu_before));
        self.metrics.scan_cpu_seconds.set(cpu.as_secs_f64());
        (out, cpu)
    }

    /// Completes a `close_wait_resolved` from the kernel; `None` drops one that reports nothing
    /// (a socket observer never reported).
    pub fn resolve(&mut self, ev: Event) -> Option<Event> {
        self.book.resolve(ev, monotonic_ns())
    }
}

/// Runs the tracker ([`run`]) on a thread of its own: its scans block (map reads, setns
/// sweeps, `/proc` walks), and must not hold up the runtime that reads the ring buffer and
/// answers `/healthz`.
/// `scanned` is told once start-up discovery and the first scan are done: the live view and
/// the gauges are complete from then on.
pub fn spawn(
    tracker: Tracker,
    rx: mpsc::Receiver<Event>,
    tx: mpsc::Sender<Event>,
    scanned: oneshot::Sender<()>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    std::thread::Builder::new()
        .name("observer-close-wait".to_owned())
        .spawn(move || rt.block_on(run(tracker, rx, tx, scanned)))
}

/// The tracker's loop: passes events from `rx` to `tx`, completing CLOSE_WAIT ones, and adds
/// leak events every [`SCAN_EVERY`] (see [`SCAN_SHARE`], [`SCAN_EVERY_MAX`]); tells `scanned` after the first
/// scan. Ends when `rx` closes.
///
/// Scans are spaced by the CPU time they use, not their wall time: on a loaded node a scan
/// waits for a core most of its wall time, which costs nothing and would put leak reports off
/// by tens of seconds.
pub async fn run(
    mut tracker: Tracker,
    mut rx: mpsc::Receiver<Event>,
    tx: mpsc::Sender<Event>,
    scanned: oneshot::Sender<()>,
) {
    let report = tracker.startup();
    info!(
        namespaces = report.namespaces,
        discovered = report.discovered,
        kept = report.kept,
        stale = report.stale,
        "close_wait sockets listed"
    );
    let (first, _) = tracker.scan();
    let _ = scanned.send(());
    for ev in first {
        if tx.send(ev).await.is_err() {
            warn!("event writer stopped");
            return;
        }
    }
    let mut next = tokio::time::Instant::now() + SCAN_EVERY;
    loop {
        let batch = tokio::select! {
            ev = rx.recv() => {
                let Some(ev) = ev else {
                    // The sockets not promoted yet keep their true entry time in the pinned
                    // map for the next agent.
                    tracker.promote(diag::namespaces, true);
                    return;
                };
                tracker.resolve(ev).into_iter().collect()
            },
            () = tokio::time::sleep_until(next) => {
                let started = tokio::time::Instant::now();
                let (leaks, cpu) = tracker.scan();
                next = started + (cpu * SCAN_SHARE).clamp(SCAN_EVERY, SCAN_EVERY_MAX);
                leaks
            }
        };
        for ev in batch {
            if tx.send(ev).await.is_err() {
                warn!("event writer stopped");
                return;
            }
        }
    }
}
