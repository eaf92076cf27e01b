//! `sock:inet_sock_set_state`, called from `tcp_set_state()`: the one required hook.
//!
//! * `CLOSE -> SYN_SENT` runs in `connect()`: the caller owns a client socket.
//! * `SYN_SENT | SYN_RECV -> ESTABLISHED` runs in softirq: it records the time and the role,
//!   never the current task (that is whoever the interrupt landed on).
//! * `CLOSE -> LISTEN` runs in `listen()`: the caller owns the listener and, for counting, the
//!   connections it will accept.
//! * `-> ESTABLISHED` and `-> CLOSE` also count the connection in `FLOWS` (see `flows`).
//! * `-> FIN_WAIT1` runs in `close()`/`shutdown()`: the caller owns the socket, and the
//!   TIME_WAIT socket it may leave behind.
//! * `ESTABLISHED | CLOSE_WAIT | FIN_WAIT1 | FIN_WAIT2 -> CLOSE` with `sk_shutdown ==
//!   SHUTDOWN_MASK`, no `sk_err` and not yet `SOCK_DEAD` is `__tcp_close()` aborting in the
//!   owner's `close()`: an RST-on-close when bytes were left unread, a linger abort when
//!   `SO_LINGER` 0 was set and nothing was unread. A received RST or a timeout sets `sk_err`
//!   first, an orphan's timers run on a `SOCK_DEAD` socket, and a FIN_WAIT socket that got the
//!   peer's FIN (`SOCK_DONE`) is moving to TIME_WAIT: none of them is mistaken for an abort.
//!
//! `__tcp_close` purges the receive queue before this transition, so the queue is empty here;
//! `rcv_nxt - copied_seq` still holds what was unread.
//! <https://github.com/torvalds/linux/blob/v6.18/net/ipv4/tcp.c> (`__tcp_close`)
//!
//! # Minimum kernel version
//! 4.16 (the tracepoint). BTF tracepoint 5.5; raw tracepoint and classic tracepoint otherwise.

use aya_ebpf::{
    EbpfContext,
    helpers::bpf_ktime_get_ns,
    macros::{btf_tracepoint, raw_tracepoint, tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
};
use observer_common::{
    event::{Config, Kind, RawEvent, Role, SOCK_COUNTED, SockState, Stat},
    flow::FlowKey,
    tcp,
};

use crate::{
    close_wait, emit, flows,
    maps::{PENDING, config_flag},
    off,
    sock::{Sock, current_owner, current_pid, set_owner},
    socks::{self, Hook},
};

/// BTF tracepoint entry: `(struct sock *sk, int oldstate, int newstate)`.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub(crate) fn state_btf(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    run(&ctx, Sock::<true>(sk), old, new)
}

/// Raw tracepoint entry, same arguments.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub(crate) fn state_raw(ctx: RawTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    run(&ctx, Sock::<false>(sk), old, new)
}

/// Classic tracepoint entry: fields at the offsets read from the event's tracefs `format`.
#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub(crate) fn state_tp(ctx: TracePointContext) -> i32 {
    // SAFETY: offsets come from this kernel's format file; reads are checked.
    let fields = unsafe {
        (
            ctx.read_at::<u64>(off!(tp_state_skaddr) as usize),
            ctx.read_at::<i32>(off!(tp_state_oldstate) as usize),
            ctx.read_at::<i32>(off!(tp_state_newstate) as usize),
        )
    };
    if let (Ok(sk), Ok(old), Ok(new)) = fields {
        run(&ctx, Sock::<false>(sk as *const u8), old, new)
    } else {
        emit::count(&ctx, Stat::ReadFailed);
        0
    }
}

#[inline(always)]
fn run<C: EbpfContext, const B: bool>(ctx: &C, sk: Sock<B>, old: i32, new: i32) -> i32 {
    if try_run(ctx, sk, old, new).is_err() {
        emit::count(ctx, Stat::ReadFailed);
    }
    0
}

