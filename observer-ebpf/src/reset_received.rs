//! `tcp:tcp_receive_reset`: an RST arrived on a connection, the victim's side of an abort.
//!
//! `tcp_reset()` fires the tracepoint first, before `tcp_done()` moves the socket to CLOSE,
//! so the socket still has its state, its queues' sequence numbers and its `SockState`. It
//! runs in softirq (or in the owner's `release_sock()` for a segment queued to the backlog):
//! the current task is whoever the interrupt landed on, so the owner comes from the
//! `SockState` recorded in process context, never from the task; where none was recorded (an
//! accepted socket not read while the read hook ran) it is the listener's, and the event
//! carries the socket's inode for userspace to find the process holding it. A reset in `SYN_SENT`
//! answers a `connect()` (refused): it becomes a `ConnectRefused` record, which userspace
//! counts per workload and peer and does not store.
//! <https://github.com/torvalds/linux/blob/v6.18/net/ipv4/tcp_input.c> (`tcp_reset`)
//!
//! # Minimum kernel version
//! 4.15 (the tracepoint). Optional: without it there are no `reset_received` events.

use aya_ebpf::{
    EbpfContext,
    helpers::bpf_ktime_get_ns,
    macros::{btf_tracepoint, raw_tracepoint, tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
};
use observer_common::{
    event::{Kind, RawEvent, SOCK_COUNTED, Stat},
    flow::FlowKey,
    tcp,
};

use crate::{
    emit,
    maps::FLOWS,
    off,
    sock::Sock,
    socks::{self, Hook},
};

/// BTF tracepoint entry: `(const struct sock *sk)`.
#[btf_tracepoint(function = "tcp_receive_reset")]
pub(crate) fn rcv_reset_btf(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    run(&ctx, Sock::<true>(sk))
}

/// Raw tracepoint entry, same argument.
#[raw_tracepoint(tracepoint = "tcp_receive_reset")]
pub(crate) fn rcv_reset_raw(ctx: RawTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    run(&ctx, Sock::<false>(sk))
}

/// Classic tracepoint entry: `skaddr` at the offset read from the event's tracefs `format`.
#[tracepoint(category = "tcp", name = "tcp_receive_reset")]
pub(crate) fn rcv_reset_tp(ctx: TracePointContext) -> i32 {
    // SAFETY: the offset comes from this kernel's format file; the read is checked.
    if let Ok(sk) = unsafe { ctx.read_at::<u64>(off!(tp_rcv_reset_skaddr) as usize) } {
        run(&ctx, Sock::<false>(sk as *const u8))
    } else {
        emit::count(&ctx, Stat::ReadFailed);
        0
    }
}

#[inline(always)]
fn run<C: EbpfContext, const B: bool>(ctx: &C, sk: Sock<B>) -> i32 {
    if try_run(ctx, sk).is_err() {
        emit::count(ctx, Stat::ReadFailed);
    }
    0
}

#[inline(always)]
fn try_run<C: EbpfContext, const B: bool>(ctx: &C, sk: Sock<B>) -> Result<(), i32> {
    if !sk.is_tcp()? {
        return Ok(());
    }
    let state = sk.state()?;
    let kind = match state {
        tcp::SYN_SENT => Kind::ConnectRefused,
        // Synchronized states: a connection the peer reset. LISTEN, SYN_RECV request sockets
        // and TIME_WAIT sockets never reach `tcp_reset()`.
        tcp::ESTABLISHED
        | tcp::CLOSE_WAIT
        | tcp::FIN_WAIT1
        | tcp::FIN_WAIT2
        | tcp::CLOSING
        | tcp::LAST_ACK
        | tcp::SYN_RECV => Kind::ResetReceived,
        _ => return Ok(()),
    };
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(ev) = emit::scratch(Hook::Reset, kind, sk.key(), now) else {
        return Ok(());
    };
    ev.old_state = state as u8;
    let st = socks::get(Hook::Reset, sk);
    if let Some(st) = st {
        let st = st.get();
        (ev.pid, ev.comm, ev.cgroup_id) = (st.pid, st.comm, st.cgroup_id);
        ev.established_ns = st.established_ns;
        ev.last_read_ns = st.last_read_ns;
        ev.role = st.role;
    }
    if ev.pid == 0 && kind == Kind::ResetReceived {
        listener_owner(ev, st);
        ev.inode = sk.inode()?;
    }
    let tcp = sk.tcp()?;
    sk.endpoints(tcp)?.fill_event(ev);
    if kind == Kind::ResetReceived {
        let rcv_nxt: u32 = tcp.read(off!(tcp_rcv_nxt))?;
        let copied_seq: u32 = tcp.read(off!(tcp_copied_seq))?;
        let write_seq: u32 = tcp.read(off!(tcp_write_seq))?;
        let snd_una: u32 = tcp.read(off!(tcp_snd_una))?;
        ev.unread_bytes = tcp::unread_bytes(rcv_nxt, copied_seq, tcp::fin_received(state, false));
        ev.unsent_bytes = write_seq.wrapping_sub(snd_una);
        (ev.bytes_received, ev.bytes_sent) = tcp.byte_counts()?;
    }
    emit::event(ctx, ev);
    Ok(())
}

/// An accepted socket's owner as far as the kernel knows it: its listener's, where the
/// connection was counted (the `FLOWS` key and entry: the process that called `listen()`,
/// which for a pre-forking server is the parent, not the worker). Userspace replaces it with
/// the process holding the socket's file when it still finds one.
#[inline(always)]
fn listener_owner(ev: &mut RawEvent, st: Option<socks::State>) {
    let Some(st) = st else {
        return;
    };
    let st = st.get();
    if st.flags & SOCK_COUNTED == 0 || st.flow_id == FlowKey::OTHER_ID {
        return;
    }
    // SAFETY: a live `FLOWS` value; only its pid is read, a word other CPUs write whole.
    if let Some(entry) = unsafe { FLOWS.get(st.flow_id) } {
        (ev.pid, ev.comm, ev.cgroup_id) = (entry.stats.pid, st.flow.comm, st.flow.cgroup_id);
    }
}
