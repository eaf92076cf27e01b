//! The Prometheus registry (`observer_` prefix), the label sets shared by every module, the
//! bounded peer label, and the agent's self-metrics. Each module registers and owns its own
//! metrics (`Metrics::register(&mut Registry) -> Self`); this module only encodes the whole.
//!
//! Cardinality is bounded by construction: workload labels come from the owner (namespace,
//! pod, container, comm; empty where unknown), the peer label is `ip:port` for at most
//! [`Labeller`]'s limit of active peers and `other` beyond it (the folded count is itself a
//! metric; counter series of a peer whose name is reused are removed, [`PeerSeries`]), and
//! ephemeral ports never become labels: a server's peers are labelled by address only.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, info::Info},
    registry::Registry,
};

use crate::{events::Role, probes::PlanEntry};

mod labeller;
#[cfg(test)]
mod tests;

use labeller::Forgotten;
pub use labeller::{LABEL_IDLE, Labeller, Limits, Workload};

/// A new registry with the `observer` prefix.
pub fn registry() -> Registry {
    Registry::with_prefix("observer")
}

/// The part of `peer` its label names: a client's peer is a service (ip:port); a server's
/// peers are clients whose ports are ephemeral (port 0 here, the address alone in the label).
/// Callers that count many sockets group them by it before building labels.
pub fn labelled_peer(role: Role, peer: SocketAddr) -> SocketAddr {
    match role {
        Role::Client => peer,
        Role::Server | Role::Unknown => SocketAddr::new(peer.ip(), 0),
    }
}

/// Workload and peer: the labels of every detector series.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct WorkloadPeer {
    /// Kubernetes namespace, empty when unknown.
    pub namespace: String,
    /// Pod name, empty when unknown.
    pub pod: String,
    /// Container name, empty when unknown.
    pub container: String,
    /// Process name.
    pub comm: String,
    /// `ip:port`, `ip` for a server's clients, or `other`.
    pub peer: String,
}

/// A label set with a peer and a workload, whose series go when either stops being named.
pub trait HasPeer {
    /// The `peer` label.
    fn peer(&self) -> &str;
    /// The workload labels.
    fn workload(&self) -> Workload;
}

impl HasPeer for WorkloadPeer {
    fn peer(&self) -> &str {
        &self.peer
    }

    fn workload(&self) -> Workload {
        Workload {
            namespace: self.namespace.clone(),
            pod: self.pod.clone(),
            container: self.container.clone(),
            comm: self.comm.clone(),
        }
    }
}

/// A family of counter-like series (they are never rebuilt) whose label sets are remembered
/// by peer and by workload, so that the series of a peer or workload the [`Labeller`] stops
/// naming are removed with it and the exposition stays bounded.
pub struct PeerSeries<L, M> {
    family: Family<L, M>,
    known: Arc<Mutex<Known<L>>>,
}

/// The label sets of a [`PeerSeries`], by peer and by workload.
struct Known<L> {
    by_peer: HashMap<String, HashSet<L>>,
    by_workload: HashMap<Workload, HashSet<L>>,
}

impl<L> Default for Known<L> {
    fn default() -> Self {
        Self {
            by_peer: HashMap::new(),
            by_workload: HashMap::new(),
        }
    }
}

impl<L, M> Clone for PeerSeries<L, M> {
    fn clone(&self) -> Self {
        Self {
            family: self.family.clone(),
            known: self.known.clone(),
        }
    }
}

impl<L, M> PeerSeries<L, M>
where
    L: Clone + std::hash::Hash + Eq + HasPeer + Send + Sync + 'static,
    M: Default + Send + Sync + 'static,
{
    /// A family whose series follow `labeller`'s names.
    pub fn new(labeller: &Labeller) -> Self {
        let s = Self {
            family: Family::default(),
            known: Arc::default(),
        };
        let (family, known) = (s.family.clone(), s.known.clone());
        labeller.on_forget(move |gone| {
            let mut known = known
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let sets = match gone {
                Forgotten::Peer(p) => known.by_peer.remove(p),
                Forgotten::Workload(w) => known.by_workload.remove(w),
            };
            for labels in sets.into_iter().flatten() {
                family.remove(&labels);
                // The other index forgets it too.
                let (peer, workload) = (labels.peer().to_owned(), labels.workload());
                if let Some(set) = known.by_peer.get_mut(&peer) {
                    set.remove(&labels);
                }
                if let Some(set) = known.by_workload.get_mut(&workload) {
                    set.remove(&labels);
                }
            }
        });
        s
    }

    /// The family, to register.
    pub fn family(&self) -> Family<L, M> {
        self.family.clone()
    }

    /// Calls `f` with the series of `labels`, created if absent.
    pub fn with(&self, labels: &L, f: impl FnOnce(&M)) {
        {
            let mut known = self
                .known
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let by_peer = known.by_peer.entry(labels.peer().to_owned()).or_default();
            if !by_peer.contains(labels) {
                by_peer.insert(labels.clone());
                known
                    .by_workload
                    .entry(labels.workload())
                    .or_default()
                    .insert(labels.clone());
            }
        }
        f(&self.family.get_or_create(labels));
    }
}

