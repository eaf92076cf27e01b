//! CLOSE_WAIT tracking, driven by `sock_state` and `sock_recv`: the peer's FIN moved the socket
//! to CLOSE_WAIT and only its owner's `close()` moves it on. Entries live in the pinned
//! `CLOSE_WAIT` map; the agent scans it for leaks and marks those it reported, and leaving
//! CLOSE_WAIT emits `close_wait_resolved` for exactly those (and for sockets that were in
//! CLOSE_WAIT before the programs were attached, which the agent found at start-up).
//!
//! Most sockets spend microseconds in CLOSE_WAIT (the owner reads EOF and closes). Where the
//! kernel offers TCP iterators, entering records only the time in the socket's `SOCKS` entry,
//! and the agent runs [`promote`] before each scan: the sockets still in CLOSE_WAIT then get
//! their map entry, with that time. A map insert and delete per connection the peer closes
//! first become a flag and a time written into an entry the program has at hand.
//!
//! `-> CLOSE_WAIT` runs in softirq (or the peer's task on loopback): the owner is copied from
//! `SOCKS`, recorded earlier in process context, never taken from the current task.

use aya_ebpf::{
    EbpfContext, cty::c_void, helpers::bpf_ktime_get_ns, programs::BtfTracePointContext,
};
use observer_common::{
    event::{
        CW_REPORTED, CloseWaitEntry, Config, Kind, Role, SOCK_CW_TRACKED, SOCK_IN_CLOSE_WAIT, Stat,
    },
    tcp,
};

use crate::{
    emit,
    maps::{self, CLOSE_WAIT, CW_EPOCH, CW_PENDING, ENTRY_SCRATCH, READS_SINCE, config_flag},
    off,
    sock::{Sock, Tcp, current_owner, current_pid},
    socks::{self, Hook},
};

/// A socket that leaves CLOSE_WAIT unpromoted after this long was missed by every scan (they
/// run every few seconds at most): counted as `CloseWaitUnpromoted`.
const UNPROMOTED_AFTER_NS: u64 = 60_000_000_000;

/// `ESTABLISHED -> CLOSE_WAIT`: records the entry time in the socket's `SOCKS` entry when the
/// agent promotes (see [`promote`]), else inserts the `CLOSE_WAIT` entry at once. (Not
/// inlined: see `sock_state::on_abort`.)
#[inline(never)]
pub(crate) fn enter<C: EbpfContext, const B: bool>(
    ctx: &C,
    sk: Sock<B>,
    st: Option<socks::State>,
) -> Result<(), i32> {
    let tcp = sk.tcp()?;
    // Processing the peer's FIN.
    let now = tcp.refreshed_now_ns();
    let promoted = config_flag(Config::PROMOTE_CLOSE_WAIT);
    if let Some(mut st) = st {
        let st = st.get_mut();
        st.flags |= SOCK_IN_CLOSE_WAIT;
        st.close_wait_ns = now;
        if promoted {
            // Nearly every socket leaves CLOSE_WAIT microseconds later (its owner closes on
            // reading EOF): those that stay get their entry from a scan's promotion.
            st.cw_slot = CW_EPOCH.get(0).map_or(0, |e| *e as u8);
            pending(st.cw_slot, 1);
            return Ok(());
        }
        st.flags |= SOCK_CW_TRACKED;
    }
    let e = entry(Hook::State, sk, tcp, st, now)?;
    if CLOSE_WAIT.insert(sk.key(), e, 0).is_err() {
        emit::count(ctx, Stat::CloseWaitFull);
    }
    Ok(())
}

/// The `CLOSE_WAIT` entry of `sk`, entered at `entered_ns`, with what `st` knows, built in
/// `hook`'s `ENTRY_SCRATCH` slot (off the stack: see `maps`) for the caller to insert.
#[inline(always)]
fn entry<const B: bool>(
    hook: Hook,
    sk: Sock<B>,
    tcp: Tcp<B>,
    st: Option<socks::State>,
    entered_ns: u64,
) -> Result<&'static CloseWaitEntry, i32> {
    let ends = sk.endpoints(tcp)?;
    let e = ENTRY_SCRATCH.get_ptr_mut(hook as u32).ok_or(0)?;
    // SAFETY: this CPU's slot of `hook`, which no other program uses, valid for this run;
    // every field is written below.
    let e = unsafe { &mut *e };
    e.entered_ns = entered_ns;
    e.established_ns = 0;
    e.last_read_ns = 0;
    e.cgroup_id = 0;
    e.bytes_received = tcp.read(off!(tcp_bytes_received))?;
    e.inode = 0;
    e.saddr = ends.saddr;
    e.daddr = ends.daddr;
    e.comm = [0; 16];
    e.rcv_nxt = tcp.read(off!(tcp_rcv_nxt))?;
    e.copied_seq = tcp.read(off!(tcp_copied_seq))?;
    e.netns = ends.netns;
    e.pid = 0;
    e.sport = ends.sport;
    e.dport = ends.dport;
    e.family = ends.family;
    e.role = Role::Unknown as u8;
    e.flags = 0;
    if let Some(st) = st {
        let st = st.get();
        e.established_ns = st.established_ns;
        // A read from before the hook was last attached may not be the last one.
        if st.last_read_ns >= READS_SINCE.get(0).copied().unwrap_or(0) {
            e.last_read_ns = st.last_read_ns;
        }
        e.cgroup_id = st.cgroup_id;
        e.comm = st.comm;
        e.pid = st.pid;
        e.role = st.role;
    }
    if e.pid == 0 {
        // The owner's file: a kernel read that is not BTF-typed, so only when needed.
        e.inode = sk.inode()?;
    }
    Ok(e)
}

