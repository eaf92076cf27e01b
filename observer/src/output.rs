//! The sink: every event ends here, on a thread of its own (SQLite and stdout writes block).
//! Each batch (whatever the channel holds) is numbered and appended to the store in one
//! transaction, counted into the detector counters, and written to the JSON-lines log, one
//! object per line, the same object the API returns. A failed store write is counted
//! (`observer_events_lost_total{source="store_error"}`) and nothing else stops.

use std::{
    io::Write,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use prometheus_client::{metrics::counter::Counter, registry::Registry};
use tokio::sync::mpsc;

use crate::{
    enrich::Enricher,
    events::{Event, Kind, Owner, link},
    metrics::{Labeller, PeerSeries, SelfMetrics, Totals, WorkloadPeer},
    owners,
    store::Store,
};

/// Where events are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogEvents {
    /// One JSON object per line on standard output.
    Stdout,
    /// Not written (events still count and are stored).
    None,
}

/// Detector counters, one family per event kind, by workload and peer.
#[derive(Clone)]
pub struct Metrics {
    rst_on_close: PeerSeries<WorkloadPeer, Counter>,
    linger_abort: PeerSeries<WorkloadPeer, Counter>,
    close_wait_leaks: PeerSeries<WorkloadPeer, Counter>,
    resets_received: PeerSeries<WorkloadPeer, Counter>,
    connects_refused: PeerSeries<WorkloadPeer, Counter>,
    /// The linking stage's counters, registered here with the other event counters.
    pub link: link::Metrics,
}

impl Metrics {
    /// Registers `observer_rst_on_close_total`, `observer_linger_abort_total` and
    /// `observer_close_wait_leaks_total`, `observer_resets_received_total` and
    /// `observer_connects_refused_total`.
    pub fn register(registry: &mut Registry, labeller: &Labeller) -> Self {
        let m = Self {
            rst_on_close: PeerSeries::new(labeller),
            linger_abort: PeerSeries::new(labeller),
            close_wait_leaks: PeerSeries::new(labeller),
            resets_received: PeerSeries::new(labeller),
            connects_refused: PeerSeries::new(labeller),
            link: link::Metrics::register(registry),
        };
        registry.register(
            "rst_on_close",
            "Sockets closed by their owner with unread bytes, so the kernel sent RST instead of FIN",
            m.rst_on_close.family(),
        );
        registry.register(
            "linger_abort",
            "Sockets closed with SO_LINGER timeout 0 and nothing unread (deliberate aborts)",
            m.linger_abort.family(),
        );
        registry.register(
            "close_wait_leaks",
            "Sockets that stayed in CLOSE_WAIT longer than the threshold",
            m.close_wait_leaks.family(),
        );
        registry.register(
            "resets_received",
            "RSTs received on established or closing connections: the workload's next read or \
             write failed with ECONNRESET",
            m.resets_received.family(),
        );
        registry.register(
            "connects_refused",
            "connect() calls answered with RST (nothing listening, or a full backlog)",
            m.connects_refused.family(),
        );
        m
    }

    fn count(&self, labeller: &Labeller, e: &Event) {
        let family = match e.kind {
            Kind::RstOnClose => &self.rst_on_close,
            Kind::LingerAbort => &self.linger_abort,
            Kind::CloseWaitLeak => &self.close_wait_leaks,
            Kind::ResetReceived => &self.resets_received,
            Kind::ConnectRefused => &self.connects_refused,
            // Pool-health events are summaries of series exported as they are measured.
            Kind::CloseWaitResolved
            | Kind::ConnectionChurn
            | Kind::ConnectionExplosion
            | Kind::PortPressure => return,
        };
        family.with(&labeller.of_event(e), |c| {
            c.inc();
        });
    }
}

/// Everything the sink needs.
pub struct Sink {
    /// The history.
    pub store: Store,
    /// Whether to write JSON lines.
    pub mode: LogEvents,
    /// Counters by kind.
    pub metrics: Metrics,
    /// Peer labels.
    pub labeller: Arc<Labeller>,
    /// Loss counters.
    pub self_metrics: SelfMetrics,
    /// Event totals for status.
    pub totals: Arc<Totals>,
    /// `--retention`.
    pub retention: Duration,
    /// `--max-events`.
    pub max_events: u64,
    /// Workload attribution, shared with the CLOSE_WAIT tracker.
    pub enricher: Arc<std::sync::Mutex<Enricher>>,
}

/// How often the history is pruned.
const PRUNE_EVERY: Duration = Duration::from_mins(1);

