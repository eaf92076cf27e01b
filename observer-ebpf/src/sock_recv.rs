//! `sock:sock_recv_length`, fired after every `recvmsg()` of every socket: records who reads a
//! TCP socket and when it last consumed data. O(1): one lookup, and an owner copy only when the
//! reader changed. `MSG_PEEK` reads name the owner but do not count as consuming.
//!
//! The hot path of a keep-alive connection is the same process reading the same socket again
//! and again: the BTF program remembers the last read on each CPU ([`LAST_READ`]) and skips
//! the lookup for a read of the same socket by the same process that consumed nothing (`EOF`,
//! `EAGAIN`, a peek) or came within [`RECENT_NS`] of its last consuming read, unless the
//! socket is in CLOSE_WAIT (whose reads update the leak's entry). Its clock is the socket's own
//! (`tcp_mstamp`, refreshed by the read), not a clock read. The last-read time is then precise
//! to 10 ms, and a changed reader is seen at its first read.
//! <https://github.com/torvalds/linux/blob/v6.18/include/trace/events/sock.h>
//!
//! # Minimum kernel version
//! 6.3 (the tracepoint). Fallbacks: fexit on `tcp_recvmsg` (5.5, BTF-typed: the same
//! arguments, one program per parameter list, chosen from BTF), then a kprobe on `tcp_recvmsg`, which runs
//! before the read and so names the reader but records no last-read time (it cannot tell what
//! the read will consume). Optional: without it owners come from connect/listen/close.

use aya_ebpf::{
    EbpfContext,
    helpers::bpf_get_current_pid_tgid,
    macros::{btf_tracepoint, fexit, kprobe, raw_tracepoint, tracepoint},
    programs::{
        BtfTracePointContext, FExitContext, ProbeContext, RawTracePointContext, TracePointContext,
    },
};
use observer_common::{
    event::{SOCK_CW_TRACKED, Stat},
    tcp::{self, MSG_PEEK},
};

use crate::{
    close_wait, emit,
    maps::{LAST_READ, LAST_READ_SLOTS, LastRead},
    off,
    sock::{Sock, set_owner},
    sock_state::track_reader,
    socks,
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

/// fexit entry on `tcp_recvmsg(sk, msg, len, flags, addr_len)` (5.19+), for kernels before
/// 6.3: the arguments, then the return value. The agent loads this one or [`recv_fexit6`],
/// whichever matches the parameters BTF lists (the context is read at constant indexes, as
/// the verifier requires). Only TCP sockets reach `tcp_recvmsg`.
/// <https://github.com/torvalds/linux/blob/v6.1/net/ipv4/tcp.c>
#[fexit(function = "tcp_recvmsg")]
pub(crate) fn recv_fexit5(ctx: FExitContext) -> i32 {
    track(&ctx, Sock::<true>(ctx.arg(0)), ctx.arg(5), ctx.arg(3))
}

/// fexit entry on `tcp_recvmsg(sk, msg, len, nonblock, flags, addr_len)` (before 5.19).
#[fexit(function = "tcp_recvmsg")]
pub(crate) fn recv_fexit6(ctx: FExitContext) -> i32 {
    track(&ctx, Sock::<true>(ctx.arg(0)), ctx.arg(6), ctx.arg(4))
}

/// kprobe entry on `tcp_recvmsg(struct sock *sk, ...)`, the last fallback. It runs before the
/// read: the reader is named, but nothing counts as consumed (no last-read time).
#[kprobe(function = "tcp_recvmsg")]
pub(crate) fn recv_kprobe(ctx: ProbeContext) -> i32 {
    match ctx.arg::<*const u8>(0) {
        Some(sk) => run(&ctx, Sock::<false>(sk), 0, 0),
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

/// Reads of one socket by one process on one CPU closer together than this update its entry
/// once.
const RECENT_NS: u64 = 10_000_000;

/// Records the read of a TCP socket.
#[inline(always)]
fn track<C: EbpfContext, const B: bool>(ctx: &C, sk: Sock<B>, ret: i32, flags: i32) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let pid = (pid_tgid >> 32) as u32;
    let consumed = ret > 0 && flags & MSG_PEEK == 0;
    // BTF programs only: the others are the fallbacks, where reading the state is a probe read.
    let last = if B {
        last_read(sk, pid_tgid as u32)
    } else {
        None
    };
    // A read that copied data has just refreshed the socket's clock (`tcp_rcv_space_adjust`).
    let consumed_at = if consumed { sk.refreshed_now_ns() } else { 0 };
    if let Some(last) = last {
        // SAFETY: this CPU's slot of a per-CPU array, valid for this program run.
        let seen = unsafe { &*last };
        // The same reader again, soon after its last consuming read (or consuming nothing
        // this time): nothing to record, unless the socket is in CLOSE_WAIT.
        if seen.sk == sk.key()
            && seen.pid == pid
            && (!consumed || consumed_at.wrapping_sub(seen.at_ns) < RECENT_NS)
            && sk.state() != Ok(tcp::CLOSE_WAIT)
        {
            return 0;
        }
    }
    match socks::get(socks::Hook::Read, sk) {
        Some(mut st) => {
            let st = st.get_mut();
            if consumed_at != 0 {
                st.last_read_ns = consumed_at;
            }
            if st.pid != pid {
                set_owner::<B>(st, pid);
            }
            if st.flags & SOCK_CW_TRACKED != 0 && close_wait::on_read(sk, pid, consumed_at).is_err()
            {
                emit::count(ctx, Stat::ReadFailed);
            }
        }
        None => track_reader(ctx, sk, pid, consumed_at),
    }
    if let Some(last) = last {
        // This CPU's last read in the slot: a read that consumed nothing (at 0) is never recent.
        // SAFETY: this CPU's slot of a per-CPU array, valid for this program run; only this
        // program writes it.
        unsafe {
            *last = LastRead {
                sk: sk.key(),
                at_ns: consumed_at,
                pid,
                _pad: 0,
            };
        }
    }
    0
}

/// This CPU's [`LAST_READ`] slot for a read by thread `tid` of `sk`: a hash of the thread and
/// the peer port, so a thread per
/// connection, or one thread reading many peers, spread over the slots.
#[inline(always)]
fn last_read<const B: bool>(sk: Sock<B>, tid: u32) -> Option<*mut LastRead> {
    let dport: u16 = sk.read(off!(skc_dport)).ok()?;
    let slot = (u32::from(dport).wrapping_mul(0x9e37_79b9) >> 16 ^ tid) % LAST_READ_SLOTS;
    LAST_READ.get_ptr_mut(slot)
}
