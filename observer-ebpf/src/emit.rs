//! Output to userspace: events into the ring buffer, and the per-CPU counters that make every
//! drop visible. A counter that reaches a power of two also sends one aya-log line, so an
//! operator sees the first failure and then ever rarer reminders, never one line per event.

use aya_ebpf::EbpfContext;
use aya_log_ebpf::warn;
use observer_common::event::{Kind, NO_RST_REASON, RawEvent, Role, Stat};

use crate::maps::{EVENT_SCRATCH, EVENTS, EVENTS_FILL, Hook, STATS, add};

/// `BPF_RB_AVAIL_DATA`: bytes produced and not yet consumed.
const BPF_RB_AVAIL_DATA: u64 = 0;

/// `hook`'s scratch event on this CPU (`EVENT_SCRATCH`), cleared and stamped with `kind`,
/// the socket and the time: the caller fills the rest and emits or holds it in the same run.
#[inline(always)]
pub(crate) fn scratch(
    hook: Hook,
    kind: Kind,
    sk: u64,
    ts_ns: u64,
) -> Option<&'static mut RawEvent> {
    let p = EVENT_SCRATCH.get_ptr_mut(hook as u32)?;
    // SAFETY: this CPU's slot of `hook`, which no other program uses, valid for this run; all
    // zeroes is a valid `RawEvent`.
    let ev = unsafe {
        core::ptr::write_bytes(p, 0, 1);
        &mut *p
    };
    ev.ts_ns = ts_ns;
    ev.sk = sk;
    ev.kind = kind as u8;
    ev.role = Role::Unknown as u8;
    ev.rst_reason = NO_RST_REASON;
    Some(ev)
}

/// Sends `ev` to userspace, counting it as lost when the ring buffer is full.
#[inline(always)]
pub(crate) fn event<C: EbpfContext>(ctx: &C, ev: &RawEvent) {
    if EVENTS.output::<RawEvent>(ev, 0).is_ok() {
        let waiting = EVENTS.query(BPF_RB_AVAIL_DATA);
        if let Some(peak) = EVENTS_FILL.get_ptr_mut(0) {
            // SAFETY: per-CPU slot of a live map. A program interrupting this one on the CPU
            // (the reset hook runs in softirq) may race this max: the mark is a high-water
            // estimate, read and reset every second, and one race only lowers it once.
            unsafe { *peak = (*peak).max(waiting) };
        }
    } else {
        let stat = match ev.kind {
            k if k == Kind::LingerAbort as u8 => Stat::lost(Kind::LingerAbort),
            k if k == Kind::CloseWaitResolved as u8 => Stat::lost(Kind::CloseWaitResolved),
            k if k == Kind::ResetReceived as u8 => Stat::lost(Kind::ResetReceived),
            k if k == Kind::ConnectRefused as u8 => Stat::lost(Kind::ConnectRefused),
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
    // SAFETY: per-CPU slot of a live map. An atomic add: a program interrupting this one on
    // the CPU (the reset hook runs in softirq) may count into the same slot. The read after it
    // only decides whether to log (at powers of two): a count landing in between moves one log
    // line, never loses a count.
    let n = unsafe {
        add(slot, 1);
        slot.read_volatile()
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
            Stat::LostResetReceived => "ring buffer full, reset_received events lost",
            Stat::LostConnectRefused => "ring buffer full, refused connects not counted",
            Stat::ClosersFull => "CLOSERS map full, TIME_WAIT sockets unattributed",
        };
        warn!(ctx, "{} (now {} on this cpu)", what, n);
    }
}
