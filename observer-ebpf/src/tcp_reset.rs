//! `tcp:tcp_send_reset`: adds the kernel's RST reason to an abort `sock_state` left pending.
//!
//! For an active reset (`tcp_send_active_reset` in the closing task) `skb` is NULL; passive
//! resets (`skb` set, `sk` NULL or a TIME_WAIT/request socket) are ignored.
//! `enum sk_rst_reason` arrived in 6.10; its values are not ABI, so userspace maps them to names
//! from BTF. <https://github.com/torvalds/linux/blob/v6.18/include/trace/events/tcp.h>
//!
//! # Minimum kernel version
//! 4.15 (the tracepoint), 6.10 for the reason. Optional: without it `rst_reason` is null.

use aya_ebpf::{
    macros::{btf_tracepoint, raw_tracepoint, tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
};
use observer_common::{event::NO_RST_REASON, layout::ABSENT};

use crate::{maps::PENDING, off};

/// BTF tracepoint entry: `(const struct sock *sk, const struct sk_buff *skb, enum sk_rst_reason)`.
#[btf_tracepoint(function = "tcp_send_reset")]
pub(crate) fn reset_btf(ctx: BtfTracePointContext) -> i32 {
    let reason = if off!(btf_reset_has_reason) == 1 {
        ctx.arg::<u32>(2)
    } else {
        NO_RST_REASON
    };
    run(ctx.arg(0), ctx.arg(1), reason)
}

/// Raw tracepoint entry, same arguments.
#[raw_tracepoint(tracepoint = "tcp_send_reset")]
pub(crate) fn reset_raw(ctx: RawTracePointContext) -> i32 {
    let reason = if off!(btf_reset_has_reason) == 1 {
        ctx.arg::<u32>(2)
    } else {
        NO_RST_REASON
    };
    run(ctx.arg(0), ctx.arg(1), reason)
}

/// Classic tracepoint entry.
#[tracepoint(category = "tcp", name = "tcp_send_reset")]
pub(crate) fn reset_tp(ctx: TracePointContext) -> i32 {
    let reason_off = off!(tp_reset_reason);
    // SAFETY: offsets come from this kernel's format file; reads are checked.
    let (sk, skb, reason) = unsafe {
        (
            ctx.read_at::<u64>(off!(tp_reset_skaddr) as usize),
            ctx.read_at::<u64>(off!(tp_reset_skbaddr) as usize),
            if reason_off == ABSENT {
                Ok(NO_RST_REASON)
            } else {
                ctx.read_at::<u32>(reason_off as usize)
            },
        )
    };
    match (sk, skb, reason) {
        (Ok(sk), Ok(skb), Ok(reason)) => run(sk, skb, reason),
        _ => 0,
    }
}

#[inline(always)]
fn run(sk: u64, skb: u64, reason: u32) -> i32 {
    if sk == 0 || skb != 0 {
        return 0;
    }
    if let Some(ev) = PENDING.get_ptr_mut(sk) {
        // SAFETY: LRU entry pointer, valid for this program run.
        unsafe { (*ev).rst_reason = reason };
    }
    0
}
