//! `tcp:tcp_send_reset`: adds the kernel's RST reason to an abort `sock_state` left pending,
//! and emits it.
//!
//! `__tcp_close` aborts with `tcp_set_state(TCP_CLOSE)` then `tcp_send_active_reset()`, in the
//! closing task, and the tracepoint fires at the end of the latter: a pending abort is
//! complete here, a few instructions after it was held. If the reset is never traced (its
//! buffer could not be allocated), the agent emits the abort from `PENDING` without a reason.
//! For an active reset `skb` is NULL; passive resets (`skb` set, `sk` NULL or a
//! TIME_WAIT/request socket) are ignored. <https://github.com/torvalds/linux/blob/v6.18/net/ipv4/tcp_output.c>
//! `enum sk_rst_reason` arrived in 6.10; its values are not ABI, so userspace maps them to names
//! from BTF. <https://github.com/torvalds/linux/blob/v6.18/include/trace/events/tcp.h>
//!
//! # Minimum kernel version
//! 4.15 (the tracepoint), 6.10 for the reason. Optional: without it `rst_reason` is null.

use aya_ebpf::{
    EbpfContext,
    macros::{btf_tracepoint, raw_tracepoint, tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
};
use observer_common::{event::NO_RST_REASON, layout::ABSENT};

use crate::{emit, maps::PENDING, off};

/// BTF tracepoint entry: `(const struct sock *sk, const struct sk_buff *skb, enum sk_rst_reason)`.
#[btf_tracepoint(function = "tcp_send_reset")]
pub(crate) fn reset_btf(ctx: BtfTracePointContext) -> i32 {
    let reason = if off!(btf_reset_has_reason) == 1 {
        ctx.arg::<u32>(2)
    } else {
        NO_RST_REASON
    };
    run(&ctx, ctx.arg(0), ctx.arg(1), reason)
}

/// Raw tracepoint entry, same arguments.
#[raw_tracepoint(tracepoint = "tcp_send_reset")]
pub(crate) fn reset_raw(ctx: RawTracePointContext) -> i32 {
    let reason = if off!(btf_reset_has_reason) == 1 {
        ctx.arg::<u32>(2)
    } else {
        NO_RST_REASON
    };
    run(&ctx, ctx.arg(0), ctx.arg(1), reason)
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
        (Ok(sk), Ok(skb), Ok(reason)) => run(&ctx, sk, skb, reason),
        _ => 0,
    }
}

#[inline(always)]
fn run<C: EbpfContext>(ctx: &C, sk: u64, skb: u64, reason: u32) -> i32 {
    if sk == 0 || skb != 0 {
        return 0;
    }
    // SAFETY: LRU entry, copied out before it is removed.
    if let Some(ev) = unsafe { PENDING.get(sk) } {
        let mut ev = *ev;
        ev.rst_reason = reason;
        emit::event(ctx, &ev);
        let _ = PENDING.remove(sk);
    }
    0
}
