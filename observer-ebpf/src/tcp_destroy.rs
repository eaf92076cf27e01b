//! `tcp:tcp_destroy_sock`: the end of a socket. Emits an abort left pending by `sock_state`
//! (with the RST reason `tcp_reset` added meanwhile) and forgets the socket; nothing to do,
//! and no lookup, when this CPU's last `-> CLOSE` was this socket's and held no abort.
//!
//! In `__tcp_close` an aborted socket reaches `inet_csk_destroy_sock()` in the same call, after
//! the state change and the reset. <https://github.com/torvalds/linux/blob/v6.18/net/ipv4/tcp_ipv4.c>
//! (`tcp_v4_destroy_sock`, also used by IPv6).
//!
//! # Minimum kernel version
//! 5.11 (the tracepoint). Optional: without it aborts are emitted at the state change.

use aya_ebpf::{
    EbpfContext,
    macros::{btf_tracepoint, raw_tracepoint, tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
};

use crate::{
    emit,
    maps::{JUST_CLOSED, PENDING, SOCKS},
    off,
};

/// BTF tracepoint entry: `(struct sock *sk)`.
#[btf_tracepoint(function = "tcp_destroy_sock")]
pub(crate) fn destroy_btf(ctx: BtfTracePointContext) -> i32 {
    run(&ctx, ctx.arg(0))
}

/// Raw tracepoint entry, same argument.
#[raw_tracepoint(tracepoint = "tcp_destroy_sock")]
pub(crate) fn destroy_raw(ctx: RawTracePointContext) -> i32 {
    run(&ctx, ctx.arg(0))
}

/// Classic tracepoint entry.
#[tracepoint(category = "tcp", name = "tcp_destroy_sock")]
pub(crate) fn destroy_tp(ctx: TracePointContext) -> i32 {
    // SAFETY: offset from this kernel's format file; the read is checked.
    match unsafe { ctx.read_at::<u64>(off!(tp_destroy_skaddr) as usize) } {
        Ok(sk) => run(&ctx, sk),
        Err(_) => 0,
    }
}

#[inline(always)]
fn run<C: EbpfContext>(ctx: &C, sk: u64) -> i32 {
    // The usual case: the socket's `-> CLOSE` ran just before on this CPU, removed its entry
    // and held no abort (`tcp_done`, or `__tcp_close` of an orphan): nothing to look up.
    if let Some(last) = JUST_CLOSED.get_ptr_mut(0) {
        // SAFETY: this CPU's slot, valid for this program run.
        unsafe {
            if *last == sk {
                *last = 0;
                return 0;
            }
        }
    }
    // SAFETY: LRU entry, copied out before it is removed.
    if let Some(ev) = unsafe { PENDING.get(sk) } {
        let ev = *ev;
        emit::event(ctx, &ev);
        let _ = PENDING.remove(sk);
    }
    // Usually gone already (`-> CLOSE` removed it): a lookup is lock-free, a delete is not.
    // SAFETY: only tested for presence.
    if unsafe { SOCKS.get(sk) }.is_some() {
        let _ = SOCKS.remove(sk);
    }
    0
}
