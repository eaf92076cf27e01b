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
    events::{Event, Kind},
    metrics::{PeerSeries, Peers, SelfMetrics, Totals, WorkloadPeer},
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
}

impl Metrics {
    /// Registers `observer_rst_on_close_total`, `observer_linger_abort_total` and
    /// `observer_close_wait_leaks_total`.
    pub fn register(registry: &mut Registry, peers: &Peers) -> Self {
        let m = Self {
            rst_on_close: PeerSeries::new(peers),
            linger_abort: PeerSeries::new(peers),
            close_wait_leaks: PeerSeries::new(peers),
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
        m
    }

    fn count(&self, peers: &Peers, e: &Event) {
        let family = match e.kind {
            Kind::RstOnClose => &self.rst_on_close,
            Kind::LingerAbort => &self.linger_abort,
            Kind::CloseWaitLeak => &self.close_wait_leaks,
            // Pool-health events are summaries of series exported as they are measured.
            Kind::CloseWaitResolved
            | Kind::ConnectionChurn
            | Kind::ConnectionExplosion
            | Kind::PortPressure => return,
        };
        family.with(&peers.of_event(e), |c| {
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
    pub peers: Arc<Peers>,
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
            {
                // Short: cache hits, or one rate-limited rescan; no await here (a thread).
                let mut enricher = self
                    .enricher
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                for e in &mut batch {
                    enricher.apply(e);
                }
            }
            if let Err(e) = self.store.append(&mut batch) {
                self.self_metrics.lost("store_error", batch.len() as u64);
                tracing::warn!(error = %e, events = batch.len(), "event store write failed; events still logged and counted");
            }
            for e in &batch {
                self.metrics.count(&self.peers, e);
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
