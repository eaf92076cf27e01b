//! The agent's own health: events lost by source, the probes attached, kernel read errors,
//! map fill levels, the ring buffer's use, program misses, the build.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, info::Info},
    registry::Registry,
};

use crate::probes::PlanEntry;

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
                purpose: p.purpose.as_str().to_owned(),
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
