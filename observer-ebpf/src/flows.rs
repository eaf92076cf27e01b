//! Connection counts per owner, peer and role (`FLOWS`, keyed by the key's 64-bit id), driven
//! by `sock_state`: an atomic add when a connection is established, one when it leaves
//! ESTABLISHED, and when it closes its lifetime's, no event. Also the owners remembered for later attribution: a listening socket's owner
//! (`LISTENERS`, recorded in `listen()`) names the connections it accepts in softirq, and the
//! owner of a socket that closed first (`CLOSERS`, at its hand-over to TIME_WAIT) names the
//! TIME_WAIT socket userspace lists with `sock_diag`.

use aya_ebpf::{EbpfContext, helpers::bpf_ktime_get_ns};
use observer_common::{
    event::{Role, SOCK_COUNTED, SockState, Stat},
    flow::{Closer, FlowEntry, FlowKey, FlowStats, ListenKey, Owner, TupleKey, lifetime_bucket},
    tcp,
};

use crate::{
    emit,
    maps::{CLOSERS, FLOW_NEW, FLOWS, LISTENERS, add},
    off,
    sock::{Sock, current_owner, current_pid},
    socks::State,
};

/// `BPF_NOEXIST`: insert only if absent (another CPU may have inserted meanwhile).
const BPF_NOEXIST: u64 = 1;

/// `CLOSE -> LISTEN`, in `listen()`: the caller owns the listening socket.
#[inline(always)]
pub(crate) fn listen<const B: bool>(sk: Sock<B>) -> Result<(), i32> {
    let key = ListenKey {
        netns: sk.netns()?,
        port: u16::from_be(sk.read_tcp(off!(inet_sport))?),
        _pad: 0,
    };
    let (pid, comm, cgroup_id) = current_owner::<B>(current_pid());
    let owner = Owner {
        cgroup_id,
        comm,
        pid,
        role: Role::Server as u8,
        _pad: [0; 3],
    };
    // LRU: a full map forgets the oldest listener; its connections are then counted unowned.
    let _ = LISTENERS.insert(key, owner, 0);
    Ok(())
}

/// `-> ESTABLISHED`: counts the connection as opened under `st`'s owner (a client) or the
/// listener's (a server, `st` fresh), and marks `st` so its close is counted in the same entry.
#[inline(always)]
pub(crate) fn open<C: EbpfContext, const B: bool>(
    ctx: &C,
    sk: Sock<B>,
    st: &mut SockState,
    role: Role,
) -> Result<(), i32> {
    let family: u16 = sk.read(off!(skc_family))?;
    let mut key = FlowKey {
        cgroup_id: st.cgroup_id,
        comm: st.comm,
        peer: [0; 16],
        netns: sk.netns()?,
        peer_port: 0,
        family: family as u8,
        role: role as u8,
    };
    if family == tcp::AF_INET6 {
        key.peer = sk.read_addr6(off!(skc_v6_daddr))?;
    } else {
        key.peer[..4].copy_from_slice(&sk.read_addr4(off!(skc_daddr))?);
    }
    let mut pid = st.pid;
    if matches!(role, Role::Server) {
        let listen = ListenKey {
            netns: key.netns,
            port: u16::from_be(sk.read_tcp(off!(inet_sport))?),
            _pad: 0,
        };
        // SAFETY: LRU entry, copied out at once.
        if let Some(owner) = unsafe { LISTENERS.get(listen) } {
            key.cgroup_id = owner.cgroup_id;
            key.comm = owner.comm;
            pid = owner.pid;
        }
    } else {
        key.peer_port = u16::from_be(sk.read(off!(skc_dport))?);
    }
    let id = key.id();
    let (used, stats) = entry(ctx, id, &key, true);
    let Some(stats) = stats else {
        return Ok(());
    };
    // SAFETY: a live `FLOWS` value; other CPUs update it with atomic adds too.
    unsafe {
        add(&raw mut (*stats).opened, 1);
        if (*stats).pid != pid {
            (*stats).pid = pid;
        }
    }
    st.flow = if used == id { key } else { FlowKey::OTHER };
    st.flow_id = used;
    st.flags |= SOCK_COUNTED;
    Ok(())
}

/// `ESTABLISHED -> *`: counts a connection counted at open as no longer established (the
/// established gauge is `opened - left`, as `ss state established` counts).
#[inline(always)]
pub(crate) fn leave_established<C: EbpfContext>(ctx: &C, st: Option<State>) {
    let Some(st) = st else {
        return;
    };
    let st = st.get();
    if st.flags & SOCK_COUNTED == 0 {
        return;
    }
    if let (_, Some(stats)) = entry(ctx, st.flow_id, &st.flow, false) {
        // SAFETY: a live `FLOWS` value, updated with atomic adds only.
        unsafe { add(&raw mut (*stats).left, 1) };
    }
}