#[inline(always)]
fn try_run<C: EbpfContext, const B: bool>(
    ctx: &C,
    sk: Sock<B>,
    old: i32,
    new: i32,
) -> Result<(), i32> {
    if !sk.is_tcp()? {
        return Ok(());
    }
    // One lookup serves every step below, and only the steps that use it look: the entry does
    // not exist yet before SYN_SENT, LISTEN and SYN_RECV, and FIN_WAIT2, CLOSING and LAST_ACK
    // change nothing (unless they leave ESTABLISHED or CLOSE_WAIT).
    let uses_entry = matches!(old, tcp::ESTABLISHED | tcp::CLOSE_WAIT)
        || matches!(
            new,
            tcp::ESTABLISHED | tcp::CLOSE_WAIT | tcp::FIN_WAIT1 | tcp::CLOSE
        );
    let st = if uses_entry {
        socks::get(Hook::State, sk)
    } else {
        None
    };
    // Through the stack: otherwise the compiler, knowing the steps below run only where the
    // lookup ran, reads the lookup's register on paths the verifier cannot rule out (it does
    // not follow the bit test `matches!` compiles to) and the program is refused.
    // SAFETY: a read of a local.
    let st = unsafe { core::ptr::read_volatile(&raw const st) };
    if old == tcp::ESTABLISHED {
        flows::leave_established(ctx, st);
    }
    if old == tcp::CLOSE_WAIT {
        close_wait::leave(ctx, sk, st, new)?;
    }
    match new {
        tcp::SYN_SENT => connecting(ctx, sk),
        tcp::ESTABLISHED if old == tcp::SYN_RECV => accepted(ctx, sk, st)?,
        tcp::ESTABLISHED => {
            if let Some(st) = st {
                connected(ctx, sk, st, old)?;
            }
        }
        tcp::LISTEN => flows::listen(sk)?,
        tcp::CLOSE_WAIT => close_wait::enter(ctx, sk, st)?,
        // Who closes first owns the TIME_WAIT socket to come (`flows::close` records it). A
        // socket entering LAST_ACK has left CLOSE_WAIT and goes nowhere but CLOSE: nothing
        // reads its owner again.
        tcp::FIN_WAIT1 => {
            let pid = current_pid();
            if let Some(mut st) = st {
                let st = st.get_mut();
                if st.pid != pid {
                    set_owner::<B>(st, pid);
                }
            }
        }
        tcp::CLOSE => {
            let aborted = on_abort(ctx, sk, st, old);
            let counted = flows::close(ctx, sk, st, old);
            // Whatever failed above: no entry outlives its socket, whose address a new
            // socket may get.
            socks::remove(Hook::State, sk);
            aborted?;
            counted?;
        }
        _ => {}
    }
    Ok(())
}

/// `CLOSE -> SYN_SENT`, in `connect()`: the caller owns a new client socket. The handshake
/// steps are functions of their own (not inlined), so their state and flow key are on their
/// own frames, never beside another step's (the verifier allows 512 bytes for the chain).
#[inline(never)]
fn connecting<C: EbpfContext, const B: bool>(ctx: &C, sk: Sock<B>) {
    let mut st = fresh(Role::Client);
    set_owner::<B>(&mut st, current_pid());
    insert(ctx, Hook::State, sk, &st);
}

/// `SYN_RECV -> ESTABLISHED`: an accepted socket. A state found for it was made by a read
/// before the handshake completed (TCP Fast Open data): its reader is kept. One with a
/// handshake time is an earlier socket's at the same address, whose `-> CLOSE` the programs
/// missed (how is not known: no skipped runs were counted when it was seen): it is replaced,
/// flags and flow included.
#[inline(never)]
fn accepted<C: EbpfContext, const B: bool>(
    ctx: &C,
    sk: Sock<B>,
    st: Option<socks::State>,
) -> Result<(), i32> {
    let mut new = fresh(Role::Server);
    if let Some(found) = st {
        let found = found.get();
        if found.established_ns == 0 {
            (new.pid, new.comm, new.cgroup_id) = (found.pid, found.comm, found.cgroup_id);
            new.last_read_ns = found.last_read_ns;
        }
    }
    // Softirq, processing the segment that completed the handshake.
    new.established_ns = sk.refreshed_now_ns();
    // Tracked even if counting fails (the failure is counted by the caller).
    let counted = flows::open(ctx, sk, &mut new, Role::Server);
    insert(ctx, Hook::State, sk, &new);
    counted
}

/// `-> ESTABLISHED` of a socket with a state: a client's handshake completing (or a
/// simultaneous open), counted as opened once.
#[inline(never)]
fn connected<C: EbpfContext, const B: bool>(
    ctx: &C,
    sk: Sock<B>,
    mut st: socks::State,
    old: i32,
) -> Result<(), i32> {
    let st = st.get_mut();
    // Softirq, processing the segment that completed the handshake.
    st.established_ns = sk.refreshed_now_ns();
    if old == tcp::SYN_SENT && st.flags & SOCK_COUNTED == 0 {
        flows::open(ctx, sk, st, Role::Client)?;
    }
    Ok(())
}

