//! The ring-buffer reader task: waits for the `EVENTS` ring buffer to become readable, decodes
//! every record and hands events to the bounded channel. When the channel is full it waits for
//! room and leaves the rest in the ring buffer, the larger buffer of the two (8 MiB, about
//! 49,000 events, against the channel's 16,384): a burst after the agent was held up (a busy
//! node, a slow disk under the event store) is kept as long as the ring holds it, and only
//! what does not fit there is lost, counted by the programs. Records that do not decode are
//! counted here.
//!
//! Once a second it also emits the aborts the programs held for a reset that never came
//! (`PENDING`, see `observer-ebpf`'s `tcp_reset`), without an RST reason.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use aya::maps::{HashMap, IterableMap as _, MapData, RingBuf};
use observer_common::event::RawEvent;
use tokio::sync::{mpsc, watch};

use super::{
    Event,
    decode::{Decoder, monotonic_ns},
};
use crate::map_read;

/// How long an abort waits in `PENDING` before the reader emits it: its reset comes a few
/// instructions after it is held, in the same `close()`.
const RESET_GIVEN_UP_NS: u64 = 1_000_000_000;

/// Userspace drop counters (the kernel's are in `STATS`).
#[derive(Debug, Default)]
pub struct Counters {
    /// Records that did not decode.
    pub decode_errors: AtomicU64,
    /// Events decoded and passed on.
    pub events: AtomicU64,
    /// Aborts emitted from `PENDING` because their reset never came.
    pub unreset_aborts: AtomicU64,
}

/// Reads `ring` (and sweeps `pending`) until `stop` turns true, then drains what is left and
/// returns (closing `tx`).
pub async fn run(
    ring: RingBuf<MapData>,
    pending: Option<HashMap<MapData, u64, RawEvent>>,
    decoder: Decoder,
    tx: mpsc::Sender<Event>,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut fd = crate::sys::readable(ring)?;
    let mut sweep_tick = tokio::time::interval(std::time::Duration::from_secs(1));
    sweep_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = sweep_tick.tick(), if pending.is_some() => {
                if let Some(pending) = pending.as_ref() {
                    sweep(pending, &decoder, &tx, &counters).await;
                }
            }
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                drain(guard.get_inner_mut(), &decoder, &tx, &counters).await;
                guard.clear_ready();
            }
            // The value `wait_for` returns borrows the watch channel: dropped at once, so the
            // task never holds it while it waits for room.
            () = async { drop(stop.wait_for(|s| *s).await) } => {
                drain(fd.get_mut(), &decoder, &tx, &counters).await;
                return Ok(());
            }
        }
    }
}

/// Passes on every record in `ring`, taking the next one only once the channel has room for
/// it. Returns when the ring is empty, or when the writers are gone.
async fn drain(
    ring: &mut RingBuf<MapData>,
    decoder: &Decoder,
    tx: &mpsc::Sender<Event>,
    counters: &Counters,
) {
    loop {
        let Ok(room) = tx.reserve().await else {
            return;
        };
        let Some(item) = ring.next() else {
            return;
        };
        pass_on(room, decoder.decode(&item), counters);
    }
}

/// Sends a decoded event into the room reserved for it and counts it (true), or counts a
/// record that did not decode (false).
fn pass_on(
    room: mpsc::Permit<'_, Event>,
    decoded: Result<Event, super::decode::DecodeError>,
    counters: &Counters,
) -> bool {
    match decoded {
        Ok(ev) => {
            room.send(ev);
            counters.events.fetch_add(1, Ordering::Relaxed);
            true
        }
        Err(e) => {
            let n = counters.decode_errors.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(error = %e, total = n, "undecodable event record");
            }
            false
        }
    }
}

/// Emits the aborts held in `pending` for over [`RESET_GIVEN_UP_NS`]: the kernel did not trace
/// their reset (`tcp_send_active_reset` returns before its tracepoint when it cannot allocate
/// the segment), so they go out without an RST reason rather than not at all.
async fn sweep(
    pending: &HashMap<MapData, u64, RawEvent>,
    decoder: &Decoder,
    tx: &mpsc::Sender<Event>,
    counters: &Counters,
) {
    let now = monotonic_ns();
    let held = map_read::all::<u64, RawEvent>(pending.map(), || {
        pending.iter().filter_map(Result::ok).collect()
    });
    for (sk, listed) in held {
        if now.saturating_sub(listed.ts_ns) <= RESET_GIVEN_UP_NS {
            continue;
        }
        // Only the one who takes it emits it: the reset program may have meanwhile.
        let Ok(Some(raw)) = map_read::take::<u64, RawEvent>(pending.map(), &sk) else {
            continue;
        };
        let Ok(room) = tx.reserve().await else {
            return;
        };
        if pass_on(room, decoder.event(&raw), counters) {
            let n = counters.unreset_aborts.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(
                    total = n,
                    "abort emitted without its reset (the kernel traced none): RST reason unknown"
                );
            }
        }
    }
}
