//! The ring-buffer reader task: waits for the `EVENTS` ring buffer to become readable, decodes
//! every record and hands events to the bounded channel. Nothing is dropped silently: records
//! that do not decode and events the channel has no room for are counted.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::{mpsc, watch},
};

use super::{Event, decode::Decoder};

/// Userspace drop counters (the kernel's are in `STATS`).
#[derive(Debug, Default)]
pub struct Counters {
    /// Records that did not decode.
    pub decode_errors: AtomicU64,
    /// Events lost because the channel to the writers was full.
    pub channel_full: AtomicU64,
    /// Events decoded and passed on.
    pub events: AtomicU64,
}

/// Reads `ring` until `stop` turns true, then drains what is left and returns (closing `tx`).
pub async fn run(
    ring: RingBuf<MapData>,
    decoder: Decoder,
    tx: mpsc::Sender<Event>,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    // SAFETY: the `RingBuf` owns its map fd and keeps it open until the `AsyncFd` is dropped.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)?;
    loop {
        tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                drain(guard.get_inner_mut(), &decoder, &tx, &counters);
                guard.clear_ready();
            }
            _ = stop.wait_for(|s| *s) => {
                drain(fd.get_mut(), &decoder, &tx, &counters);
                return Ok(());
            }
        }
    }
}

fn drain(
    ring: &mut RingBuf<MapData>,
    decoder: &Decoder,
    tx: &mpsc::Sender<Event>,
    counters: &Counters,
) {
    while let Some(item) = ring.next() {
        match decoder.decode(&item) {
            Ok(ev) => {
                if tx.try_send(ev).is_err() {
                    counters.channel_full.fetch_add(1, Ordering::Relaxed);
                } else {
                    counters.events.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => {
                let n = counters.decode_errors.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::warn!(error = %e, total = n, "undecodable event record");
                }
            }
        }
    }
}
