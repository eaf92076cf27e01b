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

use prometheus_client::{encoding::EncodeLabelSet, metrics::family::Family, registry::Registry};

use crate::events::Role;

mod labeller;
mod own;
#[cfg(test)]
mod tests;

use labeller::Forgotten;
pub use labeller::{LABEL_IDLE, Labeller, Limits, Workload};
pub use own::{LOSS_SOURCES, LostLabels, MapLabels, ProbeLabels, ProgramLabels, SelfMetrics};

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
    /// Namespace, pod, container and process name.
    #[prometheus(flatten)]
    pub workload: Workload,
    /// `ip:port`, `ip` for a server's clients, or `other`.
    pub peer: String,
}

/// A label set with a peer and a workload, whose series go when either stops being named.
pub trait HasPeer {
    /// The `peer` label.
    fn peer(&self) -> &str;
    /// The workload labels.
    fn workload(&self) -> &Workload;
}

impl HasPeer for WorkloadPeer {
    fn peer(&self) -> &str {
        &self.peer
    }

    fn workload(&self) -> &Workload {
        &self.workload
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
                if let Some(set) = known.by_workload.get_mut(workload) {
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
                    .entry(labels.workload().clone())
                    .or_default()
                    .insert(labels.clone());
            }
        }
        f(&self.family.get_or_create(labels));
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