/// `iter/tcp`, run by the agent before each scan in every network namespace (an iterator
/// walks the namespace of the task that reads it): gives each socket still in CLOSE_WAIT that
/// has none yet its `CLOSE_WAIT` entry, with the entry time `enter` recorded. The kernel holds
/// the socket's lock while the program runs (`bpf_iter_tcp_seq_show`, 5.15+), so the socket
/// cannot leave CLOSE_WAIT meanwhile.
/// <https://github.com/torvalds/linux/blob/v6.18/net/ipv4/tcp_ipv4.c>
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/tcp")]
pub(crate) extern "C" fn promote(ctx: *mut c_void) -> i32 {
    // `struct bpf_iter__tcp { meta; sock_common *sk_common; uid }`: the same u64-slot layout
    // as a BTF tracepoint's arguments.
    let ctx = BtfTracePointContext::new(ctx);
    let skc: *const u8 = ctx.arg(1);
    if skc.is_null() {
        return 0;
    }
    // TIME_WAIT and request sockets are skipped.
    let Some((sk, tcp)) = Sock::full_tcp(skc) else {
        return 0;
    };
    if sk.state() != Ok(tcp::CLOSE_WAIT) {
        return 0;
    }
    let Some(mut st) = socks::get(Hook::Promote, sk) else {
        // Entered CLOSE_WAIT before the programs ran (the agent lists those at start-up) or
        // was inserted at entry.
        return 0;
    };
    let flags = st.get().flags;
    if flags & SOCK_IN_CLOSE_WAIT == 0 || flags & SOCK_CW_TRACKED != 0 {
        return 0;
    }
    let entered = st.get().close_wait_ns;
    let Ok(e) = entry(Hook::Promote, sk, tcp, Some(st), entered) else {
        emit::count(&ctx, Stat::ReadFailed);
        return 0;
    };
    if CLOSE_WAIT.insert(sk.key(), e, 0).is_err() {
        emit::count(&ctx, Stat::CloseWaitFull);
    }
    // Tracked even when the insert failed: counted once, and leaving looks the entry up.
    let st = st.get_mut();
    st.flags |= SOCK_CW_TRACKED;
    pending(st.cw_slot, u64::MAX);
    0
}

/// Adds `n` (`u64::MAX` to take one) to this CPU's `CW_PENDING` count of epoch slot `slot`.
#[inline(always)]
fn pending(slot: u8, n: u64) {
    if let Some(p) = CW_PENDING.get_ptr_mut(u32::from(slot)) {
        // SAFETY: a live per-CPU slot; an atomic add, as another program may interrupt this one.
        unsafe { maps::add(p, n) };
    }
}

/// `CLOSE_WAIT -> LAST_ACK | CLOSE`: forgets the entry, and reports the end of a reported leak
/// (or of a socket that predates the programs, entry unknown). Not inlined, as `enter`.
#[inline(never)]
pub(crate) fn leave<C: EbpfContext, const B: bool>(
    ctx: &C,
    sk: Sock<B>,
    st: Option<socks::State>,
    new: i32,
) -> Result<(), i32> {
    let key = sk.key();
    if let Some(mut st) = st {
        let st = st.get_mut();
        let flags = st.flags;
        st.flags &= !(SOCK_IN_CLOSE_WAIT | SOCK_CW_TRACKED);
        if flags & SOCK_IN_CLOSE_WAIT != 0 && flags & SOCK_CW_TRACKED == 0 {
            // Never promoted: no entry to delete, no leak was reported.
            pending(st.cw_slot, u64::MAX);
            // SAFETY: no preconditions.
            let now = unsafe { bpf_ktime_get_ns() };
            if now.saturating_sub(st.close_wait_ns) > UNPROMOTED_AFTER_NS {
                emit::count(ctx, Stat::CloseWaitUnpromoted);
            }
            return Ok(());
        }
    }
    let entry = CLOSE_WAIT.get_ptr(key);
    // SAFETY: a map value, valid for this program run.
    if entry.is_some_and(|e| unsafe { (*e).flags } & CW_REPORTED == 0) {
        let _ = CLOSE_WAIT.remove(key);
        return Ok(());
    }
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(ev) = emit::scratch(Hook::State, Kind::CloseWaitResolved, key, now) else {
        let _ = CLOSE_WAIT.remove(key);
        return Ok(());
    };
    ev.old_state = tcp::CLOSE_WAIT as u8;
    if let Some(e) = entry {
        // SAFETY: as above; read before the entry is removed.
        unsafe {
            ev.close_wait_ns = now.saturating_sub((*e).entered_ns).max(1);
            ev.established_ns = (*e).established_ns;
            ev.last_read_ns = (*e).last_read_ns;
            ev.role = (*e).role;
            ev.pid = (*e).pid;
            ev.comm = (*e).comm;
            ev.cgroup_id = (*e).cgroup_id;
        }
    }
    let _ = CLOSE_WAIT.remove(key);
    let tcp = sk.tcp()?;
    sk.endpoints(tcp)?.fill_event(ev);
    (ev.bytes_received, ev.bytes_sent) = tcp.byte_counts()?;
    let copied: u32 = tcp.read(off!(tcp_copied_seq))?;
    let rcv_nxt: u32 = tcp.read(off!(tcp_rcv_nxt))?;
    ev.unread_bytes = tcp::unread_bytes(rcv_nxt, copied, true);
    // `-> LAST_ACK` is always the owner's close()/shutdown(); `-> CLOSE` is its close()
    // aborting unless an error (a received RST, a timeout) was set first.
    let err: i32 = sk.read(off!(sk_err))?;
    if new == tcp::LAST_ACK || (new == tcp::CLOSE && err == 0) {
        (ev.pid, ev.comm, ev.cgroup_id) = current_owner::<B>(current_pid());
    }
    emit::event(ctx, ev);
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
