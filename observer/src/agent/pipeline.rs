//! The running pipeline: the ring-buffer reader and the linking of aborts to resets as tasks
//! (fd-driven work), the CLOSE_WAIT tracker, the pool monitor and the sink as threads (their
//! setns sweeps, map reads, `/proc` walks and disk writes block); started together, drained in
//! order.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::warn;

use super::CHANNEL;
use crate::{
    close_wait::{self, Tracker},
    events::{decode::Decoder, link, reader},
    output, pool,
};

/// The running pipeline: reader task -> tracker task -> sink thread, and the pool monitor's
/// thread -> sink thread.
pub(super) struct Pipeline {
    reader: tokio::task::JoinHandle<std::io::Result<()>>,
    link: tokio::task::JoinHandle<()>,
    tracker: std::thread::JoinHandle<()>,
    /// Told once the tracker's first scan is done.
    scanned: Option<oneshot::Receiver<()>>,
    pool: std::thread::JoinHandle<()>,
    pool_stop: std::sync::mpsc::Sender<()>,
    sink: std::thread::JoinHandle<()>,
}

impl Pipeline {
    pub(super) fn start(
        (ring, pending): (
            aya::maps::RingBuf<aya::maps::MapData>,
            Option<aya::maps::HashMap<aya::maps::MapData, u64, observer_common::event::RawEvent>>,
        ),
        decoder: Decoder,
        tracker: Tracker,
        (monitor, pool_every): (pool::Monitor, Duration),
        sink: output::Sink,
        counters: Arc<reader::Counters>,
        stop: watch::Receiver<bool>,
    ) -> anyhow::Result<Self> {
        let (scanned_tx, scanned) = oneshot::channel();
        let (raw_tx, raw_rx) = mpsc::channel(CHANNEL);
        let (linked_tx, linked_rx) = mpsc::channel(CHANNEL);
        let (tx, rx) = mpsc::channel(CHANNEL);
        let link_metrics = sink.metrics.link.clone();
        let sink = std::thread::Builder::new()
            .name("observer-sink".to_owned())
            .spawn(move || sink.run(rx, std::io::stdout()))
            .context("starting the sink thread")?;
        let (pool_stop, pool_stop_rx) = std::sync::mpsc::channel();
        let pool = pool::spawn(monitor, pool_every, tx.clone(), pool_stop_rx)
            .context("starting the pool monitor thread")?;
        Ok(Self {
            reader: tokio::spawn(reader::run(ring, pending, decoder, raw_tx, counters, stop)),
            link: tokio::spawn(link::run(raw_rx, linked_tx, link_metrics)),
            tracker: close_wait::spawn(tracker, linked_rx, tx, scanned_tx)
                .context("starting the CLOSE_WAIT tracker thread")?,
            scanned: Some(scanned),
            pool,
            pool_stop,
            sink,
        })
    }

    /// Waits until the sockets already in CLOSE_WAIT are listed and the live view is filled
    /// (the tracker's first scan); at once if the tracker ended early (the pipeline's end
    /// reports why).
    pub(super) async fn first_scan(&mut self) {
        if let Some(rx) = self.scanned.take() {
            let _ = rx.await;
        }
    }

    /// Waits for each stage to drain, in order (the reader closes the first channel).
    pub(super) async fn finish(self) -> anyhow::Result<()> {
        self.reader.await.context("reader task")??;
        self.link.await.context("link task")?;
        let tracker = self.tracker;
        if tokio::task::spawn_blocking(move || tracker.join())
            .await
            .map_or(true, |r| r.is_err())
        {
            warn!("the CLOSE_WAIT tracker thread panicked");
        }
        let _ = self.pool_stop.send(());
        // A scan in progress finishes first (a few milliseconds to a second on a busy node).
        let pool = self.pool;
        if tokio::task::spawn_blocking(move || pool.join())
            .await
            .map_or(true, |r| r.is_err())
        {
            warn!("the pool monitor thread panicked");
        }
        if self.sink.join().is_err() {
            warn!("the sink thread panicked");
        }
        Ok(())
    }
}
