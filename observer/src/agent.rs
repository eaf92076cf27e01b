//! `observer agent`: loads and attaches the probes, then runs the pipeline until SIGINT or
//! SIGTERM: ring-buffer reader -> bounded channel -> JSON-lines writer. On a signal the probes
//! are detached first, then what the ring buffer still holds is drained and written.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::{
    btf::Btf,
    close_wait::{self, Tracker},
    config::AgentArgs,
    events::{decode::Decoder, reader},
    host,
    layout::Layout,
    output,
    probes::{self, Probes},
    shutdown::Shutdown,
};

/// Capacity of the reader -> writer channel; a full channel is counted, never waited on.
const CHANNEL: usize = 16_384;
/// How often the drop counters are checked and, when they moved, logged.
const STATS_EVERY: Duration = Duration::from_secs(10);

/// Everything `agent` and `check` need before attaching: privileges, BTF, layout.
pub fn prepare(args: &crate::config::ProbeArgs) -> anyhow::Result<Layout> {
    host::require_privileges()?;
    let btf = Btf::from_file(&args.btf)?;
    let tracefs = host::tracefs();
    Layout::resolve(&btf, tracefs.as_deref())
        .with_context(|| format!("resolving kernel struct layout from {}", args.btf.display()))
}

/// Runs the agent until a signal.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let mut shutdown = Shutdown::install().context("installing signal handlers")?;
    let layout = prepare(&args.probes)?;
    let mut probes = Probes::load(&layout, &args.probes)?;
    probes.log_plan();
    let ring = probes.take_events()?;
    if let Some(logger) = probes.take_logger() {
        tokio::spawn(diagnostics(logger));
    }

    let close_wait_map = probes.take_close_wait()?;

    let counters = Arc::new(reader::Counters::default());
    let decoder = Decoder::new(&layout);
    let (raw_tx, raw_rx) = mpsc::channel(CHANNEL);
    let (tx, rx) = mpsc::channel(CHANNEL);
    let (stop_tx, stop_rx) = watch::channel(false);
    let tracker = Tracker::new(close_wait_map, args.close_wait_threshold, decoder.clone());
    let reader = tokio::spawn(reader::run(
        ring,
        decoder,
        raw_tx,
        counters.clone(),
        stop_rx,
    ));
    let tracker = tokio::spawn(close_wait::run(tracker, raw_rx, tx));
    let writer = tokio::spawn(output::run(rx, args.log_events, tokio::io::stdout()));
    info!(kernel = %host::kernel_release(), "agent ready");

    let mut tick = tokio::time::interval(STATS_EVERY);
    let mut drops = Drops::default();
    let why = loop {
        tokio::select! {
            s = shutdown.received() => break s,
            _ = tick.tick() => drops.report(&probes, &counters),
        }
    };
    info!(signal = why, "detaching probes");
    drops.report(&probes, &counters);
    drop(probes);
    let _ = stop_tx.send(true);
    reader.await.context("reader task")??;
    tracker.await.context("close_wait task")?;
    writer.await.context("writer task")??;
    info!("stopped");
    Ok(())
}

/// The drop counters as last logged, so that only changes are logged.
#[derive(Default)]
struct Drops {
    kernel: Vec<u64>,
    decode_errors: u64,
    channel_full: u64,
}

impl Drops {
    /// Logs every counter that moved since the last call.
    fn report(&mut self, probes: &Probes, counters: &reader::Counters) {
        use std::sync::atomic::Ordering::Relaxed;
        let now = probes.stats();
        self.kernel.resize(now.len(), 0);
        for ((stat, n), before) in now.iter().zip(&mut self.kernel) {
            if *n > *before {
                warn!(
                    counter = probes::stat_name(*stat),
                    total = n,
                    "kernel-side drops or errors"
                );
                *before = *n;
            }
        }
        let decode = counters.decode_errors.load(Relaxed);
        let full = counters.channel_full.load(Relaxed);
        if (decode, full) != (self.decode_errors, self.channel_full) {
            warn!(
                decode_errors = decode,
                channel_full = full,
                "userspace drops"
            );
            (self.decode_errors, self.channel_full) = (decode, full);
        }
    }
}

/// Forwards the programs' rare aya-log diagnostics into this log.
async fn diagnostics(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: the logger owns its ring-buffer fd until the `AsyncFd` is dropped.
    let fd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    };
    let Ok(mut fd) = fd else {
        warn!("eBPF diagnostics unavailable: cannot poll their ring buffer");
        return;
    };
    while let Ok(mut guard) = fd.readable_mut().await {
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}