impl Sink {
    /// Consumes `rx` until it closes, writing to `out`. The history is pruned at start and
    /// then every [`PRUNE_EVERY`] by a thread of its own, whether events arrive or not.
    pub fn run(mut self, mut rx: mpsc::Receiver<Event>, mut out: impl Write) {
        let _pruning = self.start_pruning();
        let mut buf = Vec::with_capacity(64 * 1024);
        while let Some(first) = rx.blocking_recv() {
            let mut batch = vec![first];
            while let Ok(e) = rx.try_recv() {
                batch.push(e);
            }
            find_owners(&mut batch);
            {
                // Short: cache hits, or one rate-limited rescan; no await here (a thread).
                let mut enricher = self
                    .enricher
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                for e in &mut batch {
                    e.owner.workload = enricher.lookup(e.owner.cgroup_id);
                    if let Some(l) = &e.linked {
                        let peer = enricher.lookup(l.cgroup_id);
                        link::describe(e, peer);
                    }
                }
            }
            // Refused connects are counted, never stored or logged.
            batch.retain(|e| {
                let refused = e.kind == Kind::ConnectRefused;
                if refused {
                    self.metrics.count(&self.labeller, e);
                }
                !refused
            });
            if batch.is_empty() {
                continue;
            }
            if let Err(e) = self.store.append(&mut batch) {
                self.self_metrics.lost("store_error", batch.len() as u64);
                tracing::warn!(error = %e, events = batch.len(), "event store write failed; events still logged and counted");
            }
            for e in &batch {
                self.metrics.count(&self.labeller, e);
                if self.mode == LogEvents::Stdout {
                    let _ = serde_json::to_writer(&mut buf, e);
                    buf.push(b'\n');
                }
            }
            self.totals
                .events
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            if !buf.is_empty() {
                if let Err(e) = out.write_all(&buf).and_then(|()| out.flush()) {
                    tracing::warn!(error = %e, "writing the event log failed");
                }
                buf.clear();
            }
        }
    }

    /// Prunes once, then starts the pruning thread; it stops when the returned sender drops.
    fn start_pruning(&self) -> Option<std::sync::mpsc::Sender<()>> {
        let (retention, max_events) = (self.retention, self.max_events);
        prune(|a, b, c| self.store.prune(a, b, c), retention, max_events);
        let pruner = match self.store.pruner() {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "no pruning thread: the history is pruned at start only");
                return None;
            }
        };
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name("prune".to_owned())
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(PRUNE_EVERY)
                {
                    prune(|a, b, c| pruner.prune(a, b, c), retention, max_events);
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no pruning thread: the history is pruned at start only");
        }
        Some(stop)
    }
}

/// Owners the programs did not record (a reset received on an accepted socket never read
/// while the read hook ran: the event has the listener's owner, or none, and the socket's
/// inode), the events' own and their linked ends', found with one walk of `/proc` for the
/// whole batch. A socket its owner closed meanwhile keeps what the programs had.
fn find_owners(batch: &mut [Event]) {
    let unknown = |inode: u64| (inode != 0).then_some(inode);
    let wanted: std::collections::HashSet<u64> = batch
        .iter()
        .flat_map(|e| {
            let linked = e.linked.as_ref().and_then(|l| unknown(l.inode));
            [unknown(e.inode), linked]
        })
        .flatten()
        .collect();
    if wanted.is_empty() {
        return;
    }
    let found = owners::find(std::path::Path::new("/proc"), &wanted);
    for e in batch {
        if let Some(o) = unknown(e.inode).and_then(|i| found.get(&i)) {
            e.owner = Owner::held_by(o);
        }
        if let Some(l) = e.linked.as_mut()
            && let Some(o) = unknown(l.inode).and_then(|i| found.get(&i))
        {
            (l.pid, l.comm, l.cgroup_id) = (o.pid, o.comm.clone(), o.cgroup_id);
        }
    }
}

/// Deletes what `--retention` and `--max-events` no longer keep, with `f` (a store's prune).
fn prune(
    f: impl Fn(u64, u64, u64) -> rusqlite::Result<usize>,
    retention: Duration,
    max_events: u64,
) {
    let now = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    )
    .unwrap_or(u64::MAX);
    let keep = u64::try_from(retention.as_nanos()).unwrap_or(u64::MAX);
    match f(now, keep, max_events) {
        Ok(0) => {}
        Ok(n) => tracing::debug!(deleted = n, "pruned the event history"),
        Err(e) => tracing::warn!(error = %e, "pruning the event history failed"),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    #[test]
    fn an_unknown_owner_is_found_from_its_sockets_inode() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&l);
        let inode = std::fs::metadata(format!("/proc/self/fd/{fd}"))
            .unwrap()
            .ino();
        let mut e = Event::blank(Kind::ResetReceived);
        e.inode = inode;
        e.linked = Some(link::Linked {
            kind: Kind::RstOnClose,
            pid: 0,
            comm: String::new(),
            cgroup_id: 0,
            unread_bytes: 1,
            inode,
        });
        let mut gone = Event::blank(Kind::ResetReceived);
        (gone.owner.pid, gone.inode) = (7, u64::MAX);
        let mut batch = [e, gone];
        find_owners(&mut batch);
        assert_eq!(batch[0].owner.pid, std::process::id());
        assert_eq!(batch[0].linked.as_ref().unwrap().pid, std::process::id());
        assert_eq!(
            batch[1].owner.pid, 7,
            "a socket no process holds keeps what it had"
        );
    }
}
