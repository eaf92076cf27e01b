//! The agent's HTTP API, read-only, on `--listen` (default `127.0.0.1:9464`); `/metrics`,
//! `/healthz` and `/readyz` alone also on `--metrics-listen` when set ([`serve`] owns the
//! listeners and their budgets):
//!
//! | route | answer |
//! |---|---|
//! | `GET /metrics` | Prometheus text 0.0.4, or OpenMetrics when the `Accept` header asks for it |
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 once every required probe is attached, 503 before |
//! | `GET /api/v1/events` | `{"events":[...]}` newest first; filters `kind since until pid comm pod namespace peer after_id limit` |
//! | `GET /api/v1/sockets` | `{"sockets":[...]}` live CLOSE_WAIT sockets, oldest first; `state min_age pid comm peer limit` |
//! | `GET /api/v1/status` | probes, kernel, counters, drops, uptime |
//!
//! Every bad or unknown parameter is a 400 with `{"error":"invalid parameter NAME: why"}`;
//! `limit` is at most 10,000 ([`crate::store::MAX_LIMIT`]), so every answer is bounded.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use axum::{Router, routing::get};
use prometheus_client::{metrics::counter::Counter, registry::Registry};
use serde::Serialize;

use crate::{close_wait::Live, metrics::Totals, probes::PlanEntry, store::Reader};

mod handlers;
pub mod serve;

/// What the handlers read. Cloned into every request (all fields are shared handles).
#[derive(Clone)]
pub struct State {
    /// The whole registry, encoded on each scrape.
    pub registry: Arc<Registry>,
    /// Released once every required probe is attached.
    pub ready: Arc<AtomicBool>,
    /// The event history.
    pub reader: Arc<Mutex<Reader>>,
    /// Sockets in CLOSE_WAIT as of the last scan.
    pub live: Live,
    /// Plan, kernel, drops: written by the agent, read by `/api/v1/status`.
    pub status: Arc<Mutex<Status>>,
    /// Events written.
    pub totals: Arc<Totals>,
    /// When the agent started.
    pub started: Instant,
    /// Event queries stopped at `--query-time-limit` (the counter `serve::start` registered).
    pub queries_cut: Counter,
}

/// The parts of `/api/v1/status` the agent fills in as it goes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    /// `uname -r`.
    pub kernel: String,
    /// The attach plan.
    pub probes: Vec<ProbeStatus>,
    /// Loss and error counters by source.
    pub drops: BTreeMap<String, u64>,
    /// `--close-wait-threshold` in milliseconds.
    pub close_wait_threshold_ms: u64,
    /// What the plan leaves missing or partial on this kernel.
    pub degraded: Vec<crate::probes::Degraded>,
}

/// One probe in `/api/v1/status`.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeStatus {
    /// What it is for.
    pub purpose: &'static str,
    /// Whether the agent needs it.
    pub required: bool,
    /// Whether it is attached (now, for an on-demand probe).
    pub attached: bool,
    /// Whether the agent attaches it only while needed (`--read-hook on-demand`).
    pub on_demand: bool,
    /// Tracepoint or function.
    pub hook: Option<&'static str>,
    /// Program type.
    pub r#type: Option<String>,
    /// What was refused on the way, and why.
    pub refused: Vec<String>,
}

impl ProbeStatus {
    /// The status line of a plan entry.
    pub fn of(p: &PlanEntry) -> Self {
        Self {
            purpose: p.purpose.as_str(),
            required: p.required,
            attached: p.chosen.is_some(),
            on_demand: false,
            hook: p.chosen.map(|(_, h, _)| h),
            r#type: p.chosen.map(|(t, _, _)| t.to_string()),
            refused: p
                .refused
                .iter()
                .map(|(what, why)| format!("{what}: {why}"))
                .collect(),
        }
    }
}

impl State {
    /// A not-yet-ready API over `registry` and the history `reader`, with an empty live view,
    /// status and totals; its clock starts now.
    pub fn new(registry: Registry, reader: Reader) -> Self {
        Self {
            queries_cut: Counter::default(),
            registry: Arc::new(registry),
            ready: Arc::default(),
            reader: Arc::new(Mutex::new(reader)),
            live: Live::default(),
            status: Arc::default(),
            totals: Arc::default(),
            started: Instant::now(),
        }
    }

    /// Marks the agent ready (every required probe attached).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }
}

/// Every route, as documented in `docs/api.md` (a test checks both ways).
pub const ROUTES: [&str; 6] = [
    "/metrics",
    "/healthz",
    "/readyz",
    "/api/v1/events",
    "/api/v1/sockets",
    "/api/v1/status",
];

/// Parameters of `/api/v1/sockets`.
pub const SOCKETS_PARAMS: [&str; 6] = ["state", "min_age", "pid", "comm", "peer", "limit"];

/// The router with every route.
pub fn router(state: State) -> Router {
    let [metrics, healthz, readyz, events, sockets, status] = ROUTES;
    Router::new()
        .route(metrics, get(handlers::metrics))
        .route(healthz, get(handlers::healthz))
        .route(readyz, get(handlers::readyz))
        .route(events, get(handlers::events))
        .route(sockets, get(handlers::sockets))
        .route(status, get(handlers::status))
        .fallback(handlers::not_found)
        .with_state(state)
}

/// The router of `--metrics-listen`: `/metrics`, `/healthz` and `/readyz`; every other route
/// is a 404, the history and live sockets included.
pub fn metrics_router(state: State) -> Router {
    let [metrics, healthz, readyz, ..] = ROUTES;
    Router::new()
        .route(metrics, get(handlers::metrics))
        .route(healthz, get(handlers::healthz))
        .route(readyz, get(handlers::readyz))
        .fallback(handlers::not_found)
        .with_state(state)
}
