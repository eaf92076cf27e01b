//! The pool-health series: connections opened and closed, lifetimes, established, TIME_WAIT,
//! ephemeral ports and what listing sockets costs. Owned by the [`super::Monitor`].

use std::{collections::BTreeMap, sync::atomic::AtomicU64};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::{Registry, Unit},
};

use super::{flows::Delta, lifetimes::Lifetimes};
use crate::metrics::{HasPeer, Labeller, PeerSeries, SelfMetrics, Workload, WorkloadPeer};

/// Workload, peer and role: the labels of the connection series.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct FlowLabels {
    /// Namespace, pod, container, and the process name when the connection was established.
    #[prometheus(flatten)]
    pub workload: Workload,
    /// `ip:port` for a client's peer, `ip` for a server's clients, or `other`.
    pub peer: String,
    /// `client`, `server` or `unknown`.
    pub role: String,
}

impl HasPeer for FlowLabels {
    fn peer(&self) -> &str {
        &self.peer
    }

    fn workload(&self) -> &Workload {
        &self.workload
    }
}

/// Source address and destination: the labels of the ephemeral-port series.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct PortLabels {
    /// Local address, or `other`.
    pub source: String,
    /// Destination `ip:port`, or `other`.
    pub peer: String,
}

/// The pool-health series.
#[derive(Clone)]
pub struct Metrics {
    opened: PeerSeries<FlowLabels, Counter>,
    closed: PeerSeries<FlowLabels, Counter>,
    lifetime: PeerSeries<FlowLabels, Lifetimes>,
    established: Family<FlowLabels, Gauge>,
    time_wait: Family<WorkloadPeer, Gauge>,
    ports_in_use: Family<PortLabels, Gauge>,
    ports_ratio: Family<PortLabels, Gauge<f64, AtomicU64>>,
    flows_entries: Gauge,
    /// How long the last listing of every namespace's sockets took, and the CPU time it used.
    pub(super) listing_seconds: Gauge<f64, AtomicU64>,
    pub(super) listing_cpu_seconds: Gauge<f64, AtomicU64>,
    pub(super) listing_failures: Counter,
}

impl Metrics {
    /// Registers the connection, TIME_WAIT and ephemeral-port series; the `FLOWS` fill level
    /// goes into the self-metrics.
    pub fn register(
        registry: &mut Registry,
        self_metrics: &SelfMetrics,
        labeller: &Labeller,
    ) -> Self {
        let m = Self {
            opened: PeerSeries::new(labeller),
            closed: PeerSeries::new(labeller),
            lifetime: PeerSeries::new(labeller),
            established: Family::default(),
            time_wait: Family::default(),
            ports_in_use: Family::default(),
            ports_ratio: Family::default(),
            flows_entries: self_metrics.map(
                observer_common::maps::FLOWS,
                observer_common::maps::FLOWS_MAX_ENTRIES,
            ),
            listing_seconds: Gauge::default(),
            listing_cpu_seconds: Gauge::default(),
            listing_failures: Counter::default(),
        };
        registry.register(
            "connections_opened",
            "TCP connections established, by workload, peer and role (counted in the kernel)",
            m.opened.family(),
        );
        registry.register(
            "connections_closed",
            "TCP connections closed after observer saw them established, by workload, peer and role",
            m.closed.family(),
        );
        registry.register_with_unit(
            "connection_lifetime",
            "Lifetime of closed TCP connections, from ESTABLISHED to CLOSE (buckets double from 1 ms to about 70 minutes)",
            Unit::Seconds,
            m.lifetime.family(),
        );
        registry.register(
            "connections_established",
            "TCP connections in ESTABLISHED (as ss counts them), established since observer started, by workload, peer and role",
            m.established.clone(),
        );
        registry.register(
            "time_wait_sockets",
            "Sockets in TIME_WAIT, by the workload that closed first and its peer (comm empty when observer did not see the close)",
            m.time_wait.clone(),
        );
        registry.register(
            "ephemeral_ports_in_use",
            "Local ports of ip_local_port_range in use from one source address to one destination (the busiest pairs; the rest in source=\"other\")",
            m.ports_in_use.clone(),
        );
        registry.register_with_unit(
            "socket_listing_duration",
            "How long the last sock_diag listing of every namespace's sockets took",
            Unit::Seconds,
            m.listing_seconds.clone(),
        );
        registry.register_with_unit(
            "socket_listing_cpu",
            "CPU time the last listing of every namespace's sockets used (TIME_WAIT and ephemeral ports are refreshed at most every 20 times this)",
            Unit::Seconds,
            m.listing_cpu_seconds.clone(),
        );
        registry.register(
            "socket_listing_failures",
            "Namespaces a listing could not enter or list: their sockets are missing from that listing's TIME_WAIT and ephemeral-port gauges",
            m.listing_failures.clone(),
        );
        registry.register(
            "ephemeral_ports_ratio",
            "observer_ephemeral_ports_in_use divided by the size of that namespace's ip_local_port_range (connect fails with EADDRNOTAVAIL at 1)",
            m.ports_ratio.clone(),
        );
        m
    }

    /// Adds one entry's growth to the counters and the histogram.
    pub fn flow(&self, labels: &FlowLabels, d: &Delta) {
        if d.opened > 0 {
            self.opened.with(labels, |c| {
                c.inc_by(d.opened);
            });
        }
        if d.closed > 0 {
            self.closed.with(labels, |c| {
                c.inc_by(d.closed);
            });
            self.lifetime
                .with(labels, |h| h.add(d.lifetime_ms, &d.lifetimes));
        }
    }

    /// Replaces the established gauges, and the `FLOWS` fill level with `entries`.
    pub fn set_established(&self, by: &BTreeMap<FlowLabels, i64>, entries: usize) {
        self.flows_entries
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
        self.established.clear();
        for (labels, n) in by {
            self.established.get_or_create(labels).set((*n).max(0));
        }
    }

    /// Replaces the TIME_WAIT gauges.
    pub fn set_time_wait(&self, by: &BTreeMap<WorkloadPeer, i64>) {
        self.time_wait.clear();
        for (labels, n) in by {
            self.time_wait.get_or_create(labels).set(*n);
        }
    }

    /// Replaces the ephemeral-port gauges: ports in use and ratio per pair.
    pub fn set_ports(&self, rows: &[(PortLabels, u64, f64)]) {
        self.ports_in_use.clear();
        self.ports_ratio.clear();
        for (labels, n, ratio) in rows {
            self.ports_in_use
                .get_or_create(labels)
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
            self.ports_ratio.get_or_create(labels).set(*ratio);
        }
    }
}