/// Checks whether this `-> CLOSE` is the owner's `close()` aborting, and reports it: at once,
/// or held in `PENDING` for `tcp_reset` to add the RST reason the kernel traces next. The
/// event is built in `EVENT_SCRATCH`, not on the stack, and the function is not inlined, so
/// its frame stays off the callers' (the verifier allows 512 bytes for the whole chain).
#[inline(never)]
fn on_abort<C: EbpfContext, const B: bool>(
    ctx: &C,
    sk: Sock<B>,
    st: Option<socks::State>,
    old: i32,
) -> Result<(), i32> {
    if !tcp::abortable(old, false) {
        return Ok(());
    }
    let shutdown: u8 = sk.read(off!(sk_shutdown))?;
    if shutdown != tcp::SHUTDOWN_MASK {
        return Ok(());
    }
    let err: i32 = sk.read(off!(sk_err))?;
    let flags: u64 = sk.read(off!(sk_flags))?;
    let sock_done = flags & (1 << off!(flag_done)) != 0;
    if err != 0 || flags & (1 << off!(flag_dead)) != 0 || !tcp::abortable(old, sock_done) {
        return Ok(());
    }
    let tcp = sk.tcp()?;
    let rcv_nxt: u32 = tcp.read(off!(tcp_rcv_nxt))?;
    let copied_seq: u32 = tcp.read(off!(tcp_copied_seq))?;
    let fin = tcp::fin_received(old, sock_done);
    let unread = tcp::unread_bytes(rcv_nxt, copied_seq, fin);
    let kind = if unread > 0 {
        Kind::RstOnClose
    } else {
        let linger = flags & (1 << off!(flag_linger)) != 0;
        let lingertime: u64 = sk.read(off!(sk_lingertime))?;
        if !linger || lingertime != 0 {
            return Ok(());
        }
        Kind::LingerAbort
    };

    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(ev) = emit::scratch(Hook::State, kind, sk.key(), now) else {
        return Ok(());
    };
    ev.unread_bytes = unread;
    ev.old_state = old as u8;
    // This runs in the closing task: it is the owner, whatever was recorded before.
    (ev.pid, ev.comm, ev.cgroup_id) = current_owner::<B>(current_pid());
    if let Some(st) = st {
        let st = st.get();
        ev.established_ns = st.established_ns;
        ev.last_read_ns = st.last_read_ns;
        ev.role = st.role;
    }
    (ev.bytes_received, ev.bytes_sent) = tcp.byte_counts()?;
    sk.endpoints(tcp)?.fill_event(ev);

    if config_flag(Config::EMIT_AT_RESET) {
        // By reference: the insert copies from the scratch slot, not from a stack copy.
        let held: &RawEvent = ev;
        if PENDING.insert(sk.key(), held, 0).is_err() {
            emit::count(ctx, Stat::PendingFull);
        }
    } else {
        emit::event(ctx, ev);
    }
    Ok(())
}

#[inline(always)]
fn fresh(role: Role) -> SockState {
    SockState {
        established_ns: 0,
        last_read_ns: 0,
        cgroup_id: 0,
        comm: [0; 16],
        pid: 0,
        role: role as u8,
        flags: 0,
        cw_slot: 0,
        _pad: 0,
        flow: FlowKey::OTHER,
        flow_id: FlowKey::OTHER_ID,
        close_wait_ns: 0,
    }
}

#[inline(always)]
fn insert<C: EbpfContext, const B: bool>(ctx: &C, hook: Hook, sk: Sock<B>, st: &SockState) {
    if socks::insert(hook, sk, st).is_err() {
        emit::count(ctx, Stat::SocksFull);
    }
}

/// Shared with `sock_recv`: a new entry for a socket first seen being read, unless it is
/// closed (a read after a reset): nothing reads its entry any more, and nothing would delete
/// it.
#[inline(always)]
pub(crate) fn track_reader<C: EbpfContext, const B: bool>(
    ctx: &C,
    sk: Sock<B>,
    pid: u32,
    read_ns: u64,
) {
    if !matches!(sk.state(), Ok(s) if s != tcp::CLOSE) {
        return;
    }
    let mut st = fresh(Role::Unknown);
    set_owner::<B>(&mut st, pid);
    st.last_read_ns = read_ns;
    insert(ctx, Hook::Read, sk, &st);
}
