//! What the listeners shed, counted: `observer_http_shed_total{reason}` and
//! `observer_http_queries_cut_total`.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

/// Why a connection or request was shed.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Shed {
    reason: &'static str,
}

/// The shed counter, shared by the listeners.
#[derive(Clone)]
pub struct Metrics {
    shed: Family<Shed, Counter>,
    pub(super) queries_cut: Counter,
}

impl Metrics {
    /// Registers `observer_http_shed_total` (every reason at 0) and
    /// `observer_http_queries_cut_total`.
    pub fn register(registry: &mut Registry) -> Self {
        let shed = Family::<Shed, Counter>::default();
        for reason in [
            "connections",
            "requests",
            "header_timeout",
            "stalled_reader",
        ] {
            let _ = shed.get_or_create(&Shed { reason });
        }
        registry.register(
            "http_shed",
            "HTTP connections and requests the API refused or cut off: connections (503, --http-max-connections), requests (429, --http-max-requests), header_timeout (no full request head in --http-header-timeout), stalled_reader (an answer the client stopped reading)",
            shed.clone(),
        );
        let queries_cut = Counter::default();
        registry.register(
            "http_queries_cut",
            "Event queries stopped at --query-time-limit and answered 503",
            queries_cut.clone(),
        );
        Self { shed, queries_cut }
    }

    pub(super) fn inc(&self, reason: &'static str) {
        self.shed.get_or_create(&Shed { reason }).inc();
    }
}
