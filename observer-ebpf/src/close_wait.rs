//! CLOSE_WAIT tracking, driven by `sock_state` and `sock_recv`: the peer's FIN moved the socket
//! to CLOSE_WAIT and only its owner's `close()` moves it on. Entries live in the pinned
//! `CLOSE_WAIT` map; the agent scans it for leaks and marks those it reported, and leaving
//! CLOSE_WAIT emits `close_wait_resolved` for exactly those (and for sockets that were in
//! CLOSE_WAIT before the programs were attached, which the agent found at start-up).
//!
//! `-> CLOSE_WAIT` runs in softirq (or the peer's task on loopback): the owner is copied from
//! `SOCKS`, recorded earlier in process context, never taken from the current task.

use aya_ebpf::{EbpfContext, helpers::bpf_ktime_get_ns};
use observer_common::{
    event::{
        CW_REPORTED, CloseWaitEntry, Kind, NO_RST_REASON, RawEvent, Role, SOCK_IN_CLOSE_WAIT,
        SockState, Stat,
    },
    tcp,
};

use crate::{
    emit,
    maps::CLOSE_WAIT,
    off,
    sock::{Sock, current_owner, current_pid},
};

/// `ESTABLISHED -> CLOSE_WAIT`: records the entry. (Not inlined: see `sock_state::on_abort`.)
#[inline(never)]
pub(crate) fn enter<C: EbpfContext, const B: bool>(
    ctx: &C,
    sk: Sock<B>,
    st: Option<*mut SockState>,
) -> Result<(), i32> {
    let tcp = sk.tcp()?;
    let ends = sk.endpoints(tcp)?;
    let mut e = CloseWaitEntry {
        // Processing the peer's FIN.
        entered_ns: tcp.refreshed_now_ns(),
        established_ns: 0,
        last_read_ns: 0,
        cgroup_id: 0,
        bytes_received: tcp.byte_counts()?.0,
        inode: 0,
        saddr: ends.saddr,
        daddr: ends.daddr,
        comm: [0; 16],
        rcv_nxt: tcp.read(off!(tcp_rcv_nxt))?,
        copied_seq: tcp.read(off!(tcp_copied_seq))?,
        netns: ends.netns,
        pid: 0,
        sport: ends.sport,
        dport: ends.dport,
        family: ends.family,
        role: Role::Unknown as u8,
        flags: 0,
    };
    if let Some(st) = st {
        // SAFETY: LRU entry pointer, valid for this program run.
        let st = unsafe {
            (*st).flags |= SOCK_IN_CLOSE_WAIT;
            &*st
        };
        e.established_ns = st.established_ns;
        e.last_read_ns = st.last_read_ns;
        e.cgroup_id = st.cgroup_id;
        e.comm = st.comm;
        e.pid = st.pid;
        e.role = st.role;
    }
    if e.pid == 0 {
        // The owner's file: a kernel read that is not BTF-typed, so only when needed.
        e.inode = sk.inode()?;
    }
    if CLOSE_WAIT.insert(sk.key(), e, 0).is_err() {
        emit::count(ctx, Stat::CloseWaitFull);
    }
    Ok(())
}

/// `CLOSE_WAIT -> LAST_ACK | CLOSE`: forgets the entry, and reports the end of a reported leak
/// (or of a socket that predates the programs, entry unknown). Not inlined, as `enter`.
#[inline(never)]
pub(crate) fn leave<C: EbpfContext, const B: bool>(
    ctx: &C,
    sk: Sock<B>,
    st: Option<*mut SockState>,
    new: i32,
) -> Result<(), i32> {
    let key = sk.key();
    // SAFETY: entry copied out before it is removed.
    let entry = unsafe { CLOSE_WAIT.get(key) }.copied();
    let _ = CLOSE_WAIT.remove(key);
    if let Some(st) = st {
        // SAFETY: LRU entry pointer, valid for this program run.
        unsafe { (*st).flags &= !SOCK_IN_CLOSE_WAIT };
    }
    if let Some(e) = entry
        && e.flags & CW_REPORTED == 0
    {
        return Ok(());
    }
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let tcp = sk.tcp()?;
    let ends = sk.endpoints(tcp)?;
    let mut ev = RawEvent {
        ts_ns: now,
        sk: key,
        cgroup_id: 0,
        established_ns: 0,
        bytes_received: 0,
        bytes_sent: 0,
        saddr: ends.saddr,
        daddr: ends.daddr,
        comm: [0; 16],
        unread_bytes: 0,
        netns: ends.netns,
        pid: 0,
        rst_reason: NO_RST_REASON,
        sport: ends.sport,
        dport: ends.dport,
        family: ends.family,
        kind: Kind::CloseWaitResolved as u8,
        role: Role::Unknown as u8,
        old_state: tcp::CLOSE_WAIT as u8,
        _pad: [0; 7],
        close_wait_ns: 0,
        last_read_ns: 0,
    };
    (ev.bytes_received, ev.bytes_sent) = tcp.byte_counts()?;
    let copied: u32 = tcp.read(off!(tcp_copied_seq))?;
    let rcv_nxt: u32 = tcp.read(off!(tcp_rcv_nxt))?;
    ev.unread_bytes = tcp::unread_bytes(rcv_nxt, copied, true);
    if let Some(e) = entry {
        ev.close_wait_ns = now.saturating_sub(e.entered_ns).max(1);
        ev.established_ns = e.established_ns;
        ev.last_read_ns = e.last_read_ns;
        ev.role = e.role;
        ev.pid = e.pid;
        ev.comm = e.comm;
        ev.cgroup_id = e.cgroup_id;
    }
    // `-> LAST_ACK` is always the owner's close()/shutdown(); `-> CLOSE` is its close()
    // aborting unless an error (a received RST, a timeout) was set first.
    let err: i32 = sk.read(off!(sk_err))?;
    if new == tcp::LAST_ACK || (new == tcp::CLOSE && err == 0) {
        (ev.pid, ev.comm, ev.cgroup_id) = current_owner::<B>(current_pid());
    }
    emit::event(ctx, &ev);
    Ok(())
}

/// The owner read a socket in CLOSE_WAIT: its unread count and last read change.
#[inline(always)]
pub(crate) fn on_read<const B: bool>(sk: Sock<B>, pid: u32, consumed_at: u64) -> Result<(), i32> {
    let Some(e) = CLOSE_WAIT.get_ptr_mut(sk.key()) else {
        return Ok(());
    };
    let copied: u32 = sk.read_tcp(off!(tcp_copied_seq))?;
    // SAFETY: map entry pointer, valid for this program run.
    unsafe {
        (*e).copied_seq = copied;
        if consumed_at != 0 {
            (*e).last_read_ns = consumed_at;
        }
        if (*e).pid != pid {
            ((*e).pid, (*e).comm, (*e).cgroup_id) = current_owner::<B>(pid);
        }
    }
    Ok(())
}
