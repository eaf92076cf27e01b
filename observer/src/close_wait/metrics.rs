//! The `observer_close_wait_*` series: sockets and the oldest age per workload and peer, the
//! map's fill level, promotion failures, the last scan's CPU time.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::atomic::AtomicU64,
};

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::{Registry, Unit},
};

use super::SocketView;
use crate::{
    events::Role,
    metrics::{Labeller, SelfMetrics, Workload, WorkloadPeer, labelled_peer},
};

/// Sockets with the same labels: namespace, pod, container, comm, role and peer.
type Group<'a> = (&'a str, &'a str, &'a str, &'a str, Role, SocketAddr);

/// `observer_close_wait_*` series, owned by the tracker.
#[derive(Clone)]
pub struct Metrics {
    sockets: Family<WorkloadPeer, Gauge>,
    oldest: Family<WorkloadPeer, Gauge<f64, AtomicU64>>,
    map_entries: Gauge,
    pub(super) promotion_failures: Counter,
    pub(super) scan_cpu_seconds: Gauge<f64, AtomicU64>,
}

impl Metrics {
    /// Registers the CLOSE_WAIT gauges; the map's fill level goes into the self-metrics.
    pub fn register(registry: &mut Registry, self_metrics: &SelfMetrics) -> Self {
        let m = Self {
            sockets: Family::default(),
            oldest: Family::default(),
            map_entries: self_metrics.map(
                observer_common::maps::CLOSE_WAIT,
                observer_common::maps::CLOSE_WAIT_MAX_ENTRIES,
            ),
            promotion_failures: Counter::default(),
            scan_cpu_seconds: Gauge::default(),
        };
        registry.register_with_unit(
            "close_wait_scan_cpu",
            format!(
                "CPU time the last CLOSE_WAIT scan used, its namespace threads included; scans \
                 run every second, or every {} times this when longer, at most {} s apart",
                super::SCAN_SHARE,
                super::SCAN_EVERY_MAX.as_secs()
            ),
            Unit::Seconds,
            m.scan_cpu_seconds.clone(),
        );
        registry.register(
            "close_wait_promotion_failures",
            "Namespaces where reading the CLOSE_WAIT promotion iterator failed at a scan: their \
             sockets get no leak entry until a later scan succeeds",
            m.promotion_failures.clone(),
        );
        registry.register(
            "close_wait_sockets",
            "Sockets in CLOSE_WAIT (the peer closed, the owner has not), by workload and peer",
            m.sockets.clone(),
        );
        registry.register_with_unit(
            "close_wait_oldest",
            "Time the oldest socket of each workload and peer has spent in CLOSE_WAIT",
            Unit::Seconds,
            m.oldest.clone(),
        );
        m
    }

    /// Replaces every series with the counts and oldest ages of `views`, and the map's fill
    /// level with `entries`.
    pub fn set(&self, views: &[SocketView], labeller: &Labeller, entries: usize) {
        self.map_entries
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
        // Grouped by borrowed fields first: tens of thousands of sockets share a few label
        // sets, and building each label set (five strings, a peer lookup) once per group
        // instead of once per socket is most of this scan's cost.
        let mut groups: HashMap<Group<'_>, (i64, u64)> = HashMap::new();
        for v in views {
            let key = (
                v.owner.workload.namespace.as_deref().unwrap_or_default(),
                v.owner.workload.pod.as_deref().unwrap_or_default(),
                v.owner.workload.container.as_deref().unwrap_or_default(),
                v.owner.comm.as_str(),
                v.role,
                labelled_peer(v.role, v.ends.peer()),
            );
            let slot = groups.entry(key).or_default();
            slot.0 += 1;
            slot.1 = slot.1.max(v.close_wait_ms);
        }
        let mut by: BTreeMap<WorkloadPeer, (i64, u64)> = BTreeMap::new();
        for ((namespace, pod, container, comm, role, peer), (n, oldest)) in groups {
            let workload = Workload {
                namespace: namespace.to_owned(),
                pod: pod.to_owned(),
                container: container.to_owned(),
                comm: comm.to_owned(),
            };
            let labels = labeller.workload_peer(workload, role, peer);
            let slot = by.entry(labels).or_default();
            slot.0 += n;
            slot.1 = slot.1.max(oldest);
        }
        self.sockets.clear();
        self.oldest.clear();
        for (labels, (n, oldest_ms)) in by {
            self.sockets.get_or_create(&labels).set(n);
            self.oldest
                .get_or_create(&labels)
                .set(oldest_ms as f64 / 1000.0);
        }
    }
}
