//! `sock:sock_recv_length`, fired after every `recvmsg()` of every socket: records who reads a
//! TCP socket and when it last consumed data. O(1): one lookup, and an owner copy only when the
//! reader changed. `MSG_PEEK` reads name the owner but do not count as consuming.
//! <https://github.com/torvalds/linux/blob/v6.18/include/trace/events/sock.h>
//!
//! # Minimum kernel version
//! 6.3 (the tracepoint). Fallback: kprobe on `tcp_recvmsg` (entry only: the read is counted
//! when it starts, whatever it returns). Optional: without it owners come from connect/close.

use aya_ebpf::{
    EbpfContext,
    macros::{btf_tracepoint, kprobe, raw_tracepoint, tracepoint},
    programs::{BtfTracePointContext, ProbeContext, RawTracePointContext, TracePointContext},
};
use observer_common::{
    event::{SOCK_CW_TRACKED, Stat},
    tcp::MSG_PEEK,
};

use crate::{
    close_wait, emit,
    maps::SOCKS,
    off,
    sock::{Sock, current_pid, set_owner},
    sock_state::track_reader,
};

/// BTF tracepoint entry: `(struct sock *sk, int ret, int flags)`.
#[btf_tracepoint(function = "sock_recv_length")]
pub(crate) fn recv_btf(ctx: BtfTracePointContext) -> i32 {
    let sk = Sock::<true>(ctx.arg(0));
    if !matches!(sk.is_tcp(), Ok(true)) {
        return 0;
    }
    track(&ctx, sk, ctx.arg(1), ctx.arg(2))
}

/// Raw tracepoint entry, same arguments.
#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub(crate) fn recv_raw(ctx: RawTracePointContext) -> i32 {
    run(&ctx, Sock::<false>(ctx.arg(0)), ctx.arg(1), ctx.arg(2))
}

/// Classic tracepoint entry.
#[tracepoint(category = "sock", name = "sock_recv_length")]
pub(crate) fn recv_tp(ctx: TracePointContext) -> i32 {
    // SAFETY: offsets come from this kernel's format file; reads are checked.
    let fields = unsafe {
        (
            ctx.read_at::<u64>(off!(tp_recv_sk) as usize),
            ctx.read_at::<i32>(off!(tp_recv_ret) as usize),
            ctx.read_at::<i32>(off!(tp_recv_flags) as usize),
        )
    };
    match fields {
        (Ok(sk), Ok(ret), Ok(flags)) => run(&ctx, Sock::<false>(sk as *const u8), ret, flags),
        _ => 0,
    }
}

/// kprobe entry on `tcp_recvmsg(struct sock *sk, ...)`, for kernels before 6.3.
#[kprobe(function = "tcp_recvmsg")]
pub(crate) fn recv_kprobe(ctx: ProbeContext) -> i32 {
    match ctx.arg::<*const u8>(0) {
        Some(sk) => run(&ctx, Sock::<false>(sk), 1, 0),
        None => 0,
    }
}

#[inline(always)]
fn run<C: EbpfContext, const B: bool>(ctx: &C, sk: Sock<B>, ret: i32, flags: i32) -> i32 {
    match sk.is_tcp() {
        Ok(true) => track(ctx, sk, ret, flags),
        Ok(false) => 0,
        Err(_) => {
            emit::count(ctx, Stat::ReadFailed);
            0
        }
    }
}

/// Records the read of a TCP socket.
#[inline(always)]
fn track<C: EbpfContext, const B: bool>(ctx: &C, sk: Sock<B>, ret: i32, flags: i32) -> i32 {
    let pid = current_pid();
    // A read that copied data has just refreshed the socket's clock (`tcp_rcv_space_adjust`);
    // the kprobe fallback runs before the read and is not BTF-typed, so it reads the clock.
    let consumed_at = if ret > 0 && flags & MSG_PEEK == 0 {
        sk.refreshed_now_ns()
    } else {
        0
    };
    match SOCKS.get_ptr_mut(sk.key()) {
        // SAFETY: LRU entry pointer, valid for this program run.
        Some(st) => unsafe {
            if consumed_at != 0 {
                (*st).last_read_ns = consumed_at;
            }
            if (*st).pid != pid {
                set_owner::<B>(&mut *st, pid);
            }
            if (*st).flags & SOCK_CW_TRACKED != 0
                && close_wait::on_read(sk, pid, consumed_at).is_err()
            {
                emit::count(ctx, Stat::ReadFailed);
            }
        },
        None => track_reader(ctx, sk, pid, consumed_at),
    }
    0
}
