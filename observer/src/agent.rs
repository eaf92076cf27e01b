//! `observer agent`: the API comes up first (so `/healthz` answers and `/readyz` says 503),
//! then the probes are loaded and attached, the pipeline starts, and `/readyz` turns 200 once
//! the CLOSE_WAIT tracker's first scan has filled the live view. The pipeline then runs
//! until SIGINT or SIGTERM: ring-buffer reader -> bounded channel -> CLOSE_WAIT tracker ->
//! bounded channel -> sink thread (store, metrics, JSON lines). On a signal the probes are
//! detached first, then what the ring buffer still holds is drained and written.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use observer_common::maps;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::{
    api::{self, ProbeStatus},
    btf::Btf,
    close_wait::{self, Tracker},
    config::AgentArgs,
    enrich::{self, Enricher},
    events::{decode::Decoder, reader},
    host::{self, Privileges},
    layout::Layout,
    metrics::{self, Labeller, SelfMetrics},
    output, pool,
    probes::{self, Probes},
    shutdown::Shutdown,
    store,
};

mod every_second;
mod pipeline;

use every_second::{Drops, ReadsOnDemand, diagnostics, show_reads};
use pipeline::Pipeline;

/// Capacity of each channel; a full reader channel is counted, never waited on.
const CHANNEL: usize = 16_384;
/// How often the kernel counters are read into the metrics and the status.
const STATS_EVERY: Duration = Duration::from_secs(1);

/// Everything `agent` and `check` need before attaching: privileges, BTF, layout.
pub fn prepare(args: &probes::Options) -> anyhow::Result<(Layout, Privileges)> {
    let privileges = Privileges::of_self();
    privileges.require()?;
    let btf = Btf::from_file(&args.btf)?;
    let tracefs = host::tracefs();
    let layout = Layout::resolve(&btf, tracefs.as_deref())
        .with_context(|| format!("resolving kernel struct layout from {}", args.btf.display()))?;
    Ok((layout, privileges))
}

/// Loads the programs, naming the likely cause when the kernel answers EPERM although the
/// capabilities allow loading (a seccomp profile that wants `CAP_SYS_ADMIN`).
pub fn load(
    layout: &Layout,
    args: &probes::Options,
    privileges: Privileges,
) -> anyhow::Result<Probes> {
    Probes::load(layout, args).map_err(|e| {
        let hint = privileges.refusal_hint().filter(|_| is_eperm(&e));
        let e = anyhow::Error::from(e);
        match hint {
            Some(hint) => e.context(hint),
            None => e,
        }
    })
}

/// Whether an `EPERM` from the kernel is among the causes of `e`.
fn is_eperm(e: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(e), |e| e.source()).any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(libc::EPERM))
    })
}

/// Logs each optional grant this process lacks, with its cost, as degradations.
fn missing_grants(privileges: Privileges) -> Vec<probes::Degraded> {
    privileges
        .missing()
        .into_iter()
        .map(|m| {
            warn!(
                capability = m.capability,
                cost = m.cost,
                "capability {} missing",
                m.capability
            );
            probes::Degraded::from(m)
        })
        .collect()
}

/// Every metric family the agent exports, each owned by its module.
pub struct Registered {
    /// Losses, probes, build, map fill.
    pub self_metrics: SelfMetrics,
    /// The bounded peer and workload labels.
    pub labeller: Arc<Labeller>,
    /// Detector counters.
    pub events: output::Metrics,
    /// CLOSE_WAIT gauges.
    pub close_wait: close_wait::Metrics,
    /// Connection, TIME_WAIT and ephemeral-port series.
    pub pool: pool::Metrics,
    /// What the HTTP listeners shed.
    pub serve: api::serve::Metrics,
}

/// Registers every metric the agent exports (also used to check `docs/metrics.md`).
pub fn register_metrics(
    registry: &mut prometheus_client::registry::Registry,
    limits: metrics::Limits,
) -> Registered {
    let self_metrics = SelfMetrics::register(registry);
    let labeller = Arc::new(Labeller::register(registry, limits));
    let events = output::Metrics::register(registry, &labeller);
    let close_wait = close_wait::Metrics::register(registry, &self_metrics);
    let pool = pool::Metrics::register(registry, &self_metrics, &labeller);
    let serve = api::serve::Metrics::register(registry);
    Registered {
        self_metrics,
        labeller,
        events,
        close_wait,
        pool,
        serve,
    }
}

/// Marks the API ready and logs the line that says so (with the addresses bound).
fn announce_ready(state: &api::State, servers: &api::serve::Servers) {
    state.set_ready();
    info!(
        kernel = %host::kernel_release(),
        listen = %servers.listen,
        metrics_listen = %servers.metrics_listen_text(),
        "agent ready"
    );
}