/// Where events were lost.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LostLabels {
    /// `ringbuf_full_<kind>`, `<map>_map_full`, `decode_error`, `store_error`.
    pub source: String,
}

/// Every `source` of `observer_events_lost_total`.
pub const LOSS_SOURCES: &[&str] = &[
    "ringbuf_full_rst_on_close",
    "ringbuf_full_linger_abort",
    "ringbuf_full_close_wait_resolved",
    "pending_map_full",
    "socks_map_full",
    "close_wait_map_full",
    "close_wait_unpromoted",
    "decode_error",
    "store_error",
];

/// One attach-plan entry.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabels {
    /// What the hook is for.
    pub purpose: String,
    /// Tracepoint or function, empty when unavailable.
    pub hook: String,
    /// Program type, empty when unavailable.
    pub r#type: String,
}

/// The agent's own health: losses, probes, build.
#[derive(Clone)]
pub struct SelfMetrics {
    /// Events lost, by source.
    pub events_lost: Family<LostLabels, Counter>,
    /// 1 per attached probe, 0 per unavailable one.
    pub probe_attached: Family<ProbeLabels, Gauge>,
    /// Kernel memory reads that failed in the programs.
    pub kernel_read_errors: Counter,
    /// Entries in the pinned CLOSE_WAIT map, `FLOWS` and the `SOCKS` overflow.
    pub map_entries: Family<MapLabels, Gauge>,
    /// Capacity of each map reported in `map_entries`.
    pub map_capacity: Family<MapLabels, Gauge>,
    /// Most bytes seen waiting in the events ring buffer during the last second.
    pub ringbuf_used: Gauge,
    /// Connections counted under the catch-all `FLOWS` entry because the map was full.
    pub flows_full: Counter,
    /// Runs of each program the kernel skipped (already running on that CPU).
    pub program_misses: Family<ProgramLabels, Counter>,
    /// Event histories found corrupt at start-up and moved aside.
    pub store_moved_aside: Counter,
}

/// An eBPF program.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProgramLabels {
    /// Its name in the object (`state_btf`, ...).
    pub program: String,
}

/// A map's name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabels {
    /// The map.
    pub map: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

