//! Output to userspace: events into the ring buffer, and the per-CPU counters that make every
//! drop visible. A counter that reaches a power of two also sends one aya-log line, so an
//! operator sees the first failure and then ever rarer reminders, never one line per event.

use aya_ebpf::EbpfContext;
use aya_log_ebpf::warn;
use observer_common::event::{Kind, RawEvent, Stat};

use crate::maps::{EVENTS, EVENTS_FILL, STATS};

/// `BPF_RB_AVAIL_DATA`: bytes produced and not yet consumed.
const BPF_RB_AVAIL_DATA: u64 = 0;

/// Sends `ev` to userspace, counting it as lost when the ring buffer is full.
#[inline(always)]
pub(crate) fn event<C: EbpfContext>(ctx: &C, ev: &RawEvent) {
    if EVENTS.output::<RawEvent>(ev, 0).is_ok() {
        let waiting = EVENTS.query(BPF_RB_AVAIL_DATA);
        if let Some(peak) = EVENTS_FILL.get_ptr_mut(0) {
            // SAFETY: per-CPU slot of a live map; no other program runs on this CPU meanwhile.
            unsafe { *peak = (*peak).max(waiting) };
        }
    } else {
        let stat = match ev.kind {
            k if k == Kind::LingerAbort as u8 => Stat::lost(Kind::LingerAbort),
            k if k == Kind::CloseWaitResolved as u8 => Stat::lost(Kind::CloseWaitResolved),
            _ => Stat::lost(Kind::RstOnClose),
        };
        count(ctx, stat);
    }
}

/// Adds one to `stat` on this CPU.
#[inline(always)]
pub(crate) fn count<C: EbpfContext>(ctx: &C, stat: Stat) {
    let Some(slot) = STATS.get_ptr_mut(stat as u32) else {
        return;
    };
    // SAFETY: per-CPU slot of a live map; no other program runs on this CPU meanwhile.
    let n = unsafe {
        *slot += 1;
        *slot
    };
    if n.is_power_of_two() {
        let what = match stat {
            Stat::LostRstOnClose => "ring buffer full, rst_on_close events lost",
            Stat::LostLingerAbort => "ring buffer full, linger_abort events lost",
            Stat::PendingFull => "PENDING map full, aborts lost",
            Stat::SocksFull => "socket slots taken and SOCKS refused an insert, sockets untracked",
            Stat::ReadFailed => "kernel memory read failed",
            Stat::LostCloseWaitResolved => "ring buffer full, close_wait_resolved events lost",
            Stat::CloseWaitFull => "CLOSE_WAIT map full, sockets untracked",
            Stat::FlowsFull => "FLOWS map full, connections counted under other",
            Stat::CloseWaitUnpromoted => {
                "socket left CLOSE_WAIT after a minute never promoted (namespace not entered)"
            }
        };
        warn!(ctx, "{} (now {} on this cpu)", what, n);
    }
}