/// What `/api/v1/status` tells about this agent once the probes are attached.
fn set_status(state: &api::State, probes: &Probes, missing: &[probes::Degraded], args: &AgentArgs) {
    let mut s = state
        .status
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    s.kernel = host::kernel_release();
    s.probes = probes.plan().iter().map(ProbeStatus::of).collect();
    s.degraded = [missing, probes.degraded()].concat();
    s.close_wait_threshold_ms =
        u64::try_from(args.close_wait_threshold.as_millis()).unwrap_or(u64::MAX);
}

/// Locks the node for this agent, before anything is pinned or written (a second agent stops
/// here, naming the first), then opens the history.
fn claim_node(args: &AgentArgs) -> anyhow::Result<(crate::lock::Held, store::Store)> {
    host::pin_dir(&args.probes.pin_dir)?;
    let held = crate::lock::acquire(&args.data_dir, &args.probes.pin_dir)?;
    Ok((held, store::open(&args.data_dir)?))
}

/// The workload attribution every stage shares, from the cgroup tree and the kubelet's logs.
fn enricher(args: &AgentArgs) -> Arc<Mutex<Enricher>> {
    Arc::new(Mutex::new(Enricher::new(enrich::Sources {
        cgroup_root: args.cgroup_root.clone().or_else(enrich::cgroup2_mount),
        pod_logs: args.pod_logs.clone(),
        container_logs: args.container_logs.clone(),
    })))
}

/// Runs the agent until a signal.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let mut shutdown = Shutdown::install().context("installing signal handlers")?;
    // Everything that can be refused before anything is started: privileges, BTF, layout.
    let options = probes::Options::from(&args.probes);
    let (layout, privileges) = prepare(&options)?;
    let missing = missing_grants(privileges);
    let (_held, store) = claim_node(&args)?;
    let reader_db =
        store::Reader::open(store.file()).context("opening the event store for reading")?;

    let mut registry = metrics::registry();
    let Registered {
        self_metrics,
        labeller,
        events: event_metrics,
        close_wait: close_wait_metrics,
        pool: pool_metrics,
        serve: serve_metrics,
    } = register_metrics(&mut registry, metrics::Limits::from(&args.labels));
    (self_metrics.store_moved_aside).inc_by(u64::from(store.moved_aside().is_some()));
    let state = api::State::new(registry, reader_db);
    let totals = state.totals.clone();
    let (stop_tx, stop_rx) = watch::channel(false);
    let servers = api::serve::start(&args.serve, &state, &serve_metrics, &stop_rx).await?;

    let mut probes = load(&layout, &options, privileges)?;
    probes.log_plan();
    self_metrics.plan(probes.plan());
    if let Some(logger) = probes.take_logger() {
        tokio::spawn(diagnostics(logger));
    }
    let counters = Arc::new(reader::Counters::default());
    let decoder = Decoder::new(&layout);
    let enricher = enricher(&args);
    let tracker = Tracker::new(
        probes.take_close_wait()?,
        args.close_wait_threshold,
        decoder.clone(),
        close_wait_metrics,
        labeller.clone(),
        state.live.clone(),
        enricher.clone(),
    )
    .with_promoter(probes.take_promoter());
    let monitor = pool::Monitor::new(
        probes.take_pool()?,
        pool::detect::Thresholds::from(&args.pool),
        pool_metrics,
        labeller.clone(),
        enricher.clone(),
        decoder.clone(),
    );
    let sink = output::Sink {
        store,
        mode: args.log_events,
        metrics: event_metrics,
        labeller,
        self_metrics: self_metrics.clone(),
        totals,
        retention: args.retention,
        max_events: args.max_events,
        enricher,
    };
    let mut pipeline = Pipeline::start(
        (probes.take_events()?, probes.take_pending()?),
        decoder,
        tracker,
        (monitor, args.pool.pool_interval),
        sink,
        counters.clone(),
        stop_rx,
    )?;

    set_status(&state, &probes, &missing, &args);
    show_reads(&probes, &state, &self_metrics);
    pipeline.first_scan().await;
    announce_ready(&state, &servers);

    let mut tick = tokio::time::interval(STATS_EVERY);
    let drops = Drops::default();
    let overflow = self_metrics.map(maps::SOCKS, maps::SOCKS_MAX_ENTRIES);
    let mut reads = ReadsOnDemand::default();
    let why = loop {
        tokio::select! {
            s = shutdown.received() => break s,
            _ = tick.tick() => {
                drops.update(&probes, &counters, &self_metrics, &state.status);
                self_metrics.ringbuf_used.set(i64::try_from(probes.take_ring_fill()).unwrap_or(i64::MAX));
                overflow.set(i64::try_from(probes.overflow_sockets()).unwrap_or(i64::MAX));
                reads.update(&mut probes, &state, &self_metrics);
            }
        }
    };
    info!(signal = why, "detaching probes");
    drops.update(&probes, &counters, &self_metrics, &state.status);
    drop(probes);
    let _ = stop_tx.send(true);
    pipeline.finish().await?;
    servers.join().await?;
    info!("stopped");
    Ok(())
}