impl SelfMetrics {
    /// Registers the self-metrics and `observer_build_info`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            events_lost: Family::default(),
            probe_attached: Family::default(),
            kernel_read_errors: Counter::default(),
            map_entries: Family::default(),
            map_capacity: Family::default(),
            ringbuf_used: Gauge::default(),
            flows_full: Counter::default(),
            program_misses: Family::default(),
            store_moved_aside: Counter::default(),
        };
        registry.register(
            "store_moved_aside",
            "Event histories (events.db) found corrupt at start-up and moved aside as events.db.corrupt-<unix seconds>; a new history was started",
            m.store_moved_aside.clone(),
        );
        registry.register(
            "events_lost",
            "Events lost before reaching the outputs, by source",
            m.events_lost.clone(),
        );
        registry.register(
            "probe_attached",
            "Whether each probe is attached (1) or unavailable (0), with its hook and program type",
            m.probe_attached.clone(),
        );
        registry.register(
            "kernel_read_errors",
            "Kernel memory reads that failed in the eBPF programs",
            m.kernel_read_errors.clone(),
        );
        registry.register(
            "map_entries",
            "Entries in an eBPF map (SOCKS: sockets whose two slots were both taken; raise --socket-slots if it stays above 0)",
            m.map_entries.clone(),
        );
        // Every source exists from the start, so a rate or an alert sees 0, not nothing.
        for source in LOSS_SOURCES {
            let _ = m.events_lost.get_or_create_owned(&LostLabels {
                source: (*source).to_owned(),
            });
        }
        registry.register(
            "flows_map_full",
            "Connections counted under the catch-all series (peer=\"other\", role=\"unknown\") because the FLOWS map was full (or, vanishingly rarely, another flow held their flow's 64-bit id)",
            m.flows_full.clone(),
        );
        registry.register(
            "program_recursion_misses",
            "Runs of an eBPF program the kernel skipped because it was already running on that CPU (a state change or read observer did not see)",
            m.program_misses.clone(),
        );
        registry.register(
            "map_capacity",
            "Maximum entries of an eBPF map",
            m.map_capacity.clone(),
        );
        registry.register_with_unit(
            "ringbuf_used",
            "Most bytes waiting in the events ring buffer during the last second (it is full at observer_ringbuf_capacity_bytes)",
            prometheus_client::registry::Unit::Bytes,
            m.ringbuf_used.clone(),
        );
        let capacity: Gauge = Gauge::default();
        capacity.set(i64::from(observer_common::maps::EVENTS_BYTES));
        registry.register_with_unit(
            "ringbuf_capacity",
            "Size of the events ring buffer",
            prometheus_client::registry::Unit::Bytes,
            capacity,
        );
        registry.register(
            "build",
            "observer's version",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_owned(),
            }),
        );
        m
    }

    /// Records the attach plan (and starts each attached program's skipped runs at 0).
    pub fn plan(&self, plan: &[PlanEntry]) {
        for (_, _, program) in plan.iter().filter_map(|p| p.chosen) {
            let _ = self.program_misses.get_or_create(&ProgramLabels {
                program: program.to_owned(),
            });
        }
        for p in plan {
            self.probe_attached(p, p.chosen.is_some());
        }
    }

    /// Sets the `observer_probe_attached` series of `p` (0 where it is unavailable, or
    /// detached until needed).
    pub fn probe_attached(&self, p: &PlanEntry, attached: bool) {
        let (hook, ty) = p
            .chosen
            .map_or((String::new(), String::new()), |(t, h, _)| {
                (h.to_owned(), t.to_string())
            });
        self.probe_attached
            .get_or_create(&ProbeLabels {
                purpose: p.purpose.to_owned(),
                hook,
                r#type: ty,
            })
            .set(i64::from(attached));
    }

    /// Records the capacity of the eBPF map `name` and returns the gauge of its entries.
    pub fn map(&self, name: &str, capacity: u32) -> Gauge {
        let map = MapLabels {
            map: name.to_owned(),
        };
        self.map_capacity
            .get_or_create(&map)
            .set(i64::from(capacity));
        self.map_entries.get_or_create_owned(&map)
    }

    /// Adds `n` losses from `source`.
    pub fn lost(&self, source: &str, n: u64) {
        if n > 0 {
            self.events_lost
                .get_or_create(&LostLabels {
                    source: source.to_owned(),
                })
                .inc_by(n);
        }
    }
}

/// Turns monotonically growing totals read elsewhere (kernel per-CPU counters) into counter
/// increments.
#[derive(Default)]
pub struct Deltas {
    last: Mutex<Vec<u64>>,
}

impl Deltas {
    /// The increase of each total since the previous call (the first call counts from zero).
    pub fn since_last(&self, totals: &[u64]) -> Vec<u64> {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        last.resize(totals.len(), 0);
        totals
            .iter()
            .zip(last.iter_mut())
            .map(|(now, before)| {
                let d = now.saturating_sub(*before);
                *before = (*before).max(*now);
                d
            })
            .collect()
    }
}

/// The registry as OpenMetrics text (what `prometheus-client` writes).
pub fn encode_openmetrics(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// The registry in the Prometheus text format 0.0.4: OpenMetrics without `# EOF` and `# UNIT`,
/// with counter families named by their `_total` samples, so plain parsers (and `promtool
/// check metrics`) type them correctly.
pub fn encode_prometheus(registry: &Registry) -> String {
    let open = encode_openmetrics(registry);
    // OpenMetrics names a counter family `x` and its sample `x_total`, an info family `x` and
    // its sample `x_info`; the 0.0.4 format names both by the sample, and has no info type.
    let suffixed: std::collections::HashMap<&str, &str> = open
        .lines()
        .filter_map(|l| {
            let (name, ty) = l.strip_prefix("# TYPE ")?.split_once(' ')?;
            match ty {
                "counter" => Some((name, "_total")),
                "info" => Some((name, "_info")),
                _ => None,
            }
        })
        .collect();
    let mut out = String::with_capacity(open.len());
    for line in open.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let (name, tail) = line.strip_prefix(p)?.split_once(' ')?;
            let suffix = suffixed.get(name)?;
            let tail = if tail == "info" { "gauge" } else { tail };
            Some(format!("{p}{name}{suffix} {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// Number of events seen by the outputs, for `/api/v1/status`.
#[derive(Debug, Default)]
pub struct Totals {
    /// Events written.
    pub events: AtomicU64,
}

impl Totals {
    /// Current count.
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }
}