/// `-> CLOSE`: counts a connection counted at open as closed, with its lifetime, and records
/// who closed first when the socket is handed over to TIME_WAIT (from FIN_WAIT2 or CLOSING).
/// Not inlined: its keys stay off the callers' stack frames.
#[inline(never)]
pub(crate) fn close<C: EbpfContext, const B: bool>(
    ctx: &C,
    sk: Sock<B>,
    st: Option<State>,
    old: i32,
) -> Result<(), i32> {
    let Some(st) = st else {
        return Ok(());
    };
    let st = st.get();
    let tcp = sk.tcp()?;
    if st.flags & SOCK_COUNTED != 0 {
        // From LAST_ACK and CLOSING, and from FIN_WAIT2 once the peer's FIN came (SOCK_DONE),
        // only a received segment or the retransmit timer moves on; other closes may be the
        // owner's close() aborting, long after the last segment.
        let fin_wait2_done =
            old == tcp::FIN_WAIT2 && sk.read::<u64>(off!(sk_flags))? & (1 << off!(flag_done)) != 0;
        let now = if old == tcp::LAST_ACK || old == tcp::CLOSING || fin_wait2_done {
            tcp.refreshed_now_ns()
        } else {
            // SAFETY: no preconditions.
            unsafe { bpf_ktime_get_ns() }
        };
        let ms = now.saturating_sub(st.established_ns) / 1_000_000;
        if let (_, Some(stats)) = entry(ctx, st.flow_id, &st.flow, false) {
            // SAFETY: a live `FLOWS` value, updated with atomic adds only.
            unsafe {
                add(&raw mut (*stats).closed, 1);
                add(&raw mut (*stats).lifetime_ms_sum, ms);
                if let Some(b) = (*stats).lifetime.get_mut(lifetime_bucket(ms)) {
                    add(b, 1);
                }
            }
        }
    }
    if (old == tcp::FIN_WAIT2 || old == tcp::CLOSING) && st.pid != 0 {
        let ends = sk.endpoints(tcp)?;
        let key = TupleKey {
            saddr: ends.saddr,
            daddr: ends.daddr,
            netns: ends.netns,
            sport: ends.sport,
            dport: ends.dport,
        };
        let closer = Closer {
            owner: Owner {
                cgroup_id: st.cgroup_id,
                comm: st.comm,
                pid: st.pid,
                role: st.role,
                _pad: [0; 3],
            },
            // Softirq, processing the peer's FIN (or the last ACK of a simultaneous close).
            closed_ns: tcp.refreshed_now_ns(),
        };
        // Any flag: an entry left by an earlier socket of the same tuple is replaced.
        if CLOSERS.insert(key, closer, 0).is_err() {
            emit::count(ctx, Stat::ClosersFull);
        }
    }
    Ok(())
}

/// The `FLOWS` counts of `key`, stored under `id` (its id), created if absent; when the map is
/// full, or (`check`, at open) another key holds the id, the catch-all `FlowKey::OTHER` entry
/// instead (counted). Returns the id actually used. Later updates of a counted socket skip the
/// check: its entry was checked when the socket was counted, and the agent deletes it only once
/// nothing is open there.
#[inline(always)]
fn entry<C: EbpfContext>(
    ctx: &C,
    id: u64,
    key: &FlowKey,
    check: bool,
) -> (u64, Option<*mut FlowStats>) {
    if let Some(v) = FLOWS.get_ptr_mut(id) {
        return (id, counts(v, key, check));
    }
    if let Some(new) = FLOW_NEW.get_ptr_mut(0) {
        // SAFETY: this CPU's scratch value, not shared while the program runs; the insert
        // copies it.
        let new = unsafe {
            (*new).key = *key;
            &*new
        };
        // EEXIST (another CPU won the race) is fine: the lookup below finds its entry.
        let _ = FLOWS.insert(id, new, BPF_NOEXIST);
        if let Some(v) = FLOWS.get_ptr_mut(id) {
            return (id, counts(v, key, check));
        }
    }
    emit::count(ctx, Stat::FlowsFull);
    let other = FLOWS.get_ptr_mut(FlowKey::OTHER_ID);
    (FlowKey::OTHER_ID, other.and_then(|v| counts(v, key, false)))
}

/// The counts of the `FLOWS` value `v`, if its key is `key` or `check` is off.
#[inline(always)]
fn counts(v: *mut FlowEntry, key: &FlowKey, check: bool) -> Option<*mut FlowStats> {
    // SAFETY: a live `FLOWS` value, whose key was written before it was inserted.
    unsafe { (!check || (*v).key.same(key)).then_some(&raw mut (*v).stats) }
}
